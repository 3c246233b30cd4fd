//! Evaluation stage, driver: a run bundle + a dataset folder (+ split file and part) in;
//! compatibility checks, per-image scores (through [`Predictor`], the one inference path),
//! per-patient figures, the colour-shortcut baseline, leakage warnings, the decision threshold
//! and `metrics.json` + `report.html` out.
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

use super::leakage::{leakage_warnings, LeakageInput, LeakageItem};
use super::metrics::{binary_metrics, bootstrap_binary, bootstrap_multiclass, threshold_for_sensitivity};
use super::report::{
    most_confident_errors, summary_table, write_report, EpochRow, GalleryItem, MetricsFile, ModelEvaluation,
    ReportInput,
};
use super::shortcut::ColourShortcut;
use super::{EvalError, ThresholdChoice};
use crate::bundle::{BundleMetadata, RunBundle, METRICS_FILE};
use crate::data::{DataError, DatasetIndex, ImageRecord, IndexOptions, LabelMap, LayoutKind, Part, SplitFile};
use crate::device::DeviceKind;
use crate::infer::{FieldPrediction, Predictor};
use crate::model::Task;

/// Default sensitivity the threshold is chosen for on validation.
pub const DEFAULT_TARGET_SENSITIVITY: f64 = 0.99;
/// Default number of bootstrap resamples.
pub const DEFAULT_BOOTSTRAP: usize = 1000;
/// Images decoded and scored together (bounds memory on large fields).
const SCORE_CHUNK: usize = 16;
/// Side of gallery thumbnails.
const THUMB: u32 = 200;
/// Prefix of the threshold rule written by training (and by `eval` when it re-chooses).
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
    /// Re-choose the threshold on validation for this sensitivity and store it in the bundle.
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
    /// Set when `eval` chose a threshold and stored it in the bundle.
    pub stored_threshold: Option<f64>,
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

/// Checks that `meta`'s model can be scored against `index`'s labels and that its
/// preprocessing fits these images. Errors name the classes or settings that disagree and how
/// to fix them.
pub fn check_compatibility(
    meta: &BundleMetadata,
    index: &DatasetIndex,
    allow_preprocess_mismatch: bool,
) -> Result<Compatibility, EvalError> {
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
    if meta.preprocess.mode == SegmentMode::AriaHsv && index.layout != LayoutKind::Aria && !allow_preprocess_mismatch {
        return bad(format!(
            "the bundle preprocesses with `aria-hsv` (the Aria authors' colour thresholds, made for \
             Aria's 224 px fields of view) but this is a {} dataset; its images would reach the \
             model masked by thresholds that were never tuned for them. Evaluate a `nucleus`-mode \
             model, or pass --allow-preprocess-mismatch to score anyway",
            index.layout.describe()
        ));
    }
    let min_side = meta.preprocess.decode.min_side;
    let small = index.images.iter().filter(|r| r.width.min(r.height) < min_side).count();
    if small > 0 {
        return bad(format!(
            "{small} images are smaller than the bundle's smallest accepted side ({min_side} px); \
             the model was not made for them"
        ));
    }
    Ok(Compatibility { subtype, notes })
}

/// One scored image.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredImage {
    /// Path relative to the dataset root.
    pub path: String,
    /// Class folder (or layout class) of the image.
    pub class: String,
    /// True label.
    pub leukemia: bool,
    /// Patient id, where the layout has one.
    pub patient: Option<String>,
    /// The model's p(leukemia) for the field.
    pub p_leukemia: f64,
    /// Class probabilities in the model's class order.
    pub probs: Vec<f64>,
    /// Source of a sources dataset's image.
    pub source: Option<String>,
}

fn scored_from(rec: &ImageRecord, p_leukemia: f64, probs: Vec<f64>) -> ScoredImage {
    ScoredImage {
        source: rec.source.clone(),
        path: rec.path.clone(),
        class: rec.class.clone(),
        leukemia: rec.label.is_some_and(|l| l.is_leukemia()),
        patient: rec.patient.clone(),
        p_leukemia,
        probs,
    }
}

/// `predictions.csv` of the evaluated part: `allscan predict --format csv` rows (cell rows
/// too for cell models), paths relative to the dataset root.
fn write_predictions(
    out: &Path,
    predictor: &Predictor,
    scored: &[ScoredImage],
    fields: &[FieldPrediction],
) -> Result<(), EvalError> {
    let rows: Vec<(&str, &FieldPrediction)> = scored.iter().map(|s| s.path.as_str()).zip(fields).collect();
    let mut csv = Vec::new();
    let path = out.join(PREDICTIONS_FILE);
    let io = |source| EvalError::Io { path: path.clone(), source };
    crate::predictions::write_csv(&mut csv, predictor, &rows, predictor.cell_mode()).map_err(io)?;
    std::fs::create_dir_all(out).map_err(io)?;
    crate::fsutil::write_atomic(&path, &csv).map_err(io)
}

/// The evaluated part's per-image rows, in the output folder.
pub const PREDICTIONS_FILE: &str = "predictions.csv";

/// Most evaluated images decoded for `--adapt` (evenly spread over the part).
const ADAPT_MAX_FIELDS: usize = 512;

/// Scores the images `indices` of `index`; unreadable images are skipped and returned as
/// `(path, reason)`.
pub fn score_images(
    predictor: &Predictor,
    index: &DatasetIndex,
    indices: &[usize],
    progress: bool,
) -> (Vec<ScoredImage>, Vec<(String, String)>) {
    let (scored, _, skipped) = score_fields(predictor, index, indices, progress);
    (scored, skipped)
}

/// [`score_images`], keeping each scored image's [`FieldPrediction`] (same order).
pub fn score_fields(
    predictor: &Predictor,
    index: &DatasetIndex,
    indices: &[usize],
    progress: bool,
) -> (Vec<ScoredImage>, Vec<FieldPrediction>, Vec<(String, String)>) {
    let mut fps = Vec::with_capacity(indices.len());
    let bar = progress_bar(indices.len() as u64, progress, "scoring");
    let limits = &predictor.preprocess().decode;
    let mut out = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for chunk in indices.chunks(SCORE_CHUNK) {
        let mut fields: Vec<(usize, RgbImage)> = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let rec = &index.images[i];
            match decode_file(&index.abs_path(rec), limits) {
                Ok(img) => fields.push((i, img)),
                Err(e) => skipped.push((rec.path.clone(), e.to_string())),
            }
        }
        let refs: Vec<&RgbImage> = fields.iter().map(|(_, f)| f).collect();
        let scales: Vec<Option<f32>> = fields.iter().map(|(i, _)| index.images[*i].um_per_px).collect();
        for ((i, _), r) in fields.iter().zip(predictor.predict_fields_at(&refs, &scales)) {
            let rec = &index.images[*i];
            match r {
                Ok(fp) => {
                    let probs = fp.probabilities.iter().map(|c| f64::from(c.p).clamp(0.0, 1.0)).collect();
                    out.push(scored_from(rec, f64::from(fp.p_leukemia).clamp(0.0, 1.0), probs));
                    fps.push(fp);
                }
                Err(e) => skipped.push((rec.path.clone(), e.to_string())),
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    (out, fps, skipped)
}

fn progress_bar(len: u64, show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({eta})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// Bootstrap groups: patient ids where any image has one (an image without one is its own
/// group), otherwise `None` (resample images).
pub fn bootstrap_groups(scored: &[ScoredImage]) -> Option<Vec<String>> {
    scored
        .iter()
        .any(|s| s.patient.is_some())
        .then(|| scored.iter().map(|s| s.patient.clone().unwrap_or_else(|| format!("image:{}", s.path))).collect())
}

/// Scores of one classifier: binary figures at `threshold` and, with `subtype_classes`,
/// multiclass figures over them (every image's class must be one of them).
pub fn evaluate_scores(
    name: &str,
    scored: &[ScoredImage],
    threshold: f64,
    subtype_classes: Option<&[String]>,
    n_boot: usize,
    seed: u64,
) -> Result<ModelEvaluation, EvalError> {
    let y: Vec<bool> = scored.iter().map(|s| s.leukemia).collect();
    let p: Vec<f64> = scored.iter().map(|s| s.p_leukemia).collect();
    let groups = bootstrap_groups(scored);
    let binary = bootstrap_binary(&y, &p, threshold, groups.as_deref(), n_boot, seed)?;
    let subtype = match subtype_classes {
        Some(names) => {
            let mut yc = Vec::with_capacity(scored.len());
            for s in scored {
                let k = names.iter().position(|n| *n == s.class).ok_or_else(|| EvalError::Invalid {
                    what: "subtype figures",
                    reason: format!("class `{}` of {} is not one of {names:?}", s.class, s.path),
                })?;
                yc.push(k);
            }
            let probs: Vec<Vec<f64>> = scored.iter().map(|s| s.probs.clone()).collect();
            Some(bootstrap_multiclass(&yc, &probs, names, groups.as_deref(), n_boot, seed)?)
        }
        None => None,
    };
    Ok(ModelEvaluation { name: name.to_string(), y_leukemia: y, p_leukemia: p, binary, subtype })
}

/// Per-patient scores: a patient is leukemia when any of their images is (C-NMC subjects are
/// all one or the other) and their p(leukemia) is the mean over their images.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientScores {
    /// Patient ids, sorted.
    pub patients: Vec<String>,
    /// Patient labels.
    pub y: Vec<bool>,
    /// Mean p(leukemia) per patient.
    pub p: Vec<f64>,
    /// Patients whose images carry both labels.
    pub mixed: Vec<String>,
}

/// The aggregation rule, in words, for reports.
pub const PATIENT_RULE: &str =
    "a patient's p(leukemia) is the mean over their images; a patient is leukemia when any of their images is";

/// Aggregates images to patients; `None` when no image has a patient id. Images without one
/// are left out.
pub fn per_patient(scored: &[ScoredImage]) -> Option<PatientScores> {
    let mut by: BTreeMap<&str, (bool, bool, f64, usize)> = BTreeMap::new();
    for s in scored {
        let Some(pid) = s.patient.as_deref() else { continue };
        let e = by.entry(pid).or_insert((false, false, 0.0, 0));
        if s.leukemia {
            e.0 = true;
        } else {
            e.1 = true;
        }
        e.2 += s.p_leukemia;
        e.3 += 1;
    }
    if by.is_empty() {
        return None;
    }
    let mut out = PatientScores { patients: Vec::new(), y: Vec::new(), p: Vec::new(), mixed: Vec::new() };
    for (pid, (any_l, any_h, sum, n)) in by {
        out.patients.push(pid.to_string());
        out.y.push(any_l);
        out.p.push((sum / n as f64).clamp(0.0, 1.0));
        if any_l && any_h {
            out.mixed.push(pid.to_string());
        }
    }
    Some(out)
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
struct TrainingData {
    index: DatasetIndex,
    train: Vec<usize>,
    val: Vec<usize>,
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

/// Runs the whole evaluation and writes `OUT/metrics.json` and `OUT/report.html`.
pub fn evaluate(req: &EvalRequest) -> Result<EvalOutcome, EvalError> {
    let mut bundle = RunBundle::open(&req.run)?;
    let map = req.map.as_deref().map(LabelMap::parse).transpose()?;
    let index = DatasetIndex::build(&req.data, &IndexOptions { map, progress: req.progress, ..Default::default() })?;
    let compat = check_compatibility(&bundle.metadata, &index, req.allow_preprocess_mismatch)?;
    let mut warnings: Vec<String> = compat.notes.clone();

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
    let cross_dataset = split.is_none();
    let mut eval_idx: Vec<usize> = match &split {
        Some((s, _)) => s.select(&index, req.part, None),
        None => (0..index.images.len()).collect(),
    };
    if let Some(src) = &req.source {
        eval_idx.retain(|&i| index.images[i].source.as_deref() == Some(src.as_str()));
    }
    if eval_idx.is_empty() {
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

    // The run's training data, for the threshold, the shortcut and the leakage check.
    let training: Option<TrainingData> = match &split {
        Some((s, _)) => Some(TrainingData {
            train: s.select(&index, Part::Train, None),
            val: s.select(&index, Part::Val, None),
            index: index.clone(),
        }),
        None => {
            let t = training_data(&bundle, req.progress);
            if let Err(w) = &t {
                warnings.push(w.clone());
            }
            t.ok()
        }
    };

    let device =
        crate::device::device(req.device).map_err(|e| EvalError::Invalid { what: "device", reason: e.to_string() })?;
    let predictor = Predictor::from_bundle(&bundle, &device)?;
    let meta = bundle.metadata.clone();
    let subtype_names: Option<&[String]> = compat.subtype.then_some(meta.class_names.as_slice());

    // Threshold: the bundle's, unless it was never tuned or a new target is asked for.
    let target = req.target_sensitivity.unwrap_or(bundle.config.train.target_sensitivity);
    let mut stored_threshold = None;
    let mut threshold = meta.threshold;
    let mut threshold_choice: Option<ThresholdChoice> = None;
    let same_val = if cross_dataset { None } else { training.as_ref().filter(|t| !t.val.is_empty()) };
    let mut val_scores: Option<Vec<ScoredImage>> = None;
    if let Some(t) = same_val {
        let (val, _) = score_images(&predictor, &t.index, &t.val, req.progress);
        let yv: Vec<bool> = val.iter().map(|s| s.leukemia).collect();
        let pv: Vec<f64> = val.iter().map(|s| s.p_leukemia).collect();
        if req.target_sensitivity.is_some() || !threshold_is_tuned(&meta) {
            let choice = threshold_for_sensitivity(&yv, &pv, target)?;
            threshold = choice.threshold;
            bundle.metadata.threshold = threshold;
            bundle.metadata.threshold_rule = format!(
                "{TUNED_RULE} >= {target}, at the best validation specificity, midway between the nearest healthy and leukemia scores ({} leukemia / {} healthy validation images; chosen by `allscan eval`)",
                choice.n_leukemia, choice.n_healthy
            );
            bundle.write_metadata()?;
            stored_threshold = Some(threshold);
            threshold_choice = Some(choice);
        } else {
            // Report what the stored threshold does on validation through this inference path.
            let r = binary_metrics(&yv, &pv, threshold)?;
            threshold_choice = Some(ThresholdChoice {
                threshold,
                target_sensitivity: target,
                sensitivity: r.sensitivity.value,
                specificity: r.specificity.value,
                n_leukemia: r.n_leukemia,
                n_healthy: r.n_healthy,
                warning: None,
            });
        }
        if let Some(w) = threshold_choice.as_ref().and_then(|c| c.warning.clone()) {
            warnings.push(format!("threshold: {w}"));
        }
        val_scores = Some(val);
    } else if cross_dataset {
        warnings.push(format!(
            "cross-dataset: the threshold {threshold:.4} was chosen on the training dataset's \
             validation part ({}), not on this dataset",
            meta.threshold_rule
        ));
    } else {
        warnings.push("the split has no validation part: the bundle's threshold is used as stored".to_string());
    }

    // Scores on the evaluated part (adapted to it first, with --adapt).
    // The evaluated part is called at the threshold the report states.
    let predictor = predictor.with_threshold(threshold);
    let predictor = if req.adapt {
        // Decoded here and again when scored: holding a whole part's fields in memory for one
        // pass would cost more than a second decode of at most ADAPT_MAX_FIELDS.
        let limits = predictor.preprocess().decode;
        let fields: Vec<RgbImage> = crate::adapt::spread(eval_idx.len(), ADAPT_MAX_FIELDS)
            .into_iter()
            .filter_map(|k| decode_file(&index.abs_path(&index.images[eval_idx[k]]), &limits).ok())
            .collect();
        let (adapted, views) = predictor.adapt(&bundle, &fields)?;
        warnings.push(format!(
            "--adapt: BatchNorm statistics re-estimated on {views} views of {} evaluated images (no labels)",
            fields.len()
        ));
        adapted
    } else {
        predictor
    };
    let (scored, fields, skipped) = score_fields(&predictor, &index, &eval_idx, req.progress);
    write_predictions(&req.out, &predictor, &scored, &fields)?;
    if !skipped.is_empty() {
        // Every skipped file by name: warnings reach stdout, metrics.json and the report.
        let all: Vec<String> = skipped.iter().map(|(p, r)| format!("{p}: {r}")).collect();
        warnings.push(format!("{} images could not be scored and were skipped: {}", skipped.len(), all.join("; ")));
    }
    if scored.is_empty() {
        return Err(EvalError::Incompatible { data: req.data.clone(), reason: "no image could be scored".into() });
    }
    let model_name = model_name(&bundle);
    let model_eval = evaluate_scores(&model_name, &scored, threshold, subtype_names, req.n_boot, req.seed)?;

    // Per patient.
    let patient_eval = match per_patient(&scored) {
        Some(ps) => {
            if !ps.mixed.is_empty() {
                warnings.push(format!(
                    "{} patients have both leukemia and healthy images (e.g. {}); they count as leukemia per patient",
                    ps.mixed.len(),
                    ps.mixed.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            let binary = bootstrap_binary(&ps.y, &ps.p, threshold, None, req.n_boot, req.seed)?;
            Some(ModelEvaluation {
                name: format!("{model_name}, per patient"),
                y_leukemia: ps.y,
                p_leukemia: ps.p,
                binary,
                subtype: None,
            })
        }
        None => None,
    };

    // Colour-only and background-only shortcuts, trained on the run's training part.
    let baseline = |kind: ShortcutKind, warnings: &mut Vec<String>| match (&training, req.shortcut) {
        (Some(t), true) if !t.train.is_empty() => {
            match shortcut(kind, &meta, t, &index, &scored, val_scores.as_deref(), target, subtype_names, req) {
                Ok(e) => Some(e),
                Err(e) => {
                    warnings.push(format!("{} not run: {e}", kind.name()));
                    None
                }
            }
        }
        _ => None,
    };
    let shortcut_eval = baseline(ShortcutKind::Colour, &mut warnings);
    let background_eval = baseline(ShortcutKind::Background, &mut warnings);

    // Leakage.
    if let Some(t) = &training {
        let mut input =
            LeakageInput { train: leakage_items(&t.index, &t.train), test: leakage_items(&index, &eval_idx) };
        if cross_dataset {
            // Patient ids of two datasets are different namespaces: only (near-)copies can
            // leak, so each side's ids are tagged and can never match (and images without an
            // id are not reported as unchecked).
            for (side, items) in [("train", &mut input.train), ("test", &mut input.test)] {
                for it in items.iter_mut() {
                    it.patient = Some(format!("{side}:{}", it.patient.as_deref().unwrap_or(&it.id)));
                }
            }
        }
        warnings.extend(leakage_warnings(&input, index.near_threshold));
    }
    if !index.bad.is_empty() {
        let all: Vec<String> = index.bad.iter().map(|b| format!("{}: {}", b.path, b.reason)).collect();
        warnings.push(format!(
            "{} unreadable files in the data folder were skipped: {}",
            index.bad.len(),
            all.join("; ")
        ));
    }

    // Gallery of the most confident errors.
    let mut gallery = Vec::new();
    for i in most_confident_errors(&model_eval.y_leukemia, &model_eval.p_leukemia, threshold, req.gallery) {
        let s = &scored[i];
        let Some(rec) = index.images.iter().find(|r| r.path == s.path) else { continue };
        let Some((field, png)) = thumbnail_png(&index.abs_path(rec), &meta.preprocess.decode) else { continue };
        let overlay_png = if req.gradcam {
            crate::explain::explain_field(&predictor, &field).ok().and_then(|x| {
                let o = x.field_overlay(&field);
                crate::explain::overlay::png_bytes(&image::imageops::thumbnail(&o, THUMB, THUMB)).ok()
            })
        } else {
            None
        };
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

    let curves = read_training_curves(&req.run)?;
    let dataset_summary = dataset_summary(&index, &bundle, &scored, cross_dataset);
    let (split_protocol, split_label) = match &split {
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
                bundle.config.data.root,
                req.data.display(),
                index.layout.describe(),
                req.map.as_deref().map_or("from the layout".to_string(), |m| format!("--map {m}"))
            ),
            format!("all images of {} (cross-dataset)", req.data.display()),
        ),
    };
    let input = ReportInput {
        title: format!("allscan evaluation: {} on {}", short_name(&req.run), short_name(&req.data)),
        dataset_summary,
        split_protocol,
        model: model_eval,
        shortcut: shortcut_eval,
        background: background_eval,
        per_patient: patient_eval,
        curves,
        curve_metric: "accuracy".into(),
        threshold_choice,
        gallery,
        warnings,
    };
    write_report(&req.out, &input, &split_label)?;
    let metrics = MetricsFile::from_report(&input, split_label);
    let mut table = summary_table(
        &input.model.binary,
        input.shortcut.as_ref().map(|s| &s.binary),
        input.background.as_ref().map(|s| &s.binary),
    );
    let per_source = per_source_figures(&scored, &input, threshold)?;
    if !per_source.is_empty() {
        table.push_str(&per_source_table(&per_source));
        let path = req.out.join("per_source.json");
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
    Ok(EvalOutcome {
        report_path: req.out.join("report.html"),
        metrics_path: req.out.join("metrics.json"),
        input,
        metrics,
        table,
        stored_threshold,
        cross_dataset,
    })
}

/// One source's figures at the evaluation's threshold (sources datasets).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceFigures {
    /// Source name.
    pub source: String,
    /// Images scored.
    pub n: usize,
    /// Of those, leukemia (blast).
    pub n_leukemia: usize,
    /// The model's and each shortcut's figures.
    pub rows: Vec<SourceRow>,
}

/// One scorer's figures on one source; `None` where undefined (one class only).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceRow {
    /// The model or the shortcut's name.
    pub who: String,
    pub roc_auc: Option<f64>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
}

/// Per-source figures of the model and the shortcuts (empty unless images carry a source).
fn per_source_figures(
    scored: &[ScoredImage],
    input: &ReportInput,
    threshold: f64,
) -> Result<Vec<SourceFigures>, EvalError> {
    let sources: BTreeSet<&str> = scored.iter().filter_map(|s| s.source.as_deref()).collect();
    let mut out = Vec::new();
    for src in sources {
        let idx: Vec<usize> = (0..scored.len()).filter(|&i| scored[i].source.as_deref() == Some(src)).collect();
        let mut rows = Vec::new();
        for e in [Some(&input.model), input.shortcut.as_ref(), input.background.as_ref()].into_iter().flatten() {
            if e.y_leukemia.len() != scored.len() {
                continue;
            }
            let y: Vec<bool> = idx.iter().map(|&i| e.y_leukemia[i]).collect();
            let p: Vec<f64> = idx.iter().map(|&i| e.p_leukemia[i]).collect();
            let t = if std::ptr::eq(e, &input.model) { threshold } else { e.binary.report.threshold };
            let r = binary_metrics(&y, &p, t)?;
            rows.push(SourceRow {
                who: e.name.clone(),
                roc_auc: r.roc_auc.value,
                sensitivity: r.sensitivity.value,
                specificity: r.specificity.value,
            });
        }
        out.push(SourceFigures {
            source: src.to_string(),
            n: idx.len(),
            n_leukemia: idx.iter().filter(|&&i| scored[i].leukemia).count(),
            rows,
        });
    }
    Ok(out)
}

fn per_source_table(rows: &[SourceFigures]) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut out = String::from("per source (each at its own threshold):\n");
    for s in rows {
        out.push_str(&format!("  {} ({} images, {} leukemia)\n", s.source, s.n, s.n_leukemia));
        for r in &s.rows {
            out.push_str(&format!(
                "    {:<34} ROC-AUC {:>6}  sensitivity {:>6}  specificity {:>6}\n",
                r.who,
                f(r.roc_auc),
                f(r.sensitivity),
                f(r.specificity)
            ));
        }
    }
    out
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
    format!("model ({task}, {})", bundle.metadata.preprocess.mode)
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

/// Which pixels a shortcut baseline reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShortcutKind {
    /// Every pixel of the field: what colour alone explains.
    Colour,
    /// Only the pixels outside every white cell (and a margin around it): what the lab's
    /// background, red cells and glass alone explain. A model that judges cells should do far
    /// better than this; a model that reads the lab, not.
    Background,
}

impl ShortcutKind {
    fn name(self) -> &'static str {
        match self {
            ShortcutKind::Colour => "colour-only shortcut",
            ShortcutKind::Background => "background-only shortcut",
        }
    }
}

/// A shortcut baseline's features of one decoded field.
fn shortcut_features(
    img: image::RgbImage,
    kind: ShortcutKind,
    preprocess: &allscan_preprocess::PreprocessConfig,
) -> Vec<f32> {
    let img = stained(img, preprocess);
    match kind {
        ShortcutKind::Colour => ColourShortcut::features(&img),
        ShortcutKind::Background => {
            let scale = allscan_preprocess::estimate_scale(&img, &preprocess.cell.scale);
            let cells = allscan_preprocess::find_white_cells(&img, &preprocess.cell.finder, &scale);
            // A margin of ~2 um so the cell's halo does not leak into "background".
            let grow = (2.0 / scale.um_per_px.max(1e-3)).round().clamp(0.0, 64.0) as i64;
            let boxes: Vec<[i64; 4]> = cells
                .cells
                .iter()
                .map(|c| {
                    let b = c.cell;
                    [
                        b.x as i64 - grow,
                        b.y as i64 - grow,
                        (b.x + b.width) as i64 + grow,
                        (b.y + b.height) as i64 + grow,
                    ]
                })
                .collect();
            let inside = |x: u32, y: u32| {
                let (x, y) = (x as i64, y as i64);
                boxes.iter().any(|b| x >= b[0] && y >= b[1] && x < b[2] && y < b[3])
            };
            ColourShortcut::features_where(&img, &|x, y| !inside(x, y))
        }
    }
}

fn features_of(
    index: &DatasetIndex,
    idx: &[usize],
    preprocess: &allscan_preprocess::PreprocessConfig,
    kind: ShortcutKind,
) -> Vec<(usize, Vec<f32>)> {
    let threads = crate::device::cpu_threads().max(1);
    let chunk = idx.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = idx
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|&i| {
                            decode_file(&index.abs_path(&index.images[i]), &preprocess.decode)
                                .ok()
                                .map(|img| (i, shortcut_features(img, kind, preprocess)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// The field as the model's preprocessing colours it: stain-normalised when the run
/// normalises stain (the shortcut then measures the colour left after that), else as read.
fn stained(img: image::RgbImage, preprocess: &allscan_preprocess::PreprocessConfig) -> image::RgbImage {
    match &preprocess.stain {
        Some(s) => s.apply(&img),
        None => img,
    }
}

/// Trains a shortcut baseline on the training part and scores the evaluated images.
#[allow(clippy::too_many_arguments)]
fn shortcut(
    kind: ShortcutKind,
    meta: &BundleMetadata,
    t: &TrainingData,
    index: &DatasetIndex,
    scored: &[ScoredImage],
    val_scored: Option<&[ScoredImage]>,
    target: f64,
    subtype_names: Option<&[String]>,
    req: &EvalRequest,
) -> Result<ModelEvaluation, EvalError> {
    let limits = &meta.preprocess.decode;
    // Classes: the model's for a subtype model (so p(leukemia) sums the same classes), else binary.
    let subtype_model = matches!(meta.task, Task::Subtype { .. });
    let classes: Vec<String> =
        if subtype_model { meta.class_names.clone() } else { vec!["healthy".into(), "leukemia".into()] };
    let label_of = |r: &ImageRecord| -> Option<usize> {
        if subtype_model {
            classes.iter().position(|c| *c == r.class)
        } else {
            Some(usize::from(r.label.is_some_and(|l| l.is_leukemia())))
        }
    };
    let train = features_of(&t.index, &t.train, &meta.preprocess, kind);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (i, f) in train {
        if let Some(k) = label_of(&t.index.images[i]) {
            x.push(f);
            y.push(k);
        }
    }
    let model = ColourShortcut::fit(&x, &y, classes.len(), req.seed)?;
    let leuk: Vec<bool> = classes
        .iter()
        .map(|c| if subtype_model { meta.leukemia_classes.contains(c) } else { c == "leukemia" })
        .collect();
    let score = |idx: &DatasetIndex, s: &ScoredImage| -> Result<Option<ScoredImage>, EvalError> {
        let Some(rec) = idx.images.iter().find(|r| r.path == s.path) else { return Ok(None) };
        let Ok(img) = decode_file(&idx.abs_path(rec), limits) else { return Ok(None) };
        let probs = model.predict_proba(&shortcut_features(img, kind, &meta.preprocess))?;
        let p: f64 = probs.iter().zip(&leuk).filter(|(_, l)| **l).map(|(p, _)| *p).sum::<f64>().clamp(0.0, 1.0);
        Ok(Some(ScoredImage { p_leukemia: p, probs, ..s.clone() }))
    };
    // Threshold at the same target on validation, like the model's.
    let threshold = match val_scored {
        Some(v) => {
            let mut sv = Vec::new();
            for s in v {
                if let Some(x) = score(&t.index, s)? {
                    sv.push(x);
                }
            }
            let yv: Vec<bool> = sv.iter().map(|s| s.leukemia).collect();
            let pv: Vec<f64> = sv.iter().map(|s| s.p_leukemia).collect();
            threshold_for_sensitivity(&yv, &pv, target)?.threshold
        }
        None => 0.5,
    };
    let mut st = Vec::with_capacity(scored.len());
    for s in scored {
        match score(index, s)? {
            Some(x) => st.push(x),
            None => {
                return Err(EvalError::Invalid {
                    what: "shortcut baseline",
                    reason: format!("{} could not be read", s.path),
                })
            }
        }
    }
    let sub = if subtype_model { subtype_names } else { None };
    evaluate_scores(kind.name(), &st, threshold, sub, req.n_boot, req.seed)
}

fn dataset_summary(
    index: &DatasetIndex,
    bundle: &RunBundle,
    scored: &[ScoredImage],
    cross: bool,
) -> Vec<(String, String)> {
    let patients: BTreeSet<&str> = index.images.iter().filter_map(|r| r.patient.as_deref()).collect();
    let classes: Vec<String> = index
        .classes
        .iter()
        .map(|c| format!("{} ({}, {})", c.name, c.label.map_or("unlabelled", |l| l.as_str()), c.count))
        .collect();
    let (l, h) = count_label(scored);
    let m = &bundle.metadata;
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
            format!("{} mode, {} px input, threshold {:.4}", m.preprocess.mode, m.preprocess.input_size, m.threshold),
        ),
        (
            "relation to training data".into(),
            if cross { "another dataset (cross-dataset evaluation)".into() } else { "same dataset as training".into() },
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Cross-validation aggregation

/// One fold's figures (on its validation fold).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FoldFigures {
    /// Fold number (0-based).
    pub fold: usize,
    /// The fold's figures.
    pub binary: super::BinaryReport,
}

/// Mean and sample standard deviation of one figure over the folds where it is defined.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanSd {
    /// Mean; `None` when no fold has the figure.
    pub mean: Option<f64>,
    /// Sample standard deviation (n - 1); `None` with fewer than two folds.
    pub sd: Option<f64>,
    /// Folds that had the figure defined.
    pub n_folds: usize,
}

/// Per-figure mean ± sd over folds, in [`super::metrics::BINARY_FIGURES`] order.
pub fn cv_aggregate(folds: &[FoldFigures]) -> Vec<(String, MeanSd)> {
    super::metrics::BINARY_FIGURES
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let v: Vec<f64> = folds.iter().filter_map(|f| f.binary.figures()[k].1.value).collect();
            let n = v.len();
            let mean = (n > 0).then(|| v.iter().sum::<f64>() / n as f64);
            let sd = mean
                .filter(|_| n > 1)
                .map(|m| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
            (name.to_string(), MeanSd { mean, sd, n_folds: n })
        })
        .collect()
}

/// "0.912 ± 0.031 (5 folds)".
pub fn mean_sd_display(m: &MeanSd) -> String {
    match (m.mean, m.sd) {
        (Some(a), Some(s)) => format!("{a:.3} ± {s:.3}"),
        (Some(a), None) => format!("{a:.3}"),
        _ => "undefined".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(path: &str, class: &str, leukemia: bool, patient: Option<&str>, p: f64) -> ScoredImage {
        ScoredImage {
            path: path.into(),
            class: class.into(),
            leukemia,
            patient: patient.map(Into::into),
            p_leukemia: p,
            probs: vec![1.0 - p, p],
            source: None,
        }
    }

    #[test]
    fn per_patient_means_and_flags_mixed_patients() {
        let v = vec![
            s("a", "all", true, Some("P1"), 0.9),
            s("b", "all", true, Some("P1"), 0.7),
            s("c", "hem", false, Some("H2"), 0.2),
            s("d", "hem", false, Some("P3"), 0.4),
            s("e", "all", true, Some("P3"), 0.6),
            s("f", "all", true, None, 0.6),
        ];
        let p = per_patient(&v).unwrap();
        assert_eq!(p.patients, vec!["H2", "P1", "P3"]);
        assert_eq!(p.y, vec![false, true, true]);
        assert!((p.p[1] - 0.8).abs() < 1e-12 && (p.p[2] - 0.5).abs() < 1e-12);
        assert_eq!(p.mixed, vec!["P3"]);
        assert!(per_patient(&v[5..]).is_none());
        // Bootstrap groups: patients, and the image without one on its own.
        let g = bootstrap_groups(&v).unwrap();
        assert_eq!(g[0], g[1]);
        assert_eq!(g[5], "image:f");
        assert!(bootstrap_groups(&v[5..]).is_none());
    }

    #[test]
    fn scores_become_binary_and_subtype_figures() {
        let names: Vec<String> = vec!["hem".into(), "all".into()];
        let v: Vec<ScoredImage> = (0..40)
            .map(|i| {
                let l = i % 2 == 0;
                s(
                    &format!("x{i}"),
                    if l { "all" } else { "hem" },
                    l,
                    Some(&format!("P{}", i / 4)),
                    if l { 0.8 } else { 0.3 },
                )
            })
            .collect();
        let e = evaluate_scores("m", &v, 0.5, Some(&names), 200, 1).unwrap();
        assert_eq!(e.binary.report.accuracy.value, Some(1.0));
        assert_eq!(e.binary.bootstrap.unit, "patients");
        assert_eq!(e.subtype.as_ref().unwrap().report.accuracy.value, Some(1.0));
        let bad: Vec<String> = vec!["Benign".into(), "Pro".into()];
        assert!(evaluate_scores("m", &v, 0.5, Some(&bad), 10, 1).is_err());
    }

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

    #[test]
    fn cv_mean_and_sd() {
        let mk = |fold, p: Vec<f64>| {
            let y = vec![true, true, false, false];
            FoldFigures { fold, binary: binary_metrics(&y, &p, 0.5).unwrap() }
        };
        let folds = vec![mk(0, vec![0.9, 0.8, 0.1, 0.2]), mk(1, vec![0.9, 0.4, 0.1, 0.2])];
        let agg = cv_aggregate(&folds);
        let acc = &agg.iter().find(|(n, _)| n == "accuracy").unwrap().1;
        assert!((acc.mean.unwrap() - 0.875).abs() < 1e-12);
        // Sample sd of {1.0, 0.75}.
        assert!((acc.sd.unwrap() - (0.125f64 * 0.125 * 2.0).sqrt()).abs() < 1e-12);
        assert_eq!(acc.n_folds, 2);
        assert_eq!(mean_sd_display(acc), "0.875 ± 0.177");
        let one = cv_aggregate(&folds[..1]);
        assert!(one[0].1.sd.is_none());
    }
}
