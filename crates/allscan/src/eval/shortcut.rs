//! Evaluation stage, shortcut baseline: training images + labels in, a colour-histogram
//! classifier out, then its class probabilities for test images.
//!
//! The question it answers is "what does colour alone explain?". Smears of different classes
//! are often stained, scanned or photographed in different batches, so a model can score well
//! by reading the stain instead of the cells. If this baseline is nearly as good as the DenseNet,
//! the test set cannot tell the two apart. When the run normalises stain
//! (`preprocess.stain`), the baseline reads the normalised fields, as the model does: it then
//! measures the colour that survives the normalisation.
//!
//! Features ([`ColourShortcut::features`], 35 numbers, all fractions of pixels):
//! - hue histogram, 18 bins of 20 degrees, over the chromatic pixels (saturation and value both
//!   at least 0.15; the hue of grey pixels is noise);
//! - saturation histogram, 8 bins, and value histogram, 8 bins, over all pixels;
//! - the fraction of chromatic pixels.
//!
//! Classifier: multinomial logistic regression (softmax; two classes for a binary model) on
//! standardised features, with an L2 penalty `lambda/2 * |W|^2` on the weights (not the
//! intercepts), fitted by Nesterov-accelerated gradient descent with step `1/L`, where `L`
//! bounds the curvature of the loss (half the largest eigenvalue of the feature Gram matrix,
//! found by power iteration, plus `lambda`). The loss is strictly convex, so the result does not
//! depend on the seed beyond rounding; the seed only starts the power iteration.

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::EvalError;

const HUE_BINS: usize = 18;
const SAT_BINS: usize = 8;
const VAL_BINS: usize = 8;
/// Saturation and value below which a pixel is grey and its hue is ignored.
const CHROMA_MIN: f32 = 0.15;
/// Pixels read per image at most; larger images are read on a regular grid.
const MAX_PIXELS: u64 = 250_000;

/// Length of the feature vector.
pub const N_FEATURES: usize = HUE_BINS + SAT_BINS + VAL_BINS + 1;

/// Colour-histogram + logistic regression baseline. Serialisable, so it can be stored in the
/// run directory beside the model it is compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColourShortcut {
    pub n_classes: usize,
    /// Per-feature mean and standard deviation of the training part.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// `[n_classes][N_FEATURES + 1]`, the intercept last.
    pub weights: Vec<Vec<f64>>,
    pub lambda: f64,
    pub iterations: usize,
    /// Norm of the gradient of the penalised loss at the end of fitting.
    pub final_gradient_norm: f64,
}

/// HSV of an 8-bit RGB pixel: hue in [0, 360), saturation and value in [0, 1].
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (f32, f32, f32) {
    let (r, g, b) = (f32::from(r) / 255.0, f32::from(g) / 255.0, f32::from(b) / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    (h.rem_euclid(360.0), s, max)
}

fn bin(x: f32, lo: f32, hi: f32, bins: usize) -> usize {
    let t = ((x - lo) / (hi - lo) * bins as f32).floor();
    (t.max(0.0) as usize).min(bins - 1)
}

fn softmax_into(z: &mut [f64]) {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in z.iter_mut() {
        *v /= s;
    }
}

impl ColourShortcut {
    /// Default L2 strength on standardised features.
    pub const LAMBDA: f64 = 1e-2;
    const MAX_ITER: usize = 3000;
    const TOL: f64 = 1e-7;

    /// The [`N_FEATURES`] colour features of one image (all zero for an empty image).
    pub fn features(img: &RgbImage) -> Vec<f32> {
        Self::features_where(img, &|_, _| true)
    }

    /// The colour features of the pixels where `keep(x, y)` holds (the background-only
    /// baseline reads the pixels outside every white cell).
    pub fn features_where(img: &RgbImage, keep: &dyn Fn(u32, u32) -> bool) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let mut hue = [0u64; HUE_BINS];
        let mut sat = [0u64; SAT_BINS];
        let mut val = [0u64; VAL_BINS];
        let (mut n, mut chroma) = (0u64, 0u64);
        let total = u64::from(w) * u64::from(h);
        let stride =
            if total > MAX_PIXELS { ((total as f64 / MAX_PIXELS as f64).sqrt().ceil() as u32).max(1) } else { 1 };
        for y in (0..h).step_by(stride as usize) {
            for x in (0..w).step_by(stride as usize) {
                if !keep(x, y) {
                    continue;
                }
                let [r, g, b] = img.get_pixel(x, y).0;
                let (hh, s, v) = rgb_to_hsv(r, g, b);
                n += 1;
                sat[bin(s, 0.0, 1.0, SAT_BINS)] += 1;
                val[bin(v, 0.0, 1.0, VAL_BINS)] += 1;
                if s >= CHROMA_MIN && v >= CHROMA_MIN {
                    chroma += 1;
                    hue[bin(hh, 0.0, 360.0, HUE_BINS)] += 1;
                }
            }
        }
        let mut f = Vec::with_capacity(N_FEATURES);
        let frac = |c: u64, d: u64| if d == 0 { 0.0 } else { c as f32 / d as f32 };
        f.extend(hue.iter().map(|&c| frac(c, chroma)));
        f.extend(sat.iter().map(|&c| frac(c, n)));
        f.extend(val.iter().map(|&c| frac(c, n)));
        f.push(frac(chroma, n));
        f
    }

    /// Fits the baseline with the default penalty [`Self::LAMBDA`].
    pub fn fit(x: &[Vec<f32>], y: &[usize], n_classes: usize, seed: u64) -> Result<Self, EvalError> {
        Self::fit_with(x, y, n_classes, Self::LAMBDA, seed)
    }

    /// Fits the baseline with L2 strength `lambda`.
    pub fn fit_with(x: &[Vec<f32>], y: &[usize], n_classes: usize, lambda: f64, seed: u64) -> Result<Self, EvalError> {
        const WHAT: &str = "colour shortcut";
        if x.len() != y.len() {
            return Err(EvalError::LengthMismatch { what: WHAT, left: y.len(), right: x.len() });
        }
        if x.is_empty() {
            return Err(EvalError::Invalid { what: WHAT, reason: "no training images".to_string() });
        }
        if n_classes < 2 {
            return Err(EvalError::Invalid { what: WHAT, reason: format!("{n_classes} classes; need at least 2") });
        }
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(EvalError::Invalid { what: WHAT, reason: format!("L2 strength {lambda} must be positive") });
        }
        let d = x[0].len();
        for (index, (row, &label)) in x.iter().zip(y).enumerate() {
            if row.len() != d {
                return Err(EvalError::BadRow { what: WHAT, index, got: row.len(), expected: d });
            }
            if label >= n_classes {
                return Err(EvalError::BadLabel { what: WHAT, index, label, n_classes });
            }
            if let Some(v) = row.iter().find(|v| !v.is_finite()) {
                return Err(EvalError::Invalid { what: WHAT, reason: format!("feature row #{index} holds {v}") });
            }
        }

        // Standardise; a constant feature keeps std 1 so it stays 0.
        let n = x.len() as f64;
        let mut mean = vec![0.0; d];
        for row in x {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v) / n;
            }
        }
        let mut std = vec![0.0; d];
        for row in x {
            for j in 0..d {
                let c = f64::from(row[j]) - mean[j];
                std[j] += c * c / n;
            }
        }
        for s in &mut std {
            *s = if *s > 1e-12 { s.sqrt() } else { 1.0 };
        }
        // Design matrix with an intercept column.
        let p = d + 1;
        let xs: Vec<Vec<f64>> = x
            .iter()
            .map(|row| {
                let mut r: Vec<f64> = (0..d).map(|j| (f64::from(row[j]) - mean[j]) / std[j]).collect();
                r.push(1.0);
                r
            })
            .collect();

        let step = 1.0 / Self::curvature_bound(&xs, lambda, seed);
        let k = n_classes;
        let grad_of = |w: &[Vec<f64>], g: &mut [Vec<f64>]| {
            for gc in g.iter_mut() {
                gc.iter_mut().for_each(|v| *v = 0.0);
            }
            let mut z = vec![0.0; k];
            for (row, &label) in xs.iter().zip(y) {
                for c in 0..k {
                    z[c] = w[c].iter().zip(row).map(|(a, b)| a * b).sum();
                }
                softmax_into(&mut z);
                for c in 0..k {
                    let r = (z[c] - if c == label { 1.0 } else { 0.0 }) / n;
                    for (gj, xj) in g[c].iter_mut().zip(row) {
                        *gj += r * xj;
                    }
                }
            }
            let mut norm2 = 0.0;
            for c in 0..k {
                for j in 0..p {
                    if j < d {
                        g[c][j] += lambda * w[c][j];
                    }
                    norm2 += g[c][j] * g[c][j];
                }
            }
            norm2.sqrt()
        };

        // Nesterov acceleration (FISTA momentum schedule without a prox step).
        let mut w = vec![vec![0.0; p]; k];
        let mut v = w.clone();
        let mut g = vec![vec![0.0; p]; k];
        let mut t = 1.0_f64;
        let mut iterations = 0;
        for it in 0..Self::MAX_ITER {
            iterations = it + 1;
            let gn = grad_of(&v, &mut g);
            if gn < Self::TOL {
                w = v.clone();
                break;
            }
            let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
            let beta = (t - 1.0) / t_next;
            for c in 0..k {
                for j in 0..p {
                    let w_new = v[c][j] - step * g[c][j];
                    v[c][j] = w_new + beta * (w_new - w[c][j]);
                    w[c][j] = w_new;
                }
            }
            t = t_next;
        }
        let final_gradient_norm = grad_of(&w, &mut g);
        Ok(ColourShortcut { n_classes, mean, std, weights: w, lambda, iterations, final_gradient_norm })
    }

    /// Upper bound on the curvature of the penalised softmax loss: `0.5 * lambda_max(X'X/n) +
    /// lambda` (the softmax Hessian is bounded by `0.5 * I` per sample, Böhning 1992).
    // A symmetric matrix filled by (row, column) indices: iterators would hide the symmetry.
    #[allow(clippy::needless_range_loop)]
    fn curvature_bound(xs: &[Vec<f64>], lambda: f64, seed: u64) -> f64 {
        let p = xs.first().map_or(0, Vec::len);
        let n = xs.len() as f64;
        let mut gram = vec![vec![0.0; p]; p];
        for row in xs {
            for a in 0..p {
                for b in a..p {
                    gram[a][b] += row[a] * row[b] / n;
                }
            }
        }
        for a in 0..p {
            for b in 0..a {
                gram[a][b] = gram[b][a];
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v: Vec<f64> = (0..p).map(|_| rng.gen_range(0.5..1.5)).collect();
        let mut eig = 1.0;
        for _ in 0..100 {
            let mv: Vec<f64> = gram.iter().map(|r| r.iter().zip(&v).map(|(a, b)| a * b).sum()).collect();
            let norm = mv.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm <= 0.0 {
                break;
            }
            eig = norm / v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v = mv.iter().map(|x| x / norm).collect();
        }
        // 10% margin: power iteration approaches the top eigenvalue from below.
        0.5 * eig * 1.1 + lambda
    }

    /// Class probabilities for one feature vector.
    pub fn predict_proba(&self, x: &[f32]) -> Result<Vec<f64>, EvalError> {
        let d = self.mean.len();
        if x.len() != d {
            return Err(EvalError::BadRow { what: "colour shortcut prediction", index: 0, got: x.len(), expected: d });
        }
        let mut z: Vec<f64> = self
            .weights
            .iter()
            .map(|wc| {
                let mut s = wc[d];
                for j in 0..d {
                    s += wc[j] * (f64::from(x[j]) - self.mean[j]) / self.std[j];
                }
                s
            })
            .collect();
        softmax_into(&mut z);
        Ok(z)
    }

    /// Class probabilities for one image.
    pub fn predict_image(&self, img: &RgbImage) -> Result<Vec<f64>, EvalError> {
        self.predict_proba(&Self::features(img))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn hsv_of_primaries() {
        assert_eq!(rgb_to_hsv(255, 0, 0), (0.0, 1.0, 1.0));
        assert_eq!(rgb_to_hsv(0, 255, 0), (120.0, 1.0, 1.0));
        assert_eq!(rgb_to_hsv(0, 0, 255), (240.0, 1.0, 1.0));
        let (h, s, v) = rgb_to_hsv(255, 0, 255);
        assert_eq!((h, s, v), (300.0, 1.0, 1.0));
        assert_eq!(rgb_to_hsv(128, 128, 128).1, 0.0);
    }

    #[test]
    fn features_are_fractions() {
        let mut img = RgbImage::from_pixel(10, 10, Rgb([255, 255, 255]));
        for x in 0..5 {
            for y in 0..10 {
                img.put_pixel(x, y, Rgb([150, 60, 160])); // violet, hue ~296
            }
        }
        let f = ColourShortcut::features(&img);
        assert_eq!(f.len(), N_FEATURES);
        let hue_sum: f32 = f[..HUE_BINS].iter().sum();
        assert!((hue_sum - 1.0).abs() < 1e-6);
        assert!((f[HUE_BINS - 4] - 1.0).abs() < 1e-6); // 280..300 degrees
        assert!((f[N_FEATURES - 1] - 0.5).abs() < 1e-6);
        assert!(ColourShortcut::features(&RgbImage::new(0, 0)).iter().all(|v| *v == 0.0));
    }

    fn smear(seed: u64, purple: bool) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        RgbImage::from_fn(24, 24, |_, _| {
            let j: i16 = rng.gen_range(-25..25);
            let c = |v: i16| (v + j).clamp(0, 255) as u8;
            if rng.gen_bool(0.3) {
                // stained cell: stain batch differs a little by class
                if purple {
                    Rgb([c(120), c(60), c(170)])
                } else {
                    Rgb([c(170), c(70), c(150)])
                }
            } else {
                Rgb([c(235), c(220), c(225)])
            }
        })
    }

    #[test]
    fn separates_stain_batches_and_reaches_optimum() {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..60 {
            x.push(ColourShortcut::features(&smear(i, i % 2 == 0)));
            y.push((i % 2) as usize);
        }
        let m = ColourShortcut::fit(&x, &y, 2, 1).unwrap();
        assert!(m.final_gradient_norm < 1e-5, "gradient {}", m.final_gradient_norm);
        let mut correct = 0;
        for i in 100..140 {
            let pr = m.predict_image(&smear(i, i % 2 == 0)).unwrap();
            assert!((pr.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            if (pr[1] > 0.5) == (i % 2 == 1) {
                correct += 1;
            }
        }
        assert!(correct >= 38, "{correct}/40");
        let again = ColourShortcut::fit(&x, &y, 2, 1).unwrap();
        assert_eq!(m, again);
    }

    /// Constant features: the multinomial fit can only learn the intercepts, which the
    /// penalty leaves free, so it must return the class frequencies.
    #[test]
    fn multinomial_fit_matches_class_frequencies_without_signal() {
        let x: Vec<Vec<f32>> = (0..90).map(|_| vec![0.5, 0.25]).collect();
        let y: Vec<usize> = (0..90).map(|i| if i < 45 { 0 } else { 1 + i % 2 }).collect();
        let m = ColourShortcut::fit(&x, &y, 3, 0).unwrap();
        let p = m.predict_proba(&[0.5, 0.25]).unwrap();
        // Constant features carry nothing: probabilities are the class frequencies
        // (45, 22 and 23 of 90).
        let freq = [0.5, 22.0 / 90.0, 23.0 / 90.0];
        assert!(p.iter().zip(freq).all(|(a, b)| (a - b).abs() < 1e-6), "{p:?}");
        assert!(m.predict_proba(&[0.5]).is_err());
    }

    #[test]
    fn rejects_bad_training_input() {
        assert!(ColourShortcut::fit(&[], &[], 2, 0).is_err());
        assert!(ColourShortcut::fit(&[vec![0.1]], &[3], 2, 0).is_err());
        assert!(ColourShortcut::fit(&[vec![0.1], vec![0.1, 0.2]], &[0, 1], 2, 0).is_err());
        assert!(ColourShortcut::fit(&[vec![0.1]], &[0], 1, 0).is_err());
    }
}
