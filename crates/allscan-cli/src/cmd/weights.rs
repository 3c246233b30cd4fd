//! `allscan weights fetch|import|check`: pretrained DenseNet backbones (arXiv:1608.06993).
//!
//! Input: a variant name or a torchvision `.pth` file. Output: the backbone in Burn's format in
//! the cache dir (`$ALLSCAN_HOME/weights` or the platform cache), and counts on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use allscan::weights::{self, ImportSummary};
use anyhow::Context;
use burn::tensor::Device;
use densenet_burn::DenseNetVariant;

/// Pretrained weights: fetch, import, check.
#[derive(Debug, clap::Subcommand)]
pub enum WeightsCommand {
    /// Download torchvision's ImageNet weights (checks the SHA-256 in the file name), then import.
    Fetch {
        /// densenet121, densenet169 or densenet201.
        #[arg(value_parser = parse_variant)]
        variant: DenseNetVariant,
        /// Mirror to download from instead of https://download.pytorch.org/models
        /// (the official file name is appended).
        #[arg(long)]
        base_url: Option<String>,
        /// Cache directory (default: $ALLSCAN_HOME/weights or the platform cache dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Convert a torchvision DenseNet state_dict (.pth) into Burn's format in the cache.
    /// Strict: every missing or unused key other than the ImageNet classifier is an error.
    Import {
        /// The .pth file, e.g. densenet201-c1103571.pth.
        file: PathBuf,
        /// Which DenseNet the file holds (default: from the file name or its contents).
        #[arg(long, value_parser = parse_variant)]
        variant: Option<DenseNetVariant>,
        /// Cache directory (default: $ALLSCAN_HOME/weights or the platform cache dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Report applied / missing / unused tensor counts for a .pth file without saving.
    Check {
        /// The .pth file.
        file: PathBuf,
        /// Which DenseNet to check against (default: from the file name or its contents).
        #[arg(long, value_parser = parse_variant)]
        variant: Option<DenseNetVariant>,
    },
}

fn parse_variant(s: &str) -> Result<DenseNetVariant, String> {
    DenseNetVariant::from_name(s)
        .ok_or_else(|| format!("unknown DenseNet '{s}': use densenet121, densenet169 or densenet201"))
}

fn cache(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => Ok(d),
        None => Ok(weights::cache_dir()?),
    }
}

fn print_import(s: &ImportSummary) {
    println!(
        "imported {}: {} tensors applied, {} missing, {} unused, {} ignored (num_batches_tracked, ImageNet classifier)",
        s.variant,
        s.report.applied,
        s.report.missing.len(),
        s.report.unused.len(),
        s.report.ignored.len()
    );
    println!("saved {}", s.saved_to.display());
}

pub fn run(c: WeightsCommand) -> anyhow::Result<ExitCode> {
    let device = Device::flex();
    match c {
        WeightsCommand::Fetch { variant, base_url, dir } => {
            let dir = cache(dir)?;
            let mut bar = weights::progress_bar();
            let s = weights::fetch(variant, &dir, base_url.as_deref(), &mut bar, &device)
                .with_context(|| format!("cannot fetch {variant} weights"))?;
            println!("{} {}", if s.downloaded { "downloaded" } else { "reused" }, s.pth.display());
            print_import(&s.import);
            Ok(ExitCode::SUCCESS)
        }
        WeightsCommand::Import { file, variant, dir } => {
            let dir = cache(dir)?;
            let s = weights::import(&file, variant, &dir, &device)
                .with_context(|| format!("cannot import {}", file.display()))?;
            print_import(&s);
            Ok(ExitCode::SUCCESS)
        }
        WeightsCommand::Check { file, variant } => {
            let (variant, _model, r) =
                weights::check(&file, variant, &device).with_context(|| format!("cannot check {}", file.display()))?;
            println!(
                "{}: as {variant}: {} applied, {} missing, {} unused, {} shape mismatches, {} ignored",
                file.display(),
                r.applied,
                r.missing.len(),
                r.unused.len(),
                r.shape_mismatches.len(),
                r.ignored.len()
            );
            for m in r.shape_mismatches.iter().take(10) {
                println!("  shape {}: expected {:?}, found {:?}", m.key, m.expected, m.found);
            }
            for k in r.missing.iter().take(10) {
                println!("  missing {k}");
            }
            for k in r.unused.iter().take(10) {
                println!("  unused {k}");
            }
            Ok(if r.is_complete() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
