//! `allscan report RUN SLIDE --out DIR`: the fields of one smear (a folder, searched
//! recursively, or image files) -> `DIR/slide.json` (an `allscan::slide::SlideReport`) and a
//! self-contained `DIR/slide.html` rendered from that same report (field thumbnails with every
//! white cell boxed by call, the cell gallery by call and suspicion, counts, the rule).
//!
//! Glue only: decoding as `allscan predict`, prediction by `allscan::infer::Predictor`, the
//! slide model and its HTML in `allscan::slide`. Both files are written atomically. Fields
//! that fail are listed in the report and on stderr, the others are still reported, and the
//! exit code is 1 when any failed. `--review` applies a reviewer's corrections (a review file,
//! or a slide exported from the web page) before counting. `--gradcam K` (default 0, off)
//! then explains the K cells that drove the call (most suspicious first, then the others by
//! suspicion): `DIR/gradcam/<cell id>.png`, named in the cell's `gradcam` in slide.json and
//! embedded in slide.html; those fields are decoded a second time, the others are not.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allscan::explain::{explain_cells, png_bytes};
use allscan::fsutil::write_atomic;
use allscan::slide::{
    png_data_url, render_html, FailedField, Review, SlideImages, SlideReport, SlideRule, DEFAULT_BLAST_FRACTION,
};
use allscan_preprocess::decode_file;
use anyhow::Context;

use super::predict::{collect_images, load_predictor};

/// Options of `allscan report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The trained run directory (bundle).
    pub run: PathBuf,
    /// The slide: a folder of its fields (searched recursively) or one image file.
    pub slide: PathBuf,
    /// Output folder for slide.json and slide.html (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Flag the slide when blasts / white cells is at or above this level (WHO: 20% blasts
    /// in blood or marrow for acute leukemia).
    #[arg(long, default_value_t = DEFAULT_BLAST_FRACTION)]
    pub blast_fraction: f64,
    /// Override the bundle's per-cell threshold on p(blast).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Micrometres per pixel of these fields (cell models), instead of the red-cell estimate.
    #[arg(long, value_name = "UM")]
    pub um_per_px: Option<f32>,
    /// Fields decoded and predicted together.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Corrections to apply: a review file (`{"format": "allscan-review/1", "labels":
    /// {cell id: label}}`) or a slide JSON exported from the web page.
    #[arg(long, value_name = "JSON")]
    pub review: Option<PathBuf>,
    /// Write Grad-CAM overlays of this many cells, those that drove the call first (0: none).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub gradcam: usize,
}

/// Explains the report's `k` most telling cells ([`SlideReport::gradcam_cells`]): each field
/// holding one is decoded again, its cells explained together, the overlays written to
/// `out/gradcam/<id>.png` and embedded in `images`. A field that fails is named on stderr and
/// its cells keep no overlay; returns how many overlays were written.
fn write_gradcams(
    report: &mut SlideReport,
    images: &mut SlideImages,
    predictor: &allscan::infer::Predictor,
    paths: &[PathBuf],
    k: usize,
    out: &Path,
) -> anyhow::Result<usize> {
    let mut by_field: std::collections::BTreeMap<usize, Vec<(usize, String)>> = Default::default();
    for c in report.gradcam_cells(k) {
        let field = &report.fields[c.field];
        if let Some(i) = field.cells.iter().position(|x| x.id == c.id) {
            by_field.entry(c.field).or_default().push((i, c.id.clone()));
        }
    }
    if by_field.is_empty() {
        return Ok(0);
    }
    let dir = out.join("gradcam");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let limits = predictor.preprocess().decode;
    let mut written = 0;
    for (f, cells) in by_field {
        let name = report.fields[f].name.clone();
        let Some(path) = paths.get(f) else { continue };
        let img = match decode_file(path, &limits) {
            Ok(img) => img,
            Err(e) => {
                eprintln!("  Grad-CAM skipped for {name}: {}", e.reason());
                continue;
            }
        };
        let idx: Vec<usize> = cells.iter().map(|(i, _)| *i).collect();
        let explained = match explain_cells(predictor, &img, &idx) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("  Grad-CAM skipped for {name}: {e}");
                continue;
            }
        };
        for ((_, id), e) in cells.iter().zip(explained) {
            let png = png_bytes(&e.overlay(&img)).with_context(|| format!("encoding the Grad-CAM of {id}"))?;
            let rel = format!("gradcam/{id}.png");
            let file = out.join(&rel);
            write_atomic(&file, &png).with_context(|| format!("writing {}", file.display()))?;
            images.gradcam.insert(id.clone(), png_data_url(&png));
            if let Some(c) = report.cell_mut(id) {
                c.gradcam = Some(rel);
            }
            written += 1;
        }
    }
    Ok(written)
}

/// Reads a review file, or the per-cell reviews of an exported slide.
fn read_review(path: &Path) -> anyhow::Result<Review> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    if v.get("labels").is_some() {
        return serde_json::from_value(v).with_context(|| format!("{}: not a review file", path.display()));
    }
    let slide: SlideReport = serde_json::from_value(v)
        .with_context(|| format!("{}: neither a review nor a slide report", path.display()))?;
    Ok(slide.review())
}

/// The name a field has in the report: its path under the slide folder.
fn field_name(slide: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(slide).ok().filter(|r| !r.as_os_str().is_empty());
    rel.unwrap_or_else(|| Path::new(file.file_name().unwrap_or(file.as_os_str()))).display().to_string()
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch > 0, "--batch 0: the batch must hold at least one field");
    let (_bundle, predictor) = load_predictor(&args.run)?;
    let predictor = match args.threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => anyhow::bail!("--threshold {t} must be in [0, 1]"),
        Some(t) => predictor.with_threshold(t),
        None => predictor,
    };
    if let Some(u) = args.um_per_px {
        anyhow::ensure!(
            u.is_finite() && u > 0.0 && u < 100.0,
            "--um-per-px {u} must be a positive number of micrometres"
        );
    }
    let predictor = predictor.with_batch_size(8).with_um_per_px(args.um_per_px);
    let rule = SlideRule::new(args.blast_fraction, predictor.threshold()).context("--blast-fraction")?;
    let review = args.review.as_deref().map(read_review).transpose()?;

    let mut skipped = Vec::new();
    let files = collect_images(std::slice::from_ref(&args.slide), &mut skipped);
    let mut failed: Vec<FailedField> =
        skipped.into_iter().map(|f| FailedField { name: f.path, reason: f.reason }).collect();
    if files.is_empty() {
        for f in &failed {
            eprintln!("  {}: {}", f.name, f.reason);
        }
        anyhow::bail!("no image file found in {}", args.slide.display());
    }
    let limits = predictor.preprocess().decode;
    let bar = allscan::progress::bar(files.len() as u64, "fields", true);
    // The slide's fields are one set (they share a pooled scale where a field has no red
    // cells); each is decoded again for its thumbnail and crops, so one field at a time is held.
    let load = |k: usize| decode_file(&files[k], &limits).map(|img| (img, None)).map_err(|e| e.reason());
    let preds = predictor.predict_set(files.len(), args.batch, &load, &|n| bar.inc(n));
    let mut fields = Vec::with_capacity(files.len());
    // The file of each reported field, for --gradcam.
    let mut paths: Vec<PathBuf> = Vec::with_capacity(files.len());
    let mut images = SlideImages::default();
    for (path, pred) in files.iter().zip(preds) {
        let name = field_name(&args.slide, path);
        let p = match pred.and_then(|p| decode_file(path, &limits).map(|img| (p, img)).map_err(|e| e.reason())) {
            Ok(p) => p,
            Err(reason) => {
                failed.push(FailedField { name, reason });
                continue;
            }
        };
        let (p, img) = p;
        // The field's cells as the report will hold them, to cut their crops now.
        let index = fields.len();
        let one = SlideReport::with_first_field(vec![(name.clone(), p.clone())], rule.clone(), Vec::new(), index);
        if let Some(f) = one.fields.first() {
            images.add_field(index, f, &img);
        }
        fields.push((name, p));
        paths.push(path.to_path_buf());
    }
    bar.finish_and_clear();

    let mut report = SlideReport::new(fields, rule, failed);
    if let Some(r) = &review {
        report
            .apply(r)
            .with_context(|| format!("applying {}", args.review.as_deref().unwrap_or(Path::new("")).display()))?;
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let cams = write_gradcams(&mut report, &mut images, &predictor, &paths, args.gradcam, &args.out)?;
    let title = format!(
        "allscan slide report: {}",
        args.slide.file_name().map_or_else(|| args.slide.display().to_string(), |n| n.to_string_lossy().into_owned())
    );
    let json = serde_json::to_vec_pretty(&report).context("serialising the slide report")?;
    let html = render_html(&report, &images, &title);
    let (jp, hp) = (args.out.join("slide.json"), args.out.join("slide.html"));
    write_atomic(&jp, &json).with_context(|| format!("writing {}", jp.display()))?;
    write_atomic(&hp, html.as_bytes()).with_context(|| format!("writing {}", hp.display()))?;

    let k = &report.counts;
    println!(
        "{} field(s), {} white cell(s), {} blast(s): blast fraction {:.1}% (95% CI {:.1}-{:.1}%); {}",
        k.fields,
        k.white_cells,
        k.blasts,
        100.0 * k.blast_fraction,
        100.0 * k.blast_fraction_ci95[0],
        100.0 * k.blast_fraction_ci95[1],
        allscan::slide::call_text(report.call)
    );
    println!("wrote {} and {}", jp.display(), hp.display());
    if args.gradcam > 0 {
        println!("wrote {cams} Grad-CAM overlay(s) to {}", args.out.join("gradcam").display());
    }
    println!("{}", allscan::slide::NOTICE);
    if report.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} file(s) failed:", report.failed.len());
        for f in &report.failed {
            eprintln!("  {}: {}", f.name, f.reason);
        }
        Ok(ExitCode::FAILURE)
    }
}
