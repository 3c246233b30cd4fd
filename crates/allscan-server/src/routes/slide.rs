//! `POST /api/slide`: the fields of one smear -> a [`SlideReport`] (cells, counts, the call).

use std::sync::atomic::AtomicBool;

use allscan::slide::{FailedField, SlideReport, SlideRule};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Query, State};
use axum::Json;
use image::RgbImage;
use serde::Deserialize;

use crate::limits::{cancel_check, decode_all, process};
use crate::{AppError, AppState};

#[derive(Debug, Deserialize)]
pub(crate) struct SlideQuery {
    blast_fraction: Option<f64>,
    first_field: Option<usize>,
}

/// Largest `first_field` accepted (a slide of more fields is not a slide).
pub const MAX_FIRST_FIELD: usize = 100_000;

pub(crate) async fn slide(
    State(state): State<AppState>,
    query: Result<Query<SlideQuery>, axum::extract::rejection::QueryRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<SlideReport>, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadRequest(format!("bad query: {}", e.body_text())))?;
    let level = query.blast_fraction.unwrap_or(allscan::slide::DEFAULT_BLAST_FRACTION);
    let rule = SlideRule::new(level, state.inner.predictor.threshold())
        .map_err(|e| AppError::BadRequest(format!("blast_fraction: {e}")))?;
    let first = query.first_field.unwrap_or(0);
    if first > MAX_FIRST_FIELD {
        return Err(AppError::BadRequest(format!("first_field {first} is larger than {MAX_FIRST_FIELD}")));
    }
    let report = process(&state, multipart, move |st, files, flag| run_slide(st, files, rule, first, flag)).await?;
    Ok(Json(report))
}

/// An uploaded file's name as a slide shows it: its last path component (a client may send
/// `a/b/c.png` or `C:\\x\\c.png`), control characters dropped, at most 200 characters.
pub fn field_display_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last.chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.is_empty() || clean == "." || clean == ".." {
        "upload".to_string()
    } else {
        clean
    }
}

/// Decodes and predicts the fields of one slide (`first`: index of the first field).
fn run_slide(
    state: &AppState,
    files: Vec<(String, Vec<u8>)>,
    rule: SlideRule,
    first: usize,
    cancelled: &AtomicBool,
) -> Result<SlideReport, AppError> {
    let check = cancel_check(state, cancelled);
    let files = files.into_iter().map(|(n, b)| (field_display_name(&n), b)).collect();
    let decoded = decode_all(state, files, &check)?;
    check()?;
    let refs: Vec<&RgbImage> = decoded.iter().map(|(_, i)| i).collect();
    let preds = state.inner.predictor.predict_fields(&refs);
    let (mut fields, mut failed) = (Vec::with_capacity(decoded.len()), Vec::new());
    for ((name, _), p) in decoded.iter().zip(preds) {
        match p {
            Ok(f) => fields.push((name.clone(), f)),
            // A field whose views cannot be built (no nucleus and no fallback) is listed.
            Err(e) => failed.push(FailedField { name: name.clone(), reason: e.to_string() }),
        }
    }
    Ok(SlideReport::with_first_field(fields, rule, failed, first))
}
