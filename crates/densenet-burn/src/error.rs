//! The crate's one error type: every variant names the file, key or shape at fault.

use std::path::PathBuf;

/// A tensor whose shape in the file differs from the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// torchvision key (`features.denseblock3.denselayer1.norm1.weight`).
    pub key: String,
    /// Shape the model expects.
    pub expected: Vec<usize>,
    /// Shape found in the file.
    pub found: Vec<usize>,
}

/// Errors from building DenseNets and loading their weights.
#[derive(Debug, thiserror::Error)]
pub enum DenseNetError {
    /// The configuration cannot build a network.
    #[error("invalid DenseNet config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read as a PyTorch checkpoint (missing, truncated, not a pickle/zip).
    #[error("cannot read {path} as a PyTorch state_dict: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Reader message.
        reason: String,
    },
    /// The file is a PyTorch file but holds no DenseNet tensors.
    #[error("{path} is not a DenseNet state_dict: {reason}")]
    NotAStateDict {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The file's tensors do not fit the model (another variant, wrong shapes, extra or
    /// missing keys). Lists every offending key.
    #[error("{path} does not fit {model}: {}", describe_incompatible(.file_blocks, .shape_mismatches, .missing, .unused))]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The model being loaded (`densenet201` or the custom config).
        model: String,
        /// Dense layers per block found in the file, if it looks like a DenseNet.
        file_blocks: Option<Vec<usize>>,
        /// Tensors with the wrong shape.
        shape_mismatches: Vec<ShapeMismatch>,
        /// Model tensors the file lacks (torchvision key names).
        missing: Vec<String>,
        /// File tensors the model has no place for (other than `num_batches_tracked` and
        /// the replaced classifier).
        unused: Vec<String>,
    },
    /// Any other per-tensor load failure (dtype, adapter).
    #[error("{path}: cannot load tensor: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Loader message.
        reason: String,
    },
    /// Saving or loading Burn's own format failed.
    #[error("{path}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Recorder message.
        reason: String,
    },
}

fn list(keys: &[String], limit: usize) -> String {
    let mut s = keys.iter().take(limit).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > limit {
        s.push_str(&format!(", ... and {} more", keys.len() - limit));
    }
    s
}

fn describe_incompatible(
    file_blocks: &Option<Vec<usize>>,
    shapes: &[ShapeMismatch],
    missing: &[String],
    unused: &[String],
) -> String {
    let mut parts = Vec::new();
    if let Some(blocks) = file_blocks {
        let known = crate::DenseNetVariant::ALL.into_iter().find(|v| v.block_config().as_slice() == blocks.as_slice());
        parts.push(match known {
            Some(v) => format!("the file looks like {v} (dense blocks {})", blocks_str(blocks)),
            None => format!("the file has dense blocks {}", blocks_str(blocks)),
        });
    }
    if !shapes.is_empty() {
        let shown: Vec<String> = shapes
            .iter()
            .take(10)
            .map(|m| format!("{} expected {:?} found {:?}", m.key, m.expected, m.found))
            .collect();
        let more = if shapes.len() > 10 { format!(", ... and {} more", shapes.len() - 10) } else { String::new() };
        parts.push(format!("{} shape mismatches: {}{more}", shapes.len(), shown.join("; ")));
    }
    if !missing.is_empty() {
        parts.push(format!("{} missing keys: {}", missing.len(), list(missing, 10)));
    }
    if !unused.is_empty() {
        parts.push(format!("{} unused keys: {}", unused.len(), list(unused, 10)));
    }
    parts.join("; ")
}

fn blocks_str(blocks: &[usize]) -> String {
    blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("/")
}
