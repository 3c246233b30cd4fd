//! `allscan demo-data`: write a synthetic smear dataset.
//! Input: an output folder and the set's settings; output: `OUT/Original/<Class>/*.png`
//! (Aria layout) and `OUT/synth.json`, drawn by `allscan::synth`.

use std::path::PathBuf;
use std::process::ExitCode;

use allscan::synth::{self, SynthConfig};
use anyhow::Context;

/// Options of `allscan demo-data`.
#[derive(Debug, clap::Args)]
pub struct DemoDataArgs {
    /// Folder to write the dataset into (created if missing; must not hold another dataset).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// Images per class (four classes: Benign, Early, Pre, Pro).
    #[arg(long, default_value_t = 60)]
    pub n: usize,
    /// Seed of the whole set; the same seed writes byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Field side in pixels (Aria fields are 224).
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Also write a contact sheet (one row per class, up to 8 fields each) to this PNG file.
    #[arg(long, value_name = "PNG")]
    pub contact_sheet: Option<PathBuf>,
}

pub fn run(args: DemoDataArgs) -> anyhow::Result<ExitCode> {
    let cfg = SynthConfig { per_class: args.n, seed: args.seed, size: args.size };
    let total = (cfg.per_class * synth::CLASSES.len()) as u64;
    let bar = allscan::progress::bar(total, "drawing fields", true);
    let start = std::time::Instant::now();
    let summary = synth::generate_with_progress(&args.out, &cfg, |done, _| bar.set_position(done as u64))
        .with_context(|| format!("cannot write a synthetic set to {}", args.out.display()));
    bar.finish_and_clear();
    let summary = summary?;
    let classes: Vec<&str> = summary.per_class.iter().map(|(c, _)| c.as_str()).collect();
    println!(
        "wrote {} synthetic {}x{} fields ({} per class: {}; seed {}) to {} in {:.1}s",
        summary.total(),
        cfg.size,
        cfg.size,
        cfg.per_class,
        classes.join(", "),
        cfg.seed,
        summary.root.join("Original").display(),
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = args.contact_sheet {
        let sheet = synth::contact_sheet(&SynthConfig { per_class: cfg.per_class.min(8), ..cfg });
        sheet.save(&path).with_context(|| format!("cannot write the contact sheet {}", path.display()))?;
        println!("contact sheet: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
