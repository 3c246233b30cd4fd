//! `allscan cv DATA --folds K`: grouped, stratified k-fold cross-validation -> one run per fold
//! under `OUT/fold-k/run`, `OUT/cv.json` and one `OUT/report.html` (mean ± sd and per-fold
//! tables). Glue only: the work is `allscan::eval::cv::cross_validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use allscan::device::DeviceKind;
use allscan::eval::cv::{cross_validate, CvRequest};
use allscan::train::{Profile, TaskKind, TrainRequest, WeightsSource};
use anyhow::Context;

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
    /// binary or subtype.
    #[arg(long, default_value = "binary")]
    pub task: String,
    /// cpu or paper.
    #[arg(long, default_value = "cpu")]
    pub profile: String,
    /// Label map: NAME=healthy|leukemia,...
    #[arg(long)]
    pub map: Option<String>,
    /// Starting weights: imagenet, none, or a .pth/.bpk backbone file.
    #[arg(long)]
    pub weights: Option<String>,
    /// Epochs: N (stage 2) or S1,S2.
    #[arg(long)]
    pub epochs: Option<String>,
    /// Model input side in pixels.
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Training batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of the folds and of every run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No per-epoch lines on stdout.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_epochs(s: &str) -> anyhow::Result<(Option<usize>, Option<usize>)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let num = |p: &str| p.parse::<usize>().with_context(|| format!("--epochs {s}: `{p}` is not a number"));
    match parts.as_slice() {
        [n] => Ok((None, Some(num(n)?))),
        [a, b] => Ok((Some(num(a)?), Some(num(b)?))),
        _ => anyhow::bail!("--epochs {s}: give N (stage 2) or S1,S2"),
    }
}

pub fn run(args: CvArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.folds >= 2, "--folds {}: at least 2", args.folds);
    let train = TrainRequest {
        data: args.data.clone(),
        out: args.out.clone(),
        task: args.task.parse::<TaskKind>()?,
        profile: args.profile.parse::<Profile>()?,
        split: None,
        split_config: None,
        map: args.map,
        weights: args.weights.as_deref().map(str::parse::<WeightsSource>).transpose()?,
        unfreeze: None,
        epochs: args.epochs.as_deref().map(parse_epochs).transpose()?.unwrap_or((None, None)),
        input_size: args.input_size,
        batch_size: args.batch_size,
        seed: args.seed,
        device: args.device.parse::<DeviceKind>()?,
        resume: false,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        echo: !args.quiet,
    };
    let req = CvRequest { folds: args.folds, test: args.test, train };
    let outcome = cross_validate(&req).with_context(|| format!("cross-validating on {}", args.data.display()))?;
    for w in &outcome.file.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", outcome.table);
    println!("report: {}", outcome.report_path.display());
    Ok(ExitCode::SUCCESS)
}
