//! Optional stain normalisation: RGB field -> RGB field with the colour of a target stain.
//! Two methods: Reinhard et al., "Color transfer between images", IEEE CG&A 2001 (statistics
//! in the lαβ space), and Macenko et al., "A method for normalizing histology slides for
//! quantitative analysis", ISBI 2009 (two stain vectors in optical density, SVD-based).
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
    /// Macenko stain separation, then reconstruction with the target's stain vectors and
    /// concentration scale.
    Macenko {
        /// Stain vectors and 99th-percentile concentrations every field is mapped to.
        target: MacenkoTarget,
    },
}

impl StainNormalization {
    /// Applies the method to a field.
    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        match self {
            StainNormalization::Reinhard { target } => reinhard_normalize(img, target),
            StainNormalization::Macenko { target } => macenko_normalize(img, target),
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

/// Macenko's stain description of a field: two unit stain vectors in optical density (the
/// first is the nuclear stain, the one absorbing more red) and the 99th percentile of each
/// stain's concentration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MacenkoTarget {
    /// Stain vectors (OD per R, G, B), nuclear stain first.
    pub stains: [[f32; 3]; 2],
    /// 99th-percentile concentration of each stain.
    pub max_concentration: [f32; 2],
}

impl Default for MacenkoTarget {
    /// The reference values most implementations ship (H&E; Macenko's paper, as used by
    /// staintools/torchstain).
    fn default() -> Self {
        Self { stains: [[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]], max_concentration: [1.9705, 1.0308] }
    }
}

/// Transmitted light intensity of the glass (Macenko's I0); brighter pixels count as OD 0.
const MACENKO_IO: f32 = 240.0;
/// Pixels with OD below this in any channel are background and do not shape the stain vectors.
const MACENKO_BETA: f32 = 0.15;

fn optical_density(px: [u8; 3]) -> [f32; 3] {
    px.map(|c| -(((c as f32) + 1.0) / MACENKO_IO).min(1.0).ln())
}

impl MacenkoTarget {
    /// Stain vectors and concentration scale of a (reference) field; `None` when fewer than
    /// 16 pixels carry stain (a blank field).
    pub fn of(img: &RgbImage) -> Option<MacenkoTarget> {
        let (stains, conc) = macenko_fit(img)?;
        Some(MacenkoTarget { stains, max_concentration: conc })
    }
}

/// Fits the two stain vectors of a field and their 99th-percentile concentrations.
fn macenko_fit(img: &RgbImage) -> Option<([[f32; 3]; 2], [f32; 2])> {
    let od: Vec<[f32; 3]> =
        img.pixels().map(|p| optical_density(p.0)).filter(|o| o.iter().all(|&v| v > MACENKO_BETA)).collect();
    if od.len() < 16 {
        return None;
    }
    // Covariance of the stained pixels' OD, then its two leading eigenvectors (the plane).
    let n = od.len() as f64;
    let mean: [f64; 3] = std::array::from_fn(|c| od.iter().map(|o| o[c] as f64).sum::<f64>() / n);
    let mut cov = [[0f64; 3]; 3];
    for o in &od {
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += (o[i] as f64 - mean[i]) * (o[j] as f64 - mean[j]) / n;
            }
        }
    }
    let (vals, vecs) = jacobi_eigen(cov);
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let e1: [f64; 3] = std::array::from_fn(|r| vecs[r][order[0]]);
    let e2: [f64; 3] = std::array::from_fn(|r| vecs[r][order[1]]);
    let dot = |a: &[f64; 3], o: &[f32; 3]| a[0] * o[0] as f64 + a[1] * o[1] as f64 + a[2] * o[2] as f64;
    let mut angles: Vec<f64> = od.iter().map(|o| dot(&e2, o).atan2(dot(&e1, o))).collect();
    angles.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (pct(&angles, 0.01), pct(&angles, 0.99));
    let dir = |phi: f64| -> [f64; 3] {
        let v: [f64; 3] = std::array::from_fn(|c| e1[c] * phi.cos() + e2[c] * phi.sin());
        // OD vectors are non-negative; an eigenvector's sign is arbitrary.
        if v.iter().sum::<f64>() < 0.0 {
            v.map(|x| -x)
        } else {
            v
        }
    };
    let (a, b) = (dir(lo), dir(hi));
    let stains = if a[0] >= b[0] { [a, b] } else { [b, a] };
    let stains = stains.map(|v| {
        let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
        v.map(|x| (x / norm) as f32)
    });
    let all_od: Vec<[f32; 3]> = img.pixels().map(|p| optical_density(p.0)).collect();
    let conc = concentrations(&all_od, &stains);
    let mut c0: Vec<f32> = conc.iter().map(|c| c[0]).collect();
    let mut c1: Vec<f32> = conc.iter().map(|c| c[1]).collect();
    c0.sort_by(f32::total_cmp);
    c1.sort_by(f32::total_cmp);
    let p99 = |v: &[f32]| v[((v.len() - 1) as f32 * 0.99).round() as usize].max(1e-6);
    Some((stains, [p99(&c0), p99(&c1)]))
}

/// Least-squares stain concentrations of each pixel's OD (2x2 normal equations).
fn concentrations(od: &[[f32; 3]], stains: &[[f32; 3]; 2]) -> Vec<[f32; 2]> {
    let d = |a: &[f32; 3], b: &[f32; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let (s0, s1) = (&stains[0], &stains[1]);
    let (a, b, c) = (d(s0, s0), d(s0, s1), d(s1, s1));
    let det = a * c - b * b;
    if det.abs() < 1e-9 {
        return od.iter().map(|o| [d(s0, o) / a.max(1e-9), 0.0]).collect();
    }
    od.iter()
        .map(|o| {
            let (p, q) = (d(s0, o), d(s1, o));
            [(c * p - b * q) / det, (a * q - b * p) / det]
        })
        .collect()
}

/// Eigen-decomposition of a symmetric 3x3 matrix by cyclic Jacobi rotations; returns the
/// eigenvalues and the eigenvectors as columns.
fn jacobi_eigen(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..50 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        if off < 1e-15 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-18 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
            for row in a.iter_mut() {
                let (akp, akq) = (row[p], row[q]);
                row[p] = c * akp - s * akq;
                row[q] = s * akp + c * akq;
            }
            let (ap, aq) = (a[p], a[q]);
            a[p] = std::array::from_fn(|k| c * ap[k] - s * aq[k]);
            a[q] = std::array::from_fn(|k| s * ap[k] + c * aq[k]);
            for row in v.iter_mut() {
                let (vkp, vkq) = (row[p], row[q]);
                row[p] = c * vkp - s * vkq;
                row[q] = s * vkp + c * vkq;
            }
        }
    }
    ([a[0][0], a[1][1], a[2][2]], v)
}

/// Macenko normalisation: the field's own two stains are found, each pixel's concentrations
/// are rescaled to the target's 99th percentiles and re-rendered with the target's stain
/// vectors. A field with too little stain to fit (blank glass) is returned unchanged.
pub fn macenko_normalize(img: &RgbImage, target: &MacenkoTarget) -> RgbImage {
    let Some((stains, maxc)) = macenko_fit(img) else { return img.clone() };
    let od: Vec<[f32; 3]> = img.pixels().map(|p| optical_density(p.0)).collect();
    let conc = concentrations(&od, &stains);
    let scale = [target.max_concentration[0] / maxc[0], target.max_concentration[1] / maxc[1]];
    let mut out = img.clone();
    for (px, c) in out.pixels_mut().zip(conc) {
        let (c0, c1) = (c[0] * scale[0], c[1] * scale[1]);
        px.0 = std::array::from_fn(|k| {
            let od = target.stains[0][k] * c0 + target.stains[1][k] * c1;
            (MACENKO_IO * (-od).exp()).round().clamp(0.0, 255.0) as u8
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_known_eigenpairs() {
        let (vals, vecs) = jacobi_eigen([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]]);
        let mut sorted = vals;
        sorted.sort_by(f64::total_cmp);
        assert!((sorted[0] - 1.0).abs() < 1e-9 && (sorted[1] - 3.0).abs() < 1e-9 && (sorted[2] - 5.0).abs() < 1e-9);
        let i3 = vals.iter().position(|v| (v - 3.0).abs() < 1e-9).unwrap();
        assert!((vecs[0][i3].abs() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
    }

    #[test]
    fn macenko_recovers_two_synthetic_stains() {
        // Pixels mixing two known stains in varied amounts.
        let s = [[0.65f32, 0.70, 0.29], [0.07, 0.99, 0.11]];
        let img = RgbImage::from_fn(40, 40, |x, y| {
            let (c0, c1) = (0.1 + x as f32 / 30.0, 0.1 + y as f32 / 45.0);
            image::Rgb(std::array::from_fn(|k| (MACENKO_IO * (-(s[0][k] * c0 + s[1][k] * c1)).exp()).round() as u8))
        });
        let fit = MacenkoTarget::of(&img).expect("stained field");
        for (got, want) in fit.stains.iter().zip(&s) {
            let n = (want.iter().map(|v| v * v).sum::<f32>()).sqrt();
            let cos: f32 = got.iter().zip(want).map(|(a, b)| a * b / n).sum();
            assert!(cos > 0.98, "{got:?} vs {want:?}");
        }
        // Normalising to its own description changes little.
        let out = macenko_normalize(&img, &fit);
        let diff = out.as_raw().iter().zip(img.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(diff <= 8, "{diff}");
        // A blank field is returned unchanged.
        let blank = RgbImage::from_pixel(8, 8, image::Rgb([250, 250, 250]));
        assert_eq!(macenko_normalize(&blank, &MacenkoTarget::default()), blank);
    }

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
