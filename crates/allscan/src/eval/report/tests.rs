use super::*;
use crate::eval::metrics::{bootstrap_binary, bootstrap_multiclass, threshold_for_sensitivity};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn scores(seed: u64, n: usize, sep: f64) -> (Vec<bool>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let y: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.6)).collect();
    let p = y
        .iter()
        .map(|&t| {
            let z: f64 = rng.gen_range(-1.0..1.0) + if t { sep } else { -sep };
            1.0 / (1.0 + (-3.0 * z).exp())
        })
        .collect();
    (y, p)
}

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        let d = ((x as i32 - 32).pow(2) + (y as i32 - 32).pow(2)) as f32;
        if d < 300.0 {
            image::Rgb([110, 50, 160u8.saturating_sub(seed)])
        } else {
            image::Rgb([235, 215, 220])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// A full report from synthetic inputs.
pub(crate) fn sample_input() -> ReportInput {
    let (yv, pv) = scores(1, 300, 0.8);
    let choice = threshold_for_sensitivity(&yv, &pv, 0.95).unwrap();
    let (y, p) = scores(2, 400, 0.8);
    let (_, ps) = scores(3, 400, 0.6);
    let patients: Vec<String> = (0..400).map(|i| format!("P{}", i / 4)).collect();
    let binary = bootstrap_binary(&y, &p, choice.threshold, Some(patients.as_slice()), 300, 5).unwrap();
    let shortcut = bootstrap_binary(&y, &ps, 0.5, Some(patients.as_slice()), 300, 5).unwrap();
    let names: Vec<String> =
        ["healthy", "B-ALL early", "B-ALL pre", "B-ALL pro"].iter().map(|s| s.to_string()).collect();
    let ysub: Vec<usize> = y.iter().enumerate().map(|(i, &t)| if t { 1 + i % 3 } else { 0 }).collect();
    let probs: Vec<Vec<f64>> = ysub
        .iter()
        .zip(&p)
        .enumerate()
        .map(|(i, (&c, &pl))| {
            let mut row = [(1.0 - pl), pl / 3.0, pl / 3.0, pl / 3.0];
            let bump = if i % 5 == 0 { (c + 1) % 4 } else { c };
            row[bump] += 0.4;
            let s: f64 = row.iter().sum();
            row.iter().map(|v| v / s).collect()
        })
        .collect();
    let subtype = bootstrap_multiclass(&ysub, &probs, &names, Some(patients.as_slice()), 200, 5).unwrap();
    let mut curves = Vec::new();
    for e in 1..=5 {
        curves.push(EpochRow {
            stage: "head".into(),
            epoch: e,
            train_loss: Some(0.7 / e as f64 + 0.2),
            val_loss: Some(0.75 / e as f64 + 0.25),
            val_metric: Some(0.7 + 0.03 * e as f64),
        });
    }
    for e in 1..=8 {
        curves.push(EpochRow {
            stage: "finetune".into(),
            epoch: e,
            train_loss: Some(0.3 / e as f64 + 0.05),
            val_loss: Some(0.3 / e as f64 + 0.12),
            val_metric: Some(0.86 + 0.01 * e as f64),
        });
    }
    let errs = most_confident_errors(&y, &p, choice.threshold, 6);
    let gallery = errs
        .iter()
        .enumerate()
        .map(|(k, &i)| GalleryItem {
            png_bytes: png(k as u8 * 20),
            overlay_png: (k % 2 == 0).then(|| png(100)),
            caption: format!(
                "#{i}: true {}, p(leukemia) = {:.3}, patient {}",
                if y[i] { "leukemia" } else { "healthy" },
                p[i],
                patients[i]
            ),
        })
        .collect();
    ReportInput {
        title: "allscan evaluation: synthetic <sample>".into(),
        dataset_summary: vec![
            ("dataset".into(), "synthetic smears".into()),
            ("images".into(), "1,000".into()),
            ("patients".into(), "250".into()),
        ],
        split_protocol: "Patient-level split 70/15/15 (seed 42), stratified by class; the \
                         threshold is chosen on validation, every figure is on test."
            .into(),
        model: ModelEvaluation {
            name: "DenseNet-201".into(),
            y_leukemia: y.clone(),
            p_leukemia: p,
            binary,
            subtype: Some(subtype),
        },
        shortcut: Some(ModelEvaluation {
            name: "colour-only shortcut".into(),
            y_leukemia: y,
            p_leukemia: ps,
            binary: shortcut,
            subtype: None,
        }),
        background: None,
        per_patient: None,
        curves,
        curve_metric: "accuracy".into(),
        threshold_choice: Some(choice),
        threshold_rule: "tuned for validation sensitivity >= 0.95".into(),
        gallery,
        warnings: vec!["2 test images are near-copies of training images (e.g. a.png ~ b.png)".into()],
    }
}

#[test]
fn report_is_self_contained_and_escaped() {
    let input = sample_input();
    let html = render_report(&input);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("synthetic &lt;sample&gt;"));
    assert!(!html.contains("<sample>"));
    assert!(html.contains("Research use only, not a diagnostic device"));
    assert!(html.contains("data:image/png;base64,"));
    assert_eq!(html.matches("<svg").count(), 6, "six plots");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    assert!(!html.contains("NaN"));
    assert!(html.contains("near-copies"));
}

#[test]
fn metrics_json_layout() {
    let input = sample_input();
    let file = MetricsFile::from_report(&input, "test part of split.json");
    let v: serde_json::Value = serde_json::to_value(&file).unwrap();
    assert_eq!(v["n"], 400);
    assert!(v["binary"]["accuracy"]["value"].is_f64());
    assert_eq!(v["binary"]["accuracy"]["ci95"].as_array().unwrap().len(), 2);
    assert!(v["subtype"]["macro_f1"]["ci95"].is_array());
    assert!(v["threshold"].is_f64());
    assert!(v["warnings"].is_array());
    assert!(v["shortcut"]["binary"]["roc_auc"]["value"].is_f64());
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), &input, "test").unwrap();
    let back: MetricsFile = serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json")).unwrap()).unwrap();
    // serde_json may round the last bit of a float on the way back.
    assert_eq!(back.binary.report.confusion_matrix, file.binary.report.confusion_matrix);
    let (a, b) = (back.binary.report.roc_auc, file.binary.report.roc_auc);
    assert!((a.value.unwrap() - b.value.unwrap()).abs() < 1e-12);
    assert!(dir.path().join("report.html").exists());
}

/// Healthy images only, no shortcut, no history, no errors: undefined figures say why,
/// curves that cannot exist are explained instead of drawn, and nothing is NaN.
#[test]
fn degenerate_report_renders() {
    let y = vec![false; 5];
    let p = vec![0.1, 0.2, 0.2, 0.3, 0.05];
    let binary = bootstrap_binary(&y, &p, 0.5, None, 100, 1).unwrap();
    let input = ReportInput {
        title: "one class".into(),
        dataset_summary: Vec::new(),
        split_protocol: "image-level split".into(),
        model: ModelEvaluation { name: "model".into(), y_leukemia: y, p_leukemia: p, binary, subtype: None },
        shortcut: None,
        background: None,
        per_patient: None,
        curves: Vec::new(),
        curve_metric: "accuracy".into(),
        threshold_choice: None,
        threshold_rule: "fixed 0.5".into(),
        gallery: Vec::new(),
        warnings: Vec::new(),
    };
    let html = render_report(&input);
    assert!(html.contains("undefined: no leukemia images"));
    assert!(html.contains("ROC curve undefined"));
    assert!(html.contains("No errors to show"));
    assert!(!html.contains("NaN"));
    let json = serde_json::to_string(&MetricsFile::from_report(&input, "test")).unwrap();
    assert!(json.contains(r#""sensitivity":{"value":null,"ci95":null,"undefined":"no leukemia images"}"#));
}

#[test]
fn confident_errors_are_ordered() {
    let y = [true, false, true, false];
    let p = [0.1, 0.95, 0.4, 0.6];
    assert_eq!(most_confident_errors(&y, &p, 0.5, 3), vec![1, 0, 2]);
}

#[test]
fn table_prints_both_columns() {
    let input = sample_input();
    let t = summary_table(&input.model.binary, input.shortcut.as_ref().map(|s| &s.binary), None);
    assert!(t.contains("colour-only shortcut") && t.contains("ROC-AUC"));
    assert_eq!(t.lines().count(), 13);
}

/// Writes target/report-sample/report.html for a look in a browser:
/// `cargo test -p allscan --lib eval::report -- --ignored`.
#[test]
#[ignore = "a tool: writes a sample report to look at, asserts nothing"]
fn write_sample_report() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/report-sample");
    write_report(&dir, &sample_input(), "synthetic").unwrap();
}
