//! The figures against hand-worked values and their defining properties.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::bootstrap::{quantile, Resampler};
use super::*;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-12)
}

/// Hand-worked: scores 0.9 L, 0.8 H, 0.7 L, 0.6 L, 0.4 H, 0.3 L, 0.2 H, 0.1 H; threshold 0.5.
/// Called leukemia: 0.9 L, 0.8 H, 0.7 L, 0.6 L -> TP 3, FP 1, TN 3, FN 1.
/// AUC: pairs (L above H) out of 16: 0.9 beats 4, 0.7 beats 3, 0.6 beats 3, 0.3 beats 2 =
/// 12/16 = 0.75. AP: recalls at positives 1/4, 2/4, 3/4, 4/4 with precisions 1, 2/3, 3/4,
/// 4/6 -> (1 + 2/3 + 3/4 + 2/3) / 4 = 37/48.
#[test]
fn hand_worked_binary() {
    let y = [true, false, true, true, false, true, false, false];
    let p = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1];
    let r = binary_metrics(&y, &p, 0.5).unwrap();
    assert_eq!(r.confusion_matrix, Confusion { tp: 3, fp: 1, tn: 3, fn_: 1 });
    assert!(close(r.accuracy.value, 0.75));
    assert!(close(r.sensitivity.value, 0.75));
    assert!(close(r.specificity.value, 0.75));
    assert!(close(r.balanced_accuracy.value, 0.75));
    assert!(close(r.precision.value, 0.75));
    assert!(close(r.npv.value, 0.75));
    assert!(close(r.f1.value, 0.75));
    assert!(close(r.roc_auc.value, 0.75));
    assert!(close(r.pr_auc.value, 37.0 / 48.0));
    // Brier: L (0.01 + 0.09 + 0.16 + 0.49), H (0.64 + 0.16 + 0.04 + 0.01) = 1.6 / 8.
    assert!(close(r.brier.value, 0.2));
}

/// Ties: two L and one H all at 0.5, one H at 0.2. AUC: each L beats the 0.2 H (2 pairs)
/// and ties the 0.5 H (2 half pairs) -> 3/4.
#[test]
fn ties_count_half() {
    let y = [true, true, false, false];
    let p = [0.5, 0.5, 0.5, 0.2];
    let r = binary_metrics(&y, &p, 0.5).unwrap();
    assert!(close(r.roc_auc.value, 0.75));
    // One step: recall 0 -> 1 at precision 2/3.
    assert!(close(r.pr_auc.value, 2.0 / 3.0));
    assert_eq!(r.confusion_matrix.fp, 1);
    let roc = roc_curve(&y, &p);
    assert_eq!(roc.len(), 3);
    assert!((roc[1].fpr - 0.5).abs() < 1e-12 && (roc[1].tpr - 1.0).abs() < 1e-12);
}

#[test]
fn one_class_says_why() {
    let r = binary_metrics(&[true, true], &[0.2, 0.9], 0.5).unwrap();
    assert_eq!(r.specificity.undefined.as_deref(), Some(reason::NO_HEALTHY));
    assert_eq!(r.roc_auc.undefined.as_deref(), Some(reason::ONE_CLASS));
    assert!(close(r.sensitivity.value, 0.5));
    assert!(close(r.npv.value, 0.0));
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("NaN") && !json.contains("nan"));
}

#[test]
fn empty_input_is_undefined_not_an_error() {
    let r = binary_metrics(&[], &[], 0.5).unwrap();
    for (name, e) in r.figures() {
        assert_eq!(e.value, None, "{name}");
        assert_eq!(e.undefined.as_deref(), Some(reason::NO_IMAGES), "{name}");
    }
    let b = bootstrap_binary(&[], &[], 0.5, None, 50, 1).unwrap();
    assert_eq!(b.report.accuracy.ci95, None);
    let m = multiclass_metrics(&[], &[], &["a".into(), "b".into()]).unwrap();
    assert_eq!(m.accuracy.undefined.as_deref(), Some(reason::NO_IMAGES));
}

#[test]
fn bad_input_is_an_error() {
    assert!(matches!(binary_metrics(&[true], &[0.1, 0.2], 0.5), Err(EvalError::LengthMismatch { .. })));
    assert!(matches!(binary_metrics(&[true], &[f64::NAN], 0.5), Err(EvalError::BadProbability { index: 0, .. })));
    assert!(matches!(
        multiclass_metrics(&[2], &[vec![0.5, 0.5]], &["a".into(), "b".into()]),
        Err(EvalError::BadLabel { label: 2, .. })
    ));
    assert!(threshold_for_sensitivity(&[true], &[0.3], 1.5).is_err());
}

#[test]
fn no_called_positives_leaves_precision_undefined() {
    let r = binary_metrics(&[true, false], &[0.1, 0.2], 0.9).unwrap();
    assert_eq!(r.precision.undefined.as_deref(), Some(reason::NONE_CALLED_LEUKEMIA));
    assert!(close(r.f1.value, 0.0));
}

#[test]
fn threshold_meets_target_with_best_specificity_then_sensitivity() {
    // Leukemia scores 0.9, 0.8, 0.6, 0.3, healthy 0.7, 0.1. 0.75 sensitivity needs 3 of 4:
    // at most 0.6, specificity 0.5 (0.7 stays above). Down to the healthy 0.1 the
    // specificity stays 0.5 and the leukemia 0.3 is called too: midway, 0.2.
    let y = [true, true, true, true, false, false];
    let p = [0.9, 0.8, 0.6, 0.3, 0.7, 0.1];
    let t = threshold_for_sensitivity(&y, &p, 0.75).unwrap();
    assert!(close(Some(t.threshold), 0.2));
    assert!(close(t.sensitivity, 1.0));
    assert!(close(t.specificity, 0.5));
    let at = binary_metrics(&y, &p, 0.6).unwrap();
    assert_eq!(at.specificity.value, t.specificity);
    // Any threshold above 0.6 misses the target.
    let above = binary_metrics(&y, &p, 0.6 + 1e-9).unwrap();
    assert!(above.sensitivity.value.unwrap() < 0.75);
    // A healthy score between leukemia scores bounds the margin: leukemia 0.9, 0.5,
    // healthy 0.6, 0.2; target 0.5 -> at most 0.9, specificity 1; the healthy 0.6 is the
    // next lower healthy score, so midway between 0.6 and 0.9.
    let t = threshold_for_sensitivity(&[true, true, false, false], &[0.9, 0.5, 0.6, 0.2], 0.5).unwrap();
    assert!(close(Some(t.threshold), 0.75));
    assert!(close(t.sensitivity, 0.5) && close(t.specificity, 1.0));
    // Ties, no healthy image: three leukemia at 0.5, target 1/3 -> 0.5, sensitivity 1.
    let t = threshold_for_sensitivity(&[true, true, true], &[0.5, 0.5, 0.5], 0.3).unwrap();
    assert_eq!(t.threshold, 0.5);
    assert!(close(t.sensitivity, 1.0));
    // 0.99 * 100 rounds below 99 in floating point; with no healthy image nothing is lost
    // by calling all 100.
    let y = vec![true; 100];
    let p: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
    let t = threshold_for_sensitivity(&y, &p, 0.99).unwrap();
    assert_eq!(t.threshold, 0.0);
    assert!(close(t.sensitivity, 1.0));
    // With a healthy image at 0.005 the target still needs 99 of them (at most 0.01).
    let mut y2 = y.clone();
    let mut p2 = p.clone();
    y2.push(false);
    p2.push(0.005);
    let t = threshold_for_sensitivity(&y2, &p2, 0.99).unwrap();
    assert!(close(Some(t.threshold), 0.0075));
    assert!(close(t.sensitivity, 0.99) && close(t.specificity, 1.0));
}

#[test]
fn threshold_without_positives_warns() {
    let t = threshold_for_sensitivity(&[false, false], &[0.2, 0.7], 0.99).unwrap();
    assert_eq!(t.threshold, 0.5);
    assert!(t.warning.is_some());
    assert_eq!(t.sensitivity, None);
    assert!(close(t.specificity, 0.5));
}

#[test]
fn bootstrap_is_deterministic_and_brackets_point() {
    let n = 200;
    let y: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
    let p: Vec<f64> = (0..n)
        .map(|i| {
            let base = if i % 3 == 0 { 0.65 } else { 0.35 };
            (base + ((i * 37 % 100) as f64 / 100.0 - 0.5) * 0.6).clamp(0.0, 1.0)
        })
        .collect();
    let a = bootstrap_binary(&y, &p, 0.5, None, 300, 7).unwrap();
    let b = bootstrap_binary(&y, &p, 0.5, None, 300, 7).unwrap();
    assert_eq!(a, b);
    for (name, e) in a.report.figures() {
        let [lo, hi] = e.ci95.unwrap();
        let v = e.value.unwrap();
        assert!(lo <= v && v <= hi, "{name}: {v} not in [{lo}, {hi}]");
        assert!(hi - lo < 0.3, "{name}: interval too wide");
    }
}

#[test]
fn patient_bootstrap_is_wider_when_patients_cluster() {
    // 20 patients with 10 images each; a patient's images share one score and label,
    // so resampling images pretends there are 200 independent observations.
    let mut y = Vec::new();
    let mut p = Vec::new();
    let mut g = Vec::new();
    for patient in 0..20 {
        for _ in 0..10 {
            y.push(patient % 2 == 0);
            p.push(if patient % 4 == 3 { 0.8 } else { 0.2 });
            g.push(format!("P{patient}"));
        }
    }
    let by_image = bootstrap_binary(&y, &p, 0.5, None, 400, 3).unwrap();
    let by_patient = bootstrap_binary(&y, &p, 0.5, Some(g.as_slice()), 400, 3).unwrap();
    let width = |e: &Estimate| e.ci95.map(|[a, b]| b - a).unwrap();
    assert!(width(&by_patient.report.accuracy) > 2.0 * width(&by_image.report.accuracy));
    assert_eq!(by_patient.bootstrap.unit, "patients");
    assert_eq!(by_patient.bootstrap.n_units, 20);
}

#[test]
fn bootstrap_notes_undefined_resamples() {
    // One healthy image in 30: many resamples have none.
    let mut y = vec![true; 29];
    y.push(false);
    let p: Vec<f64> = (0..30).map(|i| i as f64 / 30.0).collect();
    let b = bootstrap_binary(&y, &p, 0.5, None, 200, 11).unwrap();
    assert!(b.bootstrap.notes.iter().any(|n| n.starts_with("specificity")));
}

/// The weighted core on multiplicities must equal the plain figures on the data with each
/// image repeated that many times: the bootstrap relies on it.
#[test]
fn weights_equal_repetition() {
    let y: Vec<bool> = (0..40).map(|i| i % 3 != 1).collect();
    let p: Vec<f64> = (0..40).map(|i| ((i * 7) % 10) as f64 / 10.0).collect();
    let order = order_desc(&p);
    let mut sampler = Resampler::new(y.len(), None, 99);
    let mut w = vec![0.0; y.len()];
    for _ in 0..20 {
        sampler.draw(&mut w);
        let core = binary_core(&y, &p, &order, &w, 0.5);
        let (mut ye, mut pe) = (Vec::new(), Vec::new());
        for i in 0..y.len() {
            for _ in 0..w[i] as usize {
                ye.push(y[i]);
                pe.push(p[i]);
            }
        }
        let plain = binary_metrics(&ye, &pe, 0.5).unwrap();
        for (k, (name, e)) in plain.figures().iter().enumerate() {
            match (&core.figures[k], e.value) {
                (Ok(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{name}: {a} vs {b}"),
                (Err(_), None) => {}
                (a, b) => panic!("{name}: {a:?} vs {b:?}"),
            }
        }
    }
}

/// Coverage: over many simulated test sets with a known accuracy of 0.8, the 95% interval
/// should contain 0.8 about 95% of the time (percentile bootstrap runs a little short for
/// proportions at n = 150, hence the band).
#[test]
fn bootstrap_interval_covers_true_accuracy() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let (n, trials) = (150, 200);
    let mut covered = 0;
    for t in 0..trials {
        let y: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.5)).collect();
        // correct with probability 0.8, whatever the class
        let p: Vec<f64> = y
            .iter()
            .map(|&yi| {
                let right = rng.gen_bool(0.8);
                if yi == right {
                    0.9
                } else {
                    0.1
                }
            })
            .collect();
        let b = bootstrap_binary(&y, &p, 0.5, None, 400, t).unwrap();
        let [lo, hi] = b.report.accuracy.ci95.unwrap();
        if lo <= 0.8 && 0.8 <= hi {
            covered += 1;
        }
    }
    let rate = covered as f64 / trials as f64;
    assert!((0.89..=0.99).contains(&rate), "coverage {rate}");
}

#[test]
fn hand_worked_multiclass() {
    // true:  0 0 1 1 2 2
    // pred:  0 1 1 0 2 0   (the fourth row ties 0 and 1: the first maximum wins)
    let y = [0, 0, 1, 1, 2, 2];
    let probs = vec![
        vec![0.6, 0.3, 0.1],
        vec![0.2, 0.7, 0.1],
        vec![0.1, 0.8, 0.1],
        vec![0.4, 0.4, 0.2],
        vec![0.1, 0.1, 0.8],
        vec![0.5, 0.2, 0.3],
    ];
    let names: Vec<String> = ["B", "early", "pre"].iter().map(|s| s.to_string()).collect();
    let r = multiclass_metrics(&y, &probs, &names).unwrap();
    assert_eq!(r.confusion_matrix, vec![vec![1, 1, 0], vec![1, 1, 0], vec![1, 0, 1]]);
    assert!(close(r.accuracy.value, 0.5));
    assert!(close(r.per_class[0].precision.value, 1.0 / 3.0));
    assert!(close(r.per_class[0].recall.value, 0.5));
    assert!(close(r.per_class[0].f1.value, 0.4));
    assert!(close(r.per_class[2].precision.value, 1.0));
    assert!(close(r.per_class[2].f1.value, 2.0 / 3.0));
    assert!(close(r.macro_f1.value, (0.4 + 0.5 + 2.0 / 3.0) / 3.0));
}

#[test]
fn quantile_matches_numpy_linear() {
    let s = [1.0, 2.0, 3.0, 4.0];
    assert!((quantile(&s, 0.025) - 1.075).abs() < 1e-12);
    assert!((quantile(&s, 0.975) - 3.925).abs() < 1e-12);
}
