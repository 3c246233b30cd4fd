//! Perceptual hash for near-duplicate detection: decoded RGB field -> 64-bit DCT hash.
//!
//! The classic pHash: grayscale, area-resample to 32x32, 2-D DCT-II, keep the 8x8 lowest
//! frequencies without the DC term, one bit per coefficient above their median. Two images whose
//! hashes differ in at most [`NEAR_DUPLICATE_MAX_DISTANCE`] bits are near-duplicates.

use image::{imageops, RgbImage};

/// Hamming distance at or below which two fields count as near-duplicates.
///
/// Chosen on the Aria development set (1,945 fields), from the histogram of each field's distance
/// to its nearest neighbour of different content (`nearest_neighbour_distances`; the test
/// `data_real` prints it). Counts at distance 0, 2, 4, ..., 16 were 10, 22, 8, 4, 2, 8, 18, 106,
/// 716, median 18: a valley at 8 separates a small mode of near-copies (almost all pairs with
/// consecutive file numbers: the same field captured twice, shifted by a few pixels, as seen by
/// eye for Benign-004/005 and Pro-387/506) from the bulk of distinct fields.
/// Re-encoded, resized or brightened copies stay within 6 bits (tested below).
pub const NEAR_DUPLICATE_MAX_DISTANCE: u32 = 8;

/// 64-bit perceptual hash of a field.
///
/// Single-cell crops on a black background (C-NMC) are hashed on the bounding box of their
/// non-black pixels: on the whole 450x450 canvas, the black margin dominates the low frequencies
/// and unrelated cells of different patients hash alike.
pub fn phash(img: &RgbImage) -> u64 {
    const N: usize = 32;
    let (x0, y0, x1, y1) = content_box(img);
    let content = imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image();
    let gray = imageops::grayscale(&content);
    let small = imageops::resize(&gray, N as u32, N as u32, imageops::FilterType::Triangle);
    let px: Vec<f64> = small.pixels().map(|p| p[0] as f64).collect();
    // Separable DCT-II, computing only the 8 lowest frequencies in each direction.
    let cos = |k: usize, n: usize| (std::f64::consts::PI * (2 * n + 1) as f64 * k as f64 / (2 * N) as f64).cos();
    let mut rows = vec![0.0f64; N * 8]; // [y][u]
    for y in 0..N {
        for u in 0..8 {
            rows[y * 8 + u] = (0..N).map(|x| px[y * N + x] * cos(u, x)).sum();
        }
    }
    let mut coef = [0.0f64; 64]; // [v][u]
    for v in 0..8 {
        for u in 0..8 {
            coef[v * 8 + u] = (0..N).map(|y| rows[y * 8 + u] * cos(v, y)).sum();
        }
    }
    let mut ac: Vec<f64> = coef[1..].to_vec();
    ac.sort_by(|a, b| a.total_cmp(b));
    let median = (ac[31] + ac[32]) / 2.0;
    coef.iter().enumerate().fold(0u64, |h, (i, &c)| if i > 0 && c > median { h | (1 << i) } else { h })
}

/// Bounding box `(x0, y0, x1, y1)` (exclusive ends) of the pixels brighter than near-black;
/// the whole image when there is no black margin or nothing but black.
fn content_box(img: &RgbImage) -> (u32, u32, u32, u32) {
    const BLACK: u8 = 16;
    let (w, h) = img.dimensions();
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        if p.0.iter().any(|&c| c > BLACK) {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
    }
    if x1 <= x0 || y1 <= y0 || (x1 - x0) < 8 || (y1 - y0) < 8 {
        return (0, 0, w, h);
    }
    (x0, y0, x1, y1)
}

/// Number of differing bits.
pub fn distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// For each hash, the distance to its nearest *different-content* neighbour (`None` when alone).
/// Used to document and re-check [`NEAR_DUPLICATE_MAX_DISTANCE`].
pub fn nearest_neighbour_distances(hashes: &[u64], content: &[&str]) -> Vec<Option<u32>> {
    (0..hashes.len())
        .map(|i| {
            (0..hashes.len())
                .filter(|&j| j != i && content[j] != content[i])
                .map(|j| distance(hashes[i], hashes[j]))
                .min()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn field(seed: u32) -> RgbImage {
        RgbImage::from_fn(224, 224, |x, y| {
            let cx = 80.0 + (seed % 7) as f32 * 10.0;
            let d = ((x as f32 - cx).powi(2) + (y as f32 - 110.0).powi(2)).sqrt();
            let v = if d < 40.0 + seed as f32 { 60 } else { 200 } as u8;
            Rgb([v, v.saturating_sub((x / 10) as u8), (y % 50) as u8 + v / 2])
        })
    }

    #[test]
    fn copies_are_near_and_different_fields_are_far() {
        let a = field(1);
        let h = phash(&a);
        // JPEG re-encode
        let mut buf = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(a.clone()).write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
        let j = image::load_from_memory(buf.get_ref()).unwrap().to_rgb8();
        assert!(distance(h, phash(&j)) <= 4);
        // Resized copy
        let r = imageops::resize(&a, 300, 300, imageops::FilterType::CatmullRom);
        assert!(distance(h, phash(&r)) <= 6);
        // Brightness change
        let mut b = a.clone();
        b.pixels_mut().for_each(|p| p.0 = p.0.map(|c| c.saturating_add(12)));
        assert!(distance(h, phash(&b)) <= 6);
        // A different field
        assert!(distance(h, phash(&field(5))) > NEAR_DUPLICATE_MAX_DISTANCE);
    }

    #[test]
    fn black_margins_do_not_make_different_cells_alike() {
        let cell = |seed: u32| {
            RgbImage::from_fn(200, 200, |x, y| {
                let (dx, dy) = (x as f32 - 100.0, y as f32 - 100.0);
                if dx * dx + dy * dy > 900.0 {
                    return Rgb([0, 0, 0]);
                }
                let t = ((x * (seed + 3) + y * (seed * 5 + 1)) % 61) as u8;
                Rgb([120 + t, 60 + t, 160])
            })
        };
        let (a, b) = (phash(&cell(1)), phash(&cell(4)));
        assert!(distance(a, b) > NEAR_DUPLICATE_MAX_DISTANCE, "{}", distance(a, b));
        // The same cell moved on its canvas is still the same cell.
        let mut moved = RgbImage::new(200, 200);
        imageops::overlay(&mut moved, &imageops::crop_imm(&cell(1), 60, 60, 80, 80).to_image(), 30, 50);
        assert!(distance(a, phash(&moved)) <= 2);
    }
}
