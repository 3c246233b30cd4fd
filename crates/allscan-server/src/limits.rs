//! The limits every upload route shares (crate docs, steps 3 to 6): the form read under its
//! timeout, the pixel budgets, a slot taken without waiting, the blocking work cancelled when
//! the request goes away, and the decode of each file.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use allscan_preprocess::{decode_bytes, DecodeLimits};
use axum::extract::multipart::MultipartRejection;
use axum::extract::Multipart;
use axum::http::StatusCode;
use image::RgbImage;

use crate::state::pixel_units;
use crate::{AppError, AppState, ServerConfig};

/// The limits every upload route shares (module docs, steps 3 to 6): reads the whole form,
/// checks the pixel budgets, takes a slot and a pixel share without waiting, then runs `work`
/// on a blocking thread under the request timeout, cancelled when the request goes away.
pub(crate) async fn process<T, F>(
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
pub(crate) fn cancel_check<'a>(
    state: &'a AppState,
    cancelled: &'a AtomicBool,
) -> impl Fn() -> Result<(), AppError> + 'a {
    move || {
        if cancelled.load(Ordering::Relaxed) {
            Err(AppError::Timeout(state.inner.config.request_timeout.as_secs()))
        } else {
            Ok(())
        }
    }
}

/// Decodes every uploaded file; any failure rejects the request, naming the file.
pub(crate) fn decode_all(
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
