//! `allscan explain RUN IMAGE... --out DIR`: Grad-CAM overlays. Input: a run bundle and image
//! files or folders. Output: `DIR/<name>.gradcam.png` per field (the heat of every model view
//! placed back on the field) and, in ROI mode, `DIR/<name>.cell<N>.gradcam.png` per nucleus
//! crop. Files that fail are listed at the end; the exit code is 1 when any failed.

use std::path::PathBuf;
use std::process::ExitCode;

use allscan::explain::{explain_field, png_bytes};
use allscan::fsutil::write_atomic;
use allscan_preprocess::decode_file;
use anyhow::Context;

use super::predict::{collect_images, load_predictor, Failure};

/// Options of `allscan explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The trained run directory (bundle).
    pub run: PathBuf,
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder for the overlay PNGs.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let (_bundle, predictor) = load_predictor(&args.run)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut failed: Vec<Failure> = Vec::new();
    let files = collect_images(&args.images, &mut failed);
    let limits = predictor.preprocess().decode;
    let mut written = 0usize;
    for (i, path) in files.iter().enumerate() {
        let fail = |reason: String| Failure { path: path.display().to_string(), reason };
        let img = match decode_file(path, &limits) {
            Ok(i) => i,
            Err(e) => {
                failed.push(fail(e.reason()));
                continue;
            }
        };
        let e = match explain_field(&predictor, &img) {
            Ok(e) => e,
            Err(e) => {
                failed.push(fail(e.to_string()));
                continue;
            }
        };
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| format!("image{i}"));
        // Two inputs may share a stem (a/x.png, b/x.png): number the second one.
        let stem =
            if args.out.join(format!("{stem}.gradcam.png")).exists() && i > 0 { format!("{stem}-{i}") } else { stem };
        let mut outputs = vec![(args.out.join(format!("{stem}.gradcam.png")), e.field_overlay(&img))];
        if e.views.nucleus_of_view.iter().any(Option::is_some) {
            for (k, o) in e.view_overlays().into_iter().enumerate() {
                outputs.push((args.out.join(format!("{stem}.cell{k}.gradcam.png")), o));
            }
        }
        for (p, o) in outputs {
            let bytes = png_bytes(&o).with_context(|| format!("encoding {}", p.display()))?;
            write_atomic(&p, &bytes).with_context(|| format!("writing {}", p.display()))?;
            written += 1;
        }
        println!(
            "{}: {} (p_leukemia {:.4}, {} cell(s)) -> {}",
            path.display(),
            e.prediction.prediction,
            e.prediction.p_leukemia,
            e.prediction.cells.len(),
            args.out.join(format!("{stem}.gradcam.png")).display()
        );
    }
    println!("{written} overlay(s) written to {}", args.out.display());
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{} file(s) failed:", failed.len());
    for f in &failed {
        eprintln!("  {}: {}", f.path, f.reason);
    }
    Ok(ExitCode::FAILURE)
}
