//! Evaluation stage, shortcut baselines: what a scorer that reads only colour (every pixel)
//! or only the background (every pixel outside the white cells) gets on the same images,
//! trained on the run's training part and thresholded like the model.

use allscan_preprocess::decode_file;

use super::metrics::threshold_for_sensitivity;
use super::report::ModelEvaluation;
use super::run::{EvalRequest, TrainingData};
use super::scoring::{evaluate_scores, ScoredImage};
use super::shortcut::ColourShortcut;
use super::EvalError;
use crate::bundle::RunBundle;
use crate::data::{DatasetIndex, ImageRecord};
use crate::model::Task;

/// Which pixels a shortcut baseline reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShortcutKind {
    /// Every pixel of the field: what colour alone explains.
    Colour,
    /// Only the pixels outside every white cell (and a margin around it): what the lab's
    /// background, red cells and glass alone explain. A model that judges cells should do far
    /// better than this; a model that reads the lab, not.
    Background,
}

impl ShortcutKind {
    pub(crate) fn name(self) -> &'static str {
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

/// What a shortcut baseline learns from and is measured on, beside the model: the run, its
/// training data, the evaluated images as the model scored them, and how the model's threshold
/// was set (its validation scores and target), so the shortcut is thresholded alike.
pub(crate) struct ShortcutData<'a> {
    /// The evaluated run.
    pub(crate) bundle: &'a RunBundle,
    /// The run's training data (the shortcut trains on its training part).
    pub(crate) training: &'a TrainingData,
    /// The evaluated dataset.
    pub(crate) index: &'a DatasetIndex,
    /// The evaluated images, as the model scored them.
    pub(crate) scored: &'a [ScoredImage],
    /// The model's validation scores, where its threshold was checked or chosen on validation.
    pub(crate) val_scored: Option<&'a [ScoredImage]>,
    /// The validation sensitivity the threshold is chosen for.
    pub(crate) target: f64,
    /// Class names of a subtype evaluation.
    pub(crate) subtype_names: Option<&'a [String]>,
}

/// Trains a shortcut baseline on the training part and scores the evaluated images.
pub(crate) fn shortcut(kind: ShortcutKind, d: &ShortcutData, req: &EvalRequest) -> Result<ModelEvaluation, EvalError> {
    let ShortcutData { bundle, training: t, index, scored, val_scored, target, subtype_names } = *d;
    let (meta, preprocess) = (&bundle.metadata, bundle.preprocess());
    let limits = &preprocess.decode;
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
    let train = features_of(&t.index, &t.train, preprocess, kind);
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
        let probs = model.predict_proba(&shortcut_features(img, kind, preprocess))?;
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
