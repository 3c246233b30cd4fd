//! Training stage: a dataset folder (+ optional split) -> a run bundle ([`crate::bundle`]).
//!
//! Stage 1 trains the head on a frozen backbone; with a deterministic view the backbone's
//! pooled features are computed once ([`cache`]) and only the head runs per epoch. Stage 2
//! unfreezes the chosen blocks ([`config::parse_unfreeze`]) at a lower rate with early
//! stopping; with a deterministic view the activation entering the first unfrozen block is
//! cached instead. The best epoch (validation loss or AUC) is kept; the decision threshold is
//! chosen on validation; the test part is only reported. Every epoch is checkpointed
//! ([`checkpoint`]) and `--resume` reproduces an uninterrupted run exactly.

pub mod average;
pub mod cache;
pub mod checkpoint;
pub mod dataset;
pub mod pass;
mod plan;
mod report;
pub mod stage;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

pub use crate::config::{
    apply_overrides, parse_unfreeze, Balance, ConfigError, Override, Profile, ProfileDefaults, Schedule, SelectOn,
    StageConfig, TaskKind, TrainConfig, Unfrozen, WeightsSource,
};

use crate::bundle::{BundleError, RunBundle, RunConfig, CONFIG_FILE, LOG_FILE, METRICS_FILE, SPLIT_FILE, WEIGHTS_FILE};
use crate::data::{DataError, SplitConfig};
use crate::decision::Decision;
use crate::device::{DeviceError, DeviceKind};
use crate::model::{LeukemiaClassifier, ModelError};
use checkpoint::{EpochRow, TrainState};
use pass::Inputs;
use plan::{plan, Plan};
use stage::{StageRun, TrainContext};

/// Errors of the training stage.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Settings that cannot train.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The dataset cannot train this task (empty class, missing labels, ...).
    #[error("{path}: {reason}")]
    Dataset {
        /// The dataset folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Indexing or splitting failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The output folder cannot take this run.
    #[error("{path}: {reason}")]
    Output {
        /// The run folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The dataset's classes cannot be called by this head.
    #[error(transparent)]
    Decision(#[from] crate::decision::DecisionError),
    /// Reading or writing the bundle failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The model could not be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The ImageNet starting weights could not be fetched or imported.
    #[error("starting weights: {0}")]
    Weights(#[from] crate::weights::WeightsError),
    /// A starting-weights file could not be read into the backbone.
    #[error("starting weights {path}: {source}")]
    WeightsFile {
        /// The file given.
        path: PathBuf,
        /// Why it could not be loaded (boxed: it carries key lists).
        source: Box<densenet_burn::DenseNetError>,
    },
    /// A checkpoint part of an interrupted run could not be read back to resume it.
    #[error("resuming from {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What Burn reported.
        reason: String,
    },
    /// The device is not available.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The loss became NaN or infinite.
    #[error("stage {stage} epoch {epoch}: the loss is not finite (learning rate too high?)")]
    Diverged {
        /// Stage.
        stage: u8,
        /// Epoch.
        epoch: usize,
    },
    /// A bug, not bad input.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What `allscan train` asks for: a profile's defaults for the task, changed by `overrides`.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// Dataset folder.
    pub data: PathBuf,
    /// Run folder to write.
    pub out: PathBuf,
    /// Binary or subtype.
    pub task: TaskKind,
    /// Defaults.
    pub profile: Profile,
    /// Split file (`allscan data split`); otherwise one is made with `seed`.
    pub split: Option<PathBuf>,
    /// Fractions of the split made when no `split` is given (`None`: 20% test, 10% val).
    pub split_config: Option<SplitConfig>,
    /// `--map` label map.
    pub map: Option<String>,
    /// Changes to the profile's model, preprocessing, training and starting weights: the
    /// typed flags (`--epochs`, `--input-size`, ...) and `--set KEY=VALUE`, all applied by
    /// [`apply_overrides`] in the order it states.
    pub overrides: Vec<Override>,
    /// Seed of everything random.
    pub seed: u64,
    /// Compute device.
    pub device: DeviceKind,
    /// Continue an interrupted run in `out`.
    pub resume: bool,
    /// Progress bars (on a terminal).
    pub progress: bool,
    /// Print the per-epoch lines to stdout (they always go to `train.log`).
    pub echo: bool,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The written bundle.
    pub bundle: RunBundle,
    /// Files skipped (unreadable or unusable): `(path, reason)`.
    pub skipped: Vec<(String, String)>,
    /// Wall-clock seconds of the whole command.
    pub seconds: f64,
    /// Whether it continued an interrupted run.
    pub resumed: bool,
}

/// `train.log` plus optional echo to stdout; lines before the run folder exists are buffered.
pub struct RunLog {
    file: Option<std::fs::File>,
    pending: Vec<String>,
    echo: bool,
}

impl RunLog {
    fn new(echo: bool) -> Self {
        Self { file: None, pending: Vec::new(), echo }
    }

    fn open(&mut self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(LOG_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| BundleError::Io { path: path.clone(), source })?;
        for l in self.pending.drain(..) {
            let _ = writeln!(f, "{l}");
        }
        self.file = Some(f);
        Ok(())
    }

    /// Logs one line.
    pub fn line(&mut self, s: &str) {
        if self.echo {
            println!("{s}");
        }
        match &mut self.file {
            Some(f) => {
                let _ = writeln!(f, "{s}");
            }
            None => self.pending.push(s.to_string()),
        }
    }
}

/// Rewrites `metrics.csv` (atomically) from the epoch history.
pub fn write_metrics(dir: &Path, rows: &[EpochRow]) -> Result<(), TrainError> {
    let path = dir.join(METRICS_FILE);
    let io = |source| BundleError::Io { path: path.clone(), source };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(EpochRow::COLUMNS).map_err(|e| io(e.into()))?;
    for r in rows {
        w.write_record(r.record()).map_err(|e| io(e.into()))?;
    }
    let bytes = w.into_inner().map_err(|e| io(e.into_error()))?;
    crate::fsutil::write_atomic(&path, &bytes).map_err(io)?;
    Ok(())
}

/// Trains a run end to end (or resumes one) and writes its bundle.
pub fn train(req: &TrainRequest) -> Result<TrainOutcome, TrainError> {
    let t0 = Instant::now();
    let mut log = RunLog::new(req.echo);
    let plan = plan(req, &mut log)?;
    let out = &req.out;
    // The output folder: a fresh one, or a resumable one with the same config.
    let mut state = if req.resume {
        let stored_path = out.join(CONFIG_FILE);
        let stored: RunConfig = crate::bundle::read_json(&stored_path)
            .map_err(|e| TrainError::Output { path: out.clone(), reason: format!("nothing to resume ({e})") })?;
        let diff = config_diff(&stored, &plan.config);
        if !diff.is_empty() {
            return Err(TrainError::Output {
                path: out.clone(),
                reason: format!(
                    "--resume with a different config than the run's config.json (differs in: {}); \
                     use the same options or a new --out",
                    diff.join(", ")
                ),
            });
        }
        checkpoint::load_state(out)?
    } else {
        if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
            return Err(TrainError::Output {
                path: out.clone(),
                reason: "already exists and is not empty; pass --resume to continue it or choose another --out".into(),
            });
        }
        None
    };
    let resumed = state.is_some();
    std::fs::create_dir_all(out).map_err(|source| BundleError::Io { path: out.clone(), source })?;
    log.open(out)?;
    if !req.resume {
        crate::bundle::write_json(&out.join(CONFIG_FILE), &plan.config)?;
        plan.split.save(&out.join(SPLIT_FILE))?;
    }
    match &state {
        Some(s) => log.line(&format!("resuming after stage {} epoch {}", s.stage, s.epoch)),
        None if req.resume => log.line("no checkpoint yet: starting from the beginning"),
        None => {}
    }
    let precision = plan.config.train.precision;
    if precision == densenet_burn::bf16::Precision::Bf16 {
        log.line(if densenet_burn::bf16::available() {
            "convolution gemms in bf16 on the AMX tile unit (fp32 accumulation)"
        } else {
            "train.precision = bf16, but this CPU / OS has no AMX-BF16: fp32"
        });
    }
    let result = run(req, &plan, &mut state, &mut log);
    let bundle = result?;
    let seconds = t0.elapsed().as_secs_f64();
    log.line(&format!("done in {seconds:.0} s: {}", out.display()));
    Ok(TrainOutcome { bundle, skipped: plan.prepared.skipped.clone(), seconds, resumed })
}

/// Dotted names of the config fields that differ (for the resume error).
fn config_diff(a: &RunConfig, b: &RunConfig) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, depth: usize, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) if depth < 3 => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    match (x.get(k), y.get(k)) {
                        (Some(p), Some(q)) => walk(&name, p, q, depth + 1, out),
                        _ => out.push(name),
                    }
                }
            }
            _ if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let (Ok(x), Ok(y)) = (serde_json::to_value(a), serde_json::to_value(b)) else {
        return vec!["(unreadable)".into()];
    };
    let mut out = Vec::new();
    walk("", &x, &y, 0, &mut out);
    out
}

/// The model at the start of the run: starting weights or a seeded random init.
fn initial_model(cfg: &RunConfig, device: &Device) -> Result<LeukemiaClassifier, TrainError> {
    device.seed(crate::data::batcher::mix(&[cfg.seed, 0xD1CE]));
    match &cfg.weights {
        WeightsSource::None => Ok(cfg.model.init(device)?),
        WeightsSource::Imagenet => {
            let variant = cfg.model.backbone.variant().ok_or_else(|| {
                TrainError::Config(ConfigError("ImageNet weights exist only for torchvision variants".into()))
            })?;
            let dir = crate::weights::cache_dir()?;
            let backbone = crate::weights::load_backbone(&dir, variant, device)?;
            Ok(cfg.model.init_with_backbone(backbone, device)?)
        }
        WeightsSource::Path(p) => {
            let path = Path::new(p);
            let dn = cfg.model.backbone.densenet();
            let backbone = if p.ends_with(".pth") || p.ends_with(".pt") {
                densenet_burn::weights::load_torchvision(&dn, path, device).map(|(m, _)| m)
            } else {
                densenet_burn::weights::load_burnpack(&dn, path, device)
            }
            .map_err(|e| TrainError::WeightsFile { path: path.to_path_buf(), source: Box::new(e) })?;
            Ok(cfg.model.init_with_backbone(backbone, device)?)
        }
    }
}

fn load_weights(cfg: &RunConfig, path: &Path, device: &Device) -> Result<LeukemiaClassifier, TrainError> {
    let model = cfg.model.init(device)?;
    model.try_load_file(path).map_err(|e| {
        TrainError::Bundle(BundleError::Model {
            path: path.to_path_buf(),
            source: ModelError::Record { path: path.to_path_buf(), reason: format!("{e}") },
        })
    })
}

/// The stages, the threshold, the held-out report and the bundle.
fn run(
    req: &TrainRequest,
    plan: &Plan,
    state: &mut Option<TrainState>,
    log: &mut RunLog,
) -> Result<RunBundle, TrainError> {
    let cfg = &plan.config;
    let out = &req.out;
    // `train.precision` holds for the training stages only.
    let precision = densenet_burn::bf16::scoped(cfg.train.precision);
    let infer = crate::device::device(req.device)?;
    let ad = infer.clone().autodiff();
    let task = cfg.model.task;
    let p = &plan.prepared;
    let targets: Vec<usize> = p.train.iter().map(|s| s.target).collect();
    let ctx = TrainContext {
        config: cfg,
        prepared: p,
        class_weights: crate::data::batcher::class_weights(&targets, plan.num_targets),
        num_targets: plan.num_targets,
        device: &ad,
        infer_device: &infer,
        decision: Decision::new(task, plan.class_names.clone(), plan.leukemia_classes.clone(), 0.5)?,
        run_dir: out,
        progress: req.progress,
    };
    let mut st = state.take().unwrap_or(TrainState {
        stage: 0,
        epoch: 0,
        stage_done: true,
        bad_epochs: 0,
        best: None,
        history: Vec::new(),
        dir: String::new(),
        average_updates: 0,
    });
    let mut model = match st.stage {
        0 => initial_model(cfg, &ad)?,
        _ => load_weights(cfg, &checkpoint::model_path(out, &st), &ad)?,
    };
    log.line(&format!(
        "model: {} with a {}-output head, {} parameters; device {}",
        cfg.model.backbone.describe(),
        task.num_outputs(),
        model.num_params(),
        req.device
    ));
    let num_blocks = cfg.model.backbone.densenet().block_config.len();
    // Stage 1: head only on the frozen backbone.
    let s1 = &cfg.train.stage1;
    let stage1_pending = s1.epochs > 0 && (st.stage == 0 || (st.stage == 1 && !st.stage_done));
    if stage1_pending {
        let frozen = model.freeze_backbone();
        let inputs = if s1.augment && cfg.train.augment.enabled {
            log.line("stage 1: head on the frozen backbone, augmented views (no feature cache)");
            Inputs::Images
        } else {
            let t = Instant::now();
            let valid = frozen.valid();
            let cache = build_cache(&ctx, &valid, "pooled", &|x| {
                flat(densenet_burn::DenseNet::pool(valid.forward_features(x))) // [B, C]
            })?;
            log.line(&format!(
                "stage 1: head on cached backbone features ({} images x {:?}, {:.1} MB, {:.1} s)",
                cache.len(),
                cache.shape,
                cache.bytes() as f64 / 1e6,
                t.elapsed().as_secs_f64()
            ));
            Inputs::Pooled(cache)
        };
        let mut optim = stage::optimizer(s1, &cfg.train);
        if st.stage == 1 {
            if let Some(path) = checkpoint::optim_path(out, &st) {
                optim = optim
                    .load(&path)
                    .map_err(|e| TrainError::Checkpoint { path: path.clone(), reason: e.to_string() })?;
            }
        }
        if st.stage == 0 {
            st.stage = 1;
            st.epoch = 0;
            st.stage_done = false;
        }
        model = StageRun { stage: 1, cfg: s1, ctx: &ctx }.run(frozen, optim, &inputs, &mut st, log)?;
        st.bad_epochs = 0;
    }
    // Stage 2: the chosen blocks + head.
    let s2 = &cfg.train.stage2;
    let stage2_pending = s2.epochs > 0 && !(st.stage == 2 && st.stage_done);
    if stage2_pending {
        if st.stage != 2 {
            st.stage = 2;
            st.epoch = 0;
            st.stage_done = false;
            st.bad_epochs = 0;
        }
        let unfrozen = parse_unfreeze(&s2.unfreeze, num_blocks)?;
        let model2 = match unfrozen {
            Unfrozen::All => model.unfreeze(),
            Unfrozen::From(k) => model.unfreeze().freeze_backbone_until(k),
        };
        let inputs = match unfrozen {
            Unfrozen::From(k) if !(s2.augment && cfg.train.augment.enabled) => {
                let valid = model2.valid();
                let cache = build_cache(&ctx, &valid, &format!("block{k}"), &|x| {
                    flat(valid.forward_until(x, k)) // [B, C_k, h, w]
                })?;
                log.line(&format!(
                    "stage 2: training from dense block {} on cached activations ({:.1} MB)",
                    k + 1,
                    cache.bytes() as f64 / 1e6
                ));
                Inputs::Activations(k, cache)
            }
            _ => {
                log.line(&format!("stage 2: training {} on augmented views", s2.unfreeze.join(",")));
                Inputs::Images
            }
        };
        let mut optim = stage::optimizer(s2, &cfg.train);
        if st.epoch > 0 {
            if let Some(path) = checkpoint::optim_path(out, &st) {
                optim = optim
                    .load(&path)
                    .map_err(|e| TrainError::Checkpoint { path: path.clone(), reason: e.to_string() })?;
            }
        }
        model = StageRun { stage: 2, cfg: s2, ctx: &ctx }.run(model2, optim, &inputs, &mut st, log)?;
    }
    drop(precision);
    // The best epoch's weights, the threshold on validation, the held-out report, all scored in
    // the fp32 that `eval` and `predict` use.
    let best_path = out.join(WEIGHTS_FILE);
    if !best_path.is_file() {
        crate::bundle::save_weights(&model, &best_path)?;
    }
    let best = load_weights(cfg, &best_path, &infer)?.for_inference();
    let (threshold, rule) = report::choose_threshold(&ctx, &best, log)?;
    let test = report::held_out(&ctx, &best, threshold, log)?;
    let meta = report::metadata(plan, threshold, rule, st.best.clone(), test);
    let bundle = RunBundle::create(out, cfg.clone(), meta)?;
    write_metrics(out, &st.history)?;
    if let Some(b) = &st.best {
        log.line(&format!(
            "best: stage {} epoch {} (val loss {:.4}, val acc {:.4}, val auc {}); threshold {:.4}",
            b.stage,
            b.epoch,
            b.val_loss,
            b.val_accuracy,
            b.val_auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "-".into()),
            threshold
        ));
    }
    Ok(bundle)
}

/// Runs the frozen part of `valid` (`frozen`) once over the deterministic training and
/// validation views and keeps its outputs, keyed by the backbone weights, `what` and the view.
fn build_cache(
    ctx: &TrainContext,
    valid: &LeukemiaClassifier,
    what: &str,
    frozen: &dyn Fn(Tensor<4>) -> (Vec<f32>, Vec<usize>),
) -> Result<cache::FeatureCache, TrainError> {
    let (cfg, p) = (ctx.config, ctx.prepared);
    let key = cache_key(valid, cfg, what)?;
    let bar = crate::progress::bar((p.train.len() + p.val.len()) as u64, "caching", ctx.progress);
    let norm = &cfg.preprocess.normalization;
    let batch = cfg.train.eval_batch_size;
    let cache = cache::FeatureCache::build(&[&p.train, &p.val], batch, norm, ctx.infer_device, key, frozen, &|n| {
        bar.inc(n as u64)
    });
    bar.finish_and_clear();
    Ok(cache)
}

/// A tensor's values and shape, for the feature cache.
fn flat<const D: usize>(t: Tensor<D>) -> (Vec<f32>, Vec<usize>) {
    let dims = t.dims().to_vec();
    (pass::read(t).unwrap_or_default(), dims)
}

/// Cache key from the frozen model's weights and the view settings.
fn cache_key(valid: &LeukemiaClassifier, cfg: &RunConfig, what: &str) -> Result<String, TrainError> {
    let bytes = valid.backbone.clone().into_record().into_bytes().map_err(|e| TrainError::Internal(format!("{e}")))?;
    let view = serde_json::to_string(&cfg.preprocess).unwrap_or_default();
    Ok(cache::key(&bytes, &format!("{what}:{view}")))
}
