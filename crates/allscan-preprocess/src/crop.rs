//! ROI crops: field + nuclei -> square crops centred on each nucleus, with a context margin,
//! resized to the model's input size.

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::config::RoiConfig;
use crate::nucleus::{BBox, NucleusResult};

/// A square crop around one nucleus.
#[derive(Debug, Clone)]
pub struct RoiCrop {
    /// The crop, `output_size` x `output_size`.
    pub image: RgbImage,
    /// The square region of the field it was cut from (may extend past the field when the
    /// field is smaller than the square; that part is padded).
    pub region: CropRegion,
    /// Index of the nucleus in [`NucleusResult::nuclei`].
    pub nucleus_index: usize,
}

/// A square in field coordinates; signed because it may start left of or above the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropRegion {
    /// Left column (may be negative).
    pub x: i64,
    /// Top row (may be negative).
    pub y: i64,
    /// Side in field pixels.
    pub side: u32,
}

/// The square region for a nucleus box: the box's longer side plus `margin` on each side (at
/// least `min_side`), centred on the box, then shifted to lie inside the field when it fits,
/// so a nucleus at the edge gets real context instead of padding.
pub fn crop_region(bbox: &BBox, field_w: u32, field_h: u32, cfg: &RoiConfig) -> CropRegion {
    let longer = bbox.width.max(bbox.height) as f32;
    let side = (longer * (1.0 + 2.0 * cfg.margin.max(0.0))).round() as u32;
    let side = side.max(cfg.min_side).max(1);
    let cx = bbox.x as f64 + bbox.width as f64 / 2.0;
    let cy = bbox.y as f64 + bbox.height as f64 / 2.0;
    let place = |c: f64, len: u32| -> i64 {
        let start = (c - side as f64 / 2.0).round() as i64;
        if side <= len {
            start.clamp(0, (len - side) as i64)
        } else {
            // Larger than the field: centre the field in the square.
            -(((side - len) / 2) as i64)
        }
    };
    CropRegion { x: place(cx, field_w), y: place(cy, field_h), side }
}

/// Cuts a square region out of the field (padding with `pad` outside it) and resizes it to
/// `size` x `size` (bilinear; area-like enough for the usual 1-3x factors here).
pub fn cut_square(img: &RgbImage, region: &CropRegion, size: u32, pad: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let square = RgbImage::from_fn(region.side, region.side, |x, y| {
        let (fx, fy) = (region.x + x as i64, region.y + y as i64);
        if fx >= 0 && fy >= 0 && fx < w && fy < h {
            *img.get_pixel(fx as u32, fy as u32)
        } else {
            Rgb(pad)
        }
    });
    if region.side == size {
        square
    } else {
        resize_triangle(&square, size.max(1), size.max(1))
    }
}

/// One square crop per nucleus, largest nucleus first, at most `max_crops`.
pub fn roi_crops(img: &RgbImage, nuclei: &NucleusResult, cfg: &RoiConfig) -> Vec<RoiCrop> {
    nuclei
        .nuclei
        .iter()
        .take(cfg.max_crops)
        .enumerate()
        .map(|(i, n)| {
            let region = crop_region(&n.bbox, img.width(), img.height(), cfg);
            RoiCrop { image: cut_square(img, &region, cfg.output_size, cfg.pad_rgb), region, nucleus_index: i }
        })
        .collect()
}

/// The crop around the largest nucleus: the seed's single-ROI view of a field. `None` when
/// the field has no nucleus.
pub fn largest_nucleus_crop(img: &RgbImage, nuclei: &NucleusResult, cfg: &RoiConfig) -> Option<RoiCrop> {
    let n = nuclei.largest()?;
    let region = crop_region(&n.bbox, img.width(), img.height(), cfg);
    Some(RoiCrop { image: cut_square(img, &region, cfg.output_size, cfg.pad_rgb), region, nucleus_index: 0 })
}

/// The whole field resized to `size` x `size` (aspect not kept: Aria fields are square, and
/// the seed resized this way).
pub fn resize_field(img: &RgbImage, size: u32) -> RgbImage {
    if img.dimensions() == (size, size) {
        return img.clone();
    }
    resize_triangle(img, size.max(1), size.max(1))
}

/// `image::imageops::resize(img, nw, nh, FilterType::Triangle)` (image 0.25), bit for bit:
/// the same weights, the same f32 sums in the same order, the same rounding; the unit tests
/// compare the two on up- and down-scaling. Why not call it: it samples pixel by pixel through
/// a generic 4-channel path and rounds with a libm call per channel, which made it a third of
/// the `nucleus` mode's time; here each pass runs over whole rows.
pub(crate) fn resize_triangle(img: &RgbImage, nw: u32, nh: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || nw == 0 || nh == 0 {
        return RgbImage::new(nw, nh);
    }
    if (w, h) == (nw, nh) {
        return img.clone();
    }
    let row = 3 * w as usize;
    // Vertical pass first, into f32 (as `vertical_sample` does).
    let mut tmp = vec![0f32; row * nh as usize];
    for ((left, ws), acc) in triangle_taps(h, nh).iter().zip(tmp.chunks_exact_mut(row)) {
        for (i, wt) in ws.iter().enumerate() {
            let y = *left as usize + i;
            for (a, v) in acc.iter_mut().zip(&img.as_raw()[y * row..(y + 1) * row]) {
                *a += *v as f32 * wt;
            }
        }
    }
    // Horizontal pass, rounded to u8 (as `horizontal_sample` does).
    let taps = triangle_taps(w, nw);
    let mut out = Vec::with_capacity(3 * nw as usize * nh as usize);
    for src in tmp.chunks_exact(row) {
        for (left, ws) in &taps {
            let px = &src[*left as usize * 3..];
            let mut t = [0f32; 3];
            for (p, wt) in px.chunks_exact(3).zip(ws) {
                t[0] += p[0] * wt;
                t[1] += p[1] * wt;
                t[2] += p[2] * wt;
            }
            out.extend_from_slice(&[round_u8(t[0]), round_u8(t[1]), round_u8(t[2])]);
        }
    }
    RgbImage::from_raw(nw, nh, out).unwrap_or_else(|| RgbImage::new(nw, nh))
}

/// For each output position of a 1-D resample from `in_len` to `out_len` with the triangle
/// filter: the first input index and the normalised weights, computed exactly as image 0.25's
/// `vertical_sample` and `horizontal_sample` do (support 1, widened by the ratio when
/// shrinking).
fn triangle_taps(in_len: u32, out_len: u32) -> Vec<(u32, Vec<f32>)> {
    let ratio = in_len as f32 / out_len as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let src_support = sratio;
    (0..out_len)
        .map(|o| {
            let input = (o as f32 + 0.5) * ratio;
            let left = ((input - src_support).floor() as i64).clamp(0, in_len as i64 - 1) as u32;
            let right = ((input + src_support).ceil() as i64).clamp(left as i64 + 1, in_len as i64) as u32;
            let input = input - 0.5;
            let mut ws: Vec<f32> = (left..right)
                .map(|i| {
                    let x = ((i as f32 - input) / sratio).abs();
                    if x < 1.0 {
                        1.0 - x
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut sum = 0.0f32;
            for wt in &ws {
                sum += wt;
            }
            for wt in ws.iter_mut() {
                *wt /= sum;
            }
            (left, ws)
        })
        .collect()
}

/// Clamp to 0..=255 and round half away from zero (`f32::round`), without the libm call:
/// for 0 <= t <= 255, `t - trunc(t)` is exact in f32.
#[inline]
fn round_u8(t: f32) -> u8 {
    let t = t.clamp(0.0, 255.0);
    let i = t as u32;
    (i + (t - i as f32 >= 0.5) as u32) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_matches_the_image_crate_bit_for_bit() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let sizes = [(1u32, 1u32, 224u32, 224u32), (60, 60, 224, 224), (97, 97, 224, 224), (300, 300, 224, 224)];
        let more = [(224, 224, 60, 60), (37, 23, 5, 9), (5, 9, 37, 23), (2, 3, 3, 2), (224, 160, 224, 224)];
        for (w, h, nw, nh) in sizes.into_iter().chain(more) {
            let img = RgbImage::from_fn(w, h, |_, _| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
            });
            let ours = resize_triangle(&img, nw, nh);
            let theirs = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
            assert_eq!(ours, theirs, "{w}x{h} -> {nw}x{nh}");
        }
        // Smooth content too: many sums land near .5.
        let ramp = RgbImage::from_fn(61, 61, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8]));
        let theirs = image::imageops::resize(&ramp, 224, 224, image::imageops::FilterType::Triangle);
        assert_eq!(resize_triangle(&ramp, 224, 224), theirs);
    }

    fn bbox(x: u32, y: u32, w: u32, h: u32) -> BBox {
        BBox { x, y, width: w, height: h }
    }

    #[test]
    fn region_is_square_centred_with_margin() {
        let cfg = RoiConfig::default();
        let r = crop_region(&bbox(100, 100, 40, 30), 224, 224, &cfg);
        assert_eq!(r.side, 60); // 40 * (1 + 2 * 0.25)
        assert_eq!((r.x, r.y), (90, 85));
    }

    #[test]
    fn region_at_the_edge_is_shifted_inside() {
        let cfg = RoiConfig::default();
        let r = crop_region(&bbox(0, 200, 40, 24), 224, 224, &cfg);
        assert_eq!((r.x, r.y, r.side), (0, 164, 60));
    }

    #[test]
    fn crop_larger_than_field_is_padded() {
        let img = RgbImage::from_pixel(20, 20, Rgb([10, 20, 30]));
        let cfg = RoiConfig { min_side: 40, output_size: 40, ..Default::default() };
        let r = crop_region(&bbox(5, 5, 10, 10), 20, 20, &cfg);
        assert_eq!((r.x, r.y, r.side), (-10, -10, 40));
        let c = cut_square(&img, &r, 40, cfg.pad_rgb);
        assert_eq!(c.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(c.get_pixel(20, 20).0, [10, 20, 30]);
    }
}
