//! Checkpoints, written after every epoch: model weights + optimiser state (+ the weight
//! average, when the run keeps one) + where the run
//! stands (`checkpoint/state.json`). Each epoch's files go into a fresh folder and
//! `state.json` (written atomically, last) names it, so a `kill -9` at any moment leaves either
//! the previous checkpoint or the new one, never a mix. `--resume` continues from it and, since
//! every random draw is derived from (seed, stage, epoch), ends with the same weights as an
//! uninterrupted run.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::bundle::{read_json, save_weights, write_json, BestEpoch, BundleError, CHECKPOINT_DIR};
use crate::model::LeukemiaClassifier;

const STATE_FILE: &str = "state.json";
const MODEL_FILE: &str = "model.bpk";
const OPTIM_FILE: &str = "optim.bpk";
const AVERAGE_FILE: &str = "average.bpk";

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    /// 1 or 2.
    pub stage: u8,
    /// 1-based epoch within the stage.
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on the augmented views).
    pub train_accuracy: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy (subtype: top-1; binary: at 0.5).
    pub val_accuracy: f64,
    /// Validation AUC of p(leukemia).
    pub val_auc: Option<f64>,
    /// Wall-clock seconds of the epoch (training + validation).
    pub seconds: f64,
    /// Whether this epoch became the best so far.
    pub best: bool,
}

impl EpochRow {
    /// The CSV header's columns.
    pub const COLUMNS: [&'static str; 10] = [
        "stage",
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_auc",
        "seconds",
        "best",
    ];

    /// One CSV record, in [`Self::COLUMNS`] order.
    pub fn record(&self) -> [String; 10] {
        [
            self.stage.to_string(),
            self.epoch.to_string(),
            format!("{:.3e}", self.lr),
            format!("{:.5}", self.train_loss),
            format!("{:.4}", self.train_accuracy),
            format!("{:.5}", self.val_loss),
            format!("{:.4}", self.val_accuracy),
            self.val_auc.map(|a| format!("{a:.4}")).unwrap_or_default(),
            format!("{:.1}", self.seconds),
            self.best.to_string(),
        ]
    }
}

/// Where a run stands after its last finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Stage of the last finished epoch.
    pub stage: u8,
    /// Epochs finished in that stage.
    pub epoch: usize,
    /// Whether that stage is over (all epochs or early stop).
    pub stage_done: bool,
    /// Epochs in a row without a better validation figure (this stage).
    pub bad_epochs: usize,
    /// The best epoch so far (its weights are the bundle's `model.bpk`).
    pub best: Option<BestEpoch>,
    /// Every finished epoch.
    pub history: Vec<EpochRow>,
    /// Folder (under `checkpoint/`) with this epoch's model and optimiser.
    pub dir: String,
    /// Updates folded into the stage's weight average so far (0 without one).
    #[serde(default)]
    pub average_updates: u64,
}

/// The checkpoint folder of a run directory.
pub fn dir(run: &Path) -> PathBuf {
    run.join(CHECKPOINT_DIR)
}

/// Writes the epoch's weights, optimiser state and weight average (if any: the averaged model
/// and its update count) into a new folder, then `state.json`, then removes older folders.
pub fn save(
    run: &Path,
    state: &mut TrainState,
    model: &LeukemiaClassifier,
    optim: Option<&ModuleOptimizer>,
    average: Option<(&LeukemiaClassifier, u64)>,
) -> Result<(), BundleError> {
    let root = dir(run);
    let name = format!("s{}e{:03}", state.stage, state.epoch);
    let folder = root.join(&name);
    std::fs::create_dir_all(&folder).map_err(|source| BundleError::Io { path: folder.clone(), source })?;
    save_weights(model, &folder.join(MODEL_FILE))?;
    let optim_path = folder.join(OPTIM_FILE);
    match optim {
        Some(o) => o.save(&optim_path).map_err(|e| BundleError::Inconsistent {
            path: optim_path.clone(),
            reason: format!("cannot save optimiser state: {e}"),
        })?,
        None => {
            let _ = std::fs::remove_file(&optim_path);
        }
    }
    state.average_updates = 0;
    if let Some((avg, updates)) = average {
        save_weights(avg, &folder.join(AVERAGE_FILE))?;
        state.average_updates = updates;
    }
    state.dir = name.clone();
    write_json(&root.join(STATE_FILE), state)?;
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && n != name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// The saved state, if the run has one.
pub fn load_state(run: &Path) -> Result<Option<TrainState>, BundleError> {
    let path = dir(run).join(STATE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    read_json(&path).map(Some)
}

/// Path of the checkpointed weights.
pub fn model_path(run: &Path, state: &TrainState) -> PathBuf {
    dir(run).join(&state.dir).join(MODEL_FILE)
}

/// Path of the checkpointed weight average, if that epoch had one.
pub fn average_path(run: &Path, state: &TrainState) -> Option<PathBuf> {
    let p = dir(run).join(&state.dir).join(AVERAGE_FILE);
    p.is_file().then_some(p)
}

/// Path of the checkpointed optimiser state, if that epoch had one.
pub fn optim_path(run: &Path, state: &TrainState) -> Option<PathBuf> {
    let p = dir(run).join(&state.dir).join(OPTIM_FILE);
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_csv_keeps_its_columns_and_number_formats() {
        let row = |stage, best, val_auc| EpochRow {
            stage,
            epoch: 3,
            lr: 1e-4,
            train_loss: 0.123456,
            train_accuracy: 0.9,
            val_loss: 0.25,
            val_accuracy: 0.875,
            val_auc,
            seconds: 12.34,
            best,
        };
        let dir = tempfile::tempdir().unwrap();
        super::super::write_metrics(dir.path(), &[row(1, true, Some(0.95)), row(2, false, None)]).unwrap();
        let text = std::fs::read_to_string(dir.path().join(crate::bundle::METRICS_FILE)).unwrap();
        assert_eq!(
            text,
            "stage,epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,val_auc,seconds,best\n\
             1,3,1.000e-4,0.12346,0.9000,0.25000,0.8750,0.9500,12.3,true\n\
             2,3,1.000e-4,0.12346,0.9000,0.25000,0.8750,,12.3,false\n"
        );
    }
}
