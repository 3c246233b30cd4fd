//! Router tests driven with `oneshot` (no socket): every route and every error case.

use crate::common;

use std::time::Duration;

use allscan_server::{app, ErrorBody, PredictResponse, ServerConfig};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;

fn predict_req(query: &str, parts: &[(&str, &str, &[u8])]) -> Request<Body> {
    multipart_req(&format!("/api/predict{query}"), None, parts)
}

/// Asserts a JSON error with this status and a message containing `needle`.
fn assert_error(status: StatusCode, body: &[u8], want: StatusCode, needle: &str) {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    let e: ErrorBody = serde_json::from_slice(body).expect("JSON error body");
    assert_eq!(e.status, want.as_u16());
    assert!(e.error.to_lowercase().contains(&needle.to_lowercase()), "{:?} lacks {needle:?}", e.error);
}

#[tokio::test]
async fn page_health_and_model_routes() {
    let router = app(state(ServerConfig::default()));
    let (s, h, body) = send(router.clone(), Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("Research use only, not a diagnostic device"));
    assert!(html.contains("/api/predict"));

    let (s, _, body) = send(router.clone(), Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["status"], "ok");

    let (s, _, body) = send(router, Request::get("/api/model").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["class_names"][1], "leukemia");
}

#[tokio::test]
async fn predict_several_images_with_and_without_overlay() {
    let router = app(state(ServerConfig::default()));
    let a = field_png(0, 96, 1);
    let b = field_png(3, 96, 2);
    let (s, _, body) = send(router.clone(), predict_req("", &[("file", "a.png", &a), ("file", "b.png", &b)])).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: PredictResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(r.results.len(), 2);
    assert_eq!(r.results[0].file, "a.png");
    assert_eq!(r.results[1].file, "b.png");
    for x in &r.results {
        assert!(x.field.prediction == "leukemia" || x.field.prediction == "healthy");
        assert!((0.0..=1.0).contains(&x.field.p_leukemia));
        assert_eq!(x.n_cells, x.field.cells.len());
        assert!(x.overlay_png.is_none());
    }
    assert!(r.notice.contains("not a diagnostic device"));

    let (s, _, body) = send(router, predict_req("?overlay=1", &[("file", "a.png", &a)])).await;
    assert_eq!(s, StatusCode::OK);
    let r: PredictResponse = serde_json::from_slice(&body).unwrap();
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(r.results[0].overlay_png.as_ref().unwrap()).unwrap();
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (96, 96));
}

#[tokio::test]
async fn bad_uploads_get_4xx_json_errors() {
    let router = app(state(ServerConfig::default()));
    let good = field_png(1, 64, 3);
    // Not an image.
    let (s, _, b) = send(router.clone(), predict_req("", &[("file", "notes.txt", b"hello, not an image")])).await;
    assert_error(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "not a recognised image");
    // Truncated image.
    let cut = &good[..good.len() / 2];
    let (s, _, b) = send(router.clone(), predict_req("", &[("file", "cut.png", cut)])).await;
    assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "cut.png");
    // Huge dimensions in the header (rejected before any pixel is allocated).
    let huge = png_claiming(60_000, 60_000);
    let (s, _, b) = send(router.clone(), predict_req("", &[("file", "huge.png", &huge)])).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit");
    // An empty file part.
    let (s, _, b) = send(router.clone(), predict_req("", &[("file", "empty.png", b"")])).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "empty");
    // A form without any `file` field.
    let (s, _, b) = send(router.clone(), predict_req("", &[("other", "x.png", &good)])).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "no image uploaded");
    // An empty body.
    let req = Request::post("/api/predict")
        .header(header::CONTENT_TYPE, multipart_content_type())
        .body(Body::empty())
        .unwrap();
    let (s, _, b) = send(router.clone(), req).await;
    assert!(s.is_client_error(), "{s}");
    serde_json::from_slice::<ErrorBody>(&b).expect("JSON error");
    // Wrong content type.
    let req = Request::post("/api/predict").header(header::CONTENT_TYPE, "image/png").body(Body::from(good)).unwrap();
    let (s, _, b) = send(router.clone(), req).await;
    assert_error(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "multipart/form-data");
    // No content type at all.
    let (s, _, b) = send(router.clone(), Request::post("/api/predict").body(Body::from("x")).unwrap()).await;
    assert_error(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "multipart/form-data");
    // Unknown route and wrong method.
    let (s, _, b) = send(router.clone(), Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "/nope");
    let (s, _, b) = send(router, Request::get("/api/predict").body(Body::empty()).unwrap()).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method");
}

#[tokio::test]
async fn limits_body_pixels_concurrency_and_timeout() {
    // Body size.
    let router = app(state(ServerConfig { max_body_bytes: 4096, ..Default::default() }));
    let big = field_png(2, 128, 4);
    assert!(big.len() > 4096);
    let (s, _, b) = send(router, predict_req("", &[("file", "big.png", &big)])).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "limit");
    // Pixels: a real 128x128 image over a 10,000-pixel limit.
    let router = app(state(ServerConfig { max_image_pixels: 10_000, ..Default::default() }));
    let (s, _, b) = send(router, predict_req("", &[("file", "big.png", &big)])).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "128x128");
    // Too many files.
    let router = app(state(ServerConfig { max_files: 1, ..Default::default() }));
    let small = field_png(0, 48, 5);
    let (s, _, b) = send(router, predict_req("", &[("file", "a.png", &small), ("file", "b.png", &small)])).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "too many files");
    // Saturation: every slot held -> 503 with Retry-After, then served once released.
    let st = state(ServerConfig { max_concurrent: 1, retry_after_s: 2, ..Default::default() });
    let router = app(st.clone());
    let slot = st.hold_slot().expect("a free slot");
    let (s, h, b) = send(router.clone(), predict_req("", &[("file", "a.png", &small)])).await;
    assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "busy");
    assert_eq!(h[header::RETRY_AFTER], "2");
    drop(slot);
    let (s, _, _) = send(router, predict_req("", &[("file", "a.png", &small)])).await;
    assert_eq!(s, StatusCode::OK);
    // Timeout.
    let router = app(state(ServerConfig { request_timeout: Duration::from_millis(1), ..Default::default() }));
    let (s, _, b) = send(router, predict_req("?overlay=1", &[("file", "big.png", &big)])).await;
    assert_error(s, &b, StatusCode::GATEWAY_TIMEOUT, "longer than");
}

#[test]
fn internal_errors_are_generic_500s() {
    use axum::response::IntoResponse;
    let resp = allscan_server::AppError::Internal("secret detail: /home/x".into()).into_response();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let body = rt.block_on(axum::body::to_bytes(resp.into_body(), 1 << 16)).unwrap();
    let e: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(e.error, "internal error");
}
