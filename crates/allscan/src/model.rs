//! Model stage: the seed's leukemia classifier, a DenseNet backbone (arXiv:1608.06993) with
//! global average pooling and a small MLP head.
//!
//! Input: ROI crops as tensors `[B, 3, H, W]` (224x224, ImageNet-normalised). Output: logits
//! `[B, 1]` (leukemia vs healthy, sigmoid) or `[B, num_classes]` (subtypes, softmax), plus the
//! backbone feature map `[B, C, 7, 7]` for Grad-CAM. Built from a [`ClassifierConfig`] that is
//! saved as JSON beside every model's weights.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::{Device, Tensor};
use densenet_burn::{DenseNet, DenseNetConfig, DenseNetError, DenseNetVariant};
use serde::{Deserialize, Serialize};

/// File names inside a model directory.
pub const CONFIG_FILE: &str = "classifier.json";
/// Burn-format weights beside [`CONFIG_FILE`].
pub const WEIGHTS_FILE: &str = "classifier.bpk";

/// Errors building, saving or loading the classifier.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The configuration cannot build a network.
    #[error("invalid classifier config: {0}")]
    InvalidConfig(String),
    /// The backbone failed to build or load (boxed: `DenseNetError` carries key lists and
    /// would make every `Result` of this crate that can hold a `ModelError` large).
    #[error(transparent)]
    Backbone(Box<DenseNetError>),
    /// A pretrained backbone does not match the configured one.
    #[error("backbone mismatch: config wants {expected}, weights are {found}")]
    BackboneMismatch {
        /// Configured backbone.
        expected: String,
        /// Given backbone.
        found: String,
    },
    /// Reading or writing a model file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid JSON for [`ClassifierConfig`].
    #[error("{path}: invalid classifier config: {source}")]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// Burn could not save or load the weights.
    #[error("{path}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Burn's message.
        reason: String,
    },
}

impl From<DenseNetError> for ModelError {
    fn from(e: DenseNetError) -> Self {
        Self::Backbone(Box::new(e))
    }
}

/// Which DenseNet the classifier stands on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackboneConfig {
    /// A torchvision ImageNet variant (pretrained weights available).
    Torchvision {
        /// `densenet121`, `densenet169` or `densenet201`.
        variant: DenseNetVariant,
    },
    /// Custom numbers, e.g. a slim network for a fast from-scratch CPU profile.
    Custom(DenseNetConfig),
}

impl BackboneConfig {
    /// The features-only DenseNet config.
    pub fn densenet(&self) -> DenseNetConfig {
        match self {
            Self::Torchvision { variant } => variant.config().features_only(),
            Self::Custom(c) => c.clone().features_only(),
        }
    }

    /// The torchvision variant, if this is one (also for a custom config with its numbers).
    pub fn variant(&self) -> Option<DenseNetVariant> {
        match self {
            Self::Torchvision { variant } => Some(*variant),
            Self::Custom(c) => c.variant(),
        }
    }

    /// Short description for logs and errors.
    pub fn describe(&self) -> String {
        match self.variant() {
            Some(v) => v.name().to_string(),
            None => {
                let c = self.densenet();
                format!(
                    "custom DenseNet (growth {}, blocks {:?}, {} initial features)",
                    c.growth_rate, c.block_config, c.num_init_features
                )
            }
        }
    }
}

/// What the head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Leukemia (1) vs healthy (0): one logit, sigmoid.
    Binary,
    /// ALL subtypes: `num_classes` logits, softmax.
    Subtype {
        /// Number of subtype classes (4 in the seed).
        num_classes: usize,
    },
}

impl Task {
    /// Width of the last Linear layer.
    pub fn num_outputs(self) -> usize {
        match self {
            Self::Binary => 1,
            Self::Subtype { num_classes } => num_classes,
        }
    }
}

/// The whole classifier's structure; saved as [`CONFIG_FILE`] with every model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// The DenseNet trunk.
    pub backbone: BackboneConfig,
    /// Binary or subtype head.
    pub task: Task,
    /// Width of the hidden Linear layer (the seed: 256).
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Dropout probability after the hidden layer (the seed: 0.5).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Which views of an input the prediction averages (test-time augmentation).
    #[serde(default)]
    pub test_views: TestViews,
}

/// Views of one input whose logits a prediction averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestViews {
    /// The input as it is.
    #[default]
    Single,
    /// The 8 flips and 90-degree rotations of the input (a cell on a slide has no up; the
    /// model is trained on all 8), logits averaged: 8x the inference cost.
    Dihedral,
}

impl TestViews {
    /// Number of forward passes per input.
    pub fn count(self) -> usize {
        match self {
            Self::Single => 1,
            Self::Dihedral => 8,
        }
    }
}

fn default_hidden() -> usize {
    256
}

fn default_dropout() -> f64 {
    0.5
}

impl ClassifierConfig {
    /// The seed's binary classifier on a torchvision variant (hidden 256, dropout 0.5).
    pub fn binary(variant: DenseNetVariant) -> Self {
        Self {
            backbone: BackboneConfig::Torchvision { variant },
            task: Task::Binary,
            hidden: default_hidden(),
            dropout: default_dropout(),
            test_views: TestViews::Single,
        }
    }

    /// The seed's subtype classifier (`num_classes` outputs, softmax).
    pub fn subtype(variant: DenseNetVariant, num_classes: usize) -> Self {
        Self { task: Task::Subtype { num_classes }, ..Self::binary(variant) }
    }

    /// The same head on a custom backbone.
    pub fn with_custom_backbone(mut self, densenet: DenseNetConfig) -> Self {
        self.backbone = BackboneConfig::Custom(densenet.features_only());
        self
    }

    /// Rejects sizes that cannot build.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.backbone.densenet().validate()?;
        if self.hidden == 0 {
            return Err(ModelError::InvalidConfig("hidden must be > 0".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::InvalidConfig(format!("dropout {} must be in [0, 1)", self.dropout)));
        }
        match self.task {
            Task::Subtype { num_classes } if num_classes < 2 => {
                Err(ModelError::InvalidConfig(format!("a subtype head needs >= 2 classes, got {num_classes}")))
            }
            _ => Ok(()),
        }
    }

    /// A randomly initialised classifier.
    pub fn init(&self, device: &Device) -> Result<LeukemiaClassifier, ModelError> {
        self.validate()?;
        let backbone = DenseNet::new(&self.backbone.densenet(), device)?;
        Ok(self.init_head(backbone, device))
    }

    /// A classifier on an already loaded backbone (e.g. torchvision weights from
    /// [`crate::weights::load_backbone`]); the head is freshly initialised.
    pub fn init_with_backbone(&self, backbone: DenseNet, device: &Device) -> Result<LeukemiaClassifier, ModelError> {
        self.validate()?;
        let want = self.backbone.densenet();
        let have_channels = backbone.num_features();
        if backbone.num_blocks() != want.block_config.len() || have_channels != want.num_features() {
            return Err(ModelError::BackboneMismatch {
                expected: self.backbone.describe(),
                found: format!("{} blocks with {have_channels} output channels", backbone.num_blocks()),
            });
        }
        let backbone = DenseNet { classifier: None, ..backbone };
        Ok(self.init_head(backbone, device))
    }

    fn init_head(&self, backbone: DenseNet, device: &Device) -> LeukemiaClassifier {
        let c = backbone.num_features();
        // Path-derived parameter ids: the ids the weights files record (crate::params).
        crate::params::with_path_ids(LeukemiaClassifier {
            backbone,
            fc1: LinearConfig::new(c, self.hidden).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc2: LinearConfig::new(self.hidden, self.task.num_outputs()).init(device),
        })
    }

    /// Reads `dir/classifier.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| ModelError::ConfigJson { path, source })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes `dir/classifier.json` (creating `dir`).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
        let path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|source| ModelError::ConfigJson { path: path.clone(), source })?;
        std::fs::write(&path, text + "\n").map_err(|source| ModelError::Io { path, source })
    }
}

/// Backbone -> global average pooling -> Linear(C, 256) -> ReLU -> Dropout(0.5) ->
/// Linear(256, outputs).
#[derive(Module, Debug)]
pub struct LeukemiaClassifier {
    /// Features-only DenseNet (`classifier` is `None`).
    pub backbone: DenseNet,
    /// `Linear(C, hidden)`.
    pub fc1: Linear,
    /// Active only on an autodiff device with training enabled.
    pub dropout: Dropout,
    /// `Linear(hidden, outputs)`.
    pub fc2: Linear,
}

impl LeukemiaClassifier {
    /// Logits: `[B, 3, H, W] -> [B, outputs]` (`[B, 1]` binary, `[B, num_classes]` subtype).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.forward_features(images))
    }

    /// Logits averaged over `views` of each input: `[B, 3, H, W] -> [B, outputs]`. Square
    /// inputs only for the transposed views.
    pub fn forward_views(&self, images: Tensor<4>, views: TestViews) -> Tensor<2> {
        match views {
            TestViews::Single => self.forward(images),
            TestViews::Dihedral => {
                let view = |v: usize| self.forward(dihedral_view(images.clone(), v)); // [B, outputs]
                (1..8).fold(view(0), |sum, v| sum + view(v)).div_scalar(8.0)
            }
        }
    }

    /// Backbone feature map after `norm5` + ReLU: `[B, 3, H, W] -> [B, C, H/32, W/32]`
    /// (`[B, 1920, 7, 7]` for DenseNet201 at 224). Grad-CAM's target layer.
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<4> {
        self.backbone.forward_features(images)
    }

    /// Head on a feature map: `[B, C, h, w] -> [B, outputs]`.
    pub fn forward_head(&self, features: Tensor<4>) -> Tensor<2> {
        self.forward_pooled(DenseNet::pool(features))
    }

    /// Head on pooled features (stage-1 training on cached features): `[B, C] -> [B, outputs]`.
    pub fn forward_pooled(&self, pooled: Tensor<2>) -> Tensor<2> {
        let x = relu(self.fc1.forward(pooled)); // [B, hidden]
        self.fc2.forward(self.dropout.forward(x)) // [B, outputs]
    }

    /// Head on pooled features with a dropout mask drawn by the caller (`[B, hidden]`, entries
    /// 0 or `1 / (1 - p)`), so that replicas trained on parallel threads draw reproducible
    /// masks instead of sharing the device's random stream. `None`: no dropout.
    pub fn forward_pooled_masked(&self, pooled: Tensor<2>, mask: Option<Tensor<2>>) -> Tensor<2> {
        let x = relu(self.fc1.forward(pooled)); // [B, hidden]
        self.fc2.forward(match mask {
            Some(m) => x * m,
            None => x,
        }) // [B, outputs]
    }

    /// Width of the head's hidden layer (the dropout mask's second dimension).
    pub fn hidden(&self) -> usize {
        self.fc1.weight.dims()[1]
    }

    /// Runs the backbone up to dense block `block` (see [`DenseNet::forward_until`]):
    /// the activation stage-2 fine-tuning caches.
    pub fn forward_until(&self, images: Tensor<4>, block: usize) -> Tensor<4> {
        self.backbone.forward_until(images, block)
    }

    /// Logits from the activation entering block `block` (see [`DenseNet::forward_from`]).
    pub fn forward_from(&self, block: usize, activation: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.backbone.forward_from(block, activation))
    }

    /// Freezes the whole backbone (gradients off, BatchNorm on running statistics): stage 1.
    pub fn freeze_backbone(self) -> Self {
        Self { backbone: self.backbone.freeze(), ..self }
    }

    /// Freezes the backbone before dense block `block`, leaving later blocks, `norm5` and the
    /// head trainable: stage 2.
    pub fn freeze_backbone_until(self, block: usize) -> Self {
        Self { backbone: self.backbone.freeze_until(block), ..self }
    }

    /// Inference copy: eval mode with BatchNorms folded into convolutions (faster, same
    /// outputs within float rounding). Not for training or saving.
    pub fn for_inference(&self) -> Self {
        let valid = self.valid();
        Self { backbone: self.backbone.fold_batchnorm(), ..valid }
    }

    /// Saves `dir/classifier.json` and `dir/classifier.bpk`.
    pub fn save(&self, config: &ClassifierConfig, dir: &Path) -> Result<(), ModelError> {
        config.save(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        self.clone()
            .save_file(&path)
            .map_err(|e| ModelError::Record { path, reason: format!("cannot save weights: {e}") })
    }

    /// Rebuilds a classifier from a directory written by [`save`](Self::save).
    pub fn load(dir: &Path, device: &Device) -> Result<(ClassifierConfig, Self), ModelError> {
        let config = ClassifierConfig::load(dir)?;
        let model = config.init(device)?;
        let path = dir.join(WEIGHTS_FILE);
        let model = model
            .try_load_file(&path)
            .map_err(|e| ModelError::Record { path, reason: format!("cannot load weights: {e}") })?;
        Ok((config, model))
    }
}

/// Symmetry `v` (0..8) of the square images `x` (`[B, C, H, H]`): transposed if bit 2 is set,
/// then mirrored left-right if bit 0 is set, then upside down if bit 1 is set. `v = 0` is `x`.
pub fn dihedral_view(x: Tensor<4>, v: usize) -> Tensor<4> {
    let mut x = if v & 4 != 0 { x.swap_dims(2, 3) } else { x };
    if v & 1 != 0 {
        x = x.flip([3]);
    }
    if v & 2 != 0 {
        x = x.flip([2]);
    }
    x
}

/// The inverse of [`dihedral_view`]: `undo_dihedral_view(dihedral_view(x, v), v) == x`.
pub fn undo_dihedral_view(x: Tensor<4>, v: usize) -> Tensor<4> {
    let mut x = x;
    if v & 2 != 0 {
        x = x.flip([2]);
    }
    if v & 1 != 0 {
        x = x.flip([3]);
    }
    if v & 4 != 0 {
        x = x.swap_dims(2, 3);
    }
    x
}

/// `[B, 1]` binary logits -> `[B]` P(leukemia); `[B, K]` subtype logits -> `[B, K]` softmax.
pub fn probabilities(task: Task, logits: Tensor<2>) -> Tensor<2> {
    match task {
        Task::Binary => sigmoid(logits),
        Task::Subtype { .. } => softmax(logits, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slim() -> DenseNetConfig {
        DenseNetConfig::custom(4, vec![2, 2], 8, None)
    }

    #[test]
    fn config_round_trips_as_json() {
        let c = ClassifierConfig::subtype(DenseNetVariant::DenseNet201, 4);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"densenet201\""), "{json}");
        assert_eq!(serde_json::from_str::<ClassifierConfig>(&json).unwrap(), c);
        let custom = ClassifierConfig::binary(DenseNetVariant::DenseNet121).with_custom_backbone(slim());
        let json = serde_json::to_string(&custom).unwrap();
        assert_eq!(serde_json::from_str::<ClassifierConfig>(&json).unwrap(), custom);
    }

    #[test]
    fn binary_and_subtype_heads_have_the_right_shapes() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 3, 64, 64], burn::tensor::Distribution::Default, &device);
        let bin = ClassifierConfig::binary(DenseNetVariant::DenseNet121).with_custom_backbone(slim());
        let model = bin.init(&device).unwrap();
        assert_eq!(model.forward(x.clone()).dims(), [2, 1]);
        // 64 -> stem 16 -> one transition 8; channels 8 + 2*4 = 16 -> 8 -> 8 + 2*4 = 16.
        assert_eq!(model.forward_features(x.clone()).dims(), [2, 16, 8, 8]);
        let p = probabilities(bin.task, model.forward(x.clone()));
        let p = p.into_data().try_to_vec::<f32>().unwrap();
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));

        let sub = ClassifierConfig::subtype(DenseNetVariant::DenseNet121, 4).with_custom_backbone(slim());
        let model = sub.init(&device).unwrap();
        let p = probabilities(sub.task, model.forward(x));
        assert_eq!(p.dims(), [2, 4]);
        let sums = p.sum_dim(1).into_data().try_to_vec::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }

    #[test]
    fn dihedral_test_views_make_predictions_invariant_to_flips_and_rotations() {
        let device = Device::flex();
        device.seed(4);
        let cfg = ClassifierConfig::subtype(DenseNetVariant::DenseNet121, 4).with_custom_backbone(slim());
        let model = cfg.init(&device).unwrap().for_inference();
        let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        let single = read(model.forward_views(x.clone(), TestViews::Single));
        let tta = read(model.forward_views(x.clone(), TestViews::Dihedral));
        let rotated = x.clone().swap_dims(2, 3).flip([3]); // 90 degrees
        assert_ne!(
            read(model.forward_views(rotated.clone(), TestViews::Single)),
            single,
            "a random net is not invariant"
        );
        for other in [rotated, x.clone().flip([2]), x.swap_dims(2, 3)] {
            let o = read(model.forward_views(other, TestViews::Dihedral));
            let diff = o.iter().zip(&tta).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "dihedral average changed by {diff} under a symmetry");
        }
        let json = serde_json::to_string(&ClassifierConfig { test_views: TestViews::Dihedral, ..cfg }).unwrap();
        assert!(json.contains("\"test_views\":\"dihedral\""), "{json}");
    }

    #[test]
    fn the_eight_symmetries_are_distinct_and_undone() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            burn::tensor::TensorData::new((0..18).map(|v| v as f32).collect::<Vec<_>>(), [1, 2, 3, 3]),
            &device,
        );
        let read = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        let views: Vec<Vec<f32>> = (0..8).map(|v| read(dihedral_view(x.clone(), v))).collect();
        for v in 0..8 {
            assert_eq!(read(undo_dihedral_view(dihedral_view(x.clone(), v), v)), read(x.clone()), "symmetry {v}");
            assert!(views[..v].iter().all(|o| *o != views[v]), "symmetry {v} repeats an earlier one");
        }
    }

    #[test]
    fn invalid_configs_are_errors() {
        let device = Device::flex();
        let mut c = ClassifierConfig::subtype(DenseNetVariant::DenseNet121, 1);
        assert!(c.init(&device).is_err());
        c.task = Task::Binary;
        c.dropout = 1.5;
        assert!(c.validate().is_err());
    }

    #[test]
    fn save_and_load_reproduce_the_logits() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let config = ClassifierConfig::binary(DenseNetVariant::DenseNet121).with_custom_backbone(slim());
        let model = config.init(&device).unwrap();
        model.save(&config, dir.path()).unwrap();
        let (config2, model2) = LeukemiaClassifier::load(dir.path(), &device).unwrap();
        assert_eq!(config2, config);
        let x = Tensor::<4>::ones([1, 3, 32, 32], &device);
        let a = model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let b = model2.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn frozen_backbone_gets_no_gradients_but_the_head_does() {
        let device = Device::flex().autodiff();
        let config = ClassifierConfig::binary(DenseNetVariant::DenseNet121).with_custom_backbone(slim());
        let model = config.init(&device).unwrap().freeze_backbone_until(1);
        let x = Tensor::<4>::ones([2, 3, 32, 32], &device);
        let loss = model.forward(x).sum();
        let grads = loss.backward();
        let stem = model.backbone.features.conv0.weight.val().grad(&grads);
        let late = model.backbone.features.denseblock[1].denselayer[0].conv2.weight.val().grad(&grads);
        let head = model.fc2.weight.val().grad(&grads);
        assert!(stem.is_none(), "frozen stem got a gradient");
        assert!(late.is_some(), "unfrozen block got no gradient");
        assert!(head.is_some(), "head got no gradient");
    }

    #[test]
    fn inference_copy_matches_eval_mode() {
        let device = Device::flex();
        let config = ClassifierConfig::subtype(DenseNetVariant::DenseNet121, 4).with_custom_backbone(slim());
        let model = config.init(&device).unwrap();
        let x = Tensor::<4>::ones([1, 3, 32, 32], &device);
        let a = model.valid().forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let b = model.for_inference().forward(x).into_data().try_to_vec::<f32>().unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
    }
}
