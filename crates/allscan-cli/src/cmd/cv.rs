//! `allscan cv DATA --folds K`: grouped, stratified k-fold cross-validation -> one run per fold
//! under `OUT/fold-k/run`, `OUT/cv.json` and one `OUT/report.html` (mean ± sd and per-fold
//! tables). Glue only: the work is `allscan::cv::cross_validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use allscan::cv::{cross_validate, CvRequest};
use anyhow::Context;

use crate::cmd::train::TrainOptions;

/// Options of `allscan cv`.
#[derive(Debug, clap::Args)]
pub struct CvArgs {
    /// Dataset folder (Aria layout, class folders, C-NMC, ALL-IDB).
    pub data: PathBuf,
    /// Output folder (must not hold earlier fold runs).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Fraction set aside as the test part (not used by cross-validation).
    #[arg(long, default_value_t = 0.2)]
    pub test: f64,
    #[command(flatten)]
    pub options: TrainOptions,
}

pub fn run(args: CvArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.folds >= 2, "--folds {}: at least 2", args.folds);
    let mut train = args.options.request(args.data.clone(), args.out.clone())?;
    train.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let req = CvRequest { folds: args.folds, test: args.test, train };
    let outcome = cross_validate(&req).with_context(|| format!("cross-validating on {}", args.data.display()))?;
    for w in &outcome.file.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", outcome.table);
    println!("report: {}", outcome.report_path.display());
    Ok(ExitCode::SUCCESS)
}
