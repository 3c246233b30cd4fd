//! `POST /api/explain-cell`: one field and a cell index -> the Grad-CAM overlay of the view the
//! model scored for that cell.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use allscan::explain::{explain_cells, png_bytes, ExplainCellError};
use allscan::infer::Region;
use allscan::slide::CellCall;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::slide::field_display_name;
use crate::limits::{cancel_check, decode_all, process};
use crate::{AppError, AppState, NOTICE};

#[derive(Debug, Deserialize)]
pub(crate) struct ExplainQuery {
    cell: Option<String>,
}

/// Body of a successful `POST /api/explain-cell`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellExplainResponse {
    /// The uploaded file name (last component).
    pub file: String,
    /// The cell's index in the field (as in `/api/predict`'s `cells`).
    pub cell: usize,
    /// The model's p(blast) for this cell's view.
    pub p_blast: f32,
    /// The model's call at the bundle's threshold.
    pub call: CellCall,
    /// The square of the field the view was cut from (field pixels; may pass the edges).
    pub region: Region,
    /// Side of the overlay in pixels.
    pub side: u32,
    /// The overlay: the view's square of the field with the Grad-CAM map of the predicted
    /// class blended on, `data:image/png;base64,...`.
    pub overlay_png: String,
    /// Milliseconds spent on the server.
    pub elapsed_ms: u64,
    /// The research-use notice.
    pub notice: String,
}

pub(crate) async fn explain_cell(
    State(state): State<AppState>,
    Query(query): Query<ExplainQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<CellExplainResponse>, AppError> {
    let start = Instant::now();
    let raw = query.cell.ok_or_else(|| AppError::BadRequest("missing query parameter `cell` (a cell index)".into()))?;
    let cell: usize = raw
        .trim()
        .parse()
        .map_err(|_| AppError::BadRequest(format!("cell {raw:?} is not a cell index (0, 1, ...)")))?;
    let mut out = process(&state, multipart, move |st, files, flag| run_explain_cell(st, files, cell, flag)).await?;
    out.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(Json(out))
}

/// Decodes the one uploaded field and explains one of its cells.
fn run_explain_cell(
    state: &AppState,
    files: Vec<(String, Vec<u8>)>,
    cell: usize,
    cancelled: &AtomicBool,
) -> Result<CellExplainResponse, AppError> {
    let check = cancel_check(state, cancelled);
    if files.len() != 1 {
        return Err(AppError::BadRequest(format!("send exactly one `file` (the field), got {}", files.len())));
    }
    let files = files.into_iter().map(|(n, b)| (field_display_name(&n), b)).collect();
    let (name, img) =
        decode_all(state, files, &check)?.pop().ok_or_else(|| AppError::Internal("no decoded field".into()))?;
    check()?;
    let predictor = &state.inner.predictor;
    let e = match explain_cells(predictor, &img, &[cell]) {
        Ok(mut e) => e.pop().ok_or_else(|| AppError::Internal(format!("{name}: no explanation")))?,
        Err(err @ ExplainCellError::NoSuchCell { .. }) => return Err(AppError::BadRequest(format!("{name}: {err}"))),
        Err(err) => return Err(AppError::Internal(format!("{name}: {err}"))),
    };
    check()?;
    let png = png_bytes(&e.overlay(&img)).map_err(|err| AppError::Internal(format!("{name}: {err}")))?;
    let call = if f64::from(e.p_leukemia) >= predictor.threshold() { CellCall::Blast } else { CellCall::NotBlast };
    Ok(CellExplainResponse {
        file: name,
        cell,
        p_blast: e.p_leukemia,
        call,
        region: e.region,
        side: allscan::explain::CELL_OVERLAY_SIDE,
        overlay_png: allscan::explain::overlay::png_data_url(&png),
        elapsed_ms: 0,
        notice: NOTICE.to_string(),
    })
}
