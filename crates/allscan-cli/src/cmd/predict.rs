//! `allscan predict RUN PATH...`: image files and folders (recursive) -> one prediction per
//! field (and per cell with `--cells`) as a table, CSV or JSON on stdout.
//!
//! Glue only: decoding is `allscan_preprocess::decode_file` with the bundle's limits, the
//! rest is `allscan::infer::Predictor` (see its docs for the ROI aggregation rule: a field's
//! p_leukemia is the highest among its cells). Files that fail are listed with their reasons
//! at the end, the others are still predicted, and the exit code is 1 when any failed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allscan::bundle::RunBundle;
use allscan::infer::{FieldPrediction, Predictor, AGGREGATION_RULE};
use allscan_preprocess::decode_file;
use anyhow::Context;
use image::RgbImage;
use serde::Serialize;

/// Options of `allscan predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// The trained run directory (bundle).
    pub run: PathBuf,
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also print one row per scored cell (nucleus crop), with its box.
    #[arg(long)]
    pub cells: bool,
    /// Fields decoded and predicted together (views of a batch share forward passes).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Override the bundle's decision threshold on p_leukemia.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Micrometres per pixel of these images (cell models), instead of the estimate from
    /// their red cells.
    #[arg(long, value_name = "UM")]
    pub um_per_px: Option<f32>,
    /// Keep each image's own scale estimate. By default the images of one call are taken to
    /// come from one microscope: an image without measurable red cells (a crop on black) takes
    /// the median scale of the others (scale_source `pooled`), so cell sizes stay comparable.
    #[arg(long)]
    pub per_image_scale: bool,
    /// Re-estimate the model's BatchNorm statistics on these images before predicting them
    /// (test-time adaptation, AdaBN: for a batch of one lab's images; no labels used).
    #[arg(long)]
    pub adapt: bool,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    Table,
    /// `path,prediction,p_leukemia[,subtype,p_<class>...][,n_cells,level,cell,x,y,width,height]`.
    Csv,
    /// `{"results": [...], "failed": [...]}`.
    Json,
}

/// Most images decoded for `--adapt` (evenly spread over the input).
const ADAPT_MAX_FIELDS: usize = 512;

/// Opens a run bundle and builds its predictor on the CPU device.
pub fn load_predictor(run: &Path) -> anyhow::Result<(RunBundle, Predictor)> {
    let bundle = RunBundle::open(run).with_context(|| format!("opening run {}", run.display()))?;
    let device = allscan::device::device(allscan::device::DeviceKind::Cpu).context("choosing the device")?;
    let predictor =
        Predictor::from_bundle(&bundle, &device).with_context(|| format!("loading the model of {}", run.display()))?;
    Ok((bundle, predictor))
}

/// Image files under `paths` (`allscan::data::walk`: each file once, link loops and FIFOs
/// listed as failures, never followed or opened).
pub fn collect_images(paths: &[PathBuf], failed: &mut Vec<Failure>) -> Vec<PathBuf> {
    let walked = allscan::data::walk::image_files(paths);
    failed.extend(walked.skipped.into_iter().map(|(p, reason)| Failure { path: p.display().to_string(), reason }));
    walked.files
}

/// A file that could not be predicted.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Serialize)]
struct Row {
    path: String,
    n_cells: usize,
    #[serde(flatten)]
    field: FieldPrediction,
}

/// What a folder of fields adds up to (cell models): white cells, cells called blast, and
/// the blast fraction with a Wilson 95% interval.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Fields predicted.
    pub fields: usize,
    /// Fields with no white cell.
    pub fields_without_cells: usize,
    /// Fields called leukemia.
    pub fields_flagged: usize,
    /// White cells scored (flagged small / smudge cells excluded).
    pub white_cells: usize,
    /// Of those, called blast (leukemia) at the threshold.
    pub blasts: usize,
    /// `blasts / white_cells`.
    pub blast_fraction: f64,
    /// Wilson score 95% interval of the blast fraction.
    pub blast_fraction_ci95: [f64; 2],
}

impl Summary {
    /// The summary of predicted fields.
    pub fn of<'a>(fields: impl IntoIterator<Item = &'a FieldPrediction>) -> Self {
        let (mut n, mut empty, mut flagged, mut cells, mut blasts) = (0, 0, 0, 0, 0);
        for f in fields {
            n += 1;
            empty += usize::from(f.no_white_cell());
            flagged += usize::from(f.prediction == allscan::infer::LEUKEMIA);
            for c in f.cells.iter().filter(|c| c.decides()) {
                cells += 1;
                blasts += usize::from(c.prediction == allscan::infer::LEUKEMIA);
            }
        }
        let frac = if cells > 0 { blasts as f64 / cells as f64 } else { 0.0 };
        Summary {
            fields: n,
            fields_without_cells: empty,
            fields_flagged: flagged,
            white_cells: cells,
            blasts,
            blast_fraction: frac,
            blast_fraction_ci95: allscan::slide::wilson95(blasts, cells),
        }
    }
}

#[derive(Debug, Serialize)]
struct JsonOut<'a> {
    results: &'a [Row],
    failed: &'a [Failure],
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Summary>,
    aggregation: &'a str,
    threshold: f64,
    notice: &'a str,
}

pub fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let (bundle, predictor) = load_predictor(&args.run)?;
    let predictor = match args.threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => anyhow::bail!("--threshold {t} must be in [0, 1]"),
        Some(t) => predictor.with_threshold(t),
        None => predictor,
    };
    anyhow::ensure!(args.batch > 0, "--batch 0: the batch must hold at least one image");
    if let Some(u) = args.um_per_px {
        anyhow::ensure!(
            u.is_finite() && u > 0.0 && u < 100.0,
            "--um-per-px {u} must be a positive number of micrometres"
        );
    }
    let predictor = predictor
        .with_batch_size(args.batch.max(1))
        .with_um_per_px(args.um_per_px)
        .with_scale_pool(!args.per_image_scale);
    let mut failed = Vec::new();
    let files = collect_images(&args.paths, &mut failed);
    if files.is_empty() {
        for f in &failed {
            eprintln!("  {}: {}", f.path, f.reason);
        }
        anyhow::bail!(
            "no image file found in {}",
            args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let limits = predictor.preprocess().decode;
    let predictor = if args.adapt {
        // A first pass over (at most ADAPT_MAX_FIELDS of) the files; they are decoded again
        // when predicted, chunk by chunk, rather than all held in memory.
        let fields: Vec<RgbImage> = allscan::adapt::spread(files.len(), ADAPT_MAX_FIELDS)
            .into_iter()
            .filter_map(|k| decode_file(&files[k], &limits).ok())
            .collect();
        let (adapted, views) =
            predictor.adapt(&bundle, &fields).with_context(|| "--adapt: re-estimating BatchNorm statistics")?;
        eprintln!("--adapt: BatchNorm statistics re-estimated on {views} views of {} images", fields.len());
        adapted
    } else {
        predictor
    };
    let bar = allscan::progress::bar(files.len() as u64, "images", files.len() >= 32);
    let mut rows = Vec::with_capacity(files.len());
    // The files of one call are one set: those without a red-cell scale share the set's.
    let load = |k: usize| decode_file(&files[k], &limits).map(|img| (img, None)).map_err(|e| e.reason());
    let predicted = predictor.predict_set(files.len(), args.batch.max(1), &load, &|n| bar.inc(n));
    for (path, result) in files.iter().zip(predicted) {
        match result {
            Ok(field) => rows.push(Row { path: path.display().to_string(), n_cells: field.cells.len(), field }),
            Err(reason) => failed.push(Failure { path: path.display().to_string(), reason }),
        }
    }
    bar.finish_and_clear();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format {
        Format::Json => {
            let j = JsonOut {
                results: &rows,
                failed: &failed,
                summary: predictor.cell_mode().then(|| Summary::of(rows.iter().map(|r| &r.field))),
                aggregation: AGGREGATION_RULE,
                threshold: predictor.threshold(),
                notice: "Research use only, not a diagnostic device.",
            };
            serde_json::to_writer_pretty(&mut out, &j)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let rows: Vec<(&str, &FieldPrediction)> = rows.iter().map(|r| (r.path.as_str(), &r.field)).collect();
            allscan::predictions::write_csv(&mut out, &predictor, &rows, args.cells)?
        }
        Format::Table => write_table(&mut out, &predictor, &rows, args.cells)?,
    }
    out.flush()?;
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} file(s) failed:", failed.len());
        for f in &failed {
            eprintln!("  {}: {}", f.path, f.reason);
        }
        Ok(ExitCode::FAILURE)
    }
}

fn write_table(out: &mut impl Write, p: &Predictor, rows: &[Row], cells: bool) -> std::io::Result<()> {
    let width = rows.iter().map(|r| r.path.len()).max().unwrap_or(4).clamp(4, 80);
    write!(out, "{:<width$}  {:<10}  {:>10}  {:>7}", "path", "prediction", "p_leukemia", "n_cells")?;
    if p.cell_mode() {
        write!(out, "  {:>9}  {:<10}", "um_per_px", "scale")?;
    }
    if p.is_subtype() {
        write!(out, "  subtype")?;
    }
    writeln!(out)?;
    for r in rows {
        let f = &r.field;
        write!(out, "{:<width$}  {:<10}  {:>10.4}  {:>7}", r.path, f.prediction, f.p_leukemia, r.n_cells)?;
        if p.cell_mode() {
            let c = allscan::predictions::scale_columns(f);
            write!(out, "  {:>9}  {:<10}", c[0], c[1])?;
        }
        if let Some(s) = &f.subtype {
            write!(out, "  {s}")?;
        }
        writeln!(out)?;
        if cells {
            for (i, c) in f.cells.iter().enumerate() {
                let b = c.region;
                writeln!(
                    out,
                    "{:<width$}  {:<10}  {:>10.4}  cell {i} at ({}, {}) {}x{}{}",
                    "",
                    c.prediction,
                    c.p_leukemia,
                    b.x,
                    b.y,
                    b.width,
                    b.height,
                    c.subtype.as_deref().map(|s| format!("  {s}")).unwrap_or_default()
                )?;
            }
        }
    }
    if p.cell_mode() {
        let s = Summary::of(rows.iter().map(|r| &r.field));
        writeln!(
            out,
            "summary: {} field(s), {} flagged, {} without a white cell; {} white cell(s), {} called blast \
             (blast fraction {:.1}%, 95% CI {:.1}-{:.1}%)",
            s.fields,
            s.fields_flagged,
            s.fields_without_cells,
            s.white_cells,
            s.blasts,
            100.0 * s.blast_fraction,
            100.0 * s.blast_fraction_ci95[0],
            100.0 * s.blast_fraction_ci95[1]
        )?;
    }
    writeln!(
        out,
        "field score: {AGGREGATION_RULE}; threshold {}. Research use only, not a diagnostic device.",
        p.threshold()
    )?;
    Ok(())
}

/// The demo's last step: predicts the first field of each class folder under `data` with the
/// run just trained, then prints the commands to explain and serve it.
pub fn demo_step(run: &Path, data: &Path) -> anyhow::Result<()> {
    println!("\n== step: predict a few synthetic fields with the trained run");
    let (_bundle, predictor) = load_predictor(run)?;
    let mut ignored = Vec::new();
    let mut picks: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in collect_images(&[data.to_path_buf()], &mut ignored) {
        let class = p.parent().map(Path::to_path_buf).unwrap_or_default();
        if seen.insert(class) {
            picks.push(p);
        }
    }
    for path in picks.iter().take(4) {
        let img = match decode_file(path, &predictor.preprocess().decode) {
            Ok(i) => i,
            Err(e) => {
                println!("  {}: {}", path.display(), e.reason());
                continue;
            }
        };
        let f = predictor.predict_field(&img).with_context(|| format!("predicting {}", path.display()))?;
        println!(
            "  {}: {} (p_leukemia {:.3}{})",
            path.display(),
            f.prediction,
            f.p_leukemia,
            f.subtype.as_deref().map(|s| format!(", most likely {s}")).unwrap_or_default()
        );
    }
    println!(
        "\nExplain:  allscan explain {} {} --out {}",
        run.display(),
        data.display(),
        run.join("gradcam").display()
    );
    println!("Serve:    allscan serve {}", run.display());
    println!("Research use only, not a diagnostic device.");
    Ok(())
}
