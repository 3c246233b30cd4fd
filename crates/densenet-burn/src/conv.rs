//! Training-mode convolution (DenseNet's 3x3 `conv2`, its 1x1 convolutions and the 7x7
//! stride-2 stem) as one autodiff operation on the Flex CPU backend, in NCHW throughout.
//!
//! Flex's generic convolution converts the input to NHWC, builds its im2col matrix one channel
//! at a time, and differentiates through a transposed convolution (col2im with scalar adds)
//! and a second convolution over swapped axes for the weight. Here, per image,
//! `im2col` copies whole shifted rows, the forward is `W [O, C*k*k] x col [C*k*k, P]`, the
//! weight gradient `dy [O, P] x col^T` and the input gradient `W^T x dy` followed by col2im
//! with row additions; every product is one call of the `gemm` crate, images in parallel on
//! rayon's pool. A 1x1 convolution needs no im2col: the image itself is the matrix.
//!
//! Like [`crate::bn`], it uses Burn's backend-extension API and applies only to
//! `Autodiff<Flex>` f32 tensors without gradient checkpointing; anything else falls back to
//! `Conv2d::forward`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::{DType, Tensor, TensorData};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::bn::{contiguous, par_filled, slice, Ad};

/// `conv.forward(x)` for a bias-free, undilated, ungrouped convolution with square kernel,
/// equal strides and symmetric explicit padding, through the fused operation on `Autodiff<Flex>`;
/// every other case goes to `Conv2d::forward`. `[B, C, H, W] -> [B, O, H', W']`.
pub(crate) fn conv_train(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    try_conv_train(conv, x.clone()).unwrap_or_else(|| conv.forward(x))
}

/// The fused operation of [`conv_train`], or `None` where it does not apply.
pub(crate) fn try_conv_train(conv: &Conv2d, x: Tensor<4>) -> Option<Tensor<4>> {
    fused(conv, geometry(conv)?, x)
}

/// Kernel side and padding, when the convolution is one this module handles.
fn geometry(conv: &Conv2d) -> Option<Geometry> {
    let [_, _, kh, kw] = conv.weight.dims();
    let padding = match &conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => *t,
        PaddingConfig2d::Valid => 0,
        _ => return None,
    };
    let [sh, sw] = conv.stride;
    let plain = sh == sw && sh >= 1 && conv.dilation == [1, 1] && conv.groups == 1 && conv.bias.is_none();
    (plain && kh == kw && padding < kh).then_some(Geometry { k: kh, pad: padding, stride: sh, c: 0, h: 0, w: 0, o: 0 })
}

/// A convolution's sizes: kernel `k`x`k`, padding `pad`, `stride`, input `[c, h, w]`, `o`
/// outputs.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    k: usize,
    pad: usize,
    stride: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
}

impl Geometry {
    fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// A 1x1, stride-1, unpadded convolution: the image is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.pad == 0 && self.stride == 1
    }
    /// Rows of the im2col matrix.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Columns of the im2col matrix (output pixels).
    fn cols(&self) -> usize {
        self.out_h() * self.out_w()
    }
}

fn fused(conv: &Conv2d, geometry: Geometry, x: Tensor<4>) -> Option<Tensor<4>> {
    let x = x.try_into_primitive::<Ad>().ok()?;
    let weight = conv.weight.val().try_into_primitive::<Ad>().ok()?;
    if x.primitive().dtype() != DType::F32 || weight.primitive().dtype() != DType::F32 {
        return None;
    }
    let guards = [x.node(), weight.node()];
    let (xp, wp) = (contiguous(x.into_primitive()), contiguous(weight.into_primitive()));
    let shape = xp.layout().shape().clone();
    let [o, c, _, _] = conv.weight.dims();
    let g = Geometry { c, h: shape[2], w: shape[3], o, ..geometry };
    if shape[1] != c || g.h + 2 * g.pad < g.k || g.w + 2 * g.pad < g.k {
        return None;
    }
    let output = forward_kernel(&xp, slice(&wp), g);
    let output = match ConvOps.prepare::<NoCheckpointing>(guards).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(ConvState { x: xp, weight: wp, geometry: g }, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Some(Tensor::from_primitive::<Ad>(output))
}

/// `col[(ci, kh, kw), oh * W' + ow] = x[ci, s * oh + kh - pad, s * ow + kw - pad]` (zero
/// outside).
fn im2col(x: &[f32], g: Geometry, col: &mut [f32]) {
    if g.stride != 1 {
        return im2col_strided(x, g, col);
    }
    if g.out_h() == g.h && g.out_w() == g.w {
        return im2col_same(x, g, col);
    }
    im2col_rows(x, g, col)
}

/// `f(plane, kh, kw, row)` for every row of the im2col matrix: `row` is the row of
/// `(ci, kh, kw)` and `plane` input channel `ci`.
fn for_each_row(x: &[f32], g: Geometry, col: &mut [f32], mut f: impl FnMut(&[f32], usize, usize, &mut [f32])) {
    let (plane, p) = (g.h * g.w, g.cols());
    for ci in 0..g.c {
        for kh in 0..g.k {
            for kw in 0..g.k {
                f(&x[ci * plane..(ci + 1) * plane], kh, kw, &mut col[((ci * g.k + kh) * g.k + kw) * p..][..p]);
            }
        }
    }
}

/// [`im2col`] of a stride-1 "same" convolution (output as large as the input): each
/// `(ci, kh, kw)` row is the plane shifted by `(kh - pad) * W + kw - pad`, one contiguous copy,
/// with the columns that wrapped around a row edge zeroed. On DenseNet's small maps (28 to 3
/// pixels wide) this replaces a short copy per output row.
fn im2col_same(x: &[f32], g: Geometry, col: &mut [f32]) {
    let (h, w, p) = (g.h, g.w, g.h * g.w);
    for_each_row(x, g, col, |plane, kh, kw, row| {
        let (dy, dx) = (kh as isize - g.pad as isize, kw as isize - g.pad as isize);
        // Output rows whose input row oh + dy lies inside the image.
        let oh0 = (-dy).clamp(0, h as isize) as usize;
        let oh1 = (h as isize - dy).clamp(oh0 as isize, h as isize) as usize;
        let (d0, d1) = (oh0 * w, oh1 * w);
        let shift = dy * w as isize + dx;
        let lo = d0.max((-shift).max(0) as usize).min(d1);
        let hi = ((p as isize - shift).max(0) as usize).clamp(lo, d1);
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        if lo < hi {
            row[lo..hi].copy_from_slice(&plane[(lo as isize + shift) as usize..(hi as isize + shift) as usize]);
        }
        let (left, right) = (((-dx).max(0) as usize).min(w), (dx.max(0) as usize).min(w));
        for oh in oh0..oh1 {
            row[oh * w..oh * w + left].fill(0.0);
            row[(oh + 1) * w - right..(oh + 1) * w].fill(0.0);
        }
    });
}

/// [`im2col`] for stride 1, one copy per output row.
fn im2col_rows(x: &[f32], g: Geometry, col: &mut [f32]) {
    let (ho, wo) = (g.out_h(), g.out_w());
    for_each_row(x, g, col, |plane, kh, kw, row| {
        // Output columns whose input column `ow + kw - pad` lies inside the image.
        let lo = g.pad.saturating_sub(kw);
        let hi = (g.w + g.pad).saturating_sub(kw).min(wo);
        for oh in 0..ho {
            let dst = &mut row[oh * wo..(oh + 1) * wo];
            let ih = (oh + kh).wrapping_sub(g.pad);
            if ih >= g.h || lo >= hi {
                dst.fill(0.0);
                continue;
            }
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            let start = ih * g.w + lo + kw - g.pad;
            dst[lo..hi].copy_from_slice(&plane[start..start + (hi - lo)]);
        }
    });
}

/// The input pixel a strided output pixel reads through kernel offset `kk`, if inside.
fn tap(o: usize, kk: usize, g: &Geometry, len: usize) -> Option<usize> {
    (o * g.stride + kk).checked_sub(g.pad).filter(|&i| i < len)
}

/// [`im2col`] for stride > 1, one element at a time (the stem: 3 input channels).
fn im2col_strided(x: &[f32], g: Geometry, col: &mut [f32]) {
    let (ho, wo) = (g.out_h(), g.out_w());
    for_each_row(x, g, col, |plane, kh, kw, row| {
        for oh in 0..ho {
            let dst = &mut row[oh * wo..(oh + 1) * wo];
            let Some(ih) = tap(oh, kh, &g, g.h) else {
                dst.fill(0.0);
                continue;
            };
            for (ow, d) in dst.iter_mut().enumerate() {
                *d = tap(ow, kw, &g, g.w).map_or(0.0, |iw| plane[ih * g.w + iw]);
            }
        }
    });
}

/// The adjoint of [`im2col`]: `dx[ci, ih, iw] += dcol[(ci, kh, kw), ...]` over every use,
/// into a `dx` that arrives zeroed.
fn col2im(dcol: &[f32], g: Geometry, dx: &mut [f32]) {
    let (ho, wo, p) = (g.out_h(), g.out_w(), g.cols());
    if g.stride != 1 {
        for ci in 0..g.c {
            let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            for kh in 0..g.k {
                for kw in 0..g.k {
                    let row = &dcol[((ci * g.k + kh) * g.k + kw) * p..][..p];
                    for oh in 0..ho {
                        let Some(ih) = tap(oh, kh, &g, g.h) else { continue };
                        for ow in 0..wo {
                            if let Some(iw) = tap(ow, kw, &g, g.w) {
                                plane[ih * g.w + iw] += row[oh * wo + ow];
                            }
                        }
                    }
                }
            }
        }
        return;
    }
    for ci in 0..g.c {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = &dcol[((ci * g.k + kh) * g.k + kw) * p..][..p];
                let lo = g.pad.saturating_sub(kw);
                let hi = (g.w + g.pad).saturating_sub(kw).min(wo);
                if lo >= hi {
                    continue;
                }
                for oh in 0..ho {
                    let ih = (oh + kh).wrapping_sub(g.pad);
                    if ih >= g.h {
                        continue;
                    }
                    let start = ih * g.w + lo + kw - g.pad;
                    for (d, &v) in plane[start..start + (hi - lo)].iter_mut().zip(&row[oh * wo + lo..oh * wo + hi]) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// `dst = lhs x rhs` (`accumulate`: `dst += ...`), each matrix given by its pointer, column
/// stride and row stride; one thread. In bf16 on the tile unit where [`crate::bf16::active`].
///
/// # Safety
/// Every pointer must cover its matrix with the given strides.
unsafe fn gemm(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    accumulate: bool,
) {
    if crate::bf16::active() {
        // SAFETY: the tiles are available; the caller's views cover their matrices.
        return unsafe { crate::bf16::gemm([m, n, k], dst, lhs, rhs, accumulate) };
    }
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.1,
            dst.2,
            accumulate,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// `y[n] = W [O, K] x im2col(x[n]) [K, P]`, images in parallel.
fn forward_kernel(x: &FlexTensor, weight: &[f32], g: Geometry) -> FlexTensor {
    let xs = slice(x);
    let b = x.layout().shape()[0];
    let (rows, plane, p) = (g.rows(), g.c * g.h * g.w, g.cols());
    // SAFETY: each chunk is one image's [O, P] output, every element of which the gemm writes
    // (its destination is not read: `accumulate` is false, and K = C*k*k >= 1).
    let out = unsafe {
        par_filled(b * g.o * p, g.o * p, |n, y| {
            let xn = &xs[n * plane..(n + 1) * plane];
            with_scratch(if g.pointwise() { 0 } else { rows * p }, |col| {
                let col: &[f32] = if g.pointwise() {
                    xn
                } else {
                    im2col(xn, g, col);
                    col
                };
                // SAFETY: y is [O, P], weight [O, K], col [K, P], all row-major.
                gemm(
                    [g.o, p, rows],
                    (y.as_mut_ptr().cast::<f32>(), 1, p as isize),
                    (weight.as_ptr(), 1, rows as isize),
                    (col.as_ptr(), 1, p as isize),
                    false,
                )
            })
        })
    };
    FlexTensor::from_data(TensorData::new(out, [b, g.o, g.out_h(), g.out_w()]))
}

thread_local! {
    /// Each worker thread's im2col matrix, kept between calls (grown, never shrunk).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on this thread's scratch buffer of `n` values (contents unspecified: the callers'
/// im2col and gemm overwrite what they read). `f` must not call back into this function.
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < n {
            buf.resize(n, 0.0);
        }
        f(&mut buf[..n])
    })
}

#[derive(Debug)]
struct ConvOps;

#[derive(Clone, Debug)]
struct ConvState {
    x: FlexTensor,
    weight: FlexTensor,
    geometry: Geometry,
}

impl Backward<Flex, 2> for ConvOps {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let (dx, dw) =
            backward_kernel(&s.x, slice(&s.weight), slice(&dy), s.geometry, node_x.is_some(), node_w.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, s.x.layout().shape().clone())));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(
                node.id,
                FlexTensor::from_data(TensorData::new(dw, s.weight.layout().shape().clone())),
            );
        }
    }
}

/// Per image: `dW += dy [O, P] x col^T [P, K]` and `dx = col2im(W^T [K, O] x dy [O, P])`, or
/// for a stride-1 kernel `dx = W' x im2col(dy)` (see `flip_transpose`).
/// The images are cut into at most [`WEIGHT_GROUPS`] fixed groups that run in parallel; each
/// sums its images' `dW` in order and the group sums are added in order, so the result does
/// not depend on the thread count or on scheduling (a resumed run must give the same weights).
fn backward_kernel(
    x: &FlexTensor,
    weight: &[f32],
    dy: &[f32],
    g: Geometry,
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let xs = slice(x);
    let b = x.layout().shape()[0];
    let (rows, p, plane) = (g.rows(), g.cols(), g.c * g.h * g.w);
    let per_group = b.div_ceil(WEIGHT_GROUPS).max(1);
    // A stride-1 convolution's input gradient is itself a convolution: dy padded by k - 1 - pad,
    // correlated with the weights flipped and transposed. Its im2col matrix has O*k*k rows where
    // col2im's has C*k*k (DenseNet: 4x fewer), and nothing is scattered back.
    let transposed = want_dx && g.stride == 1 && !g.pointwise();
    let gt = Geometry { c: g.o, h: g.out_h(), w: g.out_w(), o: g.c, k: g.k, pad: g.k - 1 - g.pad, stride: 1 };
    let flipped = if transposed { flip_transpose(weight, g) } else { Vec::new() };
    let scratch = if g.pointwise() {
        0
    } else if transposed {
        (rows * p).max(gt.rows() * gt.cols())
    } else {
        rows * p
    };
    let mut dx = if want_dx { vec![0f32; b * plane] } else { Vec::new() };
    let mut dx_groups: Vec<Option<&mut [f32]>> = if want_dx {
        dx.chunks_mut(per_group * plane).map(Some).collect()
    } else {
        (0..b.div_ceil(per_group)).map(|_| None).collect()
    };
    let partials: Vec<Vec<f32>> = dx_groups
        .par_iter_mut()
        .enumerate()
        .map(|(group, dx_group)| {
            let mut dw = vec![0f32; if want_dw { g.o * rows } else { 0 }];
            with_scratch(scratch, |col| {
                let images = group * per_group..((group + 1) * per_group).min(b);
                for (i, n) in images.enumerate() {
                    let dyn_ = &dy[n * g.o * p..(n + 1) * g.o * p];
                    if want_dw {
                        let xn = &xs[n * plane..(n + 1) * plane];
                        let col: &[f32] = if g.pointwise() {
                            xn
                        } else {
                            im2col(xn, g, col);
                            col
                        };
                        // SAFETY: dw is [O, K]; dy [O, P]; col^T is col [K, P] read with swapped strides.
                        unsafe {
                            gemm(
                                [g.o, rows, p],
                                (dw.as_mut_ptr(), 1, rows as isize),
                                (dyn_.as_ptr(), 1, p as isize),
                                (col.as_ptr(), p as isize, 1),
                                i > 0,
                            )
                        };
                    }
                    if let Some(dx_group) = dx_group.as_deref_mut() {
                        let dxn = &mut dx_group[i * plane..(i + 1) * plane];
                        if transposed {
                            let col = &mut col[..gt.rows() * gt.cols()];
                            im2col(dyn_, gt, col);
                            // SAFETY: dx is [C, H*W] = flipped [C, O*k*k] x col [O*k*k, H*W], all row-major.
                            unsafe {
                                gemm(
                                    [g.c, gt.cols(), gt.rows()],
                                    (dxn.as_mut_ptr(), 1, gt.cols() as isize),
                                    (flipped.as_ptr(), 1, gt.rows() as isize),
                                    (col.as_ptr(), 1, gt.cols() as isize),
                                    false,
                                )
                            };
                            continue;
                        }
                        // A 1x1 convolution's dcol is dx itself.
                        let dcol: &mut [f32] = if g.pointwise() { &mut *dxn } else { &mut *col };
                        // SAFETY: dcol is [K, P]; W^T is weight [O, K] read with swapped strides; dy [O, P].
                        unsafe {
                            gemm(
                                [rows, p, g.o],
                                (dcol.as_mut_ptr(), 1, p as isize),
                                (weight.as_ptr(), rows as isize, 1),
                                (dyn_.as_ptr(), 1, p as isize),
                                false,
                            )
                        };
                        if !g.pointwise() {
                            col2im(col, g, dxn);
                        }
                    }
                }
            });
            dw
        })
        .collect();
    let dw = want_dw.then(|| {
        let mut parts = partials.into_iter();
        let mut dw = parts.next().unwrap_or_default();
        for part in parts {
            dw.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
        }
        dw
    });
    (want_dx.then_some(dx), dw)
}

/// `W'[c, (o, kh, kw)] = W[o, c, k - 1 - kh, k - 1 - kw]`: the weights of the convolution
/// whose output is a stride-1 convolution's input gradient.
fn flip_transpose(weight: &[f32], g: Geometry) -> Vec<f32> {
    let kk = g.k * g.k;
    let mut out = vec![0f32; g.c * g.o * kk];
    for (ci, row) in out.chunks_exact_mut(g.o * kk).enumerate() {
        for oi in 0..g.o {
            let src = &weight[(oi * g.c + ci) * kk..][..kk];
            for (t, d) in row[oi * kk..(oi + 1) * kk].iter_mut().enumerate() {
                *d = src[kk - 1 - t];
            }
        }
    }
    out
}

/// Fixed number of image groups in the backward pass (see [`backward_kernel`]).
const WEIGHT_GROUPS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// The shifted-plane im2col of "same" convolutions equals the row-by-row one, down to maps
    /// narrower than the kernel.
    #[test]
    fn same_im2col_matches_row_copies() {
        for (k, pad, h, w) in [(3, 1, 7, 6), (3, 1, 1, 1), (3, 1, 2, 3), (5, 2, 4, 9), (5, 2, 1, 2), (1, 0, 3, 3)] {
            let g = Geometry { k, pad, stride: 1, c: 2, h, w, o: 1 };
            let x: Vec<f32> = (0..g.c * h * w).map(|i| i as f32 + 1.0).collect();
            let (mut a, mut b) = (vec![f32::NAN; g.rows() * g.cols()], vec![f32::NAN; g.rows() * g.cols()]);
            im2col_same(&x, g, &mut a);
            im2col_rows(&x, g, &mut b);
            assert_eq!(a, b, "k {k} pad {pad} {h}x{w}");
        }
    }

    /// Values and gradients equal Flex's `Conv2d` for 3x3 (padding 1), 3x3 without padding, 1x1,
    /// 5x5 and strided kernels (the 7x7 stride-2 stem among them), on a strided (permuted) input.
    #[test]
    fn fused_conv_matches_conv2d() {
        let device = Device::flex().autodiff();
        for (k, pad, stride) in [(3, 1, 1), (3, 0, 1), (1, 0, 1), (5, 2, 1), (7, 3, 2), (3, 1, 2), (2, 0, 3)] {
            let conv = Conv2dConfig::new([5, 4], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .init(&device);
            assert!(geometry(&conv).is_some());
            let data = Tensor::<4>::random([5, 6, 7, 6], Distribution::Normal(0.3, 1.0), &device).into_data();
            let view = |leaf: &Tensor<4>| leaf.clone().permute([1, 0, 2, 3]);
            let xa = Tensor::<4>::from_data(data.clone(), &device).require_grad();
            let xb = Tensor::<4>::from_data(data, &device).require_grad();
            let ya = conv.forward(view(&xa));
            let yb = fused(&conv, geometry(&conv).unwrap(), view(&xb)).expect("the fused path must be the one tested");
            ya.to_data().assert_approx_eq::<f32>(&yb.to_data(), Tolerance::absolute(1e-4));
            let weights = Tensor::<4>::random(ya.dims(), Distribution::Normal(0.0, 1.0), &device);
            let ga = ya.mul(weights.clone()).sum().backward();
            let gb = yb.mul(weights).sum().backward();
            crate::bn::assert_same_grad((&xa, &ga), (&xb, &gb), 1e-4);
            let w = conv.weight.val();
            crate::bn::assert_same_grad((&w, &ga), (&w, &gb), 1e-3);
        }
    }
}
