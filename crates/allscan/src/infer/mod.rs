//! Inference stage: decoded fields -> model views (whole field or nucleus ROI crops, exactly as
//! the bundle's [`PreprocessConfig`] says) -> batched forward passes -> per-cell and per-field
//! probabilities.
//!
//! Input: `RgbImage` fields (decoding, with its limits, is the caller's job so that the CLI
//! and the server can report decode errors their own way). Output: one [`FieldPrediction`]
//! per field, with one [`CellPrediction`] per model view and every nucleus box found.
//!
//! Aggregation rule (ROI and cell modes, several crops per field): the field's `p_leukemia` is
//! the **highest** `p_leukemia` among its cells (one blast is enough to flag a field), and the
//! field's class probabilities are those of that most suspicious cell. In `cell` mode, cells
//! flagged small (platelet-sized) or smudged are scored and listed but do not decide the field,
//! and a field with no white cell is reported as such ([`NO_WHITE_CELL`]), not as healthy. The field is called
//! `leukemia` when `p_leukemia >= threshold` (the bundle's decision threshold). With one view
//! per field (whole-field mode, or `roi.views = largest`) the rule reduces to that view.
//!
//! Research use only, not a diagnostic device.

use allscan_preprocess::{BBox, CellFlag, PreprocessConfig, PreprocessError, ScaleEstimate, WhiteCell};
use burn::tensor::Device;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::decision::{cell_decides, Decision};
use crate::model::{ClassifierConfig, LeukemiaClassifier};

// The CLI and the server name the labels and the rule through `infer`.
pub use crate::decision::{AGGREGATION_RULE, HEALTHY, LEUKEMIA};

/// The call of a field in which no white cell was found (`cell` mode).
pub const NO_WHITE_CELL: &str = "no white cell found";
/// Default number of views per forward pass.
pub const DEFAULT_BATCH: usize = 8;

/// Errors of the inference stage.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Predictor settings that cannot work together.
    #[error("invalid predictor settings: {0}")]
    InvalidConfig(String),
    /// `nucleus` mode found no nucleus and the fallback is off.
    #[error("no nucleus found in a {width}x{height} field")]
    NoNucleus {
        /// Field width.
        width: u32,
        /// Field height.
        height: u32,
    },
    /// The run bundle could not be loaded.
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    /// The preprocessing refused the field or its settings.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// Burn returned data in an unexpected form.
    #[error("model output could not be read: {0}")]
    Output(String),
}

/// A square (or whole-field) region in field pixels; may extend past the field when a crop
/// was padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Left column (may be negative for a padded crop).
    pub x: i64,
    /// Top row (may be negative).
    pub y: i64,
    /// Width in field pixels.
    pub width: u32,
    /// Height in field pixels.
    pub height: u32,
}

/// The model's view(s) of one field, before normalisation.
#[derive(Debug, Clone)]
pub struct FieldViews {
    /// Model inputs, `input_size` x `input_size` each.
    pub images: Vec<RgbImage>,
    /// Where each view was cut from, in field pixels.
    pub regions: Vec<Region>,
    /// Index of each view's nucleus in `nuclei` (`None` for a whole-field view).
    pub nucleus_of_view: Vec<Option<usize>>,
    /// Every nucleus the finder found (empty in `aria-hsv` mode), largest first.
    pub nuclei: Vec<BBox>,
    /// `cell` mode: every white cell, in view order.
    pub cells: Vec<WhiteCell>,
    /// `cell` mode: the nucleus and whole-cell masks of each of `cells`, in the same order.
    pub masks: Vec<crate::masks::CellMasks>,
    /// `cell` mode: the field's scale.
    pub scale: Option<ScaleEstimate>,
    /// Whether the preprocessing cuts cells (so zero views means no white cell).
    pub cell_mode: bool,
    /// Field size.
    pub width: u32,
    /// Field size.
    pub height: u32,
}

/// One model view's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellPrediction {
    /// Region the view was cut from, in field pixels.
    pub region: Region,
    /// The nucleus box of this view, if it is a nucleus crop.
    pub nucleus: Option<BBox>,
    /// `cell` mode: the whole white cell's box (nucleus + cytoplasm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<BBox>,
    /// `cell` mode: what the finder noticed about this cell (touches the border, small, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<CellFlag>,
    /// `cell` mode: the nucleus and whole-cell masks, run-length encoded over their boxes
    /// ([`crate::masks`] states the format). Absent in other modes and in older JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<crate::masks::CellMasks>,
    /// `leukemia` or `healthy` at the predictor's threshold.
    pub prediction: String,
    /// Probability of any leukemia class.
    pub p_leukemia: f32,
    /// Most probable class (subtype models only).
    pub subtype: Option<String>,
    /// Probability per class name (binary: `healthy`/`leukemia` style names from the bundle).
    pub probabilities: Vec<ClassProbability>,
}

/// A `(class, probability)` pair; a list rather than a map so the class order is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassProbability {
    /// Class name.
    pub class: String,
    /// Probability.
    pub p: f32,
}

/// One field's result after aggregation (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldPrediction {
    /// `leukemia` or `healthy`.
    pub prediction: String,
    /// Field-level probability of leukemia (max over cells).
    pub p_leukemia: f32,
    /// Most probable class of the most suspicious cell (subtype models only).
    pub subtype: Option<String>,
    /// Class probabilities of the most suspicious cell.
    pub probabilities: Vec<ClassProbability>,
    /// Index into `cells` of the cell that decided the field.
    pub decisive_cell: usize,
    /// Every scored view.
    pub cells: Vec<CellPrediction>,
    /// Every nucleus found in the field (boxes for display), largest first.
    pub nuclei: Vec<BBox>,
    /// `cell` mode: micrometres per pixel of the field and where that came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleEstimate>,
    /// Field width.
    pub width: u32,
    /// Field height.
    pub height: u32,
    /// Decision threshold used.
    pub threshold: f64,
}

impl FieldPrediction {
    /// Whether the field had no white cell to judge (`cell` mode).
    pub fn no_white_cell(&self) -> bool {
        self.prediction == NO_WHITE_CELL
    }
}

impl CellPrediction {
    /// Whether this cell may decide its field and counts as a white cell in summaries (see
    /// the module docs: cells flagged small or smudge do not).
    pub fn decides(&self) -> bool {
        cell_decides(&self.flags)
    }
}

/// Most views `Predictor::adapt` re-estimates BatchNorm statistics on.
pub const ADAPT_MAX_VIEWS: usize = 4096;
/// Views per batch when adapting (the statistics are the mean over batches of this size).
const ADAPT_BATCH: usize = 64;

/// A loaded model plus everything needed to repeat training's preprocessing.
#[derive(Debug)]
pub struct Predictor {
    model: LeukemiaClassifier,
    model_config: ClassifierConfig,
    preprocess: PreprocessConfig,
    decision: Decision,
    device: Device,
    batch_size: usize,
}

mod predictor;
mod set;
#[cfg(test)]
pub(crate) mod tests;
