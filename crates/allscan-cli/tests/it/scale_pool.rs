//! `allscan predict` on a folder of single-cell crops on black (no red cells, C-NMC style):
//! the files of one call share one pooled scale, so cells keep their relative sizes;
//! `--per-image-scale` gives each crop its own assumed scale instead; a slide report pools the
//! same way.

use crate::common;

use std::path::Path;

use allscan::config::TaskKind;
use common::{allscan, stderr, stdout};
use image::{Rgb, RgbImage};

fn disc(img: &mut RgbImage, r: f32, c: [u8; 3]) {
    let (cx, cy) = (img.width() as f32 / 2.0, img.height() as f32 / 2.0);
    for (x, y, p) in img.enumerate_pixels_mut() {
        if (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) <= r * r {
            *p = Rgb(c);
        }
    }
}

/// Twelve 300 px crops on black from one microscope: eight small cells and four large ones.
fn crops(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..12 {
        let r = if k < 8 { 60.0 } else { 100.0 };
        let mut img = RgbImage::new(300, 300);
        disc(&mut img, r, [185, 190, 225]);
        disc(&mut img, 0.8 * r, [105, 55, 150]);
        img.save(dir.join(format!("cell{k:02}.png"))).unwrap();
    }
}

/// `(scale_source, um_per_px)` of every field row of `predict --format csv`.
fn scales(csv: &str) -> Vec<(String, f32)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name} in {header:?}"));
    let (source, um) = (col("scale_source"), col("um_per_px"));
    lines.map(|l| l.split(',').collect::<Vec<_>>()).map(|f| (f[source].to_string(), f[um].parse().unwrap())).collect()
}

#[test]
fn crops_of_one_call_share_the_pooled_scale_and_per_image_scale_turns_it_off() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = allscan::bundle::testing::BundleFixture::new(TaskKind::Binary);
    b.config.preprocess.mode = allscan_preprocess::SegmentMode::Cell;
    b.write(&tmp.path().join("run")).unwrap();
    crops(&tmp.path().join("cells"));

    let pooled = allscan(tmp.path(), &["predict", "run", "cells", "--format", "csv"]);
    assert!(pooled.status.success(), "{}", stderr(&pooled));
    let pooled = scales(&stdout(&pooled));
    assert_eq!(pooled.len(), 12);
    assert!(pooled.iter().all(|(s, u)| s == "pooled" && *u == pooled[0].1), "{pooled:?}");
    // The median crop is a small cell (120 px): taken to be 11 um wide.
    assert!((pooled[0].1 - 11.0 / 120.0).abs() / (11.0 / 120.0) < 0.1, "{pooled:?}");

    let own = allscan(tmp.path(), &["predict", "run", "cells", "--format", "csv", "--per-image-scale"]);
    assert!(own.status.success(), "{}", stderr(&own));
    let own = scales(&stdout(&own));
    assert!(own.iter().all(|(s, _)| s == "assumed"), "{own:?}");
    // Alone, each crop's cell is 11 um: the large cells get a scale 120 / 200 of the small ones'.
    let ratio = own[11].1 / own[0].1;
    assert!((ratio - 0.6).abs() < 0.06, "{own:?}");

    // A slide report's fields are one set too, whatever its --batch.
    let report = allscan(tmp.path(), &["report", "run", "cells", "--out", "slide", "--batch", "3"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("slide/slide.json")).unwrap()).unwrap();
    let fields = j["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 12);
    for f in fields {
        assert_eq!(f["scale_source"], "pooled", "{f}");
        assert!((f["um_per_px"].as_f64().unwrap() as f32 - pooled[0].1).abs() < 1e-3, "{f}");
    }

    // Another camera (another image size) in the same call pools on its own: ten 200 px crops
    // of one 80 px cell keep 11 / 80 um/px while the 300 px ones keep theirs.
    std::fs::create_dir_all(tmp.path().join("other")).unwrap();
    for k in 0..10 {
        let mut img = RgbImage::new(200, 200);
        disc(&mut img, 40.0, [185, 190, 225]);
        disc(&mut img, 32.0, [105, 55, 150]);
        img.save(tmp.path().join(format!("other/o{k:02}.png"))).unwrap();
    }
    let both = allscan(tmp.path(), &["predict", "run", "cells", "other", "--format", "csv"]);
    assert!(both.status.success(), "{}", stderr(&both));
    let both = scales(&stdout(&both));
    assert_eq!(both.len(), 22);
    assert!(both[..12].iter().all(|(s, u)| s == "pooled" && *u == pooled[0].1), "{both:?}");
    assert!(both[12..].iter().all(|(s, u)| s == "pooled" && (u - 11.0 / 80.0).abs() < 0.015), "{both:?}");

    // One image alone has no set to pool with.
    let one = allscan(tmp.path(), &["predict", "run", "cells/cell11.png", "--format", "csv"]);
    assert_eq!(scales(&stdout(&one))[0].0, "assumed");
}

/// `segment --mode cell` is the same set as `predict`: its cells.csv, masks and crops use the
/// pooled scale predict scores with; `--per-image-scale` and `--um-per-px` as in predict.
#[test]
fn segment_in_cell_mode_pools_the_scale_as_predict_does() {
    let tmp = tempfile::tempdir().unwrap();
    crops(&tmp.path().join("cells"));
    let table = |extra: &[&str]| {
        let out = tmp.path().join(format!("seg{}", extra.len()));
        let mut args = vec!["segment", "cells", "--out", out.to_str().unwrap(), "--mode", "cell"];
        args.extend_from_slice(extra);
        let o = allscan(tmp.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        // Every crop holds one cell: one row per file.
        let rows = scales(&std::fs::read_to_string(out.join("cells.csv")).unwrap());
        assert_eq!(rows.len(), 12, "{rows:?}");
        rows
    };
    let pooled = table(&[]);
    assert!(pooled.iter().all(|(s, u)| s == "pooled" && *u == pooled[0].1), "{pooled:?}");
    assert!((pooled[0].1 - 11.0 / 120.0).abs() / (11.0 / 120.0) < 0.1, "{pooled:?}");
    let own = table(&["--per-image-scale"]);
    assert!(own.iter().all(|(s, _)| s == "assumed"), "{own:?}");
    assert!((own[11].1 / own[0].1 - 0.6).abs() < 0.06, "{own:?}");
    let given = table(&["--um-per-px", "0.1"]);
    assert!(given.iter().all(|(s, u)| s == "given" && (*u - 0.1).abs() < 1e-4), "{given:?}");
}
