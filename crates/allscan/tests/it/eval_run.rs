//! The evaluation driver on a random-weight bundle and a small synthetic set: a split made for
//! the data gives a same-dataset evaluation whose threshold is chosen on validation and
//! reported, the bundle left byte for byte as it was; without one the data is another
//! dataset; labels that say nothing are refused.

use allscan::bundle::testing::snapshot;
use allscan::bundle::testing::{write_random_bundle, BundleFixture};
use allscan::bundle::RunBundle;
use allscan::data::{DatasetIndex, IndexOptions, SplitConfig, SplitFile};
use allscan::eval::run::{check_compatibility, evaluate, EvalRequest};
use allscan::synth::{generate, SynthConfig};
use allscan::train::TaskKind;

#[test]
fn same_dataset_and_cross_dataset_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_random_bundle(&run, TaskKind::Subtype).unwrap();
    let data = dir.path().join("syn");
    generate(&data, &SynthConfig { per_class: 8, seed: 3, size: 96 }).unwrap();
    let index = DatasetIndex::build(&data, &IndexOptions::default()).unwrap();
    let split = SplitFile::make(&index, &SplitConfig { test: 0.3, val: 0.3, folds: None, seed: 1 }).unwrap();
    let split_path = dir.path().join("split.json");
    split.save(&split_path).unwrap();

    // Same dataset: the random bundle's threshold was never tuned, so eval tunes one for
    // itself and reports it; the bundle is not touched.
    let before = snapshot(&run).unwrap();
    let mut req = EvalRequest::new(&run, &data, dir.path().join("ev"));
    req.split = Some(split_path);
    req.n_boot = 50;
    req.gallery = 2;
    req.gradcam = false;
    let out = evaluate(&req).unwrap();
    assert!(!out.cross_dataset);
    let chosen = out.chosen_threshold.expect("threshold chosen on validation");
    assert_eq!(out.metrics.threshold, chosen);
    assert!(out.metrics.threshold_rule.contains("chosen by `allscan eval`"), "{}", out.metrics.threshold_rule);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&out.metrics_path).unwrap()).unwrap();
    assert_eq!(written["threshold"].as_f64(), Some(chosen));
    assert_eq!(out.metrics.n, split.select(&index, allscan::data::Part::Test, None).len());
    let compat = check_compatibility(&RunBundle::open(&run).unwrap(), &index, false).unwrap();
    assert_eq!(compat.subtype, out.metrics.subtype.is_some());
    assert!(out.report_path.is_file() && out.metrics_path.is_file());
    // A new target sensitivity, too, is for this evaluation only.
    let lenient =
        evaluate(&EvalRequest { target_sensitivity: Some(0.5), out: dir.path().join("ev-05"), ..req.clone() }).unwrap();
    assert!(lenient.metrics.threshold_rule.contains(">= 0.5"), "{}", lenient.metrics.threshold_rule);
    assert!(snapshot(&run).unwrap() == before, "eval changed a file of the bundle");
    assert_eq!(RunBundle::open(&run).unwrap().metadata.threshold, 0.5);
    // Evaluated again: the same choice, made again.
    let again = evaluate(&req).unwrap();
    assert_eq!(again.chosen_threshold, Some(chosen));
    assert!(snapshot(&run).unwrap() == before, "eval changed a file of the bundle");

    // Without a split that fits, the data is scored whole, as another dataset.
    let mut cross = EvalRequest::new(&run, &data, dir.path().join("ev2"));
    cross.n_boot = 20;
    cross.gradcam = false;
    let out = evaluate(&cross).unwrap();
    assert!(out.cross_dataset);
    assert_eq!(out.metrics.n, index.images.len());
    assert!(out.metrics.warnings.iter().any(|w| w.contains("cross-dataset")));
}

/// Writes `n` fields per class into `healthy/` and `leukemia/`: the same random blobs on a
/// light background in both classes, the leukemia fields under a warmer, darker cast (a stain
/// or scanner batch that says nothing about the cells).
fn colour_cast_set(root: &std::path::Path, n: usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for (class, gain) in [("healthy", [0.92f32, 0.95, 1.0]), ("leukemia", [1.0, 0.86, 0.8])] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            let blobs: Vec<(f32, f32, f32)> = (0..rng.gen_range(2..9))
                .map(|_| (rng.gen_range(0.0..64.0), rng.gen_range(0.0..64.0), rng.gen_range(3.0..14.0)))
                .collect();
            let img = image::RgbImage::from_fn(64, 64, |x, y| {
                let inside = blobs.iter().any(|&(cx, cy, r)| (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < r * r);
                let base = if inside { [120.0, 70.0, 160.0] } else { [235.0, 225.0, 232.0] };
                image::Rgb(std::array::from_fn(|c| (base[c] * gain[c]).round() as u8))
            });
            img.save(dir.join(format!("{class}-{i:03}.png"))).unwrap();
        }
    }
}

#[test]
fn the_colour_shortcut_reads_the_stain_normalised_field_when_the_run_normalises_stain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cast");
    colour_cast_set(&data, 30);
    let index = DatasetIndex::build(&data, &IndexOptions::default()).unwrap();
    let split = SplitFile::make(&index, &SplitConfig { test: 0.3, val: 0.2, folds: None, seed: 1 }).unwrap();
    let split_path = dir.path().join("split.json");
    split.save(&split_path).unwrap();
    let shortcut_auc = |stain: serde_json::Value, name: &str| -> f64 {
        let run = dir.path().join(name);
        let mut bundle = BundleFixture::new(TaskKind::Binary);
        bundle.config.preprocess.stain = serde_json::from_value(stain).unwrap();
        bundle.write(&run).unwrap();
        let mut req = EvalRequest::new(&run, &data, dir.path().join(format!("ev-{name}")));
        req.split = Some(split_path.clone());
        req.n_boot = 20;
        req.gallery = 0;
        req.gradcam = false;
        let out = evaluate(&req).unwrap();
        let m = serde_json::to_value(&out.metrics).unwrap();
        m["shortcut"]["binary"]["roc_auc"]["value"].as_f64().unwrap()
    };
    // As read, the cast alone separates the classes.
    let raw = shortcut_auc(serde_json::Value::Null, "raw");
    assert!(raw > 0.95, "colour shortcut on the raw fields: AUC {raw}");
    // Reinhard normalisation maps every field to the same colour statistics: what is left of
    // the colour is the blobs, drawn alike in both classes.
    let target = serde_json::json!({
        "method": "reinhard",
        "target": { "mean": [-0.11175, -0.03407, -0.00335], "std": [0.1179, 0.04568, 0.00341] }
    });
    let normalised = shortcut_auc(target, "reinhard");
    assert!(normalised < 0.8, "colour shortcut on stain-normalised fields: AUC {normalised} (raw {raw})");
}

/// Writes `n` fields per class: the same light background with pink discs ("red cells") in
/// both classes, and one white cell whose size and darkness say the class (leukemia: a large
/// dark nucleus; healthy: a small paler one).
fn cell_only_set(root: &std::path::Path, n: usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for (class, radius, nucleus) in
        [("healthy", 9.0f32, [150.0f32, 90.0, 190.0]), ("leukemia", 17.0, [70.0, 25.0, 120.0])]
    {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            let (cx, cy): (f32, f32) = (rng.gen_range(40.0..56.0), rng.gen_range(40.0..56.0));
            let reds: Vec<(f32, f32)> = (0..rng.gen_range(6..12))
                .map(|_| (rng.gen_range(0.0..96.0), rng.gen_range(0.0..96.0)))
                .filter(|&(x, y)| (x - cx).hypot(y - cy) > radius + 12.0)
                .collect();
            let img = image::RgbImage::from_fn(96, 96, |x, y| {
                let (xf, yf) = (x as f32, y as f32);
                let c = if (xf - cx).hypot(yf - cy) < radius {
                    nucleus
                } else if (xf - cx).hypot(yf - cy) < radius + 3.0 {
                    [200.0, 190.0, 225.0]
                } else if reds.iter().any(|&(rx, ry)| (xf - rx).hypot(yf - ry) < 8.0) {
                    [225.0, 160.0, 170.0]
                } else {
                    [240.0, 235.0, 238.0]
                };
                image::Rgb(c.map(|v| (v + rng_noise(x, y, i)).clamp(0.0, 255.0) as u8))
            });
            img.save(dir.join(format!("{class}-{i:03}.png"))).unwrap();
        }
    }
}

fn rng_noise(x: u32, y: u32, i: usize) -> f32 {
    (((x * 31 + y * 17 + i as u32 * 7) % 11) as f32) - 5.0
}

#[test]
fn the_background_shortcut_reads_only_the_pixels_outside_the_white_cells() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cells");
    cell_only_set(&data, 30);
    let index = DatasetIndex::build(&data, &IndexOptions::default()).unwrap();
    let split = SplitFile::make(&index, &SplitConfig { test: 0.3, val: 0.2, folds: None, seed: 1 }).unwrap();
    let split_path = dir.path().join("split.json");
    split.save(&split_path).unwrap();
    let run = dir.path().join("run");
    write_random_bundle(&run, TaskKind::Binary).unwrap();
    let mut req = EvalRequest::new(&run, &data, dir.path().join("ev"));
    req.split = Some(split_path);
    req.n_boot = 20;
    req.gallery = 0;
    req.gradcam = false;
    let out = evaluate(&req).unwrap();
    let m = serde_json::to_value(&out.metrics).unwrap();
    let auc = |k: &str| m[k]["binary"]["roc_auc"]["value"].as_f64().unwrap();
    // The whole field's colours show the cell's size and darkness; the background does not.
    let (colour, background) = (auc("shortcut"), auc("background_shortcut"));
    assert!(colour > 0.9, "colour-only AUC {colour}");
    assert!(background < 0.8, "background-only AUC {background} (colour-only {colour})");
    assert!(out.table.contains("background-only shortcut"), "{}", out.table);
}
