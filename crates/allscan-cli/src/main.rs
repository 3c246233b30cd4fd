//! The `allscan` binary: clap types and glue only; one file per subcommand under `cmd/`.
//!
//! Research use only, not a diagnostic device.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Detect Acute Lymphoblastic Leukemia in peripheral blood smear images (research use only,
/// not a diagnostic device).
#[derive(Debug, Parser)]
#[command(name = "allscan", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline on a generated synthetic smear set (the README's first command).
    Demo(cmd::demo::DemoArgs),
    /// Write a synthetic Aria-layout smear dataset (class visible in morphology only).
    DemoData(cmd::demo_data::DemoDataArgs),
    /// Inspect a dataset folder or split it into train/val/test parts.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Segment fields: the authors' HSV recipe or the nucleus finder; masks, crops, nuclei.csv.
    Segment(cmd::segment::SegmentArgs),
    /// Pretrained DenseNet weights: fetch, import, check.
    #[command(subcommand)]
    Weights(cmd::weights::WeightsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::DemoData(args) => cmd::demo_data::run(args),
        Command::Data(c) => cmd::data::run(c),
        Command::Segment(args) => cmd::segment::run(args),
        Command::Weights(c) => cmd::weights::run(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // The whole chain once: "error: <what>: <why>: <root cause>".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
