//! Stage 2a of the pipeline: a decoded field (RGB) -> its physical scale, micrometres per pixel
//! ([`ScaleEstimate`]), which every later length (cell detection, the crop window) depends on.
//!
//! The rule, most trusted first ([`estimate_scale`]):
//! 1. **Given**: a per-dataset or `--um-per-px` setting wins over everything.
//! 2. **Red cells**: normal erythrocytes are the one ruler every smear carries (7.5 um across,
//!    +-10% between people). The field is reduced to at most ~0.35 MP ([`WorkField`]), the
//!    background colour is estimated from the brightest pixels, every pixel's *darkness* below
//!    that colour (the largest drop over R, G and B, so pink and grey-blue red cells alike) is
//!    thresholded (three-class Otsu's lower level, floored; the level that isolates the most
//!    cells among a few), pale centres are filled, and **isolated, round** blobs are measured:
//!    not touching the border, a square box (aspect <= 1.25), a disc's box fill (0.70..0.88,
//!    which rejects touching pairs and triangles), near-equal moment axes, and no nuclear purple
//!    inside (white cells). Their equivalent diameters `sqrt(4 A / pi)` give the scale through
//!    the median. Packed fields (Aria, CellaVision) have too few isolated cells: there the
//!    **inscribed discs** of the packed ones are measured instead (the peaks of the distance to
//!    the glass, away from nuclei; area-weighted median). The estimate is refused with too few
//!    cells, a wide spread (IQR / median), or "red cells" under a third of the median
//!    nucleus (speckle and granules of a crop that its white cell fills).
//! 3. **Assumed**: no usable red cells (a single cell on black, a crop without red cells): the
//!    largest white cell is taken to be `assumed_cell_diameter_um` wide.
//!
//! Images scored together come from one instrument (a dataset source, a folder given to
//! `predict`, a slide), so an image whose own estimate fell back to Assumed takes the set's
//! **pooled** scale ([`ScalePool`]): the median of the set's red-cell estimates, or, with
//! too few of those, the median of its assumed ones (the set's *median* cell is
//! `assumed_cell_diameter_um` wide, not every cell; a blast stays larger than a lymphocyte).

use image::{GrayImage, Luma, RgbImage};
use imageproc::region_labelling::{connected_components, Connectivity};
use serde::{Deserialize, Serialize};

use crate::cell::chamfer;
use crate::nucleus::{fill_holes, purple_channel};

/// Diameter of a normal red cell in micrometres: the ruler of [`red_cell_scale`].
pub const RED_CELL_DIAMETER_UM: f32 = 7.5;

/// Largest working image in pixels: detection runs on the field box-averaged by an integer
/// factor until it fits, so a 5 MP camera photo costs what a 0.35 MP one does.
pub const WORK_PIXELS: u64 = 350_000;

/// Where a scale came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleSource {
    /// A setting (per dataset or `--um-per-px`).
    Given,
    /// The median diameter of the field's isolated red cells.
    RedCells,
    /// The largest white cell taken to be `assumed_cell_diameter_um` wide.
    Assumed,
    /// The field's own estimate was Assumed; the median scale of the images scored with it
    /// stands instead ([`ScalePool`]).
    Pooled,
}

/// A field's scale and how it was obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEstimate {
    /// Micrometres per field pixel.
    pub um_per_px: f32,
    /// Where the figure came from.
    pub source: ScaleSource,
    /// Isolated red cells measured (0 unless source is RedCells); for Pooled, the number of
    /// images whose estimates were pooled.
    pub red_cells: usize,
    /// Robust relative spread of their diameters (IQR / median); 0 when not measured.
    pub spread: f32,
    /// Why red cells were not used, when source != RedCells (e.g. "3 isolated red cells, need 5").
    pub note: Option<String>,
}

impl ScaleEstimate {
    /// A given scale (a per-dataset setting or `--um-per-px`).
    pub fn given(um_per_px: f32) -> Self {
        ScaleEstimate { um_per_px, source: ScaleSource::Given, red_cells: 0, spread: 0.0, note: None }
    }
}

/// Settings of [`estimate_scale`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScaleConfig {
    /// Given scale: wins over everything (a per-dataset or --um-per-px setting).
    pub um_per_px: Option<f32>,
    /// Fewest isolated red cells for a red-cell estimate.
    pub min_red_cells: usize,
    /// Largest IQR / median of their diameters: wider means the blobs are not one population
    /// of normal red cells (clumps, fragments, a mixed field).
    pub max_spread: f32,
    /// Fallback when red cells cannot be measured (e.g. a single cell on black): the largest
    /// white cell is taken to be this wide (equivalent diameter).
    pub assumed_cell_diameter_um: f32,
    /// Pool the scales of images scored together ([`ScalePool`]); off: every image keeps its
    /// own estimate.
    pub pool: bool,
    /// Fewest red-cell estimates in a set for their median to be the pooled scale.
    pub pool_min_red_cell_images: usize,
    /// Fewest assumed estimates in a set for their median to be the pooled scale (fewer: each
    /// image keeps its own).
    pub pool_min_assumed_images: usize,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            um_per_px: None,
            min_red_cells: 5,
            max_spread: 0.35,
            assumed_cell_diameter_um: 11.0,
            pool: true,
            pool_min_red_cell_images: 3,
            pool_min_assumed_images: 10,
        }
    }
}

/// The scales of a set of images from one instrument, gathered to give the images whose own
/// estimate fell back to Assumed the set's scale (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ScalePool {
    red_cells: Vec<f32>,
    assumed: Vec<f32>,
}

impl ScalePool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image's own estimate (Given and Pooled estimates are not evidence).
    pub fn add(&mut self, est: &ScaleEstimate) {
        if !(est.um_per_px.is_finite() && est.um_per_px > 0.0) {
            return;
        }
        match est.source {
            ScaleSource::RedCells => self.red_cells.push(est.um_per_px),
            ScaleSource::Assumed => self.assumed.push(est.um_per_px),
            ScaleSource::Given | ScaleSource::Pooled => {}
        }
    }

    /// The set's scale, `None` when pooling is off or the set is too small to say.
    pub fn pooled(&self, cfg: &ScaleConfig) -> Option<ScaleEstimate> {
        if !cfg.pool || cfg.um_per_px.is_some() {
            return None;
        }
        let (values, what) = if self.red_cells.len() >= cfg.pool_min_red_cell_images.max(1) {
            (&self.red_cells, "red-cell")
        } else if self.assumed.len() >= cfg.pool_min_assumed_images.max(1) {
            (&self.assumed, "assumed")
        } else {
            return None;
        };
        let mut v = values.clone();
        let m = median(&mut v);
        let spread = if m > 0.0 { (quantile(&v, 0.75) - quantile(&v, 0.25)) / m } else { 0.0 };
        Some(ScaleEstimate {
            um_per_px: m,
            source: ScaleSource::Pooled,
            red_cells: v.len(),
            spread,
            note: Some(format!("median of the set's {} {what} estimates", v.len())),
        })
    }

    /// The images of a set to cut again at their group's pooled scale: `(index, resolved
    /// scale)` of each whose own estimate is Assumed and whose group (`key`: e.g. source and
    /// image size) gives a pooled scale. `None` entries (no scale, e.g. unreadable) are skipped.
    pub fn regroup<K: Ord + Clone>(
        items: &[Option<(K, &ScaleEstimate)>],
        cfg: &ScaleConfig,
    ) -> Vec<(usize, ScaleEstimate)> {
        let mut pools: std::collections::BTreeMap<K, ScalePool> = std::collections::BTreeMap::new();
        for (k, s) in items.iter().flatten() {
            pools.entry(k.clone()).or_default().add(s);
        }
        let pooled: std::collections::BTreeMap<K, ScaleEstimate> =
            pools.into_iter().filter_map(|(k, pool)| pool.pooled(cfg).map(|p| (k, p))).collect();
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let (k, own) = item.as_ref()?;
                let p = pooled.get(k).filter(|_| own.source == ScaleSource::Assumed)?;
                Some((i, Self::resolve(own, Some(p))))
            })
            .collect()
    }

    /// `own` if it stands on its own (given or red cells), else the set's pooled scale (its
    /// note keeps why the image's own red cells were not used).
    pub fn resolve(own: &ScaleEstimate, pooled: Option<&ScaleEstimate>) -> ScaleEstimate {
        match (own.source, pooled) {
            (ScaleSource::Assumed, Some(p)) => {
                let why = own.note.as_deref().unwrap_or("no red cells");
                let note = format!("{}; own red cells: {why}", p.note.as_deref().unwrap_or("pooled"));
                ScaleEstimate { note: Some(note), ..p.clone() }
            }
            _ => own.clone(),
        }
    }
}

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
    /// Ratio of the moment ellipse's axes (1 for a disc).
    pub fn axis_ratio(&self) -> f32 {
        let n = self.area.max(1) as f64;
        let (mx, my) = (self.sx / n, self.sy / n);
        let cxx = self.sxx / n - mx * mx;
        let cyy = self.syy / n - my * my;
        let cxy = self.sxy / n - mx * my;
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

/// The field's blobs (pale centres filled) and which of them pass as isolated round red cells
/// (see the module docs for the filters and why).
fn red_cell_blobs(field: &WorkField, threshold: u8) -> (Labels, Vec<Blob>, Vec<bool>) {
    let (w, h) = field.image.dimensions();
    let mut mask = field.darkness.clone();
    for p in mask.as_mut() {
        *p = if *p > threshold { 255 } else { 0 };
    }
    let purple = strong_purple(&field.image, &mask, 3.0, 60);
    fill_holes(&mut mask); // pale centres
    let (labels, blobs) = measure_blobs(&mask, Some(&purple));
    let accepted = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (bw, bh) = (b.width() as f32, b.height() as f32);
            let extent = b.area as f32 / (bw * bh);
            // 30 px: below that a disc's digitised area is too coarse to be a ruler.
            i > 0
                && b.area >= 30
                && !b.touches_border(w, h)
                && bw.max(bh) / bw.min(bh) <= 1.25
                && (0.70..=0.88).contains(&extent)
                && b.axis_ratio() <= 1.2
                && (b.marked as f32) < 0.02 * b.area as f32
                && (b.area as u64) * 8 < w as u64 * h as u64
        })
        .collect();
    (labels, blobs, accepted)
}

/// The darkness threshold that isolates the most round red cells. Packed red cells touch
/// along pale seams a little darker than glass: the foreground threshold merges them, a
/// higher one separates them (shrinking each by a fraction of its blurred edge only).
fn best_red_cell_threshold(field: &WorkField) -> u8 {
    let mut hist = [0u32; 256];
    for &d in field.darkness.as_raw() {
        hist[d as usize] += 1;
    }
    let (lo, hi) = (field.threshold, otsu(&hist).max(field.threshold));
    let mut candidates = vec![lo, lo + (hi - lo) / 2, hi, lo.saturating_add(lo / 2)];
    candidates.sort_unstable();
    candidates.dedup();
    let mut best = (0usize, lo);
    for t in candidates {
        let n = red_cell_blobs(field, t).2.iter().filter(|&&a| a).count();
        if n > best.0 {
            best = (n, t);
        }
    }
    best.1
}

/// A picture of the red-cell measurement on the working field (for overlays and debugging):
/// 255 = measured red cell, 96 = other foreground blob, 0 = glass.
pub fn red_cell_map(img: &RgbImage) -> GrayImage {
    let field = WorkField::new(img);
    if field.dark_background || field.image.width() < 8 || field.image.height() < 8 {
        return GrayImage::new(field.image.width(), field.image.height());
    }
    let (labels, _, accepted) = red_cell_blobs(&field, best_red_cell_threshold(&field));
    let raw = labels
        .as_raw()
        .iter()
        .map(|&l| {
            if l == 0 {
                0
            } else if accepted[l as usize] {
                255
            } else {
                96
            }
        })
        .collect();
    GrayImage::from_raw(field.image.width(), field.image.height(), raw).unwrap_or_default()
}

/// Red-cell estimate, or the reason it refuses (too few isolated red cells, spread too large, ...).
pub fn red_cell_scale(img: &RgbImage, cfg: &ScaleConfig) -> Result<ScaleEstimate, String> {
    red_cell_scale_on(&WorkField::new(img), cfg)
}

/// [`red_cell_scale`] on an already reduced field.
pub fn red_cell_scale_on(field: &WorkField, cfg: &ScaleConfig) -> Result<ScaleEstimate, String> {
    let (w, h) = field.image.dimensions();
    if w < 8 || h < 8 {
        return Err(format!("{w}x{h} working field is too small to hold red cells"));
    }
    if field.dark_background {
        return Err("dark background (a crop on black): no red cells".into());
    }
    let min = cfg.min_red_cells.max(1);
    let (_, blobs, accepted) = red_cell_blobs(field, best_red_cell_threshold(field));
    let mut diameters: Vec<f32> =
        blobs.iter().zip(&accepted).filter(|(_, &a)| a).map(|(b, _)| b.eq_diameter()).collect();
    let mut what = "isolated red cells";
    if keep_population(&mut diameters) < min {
        // Packed fields (Aria, CellaVision) have few isolated red cells: fall back to the
        // inscribed discs of the packed ones.
        let isolated = diameters.len();
        diameters = red_cell_cores(field, field.threshold);
        if keep_population(&mut diameters) < min {
            return Err(format!("{isolated} isolated red cells and {} packed ones, need {min}", diameters.len()));
        }
        what = "packed red cells";
    }
    let n = diameters.len();
    let med = median(&mut diameters);
    let spread = (quantile(&diameters, 0.75) - quantile(&diameters, 0.25)) / med.max(1e-6);
    if spread > cfg.max_spread {
        return Err(format!("{what}: diameters spread {spread:.2} > {:.2}", cfg.max_spread));
    }
    // A white cell's nucleus is 1-2 red cells wide: "red cells" far smaller than the typical
    // (median) nucleus are speckle or granules of a crop filled by its white cell. The median,
    // not the largest: clumps of touching blasts (Aria) are wider.
    let nucleus = median_nucleus_diameter(field);
    if nucleus > 3.0 * med {
        return Err(format!("{what} of {med:.0} px are too small beside a {nucleus:.0} px nucleus"));
    }
    let um_per_px = RED_CELL_DIAMETER_UM / (med * field.factor as f32);
    Ok(ScaleEstimate { um_per_px, source: ScaleSource::RedCells, red_cells: n, spread, note: None })
}

/// Median equivalent diameter of the strongly purple blobs of 4 px or more (working pixels;
/// 0 if none).
fn median_nucleus_diameter(field: &WorkField) -> f32 {
    let mut fg = field.darkness.clone();
    for p in fg.as_mut() {
        *p = if *p > field.threshold { 255 } else { 0 };
    }
    let mut purple = strong_purple(&field.image, &fg, 3.0, 60);
    fill_holes(&mut purple);
    let (_, blobs) = measure_blobs(&purple, None);
    let mut d: Vec<f32> = blobs.iter().skip(1).map(Blob::eq_diameter).filter(|&d| d >= 4.0).collect();
    median(&mut d)
}

/// Keeps the diameters around their median (platelets and fragments are round too, and
/// clumps measure large) and returns how many remain.
fn keep_population(diameters: &mut Vec<f32>) -> usize {
    if diameters.is_empty() {
        return 0;
    }
    // Weighted by area, so that many small peaks (the rim of a red cell whose pale centre
    // opens to the glass, cytoplasm bands) do not outvote the cells themselves.
    diameters.sort_by(f32::total_cmp);
    let total: f32 = diameters.iter().map(|d| d * d).sum();
    let mut seen = 0.0;
    let m0 = diameters
        .iter()
        .find(|&&d| {
            seen += d * d;
            2.0 * seen >= total
        })
        .copied()
        .unwrap_or(0.0);
    diameters.retain(|&d| d >= 0.7 * m0 && d <= 1.4 * m0);
    diameters.len()
}

/// Diameters of the inscribed discs of red cells, touching or not: the peaks of the distance
/// to the glass (nuclei count as glass), away from nuclei. Two touching discs keep their own centres'
/// depth (the radius), where a blob measure would see one elongated object. Peaks closer to
/// a deeper peak than its radius are the same cell; peaks nearer the edge than their radius
/// are cut cells.
fn red_cell_cores(field: &WorkField, threshold: u8) -> Vec<f32> {
    let (w, h) = field.image.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let mut mask = field.darkness.clone();
    for p in mask.as_mut() {
        *p = if *p > threshold { 255 } else { 0 };
    }
    let purple = strong_purple(&field.image, &mask, 3.0, 60);
    fill_holes(&mut mask);
    // Nuclei count as glass: red cells packed around a white cell keep their own depth.
    let glass: Vec<u8> =
        mask.as_raw().iter().zip(purple.as_raw()).map(|(&m, &p)| if m == 0 || p != 0 { 255 } else { 0 }).collect();
    let depth = chamfer(&glass, wu, hu);
    let to_nucleus = chamfer(purple.as_raw(), wu, hu);
    let mut peaks: Vec<(u32, usize)> = Vec::new();
    for y in 1..hu.saturating_sub(1) {
        for x in 1..wu - 1 {
            let i = y * wu + x;
            let d = depth[i];
            // 15 = 5 px: smaller peaks are speckle and granules, and too coarse to measure.
            // A peak as near a nucleus as to the glass is a band of cytoplasm, not a red cell.
            if d < 15 || 20 * to_nucleus[i] < 23 * d {
                continue;
            }
            let is_max = [i - wu - 1, i - wu, i - wu + 1, i - 1, i + 1, i + wu - 1, i + wu, i + wu + 1]
                .iter()
                .all(|&j| depth[j] <= d);
            let r = d as usize / 3;
            if is_max && x >= r && y >= r && x + r < wu && y + r < hu {
                peaks.push((d, i));
            }
        }
    }
    peaks.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept: Vec<(f32, f32, f32)> = Vec::new();
    for (d, i) in peaks {
        let (x, y, r) = ((i % wu) as f32, (i / wu) as f32, d as f32 / 3.0);
        if kept.iter().all(|&(kx, ky, kr)| (kx - x).powi(2) + (ky - y).powi(2) >= kr.max(r).powi(2)) {
            kept.push((x, y, r));
        }
    }
    // The centre's nearest glass pixel lies half a pixel beyond the edge.
    kept.iter().map(|&(_, _, r)| 2.0 * r - 1.0).collect()
}

/// Sorts `v` and returns its median (0 for an empty slice).
fn median(v: &mut [f32]) -> f32 {
    v.sort_by(f32::total_cmp);
    quantile(v, 0.5)
}

/// Linear-interpolated quantile of a sorted slice.
fn quantile(sorted: &[f32], q: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f32)
}

/// The one-image rule: given > red cells > assumed (with `note` saying why red cells were not
/// used). A set of images adds the pooled scale through [`ScalePool`].
pub fn estimate_scale(img: &RgbImage, cfg: &ScaleConfig) -> ScaleEstimate {
    if let Some(s) = cfg.um_per_px.filter(|s| s.is_finite() && *s > 0.0) {
        return ScaleEstimate::given(s);
    }
    let field = WorkField::new(img);
    match red_cell_scale_on(&field, cfg) {
        Ok(est) => est,
        Err(why) => crate::cell::assumed_scale(img, &field, cfg, why),
    }
}
