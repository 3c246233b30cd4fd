//! `POST /api/predict`: uploaded fields -> one prediction each, with a Grad-CAM overlay on
//! request.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use allscan::explain::{explain_field, png_bytes};
use allscan::infer::FieldPrediction;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Query, State};
use axum::Json;
use base64::Engine;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::limits::{cancel_check, decode_all, process};
use crate::{AppError, AppState, NOTICE};

/// One image's result in `POST /api/predict`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageResult {
    /// The uploaded file name.
    pub file: String,
    /// Number of scored cells (model views).
    pub n_cells: usize,
    /// The prediction.
    #[serde(flatten)]
    pub field: FieldPrediction,
    /// Grad-CAM overlay of the field, base64 PNG (with `?overlay=1`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub overlay_png: Option<String>,
}

/// Body of a successful `POST /api/predict`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PredictResponse {
    /// One result per uploaded file, in upload order.
    pub results: Vec<ImageResult>,
    /// How a field's score is made from its cells.
    pub aggregation: String,
    /// Milliseconds spent on the server.
    pub elapsed_ms: u64,
    /// The notice that goes with every result.
    pub notice: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PredictQuery {
    overlay: Option<String>,
}

pub(crate) async fn predict(
    State(state): State<AppState>,
    Query(query): Query<PredictQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<PredictResponse>, AppError> {
    let start = Instant::now();
    let overlay = matches!(query.overlay.as_deref(), Some("1" | "true" | "yes"));
    let results = process(&state, multipart, move |st, files, flag| run_prediction(st, files, overlay, flag)).await?;
    Ok(Json(PredictResponse {
        results,
        aggregation: allscan::infer::AGGREGATION_RULE.to_string(),
        elapsed_ms: start.elapsed().as_millis() as u64,
        notice: NOTICE.to_string(),
    }))
}

/// Decodes every file (any failure rejects the request, naming the file), then predicts.
fn run_prediction(
    state: &AppState,
    files: Vec<(String, Vec<u8>)>,
    overlay: bool,
    cancelled: &AtomicBool,
) -> Result<Vec<ImageResult>, AppError> {
    let check = cancel_check(state, cancelled);
    let predictor = &state.inner.predictor;
    let decoded = decode_all(state, files, &check)?;
    if overlay {
        decoded
            .into_iter()
            .map(|(name, img)| {
                check()?;
                let e = explain_field(predictor, &img).map_err(|e| AppError::Internal(format!("{name}: {e}")))?;
                let png = png_bytes(&e.field_overlay(&img)).map_err(|e| AppError::Internal(format!("{name}: {e}")))?;
                Ok(ImageResult {
                    file: name,
                    n_cells: e.prediction.cells.len(),
                    field: e.prediction,
                    overlay_png: Some(base64::engine::general_purpose::STANDARD.encode(png)),
                })
            })
            .collect()
    } else {
        check()?;
        let refs: Vec<&RgbImage> = decoded.iter().map(|(_, i)| i).collect();
        let preds = predictor.predict_fields(&refs);
        decoded
            .iter()
            .zip(preds)
            .map(|((name, _), p)| {
                let field = p.map_err(|e| AppError::Internal(format!("{name}: {e}")))?;
                Ok(ImageResult { file: name.clone(), n_cells: field.cells.len(), field, overlay_png: None })
            })
            .collect()
    }
}
