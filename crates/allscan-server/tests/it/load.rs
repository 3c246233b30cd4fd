//! Bounded load test on loopback: the real server (tiny random model) on 127.0.0.1, 8 client
//! threads, 2,000 requests mixing valid and invalid images. Reports requests/s, p50/p99
//! latency and the process RSS after the first and the last thousand requests; asserts no
//! 5xx for valid requests, a 4xx for every invalid one, and a stable RSS.
//!
//! `ALLSCAN_LOAD_REQUESTS` changes the count (default 2000).

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allscan_server::ServerConfig;
use common::*;

const CLIENTS: usize = 8;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .map_or(0.0, |kib: f64| kib / 1024.0)
}

/// One POST /api/predict over a fresh connection; returns the status code.
fn post(addr: SocketAddr, body: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "POST /api/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        multipart_content_type(),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let line = String::from_utf8_lossy(&resp[..resp.len().min(32)]).into_owned();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

#[test]
fn bounded_load_on_loopback() {
    let total: usize = std::env::var("ALLSCAN_LOAD_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // One slot per client: back-pressure is tested in router.rs; here every valid request
    // must be served.
    let state = state(ServerConfig { max_concurrent: CLIENTS, ..Default::default() });
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(allscan_server::serve_with_shutdown(listener, state, std::future::pending()));

    let good = field_png(1, 96, 9);
    let cases: Vec<(bool, Vec<u8>)> = vec![
        (true, multipart(&[("file", "good.png", &good)])),
        (false, multipart(&[("file", "text.txt", b"definitely not an image")])),
        (true, multipart(&[("file", "good2.png", &field_png(0, 80, 10))])),
        (false, multipart(&[("file", "cut.png", &good[..good.len() / 3])])),
        (false, multipart(&[("file", "huge.png", &png_claiming(50_000, 50_000))])),
        (false, multipart(&[("file", "empty.png", b"")])),
    ];
    let cases = Arc::new(cases);
    let next = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::<(usize, f64)>::with_capacity(total)));
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let rss_first = Arc::new(Mutex::new(0.0f64));
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (cases, next, lat, bad, rss_first) =
                (cases.clone(), next.clone(), lat.clone(), bad.clone(), rss_first.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    break;
                }
                if i == total / 2 {
                    *rss_first.lock().unwrap() = rss_mib();
                }
                let (valid, body) = &cases[i % cases.len()];
                let t = Instant::now();
                let r = post(addr, body);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                lat.lock().unwrap().push((i, ms));
                let ok = match r {
                    Ok(s) if *valid => s == 200,
                    Ok(s) => (400..500).contains(&s),
                    Err(_) => false,
                };
                if !ok {
                    bad.lock().unwrap().push(format!("request {i} (valid: {valid}): {r:?}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let rss_last = rss_mib();
    let rss_first = *rss_first.lock().unwrap();
    let mut ms: Vec<f64> = lat.lock().unwrap().iter().map(|(_, m)| *m).collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "load: {total} requests, {CLIENTS} clients, {:.1} req/s, p50 {:.1} ms, p99 {:.1} ms; RSS {rss_first:.1} MiB \
         after the first half, {rss_last:.1} MiB at the end",
        total as f64 / secs,
        q(0.5),
        q(0.99)
    );
    let bad = bad.lock().unwrap();
    assert!(bad.is_empty(), "{} unexpected answers, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    assert!(rss_last < rss_first * 1.25 + 16.0, "RSS grew from {rss_first:.1} to {rss_last:.1} MiB");
}
