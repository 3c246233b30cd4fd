//! allscan: Acute Lymphoblastic Leukemia detection in peripheral blood smear images.
//!
//! Modules in data-flow order: image files -> [`data`] (index, layouts, split) -> preprocessing
//! (crate `allscan-preprocess`) -> [`model`] (DenseNet backbone + head) -> training -> [`eval`]
//! -> explain -> predict / serve. [`synth`] draws synthetic smears for the demo and the tests.
//!
//! Research use only, not a diagnostic device.

pub mod adapt;
pub mod bundle;
pub mod data;
pub mod device;
pub mod eval;
pub mod explain;
pub mod fsutil;
pub mod infer;
pub mod model;
pub mod predictions;
pub mod slide;
pub mod synth;
pub mod train;
pub mod weights;
