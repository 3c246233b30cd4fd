//! The service's limits ([`ServerConfig`]): body, image and pixel budgets, concurrency, timeouts
//! and the optional token; the defaults and why.

use std::time::Duration;

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
    /// (applied by [`serve`](crate::serve); a `oneshot` router has no connection).
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
