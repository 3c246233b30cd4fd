//! Training's forward passes without an optimiser step: what the trainable part reads
//! ([`Inputs`]), the loss, and a validation or test pass over samples -> probabilities, loss,
//! accuracy, and the per-field scores of the one field rule.

use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Tensor, TensorData};
use densenet_burn::DenseNet;

use super::cache::FeatureCache;
use super::dataset::Sample;
use super::TrainError;
use crate::data::batcher::{activations_tensor, images_tensor, rows_tensor};
use crate::decision::{field_call, Decision};
use crate::model::{probabilities, LeukemiaClassifier, Task, TestViews};

/// What the trainable part of the model reads.
pub enum Inputs {
    /// Crops, through the whole network (augmented if the stage says so).
    Images,
    /// Cached pooled backbone features `[C]` (stage 1, deterministic view): head only.
    Pooled(FeatureCache),
    /// Cached activations entering dense block `block` (stage 2, deterministic view).
    Activations(usize, FeatureCache),
}

impl Inputs {
    /// Pooled backbone features `[B, C]` for the samples `idx` of `samples`: what the head reads.
    pub(super) fn pooled(
        &self,
        model: &LeukemiaClassifier,
        samples: &[Sample],
        idx: &[usize],
        augment: Option<(&crate::data::augment::AugmentConfig, &[u64])>,
        norm: &allscan_preprocess::Normalization,
        device: &Device,
    ) -> Result<Tensor<2>, TrainError> {
        let missing = |s: &Sample| TrainError::Internal(format!("{} is not in the feature cache", s.path));
        fn cached<'c>(
            cache: &'c FeatureCache,
            samples: &[Sample],
            idx: &[usize],
            missing: impl Fn(&Sample) -> TrainError,
        ) -> Result<Vec<&'c [f32]>, TrainError> {
            idx.iter().map(|&i| cache.get(&samples[i].key).ok_or_else(|| missing(&samples[i]))).collect()
        }
        Ok(match self {
            Inputs::Images => {
                let crops: Vec<_> = idx.iter().map(|&i| &samples[i].crop).collect();
                DenseNet::pool(model.forward_features(images_tensor(&crops, augment, norm, device)))
                // [B, C]
            }
            Inputs::Pooled(cache) => rows_tensor(&cached(cache, samples, idx, missing)?, device), // [B, C]
            Inputs::Activations(block, cache) => {
                let shape = [cache.shape[0], cache.shape[1], cache.shape[2]];
                let act = activations_tensor(&cached(cache, samples, idx, missing)?, shape, device); // [B, C, h, w]
                DenseNet::pool(model.backbone.forward_from(*block, act)) // [B, C']
            }
        })
    }

    /// Logits `[B, outputs]` of the inference copy `model` (no augmentation, no dropout),
    /// averaged over `pass.views` where the inputs are images.
    fn logits(
        &self,
        model: &LeukemiaClassifier,
        samples: &[Sample],
        idx: &[usize],
        pass: &Pass,
    ) -> Result<Tensor<2>, TrainError> {
        if let (Inputs::Images, TestViews::Dihedral) = (self, pass.views) {
            let crops: Vec<_> = idx.iter().map(|&i| &samples[i].crop).collect();
            return Ok(model.forward_views(images_tensor(&crops, None, pass.norm, pass.device), pass.views));
        }
        Ok(model.forward_pooled(self.pooled(model, samples, idx, None, pass.norm, pass.device)?))
    }
}

/// Weighted, label-smoothed loss, mean over the batch: BCE on the logit for binary,
/// cross-entropy on the softmax for subtypes. `logits`: `[B, outputs]`.
pub fn loss(task: Task, logits: Tensor<2>, targets: &[usize], weights: &[f32], smoothing: f64) -> Tensor<1> {
    let device = logits.device();
    let [b, k] = logits.dims();
    let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [b]), &device);
    let wsum = weights.iter().sum::<f32>().max(1e-12);
    let per = match task {
        Task::Binary => {
            let z = logits.reshape([b]); // [B]
            let s = smoothing as f32;
            let y: Vec<f32> = targets.iter().map(|&t| (t as f32) * (1.0 - s) + 0.5 * s).collect();
            let y = Tensor::<1>::from_data(TensorData::new(y, [b]), &device);
            // log(1 + e^z) - y z, stable: relu(z) - y z + log(1 + e^-|z|).
            relu(z.clone()) - z.clone() * y + z.abs().neg().exp().log1p()
        }
        Task::Subtype { .. } => {
            let s = smoothing as f32;
            let mut t = vec![s / k as f32; b * k];
            for (i, &c) in targets.iter().enumerate() {
                t[i * k + c.min(k - 1)] += 1.0 - s;
            }
            let t = Tensor::<2>::from_data(TensorData::new(t, [b, k]), &device);
            (log_softmax(logits, 1) * t).sum_dim(1).reshape([b]).neg() // [B]
        }
    };
    (per * w).sum().div_scalar(wsum)
}
/// Validation (or test) outputs of a model in inference mode.
pub struct Evaluation {
    /// Output probabilities per image (`[1]` binary, `[K]` subtype).
    pub probs: Vec<Vec<f32>>,
    /// Mean (weighted like training) loss.
    pub loss: f64,
    /// Top-1 accuracy (binary: at the decision's threshold, 0.5 in training).
    pub accuracy: f64,
}

/// How a validation or test pass runs the model: the views it averages, the batch size, the
/// input normalisation and the (inference) device.
pub struct Pass<'a> {
    /// Views averaged per image.
    pub views: TestViews,
    /// Images per forward pass.
    pub batch: usize,
    /// Input normalisation.
    pub norm: &'a allscan_preprocess::Normalization,
    /// Inference device.
    pub device: &'a Device,
}

/// How a pass's outputs are judged: the loss (its class weights and label smoothing, as in
/// training) and the accuracy (the decision's predicted class; binary: at its threshold).
pub struct Judging<'a> {
    /// The head, classes and threshold.
    pub decision: &'a Decision,
    /// Loss weight per output class.
    pub weights: &'a [f32],
    /// Label smoothing of the loss.
    pub smoothing: f64,
}

/// Runs `model` (inference copy) over `samples` through `inputs` as `pass` says, judged by `judging`.
pub fn evaluate(
    model: &LeukemiaClassifier,
    inputs: &Inputs,
    samples: &[Sample],
    pass: &Pass,
    judging: &Judging,
) -> Result<Evaluation, TrainError> {
    let task = judging.decision.task;
    let mut probs = Vec::with_capacity(samples.len());
    let (mut loss_sum, mut wsum, mut correct) = (0.0f64, 0.0f64, 0usize);
    let all: Vec<usize> = (0..samples.len()).collect();
    for idx in all.chunks(pass.batch.max(1)) {
        let logits = inputs.logits(model, samples, idx, pass)?;
        let targets: Vec<usize> = idx.iter().map(|&i| samples[i].target).collect();
        // Unlabelled views (cell mode: the other cells of a leukemia field) are scored, not judged.
        let w: Vec<f32> = idx
            .iter()
            .zip(&targets)
            .map(|(&i, &t)| if samples[i].labelled { judging.weights.get(t).copied().unwrap_or(1.0) } else { 0.0 })
            .collect();
        let l = read(loss(task, logits.clone(), &targets, &w, judging.smoothing))?;
        let bw: f64 = w.iter().map(|&x| x as f64).sum();
        loss_sum += l.first().copied().unwrap_or(0.0) as f64 * bw;
        wsum += bw;
        let [b, k] = logits.dims();
        let p = read(probabilities(task, logits).reshape([b * k]))?;
        for ((row, &t), &i) in p.chunks(k).zip(&targets).zip(idx) {
            if samples[i].labelled && judging.decision.predicted_class(row) == t {
                correct += 1;
            }
            probs.push(row.to_vec());
        }
    }
    let labelled = samples.iter().filter(|s| s.labelled).count();
    Ok(Evaluation {
        probs,
        loss: if wsum > 0.0 { loss_sum / wsum } else { 0.0 },
        accuracy: correct as f64 / labelled.max(1) as f64,
    })
}

/// Per field (in order of first appearance): its label and its call's p_leukemia, the
/// [`crate::decision::field_call`] over its views. One view per field gives the views' own scores.
pub fn field_scores(samples: &[Sample], p_leukemia: &[f32]) -> (Vec<bool>, Vec<f32>) {
    // (label, views) per field, in order of first appearance.
    let mut slot: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut fields: Vec<(bool, Vec<(f32, bool)>)> = Vec::new();
    for (s, &p) in samples.iter().zip(p_leukemia) {
        let k = *slot.entry(s.field).or_insert_with(|| {
            fields.push((s.leukemia, Vec::new()));
            fields.len() - 1
        });
        fields[k].1.push((p, s.decides));
    }
    fields.into_iter().map(|(y, v)| (y, field_call(v).map_or(0.0, |(_, p)| p))).unzip()
}

/// Reads a tensor's values.
pub fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, TrainError> {
    t.into_data().try_to_vec::<f32>().map_err(|e| TrainError::Internal(format!("reading a tensor: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::roc_auc;

    #[test]
    fn losses_match_hand_computed_values() {
        let d = Device::flex();
        let z = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 2.0], [2, 1]), &d);
        let l = read(loss(Task::Binary, z, &[1, 0], &[1.0, 1.0], 0.0)).unwrap()[0];
        let want = ((2f32).ln() + (1.0 + 2f32.exp()).ln()) / 2.0;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        let z = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0, 0.0], [1, 3]), &d);
        let l = read(loss(Task::Subtype { num_classes: 3 }, z, &[2], &[2.0], 0.0)).unwrap()[0];
        assert!((l - 3f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn fields_are_called_by_their_most_suspicious_deciding_cell() {
        let s = |field: usize, leukemia: bool, labelled: bool, decides: bool| Sample {
            crop: image::RgbImage::new(1, 1),
            target: usize::from(leukemia),
            leukemia,
            path: format!("{field}.png"),
            key: format!("{field}"),
            source: None,
            field,
            labelled,
            decides,
        };
        // Field 7 (healthy): its second cell is the suspicious one; field 3 (leukemia): the
        // flagged cell (0.99) may not decide while a deciding one exists; field 5: a lone
        // flagged cell still decides.
        let samples = [
            s(7, false, true, true),
            s(3, true, true, true),
            s(7, false, true, true),
            s(3, true, false, false),
            s(3, true, false, true),
            s(5, false, true, false),
        ];
        let p = [0.1, 0.4, 0.8, 0.99, 0.6, 0.3];
        let (y, pf) = field_scores(&samples, &p);
        assert_eq!(y, vec![false, true, false]);
        assert_eq!(pf, vec![0.8, 0.6, 0.3]);
        // The per-field AUC sees the healthy field's worst cell above the leukemia field.
        let pf: Vec<f64> = pf.into_iter().map(f64::from).collect();
        assert_eq!(roc_auc(&y, &pf), Some(0.5));
        assert_eq!(roc_auc(&[false, true], &[0.5, 0.5]), Some(0.5));
        assert_eq!(roc_auc(&[true, true], &[0.5, 0.5]), None);
    }
}
