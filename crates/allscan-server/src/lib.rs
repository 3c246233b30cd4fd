//! Serve stage: allscan's HTTP service as a library. Input: a [`Predictor`] (a trained run
//! bundle) and [`ServerConfig`] limits. Output: an axum [`Router`] ([`app`]) that tests drive
//! with `oneshot`, and [`serve`] that runs it on a listener (127.0.0.1 by default in the CLI).
//!
//! Routes:
//! - `GET /`: the web page (pick or drop images; nuclei boxes, prediction, probabilities,
//!   Grad-CAM overlay, and the research-use notice);
//! - `POST /api/predict[?overlay=1]`: multipart form, field `file` (repeatable) -> JSON
//!   results as `allscan predict --format json`, overlays as base64 PNG on request;
//! - `GET /api/model`: the bundle's metadata; `GET /health`.
//!
//! Limits: request body size, image pixels, a concurrency limit with back-pressure (503 with
//! `Retry-After` when every slot is busy; no queue), a per-request timeout (504). Every error
//! is JSON `{"error": "...", "status": N}`; internal failures are a generic 500 plus a log
//! line on stderr.
//!
//! Research use only, not a diagnostic device.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allscan::explain::{explain_field, png_bytes};
use allscan::infer::{FieldPrediction, Predictor};
use allscan_preprocess::{decode_bytes, DecodeError, DecodeLimits};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// The web page (vanilla HTML + JS, no build step).
pub const INDEX_HTML: &str = include_str!("index.html");

/// Limits of the service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body in bytes (all files of one request together).
    pub max_body_bytes: usize,
    /// Largest decoded image, width x height.
    pub max_image_pixels: u64,
    /// Largest number of images in one request.
    pub max_files: usize,
    /// Requests processed at once; further requests get 503 with `Retry-After`.
    pub max_concurrent: usize,
    /// Longest time a request may take (reading the upload included) before a 504.
    pub request_timeout: Duration,
    /// Seconds sent in `Retry-After` when saturated.
    pub retry_after_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_image_pixels: 40_000_000,
            max_files: 16,
            max_concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()),
            request_timeout: Duration::from_secs(60),
            retry_after_s: 1,
        }
    }
}

/// Shared state of the service.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    predictor: Predictor,
    model_info: serde_json::Value,
    config: ServerConfig,
    permits: Arc<Semaphore>,
}

impl AppState {
    /// State for [`app`]: the predictor, the JSON `GET /api/model` returns, and the limits.
    pub fn new(predictor: Predictor, model_info: serde_json::Value, config: ServerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Self { inner: Arc::new(Inner { predictor, model_info, config, permits }) }
    }

    /// Takes one processing slot, if free, and holds it until the permit is dropped: for
    /// maintenance and for testing the back-pressure path.
    pub fn hold_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.permits.clone().try_acquire_owned().ok()
    }

    /// The limits in force.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }
}

/// Every error the service answers with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Unknown route.
    #[error("no such route: {0}")]
    NotFound(String),
    /// Known route, wrong method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// Not a multipart form, or a file that is not an image.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A malformed request (no file, empty file, broken form).
    #[error("{0}")]
    BadRequest(String),
    /// Body or image over the limits.
    #[error("{0}")]
    TooLarge(String),
    /// An image that cannot be decoded (truncated, corrupt, too small).
    #[error("{0}")]
    Unprocessable(String),
    /// Every processing slot is busy.
    #[error("server busy: every processing slot is in use, retry in {retry_after_s} s")]
    Busy {
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// The request took longer than the limit.
    #[error("request took longer than {0} s")]
    Timeout(u64),
    /// A failure on our side; the detail goes to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A decode error of an uploaded file, as a client error.
    fn from_decode(e: DecodeError) -> Self {
        let msg = e.to_string();
        match e {
            DecodeError::Empty { .. } => Self::BadRequest(msg),
            DecodeError::UnknownFormat { .. } => Self::UnsupportedMediaType(msg),
            DecodeError::TooLarge { .. } => Self::TooLarge(msg),
            DecodeError::TooSmall { .. } | DecodeError::Corrupt { .. } | DecodeError::Io { .. } => {
                Self::Unprocessable(msg)
            }
        }
    }
}

/// JSON body of every error.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A plain message.
    pub error: String,
    /// The HTTP status code.
    pub status: u16,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(detail) = &self {
            eprintln!("allscan-server: internal error: {detail}");
        }
        let body = Json(ErrorBody { error: self.to_string(), status: status.as_u16() });
        let mut resp = (status, body).into_response();
        if let Self::Busy { retry_after_s } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

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

/// Research-use notice, in every prediction response and on the page.
pub const NOTICE: &str = "Research use only, not a diagnostic device.";

#[derive(Debug, Deserialize)]
struct PredictQuery {
    overlay: Option<String>,
}

/// The service's routes (see the module docs).
pub fn app(state: AppState) -> Router {
    let body_limit = state.inner.config.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/api/model", get(model_info))
        .route("/api/predict", post(predict).layer(DefaultBodyLimit::max(body_limit)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Runs [`app`] on `listener` until Ctrl-C.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn model_info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.inner.model_info.clone())
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(uri.path().to_string())
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

async fn predict(
    State(state): State<AppState>,
    Query(query): Query<PredictQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<PredictResponse>, AppError> {
    let start = Instant::now();
    let cfg = &state.inner.config;
    // Back-pressure: no queue; a saturated server says so at once.
    let permit = state
        .inner
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| AppError::Busy { retry_after_s: cfg.retry_after_s })?;
    let multipart = multipart.map_err(|e| {
        AppError::UnsupportedMediaType(format!(
            "expected a multipart/form-data body with one or more `file` fields ({})",
            e.body_text()
        ))
    })?;
    let overlay = matches!(query.overlay.as_deref(), Some("1" | "true" | "yes"));
    let timeout = cfg.request_timeout;
    let work = async {
        let files = read_files(multipart, cfg.max_files).await?;
        let state2 = state.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let _permit = permit; // held until the blocking work ends, even after a timeout
            run_prediction(&state2, files, overlay)
        });
        handle.await.map_err(|e| AppError::Internal(format!("prediction task failed: {e}")))?
    };
    let results = tokio::time::timeout(timeout, work).await.map_err(|_| AppError::Timeout(timeout.as_secs()))??;
    Ok(Json(PredictResponse {
        results,
        aggregation: allscan::infer::AGGREGATION_RULE.to_string(),
        elapsed_ms: start.elapsed().as_millis() as u64,
        notice: NOTICE.to_string(),
    }))
}

/// Reads the `file` fields of the form.
async fn read_files(mut multipart: Multipart, max_files: usize) -> Result<Vec<(String, Vec<u8>)>, AppError> {
    let mut files = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().filter(|n| !n.is_empty()).unwrap_or("upload").to_string();
        let bytes = field.bytes().await.map_err(multipart_error)?;
        if files.len() >= max_files {
            return Err(AppError::BadRequest(format!("too many files: at most {max_files} per request")));
        }
        files.push((name, bytes.to_vec()));
    }
    if files.is_empty() {
        return Err(AppError::BadRequest(
            "no image uploaded: send multipart/form-data with one or more `file` fields".into(),
        ));
    }
    Ok(files)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::TooLarge(format!("request body is larger than the limit ({})", e.body_text()))
    } else {
        AppError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// Decodes every file (any failure rejects the request, naming the file), then predicts.
fn run_prediction(
    state: &AppState,
    files: Vec<(String, Vec<u8>)>,
    overlay: bool,
) -> Result<Vec<ImageResult>, AppError> {
    let inner = &state.inner;
    let predictor = &inner.predictor;
    let base = predictor.preprocess().decode;
    let limits = DecodeLimits { max_pixels: base.max_pixels.min(inner.config.max_image_pixels), ..base };
    let mut decoded: Vec<(String, RgbImage)> = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        if bytes.is_empty() {
            return Err(AppError::BadRequest(format!("{name}: empty file (0 bytes)")));
        }
        let img = decode_bytes(&bytes, Path::new(&name), &limits).map_err(AppError::from_decode)?;
        decoded.push((name, img));
    }
    if overlay {
        decoded
            .into_iter()
            .map(|(name, img)| {
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
