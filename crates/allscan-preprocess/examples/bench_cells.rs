//! Benchmark of the white-cell stage: a data folder (`../shared/data`) -> a printed report of
//! [`estimate_scale`] + [`find_white_cells`] on every shared set.
//!
//! - Quality: on `wbc-seg` (experts' masks, 255 nucleus / 128 cytoplasm), per-image Dice of the
//!   nucleus and of the whole cell for the found cell nearest the image centre (the experts
//!   mark one cell), per lab, beside the existing `find_nuclei` for reference.
//! - Scale: per set, the median and IQR of um/px, the sources and the fallback reasons.
//! - Cells per image: mean and the fraction of images with 0 / 1 / >1 cells (not `Small`).
//! - Speed: one core, a 2592x1944 mosaic of real crops, against `find_nuclei` on the same image.
//!
//! `cargo run --release -p allscan-preprocess --example bench_cells -- DATA [--limit N] [--dump DIR]`
//! (`--limit`: at most N images per set, evenly strided; `--dump`: overlay PNGs of the first few).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use allscan_preprocess::{
    decode_file, estimate_scale, find_nuclei, find_white_cells, CellConfig, CellFlag, CellResult, DecodeLimits,
    NucleusConfig, ScaleConfig, ScaleSource,
};
use image::{GrayImage, RgbImage};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(data) = args.iter().find(|a| !a.starts_with("--")).map(PathBuf::from) else {
        eprintln!("usage: bench_cells DATA [--limit N] [--dump DIR]");
        return ExitCode::from(2);
    };
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let limit = opt("--limit").and_then(|v| v.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let dump = opt("--dump").map(PathBuf::from);
    if args.iter().any(|a| a == "--dice-only") {
        for lab in ["jtsc", "cellavision"] {
            dice_report(&data.join("wbc-seg").join(lab), lab, dump.as_deref());
        }
        return ExitCode::SUCCESS;
    }
    if let Some(set) = opt("--probe") {
        probe(&stride(images_under(&data.join(set)), limit));
        return ExitCode::SUCCESS;
    }
    if !data.is_dir() {
        eprintln!("bench_cells: {} is not a folder", data.display());
        return ExitCode::from(2);
    }
    println!("# White cells and scale: {} (at most {} images per set)\n", data.display(), limit);
    println!("## Segmentation quality on wbc-seg (cell nearest the centre vs the expert mask)\n");
    println!("| lab | images | nucleus Dice | whole-cell Dice | at the lab's pooled scale: nucleus / whole cell | find_nuclei nucleus Dice | no cell |");
    println!("|---|---|---|---|---|---|---|");
    for lab in ["jtsc", "cellavision"] {
        dice_report(&data.join("wbc-seg").join(lab), lab, dump.as_deref());
    }
    println!("\n## Scale estimate and white cells per image\n");
    println!("| set | images | median um/px | IQR um/px | red-cells / assumed / given | cells per image | 0 / 1 / >1 cells | ms per image | pixel aspect (set's median; red cells) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut reasons_all = Vec::new();
    for (name, dir) in [
        ("aria", data.join("aria/Original")),
        ("pbc-normal", data.join("pbc-normal")),
        ("wbc-seg/jtsc", data.join("wbc-seg/jtsc")),
        ("wbc-seg/cellavision", data.join("wbc-seg/cellavision")),
        ("cnmc-sample", data.join("cnmc-sample")),
    ] {
        let files = stride(images_under(&dir), limit);
        if let Some(r) = set_report(name, &files, dump.as_deref()) {
            reasons_all.push((name, r));
        }
    }
    println!("\nFallback reasons (digits shown as N):");
    for (name, reasons) in reasons_all {
        for (why, n) in reasons {
            println!("- {name}: {n} x {why}");
        }
    }
    speed_report(&data);
    ExitCode::SUCCESS
}

fn images_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "bmp"))
                || (p.extension().is_some_and(|e| e == "png") && p.to_string_lossy().contains("cnmc"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn stride(files: Vec<PathBuf>, limit: usize) -> Vec<PathBuf> {
    if files.len() <= limit {
        return files;
    }
    let step = files.len() as f64 / limit as f64;
    (0..limit).filter_map(|i| files.get((i as f64 * step) as usize).cloned()).collect()
}

/// The finder's settings: defaults, or `--cell JSON` (fields as in `CellConfig`) to try others.
fn cell_config() -> CellConfig {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--cell")
        .and_then(|i| args.get(i + 1))
        .and_then(|j| serde_json::from_str(j).map_err(|e| eprintln!("--cell: {e}")).ok())
        .unwrap_or_default()
}

fn analyse(img: &RgbImage) -> CellResult {
    // `--um-per-px X`: a given scale (a per-dataset setting) instead of the estimate.
    let args: Vec<String> = std::env::args().collect();
    let given = args.iter().position(|a| a == "--um-per-px").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let scale = estimate_scale(img, &ScaleConfig { um_per_px: given, ..Default::default() });
    find_white_cells(img, &cell_config(), &scale)
}

/// Index of the cell nearest the image centre, preferring cells not flagged `Small`.
fn central_cell(res: &CellResult) -> Option<usize> {
    let (cx, cy) = (res.mask.width() as f32 / 2.0, res.mask.height() as f32 / 2.0);
    let d = |i: usize| {
        let c = &res.cells[i];
        let (dx, dy) = (c.centroid.0 - cx, c.centroid.1 - cy);
        (c.has(CellFlag::Small), dx * dx + dy * dy)
    };
    (0..res.cells.len()).min_by(|&a, &b| d(a).partial_cmp(&d(b)).unwrap_or(std::cmp::Ordering::Equal))
}

fn dice(a: impl Iterator<Item = (bool, bool)>) -> f64 {
    let (mut both, mut na, mut nb) = (0u64, 0u64, 0u64);
    for (x, y) in a {
        both += (x && y) as u64;
        na += x as u64;
        nb += y as u64;
    }
    if na + nb == 0 {
        1.0
    } else {
        2.0 * both as f64 / (na + nb) as f64
    }
}

/// Nucleus and whole-cell Dice of the cell nearest the centre, for a result.
fn dice_pair(res: &CellResult, truth: &GrayImage) -> (f64, f64) {
    let label = central_cell(res).map(|i| i as u32 + 1).unwrap_or(0);
    let ours = |i: usize| label != 0 && res.labels.as_raw()[i] == label;
    let (m, t) = (res.mask.as_raw(), truth.as_raw());
    let nucleus = dice((0..t.len()).map(|i| (ours(i) && m[i] == 255, t[i] == 255)));
    let cell = dice((0..t.len()).map(|i| (ours(i), t[i] > 0)));
    (nucleus, cell)
}

/// One lab's row: each image at its own estimated scale, then every image at the lab's pooled
/// scale (the median of its red-cell estimates: a per-dataset given scale), and find_nuclei.
fn dice_report(dir: &Path, lab: &str, dump: Option<&Path>) {
    let mut pairs = Vec::new();
    for bmp in images_under(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "bmp")) {
        let (Ok(img), Ok(truth)) =
            (decode_file(&bmp, &DecodeLimits::default()), image::open(bmp.with_extension("png")))
        else {
            eprintln!("skipped {} (unreadable image or mask)", bmp.display());
            continue;
        };
        let truth = truth.to_luma8();
        if truth.dimensions() != img.dimensions() {
            eprintln!("skipped {} (mask size differs)", bmp.display());
            continue;
        }
        pairs.push((bmp.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(), img, truth));
    }
    let (mut dn, mut dc, mut dref, mut none) = (0.0, 0.0, 0.0, 0usize);
    let mut red = Vec::new();
    // Per image (with --dump): Dice and areas, to tell over- from under-segmentation.
    let mut rows =
        String::from("image,file,nucleus_dice,cell_dice,our_nucleus_px,their_nucleus_px,our_cell_px,their_cell_px\n");
    for (n, (file, img, truth)) in pairs.iter().enumerate() {
        let res = analyse(img);
        let (a, b) = dice_pair(&res, truth);
        if dump.is_some() {
            let label = central_cell(&res).map(|i| i as u32 + 1).unwrap_or(0);
            let ours = |i: usize| label != 0 && res.labels.as_raw()[i] == label;
            let (m, t) = (res.mask.as_raw(), truth.as_raw());
            let count = |f: &dyn Fn(usize) -> bool| (0..t.len()).filter(|&i| f(i)).count();
            rows += &format!(
                "{n},{file},{a:.4},{b:.4},{},{},{},{}\n",
                count(&|i| ours(i) && m[i] == 255),
                count(&|i| t[i] == 255),
                count(&|i| ours(i)),
                count(&|i| t[i] > 0)
            );
        }
        if res.scale.source == ScaleSource::RedCells {
            red.push(res.scale.um_per_px);
        }
        none += central_cell(&res).is_none() as usize;
        dn += a;
        dc += b;
        let reference = find_nuclei(img, &NucleusConfig::default());
        dref += dice(reference.mask.as_raw().iter().zip(truth.as_raw()).map(|(&a, &b)| (a == 255, b == 255)));
        if let Some(d) = dump.filter(|_| n < 300) {
            save_overlay(d, &format!("{lab}-{n}"), img, &res, Some(truth));
        }
    }
    if let Some(d) = dump {
        let _ = std::fs::write(d.join(format!("{lab}-dice.csv")), rows);
    }
    red.sort_by(f32::total_cmp);
    let pooled = red.get(red.len() / 2).copied();
    let (mut pn, mut pc) = (0.0, 0.0);
    if let Some(s) = pooled {
        let given = ScaleConfig { um_per_px: Some(s), ..Default::default() };
        for (_, img, truth) in &pairs {
            let res = find_white_cells(img, &cell_config(), &estimate_scale(img, &given));
            let (a, b) = dice_pair(&res, truth);
            pn += a;
            pc += b;
        }
    }
    let k = pairs.len().max(1) as f64;
    let pooled_cols = match pooled {
        Some(s) => format!("{:.3} / {:.3} ({s:.3} um/px, {} red-cell estimates)", pn / k, pc / k, red.len()),
        None => "no red-cell estimate".into(),
    };
    println!("| {lab} | {} | {:.3} | {:.3} | {pooled_cols} | {:.3} | {none} |", pairs.len(), dn / k, dc / k, dref / k);
}

fn set_report(name: &str, files: &[PathBuf], dump: Option<&Path>) -> Option<BTreeMap<String, usize>> {
    let mut scales = Vec::new();
    let mut sources = [0usize; 3];
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut counts = [0usize; 3];
    let (mut total_cells, mut n, mut skipped) = (0usize, 0usize, 0usize);
    let t0 = Instant::now();
    // With --dump: each image's count of cells not flagged Small.
    let mut per_image = String::from("file,cells\n");
    // Each image's own pixel-aspect evidence (median log, red cells), timed apart from the rest.
    let mut aspect: Vec<(f32, u32)> = Vec::new();
    let mut aspect_time = std::time::Duration::ZERO;
    for f in files {
        let Ok(img) = decode_file(f, &DecodeLimits::default()) else {
            skipped += 1;
            continue;
        };
        let ta = Instant::now();
        let a = allscan_preprocess::field_aspect(&img, &ScaleConfig::default());
        aspect_time += ta.elapsed();
        aspect.push((a.own_log, a.own_cells));
        let res = analyse(&img);
        scales.push(res.scale.um_per_px);
        sources[match res.scale.source {
            ScaleSource::RedCells => 0,
            ScaleSource::Assumed => 1,
            // Per-image figures: the bench scores images one at a time, never pooled.
            ScaleSource::Given | ScaleSource::Pooled => 2,
        }] += 1;
        if let Some(note) = &res.scale.note {
            let generic: String = note.chars().map(|c| if c.is_ascii_digit() { 'N' } else { c }).collect();
            *reasons.entry(generic).or_default() += 1;
        }
        let cells = res.cells.iter().filter(|c| !c.has(CellFlag::Small)).count();
        total_cells += cells;
        counts[cells.min(2)] += 1;
        per_image += &format!("{},{cells}\n", f.display());
        if let Some(d) = dump.filter(|_| n < 12) {
            save_overlay(d, &format!("{}-{n}", name.replace('/', "-")), &img, &res, None);
        }
        n += 1;
    }
    if let Some(d) = dump {
        let _ = std::fs::write(d.join(format!("{}-cells.csv", name.replace('/', "-"))), per_image);
    }
    if n == 0 {
        println!("| {name} | 0 (missing or unreadable: {skipped}) | | | | | | |");
        return None;
    }
    let ms = (t0.elapsed() - aspect_time).as_secs_f64() * 1000.0 / n as f64;
    let mut logs: Vec<f32> = aspect.iter().filter(|(_, c)| *c >= 3).map(|(l, _)| *l).collect();
    logs.sort_by(f32::total_cmp);
    let aspect_cells: u32 = aspect.iter().filter(|(_, c)| *c >= 3).map(|(_, c)| c).sum();
    let aspect_text = match logs.get(logs.len() / 2) {
        Some(m) => format!("{:.3} ({} images, {aspect_cells} red cells)", m.exp(), logs.len()),
        None => "-".into(),
    };
    scales.sort_by(f32::total_cmp);
    let q = |p: f64| scales[((scales.len() - 1) as f64 * p).round() as usize];
    let pct = |c: usize| 100.0 * c as f64 / n as f64;
    println!(
        "| {name} | {n} | {:.3} | {:.3}-{:.3} | {} / {} / {} | {:.2} | {:.0}% / {:.0}% / {:.0}% | {ms:.1} | {aspect_text} |",
        q(0.5),
        q(0.25),
        q(0.75),
        sources[0],
        sources[1],
        sources[2],
        total_cells as f64 / n as f64,
        pct(counts[0]),
        pct(counts[1]),
        pct(counts[2]),
    );
    Some(reasons)
}

/// Field | cells (dominant orange, others cyan; nucleus bright) | red cells measured (white).
/// Three panels: the image, the found cells (the first one orange: nucleus bright, cytoplasm
/// dark), and the experts' mask where there is one (else the scale estimate's red-cell map).
fn save_overlay(dir: &Path, name: &str, img: &RgbImage, res: &CellResult, truth: Option<&GrayImage>) {
    let (w, h) = img.dimensions();
    let rbc = allscan_preprocess::scale::red_cell_map(img);
    let k = (w / rbc.width().max(1)).max(1);
    let mut out = RgbImage::new(w * 3, h);
    for (x, y, p) in img.enumerate_pixels() {
        out.put_pixel(x, y, *p);
        let m = res.mask.get_pixel(x, y)[0];
        let l = res.labels.get_pixel(x, y)[0];
        let tint = if l == 1 { [m, m / 2, 0] } else { [m / 2, m, m] };
        out.put_pixel(w + x, y, image::Rgb(tint));
        let r = match truth {
            Some(t) => t.get_pixel_checked(x, y).map_or(0, |p| p[0]),
            None => rbc.get_pixel_checked(x / k, y / k).map_or(0, |p| p[0]),
        };
        out.put_pixel(2 * w + x, y, image::Rgb([r, r, r]));
    }
    let _ = std::fs::create_dir_all(dir);
    if let Err(e) = out.save(dir.join(format!("{name}.png"))) {
        eprintln!("could not write overlay {name}: {e}");
    }
}

/// A 2592x1944 mosaic of real crops (pbc-normal, else cellavision): a camera-sized field with
/// dozens of white cells and hundreds of red cells, kept in memory only.
fn mosaic(data: &Path) -> Option<RgbImage> {
    let mut tiles: Vec<RgbImage> = stride(images_under(&data.join("pbc-normal")), 40)
        .iter()
        .chain(stride(images_under(&data.join("wbc-seg/cellavision")), 40).iter())
        .filter_map(|f| decode_file(f, &DecodeLimits::default()).ok())
        .collect();
    tiles.retain(|t| t.width() >= 100);
    if tiles.is_empty() {
        return None;
    }
    let mut out = RgbImage::new(2592, 1944);
    let (mut x, mut y, mut i) = (0u32, 0u32, 0usize);
    while y < 1944 {
        let t = &tiles[i % tiles.len()];
        image::imageops::replace(&mut out, t, x as i64, y as i64);
        x += t.width();
        if x >= 2592 {
            x = 0;
            y += t.height();
        }
        i += 1;
    }
    Some(out)
}

fn speed_report(data: &Path) {
    let Some(big) = mosaic(data) else {
        println!("\nspeed: no images to build the mosaic from");
        return;
    };
    let runs = 5;
    let time = |f: &dyn Fn()| {
        f(); // warm-up
        let t = Instant::now();
        for _ in 0..runs {
            f();
        }
        t.elapsed().as_secs_f64() * 1000.0 / runs as f64
    };
    let cells = std::cell::Cell::new(0usize);
    let ours = time(&|| cells.set(analyse(&big).cells.len()));
    // What `predict` runs per field: pixel aspect, scale, cells and the model's crops.
    let cfg = allscan_preprocess::PreprocessConfig {
        mode: allscan_preprocess::SegmentMode::Cell,
        input_size: 64,
        ..Default::default()
    };
    let views = std::cell::Cell::new(0usize);
    let prepared = time(&|| views.set(allscan_preprocess::prepare_cells(&big, &cfg).0.images.len()));
    let reference = time(&|| {
        let _ = find_nuclei(&big, &NucleusConfig::default());
    });
    println!("\n## Speed (one thread, 2592x1944 mosaic of real crops, mean of {runs})\n");
    println!("| step | ms | ratio to find_nuclei |");
    println!("|---|---|---|");
    println!("| estimate_scale + find_white_cells ({} cells) | {ours:.1} | {:.2} |", cells.get(), ours / reference);
    println!(
        "| prepare_cells: aspect, scale, cells, crops at 64 px ({} views) | {prepared:.1} | {:.2} |",
        views.get(),
        prepared / reference
    );
    println!("| find_nuclei (reference, full resolution) | {reference:.1} | 1.00 |");
    println!("\ngoal: <= 300 ms: {}", if ours <= 300.0 { "met" } else { "NOT met" });
}

/// `--probe SET`: the scale estimate of each image of a set, one line each.
fn probe(files: &[PathBuf]) {
    for f in files {
        let Ok(img) = decode_file(f, &DecodeLimits::default()) else { continue };
        let e = estimate_scale(&img, &ScaleConfig::default());
        let note = e.note.as_deref().unwrap_or("");
        println!(
            "{} {:?} {:.3} um/px, {} red cells, spread {:.2} {note}",
            f.display(),
            e.source,
            e.um_per_px,
            e.red_cells,
            e.spread
        );
    }
}
