//! `allscan weights`: bad input gets one clear error each (never a panic), fetch is atomic and
//! explains the offline route. Uses the tiny torchvision fixture from `densenet-burn`.

use crate::common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{stderr, stdout};

fn allscan(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allscan"))
        .args(args)
        .current_dir(home)
        .env("ALLSCAN_HOME", home)
        .env("NO_COLOR", "1")
        .output()
        .expect("the allscan binary runs")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../densenet-burn/tests/fixtures").join(name)
}

fn assert_clean_failure(o: &Output) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail; stdout: {}", stdout(o));
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn not_a_state_dict_is_one_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("notes.pth");
    std::fs::write(&file, "these are not tensors\n").unwrap();
    let err = assert_clean_failure(&allscan(
        home.path(),
        &["weights", "import", file.to_str().unwrap(), "--variant", "densenet201"],
    ));
    assert!(err.contains("notes.pth"), "{err}");
    assert!(err.contains("PyTorch state_dict"), "{err}");
}

#[test]
fn truncated_file_is_one_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny.pth")).unwrap();
    for (name, cut) in [("half.pth", bytes.len() / 2), ("head.pth", 100)] {
        let file = home.path().join(name);
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let err = assert_clean_failure(&allscan(
            home.path(),
            &["weights", "import", file.to_str().unwrap(), "--variant", "densenet121"],
        ));
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn wrong_network_names_keys_and_shapes() {
    let home = tempfile::tempdir().unwrap();
    let file = fixture("tiny.pth");
    let err = assert_clean_failure(&allscan(
        home.path(),
        &["weights", "import", file.to_str().unwrap(), "--variant", "densenet201"],
    ));
    assert!(err.contains("does not fit densenet201"), "{err}");
    assert!(err.contains("features.conv0.weight expected [64, 3, 7, 7] found [16, 3, 7, 7]"), "{err}");
    assert!(err.contains("dense blocks 2/2/2/2"), "{err}");
    assert!(err.contains("missing keys: features.denseblock1.denselayer3"), "{err}");
    assert!(!home.path().join("weights/densenet201-features.bpk").exists());

    let o = allscan(home.path(), &["weights", "check", file.to_str().unwrap(), "--variant", "densenet201"]);
    assert!(!o.status.success());
    let out = stdout(&o);
    assert!(out.contains("shape mismatches"), "{out}");
    assert!(out.contains("missing features.denseblock"), "{out}");
}

/// Serves `body` once, announcing `announced` bytes and closing after `send`.
fn serve(body: Vec<u8>, announced: usize, send: usize) -> String {
    allscan::weights::testing::serve_once(body, announced, send).unwrap()
}

#[test]
fn fetch_with_wrong_hash_leaves_nothing_behind() {
    let home = tempfile::tempdir().unwrap();
    let body = std::fs::read(fixture("tiny.pth")).unwrap();
    let url = serve(body.clone(), body.len(), body.len());
    let err = assert_clean_failure(&allscan(home.path(), &["weights", "fetch", "densenet121", "--base-url", &url]));
    assert!(err.contains("does not start with a639ec97"), "{err}");
    let left: Vec<_> =
        std::fs::read_dir(home.path().join("weights")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn fetch_cut_mid_body_leaves_nothing_behind() {
    let home = tempfile::tempdir().unwrap();
    let body = std::fs::read(fixture("tiny.pth")).unwrap();
    let url = serve(body.clone(), body.len(), body.len() / 3);
    let err = assert_clean_failure(&allscan(home.path(), &["weights", "fetch", "densenet169", "--base-url", &url]));
    assert!(err.contains("download of"), "{err}");
    let left = std::fs::read_dir(home.path().join("weights")).unwrap().count();
    assert_eq!(left, 0);
}

#[test]
fn offline_fetch_says_where_to_put_the_file() {
    let home = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/models");
    let err = assert_clean_failure(&allscan(home.path(), &["weights", "fetch", "densenet201", "--base-url", &url]));
    let expected = home.path().join("weights").join("densenet201-c1103571.pth");
    assert!(err.contains(&expected.display().to_string()), "{err}");
    assert!(err.contains("allscan weights import"), "{err}");
}

#[test]
fn unknown_variant_is_rejected_by_the_parser() {
    let home = tempfile::tempdir().unwrap();
    let o = allscan(home.path(), &["weights", "fetch", "densenet999"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("densenet121, densenet169 or densenet201"));
}
