//! Preprocessing benchmark and OpenCV parity: Aria fields -> images/s for `aria-hsv` and
//! `nucleus`, the ratio against OpenCV-Python's run of the same recipe (measured by
//! `scripts/opencv_hsv.py` in the same script, `scripts/bench-preprocess.sh`), and the mask
//! agreement with OpenCV's masks and with the authors' `Segmented/` files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use allscan_preprocess::{
    aria_hsv_segment, decode_file, find_nuclei, largest_nucleus_crop, DecodeLimits, NucleusConfig, RoiConfig,
};
use anyhow::{Context, Result};
use clap::Parser;
use image::GrayImage;

/// Times both segmentation modes on a folder of fields and checks `aria-hsv` against OpenCV.
#[derive(Debug, Parser)]
struct Args {
    /// Dataset root holding `Original/` (and `Segmented/`), e.g. ../shared/data/aria.
    #[arg(long, default_value = "../shared/data/aria")]
    data: PathBuf,
    /// OpenCV's masks written by `opencv_hsv.py masks` (same relative paths, `.png`).
    #[arg(long)]
    opencv_masks: Option<PathBuf>,
    /// OpenCV-Python's rate on the same images (images/s), to print the ratio.
    #[arg(long)]
    opencv_rate: Option<f64>,
    /// Only time `aria-hsv` (best of `--repeat` passes), print its images/s and exit: one
    /// round of the script's interleaved OpenCV / allscan rounds.
    #[arg(long)]
    hsv_only: bool,
    /// `aria-hsv` images/s already measured by the script's interleaved rounds: reported
    /// instead of timing again here (the masks are still computed, once, for the parity check).
    #[arg(long)]
    aria_hsv_rate: Option<f64>,
    /// Timed passes over the images; the best pass is reported (both sides see a warm cache).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// How many worst images to list.
    #[arg(long, default_value_t = 10)]
    worst: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn list_jpgs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg")) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// (image path relative to `Original/`, allscan vs OpenCV, allscan vs Segmented/, OpenCV vs
/// Segmented/), each a fraction of pixels.
type ParityRow = (PathBuf, Option<f64>, Option<f64>, Option<f64>);

fn agreement(a: &GrayImage, b: &GrayImage) -> f64 {
    if a.dimensions() != b.dimensions() || a.as_raw().is_empty() {
        return 0.0;
    }
    let same = a.as_raw().iter().zip(b.as_raw()).filter(|(x, y)| (**x != 0) == (**y != 0)).count();
    same as f64 / a.as_raw().len() as f64
}

/// The authors' `Segmented/` JPEG as a mask: kept where the brightest channel exceeds 40
/// (JPEG ringing leaves dark non-zero pixels around the kept areas).
fn segmented_mask(path: &Path) -> Result<GrayImage> {
    let img = decode_file(path, &DecodeLimits::default())?;
    Ok(GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        image::Luma([if p[0].max(p[1]).max(p[2]) > 40 { 255 } else { 0 }])
    }))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let original = args.data.join("Original");
    let paths = list_jpgs(&original)?;
    anyhow::ensure!(!paths.is_empty(), "no JPEG under {}", original.display());
    let limits = DecodeLimits::default();
    let ncfg = NucleusConfig::default();
    let rcfg = RoiConfig::default();

    // aria-hsv: read + decode once, mask, apply (what OpenCV's side times: imread, cvtColor,
    // inRange, bitwise_and); both outputs, mask and segmented field, are produced per image.
    let mut masks = Vec::with_capacity(paths.len());
    let mut hsv_best = f64::INFINITY;
    let mut keep_alive = 0u64;
    let hsv_passes = if args.aria_hsv_rate.is_some() { 1 } else { args.repeat.max(1) };
    for pass in 0..hsv_passes {
        let t = Instant::now();
        for p in &paths {
            let img = decode_file(p, &limits)?;
            let (mask, seg) = aria_hsv_segment(&img);
            keep_alive += seg.as_raw()[0] as u64;
            if pass == 0 && !args.hsv_only {
                masks.push(mask);
            }
        }
        hsv_best = hsv_best.min(t.elapsed().as_secs_f64());
    }
    if args.hsv_only {
        println!("{}", paths.len() as f64 / hsv_best);
        return Ok(());
    }
    // nucleus: read + decode once, find nuclei, crop the largest.
    let mut nuc_best = f64::INFINITY;
    let mut with_nucleus = 0usize;
    for pass in 0..args.repeat.max(1) {
        let t = Instant::now();
        let mut found = 0usize;
        for p in &paths {
            let img = decode_file(p, &limits)?;
            let res = find_nuclei(&img, &ncfg);
            if let Some(c) = largest_nucleus_crop(&img, &res, &rcfg) {
                keep_alive += c.image.as_raw()[0] as u64;
                found += 1;
            }
        }
        nuc_best = nuc_best.min(t.elapsed().as_secs_f64());
        if pass == 0 {
            with_nucleus = found;
        }
    }
    let n = paths.len() as f64;
    let hsv_rate = args.aria_hsv_rate.unwrap_or(n / hsv_best);
    let nuc_rate = n / nuc_best;
    println!("images: {} (checksum {keep_alive})", paths.len());
    println!("aria-hsv (allscan, 1 thread): {hsv_rate:.0} images/s");
    println!(
        "nucleus  (allscan, 1 thread): {nuc_rate:.0} images/s; fields with >= 1 nucleus: {with_nucleus}/{} = {:.2}%",
        paths.len(),
        100.0 * with_nucleus as f64 / n
    );
    let mut report = serde_json::json!({
        "images": paths.len(),
        "aria_hsv_images_per_s": hsv_rate,
        "nucleus_images_per_s": nuc_rate,
        "nucleus_yield": with_nucleus as f64 / n,
    });
    if let Some(rate) = args.opencv_rate {
        println!(
            "aria-hsv (OpenCV-Python, 1 thread): {rate:.0} images/s -> allscan / OpenCV = {:.2}x",
            hsv_rate / rate
        );
        println!("nucleus / OpenCV aria-hsv = {:.2}x", nuc_rate / rate);
        report["opencv_images_per_s"] = rate.into();
        report["aria_hsv_ratio_vs_opencv"] = (hsv_rate / rate).into();
    }

    // Parity: with OpenCV's own masks, and with the authors' Segmented/ files.
    let segmented_dir = args.data.join("Segmented");
    let mut rows: Vec<ParityRow> = Vec::new();
    for (p, mask) in paths.iter().zip(&masks) {
        let rel = p.strip_prefix(&original)?.to_path_buf();
        let vs_cv = match &args.opencv_masks {
            Some(dir) => {
                let mp = dir.join(&rel).with_extension("png");
                let cv = image::open(&mp).with_context(|| format!("OpenCV mask {}", mp.display()))?.to_luma8();
                Some((agreement(mask, &cv), cv))
            }
            None => None,
        };
        let seg_path = segmented_dir.join(&rel);
        let vs_seg = if seg_path.is_file() {
            let seg = segmented_mask(&seg_path)?;
            Some((agreement(mask, &seg), vs_cv.as_ref().map(|(_, cv)| agreement(cv, &seg))))
        } else {
            None
        };
        rows.push((rel, vs_cv.map(|(a, _)| a), vs_seg.map(|(a, _)| a), vs_seg.and_then(|(_, b)| b)));
    }
    let mean = |f: &dyn Fn(&ParityRow) -> Option<f64>| {
        let v: Vec<f64> = rows.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let Some(m) = mean(&|r| r.1) {
        let exact = rows.iter().filter(|r| r.1 == Some(1.0)).count();
        println!(
            "aria-hsv mask agreement with OpenCV's masks: {:.4}% of pixels on average; {exact}/{} images identical",
            100.0 * m,
            rows.len()
        );
        report["agreement_with_opencv"] = m.into();
        report["images_identical_to_opencv"] = exact.into();
        let mut worst: Vec<_> = rows.iter().filter_map(|r| r.1.map(|a| (a, r.0.display().to_string()))).collect();
        worst.sort_by(|a, b| a.0.total_cmp(&b.0));
        println!("worst images vs OpenCV:");
        for (a, name) in worst.iter().take(args.worst) {
            println!("  {:.4}%  {name}", 100.0 * a);
        }
        report["worst_vs_opencv"] =
            worst.iter().take(args.worst).map(|(a, n)| serde_json::json!([n, a])).collect::<Vec<_>>().into();
    }
    if let Some(m) = mean(&|r| r.2) {
        println!("aria-hsv mask agreement with Segmented/ (kept = max channel > 40): allscan {:.2}%", 100.0 * m);
        report["allscan_agreement_with_segmented"] = m.into();
        if let Some(c) = mean(&|r| r.3) {
            println!("                                                              OpenCV  {:.2}%", 100.0 * c);
            report["opencv_agreement_with_segmented"] = c.into();
        }
        let mut worst: Vec<_> = rows.iter().filter_map(|r| r.2.map(|a| (a, r.0.display().to_string()))).collect();
        worst.sort_by(|a, b| a.0.total_cmp(&b.0));
        println!("worst images vs Segmented/:");
        for (a, name) in worst.iter().take(args.worst) {
            println!("  {:.2}%  {name}", 100.0 * a);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
