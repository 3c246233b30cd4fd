//! Training-mode max pooling (the stem's 3x3 stride-2 pool) as one autodiff operation on the
//! Flex CPU backend, in NCHW.
//!
//! Flex pools through its generic 3-D path with 64-bit indices and scatters the gradient back
//! through them. Here each plane is pooled in one pass that keeps, per output, the 32-bit
//! position of its maximum within the plane; the backward adds each output's gradient at that
//! position. Planes run in parallel on rayon's pool; within a plane the order of the additions
//! is fixed, so the result does not depend on scheduling.
//!
//! Like [`crate::bn`], it applies only to `Autodiff<Flex>` f32 tensors without gradient
//! checkpointing; anything else falls back to `MaxPool2d::forward`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::pool::MaxPool2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

use crate::bn::{contiguous, slice, Ad};

/// `pool.forward(x)` for a square, undilated, floor-mode pool with symmetric explicit padding
/// smaller than its kernel, through the fused operation on `Autodiff<Flex>`; every other case
/// goes to `MaxPool2d::forward`. `[B, C, H, W] -> [B, C, H', W']`.
pub(crate) fn max_pool_train(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    window(pool).and_then(|w| fused(w, x.clone())).unwrap_or_else(|| pool.forward(x))
}

/// A pool's square window: side `k`, `stride`, padding `pad`; input plane `h` x `w`.
#[derive(Clone, Copy, Debug)]
struct Window {
    k: usize,
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
}

impl Window {
    fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
}

fn window(pool: &MaxPool2d) -> Option<Window> {
    let pad = match &pool.padding {
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => *t,
        PaddingConfig2d::Valid => 0,
        _ => return None,
    };
    let [k, kw] = pool.kernel_size;
    let [s, sw] = pool.stride;
    let plain = k == kw && s == sw && s >= 1 && pool.dilation == [1, 1] && !pool.ceil_mode;
    // Padding below the kernel side keeps every window's maximum a real input value.
    (plain && pad < k).then_some(Window { k, stride: s, pad, h: 0, w: 0 })
}

fn fused(window: Window, x: Tensor<4>) -> Option<Tensor<4>> {
    let x = x.try_into_primitive::<Ad>().ok()?;
    if x.primitive().dtype() != DType::F32 {
        return None;
    }
    let guards = [x.node()];
    let xp = contiguous(x.into_primitive());
    let shape = xp.layout().shape().clone();
    let win = Window { h: shape[2], w: shape[3], ..window };
    if win.h + 2 * win.pad < win.k || win.w + 2 * win.pad < win.k || win.h * win.w > u32::MAX as usize {
        return None;
    }
    let (values, argmax) = forward_kernel(slice(&xp), win);
    let out_shape = [shape[0], shape[1], win.out_h(), win.out_w()];
    let output = FlexTensor::from_data(TensorData::new(values, out_shape));
    let output = match MaxPoolOps.prepare::<NoCheckpointing>(guards).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(PoolState { argmax, input_shape: shape, window: win }, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive::<Ad>(output))
}

/// Per plane: each output's maximum and its position `ih * W + iw` in the plane (the first
/// one in row-major window order on ties).
fn forward_kernel(x: &[f32], win: Window) -> (Vec<f32>, Vec<u32>) {
    let (ho, wo, plane) = (win.out_h(), win.out_w(), win.h * win.w);
    let planes = x.len() / plane;
    let mut values = vec![0f32; planes * ho * wo];
    let mut argmax = vec![0u32; planes * ho * wo];
    values.par_chunks_mut(ho * wo).zip(argmax.par_chunks_mut(ho * wo)).zip(x.par_chunks(plane)).for_each(
        |((val, arg), xp)| {
            for oh in 0..ho {
                let h0 = (oh * win.stride).saturating_sub(win.pad);
                let h1 = (oh * win.stride + win.k - win.pad).min(win.h);
                for ow in 0..wo {
                    let w0 = (ow * win.stride).saturating_sub(win.pad);
                    let w1 = (ow * win.stride + win.k - win.pad).min(win.w);
                    let (mut best, mut at) = (f32::NEG_INFINITY, h0 * win.w + w0);
                    for ih in h0..h1 {
                        let row = &xp[ih * win.w..(ih + 1) * win.w];
                        for (iw, &v) in row.iter().enumerate().take(w1).skip(w0) {
                            // `>`: the first maximum wins; a NaN is taken so that it propagates.
                            if v > best || (v.is_nan() && !best.is_nan()) {
                                best = v;
                                at = ih * win.w + iw;
                            }
                        }
                    }
                    val[oh * wo + ow] = best;
                    arg[oh * wo + ow] = at as u32;
                }
            }
        },
    );
    (values, argmax)
}

#[derive(Debug)]
struct MaxPoolOps;

#[derive(Clone, Debug)]
struct PoolState {
    argmax: Vec<u32>,
    input_shape: Shape,
    window: Window,
}

impl Backward<Flex, 1> for MaxPoolOps {
    type State = PoolState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let Some(node) = node_x else { return };
        let s = ops.state;
        let (plane, outs) = (s.window.h * s.window.w, s.window.out_h() * s.window.out_w());
        let mut dx = vec![0f32; s.input_shape.num_elements()];
        dx.par_chunks_mut(plane).zip(slice(&dy).par_chunks(outs)).zip(s.argmax.par_chunks(outs)).for_each(
            |((dxp, dyp), arg)| {
                for (&g, &at) in dyp.iter().zip(arg) {
                    dxp[at as usize] += g;
                }
            },
        );
        grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, s.input_shape)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn fused_max_pool_matches_burn_values_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(5);
        // (kernel, stride, padding) on odd and even sides: the stem's 3/2/1 and others.
        for (k, s, p, h, w) in [(3, 2, 1, 9, 8), (3, 2, 1, 8, 11), (2, 2, 0, 6, 7), (3, 1, 1, 5, 5), (3, 3, 0, 10, 9)] {
            let pool = MaxPool2dConfig::new([k, k])
                .with_strides([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init();
            let x = Tensor::<4>::random([2, 3, h, w], Distribution::Default, &device);
            let [oh, ow] = [(h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1];
            let r = Tensor::<4>::random([2, 3, oh, ow], Distribution::Default, &device);
            let read = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            let mut out = Vec::new();
            for ours in [false, true] {
                let xg = x.clone().detach().require_grad();
                let y = if ours {
                    fused(window(&pool).unwrap(), xg.clone()).expect("Autodiff<Flex> f32")
                } else {
                    pool.forward(xg.clone())
                };
                let grads = (y.clone() * r.clone()).sum().backward();
                out.push((read(y), read(xg.grad(&grads).unwrap())));
            }
            assert_eq!(out[0].0, out[1].0, "values, k {k} s {s} p {p} {h}x{w}");
            let d = out[0].1.iter().zip(&out[1].1).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-6, "input gradient differs by {d}, k {k} s {s} p {p} {h}x{w}");
        }
    }
}
