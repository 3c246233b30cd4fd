//! Tests of the slide stage: counts, reviews, JSON, HTML and Grad-CAM selection.

use allscan_preprocess::{BBox, CellFlag};

use super::counts::cell_box;
use super::*;
use crate::predictions::fixtures::{cell, field};

/// Two fields: 0.9 blast, 0.7 blast, 0.2, 0.1, a small 0.95 (excluded); then an empty one.
fn report() -> SlideReport {
    let a = field(0.9, vec![cell(0.9, vec![]), cell(0.2, vec![]), cell(0.95, vec![CellFlag::Small])]);
    let b = field(0.9, vec![cell(0.1, vec![CellFlag::TouchesBorder]), cell(0.7, vec![])]);
    let c = field(0.9, Vec::new());
    SlideReport::new(
        vec![("a.png".into(), a), ("b.png".into(), b), ("c.png".into(), c)],
        SlideRule::new(0.2, 0.5).unwrap(),
        Vec::new(),
    )
}

#[test]
fn counts_follow_the_model_and_the_flags() {
    let r = report();
    let k = &r.counts;
    assert_eq!((k.fields, k.fields_without_cells, k.cells_found), (3, 1, 5));
    assert_eq!((k.white_cells, k.blasts, k.excluded), (4, 2, 1));
    assert_eq!(k.blast_fraction, 0.5);
    assert_eq!(k.blast_fraction_ci95, wilson95(2, 4));
    assert!(k.blast_fraction_ci95[0] < 0.5 && k.blast_fraction_ci95[1] > 0.5);
    assert_eq!(r.call, SlideCall::Flagged);
    assert_eq!(r.decisive_cells, vec!["f0-c0".to_string(), "f1-c1".to_string()]);
    assert_eq!((r.fields[0].white_cells, r.fields[0].blasts), (2, 1));
    assert_eq!(r.cell("f0-c2").unwrap().status, CellStatus::Excluded);
    assert_eq!(r.by_suspicion()[0].id, "f0-c2");
}

#[test]
fn corrections_update_the_counts() {
    let mut r = report();
    r.apply(&Review::new().with("f0-c0", ReviewLabel::NotBlast).with("f1-c1", ReviewLabel::NotBlast)).unwrap();
    assert_eq!((r.counts.white_cells, r.counts.blasts, r.counts.reviewed), (4, 0, 2));
    assert_eq!(r.call, SlideCall::NotFlagged);
    assert!(r.decisive_cells.is_empty());
    // A reviewed small cell counts: the reviewer, not the finder, has the last word.
    r.apply(&Review::new().with("f0-c2", ReviewLabel::Blast)).unwrap();
    assert_eq!((r.counts.white_cells, r.counts.blasts, r.counts.excluded), (5, 1, 0));
    assert_eq!(r.counts.blast_fraction, 0.2);
    assert_eq!(r.call, SlideCall::Flagged, "0.2 is at the level");
    assert_eq!(r.review().labels.len(), 3);
}

#[test]
fn not_a_cell_leaves_the_count_and_unsure_is_counted_apart() {
    let mut r = report();
    r.apply(&Review::new().with("f0-c0", ReviewLabel::NotACell).with("f0-c1", ReviewLabel::Unsure)).unwrap();
    let k = &r.counts;
    assert_eq!((k.white_cells, k.blasts, k.not_a_cell, k.unsure), (2, 1, 1, 1));
    assert_eq!(k.cells_found, 5, "reviewed cells stay listed");
    assert_eq!(r.cell("f0-c0").unwrap().status, CellStatus::NotACell);
    assert_eq!((r.fields[0].white_cells, r.fields[0].blasts), (0, 0));
    // Relabelling replaces the earlier label.
    r.apply(&Review::new().with("f0-c0", ReviewLabel::Blast)).unwrap();
    assert_eq!((r.counts.white_cells, r.counts.blasts, r.counts.not_a_cell), (3, 2, 0));
}

#[test]
fn bad_reviews_and_levels_are_errors() {
    let mut r = report();
    let before = r.clone();
    assert!(matches!(r.apply(&Review::new().with("f9-c0", ReviewLabel::Blast)), Err(SlideError::UnknownCell(_))));
    let mut other = Review::new();
    other.format = "something/2".into();
    assert!(matches!(r.apply(&other), Err(SlideError::Format { .. })));
    assert_eq!(r, before);
    assert!(SlideRule::new(0.0, 0.5).is_err() && SlideRule::new(1.5, 0.5).is_err());
    assert!(SlideRule::new(f64::NAN, 0.5).is_err());
}

#[test]
fn json_round_trips_and_ids_offset() {
    let r = report();
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["fields"][0]["cells"][0]["box"]["width"], 30);
    assert_eq!(j["fields"][0]["cells"][0]["status"], "blast");
    assert_eq!(j["call"], "flagged");
    let back: SlideReport = serde_json::from_value(j).unwrap();
    assert_eq!(back, r);
    let part = SlideReport::with_first_field(
        vec![("x.png".into(), field(0.9, vec![cell(0.3, vec![])]))],
        SlideRule::new(0.2, 0.5).unwrap(),
        Vec::new(),
        7,
    );
    assert_eq!(part.fields[0].cells[0].id, "f7-c0");
    assert_eq!(part.fields[0].cells[0].field, 7);
}

#[test]
fn html_shows_the_report_figures_and_escapes_names() {
    let mut r = report();
    r.fields[1].name = "<b>&.png".into();
    let mut images = SlideImages::default();
    let img = image::RgbImage::from_pixel(200, 100, image::Rgb([200, 100, 150]));
    let f0 = r.fields[0].clone();
    images.add_field(0, &f0, &img);
    assert_eq!(images.cells.len(), 3);
    let h = render_html(&r, &images, "slide");
    assert!(h.contains("<td data-k=white_cells>4</td>") && h.contains("<td data-k=blast_fraction>50.0%</td>"));
    assert!(h.contains("&lt;b&gt;&amp;.png") && !h.contains("<b>&.png"));
    assert_eq!(h.matches("<figure class=\"cell").count(), 5);
    assert_eq!(h.matches("data:image/jpeg;base64,").count(), 4);
    assert!(h.contains("data-v=\"flagged\""));
}

#[test]
fn gradcam_goes_to_the_decisive_cells_first_and_shows_in_the_html() {
    let mut r = report();
    let ids = |v: Vec<&SlideCell>| v.into_iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    // Decisive: f0-c0 (0.9), f1-c1 (0.7); then by suspicion the excluded 0.95 and 0.2.
    assert_eq!(ids(r.gradcam_cells(1)), ["f0-c0"]);
    assert_eq!(ids(r.gradcam_cells(3)), ["f0-c0", "f1-c1", "f0-c2"]);
    assert_eq!(r.gradcam_cells(99).len(), 5);
    assert!(r.gradcam_cells(0).is_empty());
    r.cell_mut("f1-c1").unwrap().gradcam = Some("gradcam/f1-c1.png".into());
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["fields"][1]["cells"][1]["gradcam"], "gradcam/f1-c1.png");
    assert!(j["fields"][1]["cells"][0].get("gradcam").is_none());
    let mut images = SlideImages::default();
    images.gradcam.insert("f1-c1".into(), png_data_url(b"\x89PNG"));
    let h = render_html(&r, &images, "slide");
    assert_eq!(h.matches("data-gradcam=").count(), 1);
    assert!(h.contains("data-gradcam=\"f1-c1\"><img alt=\"\" src=\"data:image/png;base64,iVBORw==\">"));
    assert!(!render_html(&report(), &images, "slide").contains("data-gradcam="));
}

#[test]
fn crops_without_cell_or_nucleus_boxes_are_clipped_to_the_field() {
    let mut c = cell(0.3, vec![]);
    c.cell = None;
    c.nucleus = None;
    assert_eq!(cell_box(&c, 20, 30), BBox { x: 0, y: 10, width: 20, height: 20 });
}
