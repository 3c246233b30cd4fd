//! `allscan weights fetch|import|check`.
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum WeightsCommand {
    /// Check a weights file without saving.
    Check {},
}

pub fn run(_c: WeightsCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
