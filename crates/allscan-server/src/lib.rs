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
//!
//! [`Predictor`]: allscan::infer::Predictor

mod config;
mod error;
mod limits;
mod routes;
mod serve;
mod state;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use routes::explain::explain_cell;
use routes::predict::predict;
use routes::slide::slide;
use routes::{health, index, method_not_allowed, model_info, not_found, require_token};

pub use config::ServerConfig;
pub use error::{AppError, ErrorBody};
pub use routes::explain::CellExplainResponse;
pub use routes::predict::{ImageResult, PredictResponse};
pub use routes::slide::{field_display_name, MAX_FIRST_FIELD};
pub use serve::{serve, serve_with_shutdown};
pub use state::AppState;

/// The web page (vanilla HTML + JS, no build step).
pub const INDEX_HTML: &str = include_str!("index.html");

/// Research-use notice, in every prediction response and on the page.
pub const NOTICE: &str = "Research use only, not a diagnostic device.";

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
