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
//! **Pixel aspect** ([`PixelAspect`]): red cells are round, so the moment ellipses of the
//! isolated ones say whether a pixel is as wide as it is tall. A field resized to a square
//! from a 5:4 or 4:3 camera frame (Aria's 224 x 224 fields: red cells and nuclei 0.8 times as
//! wide as tall) would show every cell elongated, a shape no other lab's cells have. The
//! field's own evidence is the median of `ln(sqrt(cyy / cxx))` over those cells; it stands
//! with at least `min_aspect_cells` cells and a departure of at least `min_aspect_change`
//! from square (a camera photo has hundreds of red cells, a 224 px field a handful: there the
//! set's pooled evidence decides, [`ScalePool::regroup`]). The cell pipeline stretches the
//! field to square pixels first (`crate::prepare_cells_at`), and `um_per_px` is then the
//! pixel's height.
//!
//! Images scored together come from one instrument (a dataset source, a folder given to
//! `predict`, a slide), so an image whose own estimate fell back to Assumed takes the set's
//! **pooled** scale ([`ScalePool`]): the median of the set's red-cell estimates, or, with
//! too few of those, the median of its assumed ones (the set's *median* cell is
//! `assumed_cell_diameter_um` wide, not every cell; a blast stays larger than a lymphocyte).

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::nucleus::{chamfer, fill_holes};
// The white-cell finder and the examples reach these through `scale`.
pub use crate::workfield::{box_downsample, WorkField, WORK_PIXELS};
pub(crate) use crate::workfield::{measure_blobs, otsu, strong_purple, Blob, Labels};

/// Diameter of a normal red cell in micrometres: the ruler of [`red_cell_scale`].
pub const RED_CELL_DIAMETER_UM: f32 = 7.5;

/// Median ratio of the packed ruler (inscribed discs) to the isolated one (equivalent
/// diameters) on the 959 fields of two labs (Aria 0.86, Barcelona 0.91) where both measure at
/// least 5 red cells; the packed ruler's diameters are divided by it.
pub const PACKED_TO_ISOLATED: f32 = 0.90;

/// Where a pixel aspect came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AspectSource {
    /// Taken as square: too few red cells to say, or no departure beyond the dead zone.
    #[default]
    Square,
    /// A setting (`preprocess.cell.scale.pixel_aspect`).
    Given,
    /// The field's own red cells.
    RedCells,
    /// The median evidence of the images scored with it ([`ScalePool::regroup`]).
    Pooled,
}

/// Width / height of one pixel in micrometres, and the evidence it stands on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PixelAspect {
    /// The ratio applied: the field is stretched by it along x before cells are sought (1 =
    /// square pixels).
    pub ratio: f32,
    /// Where `ratio` came from.
    pub source: AspectSource,
    /// The field's own evidence: median `ln(sqrt(cyy / cxx))` of its round red cells (the
    /// ratio they imply, whether applied or not; what a set pools).
    pub own_log: f32,
    /// How many red cells that median stands on.
    pub own_cells: u32,
}

impl Default for PixelAspect {
    fn default() -> Self {
        PixelAspect { ratio: 1.0, source: AspectSource::Square, own_log: 0.0, own_cells: 0 }
    }
}

impl PixelAspect {
    /// Whether the field needs stretching at all (beyond rounding noise).
    pub fn is_square(&self) -> bool {
        !(self.ratio.is_finite() && self.ratio > 0.0) || (self.ratio - 1.0).abs() < 1e-3
    }
}

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
    /// The pixel aspect the field was measured at (`um_per_px` is the pixel's height).
    #[serde(default)]
    pub aspect: PixelAspect,
}

impl ScaleEstimate {
    /// A given scale (a per-dataset setting or `--um-per-px`).
    pub fn given(um_per_px: f32) -> Self {
        ScaleEstimate {
            um_per_px,
            source: ScaleSource::Given,
            red_cells: 0,
            spread: 0.0,
            note: None,
            aspect: PixelAspect::default(),
        }
    }

    /// The scale of a square pixel of the same area (what a pool compares across aspects).
    fn area_equivalent(&self) -> f32 {
        let r = if self.aspect.is_square() { 1.0 } else { self.aspect.ratio };
        self.um_per_px * r.sqrt()
    }
}

/// Settings of [`estimate_scale`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScaleConfig {
    /// Given scale: wins over everything (a per-dataset or --um-per-px setting); with
    /// non-square pixels, the pixel's height.
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
    /// Given pixel aspect (width / height): wins over the red cells' evidence.
    pub pixel_aspect: Option<f32>,
    /// Fewest round red cells (one field's, or a pooled set's) for an aspect other than square.
    pub min_aspect_cells: usize,
    /// Departures from square below this (relative) are taken as square: the dead zone that
    /// keeps square-pixel cameras untouched by measurement noise.
    pub min_aspect_change: f32,
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
            pixel_aspect: None,
            min_aspect_cells: 30,
            min_aspect_change: 0.06,
        }
    }
}

/// The scales of a set of images from one instrument, gathered to give the images whose own
/// estimate fell back to Assumed the set's scale (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ScalePool {
    red_cells: Vec<f32>,
    assumed: Vec<f32>,
    /// Each image's own aspect evidence: (median log, cells).
    aspect: Vec<(f32, u32)>,
}

impl ScalePool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image's own estimate (Given and Pooled estimates are not evidence). Scales are
    /// kept as square-pixel equivalents, so that estimates made at different aspects pool.
    pub fn add(&mut self, est: &ScaleEstimate) {
        if est.aspect.own_cells > 0 && est.aspect.own_log.is_finite() {
            self.aspect.push((est.aspect.own_log, est.aspect.own_cells));
        }
        if !(est.um_per_px.is_finite() && est.um_per_px > 0.0) {
            return;
        }
        match est.source {
            ScaleSource::RedCells => self.red_cells.push(est.area_equivalent()),
            ScaleSource::Assumed => self.assumed.push(est.area_equivalent()),
            ScaleSource::Given | ScaleSource::Pooled => {}
        }
    }

    /// The set's pixel aspect from its images' own evidence: the median of their median logs
    /// (images with 3 red cells or more), `min_aspect_cells` cells in all, outside the dead
    /// zone, else square. `None` when the aspect is given or the set has too few red cells.
    pub fn pooled_aspect(&self, cfg: &ScaleConfig) -> Option<PixelAspect> {
        if cfg.pixel_aspect.is_some() {
            return None;
        }
        let mut logs: Vec<f32> = self.aspect.iter().filter(|(_, n)| *n >= 3).map(|(l, _)| *l).collect();
        let cells: u32 = self.aspect.iter().filter(|(_, n)| *n >= 3).map(|(_, n)| n).sum();
        if logs.is_empty() || (cells as usize) < cfg.min_aspect_cells.max(1) {
            return None;
        }
        let m = median(&mut logs);
        let ratio = if m.abs() >= cfg.min_aspect_change.ln_1p() { m.exp().clamp(0.5, 2.0) } else { 1.0 };
        let source = if ratio == 1.0 { AspectSource::Square } else { AspectSource::Pooled };
        Some(PixelAspect { ratio, source, own_log: m, own_cells: cells })
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
        // The pixel height at the set's aspect, of the same area as the pooled square pixel.
        let aspect = self.pooled_aspect(cfg).unwrap_or_default();
        let r = if aspect.is_square() { 1.0 } else { aspect.ratio };
        Some(ScaleEstimate {
            um_per_px: m / r.sqrt(),
            source: ScaleSource::Pooled,
            red_cells: v.len(),
            spread,
            note: Some(format!("median of the set's {} {what} estimates", v.len())),
            aspect,
        })
    }

    /// The images of a set to cut again: `(index, resolved scale)` of each whose own estimate
    /// is Assumed while its group (`key`: e.g. source and image size) gives a pooled scale, or
    /// whose pixel aspect differs from the group's pooled one by more than 2%. An estimate
    /// resolved for its aspect only keeps its own source (RedCells / Assumed): the scale is
    /// measured again at the new aspect (`crate::prepare_cells_at`). `None` entries (no
    /// scale, e.g. unreadable) are skipped.
    pub fn regroup<K: Ord + Clone>(
        items: &[Option<(K, &ScaleEstimate)>],
        cfg: &ScaleConfig,
    ) -> Vec<(usize, ScaleEstimate)> {
        let mut pools: std::collections::BTreeMap<K, ScalePool> = std::collections::BTreeMap::new();
        for (k, s) in items.iter().flatten() {
            pools.entry(k.clone()).or_default().add(s);
        }
        let pooled: std::collections::BTreeMap<K, (Option<ScaleEstimate>, Option<PixelAspect>)> =
            pools.into_iter().map(|(k, pool)| (k, (pool.pooled(cfg), pool.pooled_aspect(cfg)))).collect();
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let (k, own) = item.as_ref()?;
                let (scale, aspect) = pooled.get(k)?;
                if let Some(p) = scale.as_ref().filter(|_| own.source == ScaleSource::Assumed) {
                    return Some((i, Self::resolve(own, Some(p))));
                }
                let a = aspect.filter(|a| (a.ratio / own.aspect.ratio).ln().abs() > 0.02)?;
                let aspect = PixelAspect { own_log: own.aspect.own_log, own_cells: own.aspect.own_cells, ..a };
                Some((i, ScaleEstimate { aspect, ..(*own).clone() }))
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
                // The pooled aspect where the set has one, else the field's own; its evidence stays its own.
                let ratio = if p.aspect.own_cells > 0 { p.aspect } else { own.aspect };
                let aspect = PixelAspect { own_log: own.aspect.own_log, own_cells: own.aspect.own_cells, ..ratio };
                ScaleEstimate { note: Some(note), aspect, ..p.clone() }
            }
            _ => own.clone(),
        }
    }
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
            red_cell_candidate(i, b, w, h) && bw.max(bh) / bw.min(bh) <= 1.25 && b.axis_ratio() <= 1.2
        })
        .collect();
    (labels, blobs, accepted)
}

/// A blob that may be one whole red cell, whatever its elongation: not the background, 30 px
/// or more (below that a disc's digitised area is too coarse to be a ruler), not cut by the
/// border, a disc's box fill (0.70..0.88: not a touching pair or a triangle), no nuclear
/// purple, not an eighth of the field.
fn red_cell_candidate(i: usize, b: &Blob, w: u32, h: u32) -> bool {
    let extent = b.area as f32 / (b.width() as f32 * b.height() as f32);
    i > 0
        && b.area >= 30
        && !b.touches_border(w, h)
        && (0.70..=0.88).contains(&extent)
        && (b.marked as f32) < 0.02 * b.area as f32
        && (b.area as u64) * 8 < w as u64 * h as u64
}

/// The field's blobs at the threshold that isolates the most round red cells, and which of
/// them are isolated round ones; the reason where a field cannot hold red cells.
fn best_red_cell_blobs(field: &WorkField) -> Result<(Vec<Blob>, Vec<bool>), String> {
    let (w, h) = field.image.dimensions();
    if w < 8 || h < 8 {
        return Err(format!("{w}x{h} working field is too small to hold red cells"));
    }
    if field.dark_background {
        return Err("dark background (a crop on black): no red cells".into());
    }
    let (_, blobs, accepted) = red_cell_blobs(field, best_red_cell_threshold(field));
    Ok((blobs, accepted))
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
    let (blobs, accepted) = best_red_cell_blobs(field)?;
    red_cell_scale_from(field, &blobs, &accepted, cfg)
}

/// [`red_cell_scale_on`] from the field's blobs at its best threshold.
fn red_cell_scale_from(
    field: &WorkField,
    blobs: &[Blob],
    accepted: &[bool],
    cfg: &ScaleConfig,
) -> Result<ScaleEstimate, String> {
    let min = cfg.min_red_cells.max(1);
    let mut diameters: Vec<f32> =
        blobs.iter().zip(accepted).filter(|(_, &a)| a).map(|(b, _)| b.eq_diameter()).collect();
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
        // The inscribed disc of a packed cell is narrower than the cell; calibrated on the
        // fields where both rulers stand (docs/EXPERIMENTS.md).
        for d in &mut diameters {
            *d /= PACKED_TO_ISOLATED;
        }
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
    Ok(ScaleEstimate {
        um_per_px,
        source: ScaleSource::RedCells,
        red_cells: n,
        spread,
        note: None,
        aspect: PixelAspect::default(),
    })
}

/// The field's own pixel-aspect evidence (see the module docs): the median `ln(sqrt(cyy /
/// cxx))` over its round red cells and how many there are ((0, 0) where it has none).
pub fn red_cell_aspect_on(field: &WorkField) -> (f32, u32) {
    best_red_cell_blobs(field).map_or((0.0, 0), |(blobs, _)| aspect_evidence(field, &blobs))
}

/// [`red_cell_aspect_on`] from the field's blobs. Unlike the scale's filters, none here looks
/// at the blob's elongation (that is what is measured).
fn aspect_evidence(field: &WorkField, blobs: &[Blob]) -> (f32, u32) {
    let (w, h) = field.image.dimensions();
    let mut logs: Vec<f32> = blobs
        .iter()
        .enumerate()
        .filter(|(i, b)| red_cell_candidate(*i, b, w, h) && b.axis_ratio() <= 1.6)
        .filter_map(|(_, b)| {
            let (cxx, cyy, _) = b.moments();
            (cxx > 0.0 && cyy > 0.0).then(|| (0.5 * (cyy / cxx).ln()) as f32)
        })
        .collect();
    keep_central(&mut logs);
    let n = logs.len() as u32;
    (median(&mut logs), n)
}

/// Drops evidence far from the median (|x - median| > 0.4, a ratio beyond 1.5x): pairs and
/// smears that passed the fill test.
fn keep_central(logs: &mut Vec<f32>) {
    let mut v = logs.clone();
    let m = median(&mut v);
    logs.retain(|l| (l - m).abs() <= 0.4);
}

/// The pixel aspect a single field stands on by itself: given, or its own red cells with
/// enough of them outside the dead zone, else square (a set pools, [`ScalePool::regroup`]).
pub fn field_aspect(img: &RgbImage, cfg: &ScaleConfig) -> PixelAspect {
    field_aspect_on(&WorkField::new(img), cfg)
}

/// [`field_aspect`] on an already reduced field.
pub fn field_aspect_on(field: &WorkField, cfg: &ScaleConfig) -> PixelAspect {
    let (own_log, own_cells) = red_cell_aspect_on(field);
    decide_aspect(own_log, own_cells, cfg)
}

/// The one-field rule of [`field_aspect`] on its evidence.
fn decide_aspect(own_log: f32, own_cells: u32, cfg: &ScaleConfig) -> PixelAspect {
    if let Some(r) = cfg.pixel_aspect.filter(|r| r.is_finite() && *r > 0.0) {
        return PixelAspect { ratio: r, source: AspectSource::Given, own_log, own_cells };
    }
    if own_cells as usize >= cfg.min_aspect_cells.max(1) && own_log.abs() >= cfg.min_aspect_change.ln_1p() {
        let ratio = own_log.exp().clamp(0.5, 2.0);
        return PixelAspect { ratio, source: AspectSource::RedCells, own_log, own_cells };
    }
    PixelAspect { ratio: 1.0, source: AspectSource::Square, own_log, own_cells }
}

/// [`estimate_scale_on`] and [`field_aspect_on`] from one measurement of the field's red cells
/// (the scale as if the pixels were square: where the aspect is not, measure again after
/// [`stretch_to_square`]).
pub fn scale_and_aspect_on(img: &RgbImage, field: &WorkField, cfg: &ScaleConfig) -> (ScaleEstimate, PixelAspect) {
    let measured = best_red_cell_blobs(field);
    let (own_log, own_cells) = measured.as_ref().map_or((0.0, 0), |(blobs, _)| aspect_evidence(field, blobs));
    let aspect = decide_aspect(own_log, own_cells, cfg);
    let scale = match cfg.um_per_px.filter(|s| s.is_finite() && *s > 0.0) {
        Some(s) => ScaleEstimate::given(s),
        None => match measured.and_then(|(blobs, accepted)| red_cell_scale_from(field, &blobs, &accepted, cfg)) {
            Ok(est) => est,
            Err(why) => crate::cell::assumed_scale(img, field, cfg, why),
        },
    };
    (scale, aspect)
}

/// The field resampled to square pixels (`ratio` > 1: pixels wider than tall), to the size of
/// [`stretched_size`]. The identity when square.
pub fn stretch_to_square(img: &RgbImage, ratio: f32) -> std::borrow::Cow<'_, RgbImage> {
    let (w, h) = img.dimensions();
    let Some((nw, nh)) = stretched_size(w, h, ratio) else {
        return std::borrow::Cow::Borrowed(img);
    };
    std::borrow::Cow::Owned(crate::crop::resize_triangle(img, nw, nh))
}

/// The size of a `w` x `h` field at square pixels (`None`: already square): the shorter
/// pixel side is stretched, except on fields over 4 MP, where the longer one is shrunk
/// (detail finer than the model's input is not used, memory is).
pub fn stretched_size(w: u32, h: u32, ratio: f32) -> Option<(u32, u32)> {
    if !(ratio.is_finite() && ratio > 0.0) || (ratio - 1.0).abs() < 1e-3 || w == 0 || h == 0 {
        return None;
    }
    let scaled = |n: u32, f: f32| ((n as f32 * f).round() as u32).max(1);
    let large = w as u64 * h as u64 > 4_000_000;
    let (nw, nh) = match (ratio > 1.0, large) {
        (true, false) => (scaled(w, ratio), h),
        (true, true) => (w, scaled(h, 1.0 / ratio)),
        (false, false) => (w, scaled(h, 1.0 / ratio)),
        (false, true) => (scaled(w, ratio), h),
    };
    ((nw, nh) != (w, h)).then_some((nw, nh))
}

/// Both rulers of a field, in field pixels, each population kept around its median: the
/// isolated round red cells' equivalent diameters and the packed ones' inscribed discs, the
/// latter uncorrected (what [`PACKED_TO_ISOLATED`] is measured from).
pub fn red_cell_rulers_on(field: &WorkField) -> (Vec<f32>, Vec<f32>) {
    if field.dark_background || field.image.width() < 8 || field.image.height() < 8 {
        return (Vec::new(), Vec::new());
    }
    let (_, blobs, accepted) = red_cell_blobs(field, best_red_cell_threshold(field));
    let mut iso: Vec<f32> = blobs.iter().zip(&accepted).filter(|(_, &a)| a).map(|(b, _)| b.eq_diameter()).collect();
    keep_population(&mut iso);
    let mut packed = red_cell_cores(field, field.threshold);
    keep_population(&mut packed);
    let f = field.factor as f32;
    (iso.into_iter().map(|d| d * f).collect(), packed.into_iter().map(|d| d * f).collect())
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
    estimate_scale_on(img, &WorkField::new(img), cfg)
}

/// [`estimate_scale`] on an already reduced field (`field` must come from `img`).
pub fn estimate_scale_on(img: &RgbImage, field: &WorkField, cfg: &ScaleConfig) -> ScaleEstimate {
    if let Some(s) = cfg.um_per_px.filter(|s| s.is_finite() && *s > 0.0) {
        return ScaleEstimate::given(s);
    }
    match red_cell_scale_on(field, cfg) {
        Ok(est) => est,
        Err(why) => crate::cell::assumed_scale(img, field, cfg, why),
    }
}
