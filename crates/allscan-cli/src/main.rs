//! The `allscan` binary: clap types and glue only; one file per subcommand under `cmd/`.
//!
//! Research use only, not a diagnostic device.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Detect Acute Lymphoblastic Leukemia in peripheral blood smear images (research use only,
/// not a diagnostic device).
#[derive(Debug, Parser)]
#[command(name = "allscan", version)]
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
    /// Train a model (stage 1 head, stage 2 fine-tune) into a run bundle; --resume continues.
    Train(cmd::train::TrainArgs),
    /// Evaluate a run on a dataset: metrics.json with 95% CIs and a self-contained report.html.
    Eval(cmd::eval::EvalArgs),
    /// Grouped, stratified k-fold cross-validation: one run per fold, mean ± sd in one report.
    Cv(cmd::cv::CvArgs),
    /// Predict image files and folders with a trained run (table, CSV or JSON).
    Predict(cmd::predict::PredictArgs),
    /// Slide report of one smear's fields: slide.json and a self-contained slide.html.
    Report(cmd::report::ReportArgs),
    /// How well a run's features identify the source lab of cells (lower is better).
    Probe(cmd::probe::ProbeArgs),
    /// Grad-CAM overlays: why the model called each image what it did.
    Explain(cmd::explain::ExplainArgs),
    /// Serve a trained run: web page and JSON API (127.0.0.1 unless told).
    Serve(cmd::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::DemoData(args) => cmd::demo_data::run(args),
        Command::Data(c) => cmd::data::run(c),
        Command::Segment(args) => cmd::segment::run(args),
        Command::Weights(c) => cmd::weights::run(c),
        Command::Train(args) => cmd::train::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Cv(args) => cmd::cv::run(args),
        Command::Predict(args) => cmd::predict::run(args),
        Command::Report(args) => cmd::report::run(args),
        Command::Probe(args) => cmd::probe::run(args),
        Command::Explain(args) => cmd::explain::run(args),
        Command::Serve(args) => cmd::serve::run(args),
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
