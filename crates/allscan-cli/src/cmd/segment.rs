//! `allscan segment`: masks, crops and nuclei for a file or folder.
use std::process::ExitCode;

/// Options of `allscan segment`.
#[derive(Debug, clap::Args)]
pub struct SegmentArgs {}

pub fn run(_args: SegmentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
