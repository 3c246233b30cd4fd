//! `allscan demo-data` end to end: writes an Aria-layout set that `allscan data inspect`
//! reads back whole (no unreadable files, no near-duplicates), reproducibly, and refuses to
//! write over a folder it did not write with the same settings.

use crate::common;

use std::path::Path;

use common::{allscan, stderr, stdout};

fn pngs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn demo_data_writes_a_reproducible_aria_set() {
    let tmp = tempfile::tempdir().unwrap();
    let out = allscan(tmp.path(), &["demo-data", "set", "--n", "6", "--seed", "5", "--size", "96"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("wrote 24 synthetic 96x96 fields"), "stdout: {said}");

    for class in ["Benign", "Early", "Pre", "Pro"] {
        let dir = tmp.path().join("set/Original").join(class);
        let names = pngs(&dir);
        let want: Vec<String> = (1..=6).map(|i| format!("SYN-{class}-{i:03}.png")).collect();
        assert_eq!(names, want, "files in {}", dir.display());
        let img = image::open(dir.join(&want[0])).unwrap();
        assert_eq!((img.width(), img.height()), (96, 96));
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("set/synth.json")).unwrap()).unwrap();
    assert_eq!(manifest["config"]["seed"], 5);

    // The dataset layer sees an Aria set of 24 distinct, readable images.
    let out = allscan(tmp.path(), &["data", "inspect", "set", "--json"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["images"], 24, "{report}");
    assert_eq!(report["unreadable"], 0, "{report}");
    assert_eq!(report["near_duplicates"].as_array().map(|a| a.len()), Some(0), "{report}");

    // Same settings elsewhere: byte-identical; rerun in place: allowed.
    let again = allscan(tmp.path(), &["demo-data", "copy", "--n", "6", "--seed", "5", "--size", "96"]);
    assert!(again.status.success(), "stderr: {}", stderr(&again));
    let rel = "Original/Pre/SYN-Pre-004.png";
    let a = std::fs::read(tmp.path().join("set").join(rel)).unwrap();
    assert_eq!(a, std::fs::read(tmp.path().join("copy").join(rel)).unwrap());
    let rerun = allscan(tmp.path(), &["demo-data", "set", "--n", "6", "--seed", "5", "--size", "96"]);
    assert!(rerun.status.success(), "stderr: {}", stderr(&rerun));

    // Other settings over an existing set: refused with the folder and the old settings named.
    let clash = allscan(tmp.path(), &["demo-data", "set", "--n", "6", "--seed", "6", "--size", "96"]);
    assert!(!clash.status.success());
    let err = stderr(&clash);
    assert!(err.contains("Original") && err.contains("--seed 5"), "stderr: {err}");
    assert_eq!(a, std::fs::read(tmp.path().join("set").join(rel)).unwrap(), "refused run changed a file");
}

#[test]
fn demo_data_rejects_bad_settings_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = allscan(tmp.path(), &["demo-data", "set", "--n", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at least 1"), "stderr: {}", stderr(&out));
    let out = allscan(tmp.path(), &["demo-data", "set", "--size", "8"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("field size 8"), "stderr: {}", stderr(&out));
    assert!(!tmp.path().join("set").exists());

    // A folder of someone else's images is left alone.
    std::fs::create_dir_all(tmp.path().join("theirs/Original/Benign")).unwrap();
    std::fs::write(tmp.path().join("theirs/Original/Benign/a.png"), b"not ours").unwrap();
    let out = allscan(tmp.path(), &["demo-data", "theirs", "--n", "2", "--size", "64"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("synth.json"), "stderr: {}", stderr(&out));
    assert_eq!(pngs(&tmp.path().join("theirs/Original/Benign")), vec!["a.png".to_string()]);
}
