//! Training settings: the `train` part of a run's config tree ([`TrainConfig`]) and the
//! profiles that fill the whole tree ([`Profile`]): `paper` (the seed's README: DenseNet201 at
//! 224 px, ImageNet weights, head then fine-tune), `seed-code` (the seed authors' published
//! script: H, S and a zero channel at 64 px, frozen DenseNet201, 4-class softmax), `cpu` (a
//! slim DenseNet on the whole field, from scratch, sized for 2 CPU cores) and `cell`; and the
//! one path by which the command line changes them ([`overrides`]: typed flags and `--set`).

pub mod overrides;

use allscan_preprocess::{InputChannels, Normalization, PreprocessConfig, SegmentMode};
use densenet_burn::{DenseNetConfig, DenseNetVariant};
use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::model::{BackboneConfig, ClassifierConfig, Task, TestViews};
pub use overrides::{apply_overrides, Origin, Override};

/// Settings that cannot train (or an unknown name of a profile, task or weights source).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid training settings: {0}")]
pub struct ConfigError(pub String);

/// A named set of defaults for the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// What reaches the quality goals on 2 CPU cores without pretrained weights.
    Cpu,
    /// The seed: DenseNet201, 224 px, ImageNet weights, both stages.
    Paper,
    /// Every white cell at one physical scale (grey, background removed), a slim DenseNet
    /// from scratch, trained on several sources at once: the cross-lab model.
    Cell,
    /// The seed authors' published script (`cnn_hsv_org.py`): H and S of OpenCV's HSV plus a
    /// zero channel at 64 px, frozen ImageNet DenseNet201, Dense(128)-Dropout(0.5)-softmax
    /// over the 4 Aria classes, Adam 1e-4 for 15 epochs, their augmentation.
    #[serde(rename = "seed-code")]
    SeedCode,
}

impl Profile {
    /// Every profile, in the order `--help` lists them.
    pub const ALL: [Profile; 4] = [Self::Cpu, Self::Paper, Self::SeedCode, Self::Cell];

    /// The command-line spelling (the same as in `config.json`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Paper => "paper",
            Self::Cell => "cell",
            Self::SeedCode => "seed-code",
        }
    }

    /// The task a run of this profile trains unless told otherwise: `seed-code` reproduces a
    /// 4-class softmax, the others default to leukemia vs healthy.
    pub fn default_task(self) -> TaskKind {
        match self {
            Self::SeedCode => TaskKind::Subtype,
            Self::Cpu | Self::Paper | Self::Cell => TaskKind::Binary,
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "paper" => Ok(Self::Paper),
            "cell" => Ok(Self::Cell),
            "seed-code" => Ok(Self::SeedCode),
            other => Err(ConfigError(format!("unknown profile `{other}` (cpu, paper, seed-code or cell)"))),
        }
    }
}

/// Which head the run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Leukemia vs healthy (one sigmoid output, BCE).
    Binary,
    /// The dataset's classes (softmax, cross-entropy).
    Subtype,
}

impl TaskKind {
    /// Both tasks.
    pub const ALL: [TaskKind; 2] = [Self::Binary, Self::Subtype];

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Binary => "binary",
            Self::Subtype => "subtype",
        }
    }

    /// The model's task for a dataset with `num_classes` classes.
    pub fn task(self, num_classes: usize) -> Task {
        match self {
            Self::Binary => Task::Binary,
            Self::Subtype => Task::Subtype { num_classes },
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binary" => Ok(Self::Binary),
            "subtype" | "subtypes" => Ok(Self::Subtype),
            other => Err(ConfigError(format!("unknown task `{other}` (binary or subtype)"))),
        }
    }
}

/// Where the backbone's starting weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "lowercase")]
pub enum WeightsSource {
    /// torchvision ImageNet weights from the weights cache (`allscan weights fetch`).
    Imagenet,
    /// Random initialisation (from the run's seed).
    None,
    /// A torchvision `.pth` or Burn `.bpk` backbone file.
    Path(String),
}

impl std::str::FromStr for WeightsSource {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "imagenet" => Self::Imagenet,
            "none" | "scratch" => Self::None,
            path => Self::Path(path.to_string()),
        })
    }
}

/// How the class imbalance is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Loss weights inversely proportional to the class frequency in the training part.
    ClassWeights,
    /// Every epoch draws classes equally often (with replacement within a class).
    Sampler,
    /// Every epoch draws classes equally often, then within a class each source equally
    /// often (sources datasets): no source dominates a class by its size.
    SourceClass,
    /// Neither.
    None,
}

/// Learning-rate schedule within a stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The same rate every step.
    Constant,
    /// Linear warm-up over the first `warmup_epochs`, then cosine decay to `min_lr`.
    Cosine,
}

/// Which validation figure picks the best epoch and drives early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectOn {
    /// Lowest validation loss.
    ValLoss,
    /// Highest validation AUC of p(leukemia) (ties: lower loss).
    ValAuc,
}

/// One training stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageConfig {
    /// Number of epochs (0 skips the stage).
    pub epochs: usize,
    /// Peak learning rate (Adam).
    pub lr: f64,
    /// Floor of the cosine schedule.
    pub min_lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Linear warm-up length in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Decoupled weight decay (AdamW); 0 = plain Adam.
    pub weight_decay: f64,
    /// Whether this stage sees augmented views. `false` in a stage with a frozen prefix lets
    /// the frozen part's output be computed once and cached.
    pub augment: bool,
    /// Stop after this many epochs without a better validation figure (`None`: never).
    pub patience: Option<usize>,
    /// Stage 2: which parts of the backbone train (`denseblock4`, `norm5`, ... or `all`);
    /// everything before the first one named stays frozen. Stage 1 ignores it: it trains the
    /// head only.
    #[serde(default)]
    pub unfreeze: Vec<String>,
}

/// The `train` part of the config tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Images per optimiser step.
    pub batch_size: usize,
    /// Images per forward pass when evaluating or filling a cache.
    pub eval_batch_size: usize,
    /// Head only, backbone frozen.
    pub stage1: StageConfig,
    /// The unfrozen blocks + head, lower learning rate, early stopping.
    pub stage2: StageConfig,
    /// Augmentation used by stages with `augment: true`.
    pub augment: AugmentConfig,
    /// Class-imbalance handling.
    pub balance: Balance,
    /// Label smoothing of the targets (0 = none).
    pub label_smoothing: f64,
    /// Best-epoch and early-stopping figure.
    pub select_on: SelectOn,
    /// The decision threshold reaches this validation sensitivity, at the best validation
    /// specificity that allows (`eval::metrics::threshold_for_sensitivity`).
    pub target_sensitivity: f64,
    /// Gradient-norm clipping (`None`: off).
    pub clip_grad_norm: Option<f64>,
    /// Each batch is split into this many equal parts that run forward and backward on
    /// parallel threads, their gradients summed before one optimiser step. BatchNorm then
    /// normalises each part with its own statistics ("ghost" batches), so the number is part
    /// of the config, not taken from the machine: a run gives the same weights anywhere.
    /// Flex keeps only ~1.25 of 2 cores busy on one small-network graph; 4 parts keep ~1.7.
    #[serde(default = "one")]
    pub shards: usize,
    /// After every epoch, re-estimate the BatchNorm running statistics as the average over
    /// this many batches of clean (unaugmented) training views, before validation (0: off).
    /// Under strong colour jitter the running statistics otherwise describe jittered batches
    /// while validation, test and inference see clean ones.
    #[serde(default)]
    pub bn_recalibration_batches: usize,
    /// Exponential moving average of the weights after every step, with this decay (0: off).
    /// With it on, validation, the best-epoch weights and the test report use the average
    /// (whose BatchNorm statistics are the ones re-estimated above, when that is on).
    #[serde(default)]
    pub ema_decay: f64,
    /// Cell mode: training views per not-leukemia field, its cells in dominance order (every
    /// cell of such a field is not leukemia; a leukemia field trains its dominant cell only).
    /// Field calls take the most suspicious cell, so the other cells must be seen as negatives.
    #[serde(default = "one")]
    pub negative_cells: usize,
    /// The convolutions' matrix products: `fp32`, or `bf16` (bf16 inputs, fp32 accumulation and
    /// fp32 weights) on the CPU's AMX tile unit, which falls back to fp32 on CPUs without it.
    #[serde(default)]
    pub precision: densenet_burn::bf16::Precision,
}

fn one() -> usize {
    1
}

/// The profile-specific parts of a run: model, preprocessing, training.
#[derive(Debug, Clone)]
pub struct ProfileDefaults {
    /// Classifier structure.
    pub model: ClassifierConfig,
    /// Preprocessing tree.
    pub preprocess: PreprocessConfig,
    /// Training tree.
    pub train: TrainConfig,
    /// Default starting weights.
    pub weights: WeightsSource,
}

impl Profile {
    /// The defaults of this profile for `task` on a dataset with `num_classes` classes.
    pub fn defaults(self, task: TaskKind, num_classes: usize) -> ProfileDefaults {
        let task = task.task(num_classes);
        match self {
            Self::Paper => paper(task),
            Self::Cpu => cpu(task),
            Self::Cell => cell(task),
            Self::SeedCode => seed_code(task),
        }
    }
}

/// The seed: DenseNet201 on the authors' HSV-segmented field at 224 px, ImageNet weights and
/// normalisation; stage 1 trains the head on cached features, stage 2 fine-tunes
/// `denseblock4` + `norm5` at a 100x lower rate with early stopping.
fn paper(task: Task) -> ProfileDefaults {
    let model = ClassifierConfig {
        backbone: BackboneConfig::Torchvision { variant: DenseNetVariant::DenseNet201 },
        task,
        hidden: 256,
        dropout: 0.5,
        test_views: TestViews::Single,
    };
    let preprocess = PreprocessConfig {
        mode: SegmentMode::AriaHsv,
        input_size: 224,
        normalization: Normalization::IMAGENET,
        ..PreprocessConfig::default()
    };
    let train = TrainConfig {
        batch_size: 32,
        eval_batch_size: 32,
        stage1: StageConfig {
            epochs: 10,
            lr: 1e-3,
            min_lr: 1e-3,
            schedule: Schedule::Constant,
            warmup_epochs: 0.0,
            weight_decay: 0.0,
            augment: false,
            patience: None,
            unfreeze: Vec::new(),
        },
        stage2: StageConfig {
            epochs: 10,
            lr: 1e-5,
            min_lr: 1e-5,
            schedule: Schedule::Constant,
            warmup_epochs: 0.0,
            weight_decay: 0.0,
            augment: true,
            patience: Some(3),
            unfreeze: vec!["denseblock4".into(), "norm5".into()],
        },
        augment: AugmentConfig::strong(),
        balance: Balance::ClassWeights,
        label_smoothing: 0.0,
        select_on: SelectOn::ValLoss,
        target_sensitivity: 0.99,
        clip_grad_norm: None,
        // 32 = 2 x 16 (16 images per BatchNorm is plenty); on 2 cores a DenseNet201 step at
        // batch 8 takes 4.0 s in 2 parts against 5.2 s in one (`allscan-bench train`).
        shards: 2,
        bn_recalibration_batches: 0,
        ema_decay: 0.0,
        negative_cells: 1,
        precision: densenet_burn::bf16::Precision::Fp32,
    };
    ProfileDefaults { model, preprocess, train, weights: WeightsSource::Imagenet }
}

/// Slim DenseNet on the whole field at 112 px, from scratch. Stage 1 is a one-epoch
/// head warm-up on cached features of the (random) frozen backbone; stage 2 trains the whole
/// network with strong augmentation, AdamW and a cosine schedule.
fn cpu(task: Task) -> ProfileDefaults {
    // Growth 16 and 32 stem features rather than 12 / 24: on Aria (split seed 1, 60 epochs)
    // 96.1% held-out subtype accuracy with all the settings below, against 95.1% for growth 12
    // without the BatchNorm re-estimation (94.3% single-view); ~21 s per epoch on 2 quiet
    // cores (2026-11-29).
    let densenet = DenseNetConfig::custom(16, vec![3, 6, 8, 6], 32, None);
    let model = ClassifierConfig {
        backbone: BackboneConfig::Custom(densenet.features_only()),
        task,
        hidden: 128,
        dropout: 0.2,
        // Trained on all 8 flips/rotations; inference at 112 px is cheap enough to average them.
        test_views: TestViews::Dihedral,
    };
    // The whole field, resized: on Aria the cell's size relative to the field and its
    // neighbours carry class information that a nucleus-centred crop (rescaled to fill the
    // input) throws away; measured here, 64 px nucleus crops learned far slower than fields.
    // 112 px rather than 80: on Aria (split seed 1, 389 held-out fields, 2 cores, 2026-11-29)
    // 94.3% subtype / 98.5% binary / 93.6% specificity in 60 epochs (24 min), 92.5% subtype in
    // 40 epochs (16 min), against 89.5% at 80 px in 60 epochs.
    let preprocess = PreprocessConfig {
        mode: SegmentMode::Field,
        input_size: 112,
        // From scratch: the input statistics are ours to choose; centre on mid-grey.
        normalization: Normalization { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
        ..PreprocessConfig::default()
    };
    let train = TrainConfig {
        batch_size: 32,
        eval_batch_size: 128,
        stage1: StageConfig {
            epochs: 1,
            lr: 3e-3,
            min_lr: 3e-3,
            schedule: Schedule::Constant,
            warmup_epochs: 0.0,
            weight_decay: 0.0,
            augment: false,
            patience: None,
            unfreeze: Vec::new(),
        },
        stage2: StageConfig {
            // ~18.5 s per epoch on Aria's 1,363 training fields at 112 px with 2 quiet cores
            // since the fused BatchNorm/conv operations: 75 epochs took 23.5 minutes of the
            // 30-minute budget (held-out subtype 96.4% vs 96.1% in 60 epochs; 2026-11-30).
            epochs: 75,
            lr: 2e-3,
            min_lr: 2e-5,
            schedule: Schedule::Cosine,
            warmup_epochs: 1.0,
            weight_decay: 1e-4,
            augment: true,
            patience: None,
            unfreeze: vec!["all".into()],
        },
        // Half-strength colour jitter (see `AugmentConfig::moderate` for the Aria figures of
        // strong, moderate and no jitter).
        augment: AugmentConfig::moderate(),
        balance: Balance::ClassWeights,
        label_smoothing: 0.05,
        select_on: SelectOn::ValLoss,
        target_sensitivity: 0.99,
        clip_grad_norm: Some(5.0),
        // 32 = 4 x 8: measured with `train --variant cpu --shards 1|2|4|8` (allscan-bench),
        // 537 / 428 / 366 / 878 ms per step on 2 cores.
        shards: 4,
        bn_recalibration_batches: 8,
        ema_decay: 0.0,
        negative_cells: 1,
        precision: densenet_burn::bf16::Precision::Fp32,
    };
    ProfileDefaults { model, preprocess, train, weights: WeightsSource::None }
}

/// Per-cell views at 64 px for a 24 um window (0.375 um/px), grey and standardised,
/// background filled; the `cpu` profile's slim DenseNet from scratch; classes then sources
/// balanced in every epoch.
fn cell(task: Task) -> ProfileDefaults {
    let mut d = cpu(task);
    d.preprocess = PreprocessConfig {
        mode: SegmentMode::Cell,
        input_size: 64,
        normalization: Normalization { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
        ..PreprocessConfig::default()
    };
    d.train.batch_size = 64;
    d.train.shards = 4;
    d.train.stage2.epochs = 25;
    d.train.augment = AugmentConfig::cell();
    d.train.balance = Balance::SourceClass;
    d.train.negative_cells = 8;
    ProfileDefaults { model: d.model, preprocess: d.preprocess, train: d.train, weights: WeightsSource::None }
}

/// The seed authors' published script, `cnn_hsv_org.py` in
/// <https://github.com/karthikrs05/Acute_Lymphoblastic_Leukemia_Detection_from_Blood_Smear_images_using_Deep_Learning>
/// (commit a273e57), where `paper` follows that repository's README. What the script does and
/// how each step is reproduced:
/// - **Input**: `cv2.imread` of the whole `Original/` field (BGR in memory), `COLOR_BGR2HSV`
///   (so the true hue, H 0..180), H and S kept, `cv2.resize` to 64x64, divided by 255, a zero
///   third channel appended; no ImageNet mean/std. Here: `field` mode, `channels: hs0`
///   (computed before the resize, as there), 64 px, normalisation mean 0 / std 1.
///   Differences: our resize is the triangle filter (`cv2.resize` defaults to bilinear sampling).
/// - **Model**: Keras DenseNet201 (`weights='imagenet'`, `trainable = False`, so BatchNorm on
///   its running statistics) -> GAP -> Dense(128, relu) -> Dropout(0.5) -> Dense(4, softmax),
///   categorical cross-entropy. Here: torchvision's ImageNet DenseNet201 (Keras's weights are
///   another training of the same architecture), frozen in stage 1; hidden 128, dropout 0.5,
///   the subtype task ([`Profile::default_task`]).
/// - **Training**: Adam 1e-4, batch 32, 15 epochs, no class weights, no schedule, no early
///   stopping, no fine-tuning. Here: stage 1 only, on augmented views (the backbone runs every
///   step; no feature cache), `balance: none`. Differences: the best validation-loss epoch is
///   kept where the script keeps the last; validation views are not augmented (the script
///   drew them from the augmenting generator).
/// - **Augmentation** (Keras `ImageDataGenerator`, applied to the H, S, 0 arrays): rotation
///   +-15 deg, zoom 0.2, width/height shift 0.1, horizontal flip; no colour change. Here the
///   same ranges on the HS0 views. Differences: Keras zooms each axis independently and fills
///   with the nearest pixel; ours zooms both axes by one factor and reflects.
/// - **Split**: 80/20 stratified train/test (`random_state=42`), then 10% of the training
///   part for validation (8% of all): `--test 0.2 --val 0.08` gives the same proportions.
fn seed_code(task: Task) -> ProfileDefaults {
    let model = ClassifierConfig {
        backbone: BackboneConfig::Torchvision { variant: DenseNetVariant::DenseNet201 },
        task,
        hidden: 128,
        dropout: 0.5,
        test_views: TestViews::Single,
    };
    let preprocess = PreprocessConfig {
        mode: SegmentMode::Field,
        input_size: 64,
        channels: InputChannels::Hs0,
        // `hs / 255.0` and nothing else: the zero channel stays 0.
        normalization: Normalization { mean: [0.0, 0.0, 0.0], std: [1.0, 1.0, 1.0] },
        ..PreprocessConfig::default()
    };
    let stage = StageConfig {
        epochs: 15,
        lr: 1e-4,
        min_lr: 1e-4,
        schedule: Schedule::Constant,
        warmup_epochs: 0.0,
        weight_decay: 0.0,
        augment: true,
        patience: None,
        unfreeze: Vec::new(),
    };
    let augment = AugmentConfig {
        enabled: true,
        dihedral: false,
        horizontal_flip: true,
        rotate_deg: 15.0,
        scale: 0.2,
        translate: 0.1,
        hue: 0.0,
        saturation: 0.0,
        brightness: 0.0,
        contrast: 0.0,
        channel_gain: 0.0,
        grey_probability: 0.0,
        ..AugmentConfig::none()
    };
    let train = TrainConfig {
        batch_size: 32,
        eval_batch_size: 32,
        stage1: stage.clone(),
        // No fine-tuning: the script never unfreezes the backbone.
        stage2: StageConfig {
            epochs: 0,
            augment: false,
            unfreeze: vec!["denseblock4".into(), "norm5".into()],
            ..stage
        },
        augment,
        balance: Balance::None,
        label_smoothing: 0.0,
        select_on: SelectOn::ValLoss,
        target_sensitivity: 0.99,
        clip_grad_norm: None,
        // The backbone is frozen (BatchNorm on running statistics), so the parts only share
        // the work; the gradients equal one batch's.
        shards: 2,
        bn_recalibration_batches: 0,
        ema_decay: 0.0,
        negative_cells: 1,
        precision: densenet_burn::bf16::Precision::Fp32,
    };
    ProfileDefaults { model, preprocess, train, weights: WeightsSource::Imagenet }
}

/// The trainable part of the backbone in stage 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfrozen {
    /// The whole network, stem included.
    All,
    /// Dense blocks `block..` (0-based), their transitions, `norm5`; the stem and earlier
    /// blocks stay frozen. `block == num_blocks` leaves only `norm5`... and the head.
    From(usize),
}

/// Parses an `--unfreeze` list (`denseblock4,norm5`, `transition3,denseblock4,norm5`, `all`)
/// for a backbone with `num_blocks` dense blocks. The frozen part must be a prefix: everything
/// from the first named part on trains.
pub fn parse_unfreeze(names: &[String], num_blocks: usize) -> Result<Unfrozen, ConfigError> {
    let bad = |reason: String| Err(ConfigError(format!("--unfreeze {}: {reason}", names.join(","))));
    if names.is_empty() {
        return bad("name at least one part (e.g. denseblock4,norm5 or all)".into());
    }
    let mut first = usize::MAX;
    for name in names {
        let name = name.trim();
        let number = |prefix: &str| name.strip_prefix(prefix).and_then(|d| d.parse::<usize>().ok());
        if name == "all" || name == "features" || name == "conv0" || name == "norm0" {
            return Ok(Unfrozen::All);
        } else if let Some(k) = number("denseblock") {
            if k == 0 || k > num_blocks {
                return bad(format!("the backbone has denseblock1..denseblock{num_blocks}"));
            }
            first = first.min(k - 1);
        } else if let Some(k) = number("transition") {
            if k == 0 || k >= num_blocks {
                return bad(format!("the backbone has transition1..transition{}", num_blocks - 1));
            }
            // transitionK follows denseblockK; it trains with the blocks after it.
            first = first.min(k);
        } else if name == "norm5" {
            first = first.min(num_blocks);
        } else {
            return bad(format!("unknown part `{name}` (denseblockN, transitionN, norm5 or all)"));
        }
    }
    Ok(Unfrozen::From(first))
}

impl TrainConfig {
    /// Rejects settings that cannot train.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError(s));
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch sizes must be > 0".into());
        }
        if self.shards == 0 || self.shards > self.batch_size {
            return bad(format!("shards must be in 1..={} (the batch size), got {}", self.batch_size, self.shards));
        }
        for (name, s) in [("stage1", &self.stage1), ("stage2", &self.stage2)] {
            if !(s.lr.is_finite() && s.lr > 0.0 && s.min_lr.is_finite() && s.min_lr >= 0.0) {
                return bad(format!("{name}: learning rates must be positive, got {} / {}", s.lr, s.min_lr));
            }
            if s.weight_decay.is_nan() || s.weight_decay < 0.0 || s.warmup_epochs.is_nan() || s.warmup_epochs < 0.0 {
                return bad(format!("{name}: weight decay and warm-up must be >= 0"));
            }
        }
        if self.stage1.epochs + self.stage2.epochs == 0 {
            return bad("both stages have 0 epochs: nothing to train".into());
        }
        if !(self.target_sensitivity > 0.0 && self.target_sensitivity <= 1.0) {
            return bad(format!("target sensitivity {} is not in (0, 1]", self.target_sensitivity));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("ema_decay {} is not in [0, 1)", self.ema_decay));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return bad(format!("label smoothing {} is not in [0, 0.5)", self.label_smoothing));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfreeze_lists_parse_to_a_frozen_prefix() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_unfreeze(&s(&["denseblock4", "norm5"]), 4).unwrap(), Unfrozen::From(3));
        assert_eq!(parse_unfreeze(&s(&["transition2", "norm5"]), 4).unwrap(), Unfrozen::From(2));
        assert_eq!(parse_unfreeze(&s(&["norm5"]), 4).unwrap(), Unfrozen::From(4));
        assert_eq!(parse_unfreeze(&s(&["all"]), 4).unwrap(), Unfrozen::All);
        assert!(parse_unfreeze(&s(&["denseblock5"]), 4).is_err());
        assert!(parse_unfreeze(&s(&["head"]), 4).is_err());
        assert!(parse_unfreeze(&[], 4).is_err());
    }

    #[test]
    fn profiles_are_valid_and_round_trip_as_json() {
        for p in Profile::ALL {
            for t in TaskKind::ALL {
                let d = p.defaults(t, 4);
                d.train.validate().unwrap();
                d.model.validate().unwrap();
                d.preprocess.validate().unwrap();
                let json = serde_json::to_string(&d.train).unwrap();
                assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), d.train);
                let json = serde_json::to_string(&d.preprocess).unwrap();
                assert_eq!(serde_json::from_str::<PreprocessConfig>(&json).unwrap(), d.preprocess);
                let json = serde_json::to_string(&d.model).unwrap();
                assert_eq!(serde_json::from_str::<ClassifierConfig>(&json).unwrap(), d.model);
            }
            // The config.json spelling is the command-line one, and both read back.
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{}\"", p.name()));
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
        }
        assert!("seedcode".parse::<Profile>().is_err());
        assert_eq!(Profile::Paper.defaults(TaskKind::Binary, 4).preprocess.input_size, 224);
    }

    #[test]
    fn seed_code_is_the_authors_script() {
        let task = Profile::SeedCode.default_task();
        assert_eq!(task, TaskKind::Subtype);
        let d = Profile::SeedCode.defaults(task, 4);
        assert_eq!(d.model.task, Task::Subtype { num_classes: 4 });
        assert_eq!((d.model.hidden, d.model.dropout), (128, 0.5));
        assert_eq!(d.model.backbone, BackboneConfig::Torchvision { variant: DenseNetVariant::DenseNet201 });
        assert_eq!(d.weights, WeightsSource::Imagenet);
        let p = &d.preprocess;
        assert_eq!((p.mode, p.input_size, p.channels), (SegmentMode::Field, 64, InputChannels::Hs0));
        assert_eq!(p.normalization, Normalization { mean: [0.0; 3], std: [1.0; 3] });
        // Head only on the frozen backbone, Adam 1e-4, 15 epochs of augmented views, no fine-tune.
        let t = &d.train;
        assert_eq!((t.stage1.epochs, t.stage1.lr, t.stage1.weight_decay), (15, 1e-4, 0.0));
        assert!(t.stage1.augment && t.augment.enabled);
        assert_eq!(t.stage2.epochs, 0);
        assert_eq!((t.batch_size, t.balance, t.label_smoothing), (32, Balance::None, 0.0));
        let a = &t.augment;
        assert!(!a.dihedral && a.horizontal_flip);
        assert_eq!((a.rotate_deg, a.scale, a.translate), (15.0, 0.2, 0.1));
        assert_eq!([a.hue, a.saturation, a.brightness, a.contrast, a.channel_gain, a.grey_probability], [0.0; 6]);
        assert_eq!([a.blur_sigma, a.noise, a.jpeg_probability], [0.0; 3]);
        // The other profiles keep RGB input.
        for p in [Profile::Cpu, Profile::Paper, Profile::Cell] {
            assert_eq!(p.defaults(TaskKind::Binary, 4).preprocess.channels, InputChannels::Rgb);
            assert_eq!(p.default_task(), TaskKind::Binary);
        }
    }
}
