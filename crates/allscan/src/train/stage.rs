//! One training stage: a model with a frozen prefix + preprocessed crops -> trained weights,
//! one epoch at a time (shuffle or balanced draw, augment, forward, loss, Adam(W) step),
//! validation after every epoch ([`super::pass`]), best-epoch tracking, early stopping and a
//! checkpoint.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::average::WeightAverage;
use super::checkpoint::{self, EpochRow, TrainState};
use super::dataset::{Prepared, Sample};
use super::pass::{evaluate, field_scores, loss, read, Inputs, Judging, Pass};
use super::{RunLog, TrainError};
use crate::bundle::{BestEpoch, RunConfig};
use crate::config::{Balance, Schedule, SelectOn, StageConfig, TrainConfig};
use crate::data::batcher::{balanced_order, batches, mix, shuffled_order, source_class_order};
use crate::decision::Decision;
use crate::model::{probabilities, LeukemiaClassifier, TestViews};
use rand::Rng;

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

/// What the stages and the held-out report of one run share: the config tree, the prepared
/// views, the loss weights, the devices, the validation decision and the run folder.
pub struct TrainContext<'a> {
    /// The run's config tree.
    pub config: &'a RunConfig,
    /// Train / validation / test views.
    pub prepared: &'a Prepared,
    /// Loss weight per output class.
    pub class_weights: Vec<f32>,
    /// Number of output classes (for balanced sampling; 2 for binary).
    pub num_targets: usize,
    /// Training (autodiff) device.
    pub device: &'a Device,
    /// Inference device.
    pub infer_device: &'a Device,
    /// How outputs are called during training: the run's classes at threshold 0.5 (the
    /// threshold is chosen after the stages).
    pub decision: Decision,
    /// The run directory.
    pub run_dir: &'a Path,
    /// Show bars.
    pub progress: bool,
}

impl TrainContext<'_> {
    /// A pass of the inference copy over `views`, at the evaluation batch size.
    pub fn pass(&self, views: TestViews) -> Pass<'_> {
        Pass {
            views,
            batch: self.config.train.eval_batch_size,
            norm: &self.config.preprocess.normalization,
            device: self.infer_device,
        }
    }
}

/// One stage of a run: its number and settings.
pub struct StageRun<'a> {
    /// 1 or 2.
    pub stage: u8,
    /// This stage's settings.
    pub cfg: &'a StageConfig,
    /// What the run's stages share.
    pub ctx: &'a TrainContext<'a>,
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
        let ctx = self.ctx;
        let train = &ctx.config.train;
        let (train_set, val_set): (&[Sample], &[Sample]) = (&ctx.prepared.train, &ctx.prepared.val);
        let norm = &ctx.config.preprocess.normalization;
        let task = ctx.decision.task;
        let n = train_set.len();
        // An epoch draws as many views as there are fields (cell mode keeps several views of a
        // not-leukemia field; they share its draws rather than lengthen the epoch).
        let fields = super::dataset::field_count(train_set);
        let draws = if matches!(train.balance, Balance::SourceClass | Balance::Sampler) { fields } else { n };
        let steps_per_epoch = batches(&(0..draws).collect::<Vec<_>>(), train.batch_size).len().max(1);
        let total = steps_per_epoch * self.cfg.epochs;
        let targets: Vec<usize> = train_set.iter().map(|s| s.target).collect();
        let sources: Vec<&str> = train_set.iter().map(|s| s.source.as_deref().unwrap_or("")).collect();
        let weights = match train.balance {
            Balance::ClassWeights => ctx.class_weights.clone(),
            _ => vec![1.0; ctx.num_targets],
        };
        let augment = (self.cfg.augment && train.augment.enabled).then_some(&train.augment);
        let start = if state.stage == self.stage { state.epoch } else { 0 };
        // The weight average: fresh at the start of a stage, else as the checkpoint left it.
        let mut average = match (train.ema_decay > 0.0, start) {
            (false, _) => None,
            (true, 0) => Some(WeightAverage::new(&model, train.ema_decay, 0)),
            (true, _) => {
                let path = checkpoint::average_path(ctx.run_dir, state).ok_or_else(|| TrainError::Checkpoint {
                    path: checkpoint::dir(ctx.run_dir),
                    reason: "the checkpoint has no weight average to resume".into(),
                })?;
                let saved = model
                    .valid()
                    .try_load_file(&path)
                    .map_err(|e| TrainError::Checkpoint { path: path.clone(), reason: e.to_string() })?;
                Some(WeightAverage::new(&saved, train.ema_decay, state.average_updates))
            }
        };
        for epoch in start..self.cfg.epochs {
            let t0 = Instant::now();
            // Everything random in this epoch derives from (seed, stage, epoch): a resumed run
            // redraws exactly what the uninterrupted one drew.
            let epoch_seed = mix(&[ctx.config.seed, self.stage as u64, epoch as u64]);
            ctx.device.seed(epoch_seed);
            let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
            let order = match train.balance {
                Balance::Sampler => {
                    let mut o = balanced_order(&targets, ctx.num_targets, &mut rng);
                    o.truncate(draws);
                    o
                }
                Balance::SourceClass => source_class_order(&targets, &sources, ctx.num_targets, draws, &mut rng),
                _ => shuffled_order(n, &mut rng),
            };
            let bar = crate::progress::bar(
                steps_per_epoch as u64,
                &format!("stage {} ep {}/{}", self.stage, epoch + 1, self.cfg.epochs),
                ctx.progress,
            );
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            let mut lr = self.cfg.lr;
            for (b, idx) in batches(&order, train.batch_size).into_iter().enumerate() {
                let step = epoch * steps_per_epoch + b;
                lr = learning_rate(self.cfg, step, total, steps_per_epoch);
                let seeds: Vec<u64> = idx.iter().map(|&i| mix(&[epoch_seed, b as u64, i as u64])).collect();
                let bw_total: f64 = idx.iter().map(|&i| weights.get(targets[i]).copied().unwrap_or(1.0) as f64).sum();
                let parts = shard(idx, train.shards);
                let step = |k: usize,
                            replica: &LeukemiaClassifier|
                 -> Result<(GradientsParams, ShardOut), TrainError> {
                    let part = parts[k];
                    let offset: usize = parts[..k].iter().map(|p| p.len()).sum();
                    let part_seeds = &seeds[offset..offset + part.len()];
                    let pooled =
                        inputs.pooled(replica, train_set, part, augment.map(|a| (a, part_seeds)), norm, ctx.device)?;
                    let mut rng = ChaCha8Rng::seed_from_u64(mix(&[epoch_seed, b as u64, k as u64, 0xd1]));
                    let mask = dropout_mask(part.len(), replica.hidden(), replica.dropout.prob, &mut rng, ctx.device);
                    let logits = replica.forward_pooled_masked(pooled, mask); // [n, outputs]
                    let bt: Vec<usize> = part.iter().map(|&i| targets[i]).collect();
                    let bw: Vec<f32> = bt.iter().map(|&t| weights.get(t).copied().unwrap_or(1.0)).collect();
                    let share = bw.iter().map(|&w| w as f64).sum::<f64>() / bw_total.max(1e-12);
                    let l = loss(task, logits.clone(), &bt, &bw, train.label_smoothing).mul_scalar(share);
                    let [bb, k] = logits.dims();
                    let p = read(probabilities(task, logits.detach()).reshape([bb * k]))?;
                    let correct =
                        p.chunks(k).zip(&bt).filter(|(row, &t)| ctx.decision.predicted_class(row) == t).count();
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
            let recalibrate = |m: LeukemiaClassifier| match (inputs, train.bn_recalibration_batches) {
                (Inputs::Images, k @ 1..) => {
                    // Clean (unaugmented) training views in this epoch's order: frozen layers keep theirs.
                    let views = crops(train_set);
                    crate::adapt::reestimate_batchnorm(m, &views, &order, k, train.batch_size, norm, ctx.device)
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
            let pass = ctx.pass(TestViews::Single);
            let judging = Judging { decision: &ctx.decision, weights: &weights, smoothing: train.label_smoothing };
            let ev = evaluate(&valid, inputs, val_set, &pass, &judging)?;
            let pl: Vec<f32> = ev.probs.iter().map(|r| ctx.decision.p_leukemia(r)).collect();
            let (y, pf) = field_scores(val_set, &pl);
            let val_auc = crate::eval::roc_auc(&y, &pf.into_iter().map(f64::from).collect::<Vec<_>>());
            let better = match (&state.best, train.select_on) {
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
                crate::bundle::save_weights(&valid, &ctx.run_dir.join(crate::bundle::WEIGHTS_FILE))?;
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
            super::write_metrics(ctx.run_dir, &state.history)?;
            let avg = averaged.as_ref().zip(average.as_ref().map(WeightAverage::updates));
            checkpoint::save(ctx.run_dir, state, &model, Some(&optim), avg)?;
            if stop {
                log.line(&format!(
                    "stage {}: early stop after {} epochs without a better validation {}",
                    self.stage,
                    state.bad_epochs,
                    match train.select_on {
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
    use crate::data::batcher::images_tensor;

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
    fn cosine_schedule_with_warmup() {
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
