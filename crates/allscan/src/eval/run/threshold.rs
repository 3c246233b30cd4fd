//! Evaluation, the threshold step: the bundle's decision threshold, or one chosen on the
//! validation part for this evaluation (never written to the bundle), and what it does there.

use super::{EvalData, EvalRequest};
use crate::bundle::BundleMetadata;
use crate::eval::metrics::{binary_metrics, threshold_for_sensitivity};
use crate::eval::scoring::{score_images, ScoredImage};
use crate::eval::{EvalError, ThresholdChoice};
use crate::infer::Predictor;

/// Prefix of the threshold rule written by training (and by `eval` into `metrics.json` when it
/// re-chooses).
pub(crate) const TUNED_RULE: &str = "tuned for validation sensitivity";

/// The same prefix in bundles written before the threshold got its margin.
const TUNED_RULE_BEFORE_MARGIN: &str = "largest threshold with validation sensitivity";

/// Whether the bundle's threshold was tuned on a validation part.
fn threshold_is_tuned(meta: &BundleMetadata) -> bool {
    meta.threshold_rule.starts_with(TUNED_RULE) || meta.threshold_rule.starts_with(TUNED_RULE_BEFORE_MARGIN)
}

/// The decision threshold and how it was reached.
pub(super) struct ThresholdStep {
    pub(super) threshold: f64,
    /// What it does on validation (same-dataset mode with a validation part).
    pub(super) choice: Option<ThresholdChoice>,
    /// How it was reached (the bundle's rule, or the one applied here).
    pub(super) rule: String,
    /// Set when it was chosen here (never written to the bundle).
    pub(super) chosen: Option<f64>,
    /// The model's validation scores, reused to threshold the shortcuts alike.
    pub(super) val_scores: Option<Vec<ScoredImage>>,
}

/// The bundle's threshold, unless it was never tuned or a new target is asked for: then it is
/// chosen on validation for this evaluation (the CLI says so; the bundle is not changed).
pub(super) fn choose_threshold(
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
