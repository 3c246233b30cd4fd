//! allscan: Acute Lymphoblastic Leukemia detection in peripheral blood smear images.
//!
//! Modules in data-flow order; each uses only modules above it (checked by `tests/it/layers.rs`):
//! 1. [`fsutil`], [`device`], [`progress`], [`synth`] (synthetic smears for the demo and the tests);
//! 2. [`data`]: image files -> index, layouts, split, augmentation, batches (preprocessing is
//!    the crate `allscan-preprocess`);
//! 3. [`params`], [`weights`], [`model`]: the DenseNet backbone + head and its weights;
//!    then [`config`]: the config tree's training part and the profiles that fill it;
//! 4. [`decision`]: probabilities -> p(leukemia) -> a call, and the field rule; then [`bundle`]:
//!    a trained run on disk;
//! 5. [`adapt`], [`infer`], [`predictions`]: a decoded field -> cells -> calls;
//! 6. [`explain`], then [`eval`], then [`train`] (which reports through `eval`);
//! 7. [`cv`]: an experiment driver over `train` and `eval`;
//! 8. [`slide`], then [`reviewed`]: a smear's report, its review, and review as training data.
//!
//! Research use only, not a diagnostic device.

pub mod device;
pub mod fsutil;
pub mod progress;
pub mod synth;

pub mod data;

pub mod model;
pub mod params;
pub mod weights;

pub mod config;

pub mod decision;

pub mod bundle;

pub mod adapt;
pub mod infer;
pub mod masks;
pub mod predictions;

pub mod eval;
pub mod explain;
pub mod train;

pub mod cv;

pub mod reviewed;
pub mod slide;
