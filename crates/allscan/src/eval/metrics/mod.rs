//! Evaluation stage, figures: true labels + predicted probabilities in, binary and multiclass
//! figures, 95% bootstrap confidence intervals, the validation threshold and ROC/PR curves out.
//!
//! Definitions (every figure here is compared with scikit-learn in `tests/it/eval_metrics.rs`):
//! - an image is *called leukemia* when `p_leukemia >= threshold` (a score equal to the threshold
//!   counts as leukemia);
//! - accuracy `(TP+TN)/n`; sensitivity (recall) `TP/(TP+FN)`; specificity `TN/(TN+FP)`;
//!   balanced accuracy `(sensitivity+specificity)/2`; precision (PPV) `TP/(TP+FP)`;
//!   NPV `TN/(TN+FN)`; F1 `2TP/(2TP+FP+FN)` (equal to the harmonic mean of PPV and sensitivity
//!   whenever both exist, and 0 when TP = 0 but there are positives or false alarms);
//! - ROC-AUC is the Mann-Whitney statistic: the probability that a random leukemia image scores
//!   above a random healthy one, ties counted 1/2 (equals the trapezoidal area under the ROC
//!   curve, and sklearn's `roc_auc_score`);
//! - PR-AUC is *average precision*, `sum_k (R_k - R_{k-1}) P_k` over the distinct score
//!   thresholds taken from high to low: a step-wise area without interpolation, as sklearn's
//!   `average_precision_score`. (The trapezoidal PR area is optimistic and is not used.)
//! - Brier score and expected calibration error: see [`super::calibration`];
//! - multiclass: the predicted class is the arg-max of the probabilities (the first maximum
//!   wins a tie); per-class precision, recall and F1 as above with that class as positive;
//!   macro-F1 is the mean F1 over the classes that occur in the labels or the predictions
//!   (sklearn's default label set). A class neither present nor predicted has undefined F1.
//!
//! A figure whose denominator is zero is undefined and carries the reason, never a NaN.
//!
//! Confidence intervals are percentile bootstrap intervals (2.5% and 97.5% quantiles, linear
//! interpolation as numpy's default) over resamples of images, or of whole patients when
//! patient ids are given, since images of one patient are not independent. The threshold
//! stays fixed across resamples. Internally a resample is a vector of integer multiplicities,
//! so each resample costs one pass over data that is sorted once.

use serde::{Deserialize, Serialize};

use super::{calibration, Estimate, EvalError};
use crate::decision::argmax;

/// Names of the binary figures, in the order of [`BinaryReport::figures`].
pub const BINARY_FIGURES: [&str; 11] = [
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
];

/// Reason strings, shared so tables and tests agree.
pub mod reason {
    pub const NO_IMAGES: &str = "no images";
    pub const NO_LEUKEMIA: &str = "no leukemia images";
    pub const NO_HEALTHY: &str = "no healthy images";
    pub const ONE_CLASS: &str = "needs both leukemia and healthy images";
    pub const NONE_CALLED_LEUKEMIA: &str = "no image called leukemia at this threshold";
    pub const NONE_CALLED_HEALTHY: &str = "no image called healthy at this threshold";
    pub const F1_EMPTY: &str = "no leukemia images and none called leukemia";
}

/// Binary confusion counts at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

/// Binary figures at one threshold. From [`binary_metrics`] the intervals are empty; from
/// [`bootstrap_binary`] they are filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryReport {
    pub n: usize,
    pub n_leukemia: usize,
    pub n_healthy: usize,
    pub threshold: f64,
    pub accuracy: Estimate,
    pub balanced_accuracy: Estimate,
    pub sensitivity: Estimate,
    pub specificity: Estimate,
    pub precision: Estimate,
    pub npv: Estimate,
    pub f1: Estimate,
    pub roc_auc: Estimate,
    pub pr_auc: Estimate,
    pub brier: Estimate,
    pub ece: Estimate,
    pub confusion_matrix: Confusion,
}

impl BinaryReport {
    /// `(name, figure)` pairs in the order of [`BINARY_FIGURES`].
    pub fn figures(&self) -> [(&'static str, &Estimate); 11] {
        [
            ("accuracy", &self.accuracy),
            ("balanced_accuracy", &self.balanced_accuracy),
            ("sensitivity", &self.sensitivity),
            ("specificity", &self.specificity),
            ("precision", &self.precision),
            ("npv", &self.npv),
            ("f1", &self.f1),
            ("roc_auc", &self.roc_auc),
            ("pr_auc", &self.pr_auc),
            ("brier", &self.brier),
            ("ece", &self.ece),
        ]
    }

    fn figures_mut(&mut self) -> [&mut Estimate; 11] {
        [
            &mut self.accuracy,
            &mut self.balanced_accuracy,
            &mut self.sensitivity,
            &mut self.specificity,
            &mut self.precision,
            &mut self.npv,
            &mut self.f1,
            &mut self.roc_auc,
            &mut self.pr_auc,
            &mut self.brier,
            &mut self.ece,
        ]
    }
}

/// Binary figures with bootstrap intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryEstimates {
    #[serde(flatten)]
    pub report: BinaryReport,
    pub bootstrap: BootstrapInfo,
}

/// How the intervals were obtained, and what the resampling could not do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapInfo {
    pub n_boot: usize,
    /// "images" or "patients".
    pub unit: String,
    pub n_units: usize,
    pub seed: u64,
    /// E.g. "specificity: 12 of 1000 resamples had no healthy images; CI from the other 988".
    pub notes: Vec<String>,
}

/// Per-class figures of a multiclass (subtype) model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassFigures {
    pub class: String,
    /// Number of images of this class.
    pub support: usize,
    pub precision: Estimate,
    pub recall: Estimate,
    pub f1: Estimate,
}

/// Multiclass figures. `confusion_matrix[true][predicted]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassReport {
    pub n: usize,
    pub class_names: Vec<String>,
    pub accuracy: Estimate,
    pub macro_f1: Estimate,
    pub per_class: Vec<ClassFigures>,
    pub confusion_matrix: Vec<Vec<u64>>,
}

impl MulticlassReport {
    fn figures_mut(&mut self) -> Vec<&mut Estimate> {
        let mut v = vec![&mut self.accuracy, &mut self.macro_f1];
        for c in &mut self.per_class {
            v.push(&mut c.precision);
            v.push(&mut c.recall);
            v.push(&mut c.f1);
        }
        v
    }

    fn figure_names(&self) -> Vec<String> {
        let mut v = vec!["accuracy".to_string(), "macro_f1".to_string()];
        for c in &self.per_class {
            for m in ["precision", "recall", "f1"] {
                v.push(format!("{}/{m}", c.class));
            }
        }
        v
    }
}

/// Multiclass figures with bootstrap intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassEstimates {
    #[serde(flatten)]
    pub report: MulticlassReport,
    pub bootstrap: BootstrapInfo,
}

/// The operating point chosen on the validation part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdChoice {
    pub threshold: f64,
    pub target_sensitivity: f64,
    /// Sensitivity reached on the set the threshold was chosen on (ties can push it above the
    /// target); `None` without leukemia images.
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub n_leukemia: usize,
    pub n_healthy: usize,
    pub warning: Option<String>,
}

/// One point of a ROC curve: images with `p >= threshold` are called leukemia.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RocPoint {
    pub threshold: f64,
    pub fpr: f64,
    pub tpr: f64,
}

/// One point of a precision-recall curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrPoint {
    pub threshold: f64,
    pub recall: f64,
    pub precision: f64,
}

// ---------------------------------------------------------------------------------------------
// Validation

fn check_binary(what: &'static str, y: &[bool], p: &[f64]) -> Result<(), EvalError> {
    if y.len() != p.len() {
        return Err(EvalError::LengthMismatch { what, left: y.len(), right: p.len() });
    }
    check_probabilities(what, p)
}

pub(crate) fn check_probabilities(what: &'static str, p: &[f64]) -> Result<(), EvalError> {
    match p.iter().enumerate().find(|(_, v)| !(v.is_finite() && (0.0..=1.0).contains(*v))) {
        Some((index, &value)) => Err(EvalError::BadProbability { what, index, value }),
        None => Ok(()),
    }
}

fn check_threshold(what: &'static str, threshold: f64) -> Result<(), EvalError> {
    if threshold.is_finite() {
        Ok(())
    } else {
        Err(EvalError::Invalid { what, reason: format!("threshold is {threshold}") })
    }
}

fn check_multiclass(
    what: &'static str,
    y: &[usize],
    probs: &[Vec<f64>],
    class_names: &[String],
) -> Result<Vec<usize>, EvalError> {
    let k = class_names.len();
    if k == 0 {
        return Err(EvalError::Invalid { what, reason: "no class names".to_string() });
    }
    if y.len() != probs.len() {
        return Err(EvalError::LengthMismatch { what, left: y.len(), right: probs.len() });
    }
    let mut pred = Vec::with_capacity(y.len());
    for (index, (&label, row)) in y.iter().zip(probs).enumerate() {
        if label >= k {
            return Err(EvalError::BadLabel { what, index, label, n_classes: k });
        }
        if row.len() != k {
            return Err(EvalError::BadRow { what, index, got: row.len(), expected: k });
        }
        if let Some(&value) = row.iter().find(|v| !v.is_finite()) {
            return Err(EvalError::BadProbability { what, index, value });
        }
        pred.push(argmax(row));
    }
    Ok(pred)
}

// ---------------------------------------------------------------------------------------------
// Weighted core: `w[i]` is how many times image i occurs in the (re)sample.

/// Indices sorted by score, highest first.
fn order_desc(p: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order
}

type Figure = Result<f64, String>;

fn ratio(num: f64, den: f64, why: &str) -> Figure {
    if den > 0.0 {
        Ok(num / den)
    } else {
        Err(why.to_string())
    }
}

struct BinaryCore {
    tp: f64,
    fp: f64,
    tn: f64,
    fn_: f64,
    figures: [Figure; 11],
}

/// The threshold-free part of the binary figures, from one pass down the ranking.
struct Ranked {
    /// Weighted leukemia and healthy counts.
    pos: f64,
    neg: f64,
    /// Sum over positives of (negatives below + 1/2 negatives tied): ROC-AUC is `auc_num / (pos * neg)`.
    auc_num: f64,
    /// Average precision.
    ap: f64,
}

fn ranked(y: &[bool], p: &[f64], order: &[usize], w: &[f64]) -> Ranked {
    let (mut pos, mut neg) = (0.0, 0.0);
    for (&yi, &wi) in y.iter().zip(w) {
        if yi {
            pos += wi;
        } else {
            neg += wi;
        }
    }
    // One pass from the highest score down, a block of tied scores at a time.
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut auc_num = 0.0; // sum over positives of (negatives below + 1/2 negatives tied)
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    let mut i = 0;
    while i < order.len() {
        let s = p[order[i]];
        let (mut bp, mut bn) = (0.0, 0.0);
        while i < order.len() && p[order[i]] == s {
            let j = order[i];
            if y[j] {
                bp += w[j];
            } else {
                bn += w[j];
            }
            i += 1;
        }
        auc_num += bp * (neg - fp - bn) + 0.5 * bp * bn;
        tp += bp;
        fp += bn;
        if pos > 0.0 && bp > 0.0 {
            let recall = tp / pos;
            ap += (recall - prev_recall) * tp / (tp + fp);
            prev_recall = recall;
        }
    }
    Ranked { pos, neg, auc_num, ap }
}

/// ROC-AUC of `p` (the Mann-Whitney statistic, ties counted one half, as in
/// [`binary_metrics`]); `None` without both labels. Training's validation and held-out figures
/// use it.
pub fn roc_auc(y: &[bool], p: &[f64]) -> Option<f64> {
    let r = ranked(y, p, &order_desc(p), &vec![1.0; y.len()]);
    (r.pos > 0.0 && r.neg > 0.0).then(|| r.auc_num / (r.pos * r.neg))
}

fn binary_core(y: &[bool], p: &[f64], order: &[usize], w: &[f64], threshold: f64) -> BinaryCore {
    let Ranked { pos, neg, auc_num, ap } = ranked(y, p, order, w);
    let n = pos + neg;

    // Confusion at the threshold.
    let (mut ctp, mut cfp) = (0.0, 0.0);
    for (j, (&yi, &pi)) in y.iter().zip(p).enumerate() {
        if pi >= threshold {
            if yi {
                ctp += w[j];
            } else {
                cfp += w[j];
            }
        }
    }
    let cfn = pos - ctp;
    let ctn = neg - cfp;

    // With no images at all every figure says so, rather than naming a missing class.
    let one_class = |r: &str| {
        if n == 0.0 {
            reason::NO_IMAGES.to_string()
        } else {
            r.to_string()
        }
    };
    let accuracy = ratio(ctp + ctn, n, reason::NO_IMAGES);
    let sensitivity = ratio(ctp, pos, &one_class(reason::NO_LEUKEMIA));
    let specificity = ratio(ctn, neg, &one_class(reason::NO_HEALTHY));
    let balanced = match (&sensitivity, &specificity) {
        (Ok(a), Ok(b)) => Ok((a + b) / 2.0),
        _ => Err(one_class(reason::ONE_CLASS)),
    };
    let precision = ratio(ctp, ctp + cfp, &one_class(reason::NONE_CALLED_LEUKEMIA));
    let npv = ratio(ctn, ctn + cfn, &one_class(reason::NONE_CALLED_HEALTHY));
    let f1 = ratio(2.0 * ctp, 2.0 * ctp + cfp + cfn, &one_class(reason::F1_EMPTY));
    let roc_auc = if pos > 0.0 && neg > 0.0 { Ok(auc_num / (pos * neg)) } else { Err(one_class(reason::ONE_CLASS)) };
    let pr_auc = if pos > 0.0 { Ok(ap) } else { Err(one_class(reason::NO_LEUKEMIA)) };
    let brier = calibration::brier_weighted(y, p, w);
    let ece = calibration::ece_weighted(y, p, w, calibration::ECE_BINS);
    BinaryCore {
        tp: ctp,
        fp: cfp,
        tn: ctn,
        fn_: cfn,
        figures: [accuracy, balanced, sensitivity, specificity, precision, npv, f1, roc_auc, pr_auc, brier, ece],
    }
}

struct MulticlassCore {
    confusion: Vec<Vec<f64>>,
    /// accuracy, macro-F1, then precision, recall, F1 per class.
    figures: Vec<Figure>,
}

fn multiclass_core(y: &[usize], pred: &[usize], w: &[f64], k: usize) -> MulticlassCore {
    let mut cm = vec![vec![0.0; k]; k];
    for ((&t, &p), &wi) in y.iter().zip(pred).zip(w) {
        cm[t][p] += wi;
    }
    let n: f64 = cm.iter().flatten().sum();
    let correct: f64 = (0..k).map(|c| cm[c][c]).sum();
    let mut per_class = Vec::with_capacity(3 * k);
    let (mut f1_sum, mut f1_count) = (0.0, 0usize);
    // Matrix code reads best with indices: row c and column c of `cm`.
    #[allow(clippy::needless_range_loop)]
    for c in 0..k {
        let tp = cm[c][c];
        let actual: f64 = cm[c].iter().sum();
        let called: f64 = (0..k).map(|r| cm[r][c]).sum();
        let why = |r: &str| {
            if n == 0.0 {
                reason::NO_IMAGES.to_string()
            } else {
                r.to_string()
            }
        };
        per_class.push(ratio(tp, called, &why("no image called this class")));
        per_class.push(ratio(tp, actual, &why("no image of this class")));
        let f1 = ratio(2.0 * tp, actual + called, &why("no image of this class and none called it"));
        if let Ok(v) = f1 {
            f1_sum += v;
            f1_count += 1;
        }
        per_class.push(f1);
    }
    let mut figures = vec![ratio(correct, n, reason::NO_IMAGES), ratio(f1_sum, f1_count as f64, reason::NO_IMAGES)];
    figures.extend(per_class);
    MulticlassCore { confusion: cm, figures }
}

// ---------------------------------------------------------------------------------------------
// Public point figures

/// Binary figures at `threshold` (leukemia when `p >= threshold`), without intervals.
///
/// Errors on mismatched lengths, a score outside [0, 1] or a non-finite threshold. Empty input
/// is not an error: every figure is then undefined ("no images").
pub fn binary_metrics(y_leukemia: &[bool], p_leukemia: &[f64], threshold: f64) -> Result<BinaryReport, EvalError> {
    check_binary("binary metrics", y_leukemia, p_leukemia)?;
    check_threshold("binary metrics", threshold)?;
    let order = order_desc(p_leukemia);
    let w = vec![1.0; y_leukemia.len()];
    let core = binary_core(y_leukemia, p_leukemia, &order, &w, threshold);
    Ok(binary_report_from(y_leukemia, threshold, &core))
}

fn binary_report_from(y: &[bool], threshold: f64, core: &BinaryCore) -> BinaryReport {
    let e = |i: usize| Estimate::from_result(&core.figures[i]);
    let n_leukemia = y.iter().filter(|v| **v).count();
    BinaryReport {
        n: y.len(),
        n_leukemia,
        n_healthy: y.len() - n_leukemia,
        threshold,
        accuracy: e(0),
        balanced_accuracy: e(1),
        sensitivity: e(2),
        specificity: e(3),
        precision: e(4),
        npv: e(5),
        f1: e(6),
        roc_auc: e(7),
        pr_auc: e(8),
        brier: e(9),
        ece: e(10),
        confusion_matrix: Confusion {
            tp: core.tp.round() as u64,
            fp: core.fp.round() as u64,
            tn: core.tn.round() as u64,
            fn_: core.fn_.round() as u64,
        },
    }
}

/// Multiclass figures (arg-max prediction), without intervals.
pub fn multiclass_metrics(
    y: &[usize],
    probs: &[Vec<f64>],
    class_names: &[String],
) -> Result<MulticlassReport, EvalError> {
    let pred = check_multiclass("multiclass metrics", y, probs, class_names)?;
    let w = vec![1.0; y.len()];
    let core = multiclass_core(y, &pred, &w, class_names.len());
    Ok(multiclass_report_from(y, class_names, &core))
}

fn multiclass_report_from(y: &[usize], class_names: &[String], core: &MulticlassCore) -> MulticlassReport {
    let e = |i: usize| Estimate::from_result(&core.figures[i]);
    let per_class = class_names
        .iter()
        .enumerate()
        .map(|(c, name)| ClassFigures {
            class: name.clone(),
            support: y.iter().filter(|v| **v == c).count(),
            precision: e(2 + 3 * c),
            recall: e(3 + 3 * c),
            f1: e(4 + 3 * c),
        })
        .collect();
    MulticlassReport {
        n: y.len(),
        class_names: class_names.to_vec(),
        accuracy: e(0),
        macro_f1: e(1),
        per_class,
        confusion_matrix: core.confusion.iter().map(|r| r.iter().map(|v| v.round() as u64).collect()).collect(),
    }
}

mod bootstrap;
mod curves;
#[cfg(test)]
mod tests;

pub use bootstrap::{bootstrap_binary, bootstrap_multiclass};
pub use curves::{pr_curve, roc_curve, threshold_for_sensitivity};
