//! allscan: Acute Lymphoblastic Leukemia detection in peripheral blood smear images.
//!
//! Modules in data-flow order: image files -> [`data`] (index, layouts, split) -> preprocessing
//! (crate `allscan-preprocess`) -> [`model`] (DenseNet backbone + head) -> training -> [`eval`]
//! -> explain -> predict / serve. [`synth`] draws synthetic smears for the demo and the tests.
//!
//! Research use only, not a diagnostic device.

pub mod data;
pub mod eval;
pub mod fsutil;
pub mod model;
pub mod synth;
pub mod weights;
