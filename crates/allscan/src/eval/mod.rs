//! Evaluation stage: scored images (true labels + predicted probabilities) in, figures with
//! 95% bootstrap confidence intervals, a colour-histogram shortcut baseline, leakage checks,
//! plots and a self-contained HTML report out.
//!
//! Layout, in the order the data flows:
//! - [`metrics`]: binary and multiclass figures, bootstrap CIs, threshold choice, ROC/PR curves;
//! - [`calibration`]: Brier score, expected calibration error, reliability bins;
//! - [`shortcut`]: "what colour alone explains": HSV histograms + logistic regression;
//! - [`probe`]: how well the model's features identify the source lab (lower is better);
//! - [`leakage`]: patients and (near-)duplicate images shared by training and test parts;
//! - [`plots`]: SVG figures drawn with plotters;
//! - [`report`]: `metrics.json` layout and the HTML report;
//! - [`scoring`]: dataset images -> scored images through the predictor, and one scorer's
//!   figures over them (binary, subtype, per patient, per source);
//! - `baseline`: the colour-only and background-only shortcuts, trained like the model;
//! - [`run`]: the driver behind `allscan eval`, a sequence of steps: bundle + data + split
//!   in, compatibility, threshold, scores, baselines, leakage, gallery, report out.
//!
//! Every figure is an [`Estimate`]; a figure that is undefined on the data at hand (no healthy
//! images, empty input, nothing predicted positive) carries a reason instead of a NaN.

mod baseline;
pub mod calibration;
pub mod leakage;
pub mod metrics;
pub mod plots;
pub mod probe;
pub mod report;
pub mod run;
pub mod scoring;
pub mod shortcut;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use calibration::{brier_score, expected_calibration_error, reliability_bins, ReliabilityBin};
pub use leakage::{leakage_warnings, LeakageInput, LeakageItem};
pub use metrics::{
    binary_metrics, bootstrap_binary, bootstrap_multiclass, multiclass_metrics, pr_curve, roc_auc, roc_curve,
    threshold_for_sensitivity, BinaryEstimates, BinaryReport, BootstrapInfo, ClassFigures, Confusion,
    MulticlassEstimates, MulticlassReport, PrPoint, RocPoint, ThresholdChoice,
};
pub use report::{
    most_confident_errors, render_report, summary_table, write_report, EpochRow, GalleryItem, MetricsFile,
    ModelEvaluation, ReportInput, ShortcutFigures,
};
pub use run::{check_compatibility, evaluate, Compatibility, EvalOutcome, EvalRequest, ScoredImage};
pub use shortcut::ColourShortcut;

/// Errors of the evaluation stage. Each variant names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{what}: {left} labels but {right} scores")]
    LengthMismatch { what: &'static str, left: usize, right: usize },
    #[error("{what}: score #{index} is {value}, expected a probability in [0, 1]")]
    BadProbability { what: &'static str, index: usize, value: f64 },
    #[error("{what}: row #{index} has {got} probabilities, expected {expected} (one per class)")]
    BadRow { what: &'static str, index: usize, got: usize, expected: usize },
    #[error("{what}: label #{index} is class {label}, but there are only {n_classes} classes")]
    BadLabel { what: &'static str, index: usize, label: usize, n_classes: usize },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("plot {plot}: {reason}")]
    Plot { plot: &'static str, reason: String },
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The model and the data do not fit together (classes, labels, preprocessing).
    #[error("{data}: {reason}")]
    Incompatible { data: PathBuf, reason: String },
    // Boxed: these are large, and every metric function returns `Result<_, EvalError>`.
    #[error(transparent)]
    Data(Box<crate::data::DataError>),
    #[error(transparent)]
    Bundle(Box<crate::bundle::BundleError>),
    #[error(transparent)]
    Infer(Box<crate::infer::InferError>),
}

impl From<crate::data::DataError> for EvalError {
    fn from(e: crate::data::DataError) -> Self {
        EvalError::Data(Box::new(e))
    }
}

impl From<crate::bundle::BundleError> for EvalError {
    fn from(e: crate::bundle::BundleError) -> Self {
        EvalError::Bundle(Box::new(e))
    }
}

impl From<crate::infer::InferError> for EvalError {
    fn from(e: crate::infer::InferError) -> Self {
        EvalError::Infer(Box::new(e))
    }
}

/// One figure with its 95% bootstrap confidence interval.
///
/// Serialises to `{"value": x, "ci95": [lo, hi]}`; when the figure is undefined on the data,
/// to `{"value": null, "ci95": null, "undefined": "no healthy images"}`. `ci95` is also null when
/// no bootstrap was run or too few resamples had the figure defined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undefined: Option<String>,
}

impl Estimate {
    /// A defined figure without an interval (yet).
    pub fn point(value: f64) -> Self {
        Estimate { value: Some(value), ci95: None, undefined: None }
    }

    /// An undefined figure and why.
    pub fn undefined(reason: impl Into<String>) -> Self {
        Estimate { value: None, ci95: None, undefined: Some(reason.into()) }
    }

    /// From a point computation: `Ok(x)` is defined, `Err(reason)` is not.
    pub fn from_result(r: &Result<f64, String>) -> Self {
        match r {
            Ok(v) => Estimate::point(*v),
            Err(reason) => Estimate::undefined(reason.clone()),
        }
    }

    /// "0.953 [0.921, 0.977]", "0.953", or "undefined (reason)" for tables.
    pub fn display(&self, digits: usize) -> String {
        match (self.value, self.ci95, &self.undefined) {
            (Some(v), Some([lo, hi]), _) => format!("{v:.digits$} [{lo:.digits$}, {hi:.digits$}]"),
            (Some(v), None, _) => format!("{v:.digits$}"),
            (None, _, Some(reason)) => format!("undefined ({reason})"),
            (None, _, None) => "undefined".to_string(),
        }
    }
}

/// Writes `bytes` to `path` atomically ([`crate::fsutil::write_atomic`]: a temporary file,
/// fsync, rename), so a crash never leaves a half-written `metrics.json` or `report.html`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_serialises_as_documented() {
        let mut e = Estimate::point(0.5);
        e.ci95 = Some([0.25, 0.75]);
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"value":0.5,"ci95":[0.25,0.75]}"#);
        let u = Estimate::undefined("no healthy images");
        assert_eq!(serde_json::to_string(&u).unwrap(), r#"{"value":null,"ci95":null,"undefined":"no healthy images"}"#);
    }

    #[test]
    fn write_atomic_replaces_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/metrics.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
