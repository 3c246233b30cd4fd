//! Per-cell morphometry of the shared sets: every white cell the finder keeps, measured in
//! micrometres and in stain-free ratios, one CSV row per cell.
//!
//! Why: a blast is told from a mature leukocyte by size, nucleus-to-cytoplasm ratio, nucleus
//! shape and chromatin texture, all of which can be measured without reading the lab's stain.
//! This dump lets a plain classifier on those numbers be compared with the CNN across labs
//! (`scripts/morphometry-baseline.py`).
//!
//! `cargo run --release -p allscan-preprocess --example morphometry -- DATA OUT.csv`
//!
//! Scale: each image's own estimate; an image that falls back (no red cells) takes the pooled
//! scale of its set and image size, as training and `eval` do. Cells are measured where the
//! model's crops are cut, at square pixels (`find_cells_square`: Aria's fields are stretched
//! by their pixel aspect, 1.28, first).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allscan_preprocess::scale::{red_cell_rulers_on, WorkField};
use allscan_preprocess::{
    decode_file, find_cells_square, square_scale, CellFlag, CellResult, DecodeLimits, PreprocessConfig, ScaleEstimate,
    ScalePool, SegmentMode,
};
use image::RgbImage;

/// Images of one source and size share a pooled scale.
type PoolKey<'a> = (&'a str, u32, u32);

/// One image of a set with its label (1 = blast, 0 = not blast).
struct Item {
    source: &'static str,
    class: String,
    blast: u8,
    path: PathBuf,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(data), Some(out)) = (args.first().map(PathBuf::from), args.get(1).map(PathBuf::from)) else {
        eprintln!("usage: morphometry DATA OUT.csv");
        return ExitCode::from(2);
    };
    let items = list(&data);
    eprintln!("morphometry: {} images", items.len());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if args.iter().any(|a| a == "--rulers") {
        return rulers(&items, threads, &out);
    }
    let cfg = PreprocessConfig { mode: SegmentMode::Cell, ..Default::default() };
    let scale_cfg = &cfg.cell.scale;
    // Pass 1: own scales and aspects (decoding twice is cheaper than holding every image).
    let own: Vec<Option<(u32, u32, ScaleEstimate)>> = par_map(&items, threads, |it| {
        let img = decode_file(&it.path, &DecodeLimits::default()).ok()?;
        Some((img.width(), img.height(), square_scale(&img, &cfg)))
    });
    let keyed: Vec<Option<(PoolKey, &ScaleEstimate)>> =
        items.iter().zip(&own).map(|(it, o)| o.as_ref().map(|(w, h, s)| ((it.source, *w, *h), s))).collect();
    // Pass 2: the cells, at the pooled scale where the image's own fell back, else its own.
    let mut pooled: Vec<Option<ScaleEstimate>> = vec![None; items.len()];
    for (i, s) in ScalePool::regroup(&keyed, scale_cfg) {
        pooled[i] = Some(s);
    }
    let work: Vec<(&Item, bool, Option<ScaleEstimate>)> =
        items.iter().zip(&own).zip(pooled).map(|((it, o), p)| (it, o.is_some(), p)).collect();
    let rows: Vec<Vec<String>> = par_map(&work, threads, |(it, readable, pooled)| {
        if !*readable {
            return None;
        }
        let img = decode_file(&it.path, &DecodeLimits::default()).ok()?;
        let square = find_cells_square(&img, &cfg, pooled.as_ref());
        let found = &square.found;
        Some(measure(&square.field, found).into_iter().map(|f| row(it, found, &f)).collect::<Vec<_>>())
    })
    .into_iter()
    .flatten()
    .flatten()
    .collect();
    let mut text = String::from(HEADER);
    text.push('\n');
    for r in &rows {
        text.push_str(&r.join(","));
        text.push('\n');
    }
    let tmp = out.with_extension("csv.tmp");
    if let Err(e) = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(text.as_bytes())) {
        eprintln!("morphometry: {}: {e}", tmp.display());
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::fs::rename(&tmp, &out) {
        eprintln!("morphometry: {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("morphometry: {} cells -> {}", rows.len(), out.display());
    ExitCode::SUCCESS
}

/// `--rulers`: per image, both red-cell rulers (isolated discs' equivalent diameters, packed
/// cells' inscribed discs): how many and their medians, field pixels.
fn rulers(items: &[Item], threads: usize, out: &Path) -> ExitCode {
    let rows: Vec<String> = par_map(items, threads, |it| {
        let img = decode_file(&it.path, &DecodeLimits::default()).ok()?;
        let (mut iso, mut packed) = red_cell_rulers_on(&WorkField::new(&img));
        let med = |v: &mut Vec<f32>| {
            v.sort_by(f32::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f32::NAN)
        };
        Some(format!(
            "{},{},{},{},{:.2},{},{:.2}",
            it.source,
            it.class,
            it.path.display(),
            iso.len(),
            med(&mut iso),
            packed.len(),
            med(&mut packed)
        ))
    })
    .into_iter()
    .flatten()
    .collect();
    let text = format!("source,class,path,n_isolated,isolated_px,n_packed,packed_px\n{}\n", rows.join("\n"));
    match std::fs::write(out, text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("morphometry: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

const HEADER: &str = "source,class,blast,path,cell,cells,um_per_px,scale_source,border,small,smudge,clump,\
cell_d_um,nuc_d_um,nc,nuc_circ,nuc_solidity,lobes,nuc_z,cyto_z,nuc_std,nuc_rough05,nuc_rough10,cyto_std,\
cyto_blue,nuc_blue,cell_sat";

fn list(data: &Path) -> Vec<Item> {
    let mut items = Vec::new();
    let mut add = |source: &'static str, dir: PathBuf, ext: &[&str], class_of: &dyn Fn(&Path) -> (String, u8)| {
        for p in files_under(&dir, ext) {
            let (class, blast) = class_of(&p);
            items.push(Item { source, class, blast, path: p });
        }
    };
    let parent =
        |p: &Path| p.parent().and_then(|d| d.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    add("aria", data.join("aria/Original"), &["jpg", "jpeg", "png"], &|p| {
        let c = parent(p);
        let b = u8::from(c != "Benign");
        (c, b)
    });
    add("pbc-normal", data.join("pbc-normal"), &["jpg", "jpeg", "png"], &|p| (parent(p), 0));
    add("wbc-seg", data.join("wbc-seg"), &["bmp"], &|p| {
        let lab = p.components().rev().nth(2).map(|c| c.as_os_str().to_string_lossy().into_owned());
        (lab.unwrap_or_default(), 0)
    });
    add("cnmc-sample", data.join("cnmc-sample"), &["png", "bmp"], &|p| {
        let c = parent(p);
        let b = u8::from(c == "all");
        (c, b)
    });
    items
}

fn files_under(dir: &Path, ext: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ext.contains(&e.to_ascii_lowercase().as_str()))
            {
                // wbc-seg keeps the experts' masks as PNGs beside the BMP images.
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(it) = items.get(i) else { break };
                let r = f(it);
                results.lock().unwrap().insert(i, r);
            });
        }
    });
    results.into_inner().unwrap().into_values().collect()
}

/// The measures of one cell.
struct Measures {
    index: usize,
    values: [f64; 15],
}

fn row(it: &Item, found: &CellResult, m: &Measures) -> Vec<String> {
    let c = &found.cells[m.index];
    let flag = |f: CellFlag| u8::from(c.has(f)).to_string();
    let mut r = vec![
        it.source.to_string(),
        it.class.clone(),
        it.blast.to_string(),
        it.path.display().to_string().replace(',', "_"),
        m.index.to_string(),
        found.cells.len().to_string(),
        format!("{:.5}", found.scale.um_per_px),
        format!("{:?}", found.scale.source),
        flag(CellFlag::TouchesBorder),
        flag(CellFlag::Small),
        flag(CellFlag::Smudge),
        flag(CellFlag::Clump),
    ];
    r.extend(m.values.iter().map(|v| format!("{v:.5}")));
    r
}

fn luma(p: [u8; 3]) -> f64 {
    0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
}

fn measure(img: &RgbImage, found: &CellResult) -> Vec<Measures> {
    let um = found.scale.um_per_px as f64;
    let (w, h) = img.dimensions();
    let mut out = Vec::new();
    for (i, c) in found.cells.iter().enumerate() {
        let label = i as u32 + 1;
        let b = c.cell;
        let (x0, y0, x1, y1) = (b.x, b.y, (b.x + b.width).min(w), (b.y + b.height).min(h));
        let in_cell = |x: u32, y: u32| x < w && y < h && found.labels.get_pixel(x, y)[0] == label;
        let is_nuc = |x: u32, y: u32| in_cell(x, y) && found.mask.get_pixel(x, y)[0] == 255;
        let (mut n_cell, mut n_nuc, mut perim) = (0f64, 0f64, 0f64);
        let (mut s, mut sq) = (0f64, 0f64);
        let (mut sn, mut sqn, mut sc, mut sqc) = (0f64, 0f64, 0f64, 0f64);
        let (mut blue_c, mut blue_n, mut sat) = (0f64, 0f64, 0f64);
        let mut hull_pts = Vec::new();
        for y in y0..y1 {
            for x in x0..x1 {
                if !in_cell(x, y) {
                    continue;
                }
                let p = img.get_pixel(x, y).0;
                let g = luma(p);
                let sum = (p[0] as f64 + p[1] as f64 + p[2] as f64).max(1.0);
                let blue = (p[2] as f64 - p[0] as f64) / sum;
                let mx = p.iter().copied().max().unwrap() as f64;
                let mn = p.iter().copied().min().unwrap() as f64;
                sat += if mx > 0.0 { (mx - mn) / mx } else { 0.0 };
                n_cell += 1.0;
                s += g;
                sq += g * g;
                if is_nuc(x, y) {
                    n_nuc += 1.0;
                    sn += g;
                    sqn += g * g;
                    blue_n += blue;
                    let edge = x == 0
                        || y == 0
                        || !is_nuc(x - 1, y)
                        || !is_nuc(x + 1, y)
                        || !is_nuc(x, y - 1)
                        || !is_nuc(x, y + 1);
                    if edge {
                        perim += 1.0;
                        hull_pts.push((x as i64, y as i64));
                    }
                } else {
                    sc += g;
                    sqc += g * g;
                    blue_c += blue;
                }
            }
        }
        if n_nuc < 4.0 || n_cell < 4.0 {
            continue;
        }
        let n_cyto = (n_cell - n_nuc).max(1.0);
        let mean = s / n_cell;
        let sd = (sq / n_cell - mean * mean).max(1.0).sqrt();
        let mn = sn / n_nuc;
        let sdn = (sqn / n_nuc - mn * mn).max(0.0).sqrt();
        let mc = sc / n_cyto;
        let sdc = (sqc / n_cyto - mc * mc).max(0.0).sqrt();
        // Roughness: mean |grey difference| between nucleus pixels d um apart, over the cell's spread.
        let rough = |d_um: f64| {
            let d = (d_um / um).round().max(1.0) as u32;
            let (mut acc, mut n) = (0f64, 0f64);
            for y in y0..y1 {
                for x in x0..x1 {
                    if !is_nuc(x, y) {
                        continue;
                    }
                    let g = luma(img.get_pixel(x, y).0);
                    if is_nuc(x + d, y) {
                        acc += (g - luma(img.get_pixel(x + d, y).0)).abs();
                        n += 1.0;
                    }
                    if is_nuc(x, y + d) {
                        acc += (g - luma(img.get_pixel(x, y + d).0)).abs();
                        n += 1.0;
                    }
                }
            }
            if n > 0.0 {
                acc / n / sd
            } else {
                0.0
            }
        };
        let hull = convex_hull_area(&mut hull_pts).max(n_nuc);
        let lobes = components(x0, y0, x1, y1, &is_nuc, (0.05 * n_nuc) as usize);
        let d = |a: f64| 2.0 * (a / std::f64::consts::PI).sqrt() * um;
        out.push(Measures {
            index: i,
            values: [
                d(n_cell),
                d(n_nuc),
                n_nuc / n_cell,
                (4.0 * std::f64::consts::PI * n_nuc / (perim * perim).max(1.0)).min(2.0),
                n_nuc / hull,
                lobes as f64,
                (mn - mean) / sd,
                (mc - mean) / sd,
                sdn / sd,
                rough(0.5),
                rough(1.0),
                sdc / sd,
                blue_c / n_cyto,
                blue_n / n_nuc,
                sat / n_cell,
            ],
        });
    }
    out
}

fn convex_hull_area(pts: &mut [(i64, i64)]) -> f64 {
    if pts.len() < 3 {
        return 0.0;
    }
    pts.sort_unstable();
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let mut hull: Vec<(i64, i64)> = Vec::new();
    for &p in pts.iter().chain(pts.iter().rev().skip(1)) {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            // A point that is not a left turn is inside the hull being walked.
            if hull.len() >= 2 {
                hull.pop();
            }
        }
        hull.push(p);
    }
    let mut a = 0i64;
    for k in 0..hull.len().saturating_sub(1) {
        a += hull[k].0 * hull[k + 1].1 - hull[k + 1].0 * hull[k].1;
    }
    (a.abs() as f64) / 2.0
}

/// 8-connected components of `inside` in the box with at least `min` pixels.
fn components(x0: u32, y0: u32, x1: u32, y1: u32, inside: &dyn Fn(u32, u32) -> bool, min: usize) -> usize {
    let (bw, bh) = ((x1 - x0) as usize, (y1 - y0) as usize);
    let mut seen = vec![false; bw * bh];
    let mut count = 0;
    for sy in 0..bh {
        for sx in 0..bw {
            if seen[sy * bw + sx] || !inside(x0 + sx as u32, y0 + sy as u32) {
                continue;
            }
            let mut stack = vec![(sx, sy)];
            seen[sy * bw + sx] = true;
            let mut n = 0;
            while let Some((x, y)) = stack.pop() {
                n += 1;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        if nx < 0 || ny < 0 || nx >= bw as i64 || ny >= bh as i64 {
                            continue;
                        }
                        let (nx, ny) = (nx as usize, ny as usize);
                        if !seen[ny * bw + nx] && inside(x0 + nx as u32, y0 + ny as u32) {
                            seen[ny * bw + nx] = true;
                            stack.push((nx, ny));
                        }
                    }
                }
            }
            if n >= min.max(1) {
                count += 1;
            }
        }
    }
    count
}
