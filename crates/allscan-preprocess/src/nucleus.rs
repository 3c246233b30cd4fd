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
        channel = imageproc::filter::gaussian_blur_f32(&channel, cfg.smoothing_sigma * scale.max(0.25));
    }
    let threshold = imageproc::contrast::otsu_level(&channel).max(cfg.min_threshold);
    let mut mask = channel;
    for p in mask.as_mut() {
        *p = if *p > threshold { 255 } else { 0 };
    }
    let (ro, rc) = (radius(cfg.opening_radius), radius(cfg.closing_radius));
    clean_and_measure(mask, cfg, ro, rc, threshold)
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

/// Sets every background pixel not 4-connected to the field border to foreground.
pub fn fill_holes(mask: &mut GrayImage) {
    let (w, h) = mask.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let data = mask.as_mut();
    let mut outside = vec![false; wu * hu];
    let mut queue = VecDeque::new();
    let seed = |i: usize, outside: &mut Vec<bool>, queue: &mut VecDeque<usize>| {
        if data[i] == 0 && !outside[i] {
            outside[i] = true;
            queue.push_back(i);
        }
    };
    for x in 0..wu {
        seed(x, &mut outside, &mut queue);
        seed((hu - 1) * wu + x, &mut outside, &mut queue);
    }
    for y in 0..hu {
        seed(y * wu, &mut outside, &mut queue);
        seed(y * wu + wu - 1, &mut outside, &mut queue);
    }
    while let Some(i) = queue.pop_front() {
        let (x, y) = (i % wu, i / wu);
        let mut visit = |j: usize| {
            if data[j] == 0 && !outside[j] {
                outside[j] = true;
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
    for (p, o) in data.iter_mut().zip(outside) {
        if !o {
            *p = 255;
        }
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
    let mut out = vec![0u32; wu * hu];
    let mut queue = VecDeque::new();
    for i in 0..wu * hu {
        let l = labels.as_raw()[i] as usize;
        if l == 0 {
            continue;
        }
        if cores_per_component[l] < 2 {
            out[i] = comp_label[l];
        } else {
            let c = cores.as_raw()[i] as usize;
            if c != 0 {
                out[i] = core_label[c];
                queue.push_back(i);
            }
        }
    }
    while let Some(i) = queue.pop_front() {
        let (x, y) = (i % wu, i / wu);
        let l = out[i];
        let comp = labels.as_raw()[i];
        let mut grow = |j: usize| {
            if out[j] == 0 && labels.as_raw()[j] == comp {
                out[j] = l;
                queue.push_back(j);
            }
        };
        if x > 0 {
            grow(i - 1);
        }
        if x + 1 < wu {
            grow(i + 1);
        }
        if y > 0 {
            grow(i - wu);
        }
        if y + 1 < hu {
            grow(i + wu);
        }
    }
    labels.as_mut().copy_from_slice(&out);
    labels
}

/// Binary dilation by a disc of radius `r` (offsets with dx^2 + dy^2 <= r^2; outside the
/// field counts as background). Row-wise sliding counts make it O(pixels * (2r + 1)) instead
/// of a distance transform per call, which dominated the finder's time.
fn dilate_disc(mask: &GrayImage, r: u8) -> GrayImage {
    let (w, h) = mask.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let r = r as i64;
    let src = mask.as_raw();
    // Horizontal dilations for each half-width the disc needs, via row prefix counts.
    let half: Vec<usize> = (-r..=r).map(|dy| ((r * r - dy * dy) as f64).sqrt().floor() as usize).collect();
    let mut widths: Vec<usize> = half.clone();
    widths.sort_unstable();
    widths.dedup();
    let mut prefix = vec![0u32; wu + 1];
    let mut horiz: Vec<Vec<u8>> = vec![vec![0u8; wu * hu]; widths.len()];
    for y in 0..hu {
        let row = &src[y * wu..(y + 1) * wu];
        for x in 0..wu {
            prefix[x + 1] = prefix[x] + (row[x] != 0) as u32;
        }
        for (k, &hw) in widths.iter().enumerate() {
            let out = &mut horiz[k][y * wu..(y + 1) * wu];
            for (x, o) in out.iter_mut().enumerate() {
                let lo = x.saturating_sub(hw);
                let hi = (x + hw + 1).min(wu);
                *o = (prefix[hi] > prefix[lo]) as u8;
            }
        }
    }
    let mut out = GrayImage::new(w, h);
    let dst = out.as_mut();
    for (i, dy) in (-r..=r).enumerate() {
        let k = widths.iter().position(|&x| x == half[i]).unwrap_or(0);
        let hz = &horiz[k];
        for y in 0..hu {
            let sy = y as i64 + dy;
            if sy < 0 || sy >= hu as i64 {
                continue;
            }
            let srow = &hz[sy as usize * wu..(sy as usize + 1) * wu];
            for (d, s) in dst[y * wu..(y + 1) * wu].iter_mut().zip(srow) {
                *d |= *s;
            }
        }
    }
    for d in dst.iter_mut() {
        *d = if *d != 0 { 255 } else { 0 };
    }
    out
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
    let (wu, hu) = (mask.width() as usize, mask.height() as usize);
    let inf = u32::MAX / 4;
    let mut d: Vec<u32> = mask.as_raw().iter().map(|&m| if m == 0 { 0 } else { inf }).collect();
    for y in 0..hu {
        for x in 0..wu {
            let i = y * wu + x;
            if d[i] == 0 {
                continue;
            }
            let mut v = d[i];
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
            if d[i] == 0 {
                continue;
            }
            let mut v = d[i];
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

#[cfg(test)]
mod tests {
    use super::*;

    const BG: [u8; 3] = [235, 230, 240]; // pale lilac glass
    const RBC: [u8; 3] = [190, 170, 200]; // pale red cell
    const NUC: [u8; 3] = [110, 60, 170]; // violet nucleus

    fn disc(img: &mut RgbImage, cx: i32, cy: i32, r: i32, c: [u8; 3]) {
        for y in (cy - r).max(0)..=(cy + r).min(img.height() as i32 - 1) {
            for x in (cx - r).max(0)..=(cx + r).min(img.width() as i32 - 1) {
                if (x - cx).pow(2) + (y - cy).pow(2) <= r * r {
                    img.put_pixel(x as u32, y as u32, image::Rgb(c));
                }
            }
        }
    }

    #[test]
    fn discs_are_found_with_their_boxes() {
        let mut img = RgbImage::from_pixel(224, 224, image::Rgb(BG));
        disc(&mut img, 40, 40, 12, RBC);
        disc(&mut img, 180, 60, 12, RBC);
        disc(&mut img, 70, 150, 25, NUC);
        disc(&mut img, 170, 170, 15, NUC);
        let res = find_nuclei(&img, &NucleusConfig::default());
        assert_eq!(res.nuclei.len(), 2, "{:?}", res.nuclei);
        let big = &res.nuclei[0];
        let small = &res.nuclei[1];
        // The opening trims the one-pixel tips of a digital disc: edges may move by a pixel
        // each, sides by two.
        let near = |a: u32, b: u32| (a as i64 - b as i64).abs() <= 2;
        assert!(near(big.bbox.x, 45) && near(big.bbox.y, 125), "{big:?}");
        assert!(near(big.bbox.width, 51) && near(big.bbox.height, 51), "{big:?}");
        assert!((big.centroid.0 - 70.0).abs() < 1.0 && (big.centroid.1 - 150.0).abs() < 1.0);
        assert!(near(small.bbox.x, 155) && near(small.bbox.width, 31), "{small:?}");
        let expected = std::f32::consts::PI * 25.0 * 25.0;
        assert!((big.area as f32 - expected).abs() / expected < 0.06, "{}", big.area);
        assert_eq!(res.mask.get_pixel(70, 150)[0], 255);
        assert_eq!(res.mask.get_pixel(40, 40)[0], 0);
    }

    #[test]
    fn nucleus_with_pale_nucleolus_is_filled() {
        let mut img = RgbImage::from_pixel(224, 224, image::Rgb(BG));
        disc(&mut img, 112, 112, 30, NUC);
        disc(&mut img, 112, 112, 8, BG);
        let res = find_nuclei(&img, &NucleusConfig::default());
        assert_eq!(res.nuclei.len(), 1);
        assert_eq!(res.mask.get_pixel(112, 112)[0], 255);
    }

    #[test]
    fn touching_nuclei_are_split() {
        let mut img = RgbImage::from_pixel(224, 224, image::Rgb(BG));
        disc(&mut img, 80, 112, 25, NUC);
        disc(&mut img, 124, 112, 25, NUC); // centres 44 px apart: overlapping discs
        let res = find_nuclei(&img, &NucleusConfig::default());
        assert_eq!(res.nuclei.len(), 2, "{:?}", res.nuclei);
        let xs: Vec<f32> = res.nuclei.iter().map(|n| n.centroid.0).collect();
        assert!(xs.iter().any(|&x| (x - 78.0).abs() < 5.0) && xs.iter().any(|&x| (x - 126.0).abs() < 5.0), "{xs:?}");
        let off = find_nuclei(&img, &NucleusConfig { split_touching: false, ..Default::default() });
        assert_eq!(off.nuclei.len(), 1);
    }

    #[test]
    fn disc_morphology_matches_imageproc() {
        use imageproc::distance_transform::Norm;
        let mask = GrayImage::from_fn(40, 30, |x, y| Luma([if (x * 7 + y * 13) % 11 < 6 || x < 3 { 255 } else { 0 }]));
        for r in 1..4u8 {
            assert_eq!(dilate_disc(&mask, r), imageproc::morphology::dilate(&mask, Norm::L2, r), "dilate r={r}");
            assert_eq!(erode_disc(&mask, r), imageproc::morphology::erode(&mask, Norm::L2, r), "erode r={r}");
        }
    }

    #[test]
    fn empty_field_is_a_normal_result() {
        let img = RgbImage::from_pixel(64, 64, image::Rgb(BG));
        let res = find_nuclei(&img, &NucleusConfig::default());
        assert!(res.nuclei.is_empty());
        assert!(res.mask.pixels().all(|p| p[0] == 0));
        let grey = RgbImage::from_fn(64, 64, |x, y| image::Rgb([((x * 7 + y * 3) % 256) as u8; 3]));
        assert!(find_nuclei(&grey, &NucleusConfig::default()).nuclei.is_empty());
    }
}
