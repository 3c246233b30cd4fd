//! Explain stage: why the model called a field what it did. Input: a [`Predictor`] and a
//! decoded field. Output: the prediction, one Grad-CAM heat map per model view (whole field
//! or nucleus crop) and one map in field coordinates, blended onto the images as overlays.
//!
//! [`gradcam`] computes the maps (arXiv:1610.02391); [`overlay`] colours and blends them;
//! [`cell`] explains chosen cells of a field (the review gallery's Grad-CAM on demand).

pub mod cell;
pub mod gradcam;
pub mod overlay;

pub use cell::{explain_cells, CellExplanation, ExplainCellError, CELL_OVERLAY_SIDE};
pub use gradcam::{grad_cam, CamTarget, ExplainError, Heatmap};
pub use overlay::{blend, png_bytes, turbo};

use image::RgbImage;

use crate::infer::{FieldPrediction, FieldViews, InferError, Predictor};

/// Blend strength of overlays.
pub const OVERLAY_ALPHA: f32 = 0.55;

/// Errors of [`explain_field`].
#[derive(Debug, thiserror::Error)]
pub enum ExplainFieldError {
    /// Views or prediction failed.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// Grad-CAM failed.
    #[error(transparent)]
    Cam(#[from] ExplainError),
}

/// A field's prediction with its Grad-CAM maps.
#[derive(Debug, Clone)]
pub struct FieldExplanation {
    /// The prediction (same as [`Predictor::predict_field`]).
    pub prediction: FieldPrediction,
    /// The model views that were explained.
    pub views: FieldViews,
    /// One map per view, at the view's size.
    pub view_heat: Vec<Heatmap>,
    /// The maps placed back into field coordinates (maximum where crops overlap; zero outside
    /// every crop).
    pub field_heat: Heatmap,
}

impl FieldExplanation {
    /// The field with its heat map blended on.
    pub fn field_overlay(&self, field: &RgbImage) -> RgbImage {
        blend(field, &self.field_heat, OVERLAY_ALPHA)
    }

    /// Each view with its own heat map blended on.
    pub fn view_overlays(&self) -> Vec<RgbImage> {
        self.views.images.iter().zip(&self.view_heat).map(|(v, h)| blend(v, h, OVERLAY_ALPHA)).collect()
    }
}

/// Predicts `field` and explains each view's predicted class with Grad-CAM.
pub fn explain_field(predictor: &Predictor, field: &RgbImage) -> Result<FieldExplanation, ExplainFieldError> {
    let views = predictor.views(field)?;
    let prediction = predictor.predict_field(field)?;
    let view_heat = views_grad_cam(predictor, &views.images.iter().collect::<Vec<_>>())?;
    let field_heat = to_field(&views, &view_heat);
    Ok(FieldExplanation { prediction, views, view_heat, field_heat })
}

/// The predicted class's Grad-CAM map of each view, a predictor batch at a time.
pub(crate) fn views_grad_cam(predictor: &Predictor, views: &[&RgbImage]) -> Result<Vec<Heatmap>, ExplainFieldError> {
    let config = predictor.model_config();
    let mut heat = Vec::with_capacity(views.len());
    for chunk in views.chunks(predictor.batch_size()) {
        let x = predictor.input_tensor(chunk)?;
        heat.extend(grad_cam(predictor.model(), config.task, x, CamTarget::Predicted, config.test_views)?);
    }
    Ok(heat)
}

/// Places per-view maps into field coordinates (each view covers its region).
fn to_field(views: &FieldViews, heat: &[Heatmap]) -> Heatmap {
    let mut out = Heatmap::zeros(views.width, views.height);
    for (region, h) in views.regions.iter().zip(heat) {
        let (rw, rh) = (region.width.max(1) as f32, region.height.max(1) as f32);
        let x0 = region.x.max(0) as u32;
        let y0 = region.y.max(0) as u32;
        let x1 = ((region.x + region.width as i64).max(0) as u32).min(views.width);
        let y1 = ((region.y + region.height as i64).max(0) as u32).min(views.height);
        for y in y0..y1 {
            for x in x0..x1 {
                let u = (x as f32 + 0.5 - region.x as f32) / rw * h.width as f32;
                let v = (y as f32 + 0.5 - region.y as f32) / rh * h.height as f32;
                let i = y as usize * views.width as usize + x as usize;
                out.values[i] = out.values[i].max(h.sample(u, v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
