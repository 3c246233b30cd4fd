//! Inference-time BatchNorm folding (eval mode only).
//!
//! Input: a [`DenseNet`] with loaded weights. Output: the same network with every BatchNorm
//! that directly follows a convolution (`conv0 -> norm0`, and `conv1 -> norm2` in each dense
//! layer) merged into that convolution's weight and bias, so the forward skips those passes.
//! `norm1`, transition `norm` and `norm5` come after a concatenation or precede their conv,
//! so they cannot be folded; they are reduced to one precomputed scale and shift each
//! ([`ChannelAffine`]), which with the ReLU after them costs three passes instead of five.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

use std::sync::Arc;

use crate::fast::InferencePlan;
use crate::{ChannelAffine, DenseNet};

/// `bn(conv(x)) = conv'(x)` with `w' = w * s`, `b' = (b - mean) * s + beta`,
/// `s = gamma / sqrt(var + eps)` per output channel.
fn fold_into(conv: Conv2d, bn: &BatchNorm) -> Conv2d {
    let gamma = bn.gamma.val();
    let beta = bn.beta.val();
    let mean = bn.running_mean.value();
    let var = bn.running_var.value();
    let scale: Tensor<1> = gamma.div(var.add_scalar(bn.epsilon).sqrt()); // [C_out]
    let [c_out] = scale.dims();
    let weight = conv.weight.val().mul(scale.clone().reshape([c_out, 1, 1, 1])); // [C_out, C_in, kh, kw]
    let bias = match &conv.bias {
        Some(b) => b.val().sub(mean).mul(scale).add(beta),
        None => mean.neg().mul(scale).add(beta),
    };
    Conv2d { weight: Param::from_tensor(weight), bias: Some(Param::from_tensor(bias)), ..conv }
}

impl DenseNet {
    /// Eval-mode copy with BatchNorms folded into their preceding convolutions.
    ///
    /// The result is for inference only: it is a [`Module::valid`] snapshot, its `conv0` and
    /// `conv1` carry biases that torchvision's layout does not have, `norm0`/`norm2`
    /// are kept but skipped, and the other BatchNorms run in their affine form. Do not train it or save it as weights; keep the original.
    pub fn fold_batchnorm(&self) -> DenseNet {
        let mut model = self.valid();
        let f = &mut model.features;
        if !f.norm0_folded {
            f.conv0 = fold_into(f.conv0.clone(), &f.norm0);
            f.norm0_folded = true;
        }
        for block in &mut f.denseblock {
            for layer in &mut block.denselayer {
                if !layer.norm2_folded {
                    layer.conv1 = fold_into(layer.conv1.clone(), &layer.norm2);
                    layer.norm2_folded = true;
                }
                layer.norm1_affine = Some(ChannelAffine::from_batchnorm(&layer.norm1));
            }
        }
        for t in &mut f.transition {
            t.norm_affine = Some(ChannelAffine::from_batchnorm(&t.norm));
        }
        f.norm5_affine = Some(ChannelAffine::from_batchnorm(&f.norm5));
        model.inference_plan = InferencePlan::from_folded(&model).map(Arc::new);
        model
    }

    /// The inference-only trunk of this network's folded copy (see [`InferencePlan`]).
    pub fn compile_inference(&self) -> InferencePlan {
        match &self.inference_plan {
            Some(plan) => (**plan).clone(),
            None => {
                let folded = self.fold_batchnorm();
                let plan = folded.inference_plan.as_deref().cloned();
                // fold_batchnorm sets every affine and folded flag, so from_folded succeeds.
                plan.unwrap_or_else(|| unreachable!("a folded DenseNet always compiles"))
            }
        }
    }
}
