//! torchvision's DenseNet (arXiv:1608.06993): stem, dense blocks with transitions, final norm,
//! optional ImageNet-style classifier.
//!
//! Input: images `[B, 3, H, W]` (ImageNet-normalised, 224x224 for the pretrained weights).
//! Output: logits `[B, num_classes]`, pooled features `[B, C]` or the final feature map
//! `[B, C, H/32, W/32]` (DenseNet201 at 224: `[B, 1920, 7, 7]`), and partial forwards
//! (`forward_until` / `forward_from`) that split the network at a dense block boundary.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use std::sync::Arc;

use crate::block::{bn_relu, conv_initializer, ChannelAffine, DenseBlock, Transition};
use crate::config::transition_out;
use crate::fast::InferencePlan;
use crate::{DenseNetConfig, DenseNetError, DenseNetVariant};

/// torchvision's `model.features` (an `nn.Sequential`), field for field.
#[derive(Module, Debug)]
pub struct Features {
    /// 7x7 stride-2 stem conv, `3 -> num_init_features`; gains a bias once `norm0` is folded.
    pub conv0: Conv2d,
    /// BatchNorm after the stem; skipped at run time once folded into `conv0`.
    pub norm0: BatchNorm,
    /// 3x3 stride-2 max pool, padding 1.
    pub pool0: MaxPool2d,
    /// Dense blocks (torchvision `denseblock1..n`, here indices `0..n-1`).
    pub denseblock: Vec<DenseBlock>,
    /// Transitions after every block but the last (torchvision `transition1..n-1`).
    pub transition: Vec<Transition>,
    /// Final BatchNorm; a ReLU follows it in `forward_features`.
    pub norm5: BatchNorm,
    /// True once `norm0` has been folded into `conv0` for inference.
    #[module(skip)]
    pub norm0_folded: bool,
    /// `norm5` in affine form, set for inference only (see [`crate::fold`]).
    #[module(skip)]
    pub norm5_affine: Option<ChannelAffine>,
}

/// DenseNet with torchvision's structure and state_dict layout (after one key remap, see
/// [`crate::weights::TORCHVISION_KEY_REMAP`]).
#[derive(Module, Debug)]
pub struct DenseNet {
    /// The convolutional trunk.
    pub features: Features,
    /// ImageNet-style `Linear(C, num_classes)`; `None` for the features-only network.
    pub classifier: Option<Linear>,
    /// Compiled inference path, set by [`fold_batchnorm`](Self::fold_batchnorm):
    /// [`forward_features`](Self::forward_features) uses it for inputs without autodiff.
    /// A snapshot of the weights at folding time.
    #[module(skip)]
    pub inference_plan: Option<Arc<InferencePlan>>,
}

impl DenseNet {
    /// Builds a randomly initialised network (torchvision's init: Kaiming-normal convs,
    /// BN weight 1 / bias 0, Linear bias 0). Fails on an invalid config, never panics.
    pub fn new(config: &DenseNetConfig, device: &Device) -> Result<Self, DenseNetError> {
        config.validate()?;
        let k = config.growth_rate;
        let mut c = config.num_init_features;
        let mut denseblock = Vec::with_capacity(config.block_config.len());
        let mut transition = Vec::with_capacity(config.block_config.len().saturating_sub(1));
        for (i, &n) in config.block_config.iter().enumerate() {
            denseblock.push(DenseBlock::new(n, c, k, config.bn_size, device));
            c += n * k;
            if i + 1 < config.block_config.len() {
                let out = transition_out(c, config.compression);
                transition.push(Transition::new(c, out, device));
                c = out;
            }
        }
        let features = Features {
            conv0: Conv2dConfig::new([3, config.num_init_features], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(false)
                .with_initializer(conv_initializer())
                .init(device),
            norm0: BatchNormConfig::new(config.num_init_features).init(device),
            pool0: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            denseblock,
            transition,
            norm5: BatchNormConfig::new(c).init(device),
            norm0_folded: false,
            norm5_affine: None,
        };
        let classifier = config.num_classes.map(|n| {
            LinearConfig::new(c, n)
                .with_initializer(Initializer::KaimingUniform { gain: 1.0 / 3f64.sqrt(), fan_out_only: false })
                .init(device)
        });
        let classifier = classifier.map(|mut l| {
            // torchvision: nn.init.constant_(m.bias, 0)
            l.bias = l.bias.map(|b| b.map(|t| t.zeros_like()));
            l
        });
        Ok(Self { features, classifier, inference_plan: None })
    }

    /// The same network with every BatchNorm's running-statistics momentum set to `momentum`
    /// (Burn's default is 0.1). Re-estimating the statistics as an exact average over `k`
    /// batches takes momentum `1 / (i + 1)` for batch `i`.
    pub fn with_batchnorm_momentum(mut self, momentum: f64) -> Self {
        let f = &mut self.features;
        f.norm0.momentum = momentum;
        f.norm5.momentum = momentum;
        for layer in f.denseblock.iter_mut().flat_map(|b| b.denselayer.iter_mut()) {
            layer.norm1.momentum = momentum;
            layer.norm2.momentum = momentum;
        }
        for t in &mut f.transition {
            t.norm.momentum = momentum;
        }
        self
    }

    /// Number of dense blocks.
    pub fn num_blocks(&self) -> usize {
        self.features.denseblock.len()
    }

    /// Channels of the final feature map (DenseNet201: 1,920).
    pub fn num_features(&self) -> usize {
        self.features.norm5.gamma.shape().dims::<1>()[0]
    }

    /// Stem: `[B, 3, H, W] -> [B, num_init_features, H/4, W/4]` (224 -> 56).
    pub fn forward_stem(&self, x: Tensor<4>) -> Tensor<4> {
        let f = &self.features;
        if x.is_autodiff() && !f.norm0_folded {
            // Training: the fused convolution, BatchNorm + ReLU and max pool (`crate::conv`, `bn`, `pool`).
            let x = crate::conv::conv_train(&f.conv0, x); // [B, 64, H/2, W/2]
            return crate::pool::max_pool_train(&f.pool0, crate::block::bn_relu(&f.norm0, &None, x));
            // [B, 64, H/4, W/4]
        }
        let x = f.conv0.forward(x); // [B, 64, H/2, W/2]
        let x = if f.norm0_folded { x } else { f.norm0.forward(x) };
        f.pool0.forward(relu(x)) // [B, 64, H/4, W/4]
    }

    /// The activation entering dense block `block` (0-based): the stem, then blocks
    /// `0..block` with their transitions. `block == num_blocks()` gives the last block's raw
    /// output (before `norm5`). DenseNet201 at 224: block 0 `[B, 64, 56, 56]`, 1
    /// `[B, 128, 28, 28]`, 2 `[B, 256, 14, 14]`, 3 `[B, 896, 7, 7]`, 4 `[B, 1920, 7, 7]`.
    /// `block` is clamped to `num_blocks()`.
    pub fn forward_until(&self, x: Tensor<4>, block: usize) -> Tensor<4> {
        let x = self.forward_stem(x);
        self.run_blocks(x, 0, block.min(self.num_blocks()))
    }

    /// Continues from the activation entering block `block` (as returned by
    /// [`forward_until`](Self::forward_until)) to the final feature map after `norm5` + ReLU:
    /// `[B, C_block, h, w] -> [B, C, H/32, W/32]`. Stage-2 fine-tuning caches
    /// `forward_until(x, b)` once and trains `forward_from(b, ·)`.
    pub fn forward_from(&self, block: usize, x: Tensor<4>) -> Tensor<4> {
        let n = self.num_blocks();
        let x = self.run_blocks(x, block.min(n), n);
        let f = &self.features;
        bn_relu(&f.norm5, &f.norm5_affine, x) // [B, C, H/32, W/32]
    }

    fn run_blocks(&self, mut x: Tensor<4>, from: usize, to: usize) -> Tensor<4> {
        let f = &self.features;
        for i in from..to {
            x = f.denseblock[i].forward(x);
            if let Some(t) = f.transition.get(i) {
                x = t.forward(x);
            }
        }
        x
    }

    /// Final feature map after `norm5` + ReLU: `[B, 3, H, W] -> [B, C, H/32, W/32]`
    /// (DenseNet201 at 224: `[B, 1920, 7, 7]`). The seam for Grad-CAM and feature caching.
    ///
    /// A BatchNorm-folded model ([`fold_batchnorm`](Self::fold_batchnorm)) runs inputs without
    /// autodiff through its compiled [`InferencePlan`] (same values within float rounding).
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        if let Some(plan) = &self.inference_plan {
            if !x.is_autodiff() && x.dims()[1] == plan.in_channels() {
                return plan.forward_features(x);
            }
        }
        self.forward_features_modules(x)
    }

    /// [`forward_features`](Self::forward_features) through the Burn modules only (never the
    /// compiled inference plan): the reference the plan is tested against.
    pub fn forward_features_modules(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_from(0, self.forward_until(x, 0))
    }

    /// Global average pool of the feature map: `[B, C, h, w] -> [B, C]`.
    pub fn pool(features: Tensor<4>) -> Tensor<2> {
        let [b, c, _, _] = features.dims();
        features.mean_dims(&[2, 3]).reshape([b, c])
    }

    /// Pooled features: `[B, 3, H, W] -> [B, C]`.
    pub fn forward_pooled(&self, x: Tensor<4>) -> Tensor<2> {
        Self::pool(self.forward_features(x))
    }

    /// `[B, 3, H, W] -> [B, num_classes]` logits; the features-only network returns the
    /// pooled features `[B, C]` instead.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let pooled = self.forward_pooled(x); // [B, C]
        match &self.classifier {
            Some(linear) => linear.forward(pooled), // [B, num_classes]
            None => pooled,
        }
    }

    /// Freezes (no gradients, BatchNorm on running statistics) the stem and the dense blocks
    /// and transitions before `block`; `block == num_blocks()` also freezes `norm5`, so only
    /// the classifier (if any) stays trainable. Uses Burn 0.22's [`Module::freeze`].
    pub fn freeze_until(mut self, block: usize) -> Self {
        let n = self.num_blocks();
        let f = &mut self.features;
        f.conv0 = f.conv0.clone().freeze();
        f.norm0 = f.norm0.clone().freeze();
        for i in 0..block.min(n) {
            f.denseblock[i] = f.denseblock[i].clone().freeze();
            if let Some(t) = f.transition.get_mut(i) {
                *t = t.clone().freeze();
            }
        }
        if block >= n {
            f.norm5 = f.norm5.clone().freeze();
        }
        self
    }
}

/// DenseNet-121 with an ImageNet-style classifier of `num_classes` outputs.
pub fn densenet121(num_classes: usize, device: &Device) -> Result<DenseNet, DenseNetError> {
    DenseNet::new(&DenseNetVariant::DenseNet121.config().with_num_classes(num_classes), device)
}

/// DenseNet-169 with an ImageNet-style classifier of `num_classes` outputs.
pub fn densenet169(num_classes: usize, device: &Device) -> Result<DenseNet, DenseNetError> {
    DenseNet::new(&DenseNetVariant::DenseNet169.config().with_num_classes(num_classes), device)
}

/// DenseNet-201 with an ImageNet-style classifier of `num_classes` outputs.
pub fn densenet201(num_classes: usize, device: &Device) -> Result<DenseNet, DenseNetError> {
    DenseNet::new(&DenseNetVariant::DenseNet201.config().with_num_classes(num_classes), device)
}

/// DenseNet-121 trunk only (`forward_features` -> `[B, 1024, 7, 7]`).
pub fn densenet121_features(device: &Device) -> Result<DenseNet, DenseNetError> {
    DenseNet::new(&DenseNetVariant::DenseNet121.config().features_only(), device)
}

/// DenseNet-169 trunk only (`forward_features` -> `[B, 1664, 7, 7]`).
pub fn densenet169_features(device: &Device) -> Result<DenseNet, DenseNetError> {
    DenseNet::new(&DenseNetVariant::DenseNet169.config().features_only(), device)
}

/// DenseNet-201 trunk only (`forward_features` -> `[B, 1920, 7, 7]`).
pub fn densenet201_features(device: &Device) -> Result<DenseNet, DenseNetError> {
    DenseNet::new(&DenseNetVariant::DenseNet201.config().features_only(), device)
}
