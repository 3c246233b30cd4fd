//! Service hardening on loopback and through `oneshot`: slow uploads hold no processing slot,
//! half-sent headers are cut off, pixel budgets per request and per process, a timed-out
//! request frees its slot, and the optional bearer token.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allscan_server::{app, ErrorBody, ServerConfig};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;

fn predict_req(query: &str, auth: Option<&str>, parts: &[(&str, &str, &[u8])]) -> Request<Body> {
    multipart_req(&format!("/api/predict{query}"), auth, parts)
}

fn error_of(status: StatusCode, body: &[u8], want: StatusCode) -> String {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    let e: ErrorBody = serde_json::from_slice(body).expect("JSON error body");
    assert_eq!(e.status, want.as_u16());
    e.error
}

/// Two clients trickle their uploads (one byte per 100 ms) into a server with ONE processing
/// slot: a normal request is still served meanwhile, and each trickler gets a 408 once the
/// body-read timeout passes.
#[test]
fn slow_uploads_do_not_block_normal_requests() {
    let (_rt, addr, _st) = spawn_server(ServerConfig {
        max_concurrent: 1,
        body_read_timeout: Duration::from_secs(3),
        ..Default::default()
    });
    let good = multipart(&[("file", "a.png", &field_png(0, 48, 5))]);
    let tricklers: Vec<_> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(predict_head(addr, good.len(), "").as_bytes()).expect("head");
            let body = good.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let stop = Arc::new(AtomicBool::new(false));
                let mut w = s.try_clone().expect("clone");
                let stop2 = stop.clone();
                // Writes one byte per 100 ms until told to stop or the server hangs up.
                let writer = std::thread::spawn(move || {
                    for b in body.iter().take(body.len() - 1) {
                        if stop2.load(Ordering::Relaxed) || w.write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
                s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
                let resp = read_response(&mut s);
                let took = started.elapsed();
                stop.store(true, Ordering::Relaxed);
                let _ = s.shutdown(std::net::Shutdown::Both);
                let _ = writer.join();
                (resp, took)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (code, body) = post_predict(addr, &good, Duration::from_secs(15)).expect("normal request");
    assert_eq!(code, 200, "normal request while uploads trickle: {body}");
    assert!(t.elapsed() < Duration::from_secs(3), "served only after the tricklers gave up: {:?}", t.elapsed());
    for h in tricklers {
        let (resp, took) = h.join().expect("trickler thread");
        let (code, body) = resp.expect("trickler gets an answer");
        assert_eq!(code, 408, "{body}");
        assert!(body.contains("upload not received"), "{body}");
        assert!(took < Duration::from_secs(8), "408 after {took:?}");
    }
}

/// 60 connections that never finish their headers (or send nothing) are closed by the server
/// soon after the 1 s header-read timeout; a normal request is served afterwards.
#[test]
fn half_open_connections_are_closed_after_header_timeout() {
    let (_rt, addr, _st) =
        spawn_server(ServerConfig { header_read_timeout: Duration::from_secs(1), ..Default::default() });
    let start = Instant::now();
    let mut conns: Vec<TcpStream> = (0..60)
        .map(|i| {
            let mut s = TcpStream::connect(addr).expect("connect");
            if i % 3 != 0 {
                s.write_all(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Ty").expect("partial head");
            }
            s.set_read_timeout(Some(Duration::from_secs(6))).expect("timeout");
            s
        })
        .collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connection {i} still open after {:?}: {e}", start.elapsed()),
        }
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "closed before the timeout: {took:?}");
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    let good = multipart(&[("file", "a.png", &field_png(0, 48, 5))]);
    let (code, body) = post_predict(addr, &good, Duration::from_secs(15)).expect("normal request");
    assert_eq!(code, 200, "{body}");
}

/// The process-wide pixel budget: a request whose pixels do not fit next to what is in
/// flight gets 503 with Retry-After (nothing decoded) and is served once the budget frees;
/// a request larger than the whole budget gets 413.
#[tokio::test]
async fn inflight_pixel_budget_gives_503_then_serves() {
    let st = state(ServerConfig { max_inflight_pixels: 12_000, retry_after_s: 3, ..Default::default() });
    let router = app(st.clone());
    let img = field_png(0, 96, 2); // 9,216 pixels
    let held = st.hold_pixels(6_000).expect("budget free");
    let (s, h, b) = send(router.clone(), predict_req("", None, &[("file", "a.png", &img)])).await;
    assert!(error_of(s, &b, StatusCode::SERVICE_UNAVAILABLE).contains("busy"));
    assert_eq!(h[header::RETRY_AFTER], "3");
    assert_eq!(st.free_slots(), st.config().max_concurrent, "a 503 keeps no slot");
    drop(held);
    let (s, _, b) = send(router.clone(), predict_req("", None, &[("file", "a.png", &img)])).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = send(router, predict_req("", None, &[("file", "a.png", &img), ("file", "b.png", &img)])).await;
    assert!(error_of(s, &b, StatusCode::PAYLOAD_TOO_LARGE).contains("per request"));
}

/// A request that runs past `request_timeout` gets its 504 and its slot back at once (the
/// only slot), while its blocking work is still stuck, so the next request is served; the
/// stuck work, once released, stops and frees its pixel share. Processing is held with
/// `pause_processing`, so the request runs past the timeout on any machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_request_releases_its_slot() {
    let timeout = Duration::from_millis(500);
    let st = state(ServerConfig { max_concurrent: 1, request_timeout: timeout, ..Default::default() });
    let router = app(st.clone());
    let img = field_png(1, 224, 21);
    let budget = st.config().max_inflight_pixels;
    let paused = st.pause_processing().expect("not paused yet");
    let t = Instant::now();
    let (s, _, b) = send(router.clone(), predict_req("?overlay=1", None, &[("file", "big.png", &img)])).await;
    let took = t.elapsed();
    assert!(error_of(s, &b, StatusCode::GATEWAY_TIMEOUT).contains("longer than"));
    assert!(took >= timeout && took < Duration::from_secs(3), "504 after {took:?}");
    assert_eq!(st.free_slots(), 1, "the timed-out request still holds its slot");
    // Its blocking work has not even started: it still holds the image's pixel share.
    assert!(st.hold_pixels(budget).is_none(), "the stuck work's pixel share was freed early");
    drop(paused);
    let small = field_png(0, 48, 5);
    let (s, _, b) = send(router, predict_req("", None, &[("file", "a.png", &small)])).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    // Released, the cancelled work stops before decoding and gives its pixel share back.
    let t = Instant::now();
    while st.hold_pixels(budget).is_none() {
        assert!(t.elapsed() < Duration::from_secs(3), "the cancelled work kept its pixel share");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With a token, every /api/* route needs `Authorization: Bearer <token>` (401 JSON with
/// `WWW-Authenticate` otherwise) while the page and /health stay open; without one, nothing
/// is asked.
#[tokio::test]
async fn bearer_token_required_when_set_and_only_then() {
    let router = app(state(ServerConfig { token: Some("s3cret-token".into()), ..Default::default() }));
    let get = |path: &str, auth: Option<&str>| {
        let mut r = Request::get(path);
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        r.body(Body::empty()).expect("request")
    };
    for auth in [None, Some("Bearer wrong-token!"), Some("Basic czNjcmV0LXRva2Vu"), Some("s3cret-token")] {
        let (s, h, b) = send(router.clone(), get("/api/model", auth)).await;
        assert!(error_of(s, &b, StatusCode::UNAUTHORIZED).contains("token"), "{auth:?}");
        assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
    }
    let img = field_png(0, 48, 5);
    let (s, _, b) = send(router.clone(), predict_req("", None, &[("file", "a.png", &img)])).await;
    error_of(s, &b, StatusCode::UNAUTHORIZED);
    let (s, _, b) =
        send(router.clone(), predict_req("", Some("Bearer s3cret-token"), &[("file", "a.png", &img)])).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, _, _) = send(router.clone(), get("/api/model", Some("Bearer s3cret-token"))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = send(router.clone(), get("/health", None)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, page) = send(router, get("/", None)).await;
    assert_eq!(s, StatusCode::OK);
    let page = String::from_utf8(page).expect("utf-8 page");
    assert!(page.contains("Authorization") && page.contains("token"), "the page sends no token");

    let open = app(state(ServerConfig::default()));
    let (s, _, _) = send(open.clone(), get("/api/model", None)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, b) = send(open, predict_req("", None, &[("file", "a.png", &img)])).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
}
