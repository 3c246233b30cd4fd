//! The stain-robust nucleus finder: RGB field -> nucleus mask (255 = nucleus) and the list of
//! nuclei (bounding box, area, centroid), largest first.
//!
//! Steps, each chosen for Giemsa/Wright-stained smears whatever the stain's cast:
//! 1. **Purple channel** `p = gain * ((R + B) / 2 - G)`: nuclear chromatin (azure/methylene
//!    blue + eosin) absorbs green far more than red or blue, on violet and blue-grey fields
//!    alike, while red cells (pink or grey-blue), plasma and glass stay near 0. Saturation or a
//!    hue window fails on bluish fields, where red cells are as saturated as nuclei.
//! 2. Gaussian smoothing, then **Otsu's threshold** per field, floored at `min_threshold` so a
//!    field with no purple at all yields nothing rather than noise.
//! 3. Binary **opening** (specks, thin bridges between cells), **closing** (granular chromatin),
//!    **hole filling** (pale nucleoli).
//! 4. **Touching nuclei split** where a component holds two or more distance-transform cores
//!    (a geodesic Voronoi split of the component between the cores).
//! 5. **Connected components** filtered by area, box aspect and box fill.

use std::collections::VecDeque;

use image::{GrayImage, Luma, RgbImage};
use imageproc::region_labelling::{connected_components, Connectivity};
use serde::{Deserialize, Serialize};

use crate::config::NucleusConfig;

/// An axis-aligned box in field pixels (`x`, `y` = top-left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BBox {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// One nucleus of a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nucleus {
    /// Tight bounding box of the nucleus pixels.
    pub bbox: BBox,
    /// Area in pixels.
    pub area: u32,
    /// Centroid `(x, y)` in field pixels.
    pub centroid: (f32, f32),
}

/// The finder's result for a field. No nucleus is a normal result (`nuclei` empty).
#[derive(Debug, Clone)]
pub struct NucleusResult {
    /// 255 = nucleus pixel (only the nuclei listed below).
    pub mask: GrayImage,
    /// Nuclei, largest area first.
    pub nuclei: Vec<Nucleus>,
    /// The threshold applied to the purple channel (after the floor).
    pub threshold: u8,
}

impl NucleusResult {
    /// The largest nucleus, if any.
    pub fn largest(&self) -> Option<&Nucleus> {
        self.nuclei.first()
    }
}

/// The purple channel `clamp(gain * ((R + B) / 2 - G), 0, 255)`; see the module docs.
pub fn purple_channel(img: &RgbImage, gain: f32) -> GrayImage {
    let (w, h) = img.dimensions();
    let mut out = GrayImage::new(w, h);
    // Fixed-point gain (1/256 steps): the channel is computed once per pixel on every field.
    let g256 = (gain.clamp(0.0, 255.0) * 256.0).round() as i32;
    for (o, px) in out.as_mut().iter_mut().zip(img.as_raw().chunks_exact(3)) {
        let d2 = px[0] as i32 + px[2] as i32 - 2 * px[1] as i32; // 2 * ((R + B) / 2 - G)
        *o = ((d2 * g256) >> 9).clamp(0, 255) as u8;
    }
    out
}

/// Finds leukocyte nuclei in a field (see the module docs for the steps and why).
pub fn find_nuclei(img: &RgbImage, cfg: &NucleusConfig) -> NucleusResult {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return NucleusResult { mask: GrayImage::new(w, h), nuclei: Vec::new(), threshold: 255 };
    }
    // Lengths are specified for a 224-pixel field.
    let scale = w.min(h) as f32 / 224.0;
    let radius = |r: u8| ((r as f32 * scale).round().clamp(0.0, 255.0)) as u8;

    let mut channel = purple_channel(img, cfg.channel_gain);
    if cfg.smoothing_sigma > 0.0 {
        channel = gaussian_blur(&channel, cfg.smoothing_sigma * scale.max(0.25));
    }
    let threshold = imageproc::contrast::otsu_level(&channel).max(cfg.min_threshold);
    let mut mask = channel;
    for p in mask.as_mut() {
        *p = if *p > threshold { 255 } else { 0 };
    }
    let (ro, rc) = (radius(cfg.opening_radius), radius(cfg.closing_radius));
    clean_and_measure(mask, cfg, ro, rc, threshold)
}

/// `imageproc::filter::gaussian_blur_f32` (imageproc 0.25) on a grey image, bit for bit: the
/// same kernel, a horizontal then a vertical pass, each summing in f32 in kernel order from 0,
/// edges padded by continuity, each pass truncated to u8 (imageproc's `Clamp`). The unit
/// tests compare the two. Why not call it: its per-pixel generic loop was an eighth of the
/// `nucleus` mode's time; here each kernel tap is one pass over a whole row.
fn gaussian_blur(img: &GrayImage, sigma: f32) -> GrayImage {
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    if wu == 0 || hu == 0 || sigma.is_nan() || sigma <= 0.0 {
        return img.clone();
    }
    let kernel = gaussian_kernel(sigma);
    let r = (kernel.len() / 2) as isize;
    let clamp_u8 = |x: f32| {
        if x < 255.0 {
            if x > 0.0 {
                x as u8
            } else {
                0
            }
        } else {
            255
        }
    };
    let mut acc = vec![0f32; wu];
    // Horizontal pass.
    let mut mid = vec![0u8; wu * hu];
    for (src, dst) in img.as_raw().chunks_exact(wu).zip(mid.chunks_exact_mut(wu)) {
        acc.fill(0.0);
        for (i, k) in kernel.iter().enumerate() {
            let off = i as isize - r;
            // Interior columns read src[x + off] directly; the rest clamp to the edge.
            let lo = (-off).clamp(0, wu as isize) as usize;
            let hi = (wu as isize - off).clamp(lo as isize, wu as isize) as usize;
            for x in (0..lo).chain(hi..wu) {
                acc[x] += src[(x as isize + off).clamp(0, wu as isize - 1) as usize] as f32 * k;
            }
            if lo < hi {
                let shifted = &src[(lo as isize + off) as usize..(hi as isize + off) as usize];
                for (a, v) in acc[lo..hi].iter_mut().zip(shifted) {
                    *a += *v as f32 * k;
                }
            }
        }
        for (d, a) in dst.iter_mut().zip(&acc) {
            *d = clamp_u8(*a);
        }
    }
    // Vertical pass.
    let mut out = vec![0u8; wu * hu];
    for (y, dst) in out.chunks_exact_mut(wu).enumerate() {
        acc.fill(0.0);
        for (i, k) in kernel.iter().enumerate() {
            let sy = (y as isize + i as isize - r).clamp(0, hu as isize - 1) as usize;
            for (a, v) in acc.iter_mut().zip(&mid[sy * wu..(sy + 1) * wu]) {
                *a += *v as f32 * k;
            }
        }
        for (d, a) in dst.iter_mut().zip(&acc) {
            *d = clamp_u8(*a);
        }
    }
    GrayImage::from_raw(w, h, out).unwrap_or_else(|| GrayImage::new(w, h))
}

/// imageproc 0.25's `gaussian_kernel_f32`, expression for expression (so the f32 weights are
/// the same bits): radius ceil(2 sigma), normalised to sum 1.
fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let gaussian =
        |x: f32, r: f32| ((2.0 * std::f32::consts::PI).sqrt() * r).recip() * (-x.powi(2) / (2.0 * r.powi(2))).exp();
    let kernel_radius = (2.0 * sigma).ceil() as usize;
    let mut kernel_data = vec![0.0; 2 * kernel_radius + 1];
    for i in 0..kernel_radius + 1 {
        let value = gaussian(i as f32, sigma);
        kernel_data[kernel_radius + i] = value;
        kernel_data[kernel_radius - i] = value;
    }
    let sum: f32 = kernel_data.iter().sum();
    kernel_data.iter_mut().for_each(|x| *x /= sum);
    kernel_data
}

/// Nuclei from an existing binary mask (e.g. the authors' HSV mask, so `aria-hsv` mode gets
/// crops too): the same opening, hole filling, splitting and shape filter as [`find_nuclei`],
/// without the channel and threshold steps. `threshold` is reported as 0.
pub fn nuclei_from_mask(mask: &GrayImage, cfg: &NucleusConfig) -> NucleusResult {
    let (w, h) = mask.dimensions();
    if w == 0 || h == 0 {
        return NucleusResult { mask: GrayImage::new(w, h), nuclei: Vec::new(), threshold: 0 };
    }
    let scale = w.min(h) as f32 / 224.0;
    let radius = |r: u8| ((r as f32 * scale).round().clamp(0.0, 255.0)) as u8;
    let mut m = mask.clone();
    for p in m.as_mut() {
        *p = if *p != 0 { 255 } else { 0 };
    }
    clean_and_measure(m, cfg, radius(cfg.opening_radius), radius(cfg.closing_radius), 0)
}

/// Steps 3-5 of the module docs on a binary mask.
fn clean_and_measure(mut mask: GrayImage, cfg: &NucleusConfig, ro: u8, rc: u8, threshold: u8) -> NucleusResult {
    let (w, h) = mask.dimensions();
    if ro > 0 {
        mask = dilate_disc(&erode_disc(&mask, ro), ro);
    }
    if rc > 0 {
        mask = erode_disc(&dilate_disc(&mask, rc), rc);
    }
    if cfg.fill_holes {
        fill_holes(&mut mask);
    }
    let labels = if cfg.split_touching { split_touching(&mask) } else { label(&mask) };
    let (nuclei, keep) = measure_and_filter(&labels, w, h, cfg);
    for (m, l) in mask.as_mut().iter_mut().zip(labels.as_raw()) {
        *m = if *l != 0 && keep[*l as usize] { 255 } else { 0 };
    }
    NucleusResult { mask, nuclei, threshold }
}

fn label(mask: &GrayImage) -> image::ImageBuffer<Luma<u32>, Vec<u32>> {
    connected_components(mask, Connectivity::Eight, Luma([0u8]))
}

/// Sets every background pixel not 4-connected to the field border to foreground. A flood
/// fill from the border with a stack (the visiting order does not change the result).
pub fn fill_holes(mask: &mut GrayImage) {
    let (w, h) = mask.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    if wu == 0 || hu == 0 {
        return;
    }
    let data = mask.as_mut();
    // 0 = foreground or not reached yet; 1 = background reached from the border.
    let mut outside = vec![0u8; wu * hu];
    let mut stack: Vec<u32> = Vec::new();
    let visit = |i: usize, outside: &mut Vec<u8>, stack: &mut Vec<u32>| {
        if data[i] == 0 && outside[i] == 0 {
            outside[i] = 1;
            stack.push(i as u32);
        }
    };
    for x in 0..wu {
        visit(x, &mut outside, &mut stack);
        visit((hu - 1) * wu + x, &mut outside, &mut stack);
    }
    for y in 0..hu {
        visit(y * wu, &mut outside, &mut stack);
        visit(y * wu + wu - 1, &mut outside, &mut stack);
    }
    while let Some(i) = stack.pop() {
        let i = i as usize;
        let (x, y) = (i % wu, i / wu);
        if x > 0 {
            visit(i - 1, &mut outside, &mut stack);
        }
        if x + 1 < wu {
            visit(i + 1, &mut outside, &mut stack);
        }
        if y > 0 {
            visit(i - wu, &mut outside, &mut stack);
        }
        if y + 1 < hu {
            visit(i + wu, &mut outside, &mut stack);
        }
    }
    for (p, o) in data.iter_mut().zip(outside) {
        *p |= 0u8.wrapping_sub(1 - o); // not reached -> 255
    }
}

/// Labels the mask, splitting a component between its distance-transform cores when it has
/// two or more: a core is a connected region deeper than 70% of the component's maximum depth
/// and at least 3 px deep. Pixels go to the geodesically nearest core (breadth-first growth
/// inside the component), a cheap stand-in for a watershed that needs no gradient image.
fn split_touching(mask: &GrayImage) -> image::ImageBuffer<Luma<u32>, Vec<u32>> {
    let (w, h) = mask.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let mut labels = label(mask);
    let n = labels.as_raw().iter().copied().max().unwrap_or(0) as usize;
    if n == 0 {
        return labels;
    }
    let depth = chamfer_depth(mask);
    let depth = &depth[..];
    let mut max_depth = vec![0u32; n + 1];
    for (l, d) in labels.as_raw().iter().zip(depth) {
        let l = *l as usize;
        if l != 0 && *d > max_depth[l] {
            max_depth[l] = *d;
        }
    }
    // Core pixels: depth above 70% of the component's maximum and at least 3 px (chamfer
    // units are 3 per pixel step).
    let core = GrayImage::from_fn(w, h, |x, y| {
        let i = y as usize * wu + x as usize;
        let l = labels.as_raw()[i] as usize;
        let d = depth[i];
        Luma([if l != 0 && d >= 9 && 10 * d >= 7 * max_depth[l] { 255 } else { 0 }])
    });
    let cores = connected_components(&core, Connectivity::Eight, Luma([0u8]));
    // Count cores per component; only components with >= 2 are split.
    let ncores = cores.as_raw().iter().copied().max().unwrap_or(0) as usize;
    let mut core_parent = vec![0usize; ncores + 1];
    for (c, l) in cores.as_raw().iter().zip(labels.as_raw()) {
        if *c != 0 {
            core_parent[*c as usize] = *l as usize;
        }
    }
    let mut cores_per_component = vec![0usize; n + 1];
    for c in 1..=ncores {
        cores_per_component[core_parent[c]] += 1;
    }
    if cores_per_component.iter().all(|&k| k < 2) {
        return labels;
    }
    // New labels: unsplit components keep one label; split components get one per core.
    let mut next = 0u32;
    let mut comp_label = vec![0u32; n + 1];
    for l in 1..=n {
        if cores_per_component[l] < 2 {
            next += 1;
            comp_label[l] = next;
        }
    }
    let mut core_label = vec![0u32; ncores + 1];
    for c in 1..=ncores {
        if cores_per_component[core_parent[c]] >= 2 {
            next += 1;
            core_label[c] = next;
        }
    }
    let mut seeds = vec![0u32; wu * hu];
    for (i, o) in seeds.iter_mut().enumerate() {
        let l = labels.as_raw()[i] as usize;
        if l == 0 {
            continue;
        }
        if cores_per_component[l] < 2 {
            *o = comp_label[l];
        } else {
            let c = cores.as_raw()[i] as usize;
            if c != 0 {
                *o = core_label[c];
            }
        }
    }
    // Components are never 4-adjacent, so growing through the foreground keeps each core in
    // its own component.
    let foreground: Vec<bool> = labels.as_raw().iter().map(|&l| l != 0).collect();
    let out = grow(&seeds, &foreground, wu, hu);
    labels.as_mut().copy_from_slice(&out);
    labels
}

/// Binary dilation by a disc of radius `r` (offsets with dx^2 + dy^2 <= r^2; outside the
/// field counts as background). The disc is a stack of horizontal segments: each row of the
/// output ORs the rows `dy` away, dilated horizontally by the segment's half-width
/// `floor(sqrt(r^2 - dy^2))`. The horizontal dilations are built one pixel of width at a
/// time from three shifted rows, which the compiler vectorises: O(pixels * r) byte ops with
/// no branch per pixel (prefix counts per row were a third of the finder's time).
fn dilate_disc(mask: &GrayImage, r: u8) -> GrayImage {
    let (w, h) = mask.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let r = r as usize;
    let half: Vec<usize> = (0..=r).map(|dy| ((r * r - dy * dy) as f64).sqrt().floor() as usize).collect();
    // horiz[k] = the mask (0/1) dilated horizontally by k pixels, for k = 0..=r.
    let mut horiz: Vec<Vec<u8>> = Vec::with_capacity(r + 1);
    horiz.push(mask.as_raw().iter().map(|&m| (m != 0) as u8).collect());
    for k in 1..=r {
        let mut next = vec![0u8; wu * hu];
        dilate_rows_by_one(&horiz[k - 1], &mut next, wu);
        horiz.push(next);
    }
    let mut out = vec![0u8; wu * hu];
    for y in 0..hu {
        let dst = &mut out[y * wu..(y + 1) * wu];
        for (dy, &hw) in half.iter().enumerate() {
            let hz = &horiz[hw];
            for sy in [y.checked_sub(dy), Some(y + dy).filter(|&v| v < hu && dy > 0)].into_iter().flatten() {
                for (d, s) in dst.iter_mut().zip(&hz[sy * wu..(sy + 1) * wu]) {
                    *d |= *s;
                }
            }
        }
        for d in dst.iter_mut() {
            *d = 0u8.wrapping_sub(*d); // 1 -> 255
        }
    }
    GrayImage::from_raw(w, h, out).unwrap_or_else(|| GrayImage::new(w, h))
}

/// `dst` = `src` (rows of `wu` 0/1 bytes) dilated horizontally by one pixel within each row.
fn dilate_rows_by_one(src: &[u8], dst: &mut [u8], wu: usize) {
    for (s, d) in src.chunks_exact(wu).zip(dst.chunks_exact_mut(wu)) {
        if wu < 2 {
            d.copy_from_slice(s);
            continue;
        }
        d[0] = s[0] | s[1];
        d[wu - 1] = s[wu - 1] | s[wu - 2];
        for (((o, a), b), c) in d[1..wu - 1].iter_mut().zip(&s[..wu - 2]).zip(&s[1..wu - 1]).zip(&s[2..]) {
            *o = a | b | c;
        }
    }
}

/// Binary erosion by a disc of radius `r` (outside the field counts as foreground, so objects
/// touching the border are not eaten from outside): the complement of dilating the complement.
fn erode_disc(mask: &GrayImage, r: u8) -> GrayImage {
    let mut inv = mask.clone();
    for p in inv.as_mut() {
        *p = if *p == 0 { 255 } else { 0 };
    }
    let mut out = dilate_disc(&inv, r);
    for p in out.as_mut() {
        *p = if *p == 0 { 255 } else { 0 };
    }
    out
}

/// Depth of each foreground pixel: chamfer 3-4 distance to the nearest background pixel
/// (3 per straight step, 4 per diagonal: within 8% of Euclidean x 3). Outside the field counts
/// as foreground, like the erosion above.
fn chamfer_depth(mask: &GrayImage) -> Vec<u32> {
    let background: Vec<u8> = mask.as_raw().iter().map(|&m| u8::from(m == 0)).collect();
    chamfer(&background, mask.width() as usize, mask.height() as usize)
}

/// Chamfer 3-4 distance (3 per straight step, 4 per diagonal) from each pixel to the nearest
/// nonzero pixel of `mask`; outside the field seeds nothing. Morphology by thresholding it
/// costs two passes whatever the radius (radii reach 10 px on fine crops).
pub(crate) fn chamfer(mask: &[u8], wu: usize, hu: usize) -> Vec<u32> {
    let inf = u32::MAX / 4;
    let mut d: Vec<u32> = mask.iter().map(|&m| if m != 0 { 0 } else { inf }).collect();
    for y in 0..hu {
        for x in 0..wu {
            let i = y * wu + x;
            let mut v = d[i];
            if v == 0 {
                continue;
            }
            if x > 0 {
                v = v.min(d[i - 1] + 3);
            }
            if y > 0 {
                v = v.min(d[i - wu] + 3);
                if x > 0 {
                    v = v.min(d[i - wu - 1] + 4);
                }
                if x + 1 < wu {
                    v = v.min(d[i - wu + 1] + 4);
                }
            }
            d[i] = v;
        }
    }
    for y in (0..hu).rev() {
        for x in (0..wu).rev() {
            let i = y * wu + x;
            let mut v = d[i];
            if v == 0 {
                continue;
            }
            if x + 1 < wu {
                v = v.min(d[i + 1] + 3);
            }
            if y + 1 < hu {
                v = v.min(d[i + wu] + 3);
                if x + 1 < wu {
                    v = v.min(d[i + wu + 1] + 4);
                }
                if x > 0 {
                    v = v.min(d[i + wu - 1] + 4);
                }
            }
            d[i] = v;
        }
    }
    d
}

/// Measures each labelled region and keeps those that look like a nucleus; returns the kept
/// nuclei (largest first) and a keep flag per label.
fn measure_and_filter(
    labels: &image::ImageBuffer<Luma<u32>, Vec<u32>>,
    w: u32,
    h: u32,
    cfg: &NucleusConfig,
) -> (Vec<Nucleus>, Vec<bool>) {
    let n = labels.as_raw().iter().copied().max().unwrap_or(0) as usize;
    #[derive(Clone, Copy)]
    struct Acc {
        area: u64,
        sx: u64,
        sy: u64,
        x0: u32,
        y0: u32,
        x1: u32,
        y1: u32,
    }
    let mut acc = vec![Acc { area: 0, sx: 0, sy: 0, x0: u32::MAX, y0: u32::MAX, x1: 0, y1: 0 }; n + 1];
    for (x, y, l) in labels.enumerate_pixels() {
        let l = l[0] as usize;
        if l == 0 {
            continue;
        }
        let a = &mut acc[l];
        a.area += 1;
        a.sx += x as u64;
        a.sy += y as u64;
        a.x0 = a.x0.min(x);
        a.y0 = a.y0.min(y);
        a.x1 = a.x1.max(x);
        a.y1 = a.y1.max(y);
    }
    let field = w as f64 * h as f64;
    let min_area = (cfg.min_area_fraction as f64 * field).max(4.0);
    let max_area = cfg.max_area_fraction as f64 * field;
    let mut keep = vec![false; n + 1];
    let mut nuclei = Vec::new();
    for (l, a) in acc.iter().enumerate().skip(1) {
        if a.area == 0 {
            continue;
        }
        let (bw, bh) = (a.x1 - a.x0 + 1, a.y1 - a.y0 + 1);
        let aspect = bw.max(bh) as f32 / bw.min(bh) as f32;
        let extent = a.area as f32 / (bw as f32 * bh as f32);
        let area = a.area as f64;
        if area < min_area || area > max_area || aspect > cfg.max_aspect || extent < cfg.min_extent {
            continue;
        }
        keep[l] = true;
        nuclei.push(Nucleus {
            bbox: BBox { x: a.x0, y: a.y0, width: bw, height: bh },
            area: a.area as u32,
            centroid: (a.sx as f32 / a.area as f32, a.sy as f32 / a.area as f32),
        });
    }
    nuclei.sort_by(|a, b| b.area.cmp(&a.area).then(a.bbox.y.cmp(&b.bbox.y)).then(a.bbox.x.cmp(&b.bbox.x)));
    (nuclei, keep)
}

/// Breadth-first growth of the nonzero `seeds` labels through `allowed` pixels (4-connected):
/// each reached pixel takes the label of the seed that reached it first.
pub(crate) fn grow(seeds: &[u32], allowed: &[bool], wu: usize, hu: usize) -> Vec<u32> {
    let mut out = seeds.to_vec();
    let mut queue: VecDeque<usize> = (0..out.len()).filter(|&i| out[i] != 0).collect();
    while let Some(i) = queue.pop_front() {
        let (x, y, l) = (i % wu, i / wu, out[i]);
        let mut visit = |j: usize| {
            if out[j] == 0 && allowed[j] {
                out[j] = l;
                queue.push_back(j);
            }
        };
        if x > 0 {
            visit(i - 1);
        }
        if x + 1 < wu {
            visit(i + 1);
        }
        if y > 0 {
            visit(i - wu);
        }
        if y + 1 < hu {
            visit(i + wu);
        }
    }
    out
}

#[cfg(test)]
mod tests;
