//! torchvision weight import and Burn-format save/load for [`DenseNet`].
//!
//! Input: a torchvision DenseNet `state_dict` file (`densenet201-c1103571.pth`, legacy pickle or
//! zip format) or a Burn `.bpk` record. Output: the model with every tensor applied, or a
//! [`DenseNetError`] that lists each missing, unused or mis-shaped key by its torchvision name.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, PytorchStore};

use crate::{DenseNet, DenseNetConfig, DenseNetError, ShapeMismatch};

/// The key remap from torchvision's state_dict to this crate's fields, applied in order:
///
/// 1. `denselayerN.norm.1` -> `denselayerN.norm1` (and `conv.1`, `norm.2`, `conv.2`): the
///    legacy names in the 2017 `.pth` files, which torchvision itself rewrites on load.
/// 2. `denseblockK` / `denselayerN` / `transitionK` -> `denseblock.K` / ... : numbered
///    Sequential children become `Vec` entries; Burn's contiguous index mapping then
///    renumbers `1..n` to `0..n-1`.
///
/// BatchNorm `weight`/`bias` -> `gamma`/`beta` is done by Burn's PyTorch adapter.
pub const TORCHVISION_KEY_REMAP: [(&str, &str); 2] = [
    // features.denseblock1.denselayer1.norm.1.weight -> features.denseblock1.denselayer1.norm1.weight
    (r"\.(norm|conv)\.([12])\.", ".${1}${2}."),
    // features.denseblock1.denselayer1.norm1 -> features.denseblock.1.denselayer.1.norm1
    (r"\b(denseblock|denselayer|transition)(\d+)\b", "${1}.${2}"),
];

/// What a torchvision import applied and what it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Tensors copied into the model.
    pub applied: usize,
    /// Model tensors the file lacks (torchvision names).
    pub missing: Vec<String>,
    /// File tensors with no place in the model, other than the ignored ones below.
    pub unused: Vec<String>,
    /// File tensors deliberately dropped: BatchNorm `num_batches_tracked` counters and, for a
    /// features-only model, torchvision's ImageNet `classifier`.
    pub ignored: Vec<String>,
    /// Tensors whose shapes differ (torchvision names).
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// Other per-tensor errors (dtype, adapter), as text.
    pub other_errors: Vec<String>,
    /// Dense layers per block found in the file.
    pub file_blocks: Vec<usize>,
}

impl ImportReport {
    /// True when every model tensor was filled and nothing unexpected was left over.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
            && self.unused.is_empty()
            && self.shape_mismatches.is_empty()
            && self.other_errors.is_empty()
    }
}

fn model_name(config: &DenseNetConfig) -> String {
    match config.variant() {
        Some(v) => v.name().to_string(),
        None => format!(
            "custom DenseNet (growth {}, blocks {:?}, {} initial features)",
            config.growth_rate, config.block_config, config.num_init_features
        ),
    }
}

/// Converts one of this crate's parameter paths back to torchvision's key
/// (`features.denseblock.2.denselayer.0.norm1.gamma` -> `features.denseblock3.denselayer1.norm1.weight`).
pub fn burn_key_to_torchvision(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        let numbered = matches!(p, "denseblock" | "denselayer" | "transition");
        match (numbered, parts.get(i + 1).and_then(|n| n.parse::<usize>().ok())) {
            (true, Some(n)) => {
                out.push(format!("{p}{}", n + 1));
                i += 2;
            }
            _ => {
                out.push(p.to_string());
                i += 1;
            }
        }
    }
    if let Some(last) = out.last_mut() {
        if last == "gamma" {
            *last = "weight".into();
        } else if last == "beta" {
            *last = "bias".into();
        }
    }
    out.join(".")
}

/// Dense layers per block in a set of (remapped or torchvision) keys.
fn blocks_in_keys<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<usize> {
    let mut blocks: BTreeMap<usize, usize> = BTreeMap::new();
    for key in keys {
        let tv = burn_key_to_torchvision(key);
        let mut block = None;
        for part in tv.split('.') {
            if let Some(n) = part.strip_prefix("denseblock").and_then(|s| s.parse().ok()) {
                block = Some(n);
            } else if let (Some(b), Some(l)) =
                (block, part.strip_prefix("denselayer").and_then(|s| s.parse::<usize>().ok()))
            {
                let e = blocks.entry(b).or_insert(0);
                *e = (*e).max(l);
            }
        }
    }
    blocks.into_values().collect()
}

fn store_for(path: &Path) -> PytorchStore {
    let mut store = PytorchStore::from_file(path);
    for (from, to) in TORCHVISION_KEY_REMAP {
        store = store.with_key_remapping(from, to);
    }
    // Strictness is ours (below): the store must hand back the full result, not stop early.
    store.allow_partial(true).validate(false)
}

/// Applies a torchvision state_dict to `model` and reports what happened, without judging it.
/// `model` may be left partly loaded; use [`load_torchvision`] for the strict version.
pub fn apply_torchvision(
    model: &mut DenseNet,
    config: &DenseNetConfig,
    path: &Path,
) -> Result<ImportReport, DenseNetError> {
    let path_buf = path.to_path_buf();
    if !path.is_file() {
        return Err(DenseNetError::Unreadable { path: path_buf, reason: "no such file".into() });
    }
    let mut store = store_for(path);
    let mut keys = read_keys(&mut store, &path_buf)?;
    // A training checkpoint (`{"state_dict": {...}, "epoch": ...}`): read the nested dict.
    if let Some(top) = nested_state_dict(&keys) {
        store = store_for(path).with_top_level_key(top);
        keys = read_keys(&mut store, &path_buf)?;
    }
    if keys.is_empty() {
        return Err(DenseNetError::NotAStateDict { path: path_buf, reason: "it holds no tensors".into() });
    }
    if !keys.iter().any(|k| k.contains("denseblock") || k.contains("conv0")) {
        return Err(DenseNetError::NotAStateDict {
            path: path_buf,
            reason: format!(
                "none of its {} tensors is a DenseNet key (first: {})",
                keys.len(),
                keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let file_blocks = blocks_in_keys(keys.iter());
    let result = catch_unwind(AssertUnwindSafe(|| model.load_from(&mut store)))
        .map_err(|_| unreadable(&path_buf, "the reader panicked on this file".into()))?
        .map_err(|e| unreadable(&path_buf, e.to_string()))?;

    let mut report = ImportReport { applied: result.applied.len(), file_blocks, ..Default::default() };
    report.missing = result.missing.iter().map(|(k, _)| burn_key_to_torchvision(k)).collect();
    for k in &result.unused {
        let tv = burn_key_to_torchvision(k);
        let replaced_head = config.num_classes.is_none() && tv.starts_with("classifier.");
        if tv.ends_with("num_batches_tracked") || replaced_head {
            report.ignored.push(tv);
        } else {
            report.unused.push(tv);
        }
    }
    for e in &result.errors {
        match e {
            ApplyError::ShapeMismatch { path, expected, found } => report.shape_mismatches.push(ShapeMismatch {
                key: burn_key_to_torchvision(path),
                expected: expected.to_vec(),
                found: found.to_vec(),
            }),
            other => report.other_errors.push(other.to_string()),
        }
    }
    Ok(report)
}

/// The pickle reader is third-party code fed untrusted bytes: a panic in it becomes an error
/// naming the file rather than a crash.
fn read_keys(store: &mut PytorchStore, path: &Path) -> Result<Vec<String>, DenseNetError> {
    catch_unwind(AssertUnwindSafe(|| burn::store::ModuleStore::keys(store)))
        .map_err(|_| unreadable(path, "the reader panicked on this file".into()))?
        .map_err(|e| unreadable(path, e.to_string()))
}

/// `Some("state_dict")` when the DenseNet tensors sit under one of the usual checkpoint keys.
fn nested_state_dict(keys: &[String]) -> Option<&'static str> {
    ["state_dict", "model_state_dict", "model"].into_iter().find(|top| {
        let prefix = format!("{top}.");
        keys.iter().any(|k| k.starts_with(&prefix) && (k.contains("denseblock") || k.contains("conv0")))
    })
}

fn unreadable(path: &Path, reason: String) -> DenseNetError {
    DenseNetError::Unreadable { path: path.to_path_buf(), reason }
}

/// Strict torchvision import: builds `config`'s network on `device`, applies the file and
/// fails unless every model tensor was filled with the right shape and nothing but
/// `num_batches_tracked` (and, for a features-only config, the ImageNet `classifier`) was left
/// over.
pub fn load_torchvision(
    config: &DenseNetConfig,
    path: &Path,
    device: &burn::tensor::Device,
) -> Result<(DenseNet, ImportReport), DenseNetError> {
    let mut model = DenseNet::new(config, device)?;
    let report = apply_torchvision(&mut model, config, path)?;
    check_report(&report, config, path)?;
    Ok((model, report))
}

/// Turns an incomplete [`ImportReport`] into [`DenseNetError::Incompatible`].
pub fn check_report(report: &ImportReport, config: &DenseNetConfig, path: &Path) -> Result<(), DenseNetError> {
    if let Some(e) = report.other_errors.first() {
        return Err(DenseNetError::Load {
            path: path.to_path_buf(),
            reason: format!("{e} ({} such errors)", report.other_errors.len()),
        });
    }
    if report.is_complete() {
        return Ok(());
    }
    Err(DenseNetError::Incompatible {
        path: path.to_path_buf(),
        model: model_name(config),
        file_blocks: (report.file_blocks != config.block_config).then(|| report.file_blocks.clone()),
        shape_mismatches: report.shape_mismatches.clone(),
        missing: report.missing.clone(),
        unused: report.unused.clone(),
    })
}

/// Saves `model` in Burn's format (burnpack) at `path`.
pub fn save_burnpack(model: &DenseNet, path: &Path) -> Result<(), DenseNetError> {
    model
        .clone()
        .save_file(path)
        .map_err(|e| DenseNetError::Record { path: path.to_path_buf(), reason: format!("cannot save: {e}") })
}

/// Loads a Burn-format record written by [`save_burnpack`] into a fresh `config` network.
pub fn load_burnpack(
    config: &DenseNetConfig,
    path: &Path,
    device: &burn::tensor::Device,
) -> Result<DenseNet, DenseNetError> {
    let model = DenseNet::new(config, device)?;
    let path_buf: PathBuf = path.to_path_buf();
    catch_unwind(AssertUnwindSafe(|| model.try_load_file(&path_buf)))
        .map_err(|_| DenseNetError::Record {
            path: path_buf.clone(),
            reason: "the record reader panicked on this file".into(),
        })?
        .map_err(|e| DenseNetError::Record { path: path_buf, reason: format!("cannot load: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_keys_map_back_to_torchvision() {
        assert_eq!(
            burn_key_to_torchvision("features.denseblock.2.denselayer.0.norm1.gamma"),
            "features.denseblock3.denselayer1.norm1.weight"
        );
        assert_eq!(burn_key_to_torchvision("features.transition.0.conv.weight"), "features.transition1.conv.weight");
        assert_eq!(burn_key_to_torchvision("features.norm5.running_var"), "features.norm5.running_var");
    }

    #[test]
    fn counts_blocks_in_keys() {
        let keys: Vec<String> = [
            "features.denseblock.0.denselayer.0.norm1.gamma",
            "features.denseblock.0.denselayer.5.norm1.gamma",
            "features.denseblock.1.denselayer.11.conv2.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(blocks_in_keys(keys.iter()), vec![6, 12]);
    }
}
