//! The `allscan` binary: clap types and glue only; one file per subcommand under `cmd/`.
//!
//! Research use only, not a diagnostic device.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// The command-line choices as clap value enums, so `--help` lists them and a wrong value
/// gets clap's error with the list. The library types stay clap-free; each choice here maps
/// onto the one it names (`From`), and a test holds the lists to the library's.
pub mod choices {
    use allscan::data::Part;
    use allscan::device::DeviceKind;
    use allscan::train::{Profile, TaskKind};
    use allscan_preprocess::SegmentMode;

    /// `--task`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum TaskArg {
        /// Leukemia vs healthy (one sigmoid output).
        Binary,
        /// The dataset's classes (softmax).
        #[value(alias = "subtypes")]
        Subtype,
    }

    impl From<TaskArg> for TaskKind {
        fn from(a: TaskArg) -> Self {
            match a {
                TaskArg::Binary => TaskKind::Binary,
                TaskArg::Subtype => TaskKind::Subtype,
            }
        }
    }

    /// `--profile`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum ProfileArg {
        /// Slim DenseNet from scratch on the whole field at 112 px (2-core budget).
        Cpu,
        /// The seed's README: DenseNet201, 224 px, ImageNet weights, head then fine-tune.
        Paper,
        /// The seed authors' script: H, S and a zero channel at 64 px, frozen ImageNet
        /// DenseNet201, Dense(128) head, 4-class softmax, 15 epochs.
        SeedCode,
        /// Every white cell at one physical scale (see scripts/train-crosslab.sh).
        Cell,
    }

    impl From<ProfileArg> for Profile {
        fn from(a: ProfileArg) -> Self {
            match a {
                ProfileArg::Cpu => Profile::Cpu,
                ProfileArg::Paper => Profile::Paper,
                ProfileArg::SeedCode => Profile::SeedCode,
                ProfileArg::Cell => Profile::Cell,
            }
        }
    }

    /// `--device`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum DeviceArg {
        /// Burn's flex backend on the CPU (always built).
        #[value(alias = "flex")]
        Cpu,
        /// CUDA GPU 0 (a build with `--features cuda`).
        #[value(alias = "gpu")]
        Cuda,
        /// The best wgpu adapter (a build with `--features wgpu`).
        Wgpu,
    }

    impl From<DeviceArg> for DeviceKind {
        fn from(a: DeviceArg) -> Self {
            match a {
                DeviceArg::Cpu => DeviceKind::Cpu,
                DeviceArg::Cuda => DeviceKind::Cuda,
                DeviceArg::Wgpu => DeviceKind::Wgpu,
            }
        }
    }

    /// `--view`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum ViewArg {
        /// The whole field, resized.
        Field,
        /// A crop around the largest nucleus.
        Nucleus,
        /// The authors' HSV-masked field.
        AriaHsv,
        /// Every white cell at one physical scale.
        Cell,
    }

    impl From<ViewArg> for SegmentMode {
        fn from(a: ViewArg) -> Self {
            match a {
                ViewArg::Field => SegmentMode::Field,
                ViewArg::Nucleus => SegmentMode::Nucleus,
                ViewArg::AriaHsv => SegmentMode::AriaHsv,
                ViewArg::Cell => SegmentMode::Cell,
            }
        }
    }

    /// `--part`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum PartArg {
        /// The held-out test part.
        Test,
        /// The validation part.
        Val,
        /// The training part.
        Train,
    }

    impl From<PartArg> for Part {
        fn from(a: PartArg) -> Self {
            match a {
                PartArg::Test => Part::Test,
                PartArg::Val => Part::Val,
                PartArg::Train => Part::Train,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use clap::ValueEnum;

        /// Every value clap offers names the library value of the same spelling, and every
        /// library value is offered: a profile, task or device added to the library without
        /// its choice here fails this test.
        #[test]
        fn choices_match_the_library_spellings() {
            let names =
                |v: &[clap::builder::PossibleValue]| v.iter().map(|p| p.get_name().to_string()).collect::<Vec<_>>();
            for a in ProfileArg::value_variants() {
                let name = a.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(Profile::from(*a).name(), name);
            }
            let offered =
                names(&ProfileArg::value_variants().iter().filter_map(|a| a.to_possible_value()).collect::<Vec<_>>());
            assert_eq!(offered, Profile::ALL.map(Profile::name));
            for a in TaskArg::value_variants() {
                let name = a.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(TaskKind::from(*a).name(), name);
            }
            assert_eq!(TaskArg::value_variants().len(), TaskKind::ALL.len());
            for a in DeviceArg::value_variants() {
                let name = a.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(DeviceKind::from(*a).name(), name);
                assert_eq!(name.parse::<DeviceKind>().unwrap(), DeviceKind::from(*a));
            }
            assert_eq!(DeviceArg::value_variants().len(), DeviceKind::ALL.len());
            for a in ViewArg::value_variants() {
                let name = a.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(SegmentMode::from(*a).to_string(), name);
            }
            for a in PartArg::value_variants() {
                let name = a.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(Part::from(*a).as_str(), name);
            }
            // The library's aliases are the CLI's too.
            assert_eq!(TaskArg::from_str("subtypes", false), Ok(TaskArg::Subtype));
            assert_eq!(DeviceArg::from_str("flex", false), Ok(DeviceArg::Cpu));
        }
    }
}

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
