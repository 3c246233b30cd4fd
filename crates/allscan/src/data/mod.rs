//! Stage 1 of the pipeline: image files -> a dataset index (layout, classes, labels, patients,
//! duplicates, unreadable files) -> leakage-safe splits.

pub mod augment;
pub mod batcher;
pub mod index;
pub mod layout;
pub mod phash;
pub mod split;
pub mod walk;

use std::path::PathBuf;

pub use index::{BadFile, ClassInfo, DatasetIndex, ImageRecord, IndexOptions};
pub use layout::{BinaryLabel, LabelMap, LayoutKind};
pub use split::{Part, SplitConfig, SplitFile, SplitItem};

/// Errors of the dataset layer; each names the offending path or value.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: no such folder")]
    NotFound { path: PathBuf },
    #[error("{path}: not a folder")]
    NotADirectory { path: PathBuf },
    #[error("{path}: no image files found (looked for .jpg, .png, .tif, .bmp, ...)")]
    Empty { path: PathBuf },
    #[error("{path}: none of the image files could be read ({bad} unreadable)")]
    NoReadableImages { path: PathBuf, bad: usize },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    #[error("bad label map `{spec}`: {reason}")]
    BadMap { spec: String, reason: String },
    #[error("no binary label for class folder(s) {}: pass --map NAME=healthy|leukemia,...", classes.join(", "))]
    UnmappedClasses { classes: Vec<String> },
    #[error("bad split settings: {reason}")]
    BadSplitConfig { reason: String },
    #[error(
        "{path} was made for a different dataset than {data} ({detail}); make a new split with `allscan data split`"
    )]
    SplitMismatch { path: PathBuf, data: PathBuf, detail: String },
}
