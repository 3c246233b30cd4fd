//! `allscan train` end to end on tiny synthetic sets: both profiles write a complete bundle
//! that `RunBundle` reopens; `--resume` after `kill -9` ends with the same weights as an
//! uninterrupted run; bad inputs (unreadable files, empty class, split of another dataset,
//! resume with another config) behave as promised.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use allscan::bundle::RunBundle;
use allscan::synth::{generate, SynthConfig};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use common::{allscan, stderr, stdout};

/// A synthetic Aria-layout set (`per_class` fields of `size` px per class) in `dir/name`.
fn tiny_set(dir: &Path, name: &str, per_class: usize, size: u32) -> PathBuf {
    let root = dir.join(name);
    generate(&root, &SynthConfig { per_class, seed: 3, size }).expect("synthetic set");
    root
}

/// Fast settings: 32 px input, small batches.
const FAST: [&str; 4] = ["--input-size", "32", "--batch-size", "8"];

fn train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", data, "--out", out, "--quiet"];
    v.extend_from_slice(&FAST);
    v.extend_from_slice(extra);
    v
}

/// Logits of a bundle's model on a fixed random input (weights compared through behaviour).
fn fingerprint_outputs(run: &Path) -> Vec<f32> {
    let device = Device::flex();
    let bundle = RunBundle::open(run).expect("bundle opens");
    let model = bundle.load_trainable(&device).expect("weights load").valid();
    device.seed(11);
    let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Default, &device);
    model.forward(x).into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn cpu_profile_writes_a_complete_bundle_that_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_set(tmp.path(), "data", 10, 64);
    let out = tmp.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let sets = ["--set", "train.augment.hue=0", "--set", "model.backbone.block_config=[2,2]"];
    let mut extra = vec!["--task", "subtype", "--epochs", "1,2"];
    extra.extend_from_slice(&sets);
    let r = allscan(tmp.path(), &train_args(d, o, &extra));
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    for f in ["config.json", "metadata.json", "model.bpk", "metrics.csv", "train.log", "split.json"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let b = RunBundle::open(&out).unwrap();
    assert_eq!(b.config.train.augment.hue, 0.0, "--set reaches the config tree");
    assert_eq!(b.config.model.backbone.densenet().block_config, [2, 2]);
    assert_eq!(b.metadata.class_names, ["Benign", "Early", "Pre", "Pro"]);
    assert_eq!(b.metadata.leukemia_classes, ["Early", "Pre", "Pro"]);
    assert_eq!(b.preprocess().input_size, 32, "--input-size reaches the config tree");
    assert!((0.0..=1.0).contains(&b.metadata.threshold));
    assert!(b.metadata.split.is_some());
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 1 + 3, "{metrics}");
    assert!(metrics.lines().nth(1).unwrap().starts_with("1,1,"), "{metrics}");
    assert!(b.metadata.test_metrics.contains_key("test_subtype_accuracy"));
    let model = b.load_model(&Device::flex()).unwrap();
    let x = Tensor::<4>::zeros([1, 3, 32, 32], &Device::flex());
    assert_eq!(model.forward(x).dims(), [1, 4]);
}

#[test]
fn paper_profile_runs_both_stages_with_a_frozen_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_set(tmp.path(), "data", 6, 64);
    let out = tmp.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let r = allscan(
        tmp.path(),
        &train_args(d, o, &["--profile", "paper", "--weights", "none", "--epochs", "1,1", "--task", "binary"]),
    );
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    let b = RunBundle::open(&out).unwrap();
    assert_eq!(b.config.model.backbone.describe(), "densenet201");
    assert_eq!(b.config.train.stage2.unfreeze, ["denseblock4", "norm5"]);
    assert_eq!(b.metadata.class_names, ["healthy", "leukemia"]);
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    assert!(log.contains("cached backbone features"), "{log}");
    assert!(log.contains("stage 2 epoch  1/1"), "{log}");
}

#[test]
fn resume_after_kill_9_ends_with_the_same_weights() {
    resume_after_kill_9(&[]);
}

#[test]
fn resume_after_kill_9_ends_with_the_same_weights_and_weight_average() {
    resume_after_kill_9(&["--set", "train.ema_decay=0.9"]);
}

fn resume_after_kill_9(more: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_set(tmp.path(), "data", 12, 64);
    let (full, killed) = (tmp.path().join("full"), tmp.path().join("killed"));
    let d = data.to_str().unwrap();
    let mut extra = vec!["--task", "subtype", "--epochs", "1,6", "--seed", "5"];
    extra.extend_from_slice(more);
    let r = allscan(tmp.path(), &train_args(d, full.to_str().unwrap(), &extra));
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));

    // Start the same run, kill -9 it once it has checkpointed stage 2 epoch 2.
    let args = train_args(d, killed.to_str().unwrap(), &extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_allscan")).args(&args).current_dir(tmp.path()).spawn().unwrap();
    let state = killed.join("checkpoint/state.json");
    let t = Instant::now();
    let mut was_killed = false;
    while t.elapsed() < Duration::from_secs(300) {
        let progress = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| (v["stage"].as_u64().unwrap_or(0), v["epoch"].as_u64().unwrap_or(0)));
        if let Some((stage, epoch)) = progress {
            if stage == 2 && epoch >= 2 {
                child.kill().unwrap(); // SIGKILL
                was_killed = true;
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.wait().unwrap();
    assert!(was_killed && !status.success(), "the run finished before it could be killed");
    assert!(!killed.join("metadata.json").exists(), "a killed run must not look finished");

    let mut resume = args.clone();
    resume.push("--resume");
    let r = allscan(tmp.path(), &resume);
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    let log = std::fs::read_to_string(killed.join("train.log")).unwrap();
    assert!(log.contains("resuming after stage 2"), "{log}");
    assert_eq!(fingerprint_outputs(&full), fingerprint_outputs(&killed));
    let m = |p: &Path| std::fs::read_to_string(p.join("metrics.csv")).unwrap();
    let strip = |s: String| s.lines().map(|l| l.rsplitn(3, ',').nth(2).unwrap_or("").to_string()).collect::<Vec<_>>();
    assert_eq!(strip(m(&full)), strip(m(&killed)), "metrics other than timings must match");
    // With a weight average, the checkpoint carries it (and its update count) across the kill.
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(killed.join("checkpoint/state.json")).unwrap()).unwrap();
    let updates = st["average_updates"].as_u64().unwrap_or(0);
    assert_eq!(updates > 0, !more.is_empty(), "average updates {updates}");
}

#[test]
fn unreadable_files_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_set(tmp.path(), "data", 8, 64);
    std::fs::write(data.join("Original/Pre/broken.jpg"), b"not a jpeg").unwrap();
    let out = tmp.path().join("run");
    let r = allscan(tmp.path(), &train_args(data.to_str().unwrap(), out.to_str().unwrap(), &["--epochs", "0,1"]));
    assert!(r.status.success(), "{}{}", stdout(&r), stderr(&r));
    assert!(stderr(&r).contains("skipped 1 "), "{}", stderr(&r));
    assert!(std::fs::read_to_string(out.join("train.log")).unwrap().contains("broken.jpg"));
}

#[test]
fn bad_inputs_are_clear_errors_without_a_partial_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_set(tmp.path(), "data", 8, 64);
    let d = data.to_str().unwrap();

    // An empty class folder.
    std::fs::create_dir_all(data.join("Original/Mystery")).unwrap();
    let out = tmp.path().join("empty-class");
    let r = allscan(tmp.path(), &train_args(d, out.to_str().unwrap(), &["--epochs", "0,1"]));
    assert!(!r.status.success());
    assert!(stderr(&r).contains("Mystery") && stderr(&r).contains("no readable images"), "{}", stderr(&r));
    assert!(!out.exists(), "no run folder after a bad-input error");
    std::fs::remove_dir(data.join("Original/Mystery")).unwrap();

    // A split made for another dataset.
    let other = tiny_set(tmp.path(), "other", 9, 64);
    let split = tmp.path().join("other-split.json");
    let r = allscan(tmp.path(), &["data", "split", other.to_str().unwrap(), "--out", split.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    let out = tmp.path().join("mismatch");
    let r = allscan(
        tmp.path(),
        &train_args(d, out.to_str().unwrap(), &["--epochs", "0,1", "--split", split.to_str().unwrap()]),
    );
    assert!(!r.status.success());
    assert!(stderr(&r).contains("different dataset"), "{}", stderr(&r));
    assert!(!out.exists());

    // A --set key that is not in the config tree, one whose value does not fit, and one that
    // contradicts a typed flag (FAST's --input-size 32).
    for (set, want) in [
        ("train.augment.hue_shift=0", "hue_shift"),
        ("train.shards=0", "shards"),
        ("preprocess.input_size=48", "--input-size 32 and --set preprocess.input_size=48 both set"),
    ] {
        let out = tmp.path().join("bad-set");
        let r = allscan(tmp.path(), &train_args(d, out.to_str().unwrap(), &["--epochs", "0,1", "--set", set]));
        assert!(!r.status.success(), "--set {set} was accepted");
        assert!(stderr(&r).contains(want), "--set {set}: {}", stderr(&r));
        assert!(!out.exists(), "--set {set} left a run folder");
    }

    // --resume with another config leaves the run as it was.
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let r = allscan(tmp.path(), &train_args(d, o, &["--epochs", "0,1"]));
    assert!(r.status.success(), "{}", stderr(&r));
    let before = std::fs::read(out.join("model.bpk")).unwrap();
    let r = allscan(tmp.path(), &train_args(d, o, &["--epochs", "0,1", "--seed", "9", "--resume"]));
    assert!(!r.status.success());
    assert!(stderr(&r).contains("different config") && stderr(&r).contains("seed"), "{}", stderr(&r));
    assert_eq!(std::fs::read(out.join("model.bpk")).unwrap(), before);

    // A fresh run into a used folder.
    let r = allscan(tmp.path(), &train_args(d, o, &["--epochs", "0,1"]));
    assert!(!r.status.success());
    assert!(stderr(&r).contains("not empty"), "{}", stderr(&r));
}
