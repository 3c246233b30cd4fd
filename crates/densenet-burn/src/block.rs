//! DenseNet building blocks (arXiv:1608.06993, section 3): the BN-ReLU-Conv(1x1)-BN-ReLU-Conv(3x3)
//! dense layer, the dense block that concatenates every layer's output, and the transition.
//!
//! Input: feature maps `[B, C, H, W]`. Output: feature maps; field names mirror torchvision's
//! state_dict keys (`denseblock.K.denselayer.N.norm1` for `denseblockK+1.denselayerN+1.norm1`).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// An eval-mode BatchNorm reduced to one per-channel scale and shift, so that
/// `relu(bn(x))` costs a multiply, an add and a ReLU (in place) instead of Burn's generic
/// four-pass BatchNorm. Set by [`DenseNet::fold_batchnorm`](crate::DenseNet::fold_batchnorm).
#[derive(Clone, Debug)]
pub struct ChannelAffine {
    /// `gamma / sqrt(var + eps)`, shaped `[1, C, 1, 1]`.
    pub scale: Tensor<4>,
    /// `beta - mean * scale`, shaped `[1, C, 1, 1]`.
    pub shift: Tensor<4>,
}

impl ChannelAffine {
    /// The affine form of an eval-mode `bn`.
    pub fn from_batchnorm(bn: &BatchNorm) -> Self {
        let var = bn.running_var.value();
        let scale = bn.gamma.val().div(var.add_scalar(bn.epsilon).sqrt()); // [C]
        let shift = bn.beta.val().sub(bn.running_mean.value().mul(scale.clone())); // [C]
        let [c] = scale.dims();
        Self { scale: scale.reshape([1, c, 1, 1]), shift: shift.reshape([1, c, 1, 1]) }
    }

    /// `relu(x * scale + shift)`: `[B, C, H, W] -> [B, C, H, W]`.
    pub fn relu(&self, x: Tensor<4>) -> Tensor<4> {
        relu(x.mul(self.scale.clone()).add(self.shift.clone()))
    }
}

/// `relu(bn(x))`, through the precomputed affine form when there is one, and as one fused
/// operation when training on the CPU (see [`crate::bn`]).
pub(crate) fn bn_relu(bn: &BatchNorm, affine: &Option<ChannelAffine>, x: Tensor<4>) -> Tensor<4> {
    match affine {
        Some(a) => a.relu(x),
        None if x.is_autodiff() && bn.training.is_enabled() => crate::bn::bn_relu_train(bn, x),
        None => relu(bn.forward(x)),
    }
}

/// A 1x1 convolution. Training on Flex, the fused convolution of [`crate::conv`] (the image
/// is its own matrix: one gemm forward, two backward); on other autodiff backends a bias-free
/// one runs as one batched matrix product. Either beats Flex's generic convolution backward
/// (a transposed convolution for the input, a convolution over swapped axes for the weight):
/// the cpu profile's step went 360 -> 325 ms with the matmul, 260 -> 245 ms with the fused
/// operation (2 cores, `allscan-bench train`). Inference keeps `Conv2d` (the fast plan in
/// [`crate::fast`] replaces it anyway).
pub(crate) fn conv1x1(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if x.is_autodiff() && conv.bias.is_none() {
        crate::conv::try_conv_train(conv, x.clone()).unwrap_or_else(|| conv1x1_matmul(conv, x))
    } else {
        conv.forward(x)
    }
}

/// A bias-free 1x1 convolution as one batched matrix product:
/// `[1, O, C] x [B, C, H*W] -> [B, O, H, W]`.
pub(crate) fn conv1x1_matmul(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let [o, _, _, _] = conv.weight.dims();
    let wm = conv.weight.val().reshape([1, o, c]);
    wm.matmul(x.reshape([b, c, h * w])).reshape([b, o, h, w])
}

/// torchvision initialises convolutions with `kaiming_normal_` (fan-in, ReLU gain).
pub(crate) fn conv_initializer() -> Initializer {
    Initializer::KaimingNormal { gain: std::f64::consts::SQRT_2, fan_out_only: false }
}

/// One bottleneck dense layer: `norm1 -> relu -> conv1 (1x1) -> norm2 -> relu -> conv2 (3x3)`.
#[derive(Module, Debug)]
pub struct DenseLayer {
    /// BatchNorm over the concatenated input channels.
    pub norm1: BatchNorm,
    /// 1x1 bottleneck conv, `C_in -> bn_size * growth_rate`; gains a bias once `norm2` is folded.
    pub conv1: Conv2d,
    /// BatchNorm after the bottleneck; skipped at run time once folded into `conv1`.
    pub norm2: BatchNorm,
    /// 3x3 conv, padding 1, `bn_size * growth_rate -> growth_rate`.
    pub conv2: Conv2d,
    /// True once `norm2` has been folded into `conv1` for inference (see [`crate::fold`]).
    #[module(skip)]
    pub norm2_folded: bool,
    /// `norm1` in affine form, set for inference only (see [`crate::fold`]).
    #[module(skip)]
    pub norm1_affine: Option<ChannelAffine>,
}

impl DenseLayer {
    /// A layer reading `in_channels` and adding `growth_rate` channels.
    pub fn new(in_channels: usize, growth_rate: usize, bn_size: usize, device: &Device) -> Self {
        let mid = bn_size * growth_rate;
        Self {
            norm1: BatchNormConfig::new(in_channels).init(device),
            conv1: Conv2dConfig::new([in_channels, mid], [1, 1])
                .with_bias(false)
                .with_initializer(conv_initializer())
                .init(device),
            norm2: BatchNormConfig::new(mid).init(device),
            conv2: Conv2dConfig::new([mid, growth_rate], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .with_initializer(conv_initializer())
                .init(device),
            norm2_folded: false,
            norm1_affine: None,
        }
    }

    /// `[B, C_in, H, W] -> [B, growth_rate, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = conv1x1(&self.conv1, bn_relu(&self.norm1, &self.norm1_affine, x)); // [B, bn_size*k, H, W]
        let x = if self.norm2_folded { relu(x) } else { bn_relu(&self.norm2, &None, x) };
        if x.is_autodiff() {
            crate::conv::conv_train(&self.conv2, x) // [B, k, H, W]
        } else {
            self.conv2.forward(x)
        }
    }
}

/// A dense block: each layer sees the concatenation of the block input and all earlier outputs.
#[derive(Module, Debug)]
pub struct DenseBlock {
    /// Layers in order; torchvision's `denselayer1..N` (remapped to indices `0..N-1`).
    pub denselayer: Vec<DenseLayer>,
}

impl DenseBlock {
    /// `num_layers` layers on `in_channels` input channels.
    pub fn new(num_layers: usize, in_channels: usize, growth_rate: usize, bn_size: usize, device: &Device) -> Self {
        let denselayer = (0..num_layers)
            .map(|i| DenseLayer::new(in_channels + i * growth_rate, growth_rate, bn_size, device))
            .collect();
        Self { denselayer }
    }

    /// Channels this block adds to its input.
    pub fn added_channels(&self) -> usize {
        self.denselayer.iter().map(|l| l.conv2.weight.shape().dims::<4>()[0]).sum()
    }

    /// `[B, C, H, W] -> [B, C + L*k, H, W]`.
    ///
    /// On a device without autodiff, every layer writes its `k` channels into one buffer
    /// allocated once for the whole block (the memory-efficient DenseNet trick,
    /// arXiv:1707.06990) instead of re-concatenating a growing tensor `L` times. With
    /// autodiff the plain concatenation is kept, since in-place writes would break the graph.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if x.is_autodiff() {
            return self.forward_concat(x);
        }
        self.forward_buffer(x)
    }

    /// torchvision's formulation: `cat([x, f1(x), f2(cat(x, f1)), ...])`.
    pub fn forward_concat(&self, x: Tensor<4>) -> Tensor<4> {
        let mut features = x; // [B, C, H, W]
        for layer in &self.denselayer {
            let new = layer.forward(features.clone()); // [B, k, H, W]
            features = Tensor::cat(vec![features, new], 1); // [B, C + k, H, W]
        }
        features
    }

    /// Preallocated-buffer formulation (same values, `O(L)` instead of `O(L^2)` copies).
    pub fn forward_buffer(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c0, h, w] = x.dims();
        let total = c0 + self.added_channels();
        let mut buffer = Tensor::<4>::empty([b, total, h, w], &x.device()); // [B, C+L*k, H, W]
        buffer = buffer.slice_assign([0..b, 0..c0, 0..h, 0..w], x);
        let mut c = c0;
        for layer in &self.denselayer {
            let new = layer.forward(buffer.clone().narrow(1, 0, c)); // [B, k, H, W]
            let k = new.dims()[1];
            buffer = buffer.slice_assign([0..b, c..c + k, 0..h, 0..w], new);
            c += k;
        }
        buffer
    }
}

/// Between blocks: `norm -> relu -> conv (1x1, compression) -> avg pool 2x2`.
#[derive(Module, Debug)]
pub struct Transition {
    /// BatchNorm over the block output.
    pub norm: BatchNorm,
    /// 1x1 conv, `C -> floor(C * compression)`.
    pub conv: Conv2d,
    /// 2x2 average pool, stride 2.
    pub pool: AvgPool2d,
    /// `norm` in affine form, set for inference only (see [`crate::fold`]).
    #[module(skip)]
    pub norm_affine: Option<ChannelAffine>,
}

impl Transition {
    /// `in_channels -> out_channels`, halving the spatial size.
    pub fn new(in_channels: usize, out_channels: usize, device: &Device) -> Self {
        Self {
            norm: BatchNormConfig::new(in_channels).init(device),
            conv: Conv2dConfig::new([in_channels, out_channels], [1, 1])
                .with_bias(false)
                .with_initializer(conv_initializer())
                .init(device),
            pool: AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            norm_affine: None,
        }
    }

    /// `[B, C, H, W] -> [B, floor(C*compression), H/2, W/2]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = conv1x1(&self.conv, bn_relu(&self.norm, &self.norm_affine, x));
        self.pool.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn matmul_1x1_conv_matches_conv2d_values_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let conv = Conv2dConfig::new([6, 5], [1, 1]).with_bias(false).init(&device);
        let x = Tensor::<4>::random([3, 6, 4, 5], Distribution::Default, &device);
        let r = Tensor::<4>::random([3, 5, 4, 5], Distribution::Default, &device);
        let read = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        let mut out = Vec::new();
        for matmul in [false, true] {
            let xg = x.clone().detach().require_grad();
            let y = if matmul { conv1x1_matmul(&conv, xg.clone()) } else { conv.forward(xg.clone()) };
            let grads = (y.clone() * r.clone()).sum().backward();
            let gw = conv.weight.val().grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let gx = xg.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            out.push((read(y), gw, gx));
        }
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            let d = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-4, "{what} differs by {d}");
        };
        close(&out[0].0, &out[1].0, "output");
        close(&out[0].1, &out[1].1, "weight gradient");
        close(&out[0].2, &out[1].2, "input gradient");
    }
}
