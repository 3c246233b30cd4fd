//! Training stage: a dataset index + split -> a run bundle ([`crate::bundle`]). Stage 1 trains
//! the head on a frozen backbone (features cached when the view is deterministic); stage 2
//! unfreezes the chosen blocks at a lower rate with early stopping, keeping the best epoch.

pub mod config;

pub use config::{
    Balance, Profile, ProfileDefaults, Schedule, SelectOn, StageConfig, TaskKind, TrainConfig, WeightsSource,
};

/// Errors of the training stage.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Settings that cannot train.
    #[error("invalid training settings: {0}")]
    Config(String),
}
