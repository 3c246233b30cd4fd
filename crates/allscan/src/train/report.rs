//! Training, after the stages: the best epoch's model -> the decision threshold (chosen on
//! validation), the held-out test figures (reported, never used to choose anything) and the
//! bundle's `metadata.json`.

use std::collections::BTreeMap;

use super::dataset::Sample;
use super::pass::{evaluate, field_scores, Inputs, Judging};
use super::plan::Plan;
use super::stage::TrainContext;
use super::{RunLog, TrainError};
use crate::bundle::{BestEpoch, BundleMetadata, SplitInfo, Versions, BUNDLE_FORMAT, SPLIT_FILE};
use crate::eval::roc_auc;
use crate::model::{LeukemiaClassifier, Task};

/// Per-field labels and p(leukemia) of `model` on `samples` (the model's test views, the
/// field rule), and the pass's figures.
fn field_pass(
    ctx: &TrainContext,
    model: &LeukemiaClassifier,
    samples: &[Sample],
) -> Result<(Vec<bool>, Vec<f32>, super::pass::Evaluation), TrainError> {
    let judging = Judging { decision: &ctx.decision, weights: &ctx.class_weights, smoothing: 0.0 };
    let ev = evaluate(model, &Inputs::Images, samples, &ctx.pass(ctx.config.model.test_views), &judging)?;
    let pl: Vec<f32> = ev.probs.iter().map(|r| ctx.decision.p_leukemia(r)).collect();
    let (y, pl) = field_scores(samples, &pl);
    Ok((y, pl, ev))
}

/// The decision threshold on validation and how it was chosen (0.5 where it cannot be tuned).
pub(super) fn choose_threshold(
    ctx: &TrainContext,
    model: &LeukemiaClassifier,
    log: &mut RunLog,
) -> Result<(f64, String), TrainError> {
    let target = ctx.config.train.target_sensitivity;
    let (yv, pv, _) = field_pass(ctx, model, &ctx.prepared.val)?;
    let pv: Vec<f64> = pv.into_iter().map(f64::from).collect();
    Ok(match crate::eval::threshold_for_sensitivity(&yv, &pv, target) {
        Ok(choice) => {
            if let Some(w) = &choice.warning {
                log.line(&format!("threshold: {w}"));
            }
            (
                choice.threshold,
                format!(
                    "{} >= {}, at the best validation specificity, midway between the nearest healthy and leukemia scores ({} leukemia / {} healthy validation images)",
                    crate::eval::run::TUNED_RULE,
                    target, choice.n_leukemia, choice.n_healthy
                ),
            )
        }
        Err(e) => {
            log.line(&format!("threshold: {e}; using 0.5"));
            (0.5, format!("0.5 (could not tune on validation: {e})"))
        }
    })
}

/// Figures on the test part at `threshold` (reported, never used to choose anything).
pub(super) fn held_out(
    ctx: &TrainContext,
    model: &LeukemiaClassifier,
    threshold: f64,
    log: &mut RunLog,
) -> Result<BTreeMap<String, f64>, TrainError> {
    let mut m = BTreeMap::new();
    let test: &[Sample] = &ctx.prepared.test;
    if test.is_empty() {
        log.line("held-out test part: empty (nothing to report)");
        return Ok(m);
    }
    let (y, pl, ev) = field_pass(ctx, model, test)?;
    let tuned = ctx.decision.with_threshold(threshold)?;
    let call: Vec<bool> = pl.iter().map(|&p| tuned.is_leukemia(p)).collect();
    let tp = y.iter().zip(&call).filter(|(a, b)| **a && **b).count();
    let tn = y.iter().zip(&call).filter(|(a, b)| !**a && !**b).count();
    let npos = y.iter().filter(|&&v| v).count();
    let nneg = y.len() - npos;
    m.insert("test_images".into(), y.len() as f64);
    m.insert("test_views".into(), test.len() as f64);
    m.insert("test_loss".into(), ev.loss);
    m.insert("test_binary_accuracy".into(), (tp + tn) as f64 / y.len() as f64);
    if npos > 0 {
        m.insert("test_sensitivity".into(), tp as f64 / npos as f64);
    }
    if nneg > 0 {
        m.insert("test_specificity".into(), tn as f64 / nneg as f64);
    }
    if let Some(a) = roc_auc(&y, &pl.iter().map(|&p| f64::from(p)).collect::<Vec<_>>()) {
        m.insert("test_auc".into(), a);
    }
    let mut line = format!("held-out test ({} images, never used for selection):", y.len());
    if let Task::Subtype { .. } = ctx.decision.task {
        m.insert("test_subtype_accuracy".into(), ev.accuracy);
        line.push_str(&format!(" subtype accuracy {:.4};", ev.accuracy));
    }
    line.push_str(&format!(
        " binary accuracy {:.4}, sensitivity {}, specificity {} at threshold {:.4}; auc {}",
        m["test_binary_accuracy"],
        m.get("test_sensitivity").map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
        m.get("test_specificity").map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
        threshold,
        m.get("test_auc").map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
    ));
    log.line(&line);
    Ok(m)
}

/// The bundle's `metadata.json`: what training produced.
pub(super) fn metadata(
    plan: &Plan,
    threshold: f64,
    rule: String,
    best: Option<BestEpoch>,
    test_metrics: BTreeMap<String, f64>,
) -> BundleMetadata {
    let cfg = &plan.config;
    BundleMetadata {
        format: BUNDLE_FORMAT.into(),
        task: cfg.model.task,
        class_names: plan.class_names.clone(),
        leukemia_classes: plan.leukemia_classes.clone(),
        dataset_classes: plan
            .index
            .classes
            .iter()
            .map(|c| (c.name.clone(), c.label.map(|l| l.as_str().to_string()).unwrap_or_else(|| "unlabelled".into())))
            .collect(),
        threshold,
        threshold_rule: rule,
        dataset_fingerprint: plan.index.fingerprint.clone(),
        split: Some(SplitInfo {
            file: SPLIT_FILE.into(),
            config: plan.split.config,
            patient_level: plan.split.patient_level,
            counts: plan.split.counts.clone(),
        }),
        best,
        test_metrics,
        versions: Versions::default(),
    }
}
