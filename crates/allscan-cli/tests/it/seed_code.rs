//! The `seed-code` profile end to end on a tiny synthetic set (the H, S, 0 input through
//! training, the bundle and prediction), and the command-line choices as clap value enums: a
//! wrong `--profile` is clap's error listing the values.

use crate::common;

use allscan::bundle::RunBundle;
use allscan::infer::Predictor;
use allscan::synth::{generate, SynthConfig};
use allscan_preprocess::{InputChannels, SegmentMode};
use burn::tensor::Device;
use common::{allscan, stderr, stdout};

#[test]
fn a_wrong_profile_is_refused_with_the_list_of_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let r = allscan(tmp.path(), &["train", "data", "--out", "run", "--profile", "seedcode"]);
    assert_eq!(r.status.code(), Some(2), "clap's usage error: {}", stderr(&r));
    let err = stderr(&r);
    assert!(err.contains("invalid value 'seedcode' for '--profile <PROFILE>'"), "{err}");
    assert!(err.contains("[possible values: cpu, paper, seed-code, cell]"), "{err}");
    assert!(!tmp.path().join("run").exists());
    // The same for the other choices.
    for (flag, bad, values) in [
        ("--task", "multi", "binary, subtype"),
        ("--device", "tpu", "cpu, cuda, wgpu"),
        ("--view", "crop", "field, nucleus, aria-hsv, cell"),
    ] {
        let r = allscan(tmp.path(), &["train", "data", "--out", "run", flag, bad]);
        assert_eq!(r.status.code(), Some(2), "{flag} {bad}: {}", stderr(&r));
        assert!(stderr(&r).contains(&format!("[possible values: {values}]")), "{flag}: {}", stderr(&r));
    }
    let r = allscan(tmp.path(), &["eval", "run", "data", "--part", "holdout"]);
    assert!(stderr(&r).contains("[possible values: test, val, train]"), "{}", stderr(&r));
    let r = allscan(tmp.path(), &["probe", "run", "data", "--part", "holdout"]);
    assert!(stderr(&r).contains("[possible values: test, val, train]"), "{}", stderr(&r));
    let r = allscan(tmp.path(), &["probe", "run", "data", "--class", "blasts"]);
    assert!(stderr(&r).contains("[possible values: healthy, leukemia, all]"), "{}", stderr(&r));
    // --help lists the values with their meaning.
    let r = allscan(tmp.path(), &["train", "--help"]);
    let help = stdout(&r);
    assert!(help.contains("seed-code") && help.contains("H, S and a zero channel"), "{help}");
}

#[test]
fn seed_code_profile_trains_on_hs0_views_and_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    generate(&data, &SynthConfig { per_class: 6, seed: 3, size: 64 }).expect("synthetic set");
    let out = tmp.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    // No download here: random weights; 32 px, one epoch of the head, batch 8.
    let args = [
        "train",
        d,
        "--out",
        o,
        "--quiet",
        "--profile",
        "seed-code",
        "--weights",
        "none",
        "--epochs",
        "1,0",
        "--input-size",
        "32",
        "--batch-size",
        "8",
    ];
    let r = allscan(tmp.path(), &args);
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    let b = RunBundle::open(&out).unwrap();
    // The profile's choices reached the bundle: subtype task without --task, H, S, 0 input.
    assert_eq!(b.config.profile.name(), "seed-code");
    assert_eq!(b.metadata.class_names, ["Benign", "Early", "Pre", "Pro"]);
    assert_eq!(b.config.preprocess.channels, InputChannels::Hs0);
    assert_eq!(b.config.preprocess.mode, SegmentMode::Field);
    assert_eq!((b.config.model.hidden, b.config.model.dropout), (128, 0.5));
    assert_eq!(b.config.model.backbone.describe(), "densenet201");
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    assert!(log.contains("augmented views (no feature cache)"), "{log}");
    assert!(!log.contains("stage 2"), "no fine-tuning: {log}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 1, "{metrics}");

    // Inference rebuilds the same input: the views are H, S, 0 and the model gives 4 classes.
    let predictor = Predictor::from_bundle(&b, &Device::flex()).unwrap();
    let field = allscan_preprocess::decode_file(&first_image(&data.join("Original/Pro")), &Default::default()).unwrap();
    let views = predictor.views(&field).unwrap();
    assert_eq!(views.images.len(), 1);
    assert_eq!(views.images[0], allscan_preprocess::resize_field(&allscan_preprocess::hs0_image(&field), 32));
    let probs = predictor.view_probabilities(&[&views.images[0]]).unwrap();
    assert_eq!(probs[0].len(), 4);
    assert!((probs[0].iter().sum::<f32>() - 1.0).abs() < 1e-4, "softmax: {probs:?}");
    let r = allscan(tmp.path(), &["predict", o, d, "--format", "csv"]);
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    assert_eq!(stdout(&r).lines().count(), 1 + 24, "{}", stdout(&r));
}

fn first_image(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files.into_iter().next().expect("an image")
}
