//! `allscan eval` and `allscan cv` end to end: synthetic data -> a tiny trained run -> metrics.json
//! and report.html; cross-dataset evaluation on the C-NMC sample with a label map; bundles that
//! do not fit the data stop with a message that says why.

use crate::common;

use std::path::Path;

use common::{allscan, shared_data, stderr, stdout};

/// Training flags of the tiny runs (one epoch per stage, 32 px, no starting weights).
const TINY_TRAINING: &[&str] =
    &["--epochs", "1,1", "--input-size", "32", "--batch-size", "16", "--weights", "none", "--quiet"];

/// Writes a small synthetic set and trains a tiny run on it; returns (data, run).
fn tiny_run(dir: &Path, task: &str) -> (String, String) {
    let data = dir.join("syn");
    let run = dir.join(format!("run-{task}"));
    let (data_s, run_s) = (data.display().to_string(), run.display().to_string());
    let o = allscan(dir, &["demo-data", &data_s, "--n", "14", "--size", "96"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = allscan(dir, &[&["train", &data_s, "--out", &run_s, "--task", task][..], TINY_TRAINING].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    (data_s, run_s)
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Every `<img src=...>` of the report is an embedded, non-empty PNG.
fn assert_self_contained(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("src=\"file"));
    for src in html.split("<img ").skip(1).filter_map(|t| t.split("src=\"").nth(1)) {
        assert!(src.starts_with("data:image/png;base64,iVBOR"), "{}", &src[..src.len().min(60)]);
    }
    // Outside the base64 payloads (which may spell anything).
    let text: String = html
        .split("base64,")
        .enumerate()
        .map(|(i, t)| if i == 0 { t } else { t.split_once('"').map_or(t, |(_, rest)| rest) })
        .collect();
    assert!(!text.contains("NaN"), "a NaN in the report");
}

/// `eval`'s predictions.csv holds the rows `predict --format csv` gives for the same images
/// (one writer, one scoring path); `eval --adapt` re-scores them after re-estimating BatchNorm.
#[test]
fn eval_predictions_equal_predict_csv_for_the_same_images() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = tiny_run(dir.path(), "binary");
    let out = dir.path().join("ev");
    let o = allscan(
        dir.path(),
        &["eval", &run, &data, "--out", &out.display().to_string(), "--bootstrap", "20", "--no-gradcam"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap().to_string();
    let rows: Vec<&str> = lines.collect();
    let n = read_json(&out.join("metrics.json"))["n"].as_u64().unwrap() as usize;
    assert_eq!(rows.len(), n, "one row per evaluated image");
    let files: Vec<String> = rows.iter().map(|r| format!("{data}/{}", r.split(',').next().unwrap())).collect();
    let mut args = vec!["predict", run.as_str(), "--format", "csv"];
    args.extend(files.iter().map(String::as_str));
    let o = allscan(dir.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let predicted = stdout(&o);
    let mut p = predicted.lines();
    assert_eq!(p.next().unwrap(), header);
    for (e, q) in rows.iter().zip(p) {
        let (e, q) = (e.split_once(',').unwrap(), q.split_once(',').unwrap());
        assert!(q.0.ends_with(e.0), "{} vs {}", q.0, e.0);
        assert_eq!(e.1, q.1, "{}", e.0);
    }
    let adapted = dir.path().join("ev-adapt");
    let o = allscan(
        dir.path(),
        &["eval", &run, &data, "--out", &adapted.display().to_string(), "--bootstrap", "20", "--no-gradcam", "--adapt"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--adapt: BatchNorm statistics re-estimated"), "{}", stderr(&o));
    assert_ne!(std::fs::read_to_string(adapted.join("predictions.csv")).unwrap(), csv);
}

#[test]
fn eval_on_the_test_part_writes_metrics_and_a_self_contained_report() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = tiny_run(dir.path(), "binary");
    let out = dir.path().join("ev");
    let o = allscan(dir.path(), &["eval", &run, &data, "--out", &out.display().to_string(), "--bootstrap", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("colour-only shortcut") && text.contains("ROC-AUC"), "{text}");
    assert!(stderr(&o).contains("no patient ids"), "{}", stderr(&o));
    let m = read_json(&out.join("metrics.json"));
    assert!(m["n"].as_u64().unwrap() > 0);
    assert!(m["split"].as_str().unwrap().starts_with("test part of"));
    assert!(m["threshold"].is_f64());
    let acc = &m["binary"]["accuracy"];
    assert!(acc["value"].is_f64() && acc["ci95"].as_array().unwrap().len() == 2, "{acc}");
    assert!(m["shortcut"]["binary"]["roc_auc"].is_object());
    assert!(m["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("no patient ids")));
    assert!(m["threshold_choice"]["n_leukemia"].as_u64().is_some(), "threshold reported on validation");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_self_contained(&html);
    assert!(html.matches("<svg").count() >= 5, "curves, ROC, PR, confusion, reliability");
    assert!(html.contains("Training curves") || html.contains("Loss"));

    // A new target sensitivity re-chooses the threshold on validation for this evaluation:
    // printed and in metrics.json, while every file of the bundle stays byte for byte the same.
    let before = allscan::bundle::testing::snapshot(Path::new(&run)).unwrap();
    let o = allscan(
        dir.path(),
        &["eval", &run, &data, "--out", &out.display().to_string(), "--bootstrap", "20", "--target-sensitivity", "0.5"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m2 = read_json(&out.join("metrics.json"));
    assert!(m2["threshold_rule"].as_str().unwrap().contains(">= 0.5"), "{m2}");
    let t = m2["threshold"].as_f64().unwrap();
    assert!(stdout(&o).contains(&format!("threshold {t:.4} chosen on the validation part")), "{}", stdout(&o));
    assert!(
        allscan::bundle::testing::snapshot(Path::new(&run)).unwrap() == before,
        "eval changed a file of the run bundle"
    );
}

#[test]
fn bundles_that_do_not_fit_the_data_stop_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = tiny_run(dir.path(), "binary");
    // Class folders whose names say nothing.
    let odd = dir.path().join("odd");
    for (class, src) in [("cats", "Benign"), ("dogs", "Pro")] {
        std::fs::create_dir_all(odd.join(class)).unwrap();
        for e in std::fs::read_dir(Path::new(&data).join("Original").join(src)).unwrap().take(3) {
            let p = e.unwrap().path();
            std::fs::copy(&p, odd.join(class).join(p.file_name().unwrap())).unwrap();
        }
    }
    let odd_s = odd.display().to_string();
    let o = allscan(dir.path(), &["eval", &run, &odd_s, "--out", "x"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("cats, dogs") && err.contains("--map"), "{err}");
    assert_eq!(err.lines().count(), 1, "one error line: {err}");

    // A label that contradicts training.
    let o = allscan(dir.path(), &["eval", &run, &data, "--map", "Benign=leukemia", "--out", "x"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`Benign` is leukemia here but was healthy"), "{}", stderr(&o));

    // A split made for other data.
    let o = allscan(dir.path(), &["data", "split", &odd_s, "--map", "cats=healthy,dogs=leukemia", "--out", "odd.json"]);
    if o.status.success() {
        let o = allscan(dir.path(), &["eval", &run, &data, "--split", "odd.json", "--out", "x"]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("different dataset"), "{}", stderr(&o));
    }

    // aria-hsv preprocessing (made for Aria fields) on a dataset of another layout.
    let p = Path::new(&run).join("config.json");
    let mut v = read_json(&p);
    v["preprocess"]["mode"] = "aria-hsv".into();
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    // Hand-edited on purpose: drop the recorded hashes (it then loads as an older bundle).
    std::fs::remove_file(Path::new(&run).join("integrity.json")).unwrap();
    let mapped = ["eval", &run, &odd_s, "--map", "cats=healthy,dogs=leukemia", "--out", "y", "--bootstrap", "10"];
    let o = allscan(dir.path(), &mapped);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("aria-hsv") && err.contains("class folders"), "{err}");
    let mut forced = mapped.to_vec();
    forced.push("--allow-preprocess-mismatch");
    let o = allscan(dir.path(), &forced);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("cross-dataset"));
}

/// The C-NMC sample (another layout, patient ids) against a model trained on synthetic
/// Aria-layout data: per image and per patient.
#[test]
fn cross_dataset_on_the_cnmc_sample_with_a_label_map() {
    let cnmc = shared_data().join("cnmc-sample");
    assert!(cnmc.is_dir(), "this test needs {}", cnmc.display());
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = tiny_run(dir.path(), "subtype");
    let out = dir.path().join("ev-cnmc");
    let o = allscan(
        dir.path(),
        &[
            "eval",
            &run,
            &cnmc.display().to_string(),
            "--map",
            "all=leukemia,hem=healthy",
            "--out",
            &out.display().to_string(),
            "--bootstrap",
            "100",
            "--gallery",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = read_json(&out.join("metrics.json"));
    assert_eq!(m["n"], 60);
    assert!(m["split"].as_str().unwrap().contains("cross-dataset"));
    assert!(m.get("subtype").is_none(), "C-NMC has no subtypes");
    assert_eq!(m["binary"]["bootstrap"]["unit"], "patients");
    assert!(m["per_patient"]["n"].as_u64().unwrap() > 10);
    let w: Vec<&str> = m["warnings"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(w.iter().any(|w| w.contains("not the model's")), "{w:?}");
    assert!(!w.iter().any(|w| w.contains("have no patient id")), "{w:?}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_self_contained(&html);
    assert!(html.contains("Per patient"));
}

#[test]
fn cv_reports_mean_and_sd_over_folds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("syn").display().to_string();
    let o = allscan(dir.path(), &["demo-data", &data, "--n", "12", "--size", "96"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = allscan(dir.path(), &[&["cv", &data, "--folds", "2", "--out", "cv"][..], TINY_TRAINING].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("mean ± sd") && stdout(&o).contains("fold 1"), "{}", stdout(&o));
    let cv = read_json(&dir.path().join("cv/cv.json"));
    assert_eq!(cv["per_fold"].as_array().unwrap().len(), 2);
    assert!(cv["summary"]["roc_auc"]["n_folds"].as_u64().is_some());
    assert!(dir.path().join("cv/fold-1/run/model.bpk").is_file());
    let html = std::fs::read_to_string(dir.path().join("cv/report.html")).unwrap();
    assert!(html.contains("Mean ± sd over folds"));
}
