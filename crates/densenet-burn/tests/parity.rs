//! Parity with torchvision (arXiv:1608.06993): loads the fixture written by
//! `scripts/densenet_parity.py` and compares eval-mode logits and feature maps.
//!
//! Input: `tests/fixtures/tiny*` (or `$DENSENET_PARITY_DIR/$DENSENET_PARITY_NAME*` for the full
//! DenseNet201 check). Output: pass when max |Δ| <= 1e-4, for the plain and the BN-folded model
//! (its compiled inference path and its Burn modules).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use densenet_burn::weights::load_torchvision;
use densenet_burn::{DenseNet, DenseNetConfig, DenseNetError};

struct Fixture {
    dir: PathBuf,
    name: String,
    config: DenseNetConfig,
    input: Tensor<4>,
    logits: Vec<f32>,
    features: Vec<f32>,
    features_shape: Vec<usize>,
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn shape(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect()).unwrap_or_default()
}

fn fixture(dir: PathBuf, name: &str, device: &Device) -> Fixture {
    let meta_path = dir.join(format!("{name}.json"));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    let config: DenseNetConfig = serde_json::from_value(meta["config"].clone()).unwrap();
    let input_shape = shape(&meta["input_shape"]);
    let input = read_f32(&dir.join(format!("{name}_input.f32")));
    let input = Tensor::<4>::from_data(TensorData::new(input, input_shape), device);
    Fixture {
        name: name.to_string(),
        config,
        input,
        logits: read_f32(&dir.join(format!("{name}_logits.f32"))),
        features: read_f32(&dir.join(format!("{name}_features.f32"))),
        features_shape: shape(&meta["features_shape"]),
        dir,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Returns (logits Δ, features Δ) for the plain and the folded model (which runs the compiled
/// inference path), and the features Δ of the folded model's Burn modules.
fn check(f: &Fixture, model: &DenseNet) -> [f32; 5] {
    let feats = model.forward_features(f.input.clone());
    assert_eq!(feats.dims().to_vec(), f.features_shape);
    let d_feat = max_abs_diff(&values(feats), &f.features);
    let d_logit = max_abs_diff(&values(model.forward(f.input.clone())), &f.logits);
    let folded = model.fold_batchnorm();
    let d_feat_f = max_abs_diff(&values(folded.forward_features(f.input.clone())), &f.features);
    let d_logit_f = max_abs_diff(&values(folded.forward(f.input.clone())), &f.logits);
    assert!(folded.inference_plan.is_some());
    let d_feat_m = max_abs_diff(&values(folded.forward_features_modules(f.input.clone())), &f.features);
    [d_logit, d_feat, d_logit_f, d_feat_f, d_feat_m]
}

fn run(dir: PathBuf, name: &str, file: &str) {
    let device = Device::flex();
    let f = fixture(dir, name, &device);
    let (model, report) = load_torchvision(&f.config, &f.dir.join(file), &device).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert!(report.ignored.iter().all(|k| k.ends_with("num_batches_tracked")));
    let d = check(&f, &model);
    println!(
        "{} ({file}): max |Δ| logits {:.3e}, features {:.3e}; BN-folded fast path: logits {:.3e}, \
         features {:.3e}; BN-folded modules: features {:.3e}",
        f.name, d[0], d[1], d[2], d[3], d[4]
    );
    for x in d {
        assert!(x <= 1e-4, "max |Δ| {x} > 1e-4");
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn tiny_densenet_matches_torchvision() {
    run(fixtures_dir(), "tiny", "tiny.pth");
}

#[test]
fn tiny_densenet_legacy_file_matches_torchvision() {
    // The 2017 torchvision files use the pickle format and `norm.1`-style names.
    run(fixtures_dir(), "tiny", "tiny_legacy.pth");
}

#[test]
fn batch_items_are_independent_in_eval_mode() {
    let device = Device::flex();
    let f = fixture(fixtures_dir(), "tiny", &device);
    let (model, _) = load_torchvision(&f.config, &f.dir.join("tiny.pth"), &device).unwrap();
    let both = values(model.forward(f.input.clone()));
    let first = values(model.forward(f.input.clone().narrow(0, 0, 1)));
    assert!(max_abs_diff(&both[..first.len()], &first) <= 1e-5);
}

#[test]
fn partial_forwards_compose_to_the_full_one() {
    let device = Device::flex();
    let f = fixture(fixtures_dir(), "tiny", &device);
    let (model, _) = load_torchvision(&f.config, &f.dir.join("tiny.pth"), &device).unwrap();
    let full = values(model.forward_features(f.input.clone()));
    for b in 0..=model.num_blocks() {
        let mid = model.forward_until(f.input.clone(), b);
        let out = values(model.forward_from(b, mid));
        assert!(max_abs_diff(&out, &full) <= 1e-5, "split at block {b}");
    }
}

#[test]
fn features_only_model_ignores_the_classifier_only() {
    let device = Device::flex();
    let f = fixture(fixtures_dir(), "tiny", &device);
    let config = f.config.clone().features_only();
    let (model, report) = load_torchvision(&config, &f.dir.join("tiny.pth"), &device).unwrap();
    assert!(report.ignored.contains(&"classifier.weight".to_string()));
    assert!(report.unused.is_empty());
    let d = max_abs_diff(&values(model.forward_features(f.input.clone())), &f.features);
    assert!(d <= 1e-4);
}

#[test]
fn wrong_architecture_lists_keys_and_shapes() {
    let device = Device::flex();
    let f = fixture(fixtures_dir(), "tiny", &device);
    let mut config = f.config.clone();
    config.block_config = vec![2, 2, 3, 2];
    let err = load_torchvision(&config, &f.dir.join("tiny.pth"), &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DenseNetError::Incompatible { .. }), "{msg}");
    assert!(msg.contains("features.denseblock3.denselayer3"), "{msg}");
    assert!(msg.contains("expected"), "{msg}");
    assert!(msg.contains("dense blocks 2/2/2/2"), "{msg}");
}

/// Full-size check: `scripts/densenet_parity.py densenet201 target/parity-densenet201`, then
/// `DENSENET_PARITY_DIR=target/parity-densenet201 DENSENET_PARITY_NAME=densenet201
///  cargo test --release -p densenet-burn --test parity -- --ignored --nocapture`.
#[test]
#[ignore = "needs the full fixture written by scripts/densenet_parity.py"]
fn full_densenet_matches_torchvision() {
    let dir = std::env::var("DENSENET_PARITY_DIR").map(PathBuf::from).unwrap();
    let name = std::env::var("DENSENET_PARITY_NAME").unwrap_or_else(|_| "densenet201".into());
    run(dir.clone(), &name, &format!("{name}.pth"));
    run(dir, &name, &format!("{name}_legacy.pth"));
}

#[test]
fn nested_training_checkpoint_is_read() {
    run(fixtures_dir(), "tiny", "tiny_checkpoint.pth");
}
