//! Training-mode `relu(batch_norm(x))` as one autodiff operation on the Flex CPU backend.
//!
//! Burn computes a training BatchNorm out of generic tensor operations: the statistics through
//! a `[B, C, H, W] -> [C, B*H*W]` transposing copy (twice forward, twice backward), then about
//! ten elementwise passes, plus the ReLU and its backward. In a DenseNet every layer normalises
//! the whole concatenated input, so those passes are a large part of a training step. Here the
//! forward is two reading passes and one writing pass per channel, the backward one reading and
//! one writing pass, with the ReLU mask recomputed from the saved input instead of stored.
//!
//! Used through Burn's backend-extension API (`Tensor::try_into_primitive`), so it applies only
//! to `Autodiff<Flex>` tensors without gradient checkpointing; anything else (GPU backends, a
//! checkpointing device) falls back to Burn's `BatchNorm::forward` + `relu`, the same values.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::BatchNorm;
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// The autodiff backend `Device::flex().autodiff()` runs on.
pub(crate) type Ad = Autodiff<Flex, NoCheckpointing>;

/// `t` itself when its f32 values are one contiguous run, else a contiguous copy.
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// `n` values written in parallel, `chunk` at a time, by `fill(chunk index, chunk)`, into a
/// buffer that is never zeroed first: the training kernels' outputs are each overwritten in
/// full, and clearing them first was a tenth of a cpu-profile step (`memset` on reused heap
/// memory).
///
/// # Safety
/// `fill` must write every element of the chunk it is given (`n` need not be a multiple of
/// `chunk`: the last chunk is shorter).
pub(crate) unsafe fn par_filled(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(n);
    out.spare_capacity_mut()[..n].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, dst)| fill(i, dst));
    // SAFETY: the caller's `fill` initialised all `n` elements.
    unsafe { out.set_len(n) };
    out
}

/// The f32 values of a tensor that [`contiguous`] returned.
pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// `relu(bn(x))` with batch statistics, updating `bn`'s running mean and variance exactly as
/// Burn's `BatchNorm::forward` does in training (biased variance, `momentum`).
///
/// `[B, C, H, W] -> [B, C, H, W]`. Call only when `x` is on an autodiff device and `bn` is in
/// training mode.
pub(crate) fn bn_relu_train(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let Some((output, mean, variance)) = fused(bn, x.clone()) else {
        return relu(bn.forward(x));
    };
    let c = mean.len();
    let mean = Tensor::<1>::from_data(TensorData::new(mean, [c]), &device);
    let variance = Tensor::<1>::from_data(TensorData::new(variance, [c]), &device);
    let m = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(running_mean.mul_scalar(1.0 - m).add(mean.mul_scalar(m)).detach());
    bn.running_var.update(running_var.mul_scalar(1.0 - m).add(variance.mul_scalar(m)).detach());
    output
}

/// The fused operation, or `None` when the tensors are not `Autodiff<Flex>` f32 ones.
fn fused(bn: &BatchNorm, x: Tensor<4>) -> Option<(Tensor<4>, Vec<f32>, Vec<f32>)> {
    let x = x.try_into_primitive::<Ad>().ok()?;
    let gamma = bn.gamma.val().try_into_primitive::<Ad>().ok()?;
    let beta = bn.beta.val().try_into_primitive::<Ad>().ok()?;
    if x.primitive().dtype() != burn::tensor::DType::F32 || gamma.primitive().dtype() != burn::tensor::DType::F32 {
        return None;
    }
    let eps = bn.epsilon as f32;
    let guards = [x.node(), gamma.node(), beta.node()];
    let (xp, gp, bp) =
        (contiguous(x.into_primitive()), contiguous(gamma.into_primitive()), contiguous(beta.into_primitive()));
    let forward = forward_kernel(&xp, slice(&gp), slice(&bp), eps);
    let output = match BnReluOps.prepare::<NoCheckpointing>(guards).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let state =
                BnReluState { x: xp, gamma: gp, beta: bp, mean: forward.mean.clone(), inv_std: forward.inv_std };
            prep.finish(state, forward.output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward.output),
    };
    Some((Tensor::from_primitive::<Ad>(output), forward.mean, forward.variance))
}

/// `(batch, channels, spatial)` of an `[B, C, ...]` tensor.
fn dims(t: &FlexTensor) -> (usize, usize, usize) {
    let shape = t.layout().shape();
    let (b, c) = (shape[0], shape[1]);
    (b, c, shape.num_elements() / (b * c).max(1))
}

fn flex_f32(values: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, like.layout().shape().clone()))
}

struct Forward {
    output: FlexTensor,
    mean: Vec<f32>,
    variance: Vec<f32>,
    inv_std: Vec<f32>,
}

/// Per-channel mean and biased variance (two passes, f64 sums), then
/// `y = max(0, (x - mean) * gamma / sqrt(var + eps) + beta)`.
fn forward_kernel(x: &FlexTensor, gamma: &[f32], beta: &[f32], eps: f32) -> Forward {
    let (b, c, hw) = dims(x);
    let xs = slice(x);
    let count = (b * hw) as f64;
    let stats: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(move |n| &xs[(n * c + ch) * hw..(n * c + ch + 1) * hw]);
            let mean = planes().map(|p| sum(p, |v| v)).sum::<f64>() / count;
            let m = mean as f32;
            let var = planes().map(|p| sum(p, |v| (v - m) * (v - m))).sum::<f64>() / count;
            (mean as f32, var as f32)
        })
        .collect();
    let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
    let variance: Vec<f32> = stats.iter().map(|s| s.1).collect();
    let inv_std: Vec<f32> = variance.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * inv_std[ch]).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
    // SAFETY: chunk `p` of the output and plane `p` of the input have the same length, and
    // every element of the chunk is written.
    let out = unsafe {
        par_filled(xs.len(), hw, |p, dst| {
            let (a, s) = (scale[p % c], shift[p % c]);
            for (d, &v) in dst.iter_mut().zip(&xs[p * hw..(p + 1) * hw]) {
                d.write((v * a + s).max(0.0));
            }
        })
    };
    Forward { output: flex_f32(out, x), mean, variance, inv_std }
}

/// `sum_i f(p_i)` in f32 lanes of 8, added up in f64.
fn sum(p: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let chunks = p.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let tail: f32 = rest.iter().map(|&v| f(v)).sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
}

#[derive(Debug)]
struct BnReluOps;

#[derive(Clone, Debug)]
struct BnReluState {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl Backward<Flex, 3> for BnReluOps {
    type State = BnReluState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let (dx, dgamma, dbeta) =
            backward_kernel(&s.x, slice(&s.gamma), slice(&s.beta), &s.mean, &s.inv_std, slice(&grad));
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex_f32(dx, &s.x));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex_f32(dgamma, &s.gamma));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex_f32(dbeta, &s.beta));
        }
    }
}

/// With `xh = (x - mean) * inv_std` and `g = dy * [gamma * xh + beta > 0]` (the ReLU's mask):
/// `dbeta = sum g`, `dgamma = sum g * xh`,
/// `dx = gamma * inv_std * (g - dbeta / M - xh * dgamma / M)` over the `M = B*H*W` values of
/// each channel.
fn backward_kernel(
    x: &FlexTensor,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (b, c, hw) = dims(x);
    let xs = slice(x);
    let count = (b * hw) as f32;
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (m, is, ga, be) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
            let (mut sg, mut sgx) = (0f64, 0f64);
            for n in 0..b {
                let range = (n * c + ch) * hw..(n * c + ch + 1) * hw;
                let (xp, gp) = (&xs[range.clone()], &dy[range]);
                let (a, ax) = masked_sums(xp, gp, [m, is, ga, be]);
                sg += a;
                sgx += ax;
            }
            (sg as f32, sgx as f32)
        })
        .collect();
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s.1).collect();
    // SAFETY: chunk `p` of dx and plane `p` of x and dy have the same length, and every
    // element of the chunk is written.
    let dx = unsafe {
        par_filled(xs.len(), hw, |p, dst| {
            let ch = p % c;
            let (m, is, ga, be) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
            let k = ga * is;
            let (mb, mg) = (dbeta[ch] / count, dgamma[ch] / count);
            let (xp, gp) = (&xs[p * hw..(p + 1) * hw], &dy[p * hw..(p + 1) * hw]);
            for ((d, &v), &g) in dst.iter_mut().zip(xp).zip(gp) {
                let xh = (v - m) * is;
                let g = if ga * xh + be > 0.0 { g } else { 0.0 };
                d.write(k * (g - mb - xh * mg));
            }
        })
    };
    (dx, dgamma, dbeta)
}

/// `(sum g, sum g * xh)` over one plane, `g` the ReLU-masked gradient (see
/// [`backward_kernel`]), with AVX2 where the CPU has it: the build targets baseline x86-64,
/// whose 4-lane SSE2 (and an `i % 8` lane index that did not vectorise) made this loop a
/// tenth of a DenseNet201 step (2.13 -> 2.03 s with both changes; AVX2 alone for the
/// memory-bound `dx` pass gained nothing). The same operations in the same
/// order either way (Rust never fuses a multiply and an add), so results do not depend on the
/// CPU.
fn masked_sums(xp: &[f32], gp: &[f32], coef: [f32; 4]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { masked_sums_avx2(xp, gp, coef) };
    }
    masked_sums_lanes(xp, gp, coef)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn masked_sums_avx2(xp: &[f32], gp: &[f32], coef: [f32; 4]) -> (f64, f64) {
    masked_sums_lanes(xp, gp, coef)
}

/// [`masked_sums`] in 16 fixed lanes, added up in f64.
#[inline(always)]
fn masked_sums_lanes(xp: &[f32], gp: &[f32], [m, is, ga, be]: [f32; 4]) -> (f64, f64) {
    let (mut a, mut ax) = ([0f32; 16], [0f32; 16]);
    let (xc, gc) = (xp.chunks_exact(16), gp.chunks_exact(16));
    let (xr, gr) = (xc.remainder(), gc.remainder());
    for (xv, gv) in xc.zip(gc) {
        let (xv, gv): (&[f32; 16], &[f32; 16]) = (xv.try_into().unwrap(), gv.try_into().unwrap());
        for j in 0..16 {
            let xh = (xv[j] - m) * is;
            let g = if ga * xh + be > 0.0 { gv[j] } else { 0.0 };
            a[j] += g;
            ax[j] += g * xh;
        }
    }
    for (j, (&v, &g)) in xr.iter().zip(gr).enumerate() {
        let xh = (v - m) * is;
        let g = if ga * xh + be > 0.0 { g } else { 0.0 };
        a[j] += g;
        ax[j] += g * xh;
    }
    (a.iter().map(|&v| v as f64).sum(), ax.iter().map(|&v| v as f64).sum())
}

/// Asserts that `a`'s gradient in `ga` equals `b`'s in `gb` within `tol` (the fused operations'
/// tests compare them with Burn's own).
#[cfg(test)]
pub(crate) fn assert_same_grad<const D: usize>(
    (a, ga): (&Tensor<D>, &burn::tensor::Gradients),
    (b, gb): (&Tensor<D>, &burn::tensor::Gradients),
    tol: f32,
) {
    let grad = |t: &Tensor<D>, g| t.grad(g).expect("a gradient").to_data();
    grad(a, ga).assert_approx_eq::<f32>(&grad(b, gb), burn::tensor::Tolerance::absolute(tol));
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Device;
    use burn::tensor::{Distribution, Tolerance};

    /// The fused op gives Burn's `relu(BatchNorm::forward(x))` values, input/gamma/beta
    /// gradients and running statistics, on an input with a non-zero mean, channels where the
    /// ReLU cuts, and a non-contiguous (permuted) input.
    #[test]
    fn fused_bn_relu_matches_burn() {
        let device = Device::flex().autodiff();
        let gamma = [1.0, -0.5, 2.0, 0.3, 1.5];
        let beta = [0.1, 0.4, -1.0, 0.0, 2.0];
        let make = || {
            let mut bn = BatchNormConfig::new(5).init(&device);
            bn.gamma = Param::from_tensor(Tensor::<1>::from_floats(gamma, &device));
            bn.beta = Param::from_tensor(Tensor::<1>::from_floats(beta, &device));
            bn
        };
        let (reference, fused_bn) = (make(), make());
        let data = Tensor::<4>::random([6, 3, 4, 5], Distribution::Normal(0.7, 2.0), &device).into_data();
        // Channels second after the permutation: a strided view, as the op must accept.
        let view = |leaf: &Tensor<4>| leaf.clone().permute([1, 0, 2, 3]).narrow(1, 0, 5);
        let weights = Tensor::<4>::random([3, 5, 4, 5], Distribution::Normal(0.0, 1.0), &device);

        let xa = Tensor::<4>::from_data(data.clone(), &device).require_grad();
        let xb = Tensor::<4>::from_data(data, &device).require_grad();
        let ya = relu(reference.forward(view(&xa)));
        let yb = bn_relu_train(&fused_bn, view(&xb));
        assert!(fused(&make(), view(&xb)).is_some(), "the fused path must be the one tested");
        ya.to_data().assert_approx_eq::<f32>(&yb.to_data(), Tolerance::absolute(1e-5));
        let ga = ya.mul(weights.clone()).sum().backward();
        let gb = yb.mul(weights).sum().backward();
        assert_same_grad((&xa, &ga), (&xb, &gb), 1e-4);
        let (pa, pb) = (reference.gamma.val(), fused_bn.gamma.val());
        assert_same_grad((&pa, &ga), (&pb, &gb), 1e-3);
        let (pa, pb) = (reference.beta.val(), fused_bn.beta.val());
        assert_same_grad((&pa, &ga), (&pb, &gb), 1e-3);
        for (a, b) in
            [(&reference.running_mean, &fused_bn.running_mean), (&reference.running_var, &fused_bn.running_var)]
        {
            a.value().to_data().assert_approx_eq::<f32>(&b.value().to_data(), Tolerance::absolute(1e-5));
        }
    }
}
