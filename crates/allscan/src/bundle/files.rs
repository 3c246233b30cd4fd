//! The bundle's files as bytes: JSON read and written atomically, weights with path-derived
//! parameter ids (so equal trainings write equal bytes), and `integrity.json`, the SHA-256 of
//! each file, checked on every read.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BundleError, INTEGRITY_FILE, INTEGRITY_FORMAT};
use crate::fsutil::write_atomic;
use crate::model::{LeukemiaClassifier, ModelError};
use crate::params::path_param_id;

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
    pub(super) fn new() -> Self {
        Self { format: INTEGRITY_FORMAT.into(), algorithm: "sha256".into(), files: BTreeMap::new() }
    }

    /// Checks `bytes` (the content of `dir/file`) against the recorded hash.
    pub(super) fn verify(&self, dir: &Path, file: &str, bytes: &[u8]) -> Result<(), BundleError> {
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

/// Saves a classifier's weights to `path` (burnpack with path-derived parameter ids, see
/// [`weights_bytes`]; written to a temporary file and renamed, so a crash leaves the old
/// file or the new one). Used for the bundle's weights and for checkpoints alike.
pub fn save_weights(model: &LeukemiaClassifier, path: &Path) -> Result<(), BundleError> {
    write_weights(model, path).map(|_| ())
}

/// [`save_weights`], returning the SHA-256 of the bytes written.
pub(super) fn write_weights(model: &LeukemiaClassifier, path: &Path) -> Result<String, BundleError> {
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

pub(super) fn read_bytes(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, BundleError> {
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
