//! Augmentation, between preprocessing and batching: a u8 ROI crop (decoded and preprocessed
//! once per run) -> a randomly flipped / rotated / rescaled / shifted and colour-jittered view,
//! written straight into the normalised `[3, H, W]` f32 layout the model reads.
//!
//! The colour jitter (hue, saturation, brightness, contrast, per-channel stain gains,
//! occasional grey; strong in the paper profile, half strength in the cpu profile) is there
//! because the project is judged on other labs' stains: the model must not lean on colour.
//! Every random draw comes from the caller's ChaCha8 RNG, so a run is reproducible from its
//! seed.

use allscan_preprocess::Normalization;
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Augmentation settings; part of the run's config tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    /// Master switch (`false`: every view is the deterministic crop, so features can be cached).
    pub enabled: bool,
    /// Random horizontal/vertical flips and 90-degree rotations (the 8 symmetries of a square:
    /// a cell on a slide has no up).
    pub dihedral: bool,
    /// With `dihedral` off: a left-right mirror half of the time, nothing else (the seed
    /// script's Keras `horizontal_flip=True`).
    #[serde(default)]
    pub horizontal_flip: bool,
    /// Free rotation up to this many degrees on top of the 90-degree steps (reflect padding).
    pub rotate_deg: f32,
    /// Zoom factor drawn from `[1 - scale, 1 + scale]`.
    pub scale: f32,
    /// Shift drawn from `[-translate, translate]` times the side, on each axis.
    pub translate: f32,
    /// Hue shift drawn from `[-hue, hue]`, as a fraction of the colour circle.
    pub hue: f32,
    /// Saturation factor drawn from `[1 - saturation, 1 + saturation]`.
    pub saturation: f32,
    /// Brightness factor drawn from `[1 - brightness, 1 + brightness]`.
    pub brightness: f32,
    /// Contrast factor around the mean grey, drawn from `[1 - contrast, 1 + contrast]`.
    pub contrast: f32,
    /// Per-channel stain gains drawn from `[1 - channel_gain, 1 + channel_gain]`.
    pub channel_gain: f32,
    /// Probability of replacing the view by its grey levels (a colour-free example).
    pub grey_probability: f32,
    /// Gaussian blur with a sigma drawn from `[0, blur_sigma]` input pixels (optics and focus
    /// differ between labs; 0 = off).
    #[serde(default)]
    pub blur_sigma: f32,
    /// Additive Gaussian noise with a standard deviation drawn from `[0, noise]` (0..1 scale).
    #[serde(default)]
    pub noise: f32,
    /// Probability of a JPEG round trip at a quality drawn from `jpeg_quality` (0 = off).
    #[serde(default)]
    pub jpeg_probability: f32,
    /// Range of that JPEG quality.
    #[serde(default = "jpeg_range")]
    pub jpeg_quality: [u8; 2],
}

fn jpeg_range() -> [u8; 2] {
    [40, 95]
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::strong()
    }
}

impl AugmentConfig {
    /// The training default: geometry plus strong colour/stain jitter.
    pub fn strong() -> Self {
        Self {
            enabled: true,
            dihedral: true,
            horizontal_flip: false,
            rotate_deg: 15.0,
            scale: 0.1,
            translate: 0.06,
            hue: 0.08,
            saturation: 0.4,
            brightness: 0.25,
            contrast: 0.25,
            channel_gain: 0.15,
            grey_probability: 0.1,
            blur_sigma: 0.0,
            noise: 0.0,
            jpeg_probability: 0.0,
            jpeg_quality: jpeg_range(),
        }
    }

    /// The `cell` profile's: geometry, no hue jitter (its input is grey), brightness / contrast
    /// jitter, and the degradations that tell labs apart: blur, noise, JPEG.
    pub fn cell() -> Self {
        Self {
            rotate_deg: 180.0,
            scale: 0.1,
            translate: 0.04,
            hue: 0.0,
            saturation: 0.0,
            brightness: 0.15,
            contrast: 0.25,
            channel_gain: 0.0,
            grey_probability: 0.0,
            blur_sigma: 1.2,
            noise: 0.04,
            jpeg_probability: 0.5,
            ..Self::strong()
        }
    }

    /// Geometry as in [`strong`](Self::strong), colour/stain jitter at half its strength
    /// (hue ±0.04, saturation and per-channel gains ±20% / ±7%, brightness and contrast ±12%,
    /// 5% grey views): the cpu profile's default. On Aria (split seed 1, 389 held-out fields,
    /// 75 epochs at 112 px, 2026-11-30) held-out subtype accuracy was 96.4% with `strong`,
    /// 99.49% with this and 99.74% with no colour jitter at all, while the colour-only shortcut
    /// alone reaches 96.7%: Aria's classes differ in stain, and the stronger the jitter, the
    /// less of that the model may use.
    pub fn moderate() -> Self {
        Self {
            hue: 0.04,
            saturation: 0.2,
            brightness: 0.12,
            contrast: 0.12,
            channel_gain: 0.07,
            grey_probability: 0.05,
            ..Self::strong()
        }
    }

    /// No augmentation: the deterministic view.
    pub fn none() -> Self {
        Self { enabled: false, ..Self::strong() }
    }

    /// Whether every view of an image is the same (so the backbone's output can be cached).
    pub fn is_deterministic(&self) -> bool {
        !self.enabled
    }

    /// Whether the geometry is jittered beyond the dihedral symmetries.
    fn warps(&self) -> bool {
        self.rotate_deg > 0.0 || self.scale > 0.0 || self.translate > 0.0
    }
}

/// The deterministic view: `[3, H, W]` normalised (the same values inference computes).
pub fn plain_view(img: &RgbImage, norm: &Normalization, out: &mut [f32]) {
    let v = allscan_preprocess::to_chw_normalized(img, norm);
    out.copy_from_slice(&v);
}

/// One random view of `img` into `out` (`3 * H * W` floats, planar RGB, normalised with
/// `norm`). With `cfg.enabled == false` this is [`plain_view`] and draws nothing from `rng`.
pub fn augment_view(img: &RgbImage, cfg: &AugmentConfig, norm: &Normalization, rng: &mut impl Rng, out: &mut [f32]) {
    if !cfg.enabled {
        plain_view(img, norm, out);
        return;
    }
    let degraded = degrade(img, cfg, rng);
    let img = degraded.as_ref().unwrap_or(img);
    let (w, h) = img.dimensions();
    let (wf, hf) = (w as f32, h as f32);
    let plane = (w * h) as usize;
    // Geometry: an inverse map from output pixel to source pixel.
    let sym = if cfg.dihedral {
        rng.gen_range(0..8u8)
    } else if cfg.horizontal_flip {
        // Symmetry 4 of `dihedral` is x -> -x, the left-right mirror.
        4 * rng.gen_range(0..2u8)
    } else {
        0
    };
    let angle = if cfg.rotate_deg > 0.0 { rng.gen_range(-cfg.rotate_deg..=cfg.rotate_deg).to_radians() } else { 0.0 };
    let zoom = if cfg.scale > 0.0 { rng.gen_range(1.0 - cfg.scale..=1.0 + cfg.scale) } else { 1.0 };
    let (tx, ty) = if cfg.translate > 0.0 {
        (rng.gen_range(-cfg.translate..=cfg.translate) * wf, rng.gen_range(-cfg.translate..=cfg.translate) * hf)
    } else {
        (0.0, 0.0)
    };
    // Colour draws.
    let jitter = |rng: &mut dyn rand::RngCore, a: f32| -> f32 {
        if a > 0.0 {
            rng.gen_range(1.0 - a..=1.0 + a)
        } else {
            1.0
        }
    };
    let hue = if cfg.hue > 0.0 { rng.gen_range(-cfg.hue..=cfg.hue) } else { 0.0 };
    let sat = jitter(rng, cfg.saturation);
    let bright = jitter(rng, cfg.brightness);
    let contrast = jitter(rng, cfg.contrast);
    let gains = [jitter(rng, cfg.channel_gain), jitter(rng, cfg.channel_gain), jitter(rng, cfg.channel_gain)];
    let grey = cfg.grey_probability > 0.0 && rng.gen::<f32>() < cfg.grey_probability;
    let noise = if cfg.noise > 0.0 { rng.gen_range(0.0..=cfg.noise) } else { 0.0 };

    let (cx, cy) = ((wf - 1.0) / 2.0, (hf - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let warp = cfg.warps();
    let raw = img.as_raw();
    let mut rgb = vec![[0f32; 3]; plane];
    for oy in 0..h {
        for ox in 0..w {
            // Output -> centred, undo the dihedral symmetry, then rotation/zoom/shift.
            let (mut x, mut y) = (ox as f32 - cx, oy as f32 - cy);
            (x, y) = dihedral(sym, x, y);
            let px = if warp {
                let (ux, uy) = (x - tx, y - ty);
                let (rx, ry) = ((cos * ux + sin * uy) / zoom, (-sin * ux + cos * uy) / zoom);
                sample_bilinear(raw, w, h, rx + cx, ry + cy)
            } else {
                let (sx, sy) = ((x + cx).round() as u32, (y + cy).round() as u32);
                let i = 3 * (sy.min(h - 1) * w + sx.min(w - 1)) as usize;
                [raw[i] as f32, raw[i + 1] as f32, raw[i + 2] as f32]
            };
            rgb[(oy * w + ox) as usize] = px;
        }
    }
    // Colour: stain gains -> HSV hue/saturation -> brightness -> contrast -> optional grey.
    let mut mean_grey = 0.0f64;
    for px in rgb.iter_mut() {
        let mut c = [px[0] / 255.0 * gains[0], px[1] / 255.0 * gains[1], px[2] / 255.0 * gains[2]];
        if hue != 0.0 || sat != 1.0 {
            let (hh, ss, vv) = rgb_to_hsv(c);
            c = hsv_to_rgb((hh + hue).rem_euclid(1.0), (ss * sat).clamp(0.0, 1.0), vv);
        }
        for v in c.iter_mut() {
            *v = (*v * bright).clamp(0.0, 1.0);
        }
        mean_grey += luma(c) as f64;
        *px = c;
    }
    let mean_grey = (mean_grey / plane.max(1) as f64) as f32;
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / if norm.std[c] == 0.0 { 1.0 } else { norm.std[c] });
    for (i, px) in rgb.iter().enumerate() {
        let mut c = *px;
        for v in c.iter_mut() {
            *v = ((*v - mean_grey) * contrast + mean_grey).clamp(0.0, 1.0);
        }
        if grey {
            let l = luma(c);
            c = [l, l, l];
        }
        if noise > 0.0 {
            // Grey noise (the same on all channels) from a Box-Muller pair.
            let (u1, u2): (f32, f32) = (rng.gen_range(1e-6..1.0), rng.gen());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos() * noise;
            for v in c.iter_mut() {
                *v = (*v + z).clamp(0.0, 1.0);
            }
        }
        for ch in 0..3 {
            out[ch * plane + i] = (c[ch] - norm.mean[ch]) * scale[ch];
        }
    }
}

/// Blur and JPEG round trip of the u8 crop, drawn from `rng` only when enabled; `None` when
/// nothing was applied.
fn degrade(img: &RgbImage, cfg: &AugmentConfig, rng: &mut impl Rng) -> Option<RgbImage> {
    let mut out: Option<RgbImage> = None;
    if cfg.blur_sigma > 0.0 {
        let sigma = rng.gen_range(0.0..=cfg.blur_sigma);
        if sigma > 0.2 {
            out = Some(image::imageops::blur(img, sigma));
        }
    }
    if cfg.jpeg_probability > 0.0 && rng.gen::<f32>() < cfg.jpeg_probability {
        let [lo, hi] = cfg.jpeg_quality;
        let q = rng.gen_range(lo.min(hi)..=hi.max(lo)).clamp(1, 100);
        let src = out.as_ref().unwrap_or(img);
        let mut buf = Vec::new();
        let encoded = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q).encode_image(src);
        // An encoder or decoder failure on a valid in-memory crop would be a bug; the view is
        // then simply not JPEG-degraded.
        if encoded.is_ok() {
            if let Ok(d) = image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg) {
                out = Some(d.to_rgb8());
            }
        }
    }
    out
}

/// One of the 8 symmetries of the square, applied to centred coordinates.
fn dihedral(sym: u8, x: f32, y: f32) -> (f32, f32) {
    let (x, y) = match sym & 3 {
        0 => (x, y),
        1 => (-y, x),
        2 => (-x, -y),
        _ => (y, -x),
    };
    if sym & 4 != 0 {
        (-x, y)
    } else {
        (x, y)
    }
}

/// Bilinear sample with reflect padding (no artificial border colour for the model to learn).
fn sample_bilinear(raw: &[u8], w: u32, h: u32, x: f32, y: f32) -> [f32; 3] {
    let reflect = |v: f32, n: u32| -> f32 {
        let max = (n - 1) as f32;
        if max <= 0.0 {
            return 0.0;
        }
        let period = 2.0 * max;
        let m = v.rem_euclid(period);
        if m > max {
            period - m
        } else {
            m
        }
    };
    let (x, y) = (reflect(x, w), reflect(y, h));
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: u32, yy: u32, c: usize| raw[3 * (yy * w + xx) as usize + c] as f32;
    std::array::from_fn(|c| {
        let top = at(x0, y0, c) * (1.0 - fx) + at(x1, y0, c) * fx;
        let bottom = at(x0, y1, c) * (1.0 - fx) + at(x1, y1, c) * fx;
        top * (1.0 - fy) + bottom * fy
    })
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// RGB in 0..1 -> (hue 0..1, saturation, value).
fn rgb_to_hsv(c: [f32; 3]) -> (f32, f32, f32) {
    let max = c[0].max(c[1]).max(c[2]);
    let min = c[0].min(c[1]).min(c[2]);
    let d = max - min;
    let s = if max > 0.0 { d / max } else { 0.0 };
    let h = if d <= 0.0 {
        0.0
    } else if max == c[0] {
        ((c[1] - c[2]) / d).rem_euclid(6.0) / 6.0
    } else if max == c[1] {
        ((c[2] - c[0]) / d + 2.0) / 6.0
    } else {
        ((c[0] - c[1]) / d + 4.0) / 6.0
    };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gradient(n: u32) -> RgbImage {
        RgbImage::from_fn(n, n, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]))
    }

    #[test]
    fn disabled_is_the_plain_normalised_view_and_draws_nothing() {
        let img = gradient(16);
        let norm = Normalization::IMAGENET;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut a = vec![0f32; 3 * 16 * 16];
        augment_view(&img, &AugmentConfig::none(), &norm, &mut rng, &mut a);
        assert_eq!(a, allscan_preprocess::to_chw_normalized(&img, &norm));
        assert_eq!(rng.gen::<u64>(), ChaCha8Rng::seed_from_u64(1).gen::<u64>());
    }

    #[test]
    fn same_seed_same_view_different_seed_different_view() {
        let img = gradient(16);
        let norm = Normalization::IMAGENET;
        let cfg = AugmentConfig::strong();
        let view = |seed| {
            let mut out = vec![0f32; 3 * 16 * 16];
            augment_view(&img, &cfg, &norm, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
            out
        };
        assert_eq!(view(7), view(7));
        assert_ne!(view(7), view(8));
        assert!(view(3).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn dihedral_symmetries_are_a_group_of_eight_distinct_maps() {
        let p = (1.0, 2.0);
        let images: std::collections::BTreeSet<(i32, i32)> = (0..8)
            .map(|s| {
                let (x, y) = dihedral(s, p.0, p.1);
                (x as i32, y as i32)
            })
            .collect();
        assert_eq!(images.len(), 8);
    }

    #[test]
    fn horizontal_flip_alone_mirrors_left_right_and_nothing_else() {
        let img = gradient(16);
        let norm = Normalization { mean: [0.0; 3], std: [1.0; 3] };
        let cfg = AugmentConfig {
            enabled: true,
            dihedral: false,
            horizontal_flip: true,
            rotate_deg: 0.0,
            scale: 0.0,
            translate: 0.0,
            hue: 0.0,
            saturation: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            channel_gain: 0.0,
            grey_probability: 0.0,
            ..AugmentConfig::none()
        };
        let plain = allscan_preprocess::to_chw_normalized(&img, &norm);
        let mirror = allscan_preprocess::to_chw_normalized(&image::imageops::flip_horizontal(&img), &norm);
        let mut seen = [0usize; 2];
        for seed in 0..32 {
            let mut out = vec![0f32; 3 * 16 * 16];
            augment_view(&img, &cfg, &norm, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
            let close = |a: &[f32]| a.iter().zip(&out).all(|(x, y)| (x - y).abs() < 1e-6);
            match (close(&plain), close(&mirror)) {
                (true, false) => seen[0] += 1,
                (false, true) => seen[1] += 1,
                other => panic!("seed {seed}: neither the view nor its mirror ({other:?})"),
            }
        }
        assert!(seen[0] > 0 && seen[1] > 0, "both outcomes drawn: {seen:?}");
    }

    #[test]
    fn hsv_round_trips() {
        for c in [[0.2, 0.5, 0.9], [1.0, 0.0, 0.0], [0.3, 0.3, 0.3], [0.7, 0.1, 0.6]] {
            let (h, s, v) = rgb_to_hsv(c);
            let back = hsv_to_rgb(h, s, v);
            for k in 0..3 {
                assert!((back[k] - c[k]).abs() < 1e-5, "{c:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn colour_jitter_changes_colour_but_keeps_the_layout_without_geometry() {
        let img = gradient(16);
        let norm = Normalization { mean: [0.0; 3], std: [1.0; 3] };
        let cfg = AugmentConfig {
            dihedral: false,
            rotate_deg: 0.0,
            scale: 0.0,
            translate: 0.0,
            grey_probability: 0.0,
            ..AugmentConfig::strong()
        };
        let mut out = vec![0f32; 3 * 256];
        augment_view(&img, &cfg, &norm, &mut ChaCha8Rng::seed_from_u64(5), &mut out);
        // The brightest pixel of the gradient stays in the bottom-right corner.
        let lum = |i: usize| out[i] + out[256 + i] + out[512 + i];
        let brightest = (0..256).max_by(|&a, &b| lum(a).total_cmp(&lum(b))).unwrap();
        assert!(brightest >= 200, "{brightest}");
    }
}
