//! Stage 2b of the pipeline: a decoded field (RGB) and its scale ([`ScaleEstimate`]) -> every
//! white cell in it ([`CellResult`]): a nucleus / cytoplasm mask, a label image and one
//! [`WhiteCell`] per cell (boxes, areas, centroid, flags), the dominant cell first.
//!
//! Method, with every length in micrometres converted through the scale, on the field reduced
//! to at most ~0.35 MP ([`WorkField`]) so camera photos cost what a crop does:
//! 1. **Nucleus**: the purple channel `(R + B) / 2 - G` of [`crate::nucleus`] (chromatin
//!    absorbs green, red cells and glass do not), box-smoothed, thresholded by Otsu computed
//!    over the *foreground* pixels only (so a mostly empty field does not pull the threshold
//!    down into the cytoplasm), floored; then an opening (specks), a closing (granular
//!    chromatin) and hole filling (nucleoli). A piece whose green values fall into two
//!    classes far apart keeps only the darker: a granulocyte's granules are as purple as its
//!    chromatin but much lighter in green (`granule_green_gap`; failing that, three classes
//!    when a pale rim takes the two-class split). A piece left too small is kept whole.
//! 2. **Grouping**: nucleus pieces closer than `lobe_gap_um` are one cell (the lobes of a
//!    neutrophil), found as the components of the nucleus mask dilated by half the gap.
//! 3. **Whole cell**: the foreground (darker than the glass, see [`WorkField`]; box-smoothed
//!    so a pale granular cytoplasm is one region), less the pixels clearly coloured like the
//!    field's red cells (red cells touching a white cell are as dark as its cytoplasm, not as
//!    blue), is opened to cut thin necks and grown from every nucleus group at once
//!    (breadth-first, so a pixel goes to the geodesically nearest nucleus), no farther than
//!    `max_rim_um` from its nucleus; holes are filled.
//! 4. **Flags**: `TouchesBorder` (the cell box reaches the field edge), `Small` (nucleus
//!    narrower than `min_nucleus_diameter_um`: platelets, debris), `Clump` (whole cell wider
//!    than `clump_diameter_um`: touching white cells), `Smudge` (a large nucleus with almost
//!    no cytoplasm: a smear cell).
//! 5. Masks and labels are mapped back to field pixels (nearest neighbour) and measured there.

use image::{GrayImage, ImageBuffer, Luma, RgbImage};
use serde::{Deserialize, Serialize};

use crate::nucleus::{chamfer, fill_holes, grow, purple_channel, BBox};
use crate::scale::{measure_blobs, otsu, ScaleConfig, ScaleEstimate, ScaleSource, WorkField};
use crate::workfield::otsu3;

/// Settings of [`find_white_cells`]; lengths in micrometres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CellConfig {
    /// Gain on the purple channel before it is clamped to 0..255.
    pub channel_gain: f32,
    /// Floor of the nucleus threshold on the gained channel (a field without purple gives
    /// no nucleus rather than noise).
    pub min_threshold: u8,
    /// Added to Otsu's level on the purple channel (positive = tighter nuclei).
    pub threshold_shift: i16,
    /// Radius of the box smoothing of the purple channel.
    pub smoothing_um: f32,
    /// Radius of the opening of the nucleus mask.
    pub opening_um: f32,
    /// Radius of the closing of the nucleus mask.
    pub closing_um: f32,
    /// A nucleus piece whose green values fall into two classes (Otsu) this far apart in mean
    /// keeps only the darker class: granular cytoplasm (eosinophils, neutrophils) is as purple
    /// as chromatin but far lighter in green. 0 turns the split off.
    pub granule_green_gap: u8,
    /// The lighter class must hold at least this fraction of the piece to be cut away (a
    /// nucleolus or a pale patch of chromatin is smaller).
    pub granule_min_fraction: f32,
    /// Failing the two-class test, three classes of green (chromatin, granules, a pale rim):
    /// the darker two this far apart in mean cut the piece at the lower level. 0 = off.
    pub granule_green_gap3: u8,
    /// Nucleus pieces closer than this belong to one cell (lobes).
    pub lobe_gap_um: f32,
    /// Nucleus pieces narrower than this (equivalent diameter) are dropped as specks.
    pub min_speck_um: f32,
    /// A nucleus narrower than this is flagged `Small` (platelets are 2-3 um).
    pub min_nucleus_diameter_um: f32,
    /// Cytoplasm reaches at most this far from its nucleus.
    pub max_rim_um: f32,
    /// Radius of the opening of the foreground before growing cells (cuts necks to red cells).
    pub cytoplasm_opening_um: f32,
    /// Radius of the box smoothing of the darkness map before the cytoplasm threshold (joins
    /// the speckles of a pale granular cytoplasm).
    pub cytoplasm_smoothing_um: f32,
    /// A pixel is refused as cytoplasm when its squared colour distance to the red cells is
    /// below this fraction of that to the cytoplasm (1 = nearest colour wins; smaller only
    /// refuses clearly red pixels).
    pub red_cell_colour_ratio: f32,
    /// A white cell alone on glass (no nucleus-free blob as wide as a red cell, no white cell's
    /// blob cut by the border, less foreground beyond `max_rim_um` of the nuclei than in the
    /// ring beside them) refuses no pixel by its red-cell colour: what lies beyond the rim is
    /// its own outer cytoplasm (a large monocyte or granulocyte), not red cells.
    pub lone_cell_on_glass: bool,
    /// A whole cell wider than this (equivalent diameter) is flagged `Clump`.
    pub clump_diameter_um: f32,
    /// A nucleus wider than this with under `smudge_max_cytoplasm` of the cell as cytoplasm
    /// is flagged `Smudge`.
    pub smudge_min_diameter_um: f32,
    /// See `smudge_min_diameter_um`.
    pub smudge_max_cytoplasm: f32,
}

impl Default for CellConfig {
    fn default() -> Self {
        Self {
            channel_gain: 3.0,
            min_threshold: 30,
            threshold_shift: 0,
            smoothing_um: 0.1,
            opening_um: 0.4,
            closing_um: 0.4,
            granule_green_gap: 75,
            granule_min_fraction: 0.2,
            granule_green_gap3: 45,
            lobe_gap_um: 2.5,
            min_speck_um: 1.2,
            min_nucleus_diameter_um: 4.0,
            max_rim_um: 8.0,
            cytoplasm_opening_um: 0.3,
            cytoplasm_smoothing_um: 0.4,
            red_cell_colour_ratio: 0.3,
            lone_cell_on_glass: true,
            clump_diameter_um: 24.0,
            smudge_min_diameter_um: 14.0,
            smudge_max_cytoplasm: 0.03,
        }
    }
}

/// Why a white cell may not be a clean single cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellFlag {
    /// The cell is cut by the field edge.
    TouchesBorder,
    /// The nucleus is too small for a white cell (platelet, debris).
    Small,
    /// A large bare nucleus (smear cell).
    Smudge,
    /// Too wide for one cell: touching white cells.
    Clump,
}

/// One white cell of a field, in field pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhiteCell {
    /// Box of the nucleus pixels.
    pub nucleus: BBox,
    /// Box of the whole cell (nucleus + cytoplasm).
    pub cell: BBox,
    /// Nucleus pixels.
    pub nucleus_area: u32,
    /// Whole-cell pixels.
    pub cell_area: u32,
    /// Centroid of the whole cell, field pixels.
    pub centroid: (f32, f32),
    /// Reasons for caution; empty for a clean cell.
    pub flags: Vec<CellFlag>,
}

impl WhiteCell {
    /// Whether the cell carries `flag`.
    pub fn has(&self, flag: CellFlag) -> bool {
        self.flags.contains(&flag)
    }
}

/// Per-pixel cell labels (index + 1 into [`CellResult::cells`], 0 elsewhere).
pub type CellLabels = ImageBuffer<Luma<u32>, Vec<u32>>;

/// Every white cell of a field. No cell is a normal result.
#[derive(Debug, Clone)]
pub struct CellResult {
    /// 255 = nucleus, 128 = cytoplasm, 0 = everything else (the wbc-seg convention), kept cells only.
    pub mask: GrayImage,
    /// Per pixel: index + 1 of the cell in `cells` whose whole-cell region holds it, 0 elsewhere.
    pub labels: CellLabels,
    /// Every white cell; cells[0] is the dominant one: the largest whole-cell area among
    /// unflagged cells, else among cells not touching the border, else the largest. Then by
    /// area, descending.
    pub cells: Vec<WhiteCell>,
    /// The scale the lengths were converted with.
    pub scale: ScaleEstimate,
    /// The cells lie on black (a crop on a dark background), not on glass: pixels whose
    /// brightest channel is below this level are background (the finder's threshold).
    pub black_level: Option<u8>,
}

impl CellResult {
    fn empty(w: u32, h: u32, scale: &ScaleEstimate) -> Self {
        CellResult {
            mask: GrayImage::new(w, h),
            labels: CellLabels::new(w, h),
            cells: Vec::new(),
            scale: scale.clone(),
            black_level: None,
        }
    }

    /// The same cells in a `w` x `h` frame of the same field (the caller's pixels after the
    /// finder ran on the field stretched to square pixels): labels and mask by nearest
    /// neighbour, boxes and areas counted again from them (so they stay the masks' own),
    /// centroids scaled. The identity when the size is already `w` x `h`.
    pub fn in_frame(self, w: u32, h: u32) -> CellResult {
        let (sw, sh) = self.labels.dimensions();
        if (sw, sh) == (w, h) || w == 0 || h == 0 {
            return self;
        }
        let (fx, fy) = (sw as f32 / w as f32, sh as f32 / h as f32);
        let src = |x: u32, y: u32| {
            (
                (((x as f32 + 0.5) * fx) as u32).min(sw.saturating_sub(1)),
                (((y as f32 + 0.5) * fy) as u32).min(sh.saturating_sub(1)),
            )
        };
        let labels = CellLabels::from_fn(w, h, |x, y| {
            let (sx, sy) = src(x, y);
            *self.labels.get_pixel(sx, sy)
        });
        let mask = GrayImage::from_fn(w, h, |x, y| {
            let (sx, sy) = src(x, y);
            *self.mask.get_pixel(sx, sy)
        });
        // Per cell: [x0, y0, x1, y1, area] of the whole cell and of its nucleus.
        let n = self.cells.len();
        let mut whole = vec![[u32::MAX, u32::MAX, 0, 0, 0]; n];
        let mut nucleus = vec![[u32::MAX, u32::MAX, 0, 0, 0]; n];
        for (x, y, l) in labels.enumerate_pixels() {
            let Some(i) = (l[0] as usize).checked_sub(1).filter(|&i| i < n) else { continue };
            let extend = |b: &mut [u32; 5]| {
                b[0] = b[0].min(x);
                b[1] = b[1].min(y);
                b[2] = b[2].max(x);
                b[3] = b[3].max(y);
                b[4] += 1;
            };
            extend(&mut whole[i]);
            if mask.get_pixel(x, y)[0] == 255 {
                extend(&mut nucleus[i]);
            }
        }
        let scaled = |b: BBox| {
            let x0 = (b.x as f32 / fx).floor() as u32;
            let y0 = (b.y as f32 / fy).floor() as u32;
            let x1 = (((b.x + b.width) as f32 / fx).ceil() as u32).clamp(x0 + 1, w.max(x0 + 1));
            let y1 = (((b.y + b.height) as f32 / fy).ceil() as u32).clamp(y0 + 1, h.max(y0 + 1));
            BBox { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
        };
        let boxed = |b: [u32; 5], old: BBox| {
            if b[4] == 0 {
                (scaled(old), 0)
            } else {
                (BBox { x: b[0], y: b[1], width: b[2] - b[0] + 1, height: b[3] - b[1] + 1 }, b[4])
            }
        };
        let cells = self
            .cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let (cell, cell_area) = boxed(whole[i], c.cell);
                let (nuc, nucleus_area) = boxed(nucleus[i], c.nucleus);
                WhiteCell {
                    nucleus: nuc,
                    cell,
                    nucleus_area,
                    cell_area,
                    centroid: (c.centroid.0 / fx, c.centroid.1 / fy),
                    flags: c.flags,
                }
            })
            .collect();
        CellResult { mask, labels, cells, scale: self.scale, black_level: self.black_level }
    }
}

/// Finds every white cell of `img` at `scale` (see the module docs).
pub fn find_white_cells(img: &RgbImage, cfg: &CellConfig, scale: &ScaleEstimate) -> CellResult {
    find_white_cells_on(img, &WorkField::new(img), cfg, scale)
}

/// [`find_white_cells`] on an already reduced field (`field` must come from `img`).
pub fn find_white_cells_on(img: &RgbImage, field: &WorkField, cfg: &CellConfig, scale: &ScaleEstimate) -> CellResult {
    let (w, h) = img.dimensions();
    let (ww, wh) = field.image.dimensions();
    let um = field.work_um_per_px(scale.um_per_px);
    if ww < 8 || wh < 8 || !um.is_finite() || um <= 0.0 {
        return CellResult::empty(w, h, scale);
    }
    let px = |len_um: f32| len_um / um;
    let fg: Vec<bool> = field.darkness.as_raw().iter().map(|&d| d > field.threshold).collect();
    let rd = px(cfg.cytoplasm_smoothing_um).round() as u32;
    let smooth_fg: Vec<bool> = if rd > 0 {
        imageproc::filter::box_filter(&field.darkness, rd, rd).as_raw().iter().map(|&d| d > field.threshold).collect()
    } else {
        fg.clone()
    };

    // 1. Nucleus.
    let mut purple = purple_channel(&field.image, cfg.channel_gain);
    let rs = px(cfg.smoothing_um).round() as u32;
    if rs > 0 {
        purple = imageproc::filter::box_filter(&purple, rs, rs);
    }
    let mut hist = [0u32; 256];
    for (&p, &f) in purple.as_raw().iter().zip(&fg) {
        if f {
            hist[p as usize] += 1;
        }
    }
    let t = (otsu(&hist) as i16 + cfg.threshold_shift).clamp(0, 254) as u8;
    let t = t.max(cfg.min_threshold);
    let mut nuc = GrayImage::from_fn(ww, wh, |x, y| Luma([if purple.get_pixel(x, y)[0] > t { 255 } else { 0 }]));
    nuc = dilate(&erode(&nuc, px(cfg.opening_um)), px(cfg.opening_um));
    nuc = erode(&dilate(&nuc, px(cfg.closing_um)), px(cfg.closing_um));
    fill_holes(&mut nuc);
    // Drop specks: noise, not even a platelet.
    let (nl, nb) = measure_blobs(&nuc, None);
    let min_speck = px(cfg.min_speck_um);
    for (p, l) in nuc.as_mut().iter_mut().zip(nl.as_raw()) {
        if *l != 0 && nb[*l as usize].eq_diameter() < min_speck {
            *p = 0;
        }
    }

    // 1b. Granular cytoplasm taken for nucleus: keep the dark part of such pieces. What was
    // one piece stays one cell (its lobes were joined by the granules).
    let mut unsplit = None;
    if cfg.granule_green_gap > 0 {
        let whole = nuc.clone();
        if split_granular(&mut nuc, &field.image, cfg) {
            nuc = dilate(&erode(&nuc, px(cfg.opening_um)), px(cfg.opening_um));
            fill_holes(&mut nuc);
            let min_nucleus_px = std::f32::consts::FRAC_PI_4 * px(cfg.min_nucleus_diameter_um).powi(2);
            keep_whole_if_small(&mut nuc, &whole, min_nucleus_px);
            unsplit = Some(whole);
        }
    }

    // 2. Grouping lobes into cells.
    let mut joined = dilate(&nuc, px(cfg.lobe_gap_um) / 2.0);
    if let Some(whole) = &unsplit {
        for (j, &u) in joined.as_mut().iter_mut().zip(whole.as_raw()) {
            *j = (*j).max(u);
        }
    }
    let (groups, gb) = measure_blobs(&joined, None);
    let ngroups = gb.len() - 1;
    if ngroups == 0 {
        return CellResult::empty(w, h, scale);
    }
    let seeds: Vec<u32> = nuc.as_raw().iter().zip(groups.as_raw()).map(|(&n, &g)| if n != 0 { g } else { 0 }).collect();

    // 3. Whole cell: grow from the nuclei inside the opened foreground, within the rim,
    // through pixels coloured more like cytoplasm than like red cells.
    let rim = (3.0 * px(cfg.max_rim_um)).round() as u32;
    let dist = chamfer(nuc.as_raw(), ww as usize, wh as usize);
    let ring = ((3.0 * px(0.5)).round() as u32, (3.0 * px(1.5)).round() as u32);
    // Beyond the rim nothing is cytoplasm: what is there is red cells (or another cell's).
    let red_cells = RedCellReference {
        far_from: rim,
        min_blob_px: px(5.0).powi(2) * std::f32::consts::FRAC_PI_4,
        lone_cell_on_glass: cfg.lone_cell_on_glass,
    };
    let cyto_like =
        cytoplasm_colour_test(&field.image, &fg, &seeds, &dist, ring, &red_cells, cfg.red_cell_colour_ratio);
    let fg_mask = GrayImage::from_fn(ww, wh, |x, y| {
        let i = (y * ww + x) as usize;
        Luma([if seeds[i] != 0 || (smooth_fg[i] && cyto_like[i]) { 255 } else { 0 }])
    });
    let opened = dilate(&erode(&fg_mask, px(cfg.cytoplasm_opening_um)), px(cfg.cytoplasm_opening_um));
    let allowed: Vec<bool> = (0..seeds.len())
        .map(|i| seeds[i] != 0 || (opened.as_raw()[i] != 0 && fg_mask.as_raw()[i] != 0 && dist[i] <= rim))
        .collect();
    let grown = grow(&seeds, &allowed, ww as usize, wh as usize);
    let mut region = GrayImage::from_fn(ww, wh, |x, y| Luma([if grown[(y * ww + x) as usize] != 0 { 255 } else { 0 }]));
    fill_holes(&mut region);
    let allowed: Vec<bool> = region.as_raw().iter().map(|&r| r != 0).collect();
    let grown = grow(&seeds, &allowed, ww as usize, wh as usize);

    // 5. Back to field pixels, then measure and order.
    let k = field.factor;
    let mut labels = CellLabels::new(w, h);
    let mut mask = GrayImage::new(w, h);
    for y in 0..h {
        let wy = (y / k).min(wh - 1);
        for x in 0..w {
            let wx = (x / k).min(ww - 1);
            let i = (wy * ww + wx) as usize;
            if grown[i] != 0 {
                labels.put_pixel(x, y, Luma([grown[i]]));
                mask.put_pixel(x, y, Luma([if nuc.as_raw()[i] != 0 { 255 } else { 128 }]));
            }
        }
    }
    let mut cells = measure_cells(&labels, &mask, ngroups, um / k as f32, cfg);
    // Dominant first, then by area; `order` keeps the old label of each cell.
    let mut order: Vec<usize> = (0..cells.len()).filter(|&i| cells[i].cell_area > 0).collect();
    order.sort_by(|&a, &b| cells[b].cell_area.cmp(&cells[a].cell_area).then(a.cmp(&b)));
    // A clump of touching cells is the largest blob of a crowded field (a third of Aria's),
    // so the dominant cell is the largest unflagged one, else the largest not at the border.
    let dominant = order
        .iter()
        .position(|&i| cells[i].flags.is_empty())
        .or_else(|| order.iter().position(|&i| !cells[i].has(CellFlag::TouchesBorder)));
    if let Some(pos) = dominant {
        let dominant = order.remove(pos);
        order.insert(0, dominant);
    }
    let mut relabel = vec![0u32; ngroups + 1];
    for (new, &old) in order.iter().enumerate() {
        relabel[old + 1] = new as u32 + 1;
    }
    for l in labels.as_mut() {
        *l = relabel[*l as usize];
    }
    let sorted = order.iter().map(|&i| std::mem::replace(&mut cells[i], empty_cell())).collect();
    let black_level = field.dark_background.then_some(field.threshold);
    CellResult { mask, labels, cells: sorted, scale: scale.clone(), black_level }
}

/// Step 1b: in every nucleus piece of `nuc` that [`granule_cut`] finds granular, clears the
/// pixels above the cut. Returns whether any piece was split.
fn split_granular(nuc: &mut GrayImage, rgb: &RgbImage, cfg: &CellConfig) -> bool {
    let (labels, blobs) = measure_blobs(nuc, None);
    let green = |i: usize| rgb.as_raw()[3 * i + 1];
    let mut hists = vec![[0u32; 256]; blobs.len()];
    for (i, &l) in labels.as_raw().iter().enumerate() {
        if l != 0 {
            hists[l as usize][green(i) as usize] += 1;
        }
    }
    // Per piece: the green level above which pixels are cut (None: the piece stays whole).
    let cut: Vec<Option<u8>> = hists.iter().map(|h| granule_cut(h, cfg)).collect();
    let mut any = false;
    for (i, (p, &l)) in nuc.as_mut().iter_mut().zip(labels.as_raw()).enumerate() {
        if let Some(t) = cut[l as usize].filter(|_| l != 0) {
            if green(i) > t {
                *p = 0;
                any = true;
            }
        }
    }
    any
}

/// Restores every piece of `unsplit` in which the split left less than a white cell's
/// smallest nucleus (`min_px`): an eosinophil's darkest chromatin alone is not its nucleus,
/// and an over-grown nucleus still finds the cell.
fn keep_whole_if_small(nuc: &mut GrayImage, unsplit: &GrayImage, min_px: f32) {
    let (labels, blobs) = measure_blobs(unsplit, None);
    let mut left = vec![0u32; blobs.len()];
    for (&n, &l) in nuc.as_raw().iter().zip(labels.as_raw()) {
        if n != 0 && l != 0 {
            left[l as usize] += 1;
        }
    }
    for (p, &l) in nuc.as_mut().iter_mut().zip(labels.as_raw()) {
        if l != 0 && (left[l as usize] as f32) < min_px {
            *p = 255;
        }
    }
}

/// The green level above which a nucleus piece with green histogram `h` is granular
/// cytoplasm, or None. Two classes (Otsu) far apart with the lighter one large: cut above
/// Otsu's level. Else three classes (dark chromatin, granules, a pale rim that would take the
/// two-class split): cut above the lower level when the two darker classes are
/// `granule_green_gap3` apart and the darkest holds 10-90% of the piece.
fn granule_cut(h: &[u32; 256], cfg: &CellConfig) -> Option<u8> {
    let count = |lo: usize, hi: usize| h[lo..hi].iter().map(|&c| c as f64).sum::<f64>();
    let mean = |lo: usize, hi: usize| {
        h[lo..hi].iter().enumerate().map(|(g, &c)| (g + lo) as f64 * c as f64).sum::<f64>() / count(lo, hi).max(1.0)
    };
    let total = count(0, 256);
    if total == 0.0 {
        return None;
    }
    let t = otsu(h) as usize;
    let light = count(t + 1, 256);
    if light >= f64::from(cfg.granule_min_fraction) * total
        && mean(t + 1, 256) - mean(0, t + 1) >= f64::from(cfg.granule_green_gap)
    {
        return Some(t as u8);
    }
    if cfg.granule_green_gap3 == 0 {
        return None;
    }
    let (a, b) = otsu3(h);
    let (a, b) = (a as usize, b as usize);
    let dark = count(0, a + 1) / total;
    ((0.1..=0.9).contains(&dark) && mean(a + 1, b + 1) - mean(0, a + 1) >= f64::from(cfg.granule_green_gap3))
        .then_some(a as u8)
}

fn empty_cell() -> WhiteCell {
    let b = BBox { x: 0, y: 0, width: 0, height: 0 };
    WhiteCell { nucleus: b, cell: b, nucleus_area: 0, cell_area: 0, centroid: (0.0, 0.0), flags: Vec::new() }
}

/// Where [`cytoplasm_colour_test`] takes its red-cell colour, in working pixels.
struct RedCellReference {
    /// Foreground farther than this (chamfer units) from every nucleus.
    far_from: u32,
    /// A nucleus-free blob this large (a red cell, not a platelet or a speck) is a separate
    /// red cell.
    min_blob_px: f32,
    /// See [`CellConfig::lone_cell_on_glass`].
    lone_cell_on_glass: bool,
}

/// Per working pixel: could it be cytoplasm rather than a red cell? Red cells touching a white
/// cell are as dark as its cytoplasm, but differ in colour (pink vs. blue-grey or lilac), so
/// each foreground pixel goes to the nearer of two reference colours (per-channel medians):
/// red cells = foreground blobs holding no nucleus and foreground farther than `far_from`
/// (chamfer units) from every nucleus (red cells packed around a white cell are one blob with
/// it), cytoplasm = foreground in a `ring` around the nuclei. Without enough of either (a crop
/// on black, a cell filling the field), or for a cell alone on glass, every pixel may be
/// cytoplasm; with references too alike to tell apart, only the reddest pixels are refused.
fn cytoplasm_colour_test(
    img: &RgbImage,
    fg: &[bool],
    seeds: &[u32],
    dist: &[u32],
    ring: (u32, u32),
    reference: &RedCellReference,
    ratio: f32,
) -> Vec<bool> {
    let (w, h) = img.dimensions();
    let fg_mask = GrayImage::from_fn(w, h, |x, y| {
        let i = (y * w + x) as usize;
        Luma([if fg[i] || seeds[i] != 0 { 255 } else { 0 }])
    });
    let (labels, blobs) = measure_blobs(
        &fg_mask,
        Some(&GrayImage::from_fn(w, h, |x, y| Luma([if seeds[(y * w + x) as usize] != 0 { 255 } else { 0 }]))),
    );
    let is_red = |i: usize, l: usize| blobs[l].marked == 0 || dist[i] > reference.far_from;
    let mut far = [[0u32; 256]; 3];
    let mut near = [[0u32; 256]; 3];
    for (i, p) in img.pixels().enumerate() {
        let l = labels.as_raw()[i] as usize;
        if l == 0 || seeds[i] != 0 {
            continue;
        }
        let hist = if is_red(i, l) {
            &mut far
        } else if (ring.0..=ring.1).contains(&dist[i]) {
            &mut near
        } else {
            continue;
        };
        for c in 0..3 {
            hist[c][p[c] as usize] += 1;
        }
    }
    let median = |h: &[u32; 256]| {
        let total: u32 = h.iter().sum();
        let mut seen = 0;
        for (v, &n) in h.iter().enumerate() {
            seen += n;
            if 2 * seen >= total {
                return v as f32;
            }
        }
        255.0
    };
    let count = |h: &[[u32; 256]; 3]| h[0].iter().sum::<u32>();
    if count(&far) < 50 {
        return vec![true; fg.len()];
    }
    let rbc = [median(&far[0]), median(&far[1]), median(&far[2])];
    let d2 = |p: &[u8], r: &[f32; 3]| (0..3).map(|c| (p[c] as f32 - r[c]).powi(2)).sum::<f32>();
    // Smoothed first: granules and JPEG noise make single pixels of either colour.
    let blurred = blur_rgb(img);
    let cyto = [median(&near[0]), median(&near[1]), median(&near[2])];
    if count(&near) >= 20 && d2(&[cyto[0] as u8, cyto[1] as u8, cyto[2] as u8], &rbc) >= 15.0 * 15.0 {
        return blurred.pixels().map(|p| d2(&p.0, &rbc) >= ratio * d2(&p.0, &cyto)).collect();
    }
    // No red cell apart from the white cells and a far colour like the ring's: the far pixels
    // are the cell's own outer cytoplasm (a large cell alone on glass).
    let red_cell_apart =
        (1..blobs.len()).any(|l| blobs[l].marked == 0 && blobs[l].area as f32 >= reference.min_blob_px);
    let cut_by_border = (1..blobs.len()).any(|l| blobs[l].marked != 0 && blobs[l].touches_border(w, h));
    if reference.lone_cell_on_glass && !red_cell_apart && !cut_by_border && 2 * count(&far) < count(&near) {
        return vec![true; fg.len()];
    }
    // No distinct cytoplasm beside the nucleus (scant cytoplasm, red cells packed against it):
    // refuse what is as close to the red cells' colour as most red-cell pixels are.
    let mut d: Vec<f32> = blurred
        .pixels()
        .zip(labels.as_raw())
        .enumerate()
        .filter(|&(i, (_, &l))| l != 0 && seeds[i] == 0 && is_red(i, l as usize))
        .map(|(_, (p, _))| d2(&p.0, &rbc))
        .collect();
    let k = (d.len() * 4 / 5).min(d.len() - 1);
    let (_, r80, _) = d.select_nth_unstable_by(k, f32::total_cmp);
    let r80 = *r80;
    blurred.pixels().map(|p| d2(&p.0, &rbc) > r80).collect()
}

/// 3 x 3 box blur of each channel.
fn blur_rgb(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let chan = |c: usize| {
        let g = GrayImage::from_fn(w, h, |x, y| Luma([img.get_pixel(x, y)[c]]));
        imageproc::filter::box_filter(&g, 1, 1)
    };
    let (r, g, b) = (chan(0), chan(1), chan(2));
    RgbImage::from_fn(w, h, |x, y| image::Rgb([r.get_pixel(x, y)[0], g.get_pixel(x, y)[0], b.get_pixel(x, y)[0]]))
}

/// Measures cells `1..=n` of `labels` in field pixels (`um` per field pixel) and flags them.
fn measure_cells(labels: &CellLabels, mask: &GrayImage, n: usize, um: f32, cfg: &CellConfig) -> Vec<WhiteCell> {
    #[derive(Clone, Copy)]
    struct Acc {
        area: u64,
        sx: u64,
        sy: u64,
        cell: [u32; 4],
        nuc: [u32; 4],
        nuc_area: u32,
    }
    let none = [u32::MAX, u32::MAX, 0, 0];
    let mut acc = vec![Acc { area: 0, sx: 0, sy: 0, cell: none, nuc: none, nuc_area: 0 }; n + 1];
    let extend = |b: &mut [u32; 4], x: u32, y: u32| {
        b[0] = b[0].min(x);
        b[1] = b[1].min(y);
        b[2] = b[2].max(x);
        b[3] = b[3].max(y);
    };
    for ((x, y, l), m) in labels.enumerate_pixels().zip(mask.as_raw()) {
        let l = l[0] as usize;
        if l == 0 || l > n {
            continue;
        }
        let a = &mut acc[l];
        a.area += 1;
        a.sx += x as u64;
        a.sy += y as u64;
        extend(&mut a.cell, x, y);
        if *m == 255 {
            a.nuc_area += 1;
            extend(&mut a.nuc, x, y);
        }
    }
    let (w, h) = labels.dimensions();
    let bbox = |b: [u32; 4]| {
        if b[0] > b[2] {
            BBox { x: 0, y: 0, width: 0, height: 0 }
        } else {
            BBox { x: b[0], y: b[1], width: b[2] - b[0] + 1, height: b[3] - b[1] + 1 }
        }
    };
    let diameter_um = |area: f64| (4.0 * area / std::f64::consts::PI).sqrt() as f32 * um;
    acc.iter()
        .skip(1)
        .map(|a| {
            if a.area == 0 {
                return empty_cell();
            }
            let mut flags = Vec::new();
            let c = a.cell;
            if c[0] == 0 || c[1] == 0 || c[2] + 1 >= w || c[3] + 1 >= h {
                flags.push(CellFlag::TouchesBorder);
            }
            let dn = diameter_um(a.nuc_area as f64);
            if dn < cfg.min_nucleus_diameter_um {
                flags.push(CellFlag::Small);
            }
            let cyto = 1.0 - a.nuc_area as f32 / a.area as f32;
            if dn > cfg.smudge_min_diameter_um && cyto < cfg.smudge_max_cytoplasm {
                flags.push(CellFlag::Smudge);
            }
            if diameter_um(a.area as f64) > cfg.clump_diameter_um {
                flags.push(CellFlag::Clump);
            }
            WhiteCell {
                nucleus: bbox(a.nuc),
                cell: bbox(c),
                nucleus_area: a.nuc_area,
                cell_area: a.area as u32,
                centroid: (a.sx as f32 / a.area as f32, a.sy as f32 / a.area as f32),
                flags,
            }
        })
        .collect()
}

/// The Assumed fallback of [`crate::scale::estimate_scale`]: the largest white cell (on black,
/// the largest bright object) is taken to be `assumed_cell_diameter_um` wide. With nothing to
/// measure, a provisional scale from the field size stands (the shorter side taken as 40 um,
/// roughly a single-cell crop), and the note says so.
pub(crate) fn assumed_scale(img: &RgbImage, field: &WorkField, cfg: &ScaleConfig, why: String) -> ScaleEstimate {
    let (w, h) = img.dimensions();
    let provisional = 40.0 / w.min(h).max(1) as f32;
    let est = |um_per_px: f32, note: String| ScaleEstimate {
        um_per_px,
        source: ScaleSource::Assumed,
        red_cells: 0,
        spread: 0.0,
        note: Some(note),
        aspect: Default::default(),
    };
    let diameter_px = if field.dark_background {
        let mut m = field.darkness.clone();
        for p in m.as_mut() {
            *p = if *p > field.threshold { 255 } else { 0 };
        }
        fill_holes(&mut m);
        let (_, blobs) = measure_blobs(&m, None);
        blobs.iter().skip(1).map(|b| b.eq_diameter() * field.factor as f32).fold(0.0, f32::max)
    } else {
        // Lengths of the finder depend on the scale being sought: start from the provisional
        // one, then measure once more at the scale the first pass implies.
        let largest = |um_per_px: f32| {
            let found = find_white_cells_on(img, field, &CellConfig::default(), &est(um_per_px, String::new()));
            found.cells.iter().map(|c| (4.0 * c.cell_area as f32 / std::f32::consts::PI).sqrt()).fold(0.0, f32::max)
        };
        let first = largest(provisional);
        if first >= 4.0 {
            largest(cfg.assumed_cell_diameter_um / first)
        } else {
            first
        }
    };
    if diameter_px >= 4.0 {
        est(cfg.assumed_cell_diameter_um / diameter_px, why)
    } else {
        est(provisional, format!("{why}; no white cell to measure: scale from the field size"))
    }
}

/// Dilation by a (chamfer) disc of radius `r` pixels; outside the field is background.
fn dilate(mask: &GrayImage, r: f32) -> GrayImage {
    let lim = (3.0 * r).round() as u32;
    if lim < 3 {
        return mask.clone();
    }
    let d = chamfer(mask.as_raw(), mask.width() as usize, mask.height() as usize);
    let out = d.iter().map(|&v| if v <= lim { 255 } else { 0 }).collect();
    GrayImage::from_raw(mask.width(), mask.height(), out).unwrap_or_else(|| mask.clone())
}

/// Erosion by a (chamfer) disc of radius `r` pixels; outside the field counts as foreground,
/// so a cell cut by the edge is not eaten from outside.
fn erode(mask: &GrayImage, r: f32) -> GrayImage {
    let lim = (3.0 * r).round() as u32;
    if lim < 3 {
        return mask.clone();
    }
    let inv: Vec<u8> = mask.as_raw().iter().map(|&m| if m == 0 { 255 } else { 0 }).collect();
    let d = chamfer(&inv, mask.width() as usize, mask.height() as usize);
    let out = d.iter().map(|&v| if v > lim { 255 } else { 0 }).collect();
    GrayImage::from_raw(mask.width(), mask.height(), out).unwrap_or_else(|| mask.clone())
}
