//! The per-request pixel budget, alone in its test binary so that the process's peak RSS
//! (VmHWM) measures this request only: 16 images whose headers claim 36 MP each (under the
//! per-image limit, 576 MP together) get a 413 from their headers, quickly, with nothing
//! decoded.

use crate::common;

use std::time::{Duration, Instant};

use allscan_server::{app, ErrorBody, ServerConfig};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use tower::ServiceExt;

#[tokio::test]
async fn oversized_request_gets_413_from_headers_without_rss_growth() {
    let cfg = ServerConfig::default();
    assert!(36_000_000 <= cfg.max_image_pixels && 16 * 36_000_000 > cfg.max_request_pixels);
    let router = app(state(cfg));
    let claim = png_claiming(6_000, 6_000);
    let parts: Vec<(&str, &str, &[u8])> = (0..16).map(|_| ("file", "flat.png", claim.as_slice())).collect();
    let body = multipart(&parts);
    let before = vm_hwm_mib();
    let t = Instant::now();
    let req = Request::post("/api/predict")
        .header(header::CONTENT_TYPE, multipart_content_type())
        .body(Body::from(body))
        .expect("request");
    let resp = router.oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    let took = t.elapsed();
    let grew = vm_hwm_mib() - before;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&bytes));
    let e: ErrorBody = serde_json::from_slice(&bytes).expect("JSON error");
    assert!(e.error.contains("per request") && e.error.contains("576000000"), "{}", e.error);
    assert!(took < Duration::from_secs(2), "413 after {took:?}");
    assert!(grew < 32.0, "peak RSS grew by {grew:.1} MiB for a rejected request");
    println!("pixel budget: 413 in {:.1} ms, VmHWM growth {grew:.1} MiB", took.as_secs_f64() * 1e3);
}
