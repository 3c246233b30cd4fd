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
//! model.bpk       the best epoch's weights (Burn burnpack, parameter ids derived from paths)
//! integrity.json  SHA-256 of config.json, metadata.json and model.bpk
//! split.json      the split the run used (a copy of --split, or the one it made)
//! metrics.csv     one row per epoch, both stages
//! train.log       the run's log
//! checkpoint/     the last finished epoch's state, for `allscan train --resume`
//! ```
//!
//! `predict`, `eval`, `serve` and `explain` rebuild everything from here: no constant of the
//! run is repeated elsewhere.
//!
//! Integrity: [`RunBundle::create`] records the SHA-256 of `config.json` and `metadata.json`
//! (and of `model.bpk` when it is already there) in `integrity.json`;
//! [`RunBundle::save_weights`] and [`RunBundle::write_metadata`] update their entry.
//! [`RunBundle::open`] verifies the two JSON files and [`RunBundle::load_trainable`] the
//! weights (hashing the very bytes it then loads); a mismatch is refused with
//! [`BundleError::IntegrityMismatch`], naming the file and both hashes. Decision for older
//! bundles (written before the hashes were recorded, so without `integrity.json`): they still
//! load, with one warning on stderr per open, because refusing them would strand every
//! trained run; retrain (or re-save the weights) to get a verified bundle. This guards
//! against damage (a flipped bit, a truncated copy, a file from another run), not against
//! someone who rewrites `integrity.json` as well.
//!
//! Determinism: [`save_weights`] writes every tensor with a parameter id derived from its
//! module path ([`path_param_id`](crate::params::path_param_id)) instead of Burn's random one, so two identical trainings
//! write byte-identical `model.bpk` files and bundles can be compared by hash. The live
//! model gets the same ids at construction ([`with_path_ids`](crate::params::with_path_ids)), so optimizer state (keyed by
//! id) still matches the weights after a resume from a checkpoint.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use allscan_preprocess::{Normalization, PreprocessConfig};
use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Profile, TaskKind, TrainConfig, WeightsSource};
use crate::data::SplitConfig;
use crate::fsutil::write_atomic;
use crate::model::{ClassifierConfig, LeukemiaClassifier, ModelError, Task};
use crate::params::path_param_id;

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
/// SHA-256 of the other files.
pub const INTEGRITY_FILE: &str = "integrity.json";
/// Format tag of `integrity.json`.
pub const INTEGRITY_FORMAT: &str = "allscan-integrity-v1";

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
    /// A file's SHA-256 differs from the one recorded in `integrity.json`.
    #[error(
        "{path}: SHA-256 is {actual} but {INTEGRITY_FILE} records {recorded}: the file was changed or damaged \
         after it was written; restore it from a good copy or retrain"
    )]
    IntegrityMismatch {
        /// The file.
        path: PathBuf,
        /// The hash in `integrity.json`.
        recorded: String,
        /// The hash of the file as read.
        actual: String,
    },
    /// `integrity.json` exists but has no entry for a file the bundle holds.
    #[error("{path}: not recorded in {INTEGRITY_FILE}, so it cannot be verified (copied in from elsewhere?)")]
    IntegrityUnrecorded {
        /// The file.
        path: PathBuf,
    },
}

/// `integrity.json`: the SHA-256 (lowercase hex) of each bundle file, by file name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityRecord {
    /// [`INTEGRITY_FORMAT`].
    pub format: String,
    /// Always `sha256`.
    pub algorithm: String,
    /// File name inside the bundle -> hex digest.
    pub files: BTreeMap<String, String>,
}

impl IntegrityRecord {
    fn new() -> Self {
        Self { format: INTEGRITY_FORMAT.into(), algorithm: "sha256".into(), files: BTreeMap::new() }
    }

    /// Checks `bytes` (the content of `dir/file`) against the recorded hash.
    fn verify(&self, dir: &Path, file: &str, bytes: &[u8]) -> Result<(), BundleError> {
        let path = dir.join(file);
        let recorded = self.files.get(file).ok_or_else(|| BundleError::IntegrityUnrecorded { path: path.clone() })?;
        let actual = sha256_hex(bytes);
        if !recorded.eq_ignore_ascii_case(&actual) {
            return Err(BundleError::IntegrityMismatch { path, recorded: recorded.clone(), actual });
        }
        Ok(())
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads `dir/integrity.json`; `None` for an older bundle that has none.
pub fn read_integrity(dir: &Path) -> Result<Option<IntegrityRecord>, BundleError> {
    let path = dir.join(INTEGRITY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let record: IntegrityRecord = read_json(&path)?;
    if record.format != INTEGRITY_FORMAT || record.algorithm != "sha256" {
        return Err(BundleError::Format { path, found: format!("{} / {}", record.format, record.algorithm) });
    }
    Ok(Some(record))
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
        let config_path = dir.join(CONFIG_FILE);
        let meta_path = dir.join(METADATA_FILE);
        let config_bytes = read_bytes(&config_path)?;
        let meta_bytes = read_bytes(&meta_path)?;
        match read_integrity(dir)? {
            Some(record) => {
                record.verify(dir, CONFIG_FILE, &config_bytes)?;
                record.verify(dir, METADATA_FILE, &meta_bytes)?;
            }
            // A library printing is unusual; it is the one place every command (predict, eval,
            // serve, explain) passes through, and the warning must not depend on each of them.
            None => eprintln!(
                "warning: {}: no {INTEGRITY_FILE} (a bundle written before allscan recorded hashes): \
                 its files are not verified",
                dir.display()
            ),
        }
        let config: RunConfig = parse_json(&config_path, &config_bytes)?;
        let metadata: BundleMetadata = parse_json(&meta_path, &meta_bytes)?;
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
        let mut record = IntegrityRecord::new();
        record.files.insert(CONFIG_FILE.into(), write_json(&dir.join(CONFIG_FILE), &bundle.config)?);
        record.files.insert(METADATA_FILE.into(), write_json(&dir.join(METADATA_FILE), &bundle.metadata)?);
        // Training writes the best epoch's weights before the bundle: record them as they are.
        let weights = bundle.weights_path();
        if weights.is_file() {
            record.files.insert(WEIGHTS_FILE.into(), sha256_hex(&read_bytes(&weights)?));
        }
        write_json(&dir.join(INTEGRITY_FILE), &record)?;
        Ok(bundle)
    }

    /// Sets `file`'s entry in `integrity.json`; an older bundle without one is left as it is
    /// (starting a record there would make its other, unrecorded files fail to load).
    fn record_hash(&self, file: &str, hash: String) -> Result<(), BundleError> {
        if let Some(mut record) = read_integrity(&self.dir)? {
            record.files.insert(file.into(), hash);
            write_json(&self.dir.join(INTEGRITY_FILE), &record)?;
        }
        Ok(())
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
        // Hash the bytes that are loaded, not the file a second time.
        let bytes = read_bytes(&path)?;
        if let Some(record) = read_integrity(&self.dir)? {
            record.verify(&self.dir, WEIGHTS_FILE, &bytes)?;
        }
        let model =
            self.config.model.init(device).map_err(|source| BundleError::Model { path: path.clone(), source })?;
        let bad = |reason: String| BundleError::Model {
            path: path.clone(),
            source: ModelError::Record { path: path.clone(), reason: format!("cannot load weights: {reason}") },
        };
        // The burnpack reader can panic on some damaged files (an unverified older bundle).
        catch_unwind(AssertUnwindSafe(|| {
            ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).and_then(|r| model.try_load_record(r))
        }))
        .map_err(|_| bad("the record reader panicked on this file".into()))?
        .map_err(|e| bad(e.to_string()))
    }

    /// Saves `model`'s weights as the bundle's weights (atomically: a temporary file, then a
    /// rename) and records their hash.
    pub fn save_weights(&self, model: &LeukemiaClassifier) -> Result<(), BundleError> {
        let hash = write_weights(model, &self.weights_path())?;
        self.record_hash(WEIGHTS_FILE, hash)
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

    /// Rewrites `metadata.json` atomically from `self.metadata` and records its hash.
    pub fn write_metadata(&self) -> Result<(), BundleError> {
        let hash = write_json(&self.dir.join(METADATA_FILE), &self.metadata)?;
        self.record_hash(METADATA_FILE, hash)
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

/// Saves a classifier's weights to `path` (burnpack with path-derived parameter ids, see
/// [`weights_bytes`]; written to a temporary file and renamed, so a crash leaves the old
/// file or the new one). Used for the bundle's weights and for checkpoints alike.
pub fn save_weights(model: &LeukemiaClassifier, path: &Path) -> Result<(), BundleError> {
    write_weights(model, path).map(|_| ())
}

/// [`save_weights`], returning the SHA-256 of the bytes written.
fn write_weights(model: &LeukemiaClassifier, path: &Path) -> Result<String, BundleError> {
    let bytes = weights_bytes(model, path)?;
    write_atomic(path, &bytes).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })?;
    Ok(sha256_hex(&bytes))
}

/// A module's weights as burnpack bytes that depend only on its structure and values: Burn's
/// record carries each parameter's random [`ParamId`](burn::module::ParamId) (and BatchNorm running statistics keep
/// theirs even through [`crate::params::with_path_ids`], which cannot reach them), so the ids are replaced
/// by [`path_param_id`] of the tensor's name. Loading restores these ids into the module.
/// `path` only names the file in errors.
pub fn weights_bytes<M: Module>(model: &M, path: &Path) -> Result<Vec<u8>, BundleError> {
    let bad = |e: String| BundleError::Model {
        path: path.to_path_buf(),
        source: ModelError::Record { path: path.to_path_buf(), reason: format!("cannot save weights: {e}") },
    };
    let bytes = model.clone().into_record().into_bytes().map_err(|e| bad(e.to_string()))?;
    let mut tensors =
        burn_pack::Reader::from_bytes(bytes).and_then(|r| r.into_tensors()).map_err(|e| bad(e.to_string()))?;
    for t in &mut tensors {
        t.param_id = Some(path_param_id(&t.name).val());
    }
    let out = burn_pack::Writer::new(tensors).into_bytes().map_err(|e| bad(e.to_string()))?;
    Ok(out.to_vec())
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, BundleError> {
    serde_json::from_slice(bytes).map_err(|e| BundleError::Json { path: path.to_path_buf(), reason: e.to_string() })
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BundleError> {
    parse_json(path, &read_bytes(path)?)
}

/// Writes pretty JSON atomically; returns the SHA-256 of the bytes written.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<String, BundleError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| BundleError::Json { path: path.to_path_buf(), reason: e.to_string() })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })?;
    Ok(sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Profile;

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

    /// A binary bundle with saved weights in a fresh temporary directory.
    fn bundle_with_weights() -> (tempfile::TempDir, RunBundle, LeukemiaClassifier) {
        let dir = tempfile::tempdir().unwrap();
        let (config, metadata) = sample(TaskKind::Binary);
        let model = config.model.init(&Device::flex()).unwrap();
        let b = RunBundle::create(dir.path(), config, metadata).unwrap();
        b.save_weights(&model).unwrap();
        (dir, b, model)
    }

    #[test]
    fn a_flipped_byte_in_the_weights_is_refused_with_both_hashes() {
        let (dir, b, _) = bundle_with_weights();
        let path = dir.path().join(WEIGHTS_FILE);
        let good = std::fs::read(&path).unwrap();
        let recorded = sha256_hex(&good);
        let mut bad = good.clone();
        let k = bad.len() - 3; // inside the tensor data, where a flip still parses
        bad[k] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let err = RunBundle::open(dir.path()).unwrap().load_model(&Device::flex()).unwrap_err();
        assert!(matches!(err, BundleError::IntegrityMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("model.bpk"), "{msg}");
        assert!(msg.contains(&recorded), "{msg}");
        assert!(msg.contains(&sha256_hex(&bad)), "{msg}");
        // Restored, it loads again.
        std::fs::write(&path, &good).unwrap();
        b.load_model(&Device::flex()).unwrap();
    }

    #[test]
    fn edited_config_or_metadata_is_refused_and_own_rewrites_are_recorded() {
        let (dir, mut b, _) = bundle_with_weights();
        // The bundle's own rewrite (a threshold) updates the record: still opens.
        b.set_threshold(0.3).unwrap();
        RunBundle::open(dir.path()).unwrap().load_model(&Device::flex()).unwrap();
        for file in [CONFIG_FILE, METADATA_FILE] {
            let path = dir.path().join(file);
            let good = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, good.replacen("\n", "\n ", 1)).unwrap();
            let err = RunBundle::open(dir.path()).unwrap_err();
            assert!(matches!(err, BundleError::IntegrityMismatch { .. }), "{file}: {err:?}");
            assert!(err.to_string().contains(file), "{err}");
            std::fs::write(&path, good).unwrap();
        }
        // Weights copied in without a record are refused too.
        let mut record = read_integrity(dir.path()).unwrap().unwrap();
        record.files.remove(WEIGHTS_FILE);
        write_json(&dir.path().join(INTEGRITY_FILE), &record).unwrap();
        let err = b.load_model(&Device::flex()).unwrap_err();
        assert!(matches!(err, BundleError::IntegrityUnrecorded { .. }), "{err:?}");
    }

    #[test]
    fn an_older_bundle_without_hashes_still_loads() {
        let (dir, mut b, _) = bundle_with_weights();
        std::fs::remove_file(dir.path().join(INTEGRITY_FILE)).unwrap();
        RunBundle::open(dir.path()).unwrap().load_model(&Device::flex()).unwrap();
        // Rewriting metadata does not start a partial record that would strand the weights.
        b.set_threshold(0.4).unwrap();
        assert!(!dir.path().join(INTEGRITY_FILE).exists());
        RunBundle::open(dir.path()).unwrap().load_model(&Device::flex()).unwrap();
    }

    #[test]
    fn the_same_seed_saves_byte_identical_weights_that_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = sample(TaskKind::Binary);
        let device = Device::flex();
        let mut files = Vec::new();
        let mut models = Vec::new();
        for k in 0..2 {
            device.seed(7);
            let model = config.model.init(&device).unwrap();
            let path = dir.path().join(format!("m{k}.bpk"));
            save_weights(&model, &path).unwrap();
            files.push(std::fs::read(&path).unwrap());
            models.push(model);
        }
        assert!(files[0] == files[1], "two saves of the same seeded model differ");
        // The live ids are the path ids the file records (BatchNorm running statistics aside).
        let ids = |m: &LeukemiaClassifier| {
            let mut c = IdCollector::default();
            m.visit(&mut c);
            c.0
        };
        let live = ids(&models[0]);
        let trainable: Vec<_> =
            live.iter().filter(|(p, _)| !p.ends_with("running_mean") && !p.ends_with("running_var")).collect();
        assert!(trainable.len() > 10 && trainable.iter().any(|(p, _)| p == "fc1.weight"), "{live:?}");
        for (p, id) in &trainable {
            assert_eq!(*id, path_param_id(p).val(), "{p}");
        }
        // A different seed gives different bytes (the test can fail).
        device.seed(8);
        let other = weights_bytes(&config.model.init(&device).unwrap(), Path::new("m.bpk")).unwrap();
        assert!(other != files[0]);
        // Loads back to the same values and the same ids, and re-saves to the same bytes.
        let loaded = config.model.init(&device).unwrap().try_load_file(dir.path().join("m0.bpk")).unwrap();
        let x = burn::tensor::Tensor::<4>::ones([1, 3, 32, 32], &device);
        let a = models[0].valid().forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let c = loaded.valid().forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a, c);
        let loaded_ids = ids(&loaded);
        assert!(trainable.iter().all(|t| loaded_ids.contains(t)));
        assert!(weights_bytes(&loaded, Path::new("m.bpk")).unwrap() == files[0]);
    }

    /// (dotted path, id) of every float tensor a module visits.
    #[derive(Default)]
    struct IdCollector(Vec<(String, u64)>, Vec<String>);
    impl burn::module::ModuleVisitor for IdCollector {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<D>>) {
            self.0.push((self.1.join("."), param.id.val()));
        }
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
