//! Helpers for the server tests: a tiny random-weight predictor, images, multipart bodies.
#![allow(dead_code)]

use allscan::infer::Predictor;
use allscan::model::ClassifierConfig;
use allscan_preprocess::{PreprocessConfig, RoiConfig, RoiViews};
use allscan_server::{AppState, ServerConfig};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use burn::tensor::Device;
use densenet_burn::{DenseNetConfig, DenseNetVariant};

/// A binary classifier on a tiny random DenseNet, 64-pixel inputs, one crop per nucleus.
pub fn tiny_predictor() -> Predictor {
    let device = Device::flex();
    let mut config = ClassifierConfig::binary(DenseNetVariant::DenseNet121)
        .with_custom_backbone(DenseNetConfig::custom(4, vec![2, 2], 8, None));
    config.hidden = 8;
    let model = config.init(&device).expect("tiny model builds");
    let preprocess = PreprocessConfig {
        input_size: 64,
        roi: RoiConfig { views: RoiViews::All, ..Default::default() },
        ..Default::default()
    };
    Predictor::new(model, config, preprocess, allscan::decision::Decision::binary(0.5).expect("binary decision"))
        .expect("predictor")
}

pub fn model_info() -> serde_json::Value {
    serde_json::json!({ "task": { "kind": "binary" }, "class_names": ["healthy", "leukemia"], "threshold": 0.5 })
}

pub fn state(config: ServerConfig) -> AppState {
    AppState::new(tiny_predictor(), model_info(), config)
}

/// PNG bytes of a synthetic smear field.
pub fn field_png(class: usize, size: u32, seed: u64) -> Vec<u8> {
    let f = allscan::synth::render_field(class, size, &mut allscan::synth::field_rng(seed, class, 0));
    allscan::explain::png_bytes(&f.image).expect("png")
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A valid small PNG whose header claims `w` x `h` pixels (IHDR rewritten, CRC fixed).
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = field_png(0, 32, 1);
    // Signature (8) + length (4) + "IHDR" (4) -> width at 16, height at 20, CRC at 29.
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

pub const BOUNDARY: &str = "allscan-test-boundary-7f3a";

/// A multipart/form-data body with one part per `(field name, file name, bytes)`.
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n").as_bytes(),
        );
        body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn multipart_content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A real server for `config` on 127.0.0.1 (any port), on its own runtime: it stops when the
/// returned runtime is dropped, so a test cannot leave it behind.
pub fn spawn_server(config: ServerConfig) -> (tokio::runtime::Runtime, std::net::SocketAddr, AppState) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let st = state(config);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    rt.spawn(allscan_server::serve_with_shutdown(listener, st.clone(), std::future::pending()));
    (rt, addr, st)
}

/// Request head of a multipart POST /api/predict with this body length.
pub fn predict_head(addr: std::net::SocketAddr, len: usize, extra: &str) -> String {
    format!(
        "POST /api/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\nContent-Length: {len}\r\n{extra}Connection: close\r\n\r\n",
        multipart_content_type()
    )
}

/// One whole POST /api/predict over a fresh connection; returns the status and the body.
pub fn post_predict(
    addr: std::net::SocketAddr,
    body: &[u8],
    timeout: std::time::Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(predict_head(addr, body.len(), "").as_bytes())?;
    s.write_all(body)?;
    read_response(&mut s)
}

/// Reads a whole `Connection: close` response: status code and body text.
pub fn read_response(s: &mut std::net::TcpStream) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {:?}", &text[..text.len().min(64)])))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
pub fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .map_or(0.0, |kib: f64| kib / 1024.0)
}

/// Sends `req` through `router` (no socket): status, headers and the whole body.
pub async fn send(router: axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    use tower::ServiceExt;
    let resp = router.oneshot(req).await.expect("infallible");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.expect("body");
    (status, headers, body.to_vec())
}

/// A multipart POST of `parts` to `uri` (route and query), with an optional `Authorization`.
pub fn multipart_req(uri: &str, auth: Option<&str>, parts: &[(&str, &str, &[u8])]) -> Request<Body> {
    let mut r = Request::post(uri).header(header::CONTENT_TYPE, multipart_content_type());
    if let Some(a) = auth {
        r = r.header(header::AUTHORIZATION, a);
    }
    r.body(Body::from(multipart(parts))).expect("request")
}
