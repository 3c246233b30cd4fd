//! The compiled inference path ([`densenet_burn::InferencePlan`]) against the Burn modules.
//!
//! Input: small random DenseNets with randomised BatchNorm statistics, several batch sizes and
//! odd spatial sizes (pooling edge cases: odd maps drop their last row/column in transitions).
//! Output: pass when the fast path's feature map and logits equal the plain eval forward's
//! within 1e-4 (relative to the largest value).

use burn::module::{Module, Param, RunningState};
use burn::nn::BatchNorm;
use burn::tensor::{Device, Distribution, Tensor};
use densenet_burn::{DenseNet, DenseNetConfig};

fn randomise(bn: &mut BatchNorm, device: &Device) {
    let [c] = bn.gamma.shape().dims::<1>();
    bn.gamma = Param::from_tensor(Tensor::random([c], Distribution::Uniform(0.5, 1.5), device));
    bn.beta = Param::from_tensor(Tensor::random([c], Distribution::Normal(0.0, 0.3), device));
    bn.running_mean = RunningState::new(Tensor::random([c], Distribution::Normal(0.0, 0.5), device));
    bn.running_var = RunningState::new(Tensor::random([c], Distribution::Uniform(0.5, 2.0), device));
}

/// A random eval-mode DenseNet whose BatchNorms are not the identity.
fn random_densenet(config: &DenseNetConfig, device: &Device) -> DenseNet {
    let mut model = DenseNet::new(config, device).unwrap().valid();
    let f = &mut model.features;
    randomise(&mut f.norm0, device);
    randomise(&mut f.norm5, device);
    for block in &mut f.denseblock {
        for layer in &mut block.denselayer {
            randomise(&mut layer.norm1, device);
            randomise(&mut layer.norm2, device);
        }
    }
    for t in &mut f.transition {
        randomise(&mut t.norm, device);
    }
    model
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// max |a - b| / max(1, max |b|).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

#[test]
fn fast_path_matches_the_modules_on_odd_sizes_and_batches() {
    let device = Device::flex();
    // growth 8, bn_size 4, 16 stem channels, 4 blocks: every kind of layer, small enough for CI.
    let config = DenseNetConfig::custom(8, vec![2, 3, 2, 2], 16, Some(5));
    let model = random_densenet(&config, &device);
    let folded = model.fold_batchnorm();
    assert!(folded.inference_plan.is_some());
    for (b, h, w) in [(1, 32, 32), (2, 67, 67), (3, 45, 51), (1, 64, 33)] {
        let x = Tensor::<4>::random([b, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
        let reference = model.forward_features(x.clone());
        let fast = folded.forward_features(x.clone());
        assert_eq!(fast.dims(), reference.dims(), "{b}x{h}x{w}");
        let d = rel_diff(&values(fast), &values(reference));
        println!("B={b} {h}x{w}: features max rel |Δ| {d:.2e}");
        assert!(d <= 1e-4, "features {b}x{h}x{w}: {d}");
        let d = rel_diff(&values(folded.forward(x.clone())), &values(model.forward(x)));
        assert!(d <= 1e-4, "logits {b}x{h}x{w}: {d}");
    }
}

#[test]
fn compiled_plan_equals_the_attached_one() {
    let device = Device::flex();
    let config = DenseNetConfig::custom(4, vec![1, 2], 8, None);
    let model = random_densenet(&config, &device);
    let x = Tensor::<4>::random([2, 3, 29, 31], Distribution::Normal(0.0, 1.0), &device);
    let plan = model.compile_inference();
    let folded = model.fold_batchnorm();
    let a = values(plan.forward_features(x.clone()));
    assert_eq!(a, values(folded.forward_features(x.clone())));
    // The folded model's own modules (no plan) agree too.
    let d = rel_diff(&a, &values(folded.forward_features_modules(x)));
    assert!(d <= 1e-4, "{d}");
}

#[test]
fn batch_split_into_row_tiles_matches_one_image_per_thread() {
    // Fewer images than threads run as one batch split into row tiles; as many run one image
    // per thread. Both must give the modules' values.
    let device = Device::flex();
    let config = DenseNetConfig::custom(4, vec![2, 2], 8, None);
    let model = random_densenet(&config, &device);
    let folded = model.fold_batchnorm();
    let x = Tensor::<4>::random([3, 3, 37, 35], Distribution::Normal(0.0, 1.0), &device);
    let reference = values(model.forward_features(x.clone()));
    for threads in [1, 2, 4] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let fast = pool.install(|| values(folded.forward_features(x.clone())));
        let d = rel_diff(&fast, &reference);
        assert!(d <= 1e-4, "{threads} threads: {d}");
    }
}
