//! `aria-hsv` parity with OpenCV: every 8-bit colour -> HSV and inRange mask, compared with
//! OpenCV's own results (hashes and samples in `fixtures/opencv_hsv.json`, written by
//! `scripts/opencv_hsv.py fixture`, so CI needs no OpenCV).

use allscan_preprocess::hsv::{
    aria_hsv_keeps, aria_hsv_keeps_reference, aria_hsv_mask, aria_hsv_segment, aria_in_range, opencv_rgb2hsv,
};
use image::RgbImage;
use sha2::{Digest, Sha256};

#[derive(serde::Deserialize)]
struct Fixture {
    opencv_version: String,
    cube_hsv_sha256: String,
    cube_mask_sha256: String,
    cube_mask_count: u64,
    samples: Vec<[u8; 7]>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/opencv_hsv.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn samples_match_opencv_exactly() {
    let fx = fixture();
    assert!(fx.samples.len() > 5000);
    for s in &fx.samples {
        let hsv = opencv_rgb2hsv(s[0], s[1], s[2]);
        assert_eq!(hsv, [s[3], s[4], s[5]], "colour {:?} (OpenCV {})", &s[..3], fx.opencv_version);
        assert_eq!(aria_in_range(hsv), s[6] == 1, "inRange of {:?}", &s[..3]);
        // The swap: channel 0 as OpenCV saw it is our blue.
        assert_eq!(aria_hsv_keeps([s[2], s[1], s[0]]), s[6] == 1);
        assert_eq!(aria_hsv_keeps_reference([s[2], s[1], s[0]]), s[6] == 1);
    }
}

#[test]
fn all_colours_match_opencv_exactly() {
    let fx = fixture();
    let mut hsv_hash = Sha256::new();
    let mut mask_hash = Sha256::new();
    let mut count = 0u64;
    let mut hsv_buf = Vec::with_capacity(3 * 65536);
    let mut mask_buf = Vec::with_capacity(65536);
    for hi in 0u32..256 {
        hsv_buf.clear();
        mask_buf.clear();
        for lo in 0u32..65536 {
            let i = hi << 16 | lo;
            let hsv = opencv_rgb2hsv((i >> 16) as u8, (i >> 8) as u8, i as u8);
            hsv_buf.extend_from_slice(&hsv);
            let kept = aria_in_range(hsv);
            count += kept as u64;
            mask_buf.push(kept as u8);
        }
        hsv_hash.update(&hsv_buf);
        mask_hash.update(&mask_buf);
    }
    assert_eq!(count, fx.cube_mask_count, "kept colours vs OpenCV {}", fx.opencv_version);
    assert_eq!(hex(&mask_hash.finalize()), fx.cube_mask_sha256, "inRange over all colours");
    assert_eq!(hex(&hsv_hash.finalize()), fx.cube_hsv_sha256, "HSV over all colours");
}

/// The fast path (the `KEPT_RED` table behind `aria_hsv_mask` and `aria_hsv_segment`) against
/// OpenCV's mask on every colour, fed as the fields are: true RGB, so OpenCV's channel 0 (its
/// "R", the fixture's c0) is our blue.
#[test]
fn all_colours_fast_mask_matches_opencv_exactly() {
    let fx = fixture();
    let mut mask_hash = Sha256::new();
    let mut count = 0u64;
    for hi in 0u32..256 {
        let mut row = Vec::with_capacity(3 * 65536);
        for lo in 0u32..65536 {
            let i = hi << 16 | lo;
            row.extend_from_slice(&[i as u8, (i >> 8) as u8, (i >> 16) as u8]);
        }
        let field = RgbImage::from_raw(65536, 1, row).expect("row buffer");
        let mask = aria_hsv_mask(&field);
        let (mask2, segmented) = aria_hsv_segment(&field);
        assert_eq!(mask, mask2, "aria_hsv_segment's mask differs from aria_hsv_mask (c0 = {hi})");
        for ((m, px), out) in mask.as_raw().iter().zip(field.pixels()).zip(segmented.pixels()) {
            assert_eq!(out.0, if *m == 255 { px.0 } else { [0, 0, 0] }, "bitwise_and of {:?}", px.0);
            assert_eq!(*m == 255, aria_hsv_keeps_reference(px.0), "table vs reference at {:?}", px.0);
        }
        let bits: Vec<u8> = mask.as_raw().iter().map(|&m| (m == 255) as u8).collect();
        count += bits.iter().map(|&b| b as u64).sum::<u64>();
        mask_hash.update(&bits);
    }
    assert_eq!(count, fx.cube_mask_count, "kept colours vs OpenCV {}", fx.opencv_version);
    assert_eq!(hex(&mask_hash.finalize()), fx.cube_mask_sha256, "fast mask over all colours");
}
