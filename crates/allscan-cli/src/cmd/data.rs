//! `allscan data inspect|split`.
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Describe a dataset folder.
    Inspect {},
}

pub fn run(_c: DataCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
