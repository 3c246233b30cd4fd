//! `allscan demo-data`: write a synthetic smear dataset.
use std::process::ExitCode;

/// Options of `allscan demo-data`.
#[derive(Debug, clap::Args)]
pub struct DemoDataArgs {}

pub fn run(_args: DemoDataArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
