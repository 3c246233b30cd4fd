//! `allscan explain` writes one overlay per field and one per nucleus crop.

use crate::common;

use allscan::config::TaskKind;
use common::{allscan, stderr, stdout};

#[test]
fn writes_field_and_crop_overlays() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    allscan::bundle::testing::write_random_bundle(&run, TaskKind::Binary).unwrap();
    let f = allscan::synth::render_field(2, 128, &mut allscan::synth::field_rng(4, 2, 0));
    let img = tmp.path().join("field.png");
    f.image.save(&img).unwrap();
    let out = tmp.path().join("cams");
    let o =
        allscan(tmp.path(), &["explain", run.to_str().unwrap(), img.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let overlay = image::open(out.join("field.gradcam.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (128, 128));
    let crop = image::open(out.join("field.cell0.gradcam.png")).unwrap();
    assert_eq!((crop.width(), crop.height()), (64, 64));
    assert!(stdout(&o).contains("overlay(s) written"), "{}", stdout(&o));
}
