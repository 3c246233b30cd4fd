//! `allscan train DATA --out RUN`: dataset folder -> run bundle (config.json, model.bpk,
//! metadata.json, metrics.csv, train.log, split.json, checkpoint/). Glue only: the work is
//! `allscan::train::train`.

use std::path::PathBuf;
use std::process::ExitCode;

use allscan::data::SplitConfig;
use allscan::train::{Override, Profile, TaskKind, TrainRequest, WeightsSource};
use anyhow::Context;

use crate::choices::{DeviceArg, ProfileArg, TaskArg, ViewArg};

/// Training options shared by `allscan train` and `allscan cv`.
#[derive(Debug, clap::Args)]
pub struct TrainOptions {
    /// What the head predicts (default: the profile's; subtype for seed-code, binary otherwise).
    #[arg(long, value_enum)]
    pub task: Option<TaskArg>,
    /// Named defaults for the whole config tree.
    #[arg(long, value_enum, default_value_t = ProfileArg::Cpu)]
    pub profile: ProfileArg,
    /// Label map for class folders whose names say nothing: NAME=healthy|leukemia,...
    #[arg(long)]
    pub map: Option<String>,
    /// Starting weights: imagenet, none, or a .pth/.bpk backbone file (default: the profile's).
    #[arg(long)]
    pub weights: Option<String>,
    /// Epochs: N (stage 2) or S1,S2 (both stages).
    #[arg(long)]
    pub epochs: Option<String>,
    /// Model input side in pixels (default: the profile's).
    #[arg(long)]
    pub input_size: Option<u32>,
    /// What the model sees (default: the profile's).
    #[arg(long, value_enum)]
    pub view: Option<ViewArg>,
    /// Training batch size (default: the profile's).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override any part of the config tree: KEY=VALUE, repeatable, e.g.
    /// `--set train.augment.hue=0 --set model.backbone.growth_rate=16` (keys as in config.json).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Seed of the split, initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device (GPU backends need a build with `--features cuda` / `--features wgpu`).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// No per-epoch lines on stdout (train.log still gets them).
    #[arg(long, short)]
    pub quiet: bool,
}

impl TrainOptions {
    /// The typed flags as overrides of the keys they stand for, then the `--set`s: one path
    /// into the config tree (`allscan::config::overrides` states the order).
    fn overrides(&self) -> anyhow::Result<Vec<Override>> {
        let mut o = Vec::new();
        if let Some(e) = self.epochs.as_deref() {
            let (s1, s2) = parse_epochs(e)?;
            o.extend(s1.map(|n| Override::epochs(1, n)));
            o.extend(s2.map(|n| Override::epochs(2, n)));
        }
        o.extend(self.input_size.map(Override::input_size));
        o.extend(self.view.map(|v| Override::view(v.into())));
        o.extend(self.batch_size.map(Override::batch_size));
        if let Some(w) = self.weights.as_deref() {
            o.push(Override::weights(&w.parse::<WeightsSource>()?));
        }
        for s in &self.overrides {
            o.push(Override::set(s)?);
        }
        Ok(o)
    }

    /// A request for DATA -> OUT with these options; split, unfreeze and resume left to the caller.
    pub fn request(&self, data: PathBuf, out: PathBuf) -> anyhow::Result<TrainRequest> {
        let profile = Profile::from(self.profile);
        Ok(TrainRequest {
            data,
            out,
            task: self.task.map_or(profile.default_task(), TaskKind::from),
            profile,
            split: None,
            split_config: None,
            map: self.map.clone(),
            overrides: self.overrides()?,
            seed: self.seed,
            device: self.device.into(),
            resume: false,
            progress: true,
            echo: !self.quiet,
        })
    }
}

/// Options of `allscan train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Dataset folder (Aria layout, class folders, C-NMC, ALL-IDB).
    pub data: PathBuf,
    /// Run folder to write (must not exist or be empty, unless --resume).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub options: TrainOptions,
    /// Split file from `allscan data split` (its fingerprint must match DATA); without it a
    /// split is made with --seed and saved into the run folder.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Test fraction of the split made without --split.
    #[arg(long)]
    pub test: Option<f64>,
    /// Validation fraction of the split made without --split.
    #[arg(long)]
    pub val: Option<f64>,
    /// Stage-2 trainable parts, e.g. denseblock4,norm5 or all (default: the profile's).
    #[arg(long, value_delimiter = ',')]
    pub unfreeze: Option<Vec<String>>,
    /// Continue an interrupted run in --out (the options must be the same).
    #[arg(long)]
    pub resume: bool,
}

/// Parses `--epochs N` (stage 2) or `--epochs S1,S2`.
pub fn parse_epochs(s: &str) -> anyhow::Result<(Option<usize>, Option<usize>)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let num = |p: &str| p.parse::<usize>().with_context(|| format!("--epochs {s}: `{p}` is not a number"));
    match parts.as_slice() {
        [n] => Ok((None, Some(num(n)?))),
        [a, b] => Ok((Some(num(a)?), Some(num(b)?))),
        _ => anyhow::bail!("--epochs {s}: give N (stage 2) or S1,S2"),
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let mut req = args.options.request(args.data.clone(), args.out.clone())?;
    let task = req.task;
    req.split = args.split;
    req.split_config = (args.test.is_some() || args.val.is_some()).then(|| {
        let d = SplitConfig::default();
        SplitConfig {
            test: args.test.unwrap_or(d.test),
            val: args.val.unwrap_or(d.val),
            folds: None,
            seed: args.options.seed,
        }
    });
    if let Some(parts) = &args.unfreeze {
        req.overrides.push(Override::unfreeze(parts));
    }
    req.resume = args.resume;
    let outcome = allscan::train::train(&req).with_context(|| format!("training on {}", args.data.display()))?;
    if !outcome.skipped.is_empty() {
        eprintln!("note: skipped {} unreadable or unusable file(s) (listed in train.log)", outcome.skipped.len());
    }
    let m = &outcome.bundle.metadata;
    println!(
        "run bundle: {} ({} task, threshold {:.4}, {:.0} s{})",
        outcome.bundle.dir.display(),
        task.name(),
        m.threshold,
        outcome.seconds,
        if outcome.resumed { ", resumed" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
