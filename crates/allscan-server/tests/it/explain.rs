//! `POST /api/explain-cell` driven with `oneshot`: one field + a cell index -> that cell's
//! Grad-CAM overlay (a PNG data URI) with the probability `/api/predict` gives the same cell;
//! bad indices and uploads are 4xx; the shared limits (token, pixels, busy 503 with
//! Retry-After, timeout) hold. And the masks of a cell-mode model in `/api/predict`'s and
//! `/api/slide`'s JSON decode to the finder's own masks.

use crate::common;

use std::time::{Duration, Instant};

use allscan::infer::Predictor;
use allscan::masks::CellMasks;
use allscan::model::ClassifierConfig;
use allscan_preprocess::{PreprocessConfig, SegmentMode};
use allscan_server::{app, AppState, CellExplainResponse, ErrorBody, PredictResponse, ServerConfig};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine;
use burn::tensor::Device;
use common::*;
use densenet_burn::{DenseNetConfig, DenseNetVariant};

fn explain_req(query: &str, auth: Option<&str>, parts: &[(&str, &str, &[u8])]) -> Request<Body> {
    multipart_req(&format!("/api/explain-cell{query}"), auth, parts)
}

fn error(status: StatusCode, body: &[u8], want: StatusCode) -> String {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    serde_json::from_slice::<ErrorBody>(body).expect("JSON error").error
}

fn decode_overlay(uri: &str) -> image::RgbImage {
    let b64 = uri.strip_prefix("data:image/png;base64,").expect("a PNG data URI");
    let png = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    image::load_from_memory(&png).expect("a PNG").to_rgb8()
}

#[tokio::test]
async fn a_cell_is_explained_with_the_probability_predict_gives_it() {
    let router = app(state(ServerConfig::default()));
    let field = field_png(2, 160, 9);
    let (s, _, body) = send(router.clone(), multipart_req("/api/predict", None, &[("file", "f.png", &field)])).await;
    assert_eq!(s, StatusCode::OK);
    let predicted: PredictResponse = serde_json::from_slice(&body).unwrap();
    let cells = &predicted.results[0].field.cells;
    assert!(!cells.is_empty());
    let last = cells.len() - 1;
    let mut overlays = Vec::new();
    for i in [0, last] {
        let (s, _, body) =
            send(router.clone(), explain_req(&format!("?cell={i}"), None, &[("file", "dir/f.png", &field)])).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let r: CellExplainResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!((r.cell, r.file.as_str()), (i, "f.png"));
        assert!((r.p_blast - cells[i].p_leukemia).abs() < 1e-4, "{} vs {}", r.p_blast, cells[i].p_leukemia);
        assert_eq!(r.region, cells[i].region);
        assert_eq!(r.call == allscan::slide::CellCall::Blast, cells[i].prediction == "leukemia");
        let img = decode_overlay(&r.overlay_png);
        assert_eq!(img.dimensions(), (r.side, r.side));
        overlays.push(img);
    }
    if last > 0 {
        assert_ne!(overlays[0], overlays[1], "two cells, one overlay");
    }

    // A cell the field does not have, no index, a bad index, two fields: 400 with the reason.
    let (s, _, b) =
        send(router.clone(), explain_req(&format!("?cell={}", last + 1), None, &[("file", "f.png", &field)])).await;
    assert!(error(s, &b, StatusCode::BAD_REQUEST).contains("does not exist"));
    let (s, _, b) = send(router.clone(), explain_req("", None, &[("file", "f.png", &field)])).await;
    assert!(error(s, &b, StatusCode::BAD_REQUEST).contains("cell"));
    let (s, _, b) = send(router.clone(), explain_req("?cell=-1", None, &[("file", "f.png", &field)])).await;
    error(s, &b, StatusCode::BAD_REQUEST);
    let two: [(&str, &str, &[u8]); 2] = [("file", "a.png", &field), ("file", "b.png", &field)];
    let (s, _, b) = send(router.clone(), explain_req("?cell=0", None, &two)).await;
    assert!(error(s, &b, StatusCode::BAD_REQUEST).contains("exactly one"));
    let (s, _, b) = send(router, explain_req("?cell=0", None, &[("file", "x.png", b"not an image")])).await;
    assert!(s.is_client_error(), "{s}: {}", String::from_utf8_lossy(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_cell_meets_the_shared_limits() {
    let img = field_png(1, 96, 4);
    let one: [(&str, &str, &[u8]); 1] = [("file", "a.png", &img)];
    let huge = png_claiming(20_000, 20_000);
    let (s, _, b) =
        send(app(state(ServerConfig::default())), explain_req("?cell=0", None, &[("file", "big.png", &huge)])).await;
    error(s, &b, StatusCode::PAYLOAD_TOO_LARGE);
    let small_body = state(ServerConfig { max_body_bytes: 1024, ..Default::default() });
    let (s, _, b) = send(app(small_body), explain_req("?cell=0", None, &one)).await;
    error(s, &b, StatusCode::PAYLOAD_TOO_LARGE);

    let tokened = app(state(ServerConfig { token: Some("s3cret".into()), ..Default::default() }));
    let (s, h, b) = send(tokened.clone(), explain_req("?cell=0", None, &one)).await;
    error(s, &b, StatusCode::UNAUTHORIZED);
    assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
    let (s, _, _) = send(tokened, explain_req("?cell=0", Some("Bearer s3cret"), &one)).await;
    assert_eq!(s, StatusCode::OK);

    let st = state(ServerConfig { max_concurrent: 1, retry_after_s: 3, ..Default::default() });
    let held = st.hold_slot().expect("a free slot");
    let (s, h, b) = send(app(st.clone()), explain_req("?cell=0", None, &one)).await;
    error(s, &b, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h[header::RETRY_AFTER], "3");
    drop(held);

    // Past the request timeout: 504, and the slot is free again at once.
    let timeout = Duration::from_millis(400);
    let st = state(ServerConfig { max_concurrent: 1, request_timeout: timeout, ..Default::default() });
    let paused = st.pause_processing().expect("not paused yet");
    let t = Instant::now();
    let (s, _, b) = send(app(st.clone()), explain_req("?cell=0", None, &one)).await;
    assert!(error(s, &b, StatusCode::GATEWAY_TIMEOUT).contains("longer than"));
    assert!(t.elapsed() >= timeout);
    assert_eq!(st.free_slots(), 1);
    drop(paused);
}

/// A binary classifier on a tiny random DenseNet judging whole white cells (`cell` mode).
fn cell_state() -> (AppState, PreprocessConfig) {
    let device = Device::flex();
    let mut config = ClassifierConfig::binary(DenseNetVariant::DenseNet121)
        .with_custom_backbone(DenseNetConfig::custom(4, vec![2, 2], 8, None));
    config.hidden = 8;
    let model = config.init(&device).expect("tiny model builds");
    let preprocess = PreprocessConfig { mode: SegmentMode::Cell, input_size: 64, ..Default::default() };
    let p = Predictor::new(
        model,
        config,
        preprocess.clone(),
        allscan::decision::Decision::binary(0.5).expect("binary decision"),
    )
    .expect("predictor");
    (AppState::new(p, model_info(), ServerConfig::default()), preprocess)
}

/// Decodes `m` and checks it against the finder's labels of cell `i` of `found`.
fn assert_masks_are_the_finders(m: &CellMasks, found: &allscan_preprocess::CellResult, i: usize) {
    let label = i as u32 + 1;
    for (rle, nucleus) in [(&m.cell, false), (&m.nucleus, true)] {
        let [x0, y0, w, _] = rle.bbox;
        let bits = rle.decode().expect("runs cover the box");
        for (j, &inside) in bits.iter().enumerate() {
            let (x, y) = (x0 + j as u32 % w, y0 + j as u32 / w);
            let want = found.labels.get_pixel(x, y)[0] == label && (!nucleus || found.mask.get_pixel(x, y)[0] == 255);
            assert_eq!(inside, want, "cell {i} (nucleus: {nucleus}) at ({x}, {y})");
        }
    }
    let c = &found.cells[i];
    assert_eq!(m.cell.bbox, [c.cell.x, c.cell.y, c.cell.width, c.cell.height]);
    assert_eq!((m.cell.area(), m.nucleus.area()), (u64::from(c.cell_area), u64::from(c.nucleus_area)));
}

#[tokio::test]
async fn predict_and_slide_json_carry_the_finders_masks() {
    let (st, pre) = cell_state();
    let router = app(st);
    let f = allscan::synth::render_field(3, 256, &mut allscan::synth::field_rng(8, 3, 1)).image;
    let png = allscan::explain::png_bytes(&f).unwrap();
    let scale = allscan_preprocess::estimate_scale(&f, &pre.cell.scale);
    let found = allscan_preprocess::find_white_cells(&f, &pre.cell.finder, &scale);
    assert!(!found.cells.is_empty(), "a synthetic field has a white cell");

    let (s, _, body) = send(router.clone(), multipart_req("/api/predict", None, &[("file", "f.png", &png)])).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let cells = v["results"][0]["cells"].as_array().unwrap();
    assert_eq!(cells.len(), found.cells.len());
    for (i, c) in cells.iter().enumerate() {
        let m: CellMasks = serde_json::from_value(c["masks"].clone()).expect("masks in /api/predict");
        assert_masks_are_the_finders(&m, &found, i);
    }

    let (s, _, body) = send(router, multipart_req("/api/slide", None, &[("file", "f.png", &png)])).await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let cells = v["fields"][0]["cells"].as_array().unwrap();
    assert_eq!(cells.len(), found.cells.len());
    for (i, c) in cells.iter().enumerate() {
        let m: CellMasks = serde_json::from_value(c["masks"].clone()).expect("masks in /api/slide");
        assert_masks_are_the_finders(&m, &found, i);
    }
}
