//! Run bundle I/O, the seam between training and every later command: a run directory ->
//! its config tree ([`RunConfig`], `config.json`), what inference needs ([`BundleMetadata`],
//! `metadata.json`: classes, preprocessing, input size, normalisation, threshold, dataset
//! fingerprint, split, versions) and the trained weights (`model.bpk`).
//!
//! Layout of `RUN/`:
//!
//! ```text
//! config.json     the whole config tree (task, profile, model, preprocess, train, seed, data)
//! metadata.json   classes, leukemia classes, preprocessing, threshold, fingerprint, split, versions
//! model.bpk       the best epoch's weights (Burn burnpack)
//! split.json      the split the run used (a copy of --split, or the one it made)
//! metrics.csv     one row per epoch, both stages
//! train.log       the run's log
//! checkpoint/     the last finished epoch's state, for `allscan train --resume`
//! ```
//!
//! `predict`, `eval`, `serve` and `explain` rebuild everything from here: no constant of the
//! run is repeated elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use allscan_preprocess::{Normalization, PreprocessConfig};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::SplitConfig;
use crate::fsutil::write_atomic;
use crate::model::{ClassifierConfig, LeukemiaClassifier, ModelError, Task};
use crate::train::config::{Profile, TaskKind, TrainConfig, WeightsSource};

/// Format tag of `config.json` and `metadata.json`.
pub const BUNDLE_FORMAT: &str = "allscan-run-v1";
/// The config tree.
pub const CONFIG_FILE: &str = "config.json";
/// Inference metadata.
pub const METADATA_FILE: &str = "metadata.json";
/// Best weights.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// The split used.
pub const SPLIT_FILE: &str = "split.json";
/// Per-epoch metrics.
pub const METRICS_FILE: &str = "metrics.csv";
/// The run's log.
pub const LOG_FILE: &str = "train.log";
/// Resume state.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// Errors opening, reading or writing a run bundle; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The directory is missing or has no `config.json`/`metadata.json`.
    #[error("{dir}: not a run bundle (no {file}); train one with `allscan train DATA --out RUN`")]
    NotABundle {
        /// The directory given.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{path}: invalid JSON: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's message.
        reason: String,
    },
    /// A file of another format or version.
    #[error("{path}: format `{found}`, this allscan reads `{BUNDLE_FORMAT}`")]
    Format {
        /// The file.
        path: PathBuf,
        /// The format tag found.
        found: String,
    },
    /// The files disagree with each other (e.g. metadata's input size vs the config's).
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What disagrees.
        reason: String,
    },
    /// The model could not be built or its weights loaded.
    #[error("{path}: {source}")]
    Model {
        /// The weights file.
        path: PathBuf,
        /// The cause.
        source: ModelError,
    },
    /// A threshold outside [0, 1].
    #[error("threshold {0} is not a probability in [0, 1]")]
    BadThreshold(f64),
}

/// Where the data came from and how it was split; part of [`RunConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Dataset folder as given on the command line.
    pub root: String,
    /// `--map` label map spec, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    /// `--split` file as given, if any (otherwise the run made one with `split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_file: Option<String>,
    /// Settings of the split the run made when no `--split` was given.
    pub split: SplitConfig,
    /// Fingerprint of the dataset (a resume on changed data is refused).
    pub fingerprint: String,
}

/// The whole config tree of a run (`config.json`): everything that determines the trained
/// weights. Two runs with equal configs and the same seed end with the same weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// Binary or subtype.
    pub task: TaskKind,
    /// The profile the defaults came from (overrides are already applied below).
    pub profile: Profile,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Dataset and split.
    pub data: DataConfig,
    /// Starting weights of the backbone.
    pub weights: WeightsSource,
    /// Classifier structure.
    pub model: ClassifierConfig,
    /// Preprocessing (also in metadata, where inference reads it).
    pub preprocess: PreprocessConfig,
    /// Training schedule.
    pub train: TrainConfig,
}

/// The split a run used, in short (the full assignment is `split.json` in the bundle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// File name inside the bundle.
    pub file: String,
    /// Its settings.
    pub config: SplitConfig,
    /// Whether patients were kept together (otherwise image-level: patients may straddle parts).
    pub patient_level: bool,
    /// part -> class -> count.
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
}

/// Versions of what made the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// [`BUNDLE_FORMAT`].
    pub bundle: String,
    /// This crate's version.
    pub allscan: String,
    /// Burn's version.
    pub burn: String,
}

impl Default for Versions {
    fn default() -> Self {
        Self {
            bundle: BUNDLE_FORMAT.to_string(),
            allscan: env!("CARGO_PKG_VERSION").to_string(),
            burn: "0.22.1".to_string(),
        }
    }
}

/// The epoch whose weights the bundle holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// 1 or 2.
    pub stage: u8,
    /// 1-based epoch within the stage.
    pub epoch: usize,
    /// Validation loss at that epoch.
    pub val_loss: f64,
    /// Validation AUC of p(leukemia), when both labels are present.
    pub val_auc: Option<f64>,
    /// Validation accuracy (subtype: top-1; binary: at 0.5).
    pub val_accuracy: f64,
}

/// What inference needs (`metadata.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleMetadata {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The head: binary (output = p(leukemia)) or subtype (`class_names.len()` softmax outputs).
    pub task: Task,
    /// Output classes in index order: the dataset's class folders for a subtype model,
    /// `["healthy", "leukemia"]` for a binary one.
    pub class_names: Vec<String>,
    /// The class names that are leukemia (subtype: p(leukemia) is their summed probability;
    /// binary: `["leukemia"]`).
    pub leukemia_classes: Vec<String>,
    /// The dataset's class folders and their binary labels (`healthy` / `leukemia`).
    pub dataset_classes: Vec<(String, String)>,
    /// Preprocessing, exactly as in training.
    pub preprocess: PreprocessConfig,
    /// Side of the square model input (equals `preprocess.input_size`).
    pub input_size: u32,
    /// Input normalisation (equals `preprocess.normalization`).
    pub normalization: Normalization,
    /// Decision threshold on p(leukemia): `p >= threshold` is called leukemia.
    pub threshold: f64,
    /// How the threshold was chosen.
    pub threshold_rule: String,
    /// Fingerprint of the training dataset.
    pub dataset_fingerprint: String,
    /// The split used.
    pub split: Option<SplitInfo>,
    /// The epoch whose weights are in the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestEpoch>,
    /// Held-out (test part) figures computed at the end of training, for information only:
    /// never used to choose anything.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub test_metrics: BTreeMap<String, f64>,
    /// Versions.
    pub versions: Versions,
}

impl BundleMetadata {
    /// Checks the fields against each other and the config.
    fn check(&self, config: &RunConfig, path: &Path) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::Inconsistent { path: path.to_path_buf(), reason });
        if self.input_size != self.preprocess.input_size {
            return bad(format!(
                "input_size {} differs from preprocess.input_size {}",
                self.input_size, self.preprocess.input_size
            ));
        }
        if self.normalization != self.preprocess.normalization {
            return bad("normalization differs from preprocess.normalization".into());
        }
        if self.task != config.model.task {
            return bad(format!("task {:?} differs from config.json's {:?}", self.task, config.model.task));
        }
        if self.class_names.len() != self.task.num_outputs().max(2) {
            return bad(format!("{} class names for a {:?} head", self.class_names.len(), self.task));
        }
        if let Some(c) = self.leukemia_classes.iter().find(|c| !self.class_names.contains(c)) {
            return bad(format!("leukemia class `{c}` is not one of the class names {:?}", self.class_names));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad(format!("threshold {} is not in [0, 1]", self.threshold));
        }
        Ok(())
    }
}

/// An opened run directory.
#[derive(Debug, Clone)]
pub struct RunBundle {
    /// The run directory.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: RunConfig,
    /// `metadata.json`.
    pub metadata: BundleMetadata,
}

impl RunBundle {
    /// Reads `dir/config.json` and `dir/metadata.json` and checks that they agree.
    pub fn open(dir: &Path) -> Result<RunBundle, BundleError> {
        for file in [CONFIG_FILE, METADATA_FILE] {
            if !dir.join(file).is_file() {
                return Err(BundleError::NotABundle { dir: dir.to_path_buf(), file });
            }
        }
        let config: RunConfig = read_json(&dir.join(CONFIG_FILE))?;
        let meta_path = dir.join(METADATA_FILE);
        let metadata: BundleMetadata = read_json(&meta_path)?;
        for (path, format) in [(dir.join(CONFIG_FILE), &config.format), (meta_path.clone(), &metadata.format)] {
            if format != BUNDLE_FORMAT {
                return Err(BundleError::Format { path, found: format.clone() });
            }
        }
        config.model.validate().map_err(|source| BundleError::Model { path: dir.join(CONFIG_FILE), source })?;
        metadata.check(&config, &meta_path)?;
        Ok(RunBundle { dir: dir.to_path_buf(), config, metadata })
    }

    /// Writes a new bundle's `config.json` and `metadata.json` (atomically, each) into `dir`.
    pub fn create(dir: &Path, config: RunConfig, metadata: BundleMetadata) -> Result<RunBundle, BundleError> {
        metadata.check(&config, &dir.join(METADATA_FILE))?;
        let bundle = RunBundle { dir: dir.to_path_buf(), config, metadata };
        write_json(&dir.join(CONFIG_FILE), &bundle.config)?;
        bundle.write_metadata()?;
        Ok(bundle)
    }

    /// Path of the weights file.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Path of the split file copied into the bundle.
    pub fn split_path(&self) -> PathBuf {
        self.dir.join(SPLIT_FILE)
    }

    /// The classifier with the trained weights, ready for inference: eval mode (BatchNorm on
    /// running statistics, dropout off, no autodiff) with BatchNorms folded into the
    /// convolutions. For gradients (Grad-CAM) use [`load_trainable`](Self::load_trainable).
    pub fn load_model(&self, device: &Device) -> Result<LeukemiaClassifier, BundleError> {
        Ok(self.load_trainable(device)?.for_inference())
    }

    /// The classifier with the trained weights as stored, on `device` (pass an autodiff device
    /// to take gradients, e.g. for Grad-CAM; call `.valid()` for eval-mode BatchNorm).
    pub fn load_trainable(&self, device: &Device) -> Result<LeukemiaClassifier, BundleError> {
        let path = self.weights_path();
        if !path.is_file() {
            return Err(BundleError::NotABundle { dir: self.dir.clone(), file: WEIGHTS_FILE });
        }
        let model =
            self.config.model.init(device).map_err(|source| BundleError::Model { path: path.clone(), source })?;
        model.try_load_file(&path).map_err(|e| BundleError::Model {
            path: path.clone(),
            source: ModelError::Record { path: path.clone(), reason: format!("cannot load weights: {e}") },
        })
    }

    /// Saves `model`'s weights as the bundle's weights (atomically: a temporary file, then a
    /// rename).
    pub fn save_weights(&self, model: &LeukemiaClassifier) -> Result<(), BundleError> {
        save_weights(model, &self.weights_path())
    }

    /// Sets the decision threshold and rewrites `metadata.json` atomically.
    pub fn set_threshold(&mut self, t: f64) -> Result<(), BundleError> {
        if !(0.0..=1.0).contains(&t) {
            return Err(BundleError::BadThreshold(t));
        }
        self.metadata.threshold = t;
        self.metadata.threshold_rule = "set by hand".to_string();
        self.write_metadata()
    }

    /// Rewrites `metadata.json` atomically from `self.metadata`.
    pub fn write_metadata(&self) -> Result<(), BundleError> {
        write_json(&self.dir.join(METADATA_FILE), &self.metadata)
    }

    /// p(leukemia) from one image's output probabilities (as [`crate::model::probabilities`]
    /// returns them): binary, the sigmoid output; subtype, the summed softmax probability of
    /// the leukemia classes.
    pub fn p_leukemia(&self, probs: &[f32]) -> f32 {
        p_leukemia(&self.metadata, probs)
    }

    /// Whether p(leukemia) calls the image leukemia at the bundle's threshold.
    pub fn is_leukemia(&self, p_leukemia: f32) -> bool {
        p_leukemia as f64 >= self.metadata.threshold
    }

    /// Index of the most probable output class (subtype) or 0/1 at the threshold (binary),
    /// with its name from `class_names`.
    pub fn predicted_class(&self, probs: &[f32]) -> (usize, &str) {
        let k = match self.metadata.task {
            Task::Binary => usize::from(self.is_leukemia(self.p_leukemia(probs))),
            Task::Subtype { .. } => {
                probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
            }
        };
        let name = self.metadata.class_names.get(k).map(String::as_str).unwrap_or("?");
        (k, name)
    }
}

/// [`RunBundle::p_leukemia`] on bare metadata.
pub fn p_leukemia(meta: &BundleMetadata, probs: &[f32]) -> f32 {
    match meta.task {
        Task::Binary => probs.first().copied().unwrap_or(0.0),
        Task::Subtype { .. } => meta
            .class_names
            .iter()
            .zip(probs)
            .filter(|(name, _)| meta.leukemia_classes.contains(name))
            .map(|(_, p)| *p)
            .sum::<f32>()
            .clamp(0.0, 1.0),
    }
}

/// Saves a classifier's weights to `path` (burnpack; the writer goes through a temporary file
/// and a rename, so a crash leaves the old file or the new one).
pub fn save_weights(model: &LeukemiaClassifier, path: &Path) -> Result<(), BundleError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BundleError::Io { path: dir.to_path_buf(), source })?;
    }
    model.clone().save_file(path).map_err(|e| BundleError::Model {
        path: path.to_path_buf(),
        source: ModelError::Record { path: path.to_path_buf(), reason: format!("cannot save weights: {e}") },
    })
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BundleError> {
    let bytes = std::fs::read(path).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|e| BundleError::Json { path: path.to_path_buf(), reason: e.to_string() })
}

/// Writes pretty JSON atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), BundleError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| BundleError::Json { path: path.to_path_buf(), reason: e.to_string() })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::Profile;

    fn sample(task: TaskKind) -> (RunConfig, BundleMetadata) {
        let d = Profile::Cpu.defaults(task, 4);
        let mut model = d.model;
        if let crate::model::BackboneConfig::Custom(c) = &mut model.backbone {
            *c = densenet_burn::DenseNetConfig::custom(4, vec![1, 1], 8, None);
        }
        let config = RunConfig {
            format: BUNDLE_FORMAT.into(),
            task,
            profile: Profile::Cpu,
            seed: 1,
            data: DataConfig {
                root: "data".into(),
                map: None,
                split_file: None,
                split: SplitConfig::default(),
                fingerprint: "abc".into(),
            },
            weights: WeightsSource::None,
            model: model.clone(),
            preprocess: d.preprocess.clone(),
            train: d.train,
        };
        let classes: Vec<String> = ["Benign", "Early", "Pre", "Pro"].iter().map(|s| s.to_string()).collect();
        let (class_names, leukemia) = match task {
            TaskKind::Binary => (vec!["healthy".to_string(), "leukemia".to_string()], vec!["leukemia".to_string()]),
            TaskKind::Subtype => (classes.clone(), classes[1..].to_vec()),
        };
        let metadata = BundleMetadata {
            format: BUNDLE_FORMAT.into(),
            task: model.task,
            class_names,
            leukemia_classes: leukemia,
            dataset_classes: vec![("Benign".into(), "healthy".into())],
            input_size: d.preprocess.input_size,
            normalization: d.preprocess.normalization.clone(),
            preprocess: d.preprocess,
            threshold: 0.5,
            threshold_rule: "test".into(),
            dataset_fingerprint: "abc".into(),
            split: None,
            best: None,
            test_metrics: BTreeMap::new(),
            versions: Versions::default(),
        };
        (config, metadata)
    }

    #[test]
    fn create_open_and_threshold_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (config, metadata) = sample(TaskKind::Subtype);
        RunBundle::create(dir.path(), config.clone(), metadata.clone()).unwrap();
        let mut b = RunBundle::open(dir.path()).unwrap();
        assert_eq!(b.config, config);
        assert_eq!(b.metadata, metadata);
        b.set_threshold(0.25).unwrap();
        assert!(b.set_threshold(1.5).is_err());
        assert_eq!(RunBundle::open(dir.path()).unwrap().metadata.threshold, 0.25);
        // Subtype p(leukemia) sums the leukemia classes.
        let p = b.p_leukemia(&[0.1, 0.2, 0.3, 0.4]);
        assert!((p - 0.9).abs() < 1e-6);
        assert_eq!(b.predicted_class(&[0.1, 0.2, 0.3, 0.4]), (3, "Pro"));
    }

    #[test]
    fn weights_round_trip_and_missing_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = RunBundle::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        let (config, metadata) = sample(TaskKind::Binary);
        let device = Device::flex();
        let model = config.model.init(&device).unwrap();
        let b = RunBundle::create(dir.path(), config, metadata).unwrap();
        let err = b.load_model(&device).unwrap_err().to_string();
        assert!(err.contains("model.bpk"), "{err}");
        b.save_weights(&model).unwrap();
        let loaded = b.load_model(&device).unwrap();
        let x = burn::tensor::Tensor::<4>::ones([1, 3, 32, 32], &device);
        let a = model.valid().forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let c = loaded.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert!((a[0] - c[0]).abs() < 1e-4, "{a:?} vs {c:?}");
        assert_eq!(b.p_leukemia(&[0.7]), 0.7);
    }

    #[test]
    fn inconsistent_metadata_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (config, mut metadata) = sample(TaskKind::Binary);
        metadata.input_size += 1;
        let err = RunBundle::create(dir.path(), config, metadata).unwrap_err().to_string();
        assert!(err.contains("input_size"), "{err}");
    }
}
