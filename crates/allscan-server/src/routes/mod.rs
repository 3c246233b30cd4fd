//! The routes' handlers, one file per endpoint group (predict, slide, explain); here the page,
//! health, model info, the fallbacks and the token check.

pub(crate) mod explain;
pub(crate) mod predict;
pub(crate) mod slide;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use crate::{AppError, AppState, INDEX_HTML};

/// With a token configured, `/api/*` requires `Authorization: Bearer <token>`.
pub(crate) async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(want) = state.inner.config.token.as_deref() {
        let got = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !got.is_some_and(|g| constant_time_eq(g.as_bytes(), want.as_bytes())) {
            return AppError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Equality whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub(crate) async fn model_info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.inner.model_info.clone())
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(uri.path().to_string())
}

pub(crate) async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
