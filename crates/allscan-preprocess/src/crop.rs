//! ROI crops: field + nuclei -> square crops centred on each nucleus, with a context margin,
//! resized to the model's input size.

use image::imageops::FilterType;
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
        image::imageops::resize(&square, size.max(1), size.max(1), FilterType::Triangle)
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
    image::imageops::resize(img, size.max(1), size.max(1), FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

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
