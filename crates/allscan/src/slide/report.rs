//! The slide report's data: cells, fields, counts, the rule and the call, and a review; the
//! JSON shape of `report.json`, `/api/slide` and the review file.

use std::collections::BTreeMap;

use allscan_preprocess::{BBox, CellFlag, ScaleSource};
use serde::{Deserialize, Serialize};

use super::{SlideError, REVIEW_FORMAT, WHO_NOTE};

/// The model's call on one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellCall {
    /// p(blast) at or above the bundle's threshold.
    Blast,
    /// Below it.
    NotBlast,
}

/// A reviewer's label for one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewLabel {
    /// A blast (counts as a white cell and a blast).
    Blast,
    /// A white cell that is not a blast (counts as a white cell).
    NotBlast,
    /// Not a white cell (debris, platelet clump, red cell, artefact): leaves the count.
    NotACell,
    /// Cannot tell: leaves the count, tallied on its own.
    Unsure,
}

/// Where a cell stands after the model and the reviewer ([`SlideCell::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    /// Counted, as a blast.
    Blast,
    /// Counted, not a blast.
    NotBlast,
    /// Removed by the reviewer.
    NotACell,
    /// Left out by the reviewer.
    Unsure,
    /// Left out by the finder's flags (small, smudge) and not reviewed.
    Excluded,
}

impl CellStatus {
    /// Whether the cell is in the white-cell count.
    pub fn counted(self) -> bool {
        matches!(self, Self::Blast | Self::NotBlast)
    }
}

/// One white cell of a slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideCell {
    /// `f<field>-c<cell>`, unique in the slide (field and cell indices from 0).
    pub id: String,
    /// Index of its field in [`SlideReport::fields`].
    pub field: usize,
    /// The whole cell's box in field pixels (the nucleus box, or the crop within the field,
    /// for models that do not cut whole cells).
    #[serde(rename = "box")]
    pub bbox: BBox,
    /// The nucleus box, when the finder reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nucleus: Option<BBox>,
    /// What the finder noticed (touches-border, small, smudge, clump).
    #[serde(default)]
    pub flags: Vec<CellFlag>,
    /// The model's probability that this cell is a blast (any leukemia class).
    pub p_blast: f32,
    /// The model's call at the bundle's threshold.
    pub call: CellCall,
    /// Whether the model counts this cell (not flagged small or smudge).
    pub decides: bool,
    /// The nucleus and whole-cell masks, run-length encoded (cell models; format in
    /// [`crate::masks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<crate::masks::CellMasks>,
    /// Grad-CAM overlay of this cell's view, a path relative to the report's folder
    /// (`allscan report --gradcam K` writes `gradcam/<id>.png` for K cells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradcam: Option<String>,
    /// The reviewer's label, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewLabel>,
    /// The outcome of `call`, `decides` and `review` (module docs); recomputed, never read.
    pub status: CellStatus,
}

impl SlideCell {
    /// The module's counting rule for one cell.
    pub fn status_of(call: CellCall, decides: bool, review: Option<ReviewLabel>) -> CellStatus {
        match (review, call) {
            (Some(ReviewLabel::Blast), _) => CellStatus::Blast,
            (Some(ReviewLabel::NotBlast), _) => CellStatus::NotBlast,
            (Some(ReviewLabel::NotACell), _) => CellStatus::NotACell,
            (Some(ReviewLabel::Unsure), _) => CellStatus::Unsure,
            (None, _) if !decides => CellStatus::Excluded,
            (None, CellCall::Blast) => CellStatus::Blast,
            (None, CellCall::NotBlast) => CellStatus::NotBlast,
        }
    }
}

/// One field of a slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideField {
    /// The file name (as given: an uploaded name or a path relative to the slide folder).
    pub name: String,
    /// Field width in pixels.
    pub width: u32,
    /// Field height in pixels.
    pub height: u32,
    /// Micrometres per pixel (cell models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub um_per_px: Option<f32>,
    /// Where the scale came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_source: Option<ScaleSource>,
    /// The model's field call (`leukemia`, `healthy` or `no white cell found`).
    pub prediction: String,
    /// Every cell the finder found, in the model's order.
    pub cells: Vec<SlideCell>,
    /// Cells of this field in the white-cell count.
    pub white_cells: usize,
    /// Of those, blasts.
    pub blasts: usize,
}

/// What a slide adds up to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideCounts {
    /// Fields in the slide.
    pub fields: usize,
    /// Fields in which no cell was found.
    pub fields_without_cells: usize,
    /// Every cell listed, counted or not.
    pub cells_found: usize,
    /// White cells counted (status blast or not_blast).
    pub white_cells: usize,
    /// Of those, blasts.
    pub blasts: usize,
    /// `blasts / white_cells` (0 without white cells).
    pub blast_fraction: f64,
    /// Wilson score 95% interval of the blast fraction (`[0, 1]` without white cells).
    pub blast_fraction_ci95: [f64; 2],
    /// Unreviewed cells flagged small or smudge.
    pub excluded: usize,
    /// Cells the reviewer removed.
    pub not_a_cell: usize,
    /// Cells the reviewer could not call.
    pub unsure: usize,
    /// Cells with a reviewer's label.
    pub reviewed: usize,
}

/// The slide-level decision rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideRule {
    /// The slide is flagged when the blast fraction is at or above this level.
    pub blast_fraction: f64,
    /// The per-cell threshold on p(blast) (the bundle's decision threshold).
    pub cell_threshold: f64,
    /// The rule in words.
    pub text: String,
    /// What the WHO 20% threshold means, and that this is research use.
    pub who_note: String,
}

impl SlideRule {
    /// A rule flagging slides at `blast_fraction` (in (0, 1]) with cells called at `cell_threshold`.
    pub fn new(blast_fraction: f64, cell_threshold: f64) -> Result<Self, SlideError> {
        if !(blast_fraction > 0.0 && blast_fraction <= 1.0) {
            return Err(SlideError::BadLevel(blast_fraction));
        }
        Ok(Self {
            blast_fraction,
            cell_threshold,
            text: format!(
                "A cell is called blast when p(blast) >= {cell_threshold:.3}; cells flagged small or smudge are \
                 left out unless reviewed; the slide is flagged when blasts / white cells >= {:.0}%.",
                100.0 * blast_fraction
            ),
            who_note: WHO_NOTE.to_string(),
        })
    }
}

/// The slide's call under its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlideCall {
    /// Blast fraction at or above the level: review the slide.
    Flagged,
    /// Below the level.
    NotFlagged,
    /// No white cell counted: nothing to judge.
    NoWhiteCells,
}

/// A field that could not be read or predicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedField {
    /// The file name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// One smear: its fields, their cells, the counts and the call (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideReport {
    /// [`SLIDE_FORMAT`](super::SLIDE_FORMAT).
    pub format: String,
    /// [`NOTICE`](super::NOTICE).
    pub notice: String,
    /// The decision rule.
    pub rule: SlideRule,
    /// The call under the rule.
    pub call: SlideCall,
    /// The counts.
    pub counts: SlideCounts,
    /// Ids of the counted blasts that drove the call, most suspicious first (at most
    /// [`MAX_DECISIVE`](super::MAX_DECISIVE); empty when no cell counts as a blast).
    pub decisive_cells: Vec<String>,
    /// Every field, in order.
    pub fields: Vec<SlideField>,
    /// Fields left out, with reasons.
    #[serde(default)]
    pub failed: Vec<FailedField>,
}

/// A person's corrections: cell id -> label.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Review {
    /// [`REVIEW_FORMAT`].
    pub format: String,
    /// The labels, by cell id.
    pub labels: BTreeMap<String, ReviewLabel>,
}

impl Review {
    /// An empty review.
    pub fn new() -> Self {
        Self { format: REVIEW_FORMAT.to_string(), labels: BTreeMap::new() }
    }

    /// Adds or replaces the label of `cell`.
    pub fn with(mut self, cell: &str, label: ReviewLabel) -> Self {
        self.labels.insert(cell.to_string(), label);
        self
    }
}
