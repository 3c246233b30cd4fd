//! `allscan data inspect|split`: glue over `allscan::data`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allscan::data::{DatasetIndex, IndexOptions, LabelMap, SplitConfig, SplitFile};
use anyhow::Context;
use serde::Serialize;

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Describe a dataset folder: layout, images per class, binary mapping, patient ids,
    /// duplicate groups and unreadable files.
    Inspect(InspectArgs),
    /// Split a dataset into train/val/test parts (or folds) without leakage, as split.json.
    Split(SplitArgs),
    /// Turn a reviewed slide (slide.json of `allscan report --review`, or the page's JSON
    /// export) and its field images into a dataset of the reviewed cells (`blast/`,
    /// `normal/`) for `allscan train`.
    FromReview(FromReviewArgs),
}

/// `allscan data from-review SLIDE_JSON FIELDS --out DIR`.
#[derive(Debug, clap::Args)]
pub struct FromReviewArgs {
    /// The reviewed slide JSON.
    pub slide: PathBuf,
    /// The folder holding the slide's field images (matched by file name).
    pub fields: PathBuf,
    /// Output dataset folder (created; existing cell files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

/// Options shared by every command that reads a dataset folder.
#[derive(Debug, clap::Args)]
pub struct DatasetArgs {
    /// Dataset folder (Aria layout, class folders, ALL-IDB or C-NMC names; detected).
    pub dir: PathBuf,
    /// Binary labels for class names the program does not know, e.g. "hem=healthy,all=leukemia".
    #[arg(long)]
    pub map: Option<String>,
}

impl DatasetArgs {
    /// Indexes the folder with a progress bar.
    pub fn index(&self) -> anyhow::Result<DatasetIndex> {
        let map = self.map.as_deref().map(LabelMap::parse).transpose()?;
        let opts = IndexOptions { map, progress: true, ..IndexOptions::default() };
        Ok(DatasetIndex::build(&self.dir, &opts)?)
    }
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SplitArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Where to write the split file.
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction of images held out for the final test.
    #[arg(long, default_value_t = 0.2)]
    pub test: f64,
    /// Fraction used for validation (ignored with --folds: each fold is validation once).
    #[arg(long, default_value_t = 0.1)]
    pub val: f64,
    /// Assign every non-test image to one of K cross-validation folds.
    #[arg(long)]
    pub folds: Option<usize>,
    /// Random seed of the assignment.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(c: DataCommand) -> anyhow::Result<ExitCode> {
    match c {
        DataCommand::Inspect(a) => inspect(a),
        DataCommand::Split(a) => split(a),
        DataCommand::FromReview(a) => from_review(a),
    }
}

fn from_review(a: FromReviewArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&a.slide).with_context(|| format!("reading {}", a.slide.display()))?;
    let report: allscan::slide::SlideReport = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a slide report (slide.json or the page's JSON export)", a.slide.display()))?;
    let limits = allscan_preprocess::DecodeLimits::default();
    let done = allscan::reviewed::export_reviewed_cells(&report, &a.fields, &a.out, &limits)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "{}: {} blast and {} normal reviewed cells ({} other reviews not written); train on it with `allscan train {}` or as a source of allscan-sources.json",
        a.out.display(),
        done.blasts,
        done.normal,
        done.not_labels,
        a.out.display()
    );
    for (f, why) in &done.missing {
        eprintln!("  skipped field {f}: {why}");
    }
    if done.blasts + done.normal == 0 {
        anyhow::bail!("{}: no cell was reviewed as blast or not_blast", a.slide.display());
    }
    Ok(if done.missing.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What `inspect --json` prints.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub root: String,
    pub layout: allscan::data::LayoutKind,
    pub layout_description: String,
    pub images: usize,
    pub unreadable: usize,
    pub ignored_non_image_files: usize,
    pub classes: Vec<allscan::data::ClassInfo>,
    pub binary_mapping: BinaryMapping,
    pub patient_ids_found: bool,
    pub patients: usize,
    pub with_segmented: usize,
    pub exact_duplicates: Vec<Vec<String>>,
    pub near_duplicate_threshold: u32,
    pub near_duplicates: Vec<Vec<String>>,
    pub bad_files: Vec<allscan::data::BadFile>,
    pub fingerprint: String,
}

#[derive(Debug, Serialize)]
pub struct BinaryMapping {
    pub healthy: Vec<String>,
    pub leukemia: Vec<String>,
    pub unmapped: Vec<String>,
}

impl InspectReport {
    pub fn new(ix: &DatasetIndex) -> Self {
        let names = |groups: &Vec<Vec<usize>>| -> Vec<Vec<String>> {
            groups.iter().map(|g| g.iter().map(|&i| ix.images[i].path.clone()).collect()).collect()
        };
        let pick = |want: Option<allscan::data::BinaryLabel>| -> Vec<String> {
            ix.classes.iter().filter(|c| c.label == want).map(|c| c.name.clone()).collect()
        };
        let patients: BTreeSet<&str> = ix.images.iter().filter_map(|r| r.patient.as_deref()).collect();
        InspectReport {
            root: ix.root.display().to_string(),
            layout: ix.layout,
            layout_description: ix.layout.describe().to_owned(),
            images: ix.images.len(),
            unreadable: ix.bad.len(),
            ignored_non_image_files: ix.ignored,
            classes: ix.classes.clone(),
            binary_mapping: BinaryMapping {
                healthy: pick(Some(allscan::data::BinaryLabel::Healthy)),
                leukemia: pick(Some(allscan::data::BinaryLabel::Leukemia)),
                unmapped: pick(None),
            },
            patient_ids_found: !patients.is_empty(),
            patients: patients.len(),
            with_segmented: ix.images.iter().filter(|r| r.segmented.is_some()).count(),
            exact_duplicates: names(&ix.exact_duplicates),
            near_duplicate_threshold: ix.near_threshold,
            near_duplicates: names(&ix.near_duplicates),
            bad_files: ix.bad.clone(),
            fingerprint: ix.fingerprint.clone(),
        }
    }

    pub fn print_text(&self) {
        println!("dataset      {}", self.root);
        println!("layout       {}", self.layout_description);
        println!(
            "images       {} readable, {} unreadable, {} non-image files ignored",
            self.images, self.unreadable, self.ignored_non_image_files
        );
        if self.with_segmented > 0 {
            println!("segmented    {} images have a Segmented/ counterpart", self.with_segmented);
        }
        println!();
        println!("  {:<16} {:<10} {:>7}", "class", "binary", "images");
        for c in &self.classes {
            let label = c.label.map(|l| l.as_str()).unwrap_or("(unmapped)");
            println!("  {:<16} {:<10} {:>7}", c.name, label, c.count);
        }
        println!();
        let count = |names: &[String]| -> usize {
            self.classes.iter().filter(|c| names.contains(&c.name)).map(|c| c.count).sum()
        };
        let m = &self.binary_mapping;
        println!("binary       healthy = {} ({} images)", m.healthy.join(", "), count(&m.healthy));
        println!("             leukemia = {} ({} images)", m.leukemia.join(", "), count(&m.leukemia));
        if !m.unmapped.is_empty() {
            println!("             unmapped = {} (use --map NAME=healthy|leukemia)", m.unmapped.join(", "));
        }
        if self.patient_ids_found {
            println!("patients     {} patient ids parsed from file names: splits are patient-level", self.patients);
        } else {
            println!("patients     none found: splits are image-level, a patient's images may straddle parts");
        }
        let dup_images: usize = self.exact_duplicates.iter().map(Vec::len).sum();
        println!("duplicates   {} groups of byte-identical files ({} images)", self.exact_duplicates.len(), dup_images);
        for g in &self.exact_duplicates {
            println!("               {}", g.join("  =  "));
        }
        println!(
            "near-dups    {} groups within pHash distance {} (not byte-identical)",
            self.near_duplicates.len(),
            self.near_duplicate_threshold
        );
        for g in &self.near_duplicates {
            println!("               {}", g.join("  ~  "));
        }
        if !self.bad_files.is_empty() {
            println!("unreadable   {} files skipped:", self.bad_files.len());
            for b in &self.bad_files {
                println!("               {}: {}", b.path, b.reason);
            }
        }
        println!("fingerprint  {}", self.fingerprint);
    }
}

fn inspect(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let ix = a.data.index().with_context(|| format!("cannot inspect {}", a.data.dir.display()))?;
    let report = InspectReport::new(&ix);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_text();
    }
    Ok(ExitCode::SUCCESS)
}

fn split(a: SplitArgs) -> anyhow::Result<ExitCode> {
    let ix = a.data.index().with_context(|| format!("cannot split {}", a.data.dir.display()))?;
    let cfg = SplitConfig { test: a.test, val: a.val, folds: a.folds, seed: a.seed };
    let split = SplitFile::make(&ix, &cfg)?;
    split.save(&a.out).with_context(|| format!("cannot write {}", a.out.display()))?;
    print_split(&split, &ix, &a.out);
    Ok(ExitCode::SUCCESS)
}

/// Prints a part x class table of a split.
pub fn print_split(split: &SplitFile, ix: &DatasetIndex, out: &Path) {
    print!("  {:<8}", "part");
    for c in &ix.classes {
        print!(" {:>8}", c.name);
    }
    println!(" {:>8}", "total");
    for (part, by_class) in &split.counts {
        print!("  {part:<8}");
        for c in &ix.classes {
            print!(" {:>8}", by_class.get(&c.name).copied().unwrap_or(0));
        }
        println!(" {:>8}", by_class.values().sum::<usize>());
    }
    println!("grouping     {} ({} groups)", split.grouping, split.n_groups);
    if !ix.bad.is_empty() {
        println!("skipped      {} unreadable files (run `allscan data inspect` for the list)", ix.bad.len());
    }
    println!("wrote        {}", out.display());
}
