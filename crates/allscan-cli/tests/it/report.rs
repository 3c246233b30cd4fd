//! `allscan report` end to end on a tiny random-weight cell-mode bundle and a few synthetic
//! smear fields: slide.json and slide.html are written (atomically), every figure of the HTML
//! equals the JSON, corrections recount, and bad input is refused or listed.

use crate::common;

use std::path::Path;

use allscan::config::TaskKind;
use common::{allscan, stderr, stdout};
use serde_json::Value;

/// A random-weight bundle in `cell` mode (whole white cells at a physical scale).
fn cell_bundle(dir: &Path) {
    let mut b = allscan::bundle::testing::BundleFixture::new(TaskKind::Binary);
    b.config.preprocess.mode = allscan_preprocess::SegmentMode::Cell;
    b.write(dir).unwrap();
}

/// A `w` x `h` smear field tiled from synthetic 160-pixel fields (one white cell each).
fn smear_field(w: u32, h: u32, seed: u64) -> image::RgbImage {
    let mut out = image::RgbImage::new(w, h);
    let tile = 160;
    for (k, (ty, tx)) in (0..h.div_ceil(tile)).flat_map(|y| (0..w.div_ceil(tile)).map(move |x| (y, x))).enumerate() {
        let f = allscan::synth::render_field(k % 4, tile, &mut allscan::synth::field_rng(seed, k % 4, k));
        image::imageops::replace(&mut out, &f.image, i64::from(tx * tile), i64::from(ty * tile));
    }
    out
}

/// `(key, text)` of every `data-k=KEY>TEXT<` element of the HTML.
fn figures(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in html.split("data-k=").skip(1) {
        let (key, rest) = if let Some(q) = part.strip_prefix('"') {
            let end = q.find('"').unwrap();
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = part.find([' ', '>']).unwrap();
            (part[..end].to_string(), &part[end..])
        };
        let text = &rest[rest.find('>').unwrap() + 1..];
        out.push((key, text[..text.find('<').unwrap()].to_string()));
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Asserts that every figure of the HTML is the JSON's.
fn assert_html_matches_json(html: &str, j: &Value) {
    let figs = figures(html);
    let get = |k: &str| figs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{k}"));
    let c = &j["counts"];
    for k in [
        "fields",
        "fields_without_cells",
        "cells_found",
        "white_cells",
        "blasts",
        "excluded",
        "not_a_cell",
        "unsure",
        "reviewed",
    ] {
        assert_eq!(get(k), c[k].as_u64().unwrap().to_string(), "{k}");
    }
    assert_eq!(get("blast_fraction"), pct(c["blast_fraction"].as_f64().unwrap()));
    let ci = c["blast_fraction_ci95"].as_array().unwrap();
    assert_eq!(
        get("blast_fraction_ci95"),
        format!("{} to {}", pct(ci[0].as_f64().unwrap()), pct(ci[1].as_f64().unwrap()))
    );
    assert_eq!(get("level"), pct(j["rule"]["blast_fraction"].as_f64().unwrap()));
    assert!(html.contains(&format!("data-v=\"{}\"", j["call"].as_str().unwrap())));
    let cells: Vec<&Value> =
        j["fields"].as_array().unwrap().iter().flat_map(|f| f["cells"].as_array().unwrap()).collect();
    for status in ["blast", "not_blast", "unsure", "not_a_cell", "excluded"] {
        let n = cells.iter().filter(|c| c["status"] == status).count();
        assert_eq!(get(&format!("group-{status}")), n.to_string(), "{status}");
    }
    for (i, f) in j["fields"].as_array().unwrap().iter().enumerate() {
        assert_eq!(get(&format!("field-{i}-white_cells")), f["white_cells"].to_string());
        assert_eq!(get(&format!("field-{i}-blasts")), f["blasts"].to_string());
    }
    // Every cell once in the gallery with its p, and once boxed on its field.
    for c in &cells {
        let id = c["id"].as_str().unwrap();
        let fig = format!("data-id=\"{id}\" data-p=\"{:.4}\"", c["p_blast"].as_f64().unwrap());
        assert_eq!(html.matches(&fig).count(), 1, "{fig}");
        assert!(html.contains(&format!("<rect class={} data-id=\"{id}\"", c["status"].as_str().unwrap())), "{id}");
    }
    assert_eq!(html.matches("<rect ").count(), cells.len());
    assert_eq!(html.matches("<figure class=\"cell").count(), cells.len());
}

#[test]
fn reports_a_slide_whose_html_equals_its_json_and_recounts_with_corrections() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    cell_bundle(&run);
    let slide = tmp.path().join("slide");
    std::fs::create_dir_all(slide.join("more")).unwrap();
    smear_field(480, 320, 1).save(slide.join("a.png")).unwrap();
    smear_field(320, 320, 2).save(slide.join("b.jpg")).unwrap();
    smear_field(480, 320, 3).save(slide.join("more/c.png")).unwrap();
    std::fs::write(slide.join("broken.png"), b"not a png").unwrap();
    let out = tmp.path().join("out");
    let (r, s, o) = (run.to_str().unwrap(), slide.to_str().unwrap(), out.to_str().unwrap());

    let res = allscan(tmp.path(), &["report", r, s, "--out", o, "--batch", "2"]);
    assert_eq!(res.status.code(), Some(1), "a broken field fails the exit code: {}", stderr(&res));
    assert!(stderr(&res).contains("broken.png"), "{}", stderr(&res));
    assert!(stdout(&res).contains("white cell"), "{}", stdout(&res));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(out.join("slide.json")).unwrap()).unwrap();
    let html = std::fs::read_to_string(out.join("slide.html")).unwrap();
    assert_eq!(j["format"], "allscan-slide/1");
    assert_eq!(j["counts"]["fields"], 3);
    assert_eq!(j["failed"][0]["name"], "broken.png");
    let names: Vec<&str> = j["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.png", "b.jpg", "more/c.png"], "names relative to the slide, no machine path");
    assert!(!std::fs::read_to_string(out.join("slide.json")).unwrap().contains(tmp.path().to_str().unwrap()));
    assert!(j["counts"]["cells_found"].as_u64().unwrap() >= 3, "{}", j["counts"]);
    assert!(j["fields"][0]["um_per_px"].as_f64().is_some(), "cell mode reports a scale");
    assert!(j["rule"]["who_note"].as_str().unwrap().contains("20%"));
    assert_html_matches_json(&html, &j);
    // Self-contained: thumbnails and crops inline, nothing fetched.
    assert_eq!(
        html.matches("<img alt=\"\" src=\"data:image/jpeg;base64,").count(),
        3 + j["counts"]["cells_found"].as_u64().unwrap() as usize
    );
    assert!(!html.contains("src=\"http") && !html.contains("src=\"/"));
    let left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 2, "no temporary files left: {left:?}");

    // Corrections: the most suspicious cell is not a cell, the next one a blast, one unsure.
    let mut cells: Vec<&Value> =
        j["fields"].as_array().unwrap().iter().flat_map(|f| f["cells"].as_array().unwrap()).collect();
    cells.sort_by(|a, b| b["p_blast"].as_f64().unwrap().total_cmp(&a["p_blast"].as_f64().unwrap()));
    assert!(cells.len() >= 3);
    let counted = |c: &Value| c["status"] == "blast" || c["status"] == "not_blast";
    let (w0, b0) = (j["counts"]["white_cells"].as_i64().unwrap(), j["counts"]["blasts"].as_i64().unwrap());
    let (dw, db) = (
        -(counted(cells[0]) as i64) + (!counted(cells[1])) as i64 - counted(cells[2]) as i64,
        -((cells[0]["status"] == "blast") as i64) + (cells[1]["status"] != "blast") as i64
            - (cells[2]["status"] == "blast") as i64,
    );
    let review = serde_json::json!({ "format": "allscan-review/1", "labels": {
        cells[0]["id"].as_str().unwrap(): "not_a_cell",
        cells[1]["id"].as_str().unwrap(): "blast",
        cells[2]["id"].as_str().unwrap(): "unsure",
    }});
    let rp = tmp.path().join("review.json");
    std::fs::write(&rp, review.to_string()).unwrap();
    std::fs::remove_file(slide.join("broken.png")).unwrap();
    let res = allscan(tmp.path(), &["report", r, s, "--out", o, "--review", rp.to_str().unwrap()]);
    assert!(res.status.success(), "{}", stderr(&res));
    let j2: Value = serde_json::from_str(&std::fs::read_to_string(out.join("slide.json")).unwrap()).unwrap();
    let html2 = std::fs::read_to_string(out.join("slide.html")).unwrap();
    let k = &j2["counts"];
    assert_eq!(k["white_cells"].as_i64().unwrap(), w0 + dw, "{k}");
    assert_eq!(k["blasts"].as_i64().unwrap(), b0 + db, "{k}");
    assert_eq!((k["not_a_cell"].as_u64(), k["unsure"].as_u64(), k["reviewed"].as_u64()), (Some(1), Some(1), Some(3)));
    assert_html_matches_json(&html2, &j2);
    // The reviewed slide is itself a review source.
    let back = tmp.path().join("back");
    let res = allscan(
        tmp.path(),
        &["report", r, s, "--out", back.to_str().unwrap(), "--review", out.join("slide.json").to_str().unwrap()],
    );
    assert!(res.status.success(), "{}", stderr(&res));
    let j3: Value = serde_json::from_str(&std::fs::read_to_string(back.join("slide.json")).unwrap()).unwrap();
    assert_eq!(j3["counts"], j2["counts"]);
    // Review feeds training: the reviewed cells as a class-folder dataset.
    let ds = tmp.path().join("reviewed");
    let slide_json = out.join("slide.json");
    let res =
        allscan(tmp.path(), &["data", "from-review", slide_json.to_str().unwrap(), s, "--out", ds.to_str().unwrap()]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(stdout(&res).contains("1 blast and 0 normal reviewed cells (2 other reviews"), "{}", stdout(&res));
    let written: Vec<_> = std::fs::read_dir(ds.join("blast")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(written.len(), 1);
    let crop = image::open(&written[0]).unwrap();
    assert_eq!(crop.width(), crop.height(), "a square window");
    let res = allscan(tmp.path(), &["data", "inspect", ds.to_str().unwrap(), "--json"]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(stdout(&res).contains("leukemia"), "blast/ reads as leukemia: {}", stdout(&res));
}

#[test]
fn bad_settings_and_empty_slides_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    cell_bundle(&run);
    let slide = tmp.path().join("slide");
    std::fs::create_dir_all(&slide).unwrap();
    let (r, s) = (run.to_str().unwrap(), slide.to_str().unwrap());
    let res = allscan(tmp.path(), &["report", r, s, "--out", "o"]);
    assert!(!res.status.success() && stderr(&res).contains("no image file"), "{}", stderr(&res));
    smear_field(160, 160, 4).save(slide.join("a.png")).unwrap();
    let res = allscan(tmp.path(), &["report", r, s, "--out", "o", "--blast-fraction", "0"]);
    assert!(!res.status.success() && stderr(&res).contains("(0, 1]"), "{}", stderr(&res));
    std::fs::write(tmp.path().join("rev.json"), r#"{"format":"allscan-review/1","labels":{"f5-c0":"blast"}}"#).unwrap();
    let res = allscan(tmp.path(), &["report", r, s, "--out", "o", "--review", "rev.json"]);
    assert!(!res.status.success() && stderr(&res).contains("f5-c0"), "{}", stderr(&res));
    assert!(!tmp.path().join("o/slide.json").exists(), "nothing written on a bad review");
}

#[test]
fn gradcam_overlays_of_the_telling_cells_are_written_and_referenced() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    cell_bundle(&run);
    let slide = tmp.path().join("slide");
    std::fs::create_dir_all(&slide).unwrap();
    smear_field(480, 320, 4).save(slide.join("a.png")).unwrap();
    smear_field(320, 320, 5).save(slide.join("b.png")).unwrap();
    let out = tmp.path().join("out");
    let (r, s, o) = (run.to_str().unwrap(), slide.to_str().unwrap(), out.to_str().unwrap());
    let res = allscan(tmp.path(), &["report", r, s, "--out", o, "--gradcam", "2"]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(stdout(&res).contains("wrote 2 Grad-CAM overlay(s)"), "{}", stdout(&res));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(out.join("slide.json")).unwrap()).unwrap();
    let html = std::fs::read_to_string(out.join("slide.html")).unwrap();
    assert_html_matches_json(&html, &j);
    let mut cells: Vec<&Value> =
        j["fields"].as_array().unwrap().iter().flat_map(|f| f["cells"].as_array().unwrap()).collect();
    let with: Vec<&Value> = cells.iter().copied().filter(|c| c.get("gradcam").is_some()).collect();
    assert_eq!(with.len(), 2);
    // The cells that drove the call come first, then the most suspicious others.
    cells.sort_by(|a, b| b["p_blast"].as_f64().unwrap().total_cmp(&a["p_blast"].as_f64().unwrap()));
    let decisive: Vec<&str> = j["decisive_cells"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut want: Vec<&str> = decisive.iter().copied().take(2).collect();
    for c in &cells {
        let id = c["id"].as_str().unwrap();
        if want.len() < 2 && !want.contains(&id) {
            want.push(id);
        }
    }
    let mut got: Vec<&str> = with.iter().map(|c| c["id"].as_str().unwrap()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for c in with {
        let id = c["id"].as_str().unwrap();
        let rel = c["gradcam"].as_str().unwrap();
        assert_eq!(rel, format!("gradcam/{id}.png"));
        let img = image::open(out.join(rel)).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (allscan::explain::CELL_OVERLAY_SIDE, allscan::explain::CELL_OVERLAY_SIDE)
        );
        assert!(html.contains(&format!("data-gradcam=\"{id}\"><img alt=\"\" src=\"data:image/png;base64,")), "{id}");
    }
    let left: Vec<_> = std::fs::read_dir(out.join("gradcam")).unwrap().collect();
    assert_eq!(left.len(), 2, "no temporary files left");
}
