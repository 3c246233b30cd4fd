//! `allscan serve` starts on loopback, answers /health and /api/predict, and refuses a bad run.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use allscan::config::TaskKind;

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serves_a_bundle_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    allscan::bundle::testing::write_random_bundle(&run, TaskKind::Binary).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_allscan"))
        .args(["serve", run.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(|s| s.trim_end_matches('/').to_string());
    let result = std::panic::catch_unwind(|| {
        let addr = addr.expect("the server prints its address");
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        assert!(get(&addr, "/health").contains("\"ok\""));
        let model = get(&addr, "/api/model");
        assert!(model.contains("\"class_names\"") && model.contains("\"threshold\""), "{model}");
        assert!(get(&addr, "/").contains("not a diagnostic device"));
        assert!(get(&addr, "/missing").starts_with("HTTP/1.1 404"));
    });
    let _ = child.kill();
    let _ = child.wait();
    drop(stdout);
    result.unwrap();

    let o = common::allscan(tmp.path(), &["serve", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
}
