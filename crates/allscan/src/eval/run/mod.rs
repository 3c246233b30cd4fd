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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use allscan_preprocess::{decode_file, SegmentMode};
use image::RgbImage;

use super::baseline::{shortcut, ShortcutData, ShortcutKind};
use super::leakage::{leakage_warnings, LeakageInput, LeakageItem};
use super::metrics::bootstrap_binary;
use super::report::{write_report, EpochRow, MetricsFile, ModelEvaluation, ReportInput};
use super::scoring::{evaluate_scores, per_patient, score_fields, write_predictions};
use super::EvalError;
use crate::bundle::{RunBundle, METRICS_FILE};
use crate::data::{DataError, DatasetIndex, IndexOptions, LabelMap, LayoutKind, Part, SplitFile};
use crate::device::DeviceKind;
use crate::infer::Predictor;
use crate::model::Task;

pub use super::scoring::{ScoredImage, PREDICTIONS_FILE};
pub(crate) use threshold::TUNED_RULE;

mod summary;
mod threshold;

use summary::{dataset_summary, error_gallery, model_name, short_name, split_protocol, terminal_table};
use threshold::choose_threshold;

/// Default sensitivity the threshold is chosen for on validation.
pub const DEFAULT_TARGET_SENSITIVITY: f64 = 0.99;
/// Default number of bootstrap resamples.
pub const DEFAULT_BOOTSTRAP: usize = 1000;

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

/// The run's training data (the same index in same-dataset mode, the run's data folder in
/// cross-dataset mode when it still exists) and its training part.
pub(crate) struct TrainingData {
    pub(crate) index: DatasetIndex,
    pub(crate) train: Vec<usize>,
    pub(crate) val: Vec<usize>,
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
    let shortcut_data = data.training.as_ref().filter(|t| req.shortcut && !t.train.is_empty()).map(|t| ShortcutData {
        bundle: &data.bundle,
        training: t,
        index: &data.index,
        scored: &scored,
        val_scored: thr.val_scores.as_deref(),
        target,
        subtype_names,
    });
    let mut baseline = |kind| baseline_figures(kind, shortcut_data.as_ref(), req, &mut warnings);
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

/// A shortcut baseline on `data` (the run's training part is there and `--no-shortcut` is
/// off); `None`, with a warning when it failed, otherwise.
fn baseline_figures(
    kind: ShortcutKind,
    data: Option<&ShortcutData>,
    req: &EvalRequest,
    warnings: &mut Vec<String>,
) -> Option<ModelEvaluation> {
    shortcut(kind, data?, req).map_err(|e| warnings.push(format!("{} not run: {e}", kind.name()))).ok()
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

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
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
