//! `allscan eval RUN DATA`: a run bundle + a dataset folder -> `OUT/metrics.json`, a
//! self-contained `OUT/report.html` and a short table on stdout. The bundle is only read. Glue
//! only: the work is `allscan::eval::evaluate`.

use std::path::PathBuf;
use std::process::ExitCode;

use allscan::data::Part;
use allscan::device::DeviceKind;
use allscan::eval::run::{EvalRequest, DEFAULT_BOOTSTRAP};
use anyhow::Context;

use crate::choices::{DeviceArg, PartArg};

/// Options of `allscan eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Run folder written by `allscan train`.
    pub run: PathBuf,
    /// Dataset folder: the training dataset (its test part is scored) or another dataset
    /// (every image is scored; give --map when its class names say nothing).
    pub data: PathBuf,
    /// Split file for DATA (default: the run's own split.json when it fits DATA).
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Part of the split to score.
    #[arg(long, value_enum, default_value_t = PartArg::Test)]
    pub part: PartArg,
    /// Output folder (default: RUN/eval-<data folder name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Label map for DATA's classes: NAME=healthy|leukemia,... (e.g. all=leukemia,hem=healthy).
    #[arg(long)]
    pub map: Option<String>,
    /// Re-choose the decision threshold on the validation part for this sensitivity, for this
    /// evaluation: it is printed and written to metrics.json; the run bundle keeps its own
    /// (the one predict and serve use).
    #[arg(long)]
    pub target_sensitivity: Option<f64>,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = DEFAULT_BOOTSTRAP)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most confident errors shown in the report.
    #[arg(long, default_value_t = 8)]
    pub gallery: usize,
    /// No Grad-CAM overlays in the gallery (faster).
    #[arg(long)]
    pub no_gradcam: bool,
    /// Skip the colour-only shortcut baseline.
    #[arg(long)]
    pub no_shortcut: bool,
    /// Score even when the bundle's preprocessing was made for another kind of image.
    #[arg(long)]
    pub allow_preprocess_mismatch: bool,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// A sources dataset (allscan-sources.json): score only this source's images.
    #[arg(long)]
    pub source: Option<String>,
    /// Re-estimate the model's BatchNorm statistics on the evaluated images first (test-time
    /// adaptation, AdaBN; no labels used). Validation and the shortcuts are scored without it.
    #[arg(long)]
    pub adapt: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let part = Part::from(args.part);
    let device = DeviceKind::from(args.device);
    if let Some(t) = args.target_sensitivity {
        anyhow::ensure!(t > 0.0 && t <= 1.0, "--target-sensitivity {t}: must be in (0, 1]");
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let name = args.data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
        args.run.join(format!("eval-{name}"))
    });
    let req = EvalRequest {
        split: args.split,
        part,
        map: args.map,
        target_sensitivity: args.target_sensitivity,
        n_boot: args.bootstrap,
        seed: args.seed,
        gallery: args.gallery,
        gradcam: !args.no_gradcam,
        shortcut: !args.no_shortcut,
        allow_preprocess_mismatch: args.allow_preprocess_mismatch,
        device,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        source: args.source,
        adapt: args.adapt,
        ..EvalRequest::new(&args.run, &args.data, &out)
    };
    let outcome = allscan::eval::evaluate(&req)
        .with_context(|| format!("evaluating {} on {}", args.run.display(), args.data.display()))?;
    for w in &outcome.input.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(t) = outcome.chosen_threshold {
        println!(
            "threshold {t:.4} chosen on the validation part for this evaluation (in metrics.json; {} is unchanged)",
            args.run.display()
        );
    }
    println!("{}: {}", if outcome.cross_dataset { "cross-dataset" } else { "evaluated" }, outcome.metrics.split);
    print!("{}", outcome.table);
    println!("metrics: {}", outcome.metrics_path.display());
    println!("report:  {}", outcome.report_path.display());
    Ok(ExitCode::SUCCESS)
}

/// The last step of `allscan demo`: evaluates the demo's run on its dataset's test part
/// (fewer resamples, so the demo stays quick), prints the table and returns the report path.
pub fn demo_step(run: &std::path::Path, data: &std::path::Path, out: &std::path::Path) -> anyhow::Result<PathBuf> {
    println!("\n== step: evaluate on the held-out test part (metrics.json, report.html)");
    let req = EvalRequest { n_boot: 200, gallery: 6, ..EvalRequest::new(run, data, out) };
    let outcome = allscan::eval::evaluate(&req).with_context(|| format!("evaluating {}", run.display()))?;
    for w in &outcome.input.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", outcome.table);
    println!("report: {}", outcome.report_path.display());
    Ok(outcome.report_path)
}
