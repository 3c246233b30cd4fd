//! Contact sheet for review: field + mask + crops -> one RGB image (original | mask | crops).

use image::{imageops, GrayImage, Rgb, RgbImage};

use crate::crop::RoiCrop;

/// Lays out the field, its mask (white on black) and up to `max_crops` crops, each scaled to
/// the field's height, side by side with a 4-pixel grey gutter.
pub fn contact_sheet(field: &RgbImage, mask: &GrayImage, crops: &[RoiCrop], max_crops: usize) -> RgbImage {
    let h = field.height().max(1);
    let gutter = 4u32;
    let crops: Vec<RgbImage> = crops
        .iter()
        .take(max_crops)
        .map(|c| imageops::resize(&c.image, h, h, imageops::FilterType::Triangle))
        .collect();
    let mask_rgb = RgbImage::from_fn(mask.width(), mask.height(), |x, y| {
        let v = mask.get_pixel(x, y)[0];
        Rgb([v, v, v])
    });
    let mut tiles = vec![field.clone(), mask_rgb];
    tiles.extend(crops);
    let width = tiles.iter().map(|t| t.width()).sum::<u32>() + gutter * (tiles.len() as u32 - 1);
    let mut sheet = RgbImage::from_pixel(width, h, Rgb([128, 128, 128]));
    let mut x = 0i64;
    for t in &tiles {
        imageops::replace(&mut sheet, t, x, 0);
        x += t.width() as i64 + gutter as i64;
    }
    sheet
}
