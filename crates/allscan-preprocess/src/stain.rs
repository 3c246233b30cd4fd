//! Optional stain normalisation: RGB field -> RGB field with the colour statistics of a target
//! stain (Reinhard et al., "Color transfer between images", IEEE CG&A 2001, in the lαβ space).
//!
//! Why: Aria's fields range from violet to blue-grey backgrounds; matching each field's colour
//! statistics to one reference removes part of that variation before the classifier sees it.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Per-channel mean and standard deviation in Reinhard's lαβ space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StainStats {
    /// Means of l, α, β.
    pub mean: [f32; 3],
    /// Standard deviations of l, α, β.
    pub std: [f32; 3],
}

/// A stain normalisation method and its target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "method")]
pub enum StainNormalization {
    /// Reinhard colour transfer to the target statistics (from [`StainStats::of`] on a
    /// reference field).
    Reinhard {
        /// Statistics every field is mapped to.
        target: StainStats,
    },
}

impl StainNormalization {
    /// Applies the method to a field.
    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        match self {
            StainNormalization::Reinhard { target } => reinhard_normalize(img, target),
        }
    }
}

const SQRT3: f32 = 1.732_050_8;
const SQRT6: f32 = 2.449_489_8;
const SQRT2: f32 = std::f32::consts::SQRT_2;

fn rgb_to_lab(px: [u8; 3]) -> [f32; 3] {
    // Zero channels would give log(0); 1/255 is the smallest non-zero intensity.
    let [r, g, b] = px.map(|c| (c.max(1) as f32) / 255.0);
    let l = 0.3811 * r + 0.5783 * g + 0.0402 * b;
    let m = 0.1967 * r + 0.7244 * g + 0.0782 * b;
    let s = 0.0241 * r + 0.1288 * g + 0.8444 * b;
    let (l, m, s) = (l.max(1e-6).log10(), m.max(1e-6).log10(), s.max(1e-6).log10());
    [(l + m + s) / SQRT3, (l + m - 2.0 * s) / SQRT6, (l - m) / SQRT2]
}

fn lab_to_rgb(lab: [f32; 3]) -> [u8; 3] {
    let [l0, a, b0] = lab;
    let l = l0 / SQRT3 + a / SQRT6 + b0 / SQRT2;
    let m = l0 / SQRT3 + a / SQRT6 - b0 / SQRT2;
    let s = l0 / SQRT3 - 2.0 * a / SQRT6;
    let (l, m, s) = (10f32.powf(l), 10f32.powf(m), 10f32.powf(s));
    let r = 4.4679 * l - 3.5873 * m + 0.1193 * s;
    let g = -1.2186 * l + 2.3809 * m - 0.1624 * s;
    let b = 0.0497 * l - 0.2439 * m + 1.2045 * s;
    [r, g, b].map(|c| (c * 255.0).round().clamp(0.0, 255.0) as u8)
}

impl StainStats {
    /// Statistics of a field (e.g. a well-stained reference field).
    pub fn of(img: &RgbImage) -> StainStats {
        let n = (img.width() as f64 * img.height() as f64).max(1.0);
        let mut sum = [0f64; 3];
        let mut sq = [0f64; 3];
        for px in img.pixels() {
            let lab = rgb_to_lab(px.0);
            for c in 0..3 {
                sum[c] += lab[c] as f64;
                sq[c] += (lab[c] as f64) * (lab[c] as f64);
            }
        }
        let mean = sum.map(|s| s / n);
        let std = std::array::from_fn(|c| ((sq[c] / n - mean[c] * mean[c]).max(0.0)).sqrt() as f32);
        StainStats { mean: mean.map(|m| m as f32), std }
    }
}

/// Reinhard colour transfer: each lαβ channel of the field is shifted and scaled to the
/// target's mean and std. A flat channel (std 0) is only shifted.
pub fn reinhard_normalize(img: &RgbImage, target: &StainStats) -> RgbImage {
    let src = StainStats::of(img);
    let gain: [f32; 3] = std::array::from_fn(|c| if src.std[c] > 1e-6 { target.std[c] / src.std[c] } else { 1.0 });
    let mut out = img.clone();
    for px in out.pixels_mut() {
        let lab = rgb_to_lab(px.0);
        let mapped = std::array::from_fn(|c| (lab[c] - src.mean[c]) * gain[c] + target.mean[c]);
        px.0 = lab_to_rgb(mapped);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_round_trip_is_close() {
        for px in [[200u8, 100, 180], [255, 255, 255], [30, 40, 50], [120, 60, 170]] {
            let back = lab_to_rgb(rgb_to_lab(px));
            for c in 0..3 {
                assert!((back[c] as i32 - px[c] as i32).abs() <= 2, "{px:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn reinhard_matches_target_statistics() {
        let reference = RgbImage::from_fn(32, 32, |x, y| image::Rgb([150 + (x as u8), 80 + (y as u8), 190]));
        let field = RgbImage::from_fn(32, 32, |x, y| image::Rgb([90 + (y as u8), 110 + (x as u8 / 2), 160]));
        let target = StainStats::of(&reference);
        let out = reinhard_normalize(&field, &target);
        let got = StainStats::of(&out);
        for c in 0..3 {
            assert!((got.mean[c] - target.mean[c]).abs() < 0.02, "channel {c}: {got:?} vs {target:?}");
        }
    }
}
