//! Run bundle I/O, the seam between training and every later command: a run directory ->
//! its config tree ([`RunConfig`], `config.json`: preprocessing, model, training, the only
//! place each setting is stored), what training produced ([`BundleMetadata`],
//! `metadata.json`: classes, threshold, dataset fingerprint, split, best epoch, test figures,
//! versions) and the trained weights (`model.bpk`).
//!
//! Layout of `RUN/`:
//!
//! ```text
//! config.json     the whole config tree (task, profile, model, preprocess, train, seed, data)
//! metadata.json   classes, leukemia classes, threshold, fingerprint, split, best epoch, versions
//! model.bpk       the best epoch's weights (Burn burnpack, parameter ids derived from paths)
//! integrity.json  SHA-256 of config.json, metadata.json and model.bpk
//! split.json      the split the run used (a copy of --split, or the one it made)
//! metrics.csv     one row per epoch, both stages
//! train.log       the run's log
//! checkpoint/     the last finished epoch's state, for `allscan train --resume`
//! ```
//!
//! `predict`, `eval`, `serve` and `explain` rebuild everything from here: no constant of the
//! run is repeated elsewhere, and nothing after training rewrites the bundle (`eval` writes
//! the threshold it chooses into its own output). Preprocessing, input size and
//! normalisation are read from `config.json` ([`RunBundle::preprocess`]). Bundles written
//! before that kept copies of them in `metadata.json` (`preprocess`, `input_size`,
//! `normalization`): those are still read, checked against `config.json` and otherwise
//! ignored; a copy that disagrees is refused with [`BundleError::Inconsistent`], naming the
//! file and the field.
//!
//! Integrity: [`RunBundle::create`] records the SHA-256 of `config.json` and `metadata.json`
//! (and of `model.bpk` when it is already there) in `integrity.json`;
//! [`RunBundle::save_weights`] updates the weights' entry.
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

mod files;
pub mod testing;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use allscan_preprocess::PreprocessConfig;
use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::config::{Profile, TaskKind, TrainConfig, WeightsSource};
use crate::data::SplitConfig;
use crate::decision::Decision;
use crate::model::{ClassifierConfig, LeukemiaClassifier, ModelError, Task};
use files::{parse_json, read_bytes, write_weights};
pub use files::{read_integrity, read_json, save_weights, sha256_hex, weights_bytes, write_json, IntegrityRecord};

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
    /// The files disagree with each other (e.g. an older metadata.json's copy of the
    /// preprocessing vs config.json's).
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
    /// Preprocessing, exactly as in training; every reader takes it from here
    /// ([`RunBundle::preprocess`]).
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

/// What training produced (`metadata.json`); the settings it ran with are the
/// [`RunConfig`].
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
    /// How this run's outputs are called: its head, classes and threshold.
    pub fn decision(&self) -> Decision {
        Decision {
            task: self.task,
            class_names: self.class_names.clone(),
            leukemia_classes: self.leukemia_classes.clone(),
            threshold: self.threshold,
        }
    }

    /// Checks the fields against each other and the config.
    fn check(&self, config: &RunConfig, path: &Path) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::Inconsistent { path: path.to_path_buf(), reason });
        if self.task != config.model.task {
            return bad(format!("task {:?} differs from config.json's {:?}", self.task, config.model.task));
        }
        if let Err(e) =
            Decision::new(self.task, self.class_names.clone(), self.leukemia_classes.clone(), self.threshold)
        {
            return bad(e.to_string());
        }
        Ok(())
    }
}

/// Parses `metadata.json`. Copies of the config that older bundles kept there
/// (`preprocess`, `input_size`, `normalization`) are taken out and checked against
/// `config.json`, the one place they are read from now: equal, they are ignored; different,
/// the bundle is refused, naming the file and the field (which of the two was used before
/// cannot be told from here).
fn parse_metadata(path: &Path, bytes: &[u8], config: &RunConfig) -> Result<BundleMetadata, BundleError> {
    let mut value: serde_json::Value = parse_json(path, bytes)?;
    if let Some(fields) = value.as_object_mut() {
        let p = &config.preprocess;
        legacy_copy(path, fields.remove("preprocess"), "preprocess", "preprocess", p)?;
        legacy_copy(path, fields.remove("input_size"), "input_size", "preprocess.input_size", &p.input_size)?;
        legacy_copy(
            path,
            fields.remove("normalization"),
            "normalization",
            "preprocess.normalization",
            &p.normalization,
        )?;
    }
    serde_json::from_value(value).map_err(|e| BundleError::Json { path: path.to_path_buf(), reason: e.to_string() })
}

/// Checks one field of an older `metadata.json` against `config.json`'s `key`.
fn legacy_copy<T>(
    path: &Path,
    copy: Option<serde_json::Value>,
    field: &str,
    key: &str,
    config: &T,
) -> Result<(), BundleError>
where
    T: serde::de::DeserializeOwned + PartialEq,
{
    let Some(copy) = copy else { return Ok(()) };
    let copy: T = serde_json::from_value(copy)
        .map_err(|e| BundleError::Json { path: path.to_path_buf(), reason: format!("field `{field}`: {e}") })?;
    if copy != *config {
        return Err(BundleError::Inconsistent {
            path: path.to_path_buf(),
            reason: format!(
                "field `{field}` (a copy older bundles kept) differs from {CONFIG_FILE}'s `{key}`, which is \
                 the one read now; make them agree, or delete `{field}` from {METADATA_FILE} to use {CONFIG_FILE}'s"
            ),
        });
    }
    Ok(())
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
        if config.format != BUNDLE_FORMAT {
            return Err(BundleError::Format { path: config_path, found: config.format });
        }
        let metadata = parse_metadata(&meta_path, &meta_bytes, &config)?;
        if metadata.format != BUNDLE_FORMAT {
            return Err(BundleError::Format { path: meta_path, found: metadata.format });
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

    /// The preprocessing the model was trained with (`config.json`'s `preprocess`): input
    /// size, normalisation, view, decode limits.
    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.config.preprocess
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
}

#[cfg(test)]
mod tests;
