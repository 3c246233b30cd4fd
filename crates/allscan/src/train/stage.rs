//! One training stage: a model with a frozen prefix + preprocessed crops -> trained weights,
//! one epoch at a time (shuffle or balanced draw, augment, forward, loss, Adam(W) step),
//! validation after every epoch, best-epoch tracking, early stopping and a checkpoint.

use std::time::Instant;

use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::average::WeightAverage;
use super::cache::FeatureCache;
use super::checkpoint::{self, EpochRow, TrainState};
use super::dataset::Sample;
use super::{RunLog, TrainError};
use crate::bundle::{BestEpoch, BundleMetadata};
use crate::config::{Balance, Schedule, SelectOn, StageConfig, TrainConfig};
use crate::data::batcher::{
    activations_tensor, balanced_order, batches, images_tensor, mix, rows_tensor, shuffled_order, source_class_order,
};
use crate::model::{probabilities, LeukemiaClassifier, Task, TestViews};
use densenet_burn::DenseNet;
use rand::Rng;

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
    fn pooled(
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
    /// averaged over `views` where the inputs are images.
    fn logits(
        &self,
        model: &LeukemiaClassifier,
        samples: &[Sample],
        idx: &[usize],
        views: TestViews,
        norm: &allscan_preprocess::Normalization,
        device: &Device,
    ) -> Result<Tensor<2>, TrainError> {
        if let (Inputs::Images, TestViews::Dihedral) = (self, views) {
            let crops: Vec<_> = idx.iter().map(|&i| &samples[i].crop).collect();
            return Ok(model.forward_views(images_tensor(&crops, None, norm, device), views));
        }
        Ok(model.forward_pooled(self.pooled(model, samples, idx, None, norm, device)?))
    }
}

/// What one part of a batch contributes to the step besides its gradients.
struct ShardOut {
    /// This part's share of the batch loss (summing the parts gives the batch loss).
    loss: f64,
    correct: usize,
}

/// `idx` cut into `n` contiguous parts of near-equal size (fewer when `idx` is shorter).
fn shard(idx: &[usize], n: usize) -> Vec<&[usize]> {
    let size = idx.len().div_ceil(n.max(1)).max(1);
    idx.chunks(size).collect()
}

/// A dropout mask for the head, `[n, hidden]`: 0 with probability `p`, else `1 / (1 - p)`.
fn dropout_mask(n: usize, hidden: usize, p: f64, rng: &mut ChaCha8Rng, device: &Device) -> Option<Tensor<2>> {
    if p <= 0.0 {
        return None;
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    let v: Vec<f32> = (0..n * hidden).map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep }).collect();
    Some(Tensor::from_data(TensorData::new(v, [n, hidden]), device))
}

/// One optimiser step's gradients computed in `parts` parts on parallel threads: `part(k,
/// replica)` runs part `k` forward and backward on its own replica (the same weights as
/// separate autodiff leaves, so each graph runs on its own thread, with its own BatchNorm
/// running statistics) and returns its gradients and whatever else the caller collects. The
/// gradients are summed in part order; replica 0 is returned as the model to update, so the
/// run stays deterministic. One part runs on `model` itself, on this thread.
pub fn step_in_parts<R: Send>(
    model: LeukemiaClassifier,
    parts: usize,
    part: impl Fn(usize, &LeukemiaClassifier) -> Result<(GradientsParams, R), TrainError> + Sync,
) -> Result<(LeukemiaClassifier, GradientsParams, Vec<R>), TrainError> {
    let replicas: Vec<LeukemiaClassifier> =
        if parts <= 1 { vec![model] } else { (0..parts).map(|_| model.valid().train()).collect() };
    let outs: Vec<Result<(GradientsParams, R), TrainError>> = if replicas.len() == 1 {
        vec![part(0, &replicas[0])]
    } else {
        let part = &part;
        std::thread::scope(|sc| {
            let handles: Vec<_> = replicas.iter().enumerate().map(|(k, r)| sc.spawn(move || part(k, r))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(TrainError::Internal("a training thread panicked".into()))))
                .collect()
        })
    };
    let mut acc = GradientsAccumulator::new();
    let mut rest = Vec::with_capacity(outs.len());
    for out in outs {
        let (grads, r) = out?;
        acc.accumulate(&replicas[0], grads);
        rest.push(r);
    }
    let model = replicas.into_iter().next().ok_or_else(|| TrainError::Internal("no replica".into()))?;
    Ok((model, acc.grads(), rest))
}

/// The training crops of `samples`, as [`crate::adapt::reestimate_batchnorm`] takes them.
fn crops(samples: &[Sample]) -> Vec<&image::RgbImage> {
    samples.iter().map(|s| &s.crop).collect()
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
    /// Top-1 accuracy (binary: at 0.5).
    pub accuracy: f64,
}

/// Runs `model` (inference copy) over `samples` through `inputs`, averaging `views`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &LeukemiaClassifier,
    inputs: &Inputs,
    samples: &[Sample],
    views: TestViews,
    task: Task,
    weights: &[f32],
    smoothing: f64,
    batch: usize,
    norm: &allscan_preprocess::Normalization,
    device: &Device,
) -> Result<Evaluation, TrainError> {
    let mut probs = Vec::with_capacity(samples.len());
    let (mut loss_sum, mut wsum, mut correct) = (0.0f64, 0.0f64, 0usize);
    let all: Vec<usize> = (0..samples.len()).collect();
    for idx in all.chunks(batch.max(1)) {
        let logits = inputs.logits(model, samples, idx, views, norm, device)?;
        let targets: Vec<usize> = idx.iter().map(|&i| samples[i].target).collect();
        // Unlabelled views (cell mode: the other cells of a leukemia field) are scored, not judged.
        let w: Vec<f32> = idx
            .iter()
            .zip(&targets)
            .map(|(&i, &t)| if samples[i].labelled { weights.get(t).copied().unwrap_or(1.0) } else { 0.0 })
            .collect();
        let l = read(loss(task, logits.clone(), &targets, &w, smoothing))?;
        let bw: f64 = w.iter().map(|&x| x as f64).sum();
        loss_sum += l.first().copied().unwrap_or(0.0) as f64 * bw;
        wsum += bw;
        let [b, k] = logits.dims();
        let p = read(probabilities(task, logits).reshape([b * k]))?;
        for ((row, &t), &i) in p.chunks(k).zip(&targets).zip(idx) {
            if samples[i].labelled && predicted(task, row) == t {
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
/// [`crate::infer::field_call`] over its views. One view per field gives the views' own scores.
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
    fields.into_iter().map(|(y, v)| (y, crate::infer::field_call(v).map_or(0.0, |(_, p)| p))).unzip()
}

/// Output index of one probability row (binary: 1 when p >= 0.5).
pub fn predicted(task: Task, row: &[f32]) -> usize {
    match task {
        Task::Binary => usize::from(row.first().copied().unwrap_or(0.0) >= 0.5),
        Task::Subtype { .. } => row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0),
    }
}

/// AUC of p(leukemia) (Mann-Whitney, ties count half); `None` without both labels.
pub fn auc(y: &[bool], p: &[f32]) -> Option<f64> {
    let mut v: Vec<(f32, bool)> = p.iter().copied().zip(y.iter().copied()).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (npos, nneg) = (y.iter().filter(|&&t| t).count(), y.iter().filter(|&&t| !t).count());
    if npos == 0 || nneg == 0 {
        return None;
    }
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // ranks i+1..=j
        rank_sum += avg * v[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    Some((rank_sum - (npos * (npos + 1)) as f64 / 2.0) / (npos * nneg) as f64)
}

/// Reads a tensor's values.
pub fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, TrainError> {
    t.into_data().try_to_vec::<f32>().map_err(|e| TrainError::Internal(format!("reading a tensor: {e:?}")))
}

/// Learning rate at `step` of `total` in a stage.
pub fn learning_rate(cfg: &StageConfig, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
    let warm = (cfg.warmup_epochs * steps_per_epoch as f64).round() as usize;
    if step < warm {
        return cfg.lr * (step + 1) as f64 / warm as f64;
    }
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Cosine => {
            let span = total.saturating_sub(warm).max(1) as f64;
            let t = ((step - warm) as f64 / span).min(1.0);
            cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// A fresh optimiser for a stage.
pub fn optimizer(cfg: &StageConfig, train: &TrainConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .with_epsilon(1e-8)
        .with_grad_clipping(train.clip_grad_norm.map(|n| GradientClippingConfig::Norm(n as f32)))
        .init()
}

/// Everything a stage needs besides the model.
pub struct StageRun<'a> {
    /// 1 or 2.
    pub stage: u8,
    /// This stage's settings.
    pub cfg: &'a StageConfig,
    /// The whole training tree.
    pub train: &'a TrainConfig,
    /// Run seed.
    pub seed: u64,
    /// Model head.
    pub task: Task,
    /// Training samples.
    pub train_set: &'a [Sample],
    /// Validation samples.
    pub val_set: &'a [Sample],
    /// Input normalisation.
    pub norm: &'a allscan_preprocess::Normalization,
    /// Loss weight per output class.
    pub class_weights: Vec<f32>,
    /// Number of output classes (for balanced sampling; 2 for binary).
    pub num_targets: usize,
    /// Training (autodiff) device.
    pub device: &'a Device,
    /// Inference device.
    pub infer_device: &'a Device,
    /// Metadata (class names for p(leukemia)).
    pub meta: &'a BundleMetadata,
    /// The run directory.
    pub run_dir: &'a std::path::Path,
    /// Show bars.
    pub progress: bool,
}

impl StageRun<'_> {
    /// Trains from `start_epoch` (epochs already done in this stage) to the end or an early
    /// stop, checkpointing each epoch and saving improved weights to the bundle.
    pub fn run(
        &self,
        mut model: LeukemiaClassifier,
        mut optim: ModuleOptimizer,
        inputs: &Inputs,
        state: &mut TrainState,
        log: &mut RunLog,
    ) -> Result<LeukemiaClassifier, TrainError> {
        let n = self.train_set.len();
        // An epoch draws as many views as there are fields (cell mode keeps several views of a
        // not-leukemia field; they share its draws rather than lengthen the epoch).
        let fields = super::dataset::field_count(self.train_set);
        let draws = if matches!(self.train.balance, Balance::SourceClass | Balance::Sampler) { fields } else { n };
        let steps_per_epoch = batches(&(0..draws).collect::<Vec<_>>(), self.train.batch_size).len().max(1);
        let total = steps_per_epoch * self.cfg.epochs;
        let targets: Vec<usize> = self.train_set.iter().map(|s| s.target).collect();
        let sources: Vec<&str> = self.train_set.iter().map(|s| s.source.as_deref().unwrap_or("")).collect();
        let weights = match self.train.balance {
            Balance::ClassWeights => self.class_weights.clone(),
            _ => vec![1.0; self.num_targets],
        };
        let augment = (self.cfg.augment && self.train.augment.enabled).then_some(&self.train.augment);
        let start = if state.stage == self.stage { state.epoch } else { 0 };
        // The weight average: fresh at the start of a stage, else as the checkpoint left it.
        let mut average = match (self.train.ema_decay > 0.0, start) {
            (false, _) => None,
            (true, 0) => Some(WeightAverage::new(&model, self.train.ema_decay, 0)),
            (true, _) => {
                let path = checkpoint::average_path(self.run_dir, state).ok_or_else(|| TrainError::Checkpoint {
                    path: checkpoint::dir(self.run_dir),
                    reason: "the checkpoint has no weight average to resume".into(),
                })?;
                let saved = model
                    .valid()
                    .try_load_file(&path)
                    .map_err(|e| TrainError::Checkpoint { path: path.clone(), reason: e.to_string() })?;
                Some(WeightAverage::new(&saved, self.train.ema_decay, state.average_updates))
            }
        };
        for epoch in start..self.cfg.epochs {
            let t0 = Instant::now();
            // Everything random in this epoch derives from (seed, stage, epoch): a resumed run
            // redraws exactly what the uninterrupted one drew.
            let epoch_seed = mix(&[self.seed, self.stage as u64, epoch as u64]);
            self.device.seed(epoch_seed);
            let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
            let order = match self.train.balance {
                Balance::Sampler => {
                    let mut o = balanced_order(&targets, self.num_targets, &mut rng);
                    o.truncate(draws);
                    o
                }
                Balance::SourceClass => source_class_order(&targets, &sources, self.num_targets, draws, &mut rng),
                _ => shuffled_order(n, &mut rng),
            };
            let bar = crate::progress::bar(
                steps_per_epoch as u64,
                &format!("stage {} ep {}/{}", self.stage, epoch + 1, self.cfg.epochs),
                self.progress,
            );
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            let mut lr = self.cfg.lr;
            for (b, idx) in batches(&order, self.train.batch_size).into_iter().enumerate() {
                let step = epoch * steps_per_epoch + b;
                lr = learning_rate(self.cfg, step, total, steps_per_epoch);
                let seeds: Vec<u64> = idx.iter().map(|&i| mix(&[epoch_seed, b as u64, i as u64])).collect();
                let bw_total: f64 = idx.iter().map(|&i| weights.get(targets[i]).copied().unwrap_or(1.0) as f64).sum();
                let parts = shard(idx, self.train.shards);
                let step = |k: usize,
                            replica: &LeukemiaClassifier|
                 -> Result<(GradientsParams, ShardOut), TrainError> {
                    let part = parts[k];
                    let offset: usize = parts[..k].iter().map(|p| p.len()).sum();
                    let part_seeds = &seeds[offset..offset + part.len()];
                    let pooled = inputs.pooled(
                        replica,
                        self.train_set,
                        part,
                        augment.map(|a| (a, part_seeds)),
                        self.norm,
                        self.device,
                    )?;
                    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[epoch_seed, b as u64, k as u64, 0xd1]));
                    let mask = dropout_mask(part.len(), replica.hidden(), replica.dropout.prob, &mut rng, self.device);
                    let logits = replica.forward_pooled_masked(pooled, mask); // [n, outputs]
                    let bt: Vec<usize> = part.iter().map(|&i| targets[i]).collect();
                    let bw: Vec<f32> = bt.iter().map(|&t| weights.get(t).copied().unwrap_or(1.0)).collect();
                    let share = bw.iter().map(|&w| w as f64).sum::<f64>() / bw_total.max(1e-12);
                    let l = loss(self.task, logits.clone(), &bt, &bw, self.train.label_smoothing).mul_scalar(share);
                    let [bb, k] = logits.dims();
                    let p = read(probabilities(self.task, logits.detach()).reshape([bb * k]))?;
                    let correct = p.chunks(k).zip(&bt).filter(|(row, &t)| predicted(self.task, row) == t).count();
                    let grads = GradientsParams::from_grads(l.backward(), replica);
                    let loss = read(l.detach())?.first().copied().unwrap_or(f32::NAN) as f64;
                    Ok((grads, ShardOut { loss, correct }))
                };
                let (replica, grads, outs) = step_in_parts(model, parts.len(), step)?;
                let lv: f64 = outs.iter().map(|o| o.loss).sum();
                correct += outs.iter().map(|o| o.correct).sum::<usize>();
                if !lv.is_finite() {
                    return Err(TrainError::Diverged { stage: self.stage, epoch: epoch + 1 });
                }
                loss_sum += lv * idx.len() as f64;
                seen += idx.len();
                model = optim.step(lr, replica, grads);
                if let Some(a) = &mut average {
                    a.update(&model);
                }
                bar.inc(1);
                bar.set_message(format!("loss {:.4}", loss_sum / seen.max(1) as f64));
            }
            bar.finish_and_clear();
            let recalibrate = |m: LeukemiaClassifier| match (inputs, self.train.bn_recalibration_batches) {
                (Inputs::Images, k @ 1..) => {
                    // Clean (unaugmented) training views in this epoch's order: frozen layers keep theirs.
                    let views = crops(self.train_set);
                    crate::adapt::reestimate_batchnorm(
                        m,
                        &views,
                        &order,
                        k,
                        self.train.batch_size,
                        self.norm,
                        self.device,
                    )
                }
                _ => m,
            };
            // The weights validation judges: the average when there is one (checkpointed as
            // averaged; its re-estimated statistics go to a separate copy), else the model,
            // which carries its re-estimated statistics on.
            let averaged = average.as_ref().map(|a| a.model(&model));
            let valid = match &averaged {
                Some(avg) => recalibrate(avg.clone().train()).valid(),
                None => {
                    model = recalibrate(model);
                    model.valid()
                }
            };
            // Validation: early stopping, best epoch.
            // Per-epoch validation on single views (cheap); the final threshold and test report
            // use the model's test views.
            let ev = evaluate(
                &valid,
                inputs,
                self.val_set,
                TestViews::Single,
                self.task,
                &weights,
                self.train.label_smoothing,
                self.train.eval_batch_size,
                self.norm,
                self.infer_device,
            )?;
            let pl: Vec<f32> = ev.probs.iter().map(|r| crate::bundle::p_leukemia(self.meta, r)).collect();
            let (y, pf) = field_scores(self.val_set, &pl);
            let val_auc = auc(&y, &pf);
            let better = match (&state.best, self.train.select_on) {
                (None, _) => true,
                (Some(b), SelectOn::ValLoss) => ev.loss < b.val_loss,
                (Some(b), SelectOn::ValAuc) => match (val_auc, b.val_auc) {
                    (Some(a), Some(bb)) => a > bb || (a == bb && ev.loss < b.val_loss),
                    _ => ev.loss < b.val_loss,
                },
            };
            if better {
                state.best = Some(BestEpoch {
                    stage: self.stage,
                    epoch: epoch + 1,
                    val_loss: ev.loss,
                    val_auc,
                    val_accuracy: ev.accuracy,
                });
                crate::bundle::save_weights(&valid, &self.run_dir.join(crate::bundle::WEIGHTS_FILE))?;
                state.bad_epochs = 0;
            } else {
                state.bad_epochs += 1;
            }
            let row = EpochRow {
                stage: self.stage,
                epoch: epoch + 1,
                lr,
                train_loss: loss_sum / seen.max(1) as f64,
                train_accuracy: correct as f64 / seen.max(1) as f64,
                val_loss: ev.loss,
                val_accuracy: ev.accuracy,
                val_auc,
                seconds: t0.elapsed().as_secs_f64(),
                best: better,
            };
            log.line(&format!(
                "stage {} epoch {:>2}/{}: lr {:.2e}  train loss {:.4} acc {:.3}  val loss {:.4} acc {:.3} auc {}  {:.0}s{}",
                row.stage,
                row.epoch,
                self.cfg.epochs,
                row.lr,
                row.train_loss,
                row.train_accuracy,
                row.val_loss,
                row.val_accuracy,
                row.val_auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "-".into()),
                row.seconds,
                if better { "  *best" } else { "" }
            ));
            state.history.push(row);
            state.stage = self.stage;
            state.epoch = epoch + 1;
            let stop = self.cfg.patience.is_some_and(|p| state.bad_epochs >= p);
            state.stage_done = stop || epoch + 1 == self.cfg.epochs;
            super::write_metrics(self.run_dir, &state.history)?;
            let avg = averaged.as_ref().zip(average.as_ref().map(WeightAverage::updates));
            checkpoint::save(self.run_dir, state, &model, Some(&optim), avg)?;
            if stop {
                log.line(&format!(
                    "stage {}: early stop after {} epochs without a better validation {}",
                    self.stage,
                    state.bad_epochs,
                    match self.train.select_on {
                        SelectOn::ValLoss => "loss",
                        SelectOn::ValAuc => "AUC",
                    }
                ));
                break;
            }
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn batchnorm_recalibration_averages_clean_batches() {
        use burn::module::Module;
        let device = Device::flex().autodiff();
        device.seed(2);
        let cfg = crate::model::ClassifierConfig::subtype(densenet_burn::DenseNetVariant::DenseNet121, 2)
            .with_custom_backbone(densenet_burn::DenseNetConfig::custom(4, vec![1], 8, None));
        let model = cfg.init(&device).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let samples: Vec<Sample> = (0..6)
            .map(|i| Sample {
                crop: image::RgbImage::from_fn(16, 16, |_, _| image::Rgb([rng.gen(), rng.gen(), rng.gen()])),
                target: i % 2,
                leukemia: i % 2 == 1,
                path: format!("{i}.png"),
                key: format!("{i}"),
                source: None,
                field: i,
                labelled: true,
                decides: true,
            })
            .collect();
        let norm = allscan_preprocess::Normalization { mean: [0.5; 3], std: [0.25; 3] };
        // Batches of 2 in this order; 2 batches: images 5, 3, 1, 0 (4 and 2 unused).
        let order = [5, 3, 1, 0, 4, 2];
        let model = crate::adapt::reestimate_batchnorm(model, &crops(&samples), &order, 2, 2, &norm, &device).valid();
        let got = model.backbone.features.norm0.running_mean.value().into_data().try_to_vec::<f32>().unwrap();
        // norm0 reads conv0's output: its mean over the 4 images, per channel.
        let crops: Vec<_> = [5, 3, 1, 0].iter().map(|&j| &samples[j].crop).collect();
        let x = images_tensor(&crops, None, &norm, &Device::flex());
        let stem = model.backbone.features.conv0.forward(x); // [4, 8, 8, 8]
        let want = stem.mean_dim(0).mean_dim(2).mean_dim(3).reshape([8]).into_data().try_to_vec::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "running mean {got:?} vs clean-batch mean {want:?}");
        }
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
        assert_eq!(auc(&y, &pf), Some(0.5));
    }

    #[test]
    fn auc_and_schedule() {
        assert_eq!(auc(&[false, true], &[0.1, 0.9]), Some(1.0));
        assert_eq!(auc(&[false, true], &[0.5, 0.5]), Some(0.5));
        assert_eq!(auc(&[true, true], &[0.5, 0.5]), None);
        let cfg = StageConfig {
            epochs: 10,
            lr: 1.0,
            min_lr: 0.0,
            schedule: Schedule::Cosine,
            warmup_epochs: 1.0,
            weight_decay: 0.0,
            augment: true,
            patience: None,
            unfreeze: vec![],
        };
        assert!((learning_rate(&cfg, 0, 100, 10) - 0.1).abs() < 1e-9);
        assert!((learning_rate(&cfg, 10, 100, 10) - 1.0).abs() < 1e-9);
        assert!(learning_rate(&cfg, 99, 100, 10) < 0.01);
    }
}

#[cfg(test)]
mod unfreeze_tests {
    use burn::module::Module;
    use burn::tensor::{Device, Tensor};
    use densenet_burn::{DenseNetConfig, DenseNetVariant};

    use crate::model::ClassifierConfig;

    #[test]
    fn stage_two_unfreezes_what_stage_one_froze() {
        let device = Device::flex().autodiff();
        let cfg = ClassifierConfig::binary(DenseNetVariant::DenseNet121).with_custom_backbone(DenseNetConfig::custom(
            4,
            vec![1, 1],
            8,
            None,
        ));
        let model = cfg.init(&device).unwrap().freeze_backbone().unfreeze();
        let x = Tensor::<4>::ones([2, 3, 32, 32], &device);
        let grads = model.forward(x).sum().backward();
        assert!(model.backbone.features.conv0.weight.val().grad(&grads).is_some(), "stem stayed frozen");
    }
}
