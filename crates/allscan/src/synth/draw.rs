//! Synthetic smears, drawing primitives: an optical-density canvas, anti-aliased star-shaped
//! blobs, value noise and the camera model (illumination, saturation, blur, sensor noise).
//! Input: shapes and stain vectors in pixel units; output: an `RgbImage`.
//!
//! Stains are drawn in optical density (Beer-Lambert: transmitted = illumination * exp(-OD)),
//! so overlapping red cells darken where they overlap and a nucleus seen through cytoplasm
//! keeps its hue, the way a transmitted-light microscope shows them.

use image::{Rgb, RgbImage};
use rand::Rng;

/// Per-pixel optical density in the three camera channels.
pub(crate) struct OdCanvas {
    pub width: u32,
    pub height: u32,
    pub od: Vec<[f32; 3]>,
}

impl OdCanvas {
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, od: vec![[0.0; 3]; (width * height) as usize] }
    }

    /// Visits every pixel centre inside `bbox` (clipped to the canvas) with `(x, y, od)`.
    pub fn for_each_in(&mut self, bbox: [f32; 4], mut f: impl FnMut(f32, f32, &mut [f32; 3])) {
        let [x0, y0, x1, y1] = clip_box(bbox, self.width, self.height);
        for y in y0..y1 {
            let row = (y * self.width) as usize;
            for x in x0..x1 {
                f(x as f32 + 0.5, y as f32 + 0.5, &mut self.od[row + x as usize]);
            }
        }
    }
}

/// `[x0, y0, x1, y1)` pixel range covering a float box, clipped to the image.
pub(crate) fn clip_box(bbox: [f32; 4], width: u32, height: u32) -> [u32; 4] {
    let clamp = |v: f32, hi: u32| v.max(0.0).min(hi as f32) as u32;
    [
        clamp(bbox[0].floor(), width),
        clamp(bbox[1].floor(), height),
        clamp(bbox[2].ceil(), width),
        clamp(bbox[3].ceil(), height),
    ]
}

/// One term `amp * cos(k * theta + phase)` of a blob's radius function.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Harmonic {
    k: usize,
    amp: f32,
    cos_phase: f32,
    sin_phase: f32,
}

/// Highest harmonic order a blob may use.
const MAX_ORDER: usize = 8;

impl Harmonic {
    pub fn new(k: usize, amp: f32, phase: f32) -> Self {
        Self { k: k.clamp(1, MAX_ORDER), amp, cos_phase: phase.cos(), sin_phase: phase.sin() }
    }
}

/// A star-shaped blob: an ellipse whose radius is modulated by a few harmonics.
/// `r(theta) = radius * (1 + sum amp_i cos(k_i theta + phase_i))` in the blob's own frame,
/// which is rotated by `rot` and squashed by `aspect` along its second axis.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub cx: f32,
    pub cy: f32,
    pub radius: f32,
    pub aspect: f32,
    cos: f32,
    sin: f32,
    pub harmonics: Vec<Harmonic>,
}

impl Blob {
    pub fn new(cx: f32, cy: f32, radius: f32, aspect: f32, rot: f32) -> Self {
        Self { cx, cy, radius, aspect, cos: rot.cos(), sin: rot.sin(), harmonics: Vec::new() }
    }

    pub fn with_harmonics(mut self, harmonics: Vec<Harmonic>) -> Self {
        self.harmonics = harmonics;
        self
    }

    /// Adds `n` random harmonics of order in `k_range` with amplitudes up to `amp_max`.
    pub fn wobbly(self, rng: &mut impl Rng, n: usize, k_range: (u32, u32), amp_max: f32) -> Self {
        let harmonics = (0..n)
            .map(|_| {
                Harmonic::new(
                    rng.gen_range(k_range.0..=k_range.1) as usize,
                    rng.gen_range(0.0..=amp_max.max(0.0)),
                    rng.gen_range(0.0..std::f32::consts::TAU),
                )
            })
            .collect();
        self.with_harmonics(harmonics)
    }

    /// The point in the blob's own frame: `(u, v)` with `v` unsquashed, and its radius.
    fn local_polar(&self, x: f32, y: f32) -> (f32, f32, f32) {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let u = dx * self.cos + dy * self.sin;
        let v = (-dx * self.sin + dy * self.cos) / self.aspect;
        (u, v, (u * u + v * v).sqrt())
    }

    /// `r(theta)` at the direction of `(u, v)`; `cos(k theta)` comes from the angle-addition
    /// recurrence on `(u, v) / rho`, which is several times cheaper than `atan2` + `cos`.
    fn boundary(&self, u: f32, v: f32, rho: f32) -> f32 {
        if self.harmonics.is_empty() {
            return self.radius;
        }
        let (c1, s1) = if rho > 1e-6 { (u / rho, v / rho) } else { (1.0, 0.0) };
        let mut cos_k = [0f32; MAX_ORDER + 1];
        let mut sin_k = [0f32; MAX_ORDER + 1];
        cos_k[0] = 1.0;
        let top = self.harmonics.iter().map(|h| h.k).max().unwrap_or(1);
        for k in 1..=top {
            cos_k[k] = cos_k[k - 1] * c1 - sin_k[k - 1] * s1;
            sin_k[k] = sin_k[k - 1] * c1 + cos_k[k - 1] * s1;
        }
        let m: f32 = self.harmonics.iter().map(|h| h.amp * (cos_k[h.k] * h.cos_phase - sin_k[h.k] * h.sin_phase)).sum();
        self.radius * (1.0 + m)
    }

    /// Coverage and relative radius at once (one boundary evaluation).
    pub fn coverage_and_relative_radius(&self, x: f32, y: f32) -> (f32, f32) {
        let (u, v, rho) = self.local_polar(x, y);
        let r = self.boundary(u, v, rho);
        let cov = ((r - rho) * self.aspect.min(1.0) + 0.5).clamp(0.0, 1.0);
        (cov, rho / r.max(1e-3))
    }

    /// Approximate signed distance in pixels, positive inside.
    pub fn signed_distance(&self, x: f32, y: f32) -> f32 {
        let (u, v, rho) = self.local_polar(x, y);
        (self.boundary(u, v, rho) - rho) * self.aspect.min(1.0)
    }

    /// Anti-aliased coverage of the pixel centred at `(x, y)`, in `[0, 1]`.
    pub fn coverage(&self, x: f32, y: f32) -> f32 {
        (self.signed_distance(x, y) + 0.5).clamp(0.0, 1.0)
    }

    /// Distance from the centre relative to the local boundary radius (0 at the centre,
    /// 1 on the outline), for radial profiles such as the red cell's central pallor.
    pub fn relative_radius(&self, x: f32, y: f32) -> f32 {
        let (u, v, rho) = self.local_polar(x, y);
        rho / self.boundary(u, v, rho).max(1e-3)
    }

    /// Bounding box `[x0, y0, x1, y1]` with a one-pixel margin for anti-aliasing.
    pub fn bbox(&self) -> [f32; 4] {
        let wobble: f32 = self.harmonics.iter().map(|h| h.amp.abs()).sum();
        let e = self.radius * (1.0 + wobble) * self.aspect.max(1.0) + 1.5;
        [self.cx - e, self.cy - e, self.cx + e, self.cy + e]
    }
}

/// Smooth value noise in roughly `[-1, 1]` with features about `cell` pixels across,
/// defined over a fixed box (outside it the edge values repeat).
pub(crate) struct ValueNoise {
    x0: f32,
    y0: f32,
    cell: f32,
    gw: usize,
    gh: usize,
    grid: Vec<f32>,
}

impl ValueNoise {
    pub fn new(rng: &mut impl Rng, bbox: [f32; 4], cell: f32) -> Self {
        let cell = cell.max(0.5);
        let gw = (((bbox[2] - bbox[0]) / cell).ceil() as usize + 2).clamp(2, 512);
        let gh = (((bbox[3] - bbox[1]) / cell).ceil() as usize + 2).clamp(2, 512);
        let grid = (0..gw * gh).map(|_| rng.gen_range(-1.0f32..=1.0)).collect();
        Self { x0: bbox[0], y0: bbox[1], cell, gw, gh, grid }
    }

    pub fn sample(&self, x: f32, y: f32) -> f32 {
        let fx = ((x - self.x0) / self.cell).clamp(0.0, (self.gw - 1) as f32 - 1e-3);
        let fy = ((y - self.y0) / self.cell).clamp(0.0, (self.gh - 1) as f32 - 1e-3);
        let (ix, iy) = (fx as usize, fy as usize);
        let (tx, ty) = (smooth(fx - ix as f32), smooth(fy - iy as f32));
        let g = |i: usize, j: usize| self.grid[j * self.gw + i];
        let top = g(ix, iy) + (g(ix + 1, iy) - g(ix, iy)) * tx;
        let bottom = g(ix, iy + 1) + (g(ix + 1, iy + 1) - g(ix, iy + 1)) * tx;
        top + (bottom - top) * ty
    }
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Hermite step from 0 at `e0` to 1 at `e1` (either order).
pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    smooth(((x - e0) / (e1 - e0)).clamp(0.0, 1.0))
}

/// The microscope and camera between the stained slide and the saved file.
#[derive(Debug, Clone)]
pub(crate) struct Camera {
    /// Background light in linear `[0, 1]` RGB (its tint: violet, blue-grey, yellowish, white).
    pub illumination: [f32; 3],
    /// Colour saturation factor around the luma.
    pub saturation: f32,
    /// Output gamma and gain (exposure).
    pub gamma: f32,
    pub gain: f32,
    /// Defocus: box-blur radius in pixels (may be fractional: the fraction mixes two radii).
    pub blur: f32,
    /// Sensor noise, standard deviation on the `[0, 1]` scale.
    pub noise: f32,
}

impl Camera {
    /// Develops the optical densities into an 8-bit image.
    pub fn develop(&self, canvas: &OdCanvas, rng: &mut impl Rng) -> RgbImage {
        let (w, h) = (canvas.width as usize, canvas.height as usize);
        let weights = [0.299f32, 0.587, 0.114];
        // Tone curve as a table: `powf` per channel per pixel was a tenth of the run time.
        const STEPS: usize = 1024;
        let curve: Vec<f32> = (0..=STEPS).map(|i| (i as f32 / STEPS as f32).powf(self.gamma) * self.gain).collect();
        let tone = |v: f32| {
            let t = v.clamp(0.0, 1.0) * STEPS as f32;
            let i = (t as usize).min(STEPS - 1);
            curve[i] + (curve[i + 1] - curve[i]) * (t - i as f32)
        };
        let mut rgb: Vec<[f32; 3]> = canvas
            .od
            .iter()
            .map(|od| {
                let mut c = [0f32; 3];
                for ch in 0..3 {
                    c[ch] = self.illumination[ch] * (-od[ch]).exp();
                }
                let luma: f32 = (0..3).map(|ch| c[ch] * weights[ch]).sum();
                for v in &mut c {
                    *v = tone(luma + (*v - luma) * self.saturation);
                }
                c
            })
            .collect();
        box_blur(&mut rgb, w, h, self.blur);
        let mut img = RgbImage::new(canvas.width, canvas.height);
        let sigma = self.noise * 255.0;
        for (px, c) in img.pixels_mut().zip(rgb.iter()) {
            let mut out = [0u8; 3];
            for ch in 0..3 {
                let v = c[ch] * 255.0 + sigma * approx_normal(rng) + 0.5;
                out[ch] = v.clamp(0.0, 255.0) as u8;
            }
            *px = Rgb(out);
        }
        img
    }
}

/// A roughly standard normal draw for sensor noise: the sum of four uniforms taken from one
/// 64-bit draw (Irwin-Hall), rescaled. Tails are cut at about 3.5 sigma, which noise can spare.
fn approx_normal(rng: &mut impl Rng) -> f32 {
    let bits = rng.next_u64();
    let sum: u32 = (0..4).map(|i| ((bits >> (16 * i)) & 0xFFFF) as u32).sum();
    // Mean 2 and variance 4/12 in units of 65536.
    (sum as f32 / 65536.0 - 2.0) * 1.732_050_8
}

/// Separable box blur with a fractional radius (mixes the two nearest integer radii).
pub(crate) fn box_blur(buf: &mut [[f32; 3]], w: usize, h: usize, radius: f32) {
    if radius <= 0.0 || w == 0 || h == 0 {
        return;
    }
    let r0 = radius.floor() as usize;
    let t = radius - r0 as f32;
    let blurred_lo = if r0 == 0 { buf.to_vec() } else { box_blur_int(buf, w, h, r0) };
    let blurred_hi = box_blur_int(buf, w, h, r0 + 1);
    for ((o, lo), hi) in buf.iter_mut().zip(blurred_lo).zip(blurred_hi) {
        for ch in 0..3 {
            o[ch] = lo[ch] * (1.0 - t) + hi[ch] * t;
        }
    }
}

fn box_blur_int(src: &[[f32; 3]], w: usize, h: usize, r: usize) -> Vec<[f32; 3]> {
    // One running-sum pass along rows or columns; edges clamp, so a border pixel is never
    // darkened by "outside" black.
    let pass = |src: &[[f32; 3]], horizontal: bool| -> Vec<[f32; 3]> {
        let mut out = vec![[0f32; 3]; w * h];
        let (len, lines) = if horizontal { (w, h) } else { (h, w) };
        let idx = |line: usize, i: usize| if horizontal { line * w + i } else { i * w + line };
        for line in 0..lines {
            let mut acc = [0f32; 3];
            let mut n = 0.0f32;
            for j in 0..=r.min(len - 1) {
                let p = src[idx(line, j)];
                (0..3).for_each(|ch| acc[ch] += p[ch]);
                n += 1.0;
            }
            for i in 0..len {
                out[idx(line, i)] = [acc[0] / n, acc[1] / n, acc[2] / n];
                // Slide: add i + r + 1, drop i - r.
                if i + r + 1 < len {
                    let p = src[idx(line, i + r + 1)];
                    (0..3).for_each(|ch| acc[ch] += p[ch]);
                    n += 1.0;
                }
                if i >= r {
                    let p = src[idx(line, i - r)];
                    (0..3).for_each(|ch| acc[ch] -= p[ch]);
                    n -= 1.0;
                }
            }
        }
        out
    };
    let tmp = pass(src, true);
    pass(&tmp, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disc_coverage_matches_its_area() {
        let mut canvas = OdCanvas::new(64, 64);
        let blob = Blob::new(32.3, 31.7, 12.0, 1.0, 0.0);
        let mut area = 0.0;
        canvas.for_each_in(blob.bbox(), |x, y, _| area += blob.coverage(x, y));
        let want = std::f32::consts::PI * 144.0;
        assert!((area - want).abs() / want < 0.01, "area {area} vs {want}");
    }

    #[test]
    fn running_box_blur_matches_the_direct_sum() {
        let (w, h, r) = (9usize, 7usize, 2usize);
        let src: Vec<[f32; 3]> = (0..w * h).map(|i| [(i * 7 % 11) as f32, (i % 5) as f32, 1.0]).collect();
        let fast = box_blur_int(&src, w, h, r);
        for y in 0..h {
            for x in 0..w {
                let (mut acc, mut n) = (0.0, 0.0);
                for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
                    for xx in x.saturating_sub(r)..=(x + r).min(w - 1) {
                        acc += src[yy * w + xx][0];
                        n += 1.0;
                    }
                }
                assert!((fast[y * w + x][0] - acc / n).abs() < 1e-4, "({x},{y})");
            }
        }
    }

    #[test]
    fn blur_keeps_a_flat_image_flat() {
        let mut buf = vec![[0.5f32, 0.25, 1.0]; 20 * 10];
        box_blur(&mut buf, 20, 10, 1.6);
        assert!(buf.iter().all(|p| (p[0] - 0.5).abs() < 1e-5 && (p[2] - 1.0).abs() < 1e-5));
    }
}
