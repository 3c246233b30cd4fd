//! Exponential moving average of the weights (`train.ema_decay`): after every optimiser step,
//! `avg = d * avg + (1 - d) * weights`, with `d = min(decay, (1 + t) / (10 + t))` at update `t`
//! so the first steps are not dominated by the initial weights. Validation, the best-epoch
//! bundle and the test report then use the average, which moves less from batch to batch
//! than the weights themselves (heavy augmentation makes each step noisy).
//!
//! The average lives as plain `f32` vectors, one per float tensor of the model in visiting
//! order (weights and BatchNorm running statistics alike; the order, unlike parameter ids,
//! survives a reload from a checkpoint), updated on the caller's thread, so a run stays
//! deterministic; [`WeightAverage::model`] writes it into a copy of the model.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::model::LeukemiaClassifier;

/// The running average of a model's float tensors.
#[derive(Debug, Clone)]
pub struct WeightAverage {
    decay: f64,
    updates: u64,
    values: Vec<Vec<f32>>,
}

struct Collect<'a> {
    out: &'a mut Vec<Vec<f32>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push(param.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default());
    }
}

/// The model's float tensors in visiting order.
fn tensors(model: &LeukemiaClassifier) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    model.visit(&mut Collect { out: &mut out });
    out
}

struct Write<'a> {
    values: std::slice::Iter<'a, Vec<f32>>,
}

impl ModuleMapper for Write<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(v) = self.values.next() else { return param };
        param.map(|t| Tensor::from_data(TensorData::new(v.clone(), t.shape()), &t.device()))
    }
}

impl WeightAverage {
    /// An average that starts at `model`'s current values, after `updates` updates (0 for a
    /// fresh stage; a resumed run passes the count it saved).
    pub fn new(model: &LeukemiaClassifier, decay: f64, updates: u64) -> Self {
        Self { decay, updates, values: tensors(model) }
    }

    /// Updates seen so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The weight of the old average at the next update.
    fn next_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Folds `model`'s current values into the average.
    pub fn update(&mut self, model: &LeukemiaClassifier) {
        let d = self.next_decay() as f32;
        // The same model throughout a stage, so the same tensors in the same order.
        for (avg, cur) in self.values.iter_mut().zip(tensors(model)) {
            for (a, c) in avg.iter_mut().zip(cur) {
                *a = d * *a + (1.0 - d) * c;
            }
        }
        self.updates += 1;
    }

    /// An inference copy of `like` holding the averaged values.
    pub fn model(&self, like: &LeukemiaClassifier) -> LeukemiaClassifier {
        like.valid().map(&mut Write { values: self.values.iter() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn first_weight(m: &LeukemiaClassifier) -> Vec<f32> {
        m.backbone.features.conv0.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_average_follows_the_formula_and_keeps_the_model_apart() {
        let device = Device::flex().autodiff();
        device.seed(4);
        let cfg = crate::model::ClassifierConfig::subtype(densenet_burn::DenseNetVariant::DenseNet121, 2)
            .with_custom_backbone(densenet_burn::DenseNetConfig::custom(4, vec![1], 8, None));
        let m0 = cfg.init(&device).unwrap();
        let mut avg = WeightAverage::new(&m0, 0.5, 0);
        // Two "steps": the weights plus 1, then plus 3.
        let shift = |m: &LeukemiaClassifier, s: f32| {
            struct Add(f32);
            impl ModuleMapper for Add {
                fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
                    let s = self.0;
                    p.map(|t| t.add_scalar(s))
                }
            }
            m.valid().map(&mut Add(s))
        };
        let m1 = shift(&m0, 1.0);
        avg.update(&m1); // d = min(0.5, 1/10) = 0.1: avg = w + 0.9
        let m2 = shift(&m0, 3.0);
        avg.update(&m2); // d = min(0.5, 2/11): avg = (w + 0.9) d + (w + 3)(1 - d)
        assert_eq!(avg.updates(), 2);
        let d = 2.0f32 / 11.0;
        let want: Vec<f32> = first_weight(&m0).iter().map(|w| (w + 0.9) * d + (w + 3.0) * (1.0 - d)).collect();
        let got = first_weight(&avg.model(&m0));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        // The running statistics are averaged too; the averaged copy is an inference model.
        let rm = |m: &LeukemiaClassifier| {
            m.backbone.features.norm0.running_mean.value().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
        };
        assert!(rm(&avg.model(&m0))
            .iter()
            .zip(rm(&m0))
            .all(|(a, b)| (a - (b + 0.9 * d + 3.0 * (1.0 - d))).abs() < 1e-5));
        assert!(!avg.model(&m0).backbone.features.conv0.weight.val().device().is_autodiff());
        // The model itself is untouched.
        assert_eq!(first_weight(&m2), first_weight(&m0).iter().map(|w| w + 3.0).collect::<Vec<_>>());
    }
}
