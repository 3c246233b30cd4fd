//! `allscan segment` end to end in a temp dir: synthetic fields with drawn nuclei, one field
//! without nuclei, one unreadable file; checks every output the command promises.

use std::path::Path;
use std::process::Command;

use image::{Rgb, RgbImage};

/// Runs the `allscan` binary with `args`; returns (success, stdout, stderr).
fn allscan(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_allscan")).args(args).output().expect("running allscan");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn field(nuclei: &[(i32, i32, i32)]) -> RgbImage {
    let mut img = RgbImage::from_pixel(224, 224, Rgb([235, 230, 240]));
    for &(cx, cy, r) in nuclei {
        for y in 0..224i32 {
            for x in 0..224i32 {
                if (x - cx).pow(2) + (y - cy).pow(2) <= r * r {
                    img.put_pixel(x as u32, y as u32, Rgb([100, 60, 170]));
                }
            }
        }
    }
    img
}

#[test]
fn segment_writes_masks_crops_csv_and_sheet() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("Pro")).expect("mkdir");
    field(&[(60, 60, 20), (160, 150, 28)]).save(data.join("Pro/a.png")).expect("save");
    field(&[]).save(data.join("Pro/empty.png")).expect("save");
    std::fs::write(data.join("Pro/broken.jpg"), b"not a jpeg").expect("write");
    let out = tmp.path().join("out");
    for mode in ["nucleus", "aria-hsv"] {
        let dir = out.join(mode);
        let (ok, stdout, stderr) =
            allscan(&["segment", data.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--mode", mode, "--sheet"]);
        // The other fields are segmented, but a skipped file makes the exit code 1.
        assert!(!ok, "{mode}: {stdout}\n{stderr}");
        assert!(stderr.contains("broken.jpg"), "the unreadable file is reported: {stderr}");
        assert!(stdout.contains("1 unreadable"), "{stdout}");
        for rel in [
            "masks/Pro/a.png.png",
            "segmented/Pro/a.png.png",
            "crops/Pro/a.png/0.png",
            "crops/Pro/a.png/1.png",
            "masks/Pro/empty.png.png",
            "sheet.png",
            "config.json",
        ] {
            assert!(dir.join(rel).is_file(), "{mode}: missing {rel}");
        }
        let mask = image::open(dir.join("masks/Pro/a.png.png")).expect("mask").to_luma8();
        assert_eq!(mask.get_pixel(160, 150)[0], 255);
        assert_eq!(mask.get_pixel(5, 5)[0], 0);
        let crop = image::open(dir.join("crops/Pro/a.png/0.png")).expect("crop");
        assert_eq!((crop.width(), crop.height()), (224, 224));
        let csv = std::fs::read_to_string(dir.join("nuclei.csv")).expect("csv");
        let rows: Vec<&str> = csv.lines().collect();
        assert!(rows[0].starts_with("path,status,nucleus,x,y,width,height,area"));
        assert!(rows.iter().any(|r| r.starts_with("Pro/empty.png,no nucleus found")), "{csv}");
        assert!(rows.iter().any(|r| r.starts_with("Pro/broken.jpg,error:")), "{csv}");
        // The largest nucleus comes first: the r = 28 disc, box 57 px wide give or take 2.
        let first: Vec<&str> =
            rows.iter().find(|r| r.starts_with("Pro/a.png,ok,0,")).expect("row").split(',').collect();
        let width: i64 = first[5].parse().expect("width");
        assert!((width - 57).abs() <= 2, "{first:?}");
        assert!(Path::new(&dir.join(first[10])).is_file());
    }
}

#[test]
fn a_single_unreadable_file_is_an_error() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"").expect("write");
    let (ok, _, stderr) = allscan(&["segment", bad.to_str().unwrap(), "--out", tmp.path().join("o").to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("bad.png"), "{stderr}");
}

#[test]
fn cell_mode_writes_nucleus_and_cytoplasm_masks_and_the_scale() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    field(&[(60, 60, 20), (160, 150, 28)]).save(data.join("a.png")).expect("save");
    field(&[]).save(data.join("empty.png")).expect("save");
    let dir = tmp.path().join("out");
    let (ok, stdout, stderr) =
        allscan(&["segment", data.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--mode", "cell", "--sheet"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("cell mode"), "{stdout}");
    let csv = std::fs::read_to_string(dir.join("cells.csv")).expect("cells.csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("path,status,um_per_px,scale_source"), "{csv}");
    assert!(rows.iter().any(|r| r.starts_with("empty.png,no white cell found")), "{csv}");
    let cells: Vec<&&str> = rows.iter().filter(|r| r.starts_with("a.png,ok,")).collect();
    assert!(!cells.is_empty(), "{csv}");
    let mask = image::open(dir.join("masks/a.png.png")).expect("mask").to_luma8();
    assert_eq!(mask.get_pixel(160, 150)[0], 255, "nucleus");
    assert!(mask.pixels().all(|p| [0, 128, 255].contains(&p[0])), "three levels only");
    assert!(dir.join("sheet.png").is_file());
}

/// Issue 18: `a/x.jpg` and `a/x.png` used to write the same `masks/a/x.png` and `crops/a/x/N.png`,
/// and `nuclei.csv` then pointed at the other field's crops.
#[test]
fn fields_differing_only_by_extension_get_their_own_outputs() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("a")).expect("mkdir");
    // Two nuclei in the JPEG, one (at another place) in the PNG.
    field(&[(60, 60, 20), (160, 150, 28)]).save(data.join("a/x.jpg")).expect("save jpg");
    field(&[(170, 50, 24)]).save(data.join("a/x.png")).expect("save png");
    for (mode, csv_name) in [("nucleus", "nuclei.csv"), ("aria-hsv", "nuclei.csv"), ("cell", "cells.csv")] {
        let dir = tmp.path().join(mode);
        let (ok, stdout, stderr) =
            allscan(&["segment", data.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--mode", mode]);
        assert!(ok, "{mode}: {stdout}\n{stderr}");
        for src in ["x.jpg", "x.png"] {
            assert!(dir.join(format!("masks/a/{src}.png")).is_file(), "{mode}: no mask for {src}");
            if mode != "cell" {
                assert!(dir.join(format!("segmented/a/{src}.png")).is_file(), "{mode}: no segmented {src}");
            }
        }
        // Each mask is its own field's: the PNG's nucleus at (170, 50), the JPEG's at (160, 150).
        let jpg_mask = image::open(dir.join("masks/a/x.jpg.png")).expect("mask").to_luma8();
        let png_mask = image::open(dir.join("masks/a/x.png.png")).expect("mask").to_luma8();
        assert_eq!((jpg_mask.get_pixel(160, 150)[0], jpg_mask.get_pixel(170, 50)[0]), (255, 0), "{mode}");
        assert_eq!((png_mask.get_pixel(170, 50)[0], png_mask.get_pixel(160, 150)[0]), (255, 0), "{mode}");
        let csv = std::fs::read_to_string(dir.join(csv_name)).expect("csv");
        let crops_of = |src: &str| -> Vec<String> {
            csv.lines()
                .filter(|r| r.starts_with(&format!("a/{src},ok,")))
                .map(|r| r.rsplit(',').next().unwrap_or_default().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        };
        let (jpg, png) = (crops_of("x.jpg"), crops_of("x.png"));
        assert!(!jpg.is_empty() && !png.is_empty(), "{mode}: {csv}");
        for c in &jpg {
            assert!(c.starts_with("crops/a/x.jpg/") && dir.join(c).is_file(), "{mode}: {c}\n{csv}");
            assert!(!png.contains(c), "{mode}: both fields point at {c}");
        }
        for c in &png {
            assert!(c.starts_with("crops/a/x.png/") && dir.join(c).is_file(), "{mode}: {c}\n{csv}");
        }
    }
}

/// A link loop the walker passes over is a skipped file: named in nuclei.csv, exit code 1 (as
/// in `predict`).
#[cfg(unix)]
#[test]
fn a_skipped_link_loop_is_listed_and_fails_the_exit_code() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    field(&[(60, 60, 20)]).save(data.join("a.png")).expect("save");
    std::os::unix::fs::symlink(".", data.join("loop")).expect("symlink");
    let dir = tmp.path().join("out");
    let (ok, stdout, stderr) = allscan(&["segment", data.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("loop"), "{stderr}");
    let csv = std::fs::read_to_string(dir.join("nuclei.csv")).expect("csv");
    assert!(csv.lines().any(|r| r.starts_with("loop,error: symbolic link loop")), "{csv}");
    assert_eq!(csv.lines().filter(|r| r.starts_with("a.png,ok,")).count(), 1, "a.png segmented once: {csv}");
    assert!(stdout.contains("1 unreadable"), "{stdout}");
}
