//! Benchmark: end-to-end prediction speed (decode, preprocess, model) on a folder of images,
//! against the model-only rate on the same number of views in the same process.
//!
//! Input: a folder (e.g. Aria's `Original/`), a run bundle or a torchvision variant with random
//! weights (speed does not depend on the weights), batch size, a file cap. Output: one JSON
//! line with both rates, their ratio and the share of time outside the model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use allscan::infer::Predictor;
use allscan::model::ClassifierConfig;
use allscan_preprocess::{decode_file, PreprocessConfig};
use anyhow::Context;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Parser;
use densenet_burn::DenseNetVariant;
use image::RgbImage;

/// Time `predict`'s path end to end against model-only forward passes.
#[derive(Debug, Parser)]
struct Args {
    /// Folder of images (searched recursively).
    folder: PathBuf,
    /// A trained run bundle; without it, `--variant` with random weights and default
    /// preprocessing (nucleus mode, largest-nucleus crop at 224).
    #[arg(long)]
    run: Option<PathBuf>,
    /// densenet121, densenet169 or densenet201 (without --run).
    #[arg(long, default_value = "densenet201")]
    variant: String,
    /// Fields per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Largest number of files timed.
    #[arg(long, default_value_t = 64)]
    max_files: usize,
}

fn images(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut items: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    items.sort();
    for p in items {
        if p.is_dir() {
            images(&p, out);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png" | "tif" | "tiff" | "bmp"))
        {
            out.push(p);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = Device::flex();
    let predictor = match &args.run {
        Some(run) => Predictor::from_bundle(&allscan::bundle::RunBundle::open(run)?, &device)?,
        None => {
            let variant = DenseNetVariant::from_name(&args.variant)
                .with_context(|| format!("unknown variant {}", args.variant))?;
            let config = ClassifierConfig::binary(variant);
            let model = config.init(&device)?.for_inference();
            Predictor::new(model, config, PreprocessConfig::default(), allscan::decision::Decision::binary(0.5)?)?
        }
    }
    .with_batch_size(args.batch);
    let mut files = Vec::new();
    images(&args.folder, &mut files);
    files.truncate(args.max_files);
    anyhow::ensure!(!files.is_empty(), "no images under {}", args.folder.display());

    // Warm-up (first-call allocations) on one batch, not timed.
    let warm: Vec<RgbImage> =
        files.iter().take(args.batch).filter_map(|p| decode_file(p, &predictor.preprocess().decode).ok()).collect();
    let _ = predictor.predict_fields(&warm.iter().collect::<Vec<_>>());

    let size = predictor.preprocess().input_size as usize;
    // Model only: `views` views, random inputs, the same batch size. Timed before and after
    // the end-to-end run and averaged, so a change in machine load hits both sides alike.
    let model_only = |views: usize| {
        let t = Instant::now();
        let mut left = views;
        while left > 0 {
            let b = left.min(args.batch.max(1));
            let x = Tensor::<4>::random([b, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
            let _ = predictor.model().forward(x).into_data();
            left -= b;
        }
        t.elapsed().as_secs_f64()
    };
    let expected_views = files.len(); // one view per field in largest-crop mode; corrected below
    let before_s = model_only(expected_views) / expected_views as f64;

    // End to end, as `allscan predict` does it: decode a batch, predict it.
    let t = Instant::now();
    let (mut fields, mut views, mut failed) = (0usize, 0usize, 0usize);
    for chunk in files.chunks(args.batch.max(1)) {
        let decoded: Vec<RgbImage> = chunk
            .iter()
            .filter_map(|p| decode_file(p, &predictor.preprocess().decode).map_err(|_| failed += 1).ok())
            .collect();
        for r in predictor.predict_fields(&decoded.iter().collect::<Vec<_>>()) {
            match r {
                Ok(f) => {
                    fields += 1;
                    views += f.cells.len();
                }
                Err(_) => failed += 1,
            }
        }
    }
    let e2e_s = t.elapsed().as_secs_f64();

    let after_s = model_only(views) / views.max(1) as f64;
    let model_s = (before_s + after_s) / 2.0 * views as f64;
    let e2e = fields as f64 / e2e_s;
    let model = views as f64 / model_s;
    println!(
        "{}",
        serde_json::json!({
            "files": files.len(), "fields": fields, "views": views, "failed": failed, "batch": args.batch,
            "end_to_end_images_per_s": e2e, "seconds_per_field": e2e_s / fields.max(1) as f64,
            "views_per_field": views as f64 / fields.max(1) as f64, "model_only_views_per_s": model,
            "ratio_end_to_end_to_model_only": e2e / model,
            "share_outside_model": 1.0 - (model_s / e2e_s).min(1.0),
        })
    );
    Ok(())
}
