//! Evaluation stage, driver: a run bundle + a dataset folder (+ split file and part) in;
//! compatibility checks, per-image scores (through [`Predictor`], the one inference path),
//! per-patient figures, the colour-shortcut baseline, leakage warnings, the decision threshold
//! and `metrics.json` + `report.html` out. The bundle is only read: a threshold chosen here
//! goes into `metrics.json` and the report, never into the bundle.
//!
//! Two modes, decided by the data:
//! - **same dataset**: the data's fingerprint matches the split (`--split`, or the run's own
//!   `split.json`). The chosen part (test by default) is scored; the threshold comes from the
//!   validation part; the shortcut trains on the training part.
//! - **cross-dataset**: the data is another dataset (e.g. C-NMC against an Aria model). Every
//!   readable image is scored, labels come through the layout or `--map`; the shortcut and the
//!   leakage check use the run's training data when its folder can still be found.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use allscan_preprocess::{decode_file, SegmentMode};
use image::RgbImage;

use super::baseline::{shortcut, ShortcutKind};
use super::leakage::{leakage_warnings, LeakageInput, LeakageItem};
use super::metrics::{binary_metrics, bootstrap_binary, threshold_for_sensitivity};
use super::report::{
    most_confident_errors, summary_table, write_report, EpochRow, GalleryItem, MetricsFile, ModelEvaluation,
    ReportInput,
};
use super::scoring::{
    evaluate_scores, per_patient, per_source_figures, per_source_table, score_fields, score_images, write_predictions,
};
use super::{EvalError, ThresholdChoice};
use crate::bundle::{BundleMetadata, RunBundle, METRICS_FILE};
use crate::data::{DataError, DatasetIndex, IndexOptions, LabelMap, LayoutKind, Part, SplitFile};
use crate::device::DeviceKind;
use crate::infer::Predictor;
use crate::model::Task;

pub use super::scoring::{ScoredImage, PREDICTIONS_FILE};

/// Default sensitivity the threshold is chosen for on validation.
pub const DEFAULT_TARGET_SENSITIVITY: f64 = 0.99;
/// Default number of bootstrap resamples.
pub const DEFAULT_BOOTSTRAP: usize = 1000;
/// Side of gallery thumbnails.
const THUMB: u32 = 200;
/// Prefix of the threshold rule written by training (and by `eval` into `metrics.json` when it
/// re-chooses).
pub(crate) const TUNED_RULE: &str = "tuned for validation sensitivity";
/// The same prefix in bundles written before the threshold got its margin (2026-11-30).
const TUNED_RULE_BEFORE_MARGIN: &str = "largest threshold with validation sensitivity";

/// What `allscan eval` asks for.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The run bundle.
    pub run: PathBuf,
    /// The dataset folder.
    pub data: PathBuf,
    /// A split file for `data`; otherwise the run's own `split.json` when it fits the data.
    pub split: Option<PathBuf>,
    /// Which part to score (same-dataset mode).
    pub part: Part,
    /// Output folder (`metrics.json`, `report.html`).
    pub out: PathBuf,
    /// `--map` label map for the data.
    pub map: Option<String>,
    /// Re-choose the threshold on validation for this sensitivity (for this evaluation only).
    pub target_sensitivity: Option<f64>,
    /// Bootstrap resamples.
    pub n_boot: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// Images in the gallery of confident errors.
    pub gallery: usize,
    /// Grad-CAM overlays in the gallery.
    pub gradcam: bool,
    /// Train and report the colour-only baseline.
    pub shortcut: bool,
    /// Evaluate even when the bundle's preprocessing was made for another kind of image.
    pub allow_preprocess_mismatch: bool,
    /// Compute device.
    pub device: DeviceKind,
    /// Progress bars (on a terminal).
    pub progress: bool,
    /// Sources datasets: score only this source's images of the part (e.g. held-out Aria).
    pub source: Option<String>,
    /// Test-time BatchNorm re-estimation on the evaluated images (AdaBN, no labels) before
    /// scoring them; validation and the shortcuts are scored without it.
    pub adapt: bool,
}

impl EvalRequest {
    /// A request with the defaults of `allscan eval RUN DATA --out OUT`.
    pub fn new(run: impl Into<PathBuf>, data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            run: run.into(),
            data: data.into(),
            split: None,
            part: Part::Test,
            out: out.into(),
            map: None,
            target_sensitivity: None,
            n_boot: DEFAULT_BOOTSTRAP,
            seed: 0,
            gallery: 8,
            gradcam: true,
            shortcut: true,
            allow_preprocess_mismatch: false,
            device: DeviceKind::Cpu,
            progress: false,
            source: None,
            adapt: false,
        }
    }
}

/// What an evaluation produced.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    /// Everything the report shows.
    pub input: ReportInput,
    /// The contents of `metrics.json`.
    pub metrics: MetricsFile,
    /// `OUT/report.html`.
    pub report_path: PathBuf,
    /// `OUT/metrics.json`.
    pub metrics_path: PathBuf,
    /// The terminal table (model beside shortcut, then per patient).
    pub table: String,
    /// Set when `eval` chose the threshold on validation itself (the bundle's was never
    /// tuned, or a target sensitivity was given): it is the one `metrics.json` states and the
    /// figures use; the bundle keeps its own.
    pub chosen_threshold: Option<f64>,
    /// Whether the data was another dataset than the run's.
    pub cross_dataset: bool,
}

/// How the dataset's labels meet the model's classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Compatibility {
    /// Subtype figures apply: every dataset class is one of the model's classes.
    pub subtype: bool,
    /// Notes for the report (cross-dataset caveats).
    pub notes: Vec<String>,
}

/// Checks that `bundle`'s model can be scored against `index`'s labels and that its
/// preprocessing fits these images. Errors name the classes or settings that disagree and how
/// to fix them.
pub fn check_compatibility(
    bundle: &RunBundle,
    index: &DatasetIndex,
    allow_preprocess_mismatch: bool,
) -> Result<Compatibility, EvalError> {
    let meta = &bundle.metadata;
    let preprocess = bundle.preprocess();
    let bad = |reason: String| Err(EvalError::Incompatible { data: index.root.clone(), reason });
    let mut notes = Vec::new();
    // Every image needs a leukemia/healthy label to be scored at all.
    let unmapped: Vec<&str> = index.classes.iter().filter(|c| c.label.is_none()).map(|c| c.name.as_str()).collect();
    if !unmapped.is_empty() {
        let example: Vec<String> = unmapped.iter().map(|c| format!("{c}=healthy|leukemia")).collect();
        return bad(format!(
            "class folder(s) {} have no leukemia/healthy label, so the model (classes {}) cannot be \
             scored against them; pass --map {}",
            unmapped.join(", "),
            meta.class_names.join(", "),
            example.join(",")
        ));
    }
    // A class the model knows must mean the same thing in the data.
    let trained: BTreeMap<&str, &str> = meta.dataset_classes.iter().map(|(c, l)| (c.as_str(), l.as_str())).collect();
    for c in &index.classes {
        let Some(label) = c.label else { continue };
        if let Some(t) = trained.get(c.name.as_str()) {
            if *t != label.as_str() {
                return bad(format!(
                    "class `{}` is {} here but was {t} in the model's training data; fix --map",
                    c.name,
                    label.as_str()
                ));
            }
        }
    }
    let subtype = match meta.task {
        Task::Binary => false,
        Task::Subtype { .. } => {
            let foreign: Vec<&str> =
                index.classes.iter().filter(|c| !meta.class_names.contains(&c.name)).map(|c| c.name.as_str()).collect();
            if foreign.is_empty() {
                true
            } else {
                notes.push(format!(
                    "the data's classes ({}) are not the model's ({}): only leukemia-vs-healthy \
                     figures are reported, p(leukemia) being the summed probability of {}",
                    foreign.join(", "),
                    meta.class_names.join(", "),
                    meta.leukemia_classes.join(", ")
                ));
                false
            }
        }
    };
    if preprocess.mode == SegmentMode::AriaHsv && index.layout != LayoutKind::Aria && !allow_preprocess_mismatch {
        return bad(format!(
            "the bundle preprocesses with `aria-hsv` (the Aria authors' colour thresholds, made for \
             Aria's 224 px fields of view) but this is a {} dataset; its images would reach the \
             model masked by thresholds that were never tuned for them. Evaluate a `nucleus`-mode \
             model, or pass --allow-preprocess-mismatch to score anyway",
            index.layout.describe()
        ));
    }
    let min_side = preprocess.decode.min_side;
    let small = index.images.iter().filter(|r| r.width.min(r.height) < min_side).count();
    if small > 0 {
        return bad(format!(
            "{small} images are smaller than the bundle's smallest accepted side ({min_side} px); \
             the model was not made for them"
        ));
    }
    Ok(Compatibility { subtype, notes })
}

/// Training history of a run from its `metrics.csv` (columns by name; stage 1 is the head,
/// stage 2 the fine-tuning). Missing file: empty history.
pub fn read_training_curves(run: &Path) -> Result<Vec<EpochRow>, EvalError> {
    let path = run.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(EvalError::Io { path, source }),
    };
    parse_training_curves(&text).map_err(|reason| EvalError::Invalid { what: "metrics.csv", reason })
}

/// [`read_training_curves`] on the file's text.
pub fn parse_training_curves(text: &str) -> Result<Vec<EpochRow>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else { return Ok(Vec::new()) };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(stage), Some(epoch)) = (col("stage"), col("epoch")) else {
        return Err(format!("header `{header}` lacks stage and epoch columns"));
    };
    let (train_loss, val_loss, val_acc) = (col("train_loss"), col("val_loss"), col("val_accuracy"));
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let num =
            |c: Option<usize>| c.and_then(|c| f.get(c)).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        let stage_name = match f.get(stage).copied() {
            Some("1") | Some("head") => "head",
            Some("2") | Some("finetune") => "finetune",
            other => return Err(format!("row {}: unknown stage {other:?}", n + 2)),
        };
        let epoch = f.get(epoch).and_then(|v| v.parse::<usize>().ok()).ok_or(format!("row {}: bad epoch", n + 2))?;
        rows.push(EpochRow {
            stage: stage_name.to_string(),
            epoch,
            train_loss: num(train_loss),
            val_loss: num(val_loss),
            val_metric: num(val_acc),
        });
    }
    Ok(rows)
}

fn leakage_items(index: &DatasetIndex, indices: &[usize]) -> Vec<LeakageItem> {
    indices
        .iter()
        .map(|&i| {
            let r = &index.images[i];
            LeakageItem {
                id: r.path.clone(),
                patient: r.patient.clone(),
                content_hash: Some(r.sha256.clone()),
                near_hash: Some(r.phash),
            }
        })
        .collect()
}

/// Whether the bundle's threshold was tuned on a validation part.
fn threshold_is_tuned(meta: &BundleMetadata) -> bool {
    meta.threshold_rule.starts_with(TUNED_RULE) || meta.threshold_rule.starts_with(TUNED_RULE_BEFORE_MARGIN)
}

/// The run's training data (the same index in same-dataset mode, the run's data folder in
/// cross-dataset mode when it still exists) and its training part.
pub(crate) struct TrainingData {
    pub(crate) index: DatasetIndex,
    pub(crate) train: Vec<usize>,
    pub(crate) val: Vec<usize>,
}

fn thumbnail_png(path: &Path, limits: &allscan_preprocess::DecodeLimits) -> Option<(RgbImage, Vec<u8>)> {
    let img = decode_file(path, limits).ok()?;
    let thumb = image::imageops::thumbnail(&img, THUMB, THUMB);
    Some((img, crate::explain::overlay::png_bytes(&thumb).ok()?))
}

fn count_label(s: &[ScoredImage]) -> (usize, usize) {
    let l = s.iter().filter(|x| x.leukemia).count();
    (l, s.len() - l)
}

/// Runs the whole evaluation and writes `OUT/metrics.json`, `OUT/report.html` and
/// `OUT/predictions.csv`: the steps below, in order, each adding its warnings.
pub fn evaluate(req: &EvalRequest) -> Result<EvalOutcome, EvalError> {
    let mut warnings = Vec::new();
    let data = EvalData::open(req, &mut warnings)?;
    let device =
        crate::device::device(req.device).map_err(|e| EvalError::Invalid { what: "device", reason: e.to_string() })?;
    let predictor = Predictor::from_bundle(&data.bundle, &device)?;
    let target = req.target_sensitivity.unwrap_or(data.bundle.config.train.target_sensitivity);
    let thr = choose_threshold(&data, &predictor, target, req, &mut warnings)?;
    // The evaluated part is called at the threshold the report states.
    let predictor = adapted(predictor.with_threshold(thr.threshold), &data, req, &mut warnings)?;
    let scored = score_part(&predictor, &data, req, &mut warnings)?;

    let meta = &data.bundle.metadata;
    let subtype_names: Option<&[String]> = data.compat.subtype.then_some(meta.class_names.as_slice());
    let name = model_name(&data.bundle);
    let model = evaluate_scores(&name, &scored, thr.threshold, subtype_names, req.n_boot, req.seed)?;
    let per_patient = patient_figures(&name, &scored, thr.threshold, req, &mut warnings)?;
    let mut baseline = |kind| baseline_figures(kind, &data, &scored, &thr, target, subtype_names, req, &mut warnings);
    let shortcut = baseline(ShortcutKind::Colour);
    let background = baseline(ShortcutKind::Background);
    check_leakage(&data, &mut warnings);
    let gallery = error_gallery(&data, &predictor, &scored, &model, thr.threshold, req);
    let (split_protocol, split_label) = split_protocol(&data, req);

    let input = ReportInput {
        title: format!("allscan evaluation: {} on {}", short_name(&req.run), short_name(&req.data)),
        dataset_summary: dataset_summary(&data.index, &data.bundle, &scored, thr.threshold, data.cross_dataset),
        split_protocol,
        model,
        shortcut,
        background,
        per_patient,
        curves: read_training_curves(&req.run)?,
        curve_metric: "accuracy".into(),
        threshold_choice: thr.choice,
        threshold_rule: thr.rule,
        gallery,
        warnings,
    };
    write_report(&req.out, &input, &split_label)?;
    let metrics = MetricsFile::from_report(&input, split_label);
    let table = terminal_table(&input, &scored, thr.threshold, &req.out)?;
    Ok(EvalOutcome {
        report_path: req.out.join("report.html"),
        metrics_path: req.out.join("metrics.json"),
        input,
        metrics,
        table,
        chosen_threshold: thr.chosen,
        cross_dataset: data.cross_dataset,
    })
}

/// What an evaluation scores, and against which training data.
struct EvalData {
    bundle: RunBundle,
    /// The evaluated dataset.
    index: DatasetIndex,
    compat: Compatibility,
    /// The split that fits the data (same-dataset mode) and where it was read from.
    split: Option<(SplitFile, PathBuf)>,
    /// The evaluated images, as indices into `index`.
    part: Vec<usize>,
    /// The run's training data, for the threshold, the shortcuts and the leakage check.
    training: Option<TrainingData>,
    /// No split fits: the data is another dataset than the run's.
    cross_dataset: bool,
}

impl EvalData {
    /// Opens the bundle and the data, checks they fit, and decides the mode and the part.
    fn open(req: &EvalRequest, warnings: &mut Vec<String>) -> Result<Self, EvalError> {
        let bundle = RunBundle::open(&req.run)?;
        let map = req.map.as_deref().map(LabelMap::parse).transpose()?;
        let index =
            DatasetIndex::build(&req.data, &IndexOptions { map, progress: req.progress, ..Default::default() })?;
        let compat = check_compatibility(&bundle, &index, req.allow_preprocess_mismatch)?;
        warnings.extend(compat.notes.iter().cloned());

        // Same dataset (a split fits the data) or another one.
        let split = match &req.split {
            Some(p) => Some((SplitFile::load(p, &index)?, p.clone())),
            None if bundle.split_path().is_file() => match SplitFile::load(&bundle.split_path(), &index) {
                Ok(s) => Some((s, bundle.split_path())),
                Err(DataError::SplitMismatch { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        if split.is_none() && same_folder(&req.data, Path::new(&bundle.config.data.root)) {
            return Err(EvalError::Incompatible {
                data: req.data.clone(),
                reason: format!(
                    "this is the folder the run was trained on, but its contents changed since (the \
                     run's split.json no longer fits); scoring every image would score training \
                     images. Pass --split with a split made for the data as it is now (dataset \
                     fingerprint {})",
                    &index.fingerprint[..index.fingerprint.len().min(12)]
                ),
            });
        }
        let mut part: Vec<usize> = match &split {
            Some((s, _)) => s.select(&index, req.part, None),
            None => (0..index.images.len()).collect(),
        };
        if let Some(src) = &req.source {
            part.retain(|&i| index.images[i].source.as_deref() == Some(src.as_str()));
        }
        if part.is_empty() {
            return Err(EvalError::Incompatible {
                data: req.data.clone(),
                reason: format!("the {} part of the split holds no readable image", req.part.as_str()),
            });
        }
        if split.is_some() && req.part != Part::Test {
            warnings.push(format!(
                "evaluated on the {} part, not the test part: the model or its threshold were chosen \
                 on these images, so the figures are optimistic",
                req.part.as_str()
            ));
        }
        let training = match &split {
            Some((s, _)) => Some(TrainingData {
                train: s.select(&index, Part::Train, None),
                val: s.select(&index, Part::Val, None),
                index: index.clone(),
            }),
            None => training_data(&bundle, req.progress).map_err(|w| warnings.push(w)).ok(),
        };
        let cross_dataset = split.is_none();
        Ok(Self { bundle, index, compat, split, part, training, cross_dataset })
    }
}

/// The decision threshold and how it was reached.
struct ThresholdStep {
    threshold: f64,
    /// What it does on validation (same-dataset mode with a validation part).
    choice: Option<ThresholdChoice>,
    /// How it was reached (the bundle's rule, or the one applied here).
    rule: String,
    /// Set when it was chosen here (never written to the bundle).
    chosen: Option<f64>,
    /// The model's validation scores, reused to threshold the shortcuts alike.
    val_scores: Option<Vec<ScoredImage>>,
}

/// The bundle's threshold, unless it was never tuned or a new target is asked for: then it is
/// chosen on validation for this evaluation (the CLI says so; the bundle is not changed).
fn choose_threshold(
    data: &EvalData,
    predictor: &Predictor,
    target: f64,
    req: &EvalRequest,
    warnings: &mut Vec<String>,
) -> Result<ThresholdStep, EvalError> {
    let meta = &data.bundle.metadata;
    let mut step = ThresholdStep {
        threshold: meta.threshold,
        choice: None,
        rule: format!("the run bundle's: {}", meta.threshold_rule),
        chosen: None,
        val_scores: None,
    };
    let same_val = if data.cross_dataset { None } else { data.training.as_ref().filter(|t| !t.val.is_empty()) };
    let Some(t) = same_val else {
        warnings.push(if data.cross_dataset {
            format!(
                "cross-dataset: the threshold {:.4} was chosen on the training dataset's validation \
                 part ({}), not on this dataset",
                meta.threshold, meta.threshold_rule
            )
        } else {
            "the split has no validation part: the bundle's threshold is used as stored".to_string()
        });
        return Ok(step);
    };
    let (val, _) = score_images(predictor, &t.index, &t.val, req.progress);
    let yv: Vec<bool> = val.iter().map(|s| s.leukemia).collect();
    let pv: Vec<f64> = val.iter().map(|s| s.p_leukemia).collect();
    let choice = if req.target_sensitivity.is_some() || !threshold_is_tuned(meta) {
        let choice = threshold_for_sensitivity(&yv, &pv, target)?;
        step.rule = format!(
            "{TUNED_RULE} >= {target}, at the best validation specificity, midway between the nearest healthy and leukemia scores ({} leukemia / {} healthy validation images; chosen by `allscan eval` for this evaluation; the run bundle keeps {:.4})",
            choice.n_leukemia, choice.n_healthy, meta.threshold
        );
        step.threshold = choice.threshold;
        step.chosen = Some(choice.threshold);
        choice
    } else {
        // What the stored threshold does on validation through this inference path.
        let r = binary_metrics(&yv, &pv, step.threshold)?;
        ThresholdChoice {
            threshold: step.threshold,
            target_sensitivity: target,
            sensitivity: r.sensitivity.value,
            specificity: r.specificity.value,
            n_leukemia: r.n_leukemia,
            n_healthy: r.n_healthy,
            warning: None,
        }
    };
    if let Some(w) = &choice.warning {
        warnings.push(format!("threshold: {w}"));
    }
    step.choice = Some(choice);
    step.val_scores = Some(val);
    Ok(step)
}

/// With `--adapt`, the predictor with its BatchNorm statistics re-estimated on the part.
fn adapted(
    predictor: Predictor,
    data: &EvalData,
    req: &EvalRequest,
    warnings: &mut Vec<String>,
) -> Result<Predictor, EvalError> {
    if !req.adapt {
        return Ok(predictor);
    }
    // Decoded here and again when scored: holding a whole part's fields in memory for one pass
    // would cost more than a second decode of at most ADAPT_MAX_FIELDS.
    let limits = predictor.preprocess().decode;
    let fields: Vec<RgbImage> = crate::adapt::spread(data.part.len(), ADAPT_MAX_FIELDS)
        .into_iter()
        .filter_map(|k| decode_file(&data.index.abs_path(&data.index.images[data.part[k]]), &limits).ok())
        .collect();
    let (adapted, views) = predictor.adapt(&data.bundle, &fields)?;
    warnings.push(format!(
        "--adapt: BatchNorm statistics re-estimated on {views} views of {} evaluated images (no labels)",
        fields.len()
    ));
    Ok(adapted)
}

/// Scores the part, writes its `predictions.csv`, and names every file it had to skip.
fn score_part(
    predictor: &Predictor,
    data: &EvalData,
    req: &EvalRequest,
    warnings: &mut Vec<String>,
) -> Result<Vec<ScoredImage>, EvalError> {
    let (scored, fields, skipped) = score_fields(predictor, &data.index, &data.part, req.progress);
    write_predictions(&req.out, predictor, &scored, &fields)?;
    if !skipped.is_empty() {
        // Every skipped file by name: warnings reach stdout, metrics.json and the report.
        let all: Vec<String> = skipped.iter().map(|(p, r)| format!("{p}: {r}")).collect();
        warnings.push(format!("{} images could not be scored and were skipped: {}", skipped.len(), all.join("; ")));
    }
    if scored.is_empty() {
        return Err(EvalError::Incompatible { data: req.data.clone(), reason: "no image could be scored".into() });
    }
    Ok(scored)
}

/// The model's figures per patient, where images carry patient ids.
fn patient_figures(
    model_name: &str,
    scored: &[ScoredImage],
    threshold: f64,
    req: &EvalRequest,
    warnings: &mut Vec<String>,
) -> Result<Option<ModelEvaluation>, EvalError> {
    let Some(ps) = per_patient(scored) else { return Ok(None) };
    if !ps.mixed.is_empty() {
        warnings.push(format!(
            "{} patients have both leukemia and healthy images (e.g. {}); they count as leukemia per patient",
            ps.mixed.len(),
            ps.mixed.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let binary = bootstrap_binary(&ps.y, &ps.p, threshold, None, req.n_boot, req.seed)?;
    Ok(Some(ModelEvaluation {
        name: format!("{model_name}, per patient"),
        y_leukemia: ps.y,
        p_leukemia: ps.p,
        binary,
        subtype: None,
    }))
}

/// A shortcut baseline trained on the run's training part; `None` (with a warning when it
/// failed) where there is no training part or `--no-shortcut`.
#[allow(clippy::too_many_arguments)]
fn baseline_figures(
    kind: ShortcutKind,
    data: &EvalData,
    scored: &[ScoredImage],
    thr: &ThresholdStep,
    target: f64,
    subtype_names: Option<&[String]>,
    req: &EvalRequest,
    warnings: &mut Vec<String>,
) -> Option<ModelEvaluation> {
    let t = data.training.as_ref().filter(|t| req.shortcut && !t.train.is_empty())?;
    shortcut(kind, &data.bundle, t, &data.index, scored, thr.val_scores.as_deref(), target, subtype_names, req)
        .map_err(|e| warnings.push(format!("{} not run: {e}", kind.name())))
        .ok()
}

/// Patients and (near-)copies shared with the training data, and the unreadable files.
fn check_leakage(data: &EvalData, warnings: &mut Vec<String>) {
    if let Some(t) = &data.training {
        let mut input =
            LeakageInput { train: leakage_items(&t.index, &t.train), test: leakage_items(&data.index, &data.part) };
        if data.cross_dataset {
            // Patient ids of two datasets are different namespaces: only (near-)copies can
            // leak, so each side's ids are tagged and can never match (and images without an
            // id are not reported as unchecked).
            for (side, items) in [("train", &mut input.train), ("test", &mut input.test)] {
                for it in items.iter_mut() {
                    it.patient = Some(format!("{side}:{}", it.patient.as_deref().unwrap_or(&it.id)));
                }
            }
        }
        warnings.extend(leakage_warnings(&input, data.index.near_threshold));
    }
    let bad = &data.index.bad;
    if !bad.is_empty() {
        let all: Vec<String> = bad.iter().map(|b| format!("{}: {}", b.path, b.reason)).collect();
        warnings.push(format!("{} unreadable files in the data folder were skipped: {}", bad.len(), all.join("; ")));
    }
}

/// Thumbnails (and Grad-CAM overlays) of the most confident errors.
fn error_gallery(
    data: &EvalData,
    predictor: &Predictor,
    scored: &[ScoredImage],
    model: &ModelEvaluation,
    threshold: f64,
    req: &EvalRequest,
) -> Vec<GalleryItem> {
    let limits = &data.bundle.preprocess().decode;
    let mut gallery = Vec::new();
    for i in most_confident_errors(&model.y_leukemia, &model.p_leukemia, threshold, req.gallery) {
        let s = &scored[i];
        let Some(rec) = data.index.images.iter().find(|r| r.path == s.path) else { continue };
        let Some((field, png)) = thumbnail_png(&data.index.abs_path(rec), limits) else { continue };
        let overlay_png =
            req.gradcam.then(|| crate::explain::explain_field(predictor, &field).ok()).flatten().and_then(|x| {
                let o = x.field_overlay(&field);
                crate::explain::overlay::png_bytes(&image::imageops::thumbnail(&o, THUMB, THUMB)).ok()
            });
        gallery.push(GalleryItem {
            png_bytes: png,
            overlay_png,
            caption: format!(
                "{}: true {} ({}), p(leukemia) = {:.3}{}",
                s.path,
                if s.leukemia { "leukemia" } else { "healthy" },
                s.class,
                s.p_leukemia,
                s.patient.as_deref().map(|p| format!(", patient {p}")).unwrap_or_default()
            ),
        });
    }
    gallery
}

/// The protocol paragraph of the report and the short label of what was evaluated.
fn split_protocol(data: &EvalData, req: &EvalRequest) -> (String, String) {
    match &data.split {
        Some((s, path)) => {
            let folds = s.config.folds.map(|k| format!(", {k} folds")).unwrap_or_default();
            (
                format!(
                    "{} split of {} groups ({}; test {:.0}%, validation {:.0}%{folds}, seed {}), from {}. \
                     The {} part is evaluated; the threshold is chosen on the validation part; the \
                     colour shortcut is trained on the training part.",
                    if s.patient_level { "Patient-level" } else { "Image-level (no patient ids)" },
                    s.n_groups,
                    s.grouping,
                    s.config.test * 100.0,
                    s.config.val * 100.0,
                    s.config.seed,
                    path.display(),
                    req.part.as_str()
                ),
                format!("{} part of {} (seed {})", req.part.as_str(), path.display(), s.config.seed),
            )
        }
        None => (
            format!(
                "Cross-dataset: the model was trained on {}; every readable image of {} ({}) is \
                 evaluated. Labels: {}. The threshold is the bundle's.",
                data.bundle.config.data.root,
                req.data.display(),
                data.index.layout.describe(),
                req.map.as_deref().map_or("from the layout".to_string(), |m| format!("--map {m}"))
            ),
            format!("all images of {} (cross-dataset)", req.data.display()),
        ),
    }
}

/// The terminal table (model beside the shortcuts, per source, per patient); writes
/// `OUT/per_source.json` for a sources dataset.
fn terminal_table(
    input: &ReportInput,
    scored: &[ScoredImage],
    threshold: f64,
    out: &Path,
) -> Result<String, EvalError> {
    let mut table = summary_table(
        &input.model.binary,
        input.shortcut.as_ref().map(|s| &s.binary),
        input.background.as_ref().map(|s| &s.binary),
    );
    let per_source = per_source_figures(scored, input, threshold)?;
    if !per_source.is_empty() {
        table.push_str(&per_source_table(&per_source));
        let path = out.join("per_source.json");
        let json = serde_json::to_string_pretty(&per_source)
            .map_err(|e| EvalError::Invalid { what: "per_source.json", reason: e.to_string() })?;
        crate::fsutil::write_atomic(&path, json.as_bytes()).map_err(|source| EvalError::Io { path, source })?;
    }
    if let Some(p) = &input.per_patient {
        table.push_str(&format!(
            "per patient ({} patients): ROC-AUC {}, sensitivity {}, specificity {}\n",
            p.binary.report.n,
            p.binary.report.roc_auc.display(3),
            p.binary.report.sensitivity.display(3),
            p.binary.report.specificity.display(3)
        ));
    }
    Ok(table)
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn short_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

fn model_name(bundle: &RunBundle) -> String {
    let task = match bundle.metadata.task {
        Task::Binary => "binary".to_string(),
        Task::Subtype { num_classes } => format!("{num_classes}-class"),
    };
    format!("model ({task}, {})", bundle.preprocess().mode)
}

/// The run's training data in cross-dataset mode; `Err` is a warning.
fn training_data(bundle: &RunBundle, progress: bool) -> Result<TrainingData, String> {
    let root = PathBuf::from(&bundle.config.data.root);
    let why = |r: String| {
        format!("the run's training data ({}) {r}: no colour shortcut and no leakage check against it", root.display())
    };
    if !root.is_dir() {
        return Err(why("cannot be found from here".into()));
    }
    let map = bundle.config.data.map.as_deref().map(LabelMap::parse).transpose().map_err(|e| why(e.to_string()))?;
    let index = DatasetIndex::build(&root, &IndexOptions { map, progress, ..Default::default() })
        .map_err(|e| why(e.to_string()))?;
    let split = SplitFile::load(&bundle.split_path(), &index).map_err(|e| why(e.to_string()))?;
    Ok(TrainingData {
        train: split.select(&index, Part::Train, None),
        val: split.select(&index, Part::Val, None),
        index,
    })
}

fn dataset_summary(
    index: &DatasetIndex,
    bundle: &RunBundle,
    scored: &[ScoredImage],
    threshold: f64,
    cross: bool,
) -> Vec<(String, String)> {
    let patients: BTreeSet<&str> = index.images.iter().filter_map(|r| r.patient.as_deref()).collect();
    let classes: Vec<String> = index
        .classes
        .iter()
        .map(|c| format!("{} ({}, {})", c.name, c.label.map_or("unlabelled", |l| l.as_str()), c.count))
        .collect();
    let (l, h) = count_label(scored);
    let (m, p) = (&bundle.metadata, bundle.preprocess());
    let bundles = if threshold == m.threshold { String::new() } else { format!(" (the bundle's: {:.4})", m.threshold) };
    vec![
        ("data".into(), index.root.display().to_string()),
        ("layout".into(), index.layout.describe().to_string()),
        ("images".into(), format!("{} readable, {} unreadable", index.images.len(), index.bad.len())),
        ("classes".into(), classes.join(", ")),
        (
            "patients".into(),
            if patients.is_empty() {
                "none: file names carry no patient id".into()
            } else {
                patients.len().to_string()
            },
        ),
        (
            "duplicates".into(),
            format!(
                "{} exact groups, {} near-duplicate groups",
                index.exact_duplicates.len(),
                index.near_duplicates.len()
            ),
        ),
        ("scored".into(), format!("{} images ({l} leukemia, {h} healthy)", scored.len())),
        ("run".into(), bundle.dir.display().to_string()),
        ("model classes".into(), m.class_names.join(", ")),
        (
            "preprocessing".into(),
            format!("{} mode, {} px input, threshold {threshold:.4}{bundles}", p.mode, p.input_size),
        ),
        (
            "relation to training data".into(),
            if cross { "another dataset (cross-dataset evaluation)".into() } else { "same dataset as training".into() },
        ),
    ]
}

/// Most evaluated images decoded for `--adapt` (evenly spread over the part).
const ADAPT_MAX_FIELDS: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_parse_by_column_name() {
        let csv = "stage,epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,val_auc,seconds,best\n\
                   1,1,1.000e-3,0.69000,0.5,0.70000,0.5000,,1.0,true\n\
                   2,1,1.000e-4,0.40000,0.8,0.45000,0.8000,0.9,1.0,false\n";
        let rows = parse_training_curves(csv).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].stage.as_str(), rows[1].stage.as_str()), ("head", "finetune"));
        assert_eq!(rows[1].val_metric, Some(0.8));
        assert_eq!(rows[0].train_loss, Some(0.69));
        assert!(parse_training_curves("a,b\n1,2\n").is_err());
        assert!(parse_training_curves("").unwrap().is_empty());
    }
}
