//! bf16 convolution gemms ([`densenet_burn::bf16`]) in a training step and in the compiled
//! inference path, against the same network in fp32.
//!
//! Its own test binary: the precision is process-wide, and the fp32 parity tests elsewhere
//! must never see it switched on.
//! Output: pass when, on a CPU with AMX-BF16, the bf16 values differ from fp32 (the tile path
//! ran) and stay close: logits and inference features within 2e-2 relative L2; the gradients
//! within twice what rounding only the *input* to bf16 does to the fp32 gradients. (Train-mode
//! BatchNorm on a small batch at random init subtracts most of each gradient, so that input
//! rounding alone moves them by 5-25%: that is the scale to judge bf16 against.) On other CPUs:
//! asking for bf16 changes nothing at all.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use densenet_burn::bf16::{self, Precision};
use densenet_burn::{DenseNet, DenseNetConfig};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// `v` rounded to bf16 (nearest, ties to even) and back.
fn round_bf16(v: f32) -> f32 {
    let b = v.to_bits();
    f32::from_bits((b + 0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// ||a - b|| / ||b||.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Logits, input gradient and `conv0` weight gradient of one weighted-sum loss.
fn step(model: &DenseNet, x: &Tensor<4>, w: &Tensor<2>) -> [Vec<f32>; 3] {
    let x = x.clone().require_grad();
    let logits = model.forward(x.clone());
    let grads = logits.clone().mul(w.clone()).sum().backward();
    let dx = x.grad(&grads).expect("input gradient");
    let dw = model.features.conv0.weight.grad(&grads).expect("stem gradient");
    [values(logits), values(dx), values(dw)]
}

#[test]
fn bf16_training_step_and_inference_stay_within_bf16_rounding_of_fp32() {
    let device = Device::flex().autodiff();
    device.seed(3);
    // Every kind of layer the training path fuses: the 7x7 stride-2 stem, 1x1 and 3x3 convs.
    let config = DenseNetConfig::custom(16, vec![2, 3, 2], 32, Some(4));
    let model = DenseNet::new(&config, &device).unwrap();
    let x = Tensor::<4>::random([4, 3, 48, 48], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<2>::random([4, 4], Distribution::Normal(0.0, 1.0), &device);

    bf16::set_precision(Precision::Fp32);
    let fp32 = step(&model, &x, &w);
    let rounded: Vec<f32> = values(x.clone()).into_iter().map(round_bf16).collect();
    let rounded = Tensor::<4>::from_data(burn::tensor::TensorData::new(rounded, x.dims()), &device);
    let baseline = step(&model, &rounded, &w);
    let plan = model.valid().fold_batchnorm();
    let x_eval = x.clone().inner();
    let fp32_plan = values(plan.forward_features(x_eval.clone()));

    bf16::set_precision(Precision::Bf16);
    let half = step(&model, &x, &w);
    let half_plan = values(plan.forward_features(x_eval));
    bf16::set_precision(Precision::Fp32);

    let names = ["logits", "input gradient", "stem weight gradient"];
    for (i, name) in names.iter().enumerate() {
        let (e, scale) = (rel_l2(&half[i], &fp32[i]), rel_l2(&baseline[i], &fp32[i]));
        println!("{name}: relative L2 {e:.2e} (input rounded to bf16 alone: {scale:.2e})");
        if bf16::available() {
            assert!(e > 0.0, "{name}: bf16 asked for, but the values equal fp32's");
            let bound = if i == 0 { 2e-2 } else { 2.0 * scale + 1e-3 };
            assert!(e <= bound, "{name}: {e} > {bound}");
        } else {
            assert_eq!(half[i], fp32[i], "{name}: no AMX, so bf16 must fall back to fp32 exactly");
        }
    }
    let e = rel_l2(&half_plan, &fp32_plan);
    println!("inference plan features: relative L2 {e:.2e}");
    if bf16::available() {
        assert!(e > 0.0 && e <= 2e-2, "inference plan: {e}");
    } else {
        assert_eq!(half_plan, fp32_plan);
    }
}
