//! Evaluation stage, checked against scikit-learn: the fixture written by
//! `scripts/sklearn_fixture.py` (labels, scores and sklearn's figures) in, agreement of
//! `allscan::eval` with every figure out. A `null` in the fixture is a figure sklearn could not
//! compute (zero division); ours must then be undefined, with a reason, not NaN.

use std::path::Path;

use allscan::eval::{binary_metrics, calibration::reliability_bins, multiclass_metrics, Estimate};
use serde_json::Value;

const TOL: f64 = 1e-9;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sklearn_metrics.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/sklearn_fixture.py", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn check(case: &str, name: &str, ours: &Estimate, theirs: &Value) {
    match theirs.as_f64() {
        Some(t) => {
            let v =
                ours.value.unwrap_or_else(|| panic!("{case}/{name}: undefined ({:?}), sklearn {t}", ours.undefined));
            assert!((v - t).abs() < TOL, "{case}/{name}: ours {v}, sklearn {t}");
        }
        None => {
            assert_eq!(ours.value, None, "{case}/{name}: sklearn has no value");
            assert!(ours.undefined.is_some(), "{case}/{name}: no reason given");
        }
    }
}

#[test]
fn binary_figures_match_sklearn() {
    let fx = fixture();
    let cases = fx["binary"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let y: Vec<bool> = c["y"].as_array().unwrap().iter().map(|v| v.as_i64() == Some(1)).collect();
        let p: Vec<f64> = c["p"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let r = binary_metrics(&y, &p, c["threshold"].as_f64().unwrap()).unwrap();
        let conf = &c["confusion"];
        assert_eq!(r.confusion_matrix.tp, conf["tp"].as_u64().unwrap(), "{name}/tp");
        assert_eq!(r.confusion_matrix.fp, conf["fp"].as_u64().unwrap(), "{name}/fp");
        assert_eq!(r.confusion_matrix.tn, conf["tn"].as_u64().unwrap(), "{name}/tn");
        assert_eq!(r.confusion_matrix.fn_, conf["fn"].as_u64().unwrap(), "{name}/fn");
        for (key, est) in r.figures() {
            // sklearn's balanced accuracy with one class averages only that class's recall;
            // the fixture stores null there, and so do we ("needs both ... images").
            check(name, key, est, &c[key]);
        }
        // Reliability bins: counts for all bins, sklearn's values for the non-empty ones.
        let bins = reliability_bins(&y, &p).unwrap();
        let rel = &c["reliability"];
        let counts: Vec<usize> = bins.iter().map(|b| b.n).collect();
        let theirs: Vec<usize> =
            rel["counts"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(counts, theirs, "{name}/reliability counts");
        let nonempty: Vec<_> = bins.iter().filter(|b| b.n > 0).collect();
        for (k, b) in nonempty.iter().enumerate() {
            let ft = rel["frac_leukemia"][k].as_f64().unwrap();
            let mp = rel["mean_p"][k].as_f64().unwrap();
            assert!((b.frac_leukemia.unwrap() - ft).abs() < TOL, "{name}/bin {k}");
            assert!((b.mean_p.unwrap() - mp).abs() < TOL, "{name}/bin {k}");
        }
    }
}

#[test]
fn multiclass_figures_match_sklearn() {
    let fx = fixture();
    for c in fx["multiclass"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let y: Vec<usize> = c["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let probs: Vec<Vec<f64>> = c["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        let k = probs[0].len();
        let names: Vec<String> = (0..k).map(|i| format!("class{i}")).collect();
        let r = multiclass_metrics(&y, &probs, &names).unwrap();
        check(name, "accuracy", &r.accuracy, &c["accuracy"]);
        check(name, "macro_f1", &r.macro_f1, &c["macro_f1"]);
        for (i, pc) in r.per_class.iter().enumerate() {
            check(name, &format!("precision[{i}]"), &pc.precision, &c["precision"][i]);
            check(name, &format!("recall[{i}]"), &pc.recall, &c["recall"][i]);
            check(name, &format!("f1[{i}]"), &pc.f1, &c["f1"][i]);
        }
        let theirs: Vec<Vec<u64>> = c["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect())
            .collect();
        assert_eq!(r.confusion_matrix, theirs, "{name}/confusion");
    }
}

#[test]
fn fixture_covers_the_hard_cases() {
    let fx = fixture();
    let names: Vec<&str> = fx["binary"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for needed in ["tied", "perfect", "imbalanced", "all_tied", "only_leukemia"] {
        assert!(names.contains(&needed), "fixture lacks {needed}");
    }
}
