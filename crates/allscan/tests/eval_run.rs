//! The evaluation driver on a random-weight bundle and a small synthetic set: a split made for
//! the data gives a same-dataset evaluation whose threshold is chosen on validation and stored;
//! without one the data is another dataset; labels that say nothing are refused.

use allscan::bundle::RunBundle;
use allscan::data::{DatasetIndex, IndexOptions, SplitConfig, SplitFile};
use allscan::eval::run::{check_compatibility, evaluate, EvalRequest};
use allscan::infer::testing::write_random_bundle;
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

    // Same dataset: the random bundle's threshold was never tuned, so eval tunes and stores it.
    let mut req = EvalRequest::new(&run, &data, dir.path().join("ev"));
    req.split = Some(split_path);
    req.n_boot = 50;
    req.gallery = 2;
    req.gradcam = false;
    let out = evaluate(&req).unwrap();
    assert!(!out.cross_dataset);
    let stored = out.stored_threshold.expect("threshold chosen on validation");
    assert_eq!(RunBundle::open(&run).unwrap().metadata.threshold, stored);
    assert_eq!(out.metrics.threshold, stored);
    assert_eq!(out.metrics.n, split.select(&index, allscan::data::Part::Test, None).len());
    let compat = check_compatibility(&RunBundle::open(&run).unwrap().metadata, &index, false).unwrap();
    assert_eq!(compat.subtype, out.metrics.subtype.is_some());
    assert!(out.report_path.is_file() && out.metrics_path.is_file());
    // Evaluated again: the stored threshold is kept.
    let again = evaluate(&req).unwrap();
    assert_eq!(again.stored_threshold, None);
    assert_eq!(again.metrics.threshold, stored);

    // Without a split that fits, the data is scored whole, as another dataset.
    let mut cross = EvalRequest::new(&run, &data, dir.path().join("ev2"));
    cross.n_boot = 20;
    cross.gradcam = false;
    let out = evaluate(&cross).unwrap();
    assert!(out.cross_dataset);
    assert_eq!(out.metrics.n, index.images.len());
    assert!(out.metrics.warnings.iter().any(|w| w.contains("cross-dataset")));
}
