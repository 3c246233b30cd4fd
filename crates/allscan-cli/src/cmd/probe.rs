//! `allscan probe RUN DATA`: a run bundle + a dataset of several sources (an
//! `allscan-sources.json` folder) -> how well the model's features identify the source lab
//! (lower is better), beside the same probe on the model's input pixels. Glue only: the work
//! is `allscan::eval::probe::probe_dataset`.

use std::path::PathBuf;
use std::process::ExitCode;

use allscan::data::{BinaryLabel, DatasetIndex, IndexOptions, Part, SplitFile};
use anyhow::Context;

use super::predict::load_predictor;
use crate::choices::PartArg;

/// Which labelled images `allscan probe` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeClass {
    /// Normal cells only.
    Healthy,
    /// Blasts only.
    Leukemia,
    /// Every labelled image.
    All,
}

/// Options of `allscan probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Run folder written by `allscan train`.
    pub run: PathBuf,
    /// A sources dataset (a folder with allscan-sources.json), e.g. the run's training data.
    pub data: PathBuf,
    /// Split file for DATA: only its --part is probed (default: every image).
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Part of the split to probe.
    #[arg(long, value_enum, default_value_t = PartArg::Test)]
    pub part: PartArg,
    /// Which images: healthy (normal cells of every source, the default: across classes the
    /// sources differ in class too), leukemia, or all.
    #[arg(long, value_enum, default_value_t = ProbeClass::Healthy)]
    pub class: ProbeClass,
    /// Images per source at most.
    #[arg(long, default_value_t = 300)]
    pub max_per_source: usize,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seed of the sampling and the folds.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let (_bundle, predictor) = load_predictor(&args.run)?;
    let index = DatasetIndex::build(&args.data, &IndexOptions::default())
        .with_context(|| format!("indexing {}", args.data.display()))?;
    let mut idx: Vec<usize> = match &args.split {
        Some(p) => {
            let split = SplitFile::load(p, &index)?;
            split.select(&index, Part::from(args.part), None)
        }
        None => (0..index.images.len()).collect(),
    };
    let want = match args.class {
        ProbeClass::Healthy => Some(BinaryLabel::Healthy),
        ProbeClass::Leukemia => Some(BinaryLabel::Leukemia),
        ProbeClass::All => None,
    };
    if let Some(w) = want {
        idx.retain(|&i| index.images[i].label == Some(w));
    }
    let report =
        allscan::eval::probe::probe_dataset(&predictor, &index, &idx, args.max_per_source, args.folds, args.seed)
            .with_context(|| format!("probing {}", args.data.display()))?;
    print!("{}", report.table());
    if let Some(p) = &args.json {
        allscan::fsutil::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
