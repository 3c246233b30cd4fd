//! Serve stage: allscan's HTTP service as a library. Input: a [`Predictor`] (a trained run
//! bundle) and [`ServerConfig`] limits. Output: an axum [`Router`] ([`app`]) that tests drive
//! with `oneshot`, and [`serve`] that runs it on a listener (127.0.0.1 by default in the CLI).
//!
//! Routes:
//! - `GET /`: the web page (pick or drop images; nuclei boxes, prediction, probabilities,
//!   Grad-CAM overlay, and the research-use notice);
//! - `POST /api/predict[?overlay=1]`: multipart form, field `file` (repeatable) -> JSON
//!   results as `allscan predict --format json`, overlays as base64 PNG on request;
//! - `POST /api/slide[?blast_fraction=0.2&first_field=0]`: multipart form, field `file`
//!   (repeatable), the fields of one smear -> an [`allscan::slide::SlideReport`] (every cell
//!   with box, flags, p(blast), call; counts, blast fraction with its 95% CI, the rule).
//!   `first_field` numbers the fields (and cell ids `f<field>-c<cell>`) from that index, so a
//!   page may send a large slide in parts and concatenate them. Field names are the uploaded
//!   names' last component; nothing is written to disk;
//! - `POST /api/explain-cell?cell=N`: multipart form, one `file` (a field) -> the Grad-CAM
//!   overlay of the view the model scored for cell `N` of that field (the numbering of
//!   `/api/predict`'s `cells` and of the slide's `f<field>-c<N>` ids), a
//!   [`CellExplainResponse`] with a PNG data URI; under the same limits;
//! - `GET /api/model`: the bundle's metadata; `GET /health`.
//!
//! Limits, in the order a request meets them:
//! 1. the connection must finish its request headers within `header_read_timeout` (else
//!    hyper closes it; [`serve`] sets this, `oneshot` tests have no connection);
//! 2. with a token configured, every `/api/*` route needs `Authorization: Bearer <token>` (401);
//! 3. the whole upload (body size limit, file count) is read within `body_read_timeout` (408)
//!    BEFORE any processing slot is taken, so slow uploaders cannot starve the service;
//! 4. image headers are read (no pixel allocated): each image within `max_image_pixels`, all
//!    images of the request within `max_request_pixels` (413);
//! 5. a processing slot (`max_concurrent`) and a share of the process-wide pixel budget
//!    (`max_inflight_pixels`, pixels being decoded at once across requests) are taken without
//!    waiting: 503 with `Retry-After` when either is exhausted (no queue);
//! 6. decoding and prediction run under `request_timeout` (504). A request that times out or
//!    whose client goes away frees its slot at once; its blocking work stops at the next image
//!    and keeps its pixel share until its memory is actually freed.
//!
//! Every error is JSON `{"error": "...", "status": N}`; internal failures are a generic 500 plus
//! a log line on stderr.
//!
//! Research use only, not a diagnostic device.

use std::future::Future;
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allscan::explain::{explain_cells, explain_field, png_bytes, ExplainCellError};
use allscan::infer::{FieldPrediction, Predictor, Region};
use allscan::slide::{CellCall, FailedField, SlideReport, SlideRule};
use allscan_preprocess::{decode_bytes, DecodeError, DecodeLimits};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock, Semaphore};

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
    /// Largest total of width x height over all images of one request, read from the image
    /// headers before anything is decoded (413 above it).
    pub max_request_pixels: u64,
    /// Largest total of pixels being decoded and processed at once across all requests; a
    /// request whose share does not fit gets 503 with `Retry-After` and allocates nothing.
    pub max_inflight_pixels: u64,
    /// Requests processed at once; further requests get 503 with `Retry-After`.
    pub max_concurrent: usize,
    /// Longest time reading the upload may take (408 after it). No processing slot is held
    /// while reading.
    pub body_read_timeout: Duration,
    /// Longest time a connection may take to send its request headers before it is closed
    /// (applied by [`serve`]; a `oneshot` router has no connection).
    pub header_read_timeout: Duration,
    /// Longest time decoding and prediction may take, once the upload is read, before a 504.
    pub request_timeout: Duration,
    /// Seconds sent in `Retry-After` when saturated.
    pub retry_after_s: u64,
    /// When set, every `/api/*` route requires `Authorization: Bearer <token>` (401 otherwise).
    pub token: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_image_pixels: 40_000_000,
            max_files: 16,
            // Two full-size images per request, two such requests decoding at once: about
            // 0.5 GiB of decoded RGB at most, where 16 x 40 MP once peaked at 2 GiB.
            max_request_pixels: 80_000_000,
            max_inflight_pixels: 160_000_000,
            max_concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()),
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry_after_s: 1,
            token: None,
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
    /// The process-wide pixel budget, in units of [`PIXEL_UNIT`] pixels (tokio semaphores
    /// count in `u32` per acquisition, too few for pixels).
    pixel_units: Arc<Semaphore>,
    /// Passed (read, at once released) by every request's blocking work before it starts;
    /// held for writing only by [`AppState::pause_processing`].
    gate: Arc<RwLock<()>>,
}

/// Pixels per permit of the in-flight pixel budget.
const PIXEL_UNIT: u64 = 1024;

fn pixel_units(pixels: u64) -> u64 {
    pixels.div_ceil(PIXEL_UNIT)
}

impl AppState {
    /// State for [`app`]: the predictor, the JSON `GET /api/model` returns, and the limits.
    pub fn new(predictor: Predictor, model_info: serde_json::Value, config: ServerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        let units =
            usize::try_from(pixel_units(config.max_inflight_pixels)).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let pixel_units = Arc::new(Semaphore::new(units));
        let gate = Arc::new(RwLock::new(()));
        Self { inner: Arc::new(Inner { predictor, model_info, config, permits, pixel_units, gate }) }
    }

    /// Takes one processing slot, if free, and holds it until the permit is dropped: for
    /// maintenance and for testing the back-pressure path.
    pub fn hold_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.permits.clone().try_acquire_owned().ok()
    }

    /// Takes `pixels` of the in-flight pixel budget, if free, until the permit is dropped: for
    /// testing the memory back-pressure path.
    pub fn hold_pixels(&self, pixels: u64) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(pixel_units(pixels)).ok()?;
        self.inner.pixel_units.clone().try_acquire_many_owned(units).ok()
    }

    /// Makes every request's decoding and prediction wait, once its slot and pixel share are
    /// taken, until the guard is dropped (`None` if already paused): for testing the timeout
    /// path deterministically. Work whose request timed out meanwhile stops at once when
    /// released.
    pub fn pause_processing(&self) -> Option<OwnedRwLockWriteGuard<()>> {
        self.inner.gate.clone().try_write_owned().ok()
    }

    /// Processing slots free now (for tests and monitoring).
    pub fn free_slots(&self) -> usize {
        self.inner.permits.available_permits()
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
    /// A token is configured and the request lacks it or has another one.
    #[error("missing or wrong token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// The upload was not read completely within the limit.
    #[error("upload not received within {0} s")]
    BodyTimeout(u64),
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
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
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
        match self {
            Self::Busy { retry_after_s } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            Self::Unauthorized => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
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

#[derive(Debug, Deserialize)]
struct SlideQuery {
    blast_fraction: Option<f64>,
    first_field: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct ExplainQuery {
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

/// Largest `first_field` accepted (a slide of more fields is not a slide).
pub const MAX_FIRST_FIELD: usize = 100_000;

/// The service's routes (see the module docs).
pub fn app(state: AppState) -> Router {
    let body_limit = state.inner.config.max_body_bytes;
    let api = Router::new()
        .route("/api/model", get(model_info))
        .route("/api/predict", post(predict).layer(DefaultBodyLimit::max(body_limit)))
        .route("/api/slide", post(slide).layer(DefaultBodyLimit::max(body_limit)))
        .route("/api/explain-cell", post(explain_cell).layer(DefaultBodyLimit::max(body_limit)))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Runs [`app`] on `listener` until Ctrl-C (see [`serve_with_shutdown`]).
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    serve_with_shutdown(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Runs [`app`] on `listener` until `shutdown` completes, then lets open connections finish.
///
/// `axum::serve` (0.8.9) builds hyper connections without a timer, so hyper's header-read
/// timeout never fires and a client that never finishes its headers holds its connection
/// forever. This accept loop is axum's, with hyper-util's auto builder restricted to HTTP/1
/// (as the crate's axum features; no upgrades, no HTTP/2 preface sniffing, which has no
/// timeout of its own) and given a tokio timer and `header_read_timeout`, which then runs from
/// the moment the connection is accepted, and again while a kept-alive connection waits for
/// its next request.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let header_timeout = state.inner.config.header_read_timeout;
    let router = app(state);
    // Dropped (closed) on shutdown: each connection then shuts down gracefully.
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(());
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    eprintln!("allscan-server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut signal_rx = signal_rx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            // `http1_only` + `serve_connection`: hyper's HTTP/1 connection from the first
            // byte. The auto builder otherwise first sniffs for the HTTP/2 preface (and
            // `serve_connection_with_upgrades` always does), a read with no timeout, so a
            // client that connects and sends nothing was never cut off.
            let mut builder = Builder::new(TokioExecutor::new()).http1_only();
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            let mut signalled = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = signal_rx.changed(), if !signalled => {
                        signalled = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(signal_rx);
    drop(listener);
    let _ = signal_tx.send(());
    drop(close_rx);
    close_tx.closed().await;
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}

/// With a token configured, `/api/*` requires `Authorization: Bearer <token>`.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
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
    let overlay = matches!(query.overlay.as_deref(), Some("1" | "true" | "yes"));
    let results = process(&state, multipart, move |st, files, flag| run_prediction(st, files, overlay, flag)).await?;
    Ok(Json(PredictResponse {
        results,
        aggregation: allscan::infer::AGGREGATION_RULE.to_string(),
        elapsed_ms: start.elapsed().as_millis() as u64,
        notice: NOTICE.to_string(),
    }))
}

async fn slide(
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

async fn explain_cell(
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

/// The limits every upload route shares (module docs, steps 3 to 6): reads the whole form,
/// checks the pixel budgets, takes a slot and a pixel share without waiting, then runs `work`
/// on a blocking thread under the request timeout, cancelled when the request goes away.
async fn process<T, F>(
    state: &AppState,
    multipart: Result<Multipart, MultipartRejection>,
    work: F,
) -> Result<T, AppError>
where
    T: Send + 'static,
    F: FnOnce(&AppState, Vec<(String, Vec<u8>)>, &AtomicBool) -> Result<T, AppError> + Send + 'static,
{
    let cfg = &state.inner.config;
    let multipart = multipart.map_err(|e| {
        AppError::UnsupportedMediaType(format!(
            "expected a multipart/form-data body with one or more `file` fields ({})",
            e.body_text()
        ))
    })?;
    // The whole upload first, holding nothing shared: a client trickling its body costs one
    // idle task, not a processing slot.
    let read_timeout = cfg.body_read_timeout;
    let files = tokio::time::timeout(read_timeout, read_files(multipart, cfg.max_files))
        .await
        .map_err(|_| AppError::BodyTimeout(read_timeout.as_secs()))??;
    let pixels = check_pixel_budget(&files, cfg)?;
    // Back-pressure: no queue; a saturated server says so at once.
    let busy = || AppError::Busy { retry_after_s: cfg.retry_after_s };
    // Held by this future: dropped, and the slot freed, when the request times out or its
    // client goes away.
    let _slot = state.inner.permits.clone().try_acquire_owned().map_err(|_| busy())?;
    // `check_pixel_budget` keeps `pixels` within `max_inflight_pixels`, so this fits in u32.
    let units = u32::try_from(pixel_units(pixels)).map_err(|_| busy())?;
    let pixel_share = state.inner.pixel_units.clone().try_acquire_many_owned(units).map_err(|_| busy())?;
    let timeout = cfg.request_timeout;
    let cancel = CancelOnDrop::default();
    let flag = cancel.flag.clone();
    let state2 = state.clone();
    let gate = state.inner.gate.clone();
    let handle = tokio::task::spawn_blocking(move || {
        // The pixel share lives as long as the decoded images do, timeout or not.
        let _pixel_share = pixel_share;
        // Uncontended (a read lock taken and released) unless a test paused processing.
        drop(gate.blocking_read());
        work(&state2, files, &flag)
    });
    let out = tokio::time::timeout(timeout, handle)
        .await
        .map_err(|_| AppError::Timeout(timeout.as_secs()))?
        .map_err(|e| AppError::Internal(format!("prediction task failed: {e}")))??;
    cancel.disarm();
    Ok(out)
}

/// Tells the blocking prediction to stop when the request future is dropped before it is
/// done (timeout, client gone): the slot is already free, the CPU should be too.
#[derive(Default)]
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    done: bool,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.done = true;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Width x height of every file from its header alone (nothing decoded), against the
/// per-image, per-request and in-flight limits; returns the request's total.
///
/// A file whose header cannot be read is counted at `max_image_pixels`, the most its decode
/// may allocate; the decoder then names the real problem.
fn check_pixel_budget(files: &[(String, Vec<u8>)], cfg: &ServerConfig) -> Result<u64, AppError> {
    let mut total: u64 = 0;
    for (name, bytes) in files {
        // Only the header is read here; the decoder's own allocation limits apply in decode.
        let dims =
            image::ImageReader::new(Cursor::new(bytes.as_slice())).with_guessed_format().ok().and_then(|mut r| {
                r.no_limits();
                r.into_dimensions().ok()
            });
        let pixels = match dims {
            Some((w, h)) => {
                let px = u64::from(w) * u64::from(h);
                if px > cfg.max_image_pixels {
                    return Err(AppError::TooLarge(format!(
                        "{name}: {w}x{h} image is larger than the limit ({} pixels)",
                        cfg.max_image_pixels
                    )));
                }
                px
            }
            None => cfg.max_image_pixels,
        };
        total = total.saturating_add(pixels);
    }
    let limit = cfg.max_request_pixels.min(cfg.max_inflight_pixels);
    if total > limit {
        return Err(AppError::TooLarge(format!(
            "request totals {total} pixels over {} images, larger than the limit of {limit} pixels per request",
            files.len()
        )));
    }
    Ok(total)
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

/// Between steps of a request's work: `Err(Timeout)` once the request was cancelled (nobody
/// reads the answer then; the error only ends the work early).
fn cancel_check<'a>(state: &'a AppState, cancelled: &'a AtomicBool) -> impl Fn() -> Result<(), AppError> + 'a {
    move || {
        if cancelled.load(Ordering::Relaxed) {
            Err(AppError::Timeout(state.inner.config.request_timeout.as_secs()))
        } else {
            Ok(())
        }
    }
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

/// Decodes every uploaded file; any failure rejects the request, naming the file.
fn decode_all(
    state: &AppState,
    files: Vec<(String, Vec<u8>)>,
    check: &dyn Fn() -> Result<(), AppError>,
) -> Result<Vec<(String, RgbImage)>, AppError> {
    let inner = &state.inner;
    let base = inner.predictor.preprocess().decode;
    let limits = DecodeLimits { max_pixels: base.max_pixels.min(inner.config.max_image_pixels), ..base };
    let mut decoded: Vec<(String, RgbImage)> = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        check()?;
        if bytes.is_empty() {
            return Err(AppError::BadRequest(format!("{name}: empty file (0 bytes)")));
        }
        let img = decode_bytes(&bytes, Path::new(&name), &limits).map_err(AppError::from_decode)?;
        decoded.push((name, img));
    }
    Ok(decoded)
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
