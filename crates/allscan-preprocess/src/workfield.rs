//! Stage 2 groundwork shared by the red-cell ruler ([`crate::scale`]) and the white-cell finder
//! ([`crate::cell`]): a decoded field -> the reduced [`WorkField`] (background colour and
//! darkness map), its labelled blobs with their moments, and Otsu thresholds.

use image::{GrayImage, Luma, RgbImage};
use imageproc::region_labelling::{connected_components, Connectivity};

use crate::nucleus::purple_channel;

/// Largest working image in pixels: detection runs on the field box-averaged by an integer
/// factor until it fits, so a 5 MP camera photo costs what a 0.35 MP one does.
pub const WORK_PIXELS: u64 = 350_000;

/// The field reduced for detection, with its background and darkness map; shared by
/// [`red_cell_scale`] and [`crate::cell::find_white_cells`].
#[derive(Debug, Clone)]
pub struct WorkField {
    /// Integer box-averaging factor from the field to `image`.
    pub factor: u32,
    /// The reduced field.
    pub image: RgbImage,
    /// Cells on black (C-NMC style crops): the background is dark, not bright.
    pub dark_background: bool,
    /// Background colour (mean of the brightest pixels; black on a dark background).
    pub background: [f32; 3],
    /// How far each pixel is from the background (see the module docs), 0..255.
    pub darkness: GrayImage,
    /// Threshold on `darkness` for "something is here" (Otsu, floored).
    pub threshold: u8,
}

impl WorkField {
    /// Reduces `img` and measures its background. Any size, including 0x0, is accepted.
    pub fn new(img: &RgbImage) -> Self {
        let (w, h) = img.dimensions();
        let pixels = w as u64 * h as u64;
        let mut factor = 1u32;
        while pixels / (factor as u64 * factor as u64) > WORK_PIXELS {
            factor += 1;
        }
        let image = box_downsample(img, factor);
        let dark_background = border_brightness(&image) < 50.0;
        let background = if dark_background { [0.0; 3] } else { bright_mean(&image) };
        let darkness = GrayImage::from_fn(image.width(), image.height(), |x, y| {
            let p = image.get_pixel(x, y).0;
            let d = if dark_background {
                // On black, "something" is anything bright.
                p.iter().copied().max().unwrap_or(0) as f32
            } else {
                (0..3).map(|c| background[c] - p[c] as f32).fold(0.0, f32::max)
            };
            Luma([d.clamp(0.0, 255.0) as u8])
        });
        let mut hist = [0u32; 256];
        for &d in darkness.as_raw() {
            hist[d as usize] += 1;
        }
        // Three classes on a bright field (glass, red cells and cytoplasm, nuclei): two-class
        // Otsu would put the pale red cells with the glass whenever nuclei are present.
        let threshold = if dark_background { otsu(&hist).max(25) } else { otsu3(&hist).0.max(15) };
        WorkField { factor, image, dark_background, background, darkness, threshold }
    }

    /// Micrometres per working pixel for a field scale.
    pub fn work_um_per_px(&self, field_um_per_px: f32) -> f32 {
        field_um_per_px * self.factor as f32
    }
}

/// Averages `k` x `k` blocks (the last partial row/column of blocks averages what it has).
pub fn box_downsample(img: &RgbImage, k: u32) -> RgbImage {
    if k <= 1 {
        return img.clone();
    }
    let (w, h) = img.dimensions();
    let (ow, oh) = (w.div_ceil(k), h.div_ceil(k));
    let mut sums = vec![[0u32; 4]; ow as usize * oh as usize];
    let raw = img.as_raw();
    for y in 0..h as usize {
        let row = &mut sums[(y / k as usize) * ow as usize..][..ow as usize];
        for (x, px) in raw[y * w as usize * 3..(y + 1) * w as usize * 3].chunks_exact(3).enumerate() {
            let s = &mut row[x / k as usize];
            s[0] += px[0] as u32;
            s[1] += px[1] as u32;
            s[2] += px[2] as u32;
            s[3] += 1;
        }
    }
    RgbImage::from_fn(ow, oh, |x, y| {
        let s = sums[(y * ow + x) as usize];
        let n = s[3].max(1);
        image::Rgb([(s[0] / n) as u8, (s[1] / n) as u8, (s[2] / n) as u8])
    })
}

/// Median brightness (mean of R, G, B) of the border pixels; 0 for an empty image.
fn border_brightness(img: &RgbImage) -> f32 {
    let (w, h) = img.dimensions();
    let mut v: Vec<u32> = img
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x + 1 == w || *y + 1 == h)
        .map(|(_, _, p)| p.0.iter().map(|&c| c as u32).sum::<u32>())
        .collect();
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable(mid).1 as f32 / 3.0
}

/// Mean colour of the brightest 20% of pixels: the glass between cells. Smears are mostly
/// glass and red cells, and glass is the brightest thing in a bright-field image.
fn bright_mean(img: &RgbImage) -> [f32; 3] {
    let mut hist = [0u32; 766];
    for p in img.pixels() {
        hist[p.0.iter().map(|&c| c as usize).sum::<usize>()] += 1;
    }
    let total: u32 = hist.iter().sum();
    if total == 0 {
        return [255.0; 3];
    }
    let mut cut = 765usize;
    let mut seen = 0u32;
    while cut > 0 && seen + hist[cut] < total / 5 {
        seen += hist[cut];
        cut -= 1;
    }
    let (mut s, mut n) = ([0f64; 3], 0f64);
    for p in img.pixels() {
        if p.0.iter().map(|&c| c as usize).sum::<usize>() >= cut {
            for c in 0..3 {
                s[c] += p[c] as f64;
            }
            n += 1.0;
        }
    }
    let n = n.max(1.0);
    [(s[0] / n) as f32, (s[1] / n) as f32, (s[2] / n) as f32]
}

/// Component labels of a mask (0 = background).
pub(crate) type Labels = image::ImageBuffer<Luma<u32>, Vec<u32>>;

/// Per-component measurements of a labelled mask.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Blob {
    pub area: u32,
    pub sx: f64,
    pub sy: f64,
    pub sxx: f64,
    pub syy: f64,
    pub sxy: f64,
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
    /// Pixels marked in the side mask given to [`measure_blobs`].
    pub marked: u32,
}

impl Blob {
    /// Box width (0 for a blob with no pixel, whose box is still the empty initial one).
    pub fn width(&self) -> u32 {
        (self.x1 + 1).saturating_sub(self.x0)
    }
    /// Box height (0 for a blob with no pixel).
    pub fn height(&self) -> u32 {
        (self.y1 + 1).saturating_sub(self.y0)
    }
    pub fn touches_border(&self, w: u32, h: u32) -> bool {
        self.x0 == 0 || self.y0 == 0 || self.x1 + 1 >= w || self.y1 + 1 >= h
    }
    /// Equivalent diameter `sqrt(4 A / pi)` in pixels.
    pub fn eq_diameter(&self) -> f32 {
        (4.0 * self.area as f32 / std::f32::consts::PI).sqrt()
    }
    /// Central second moments `(cxx, cyy, cxy)` per pixel.
    pub fn moments(&self) -> (f64, f64, f64) {
        let n = self.area.max(1) as f64;
        let (mx, my) = (self.sx / n, self.sy / n);
        (self.sxx / n - mx * mx, self.syy / n - my * my, self.sxy / n - mx * my)
    }
    /// Ratio of the moment ellipse's axes (1 for a disc).
    pub fn axis_ratio(&self) -> f32 {
        let (cxx, cyy, cxy) = self.moments();
        let t = ((cxx - cyy).powi(2) + 4.0 * cxy * cxy).sqrt();
        let (l1, l2) = ((cxx + cyy + t) / 2.0, ((cxx + cyy - t) / 2.0).max(1e-9));
        (l1 / l2).sqrt() as f32
    }
}

/// Labels (8-connected) and measures every component; index 0 is the background.
pub(crate) fn measure_blobs(mask: &GrayImage, marks: Option<&GrayImage>) -> (Labels, Vec<Blob>) {
    let labels = connected_components(mask, Connectivity::Eight, Luma([0u8]));
    let n = labels.as_raw().iter().copied().max().unwrap_or(0) as usize;
    let mut blobs = vec![Blob { x0: u32::MAX, y0: u32::MAX, ..Default::default() }; n + 1];
    let w = mask.width().max(1);
    for (i, &l) in labels.as_raw().iter().enumerate() {
        if l == 0 {
            continue;
        }
        let (x, y) = (i as u32 % w, i as u32 / w);
        let b = &mut blobs[l as usize];
        let (fx, fy) = (x as f64, y as f64);
        b.area += 1;
        b.sx += fx;
        b.sy += fy;
        b.sxx += fx * fx;
        b.syy += fy * fy;
        b.sxy += fx * fy;
        b.x0 = b.x0.min(x);
        b.y0 = b.y0.min(y);
        b.x1 = b.x1.max(x);
        b.y1 = b.y1.max(y);
        if marks.is_some_and(|m| m.as_raw()[i] != 0) {
            b.marked += 1;
        }
    }
    (labels, blobs)
}

/// Nuclear purple on the working field: the same channel as [`crate::nucleus`], above Otsu's
/// level over the foreground only (`fg`), so red cells fall below it and count as unmarked.
pub(crate) fn strong_purple(img: &RgbImage, fg: &GrayImage, gain: f32, min_level: u8) -> GrayImage {
    let mut p = purple_channel(img, gain);
    let t = otsu_where(&p, fg).max(min_level);
    for v in p.as_mut() {
        *v = if *v > t { 255 } else { 0 };
    }
    p
}

/// Otsu's level of `channel` over the pixels where `mask` is nonzero.
pub(crate) fn otsu_where(channel: &GrayImage, mask: &GrayImage) -> u8 {
    let mut hist = [0u32; 256];
    for (&p, &m) in channel.as_raw().iter().zip(mask.as_raw()) {
        if m != 0 {
            hist[p as usize] += 1;
        }
    }
    otsu(&hist)
}

/// Otsu's threshold of a histogram: the level `t` maximising the between-class variance of
/// `0..=t` and `t+1..`; 255 for an empty histogram (nothing above it).
pub(crate) fn otsu(hist: &[u32; 256]) -> u8 {
    let total: f64 = hist.iter().map(|&c| c as f64).sum();
    let sum: f64 = hist.iter().enumerate().map(|(i, &c)| i as f64 * c as f64).sum();
    if total == 0.0 {
        return 255;
    }
    let (mut w0, mut s0, mut best, mut best_t) = (0.0, 0.0, -1.0, 0u8);
    for (t, &c) in hist.iter().enumerate().take(255) {
        w0 += c as f64;
        s0 += t as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let between = w0 * w1 * (s0 / w0 - (sum - s0) / w1).powi(2);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

/// Three-class Otsu: levels `(a, b)`, classes `0..=a`, `a+1..=b`, `b+1..`, maximising the
/// between-class variance (O(256^2) with prefix sums).
pub(crate) fn otsu3(hist: &[u32; 256]) -> (u8, u8) {
    let mut cw = [0f64; 257];
    let mut cs = [0f64; 257];
    for i in 0..256 {
        cw[i + 1] = cw[i] + hist[i] as f64;
        cs[i + 1] = cs[i] + i as f64 * hist[i] as f64;
    }
    if cw[256] == 0.0 {
        return (255, 255);
    }
    let term = |lo: usize, hi: usize| {
        let w = cw[hi] - cw[lo];
        if w > 0.0 {
            (cs[hi] - cs[lo]).powi(2) / w
        } else {
            0.0
        }
    };
    let (mut best, mut ab) = (-1.0, (0u8, 0u8));
    for a in 0..254usize {
        for b in a + 1..255usize {
            let v = term(0, a + 1) + term(a + 1, b + 1) + term(b + 1, 256);
            if v > best {
                best = v;
                ab = (a as u8, b as u8);
            }
        }
    }
    ab
}
