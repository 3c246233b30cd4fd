//! `cell` mode's model input: a field + its white cells ([`crate::find_white_cells`]) + the
//! field's scale -> one square crop per cell, a fixed physical window resampled to the model's
//! input size, with the pixels outside the (slightly grown) cell mask set to one flat fill and
//! the cell's own pixels standardised.
//!
//! Why each step: the window is physical so a blast and a lymphocyte keep their true sizes
//! whatever the optics; the fill removes the background, red cells and neighbours, which carry
//! the lab (stain, density, camera), not the cell's class; the per-cell standardisation takes
//! away the stain's overall darkness and cast while keeping the chromatin and cytoplasm
//! contrast inside the cell.

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

use crate::cell::CellResult;
use crate::config::{CellColour, CellViewConfig};
use crate::crop::{resize_triangle, CropRegion};

/// Standardised cell pixels are mapped to `CENTRE + z * SPREAD` grey levels.
const CENTRE: f32 = 120.0;
const SPREAD: f32 = 45.0;

/// One white cell as the model sees it.
#[derive(Debug, Clone)]
pub struct CellCrop {
    /// `size` x `size` model input.
    pub image: RgbImage,
    /// The square of the field it was cut from (may extend past the field).
    pub region: CropRegion,
    /// Index of the cell in [`CellResult::cells`].
    pub cell_index: usize,
}

/// The window of cell `index` in field pixels: `window_um` micrometres, centred on the cell.
pub fn cell_region(cells: &CellResult, index: usize, cfg: &CellViewConfig) -> Option<CropRegion> {
    let cell = cells.cells.get(index)?;
    let um = cells.scale.um_per_px;
    if !(um.is_finite() && um > 0.0) {
        return None;
    }
    let side = (cfg.window_um / um).round().max(4.0) as u32;
    let (cx, cy) = cell.centroid;
    let x = (cx as f64 - side as f64 / 2.0).round() as i64;
    let y = (cy as f64 - side as f64 / 2.0).round() as i64;
    Some(CropRegion { x, y, side })
}

/// The model input of cell `index` (see the module docs), `size` x `size`.
pub fn cut_cell(
    field: &RgbImage,
    cells: &CellResult,
    index: usize,
    cfg: &CellViewConfig,
    size: u32,
) -> Option<CellCrop> {
    let region = cell_region(cells, index, cfg)?;
    let (w, h) = (field.width() as i64, field.height() as i64);
    let side = region.side;
    let label = index as u32 + 1;
    // The cell's own pixels within the window.
    let own = GrayImage::from_fn(side, side, |x, y| {
        let (fx, fy) = (region.x + x as i64, region.y + y as i64);
        let inside = fx >= 0 && fy >= 0 && fx < w && fy < h;
        Luma([if inside && cells.labels.get_pixel(fx as u32, fy as u32)[0] == label { 255 } else { 0 }])
    });
    // The margin keeps the cell's blurred edge on glass. On black it, and any black pixel of
    // the mask, would add a black ring (the darkest thing in the crop after standardisation):
    // a mark of the lab, not the cell.
    let margin = if cells.black_level.is_some() { 0.0 } else { cfg.mask_margin_um };
    let grow = (margin / cells.scale.um_per_px).round().max(0.0) as u32;
    let mut keep = dilate_square(&own, grow);
    if let Some(black) = cells.black_level {
        for (x, y, k) in keep.enumerate_pixels_mut() {
            let (fx, fy) = (region.x + x as i64, region.y + y as i64);
            let inside = fx >= 0 && fy >= 0 && fx < w && fy < h;
            if !inside || field.get_pixel(fx as u32, fy as u32).0.iter().all(|&c| c < black) {
                k[0] = 0;
            }
        }
    }
    let pixel = |x: u32, y: u32| -> [u8; 3] {
        let (fx, fy) = (region.x + x as i64, region.y + y as i64);
        field.get_pixel(fx.clamp(0, w - 1) as u32, fy.clamp(0, h - 1) as u32).0
    };
    // Statistics over the kept pixels, per channel (grey: one channel).
    let grey = cfg.colour == CellColour::Grey;
    let luma = |p: [u8; 3]| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
    let (mut sum, mut sq, mut n) = ([0f64; 3], [0f64; 3], 0usize);
    for (x, y, k) in keep.enumerate_pixels() {
        if k[0] == 0 {
            continue;
        }
        let p = pixel(x, y);
        let v = if grey { [luma(p); 3] } else { [p[0] as f32, p[1] as f32, p[2] as f32] };
        for c in 0..3 {
            sum[c] += v[c] as f64;
            sq[c] += (v[c] as f64) * (v[c] as f64);
        }
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let mean: [f32; 3] = std::array::from_fn(|c| (sum[c] / n as f64) as f32);
    let std: [f32; 3] = std::array::from_fn(|c| {
        let var = sq[c] / n as f64 - (sum[c] / n as f64).powi(2);
        (var.max(0.0).sqrt() as f32).max(4.0)
    });
    let fill = cfg.fill;
    let square = RgbImage::from_fn(side, side, |x, y| {
        if keep.get_pixel(x, y)[0] == 0 {
            return Rgb([fill; 3]);
        }
        let p = pixel(x, y);
        let v = if grey { [luma(p); 3] } else { [p[0] as f32, p[1] as f32, p[2] as f32] };
        Rgb(std::array::from_fn(|c| (CENTRE + (v[c] - mean[c]) / std[c] * SPREAD).round().clamp(0.0, 255.0) as u8))
    });
    // Through the resolution floor first: no source is shown finer detail than the floor.
    let floor =
        cfg.floor_um_per_px.filter(|u| u.is_finite() && *u > 0.0).map(|u| (cfg.window_um / u).round().max(4.0) as u32);
    let square = match floor {
        Some(f) if f < side => resize_triangle(&square, f, f),
        _ => square,
    };
    let image = if square.width() == size { square } else { resize_triangle(&square, size.max(1), size.max(1)) };
    Some(CellCrop { image, region, cell_index: index })
}

/// Every cell's crop, dominant first, at most `cfg.max_cells`.
pub fn cell_crops(field: &RgbImage, cells: &CellResult, cfg: &CellViewConfig, size: u32) -> Vec<CellCrop> {
    (0..cells.cells.len().min(cfg.max_cells)).filter_map(|i| cut_cell(field, cells, i, cfg, size)).collect()
}

/// Binary dilation by a `(2r+1)` square, separably (rows then columns).
fn dilate_square(mask: &GrayImage, r: u32) -> GrayImage {
    if r == 0 {
        return mask.clone();
    }
    let (w, h) = mask.dimensions();
    let r = r as i64;
    let run = |get: &dyn Fn(i64) -> u8, len: i64, out: &mut dyn FnMut(i64, u8)| {
        // Distance to the last set pixel from either side.
        let mut last = i64::MIN / 2;
        let mut near = vec![i64::MAX; len as usize];
        for i in 0..len {
            if get(i) != 0 {
                last = i;
            }
            near[i as usize] = i - last;
        }
        let mut next = i64::MAX / 2;
        for i in (0..len).rev() {
            if get(i) != 0 {
                next = i;
            }
            let d = near[i as usize].min(next - i);
            out(i, if d <= r { 255 } else { 0 });
        }
    };
    let mut rows: ImageBuffer<Luma<u8>, Vec<u8>> = GrayImage::new(w, h);
    for y in 0..h {
        run(&|x| mask.get_pixel(x as u32, y)[0], w as i64, &mut |x, v| rows.put_pixel(x as u32, y, Luma([v])));
    }
    let mut out = GrayImage::new(w, h);
    for x in 0..w {
        run(&|y| rows.get_pixel(x, y as u32)[0], h as i64, &mut |y, v| out.put_pixel(x, y as u32, Luma([v])));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::{CellLabels, WhiteCell};
    use crate::nucleus::BBox;
    use crate::scale::{ScaleEstimate, ScaleSource};

    /// A 200x200 field at 0.25 um/px: one dark disc of radius 20 px (label 1) on a light
    /// background with a mid-grey "red cell" beside it.
    fn field() -> (RgbImage, CellResult) {
        let (w, h) = (200, 200);
        let disc = |x: u32, y: u32, cx: f32, cy: f32, r: f32| (x as f32 - cx).hypot(y as f32 - cy) <= r;
        let img = RgbImage::from_fn(w, h, |x, y| {
            if disc(x, y, 100.0, 100.0, 20.0) {
                Rgb(if (x + y) % 2 == 0 { [60, 30, 90] } else { [90, 50, 120] })
            } else if disc(x, y, 140.0, 100.0, 14.0) {
                Rgb([200, 120, 120])
            } else {
                Rgb([235, 230, 225])
            }
        });
        let labels = CellLabels::from_fn(w, h, |x, y| image::Luma([u32::from(disc(x, y, 100.0, 100.0, 20.0))]));
        let b = BBox { x: 80, y: 80, width: 41, height: 41 };
        let cell = WhiteCell {
            nucleus: b,
            cell: b,
            nucleus_area: 1257,
            cell_area: 1257,
            centroid: (100.0, 100.0),
            flags: vec![],
        };
        let scale = ScaleEstimate {
            um_per_px: 0.25,
            source: ScaleSource::Given,
            red_cells: 0,
            spread: 0.0,
            note: None,
            aspect: Default::default(),
        };
        (img, CellResult { mask: GrayImage::new(w, h), labels, cells: vec![cell], scale, black_level: None })
    }

    #[test]
    fn the_window_is_physical_and_everything_outside_the_cell_is_the_fill() {
        let (img, cells) = field();
        let cfg = CellViewConfig { window_um: 25.0, mask_margin_um: 0.0, ..CellViewConfig::default() };
        // 25 um at 0.25 um/px = 100 field pixels, centred on the cell.
        let region = cell_region(&cells, 0, &cfg).unwrap();
        assert_eq!((region.x, region.y, region.side), (50, 50, 100));
        let crop = cut_cell(&img, &cells, 0, &cfg, 100).unwrap();
        assert_eq!(crop.image.dimensions(), (100, 100));
        // The red cell at +40 px and the glass are gone: only the fill remains there.
        assert_eq!(crop.image.get_pixel(90, 50).0, [cfg.fill; 3]);
        assert_eq!(crop.image.get_pixel(2, 2).0, [cfg.fill; 3]);
        // Inside, grey levels standardised around the centre value, with the texture kept.
        let inside: Vec<u8> = (45..55).map(|x| crop.image.get_pixel(x, 50).0[0]).collect();
        let mean = inside.iter().map(|&v| v as f32).sum::<f32>() / inside.len() as f32;
        assert!((mean - CENTRE).abs() < 12.0, "{inside:?}");
        assert!(inside.iter().max() > inside.iter().min(), "texture lost: {inside:?}");
        let c = crop.image.get_pixel(50, 50).0;
        assert!(c[0] == c[1] && c[1] == c[2], "grey mode gives grey pixels");
        // Resampled to the model's input, the cell keeps its physical size: 40 px of 100 -> 16 of 40.
        let small = cut_cell(&img, &cells, 0, &cfg, 40).unwrap().image;
        let row: Vec<bool> = (0..40).map(|x| small.get_pixel(x, 20).0[0] != cfg.fill).collect();
        let width = row.iter().filter(|&&b| b).count();
        assert!((15..=18).contains(&width), "{width}");
    }

    #[test]
    fn the_same_cell_at_another_scale_gives_the_same_crop_size() {
        let (img, mut cells) = field();
        let cfg = CellViewConfig { mask_margin_um: 0.0, ..CellViewConfig::default() };
        let a = cut_cell(&img, &cells, 0, &cfg, 48).unwrap().image;
        // Claiming twice the micrometres per pixel halves the window in pixels: the cell fills
        // twice the width of the crop.
        cells.scale.um_per_px = 0.5;
        let b = cut_cell(&img, &cells, 0, &cfg, 48).unwrap().image;
        let width = |im: &RgbImage| (0..48).filter(|&x| im.get_pixel(x, 24).0[0] != cfg.fill).count();
        let (wa, wb) = (width(&a), width(&b));
        assert!((wb as f32 / wa as f32 - 2.0).abs() < 0.25, "{wa} vs {wb}");
        assert!(cut_cell(&img, &cells, 1, &cfg, 48).is_none());
    }

    #[test]
    fn the_resolution_floor_removes_detail_finer_than_it_and_nothing_coarser() {
        let (img, cells) = field();
        // The cell's texture alternates every field pixel (0.25 um); the input is 100 px for
        // 25 um (0.25 um/px), so without a floor the texture reaches the input.
        let plain = CellViewConfig { window_um: 25.0, mask_margin_um: 0.0, ..CellViewConfig::default() };
        let spread = |im: &RgbImage| {
            let v: Vec<f32> = (45..55).map(|x| im.get_pixel(x, 50).0[0] as f32).collect();
            let m = v.iter().sum::<f32>() / v.len() as f32;
            (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32).sqrt()
        };
        let sharp = cut_cell(&img, &cells, 0, &plain, 100).unwrap().image;
        let floored = CellViewConfig { floor_um_per_px: Some(1.0), ..plain.clone() };
        let soft = cut_cell(&img, &cells, 0, &floored, 100).unwrap().image;
        assert_eq!(soft.dimensions(), (100, 100));
        assert!(spread(&sharp) > 20.0 && spread(&soft) < 0.5 * spread(&sharp), "{} {}", spread(&sharp), spread(&soft));
        // The cell keeps its size through the floor (width at half the step to the fill).
        let half = (CENTRE + plain.fill as f32) / 2.0;
        let width = |im: &RgbImage| (0..100).filter(|&x| (im.get_pixel(x, 50).0[0] as f32) < half).count() as i64;
        assert!((width(&soft) - width(&sharp)).abs() <= 3, "{} vs {}", width(&soft), width(&sharp));
        // A floor finer than the input's own sampling changes nothing.
        let fine = CellViewConfig { floor_um_per_px: Some(0.1), ..plain.clone() };
        assert_eq!(
            cut_cell(&img, &cells, 0, &fine, 40).unwrap().image,
            cut_cell(&img, &cells, 0, &plain, 40).unwrap().image
        );
    }

    #[test]
    fn dilation_grows_by_r() {
        let mut m = GrayImage::new(9, 9);
        m.put_pixel(4, 4, Luma([255]));
        let d = dilate_square(&m, 2);
        assert_eq!(d.get_pixel(2, 2)[0], 255);
        assert_eq!(d.get_pixel(6, 6)[0], 255);
        assert_eq!(d.get_pixel(1, 4)[0], 0);
        assert_eq!(d.get_pixel(4, 7)[0], 0);
        assert_eq!(dilate_square(&m, 0), m);
    }
}
