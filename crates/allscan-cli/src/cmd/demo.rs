//! `allscan demo`: the whole pipeline on a synthetic set.
use std::process::ExitCode;

/// Options of `allscan demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
