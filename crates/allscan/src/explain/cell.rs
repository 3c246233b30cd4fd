//! Explain stage, one cell at a time: a decoded field and the indices of some of its cells (the
//! order of [`FieldPrediction::cells`](crate::infer::FieldPrediction::cells), i.e. the slide's
//! `f<field>-c<cell>` numbering) -> each cell's probability and the Grad-CAM map of the view the
//! model scored, blended onto that view's square of the field in its true colours.
//!
//! For the review gallery (`allscan report --gradcam K`, `POST /api/explain-cell`): the views
//! of the field are rebuilt exactly as prediction builds them and only the chosen views go
//! through Grad-CAM, so one cell costs one finder pass and one backward pass, not a field's.

use image::{Rgb, RgbImage};

use super::gradcam::Heatmap;
use super::overlay::blend;
use super::{ExplainFieldError, OVERLAY_ALPHA};
use crate::infer::{InferError, Predictor, Region};

/// Side of a cell overlay in pixels (the view's square of the field, resampled).
pub const CELL_OVERLAY_SIDE: u32 = 192;

/// Fill of the part of a view's square outside the field (a crop padded at the edge).
const OUTSIDE: Rgb<u8> = Rgb([255, 255, 255]);

/// One cell's explanation.
#[derive(Debug, Clone)]
pub struct CellExplanation {
    /// The cell's index among the field's views.
    pub cell: usize,
    /// The model's probability of leukemia (blast) for this view.
    pub p_leukemia: f32,
    /// The square of the field the view was cut from.
    pub region: Region,
    /// The Grad-CAM map, at the view's size, in `[0, 1]`.
    pub heat: Heatmap,
}

impl CellExplanation {
    /// The view's square of `field` (outside the field: white), `CELL_OVERLAY_SIDE` pixels a
    /// side, with the map blended on.
    pub fn overlay(&self, field: &RgbImage) -> RgbImage {
        let s = CELL_OVERLAY_SIDE;
        let Region { x, y, width, height } = self.region;
        let (fw, fh) = field.dimensions();
        let base = RgbImage::from_fn(s, s, |u, v| {
            let fx = x as f64 + (u as f64 + 0.5) / s as f64 * width.max(1) as f64;
            let fy = y as f64 + (v as f64 + 0.5) / s as f64 * height.max(1) as f64;
            if fx < 0.0 || fy < 0.0 || fx >= fw as f64 || fy >= fh as f64 {
                OUTSIDE
            } else {
                *field.get_pixel(fx as u32, fy as u32)
            }
        });
        blend(&base, &self.heat, OVERLAY_ALPHA)
    }
}

/// Errors of [`explain_cells`].
#[derive(Debug, thiserror::Error)]
pub enum ExplainCellError {
    /// A cell index the field does not have.
    #[error("cell {cell} does not exist: the field has {cells} cell(s) (numbered from 0)")]
    NoSuchCell {
        /// The index asked for.
        cell: usize,
        /// Cells in the field.
        cells: usize,
    },
    /// Views, prediction or Grad-CAM failed.
    #[error(transparent)]
    Explain(#[from] ExplainFieldError),
}

impl From<InferError> for ExplainCellError {
    fn from(e: InferError) -> Self {
        Self::Explain(ExplainFieldError::Infer(e))
    }
}

/// Explains the views `cells` of `field` (each the predicted class's Grad-CAM), in the order
/// given. Every index is checked before any work is done.
pub fn explain_cells(
    predictor: &Predictor,
    field: &RgbImage,
    cells: &[usize],
) -> Result<Vec<CellExplanation>, ExplainCellError> {
    let views = predictor.views(field)?;
    let n = views.images.len();
    if let Some(&cell) = cells.iter().find(|&&c| c >= n) {
        return Err(ExplainCellError::NoSuchCell { cell, cells: n });
    }
    let chosen: Vec<&RgbImage> = cells.iter().map(|&c| &views.images[c]).collect();
    let probs = predictor.view_probabilities(&chosen)?;
    let heat = super::views_grad_cam(predictor, &chosen)?;
    Ok(cells
        .iter()
        .zip(probs)
        .zip(heat)
        .map(|((&cell, p), heat)| CellExplanation {
            cell,
            p_leukemia: predictor.decision().p_leukemia(&p),
            region: views.regions[cell],
            heat,
        })
        .collect())
}
