//! Inference-only DenseNet forward on plain `f32` buffers (eval mode, no autodiff).
//!
//! Input: a BatchNorm-folded [`DenseNet`] (see [`crate::fold`]) and images `[B, 3, H, W]`.
//! Output: the same final feature map as [`DenseNet::forward_features`] (`[B, 1920, 7, 7]` for
//! DenseNet201 at 224), within float rounding.
//!
//! Why it is faster than running the Burn modules on the Flex backend:
//! - Activations live in NHWC (`[B*H*W, C]`, channels contiguous). Each dense block is ONE
//!   buffer `[B*H*W, C_total]`; every layer's 3x3 conv writes its `k` output channels straight
//!   into that buffer's columns (GEMM with a row stride of `C_total`), so there is no
//!   concatenation and no copy, and a 1x1 conv is a plain GEMM without im2col.
//! - `norm1 + ReLU` is fused with the bottleneck GEMM per tile of rows, so the normalised
//!   copy of the block input stays in cache; the folded `norm2` bias + ReLU run on the GEMM's
//!   output tile while it is still in cache.
//! - The 3x3 conv's im2col is built per tile of rows in a per-thread scratch buffer, never for
//!   the whole image.
//! - Transitions pool before their 1x1 conv: a 2x2 average pool and a 1x1 convolution are both
//!   linear maps that act on different axes (space vs channels), so they commute exactly
//!   (`conv(pool(x)) == pool(conv(x))` up to rounding); pooling first does 4x fewer FLOPs.
//! - Work is split into row tiles across rayon's pool (`RAYON_NUM_THREADS`); each tile runs a
//!   single-threaded `gemm` (Flex itself is built without rayon here, so it uses one core).

use std::cell::RefCell;

use burn::tensor::{Tensor, TensorData};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::block::ChannelAffine;
use crate::DenseNet;

/// Per-channel `relu(x * scale + shift)` (an eval-mode BatchNorm followed by ReLU).
#[derive(Debug, Clone)]
struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Affine {
    fn from_channel_affine(a: &ChannelAffine) -> Self {
        Self { scale: values(a.scale.clone()), shift: values(a.shift.clone()) }
    }

    /// `dst[j] = relu(src[j] * scale[j] + shift[j])` for `j < dst.len()`.
    #[inline(always)]
    fn apply_relu(&self, src: &[f32], dst: &mut [f32]) {
        let n = dst.len();
        let (src, scale, shift) = (&src[..n], &self.scale[..n], &self.shift[..n]);
        for j in 0..n {
            dst[j] = (src[j] * scale[j] + shift[j]).max(0.0);
        }
    }

    /// `dst[j] += relu(src[j] * scale[j] + shift[j])`.
    #[inline(always)]
    fn accumulate_relu(&self, src: &[f32], dst: &mut [f32]) {
        let n = dst.len();
        let (src, scale, shift) = (&src[..n], &self.scale[..n], &self.shift[..n]);
        for j in 0..n {
            dst[j] += (src[j] * scale[j] + shift[j]).max(0.0);
        }
    }
}

/// One dense layer: `relu(norm1) -> conv1 (1x1, norm2 folded) -> relu -> conv2 (3x3)`.
#[derive(Debug, Clone)]
struct FastLayer {
    norm1: Affine,
    /// conv1 weight transposed to `[c_in, mid]` (GEMM rhs).
    w1: Vec<f32>,
    /// conv1 bias (folded norm2), `[mid]`.
    b1: Vec<f32>,
    /// conv2 weight as `[(ky*3+kx)*mid + i, k]`, matching the NHWC im2col column order.
    w2: Vec<f32>,
    c_in: usize,
    mid: usize,
    k: usize,
}

/// `relu(norm) -> avg pool 2x2 -> conv (1x1)` (pool moved before the conv, see module docs).
#[derive(Debug, Clone)]
struct FastTransition {
    norm: Affine,
    /// conv weight transposed to `[c_in, c_out]`.
    w: Vec<f32>,
    c_in: usize,
    c_out: usize,
}

/// A compiled, inference-only copy of a folded [`DenseNet`]'s trunk (see the module docs).
/// Holds its own weights (about as much memory as the model's); build it with
/// [`DenseNet::compile_inference`].
#[derive(Debug, Clone)]
pub struct InferencePlan {
    /// conv0 weight transposed to `[3*7*7, c0]` (`ci*49 + ky*7 + kx` rows).
    w0: Vec<f32>,
    /// conv0 bias (folded norm0), `[c0]`.
    b0: Vec<f32>,
    in_channels: usize,
    c0: usize,
    blocks: Vec<Vec<FastLayer>>,
    transitions: Vec<FastTransition>,
    norm5: Affine,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    // Weights are f32 on every backend this crate builds; `convert` is a no-op then.
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

/// `[rows, cols]` row-major -> `[cols, rows]` row-major.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

fn bias_of(conv: &burn::nn::conv::Conv2d, c_out: usize) -> Vec<f32> {
    conv.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; c_out])
}

impl InferencePlan {
    /// Copies the weights of `model`, which must be BatchNorm-folded
    /// ([`DenseNet::fold_batchnorm`]); `None` otherwise.
    pub(crate) fn from_folded(model: &DenseNet) -> Option<Self> {
        let f = &model.features;
        if !f.norm0_folded {
            return None;
        }
        let [c0, in_channels, kh, kw] = f.conv0.weight.shape().dims::<4>();
        let w0 = transpose(&values(f.conv0.weight.val()), c0, in_channels * kh * kw);
        let b0 = bias_of(&f.conv0, c0);
        let mut blocks = Vec::with_capacity(f.denseblock.len());
        for block in &f.denseblock {
            let mut layers = Vec::with_capacity(block.denselayer.len());
            for l in &block.denselayer {
                if !l.norm2_folded {
                    return None;
                }
                let norm1 = Affine::from_channel_affine(l.norm1_affine.as_ref()?);
                let [mid, c_in, _, _] = l.conv1.weight.shape().dims::<4>();
                let w1 = transpose(&values(l.conv1.weight.val()), mid, c_in);
                let b1 = bias_of(&l.conv1, mid);
                let [k, _, _, _] = l.conv2.weight.shape().dims::<4>();
                // [k, mid, 3, 3] -> [(ky*3+kx)*mid + i, k]
                let raw = values(l.conv2.weight.val());
                let mut w2 = vec![0.0; raw.len()];
                for o in 0..k {
                    for i in 0..mid {
                        for t in 0..9 {
                            w2[(t * mid + i) * k + o] = raw[(o * mid + i) * 9 + t];
                        }
                    }
                }
                layers.push(FastLayer { norm1, w1, b1, w2, c_in, mid, k });
            }
            blocks.push(layers);
        }
        let mut transitions = Vec::with_capacity(f.transition.len());
        for t in &f.transition {
            let norm = Affine::from_channel_affine(t.norm_affine.as_ref()?);
            let [c_out, c_in, _, _] = t.conv.weight.shape().dims::<4>();
            let w = transpose(&values(t.conv.weight.val()), c_out, c_in);
            transitions.push(FastTransition { norm, w, c_in, c_out });
        }
        let norm5 = Affine::from_channel_affine(f.norm5_affine.as_ref()?);
        Some(Self { w0, b0, in_channels, c0, blocks, transitions, norm5 })
    }

    /// Channels the plan expects on its input (3 for RGB).
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Final feature map after `norm5` + ReLU: `[B, 3, H, W] -> [B, C, H/32, W/32]`, on the
    /// input's device (DenseNet201 at 224: `[B, 1920, 7, 7]`).
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        let [b, c, h, w] = x.dims();
        assert_eq!(c, self.in_channels, "input has {c} channels, the network expects {}", self.in_channels);
        let input = values(x);
        let (out, shape) = self.run(&input, b, h, w);
        Tensor::from_data(TensorData::new(out, shape), &device)
    }

    /// Output shape for `b` images of `h x w`: stem /4, each transition /2 (floor).
    fn output_shape(&self, b: usize, h: usize, w: usize) -> [usize; 4] {
        let (h0, w0) = ((h + 6 - 7) / 2 + 1, (w + 6 - 7) / 2 + 1);
        let (mut h, mut w) = ((h0 + 2 - 3) / 2 + 1, (w0 + 2 - 3) / 2 + 1);
        for _ in &self.transitions {
            (h, w) = (h / 2, w / 2);
        }
        let c = self.transitions.last().map_or(self.c0, |t| t.c_out)
            + self.blocks.last().map_or(0, |l| l.iter().map(|l| l.k).sum::<usize>());
        [b, c, h, w]
    }

    /// The whole trunk on an NCHW `input`; returns NCHW values and their shape.
    ///
    /// With at least as many images as threads, whole images run in parallel, one per thread
    /// (each image's working set then stays in that core's cache, and no op waits for the
    /// others; one thread runs them one after another for the same reason: measured 8.6 vs 11.9
    /// images/s at batch 8 on one core); a remainder of fewer images than threads runs as one
    /// batch split into row tiles.
    fn run(&self, input: &[f32], b: usize, h: usize, w: usize) -> (Vec<f32>, [usize; 4]) {
        let shape = self.output_shape(b, h, w);
        let out_len = shape[1] * shape[2] * shape[3];
        let in_len = self.in_channels * h * w;
        let mut out = vec![0.0f32; b * out_len];
        let threads = rayon::current_num_threads().max(1);
        let whole = b / threads * threads;
        let (head, tail) = out.split_at_mut(whole * out_len);
        head.par_chunks_mut(out_len.max(1)).enumerate().for_each(|(i, o)| {
            self.run_batch(&input[i * in_len..(i + 1) * in_len], 1, h, w, o);
        });
        if b > whole {
            self.run_batch(&input[whole * in_len..], b - whole, h, w, tail);
        }
        (out, shape)
    }

    /// `b` images (NCHW `input`) -> NCHW feature map in `out`.
    fn run_batch(&self, input: &[f32], b: usize, h: usize, w: usize, out: &mut [f32]) {
        // Stem: conv0 7x7/2 pad 3 (+ folded norm0, ReLU), then max pool 3x3/2 pad 1.
        let (h0, w0) = ((h + 6 - 7) / 2 + 1, (w + 6 - 7) / 2 + 1);
        let stem = self.stem_conv(input, b, h, w, h0, w0); // [B*h0*w0, c0]
        let (mut h, mut w) = ((h0 + 2 - 3) / 2 + 1, (w0 + 2 - 3) / 2 + 1);
        let mut c_total = self.c0 + self.blocks[0].iter().map(|l| l.k).sum::<usize>();
        let mut buf = vec![0.0f32; b * h * w * c_total]; // [B*H*W, C_total]
        max_pool_3x3s2(&stem, Grid { b, h: h0, w: w0 }, self.c0, &mut buf, c_total, Grid { b, h, w });
        drop(stem);
        let mut bott = Vec::new(); // bottleneck activations, reused by every layer
        for (i, layers) in self.blocks.iter().enumerate() {
            let mut c = layers.first().map_or(c_total, |l| l.c_in);
            for layer in layers {
                layer.forward(&mut buf, &mut bott, Grid { b, h, w }, c, c_total);
                c += layer.k;
            }
            if let Some(t) = self.transitions.get(i) {
                let (h2, w2) = (h / 2, w / 2);
                let next_total = t.c_out + self.blocks[i + 1].iter().map(|l| l.k).sum::<usize>();
                let mut next = vec![0.0f32; b * h2 * w2 * next_total];
                t.forward(&buf, Grid { b, h, w }, c_total, &mut next, next_total);
                buf = next;
                (h, w, c_total) = (h2, w2, next_total);
            }
        }
        // norm5 + ReLU, NHWC -> NCHW.
        let hw = h * w;
        let norm5 = &self.norm5;
        out.par_chunks_mut(hw.max(1)).enumerate().for_each(|(bc, plane)| {
            let (bi, ch) = (bc / c_total, bc % c_total);
            let (s, t) = (norm5.scale[ch], norm5.shift[ch]);
            for (p, o) in plane.iter_mut().enumerate() {
                *o = (buf[(bi * hw + p) * c_total + ch] * s + t).max(0.0);
            }
        });
    }

    /// conv0 (7x7, stride 2, padding 3) + bias + ReLU: NCHW input -> `[B*h0*w0, c0]` NHWC.
    fn stem_conv(&self, input: &[f32], b: usize, h: usize, w: usize, h0: usize, w0: usize) -> Vec<f32> {
        let (ci, c0) = (self.in_channels, self.c0);
        let kk = ci * 49;
        let rows = b * h0 * w0;
        let mut out = vec![0.0f32; rows * c0];
        let tile = tile_rows(rows, 128);
        out.par_chunks_mut(tile * c0).enumerate().for_each(|(t, dst)| {
            let r0 = t * tile;
            let n = dst.len() / c0;
            with_scratch(n * kk, |col| {
                for r in 0..n {
                    let (bi, rem) = ((r0 + r) / (h0 * w0), (r0 + r) % (h0 * w0));
                    let (oy, ox) = (rem / w0, rem % w0);
                    let row = &mut col[r * kk..(r + 1) * kk];
                    for c in 0..ci {
                        let plane = &input[(bi * ci + c) * h * w..(bi * ci + c + 1) * h * w];
                        for ky in 0..7 {
                            let iy = (2 * oy + ky) as isize - 3;
                            let seg = &mut row[(c * 7 + ky) * 7..(c * 7 + ky) * 7 + 7];
                            if iy < 0 || iy >= h as isize {
                                seg.fill(0.0);
                                continue;
                            }
                            let line = &plane[iy as usize * w..(iy as usize + 1) * w];
                            let x0 = (2 * ox) as isize - 3;
                            if x0 >= 0 && x0 as usize + 7 <= w {
                                seg.copy_from_slice(&line[x0 as usize..x0 as usize + 7]);
                                continue;
                            }
                            for (kx, v) in seg.iter_mut().enumerate() {
                                let ix = x0 + kx as isize;
                                *v = if ix < 0 || ix >= w as isize { 0.0 } else { line[ix as usize] };
                            }
                        }
                    }
                }
                // SAFETY: `col` is [n, kk], `w0` is [kk, c0], `dst` is [n, c0]; all in bounds.
                unsafe { matmul([n, c0, kk], MatMut::of(dst, c0), Mat::of(col, kk), Mat::of(&self.w0, c0)) };
            });
            bias_relu(dst, &self.b0);
        });
        out
    }
}

/// 3x3 max pool, stride 2, padding 1 (padding never wins): `src [B*h0*w0, c]` (`from`) -> the
/// first `c` columns of `dst [B*h*w, stride]` (`to`).
fn max_pool_3x3s2(src: &[f32], from: Grid, c: usize, dst: &mut [f32], stride: usize, to: Grid) {
    let (h0, w0, h, w) = (from.h, from.w, to.h, to.w);
    dst.par_chunks_mut(w * stride).enumerate().for_each(|(row, line)| {
        let (bi, oy) = (row / h, row % h);
        for ox in 0..w {
            let out = &mut line[ox * stride..ox * stride + c];
            out.fill(f32::NEG_INFINITY);
            for ky in 0..3 {
                let iy = (2 * oy + ky) as isize - 1;
                if iy < 0 || iy >= h0 as isize {
                    continue;
                }
                for kx in 0..3 {
                    let ix = (2 * ox + kx) as isize - 1;
                    if ix < 0 || ix >= w0 as isize {
                        continue;
                    }
                    let s = &src[((bi * h0 + iy as usize) * w0 + ix as usize) * c..][..c];
                    for j in 0..c {
                        out[j] = out[j].max(s[j]);
                    }
                }
            }
        }
    });
}

impl FastLayer {
    /// Reads columns `0..c` of `buf [B*H*W, c_total]` (`g`) and writes columns `c..c+k`.
    fn forward(&self, buf: &mut [f32], bott: &mut Vec<f32>, g: Grid, c: usize, c_total: usize) {
        debug_assert_eq!(c, self.c_in);
        let (h, w) = (g.h, g.w);
        let rows = g.rows();
        let mid = self.mid;
        // Bottleneck: relu(norm1(x)) -> conv1 (+ folded norm2 bias) -> relu, per row tile.
        bott.resize(rows * mid, 0.0); // [B*H*W, mid], every value overwritten below
        let bott: &mut [f32] = bott;
        let tile = tile_rows(rows, 256);
        {
            let src: &[f32] = buf;
            bott.par_chunks_mut(tile * mid).enumerate().for_each(|(t, dst)| {
                let r0 = t * tile;
                let n = dst.len() / mid;
                with_scratch(n * c, |a| {
                    for r in 0..n {
                        let s = &src[(r0 + r) * c_total..(r0 + r) * c_total + c];
                        self.norm1.apply_relu(s, &mut a[r * c..(r + 1) * c]);
                    }
                    // SAFETY: `a` is [n, c], `w1` is [c, mid], `dst` is [n, mid].
                    unsafe { matmul([n, mid, c], MatMut::of(dst, mid), Mat::of(a, c), Mat::of(&self.w1, mid)) };
                });
                bias_relu(dst, &self.b1);
            });
        }
        // conv2 3x3 pad 1: im2col per row tile, GEMM straight into buf[:, c..c+k].
        let kk = 9 * mid;
        let tile = tile_rows(rows, 128);
        let out = SendPtr(buf.as_mut_ptr());
        let n_tiles = rows.div_ceil(tile);
        (0..n_tiles).into_par_iter().for_each(|t| {
            let r0 = t * tile;
            let n = tile.min(rows - r0);
            with_scratch(n * kk, |col| {
                for r in 0..n {
                    let (bi, rem) = ((r0 + r) / (h * w), (r0 + r) % (h * w));
                    let (y, x) = (rem / w, rem % w);
                    let row = &mut col[r * kk..(r + 1) * kk];
                    for ky in 0..3 {
                        let iy = (y + ky) as isize - 1;
                        for kx in 0..3 {
                            let ix = (x + kx) as isize - 1;
                            let seg = &mut row[(ky * 3 + kx) * mid..(ky * 3 + kx + 1) * mid];
                            if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                                seg.fill(0.0);
                            } else {
                                let p = (bi * h + iy as usize) * w + ix as usize;
                                seg.copy_from_slice(&bott[p * mid..(p + 1) * mid]);
                            }
                        }
                    }
                }
                // SAFETY: rows r0..r0+n, columns c..c+k of buf are written by this tile only,
                // and nothing reads them during this pass; `col` is [n, kk], `w2` is [kk, k].
                unsafe {
                    let dst = MatMut { ptr: out.get().add(r0 * c_total + c), rs: c_total };
                    matmul([n, self.k, kk], dst, Mat::of(col, kk), Mat::of(&self.w2, self.k));
                }
            });
        });
    }
}

impl FastTransition {
    /// `src [B*H*W, c_in]` (`g`) -> the first `c_out` columns of `dst [B*(H/2)*(W/2), dst_stride]`.
    fn forward(&self, src: &[f32], g: Grid, src_stride: usize, dst: &mut [f32], dst_stride: usize) {
        debug_assert_eq!(src_stride, self.c_in);
        let (b, h, w) = (g.b, g.h, g.w);
        let c = self.c_in;
        let (h2, w2) = (h / 2, w / 2);
        let rows = b * h2 * w2;
        if rows == 0 {
            return;
        }
        let tile = tile_rows(rows, 64);
        dst.par_chunks_mut(tile * dst_stride).enumerate().for_each(|(t, out)| {
            let r0 = t * tile;
            let n = out.len() / dst_stride;
            with_scratch(n * c, |p| {
                p.fill(0.0);
                for r in 0..n {
                    let (bi, rem) = ((r0 + r) / (h2 * w2), (r0 + r) % (h2 * w2));
                    let (oy, ox) = (rem / w2, rem % w2);
                    let acc = &mut p[r * c..(r + 1) * c];
                    for dy in 0..2 {
                        for dx in 0..2 {
                            let q = (bi * h + 2 * oy + dy) * w + 2 * ox + dx;
                            self.norm.accumulate_relu(&src[q * src_stride..q * src_stride + c], acc);
                        }
                    }
                    acc.iter_mut().for_each(|v| *v *= 0.25);
                }
                // SAFETY: `p` is [n, c], `w` is [c, c_out], `out` holds n rows of dst_stride.
                unsafe {
                    matmul([n, self.c_out, c], MatMut::of(out, dst_stride), Mat::of(p, c), Mat::of(&self.w, self.c_out))
                };
            });
        });
    }
}

/// `x = relu(x + bias)` on rows of `bias.len()` values.
fn bias_relu(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    }
}

/// Rows per tile: about `max_rows`, fewer when that would leave a thread idle.
fn tile_rows(rows: usize, max_rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads).clamp(1, max_rows)
}

thread_local! {
    /// Per-thread scratch (im2col tiles, normalised inputs); grows to the largest tile once.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// A raw output pointer shared by tiles that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, see the call sites.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The batch and spatial size of an NHWC activation buffer `[B*H*W, channels]`.
#[derive(Clone, Copy, Debug)]
struct Grid {
    b: usize,
    h: usize,
    w: usize,
}

impl Grid {
    /// Rows of the buffer: one per pixel of every image.
    fn rows(self) -> usize {
        self.b * self.h * self.w
    }
}

/// A row-major matrix read by [`matmul`]: its first value and its row stride.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
}

impl Mat {
    fn of(values: &[f32], rs: usize) -> Self {
        Self { ptr: values.as_ptr(), rs }
    }
}

/// A row-major matrix written by [`matmul`]: its first value and its row stride.
#[derive(Clone, Copy)]
struct MatMut {
    ptr: *mut f32,
    rs: usize,
}

impl MatMut {
    fn of(values: &mut [f32], rs: usize) -> Self {
        Self { ptr: values.as_mut_ptr(), rs }
    }
}

/// `dst[m, n] = lhs[m, k] * rhs[k, n]`, all row-major with their row strides, one thread.
///
/// # Safety
/// Every matrix must cover its `[rows, cols]` with its row stride.
unsafe fn matmul([m, n, k]: [usize; 3], dst: MatMut, lhs: Mat, rhs: Mat) {
    if crate::bf16::active() {
        let (d, l, r) = ((dst.ptr, 1, dst.rs as isize), (lhs.ptr, 1, lhs.rs as isize), (rhs.ptr, 1, rhs.rs as isize));
        return unsafe { crate::bf16::gemm([m, n, k], d, l, r, false) };
    }
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        1,
        dst.rs as isize,
        false,
        lhs.ptr,
        1,
        lhs.rs as isize,
        rhs.ptr,
        1,
        rhs.rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    );
}
