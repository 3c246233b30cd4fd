//! Slide stage: the [`FieldPrediction`]s of every field of one smear -> one [`SlideReport`]
//! (every white cell with its box, flags, p(blast) and call; the white-cell count, the blast
//! count and the blast fraction with a Wilson 95% interval; the slide-level rule and the cells
//! that drove it). A person's corrections ([`Review`]: cell id -> blast / not blast / not a
//! cell / unsure) applied to a report recompute every count, so the report JSON is the one
//! source of truth for `allscan report`'s HTML, the server's `/api/slide` and the web page.
//!
//! Counting rule, one cell at a time ([`SlideCell::status`]):
//! - a reviewed cell takes the reviewer's label, whatever the model said or flagged: `blast`
//!   and `not_blast` count as white cells, `not_a_cell` leaves the count, `unsure` leaves the
//!   count and is tallied on its own;
//! - an unreviewed cell that may decide its field ([`CellPrediction::decides`]: not flagged
//!   small or smudge) counts with the model's call (`blast` when p >= the bundle's threshold);
//! - an unreviewed small or smudge cell is listed but `excluded`, as in `allscan predict`.
//!
//! The slide is flagged when the blast fraction is at or above [`SlideRule::blast_fraction`]
//! (default [`DEFAULT_BLAST_FRACTION`]). Research use only, not a diagnostic device.

use std::collections::BTreeMap;

use allscan_preprocess::{BBox, CellFlag, ScaleSource};
use serde::{Deserialize, Serialize};

use crate::infer::{CellPrediction, FieldPrediction, Region, LEUKEMIA};

/// Format tag of a slide report.
pub const SLIDE_FORMAT: &str = "allscan-slide/1";
/// Format tag of a review (corrections) file.
pub const REVIEW_FORMAT: &str = "allscan-review/1";
/// Default blast fraction at or above which a slide is flagged.
pub const DEFAULT_BLAST_FRACTION: f64 = 0.20;
/// What the WHO threshold means and what this flag is not; in every report.
pub const WHO_NOTE: &str = "The WHO classification uses >= 20% blasts among the white cells of peripheral blood \
     or bone marrow as the threshold for acute leukemia (a diagnosis made on marrow morphology, immunophenotype \
     and genetics). Here the level is applied to cells a model calls blast on the uploaded fields: a screening \
     flag that asks a person to review the slide. Research use only, not a diagnosis.";
/// Most cells listed in [`SlideReport::decisive_cells`].
pub const MAX_DECISIVE: usize = 12;
/// Research-use notice of every report.
pub const NOTICE: &str = "Research use only, not a diagnostic device.";

/// Errors of the slide stage.
#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    /// A blast-fraction level outside (0, 1].
    #[error("blast fraction level {0} must be in (0, 1]")]
    BadLevel(f64),
    /// A review names a cell the report does not hold.
    #[error("review names cell {0:?}, which is not in this slide")]
    UnknownCell(String),
    /// A review file of another format.
    #[error("review format {found:?}, expected {REVIEW_FORMAT:?}")]
    Format {
        /// The format found.
        found: String,
    },
}

/// The model's call on one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellCall {
    /// p(blast) at or above the bundle's threshold.
    Blast,
    /// Below it.
    NotBlast,
}

/// A reviewer's label for one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewLabel {
    /// A blast (counts as a white cell and a blast).
    Blast,
    /// A white cell that is not a blast (counts as a white cell).
    NotBlast,
    /// Not a white cell (debris, platelet clump, red cell, artefact): leaves the count.
    NotACell,
    /// Cannot tell: leaves the count, tallied on its own.
    Unsure,
}

/// Where a cell stands after the model and the reviewer ([`SlideCell::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    /// Counted, as a blast.
    Blast,
    /// Counted, not a blast.
    NotBlast,
    /// Removed by the reviewer.
    NotACell,
    /// Left out by the reviewer.
    Unsure,
    /// Left out by the finder's flags (small, smudge) and not reviewed.
    Excluded,
}

impl CellStatus {
    /// Whether the cell is in the white-cell count.
    pub fn counted(self) -> bool {
        matches!(self, Self::Blast | Self::NotBlast)
    }
}

/// One white cell of a slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideCell {
    /// `f<field>-c<cell>`, unique in the slide (field and cell indices from 0).
    pub id: String,
    /// Index of its field in [`SlideReport::fields`].
    pub field: usize,
    /// The whole cell's box in field pixels (the nucleus box, or the crop within the field,
    /// for models that do not cut whole cells).
    #[serde(rename = "box")]
    pub bbox: BBox,
    /// The nucleus box, when the finder reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nucleus: Option<BBox>,
    /// What the finder noticed (touches-border, small, smudge, clump).
    #[serde(default)]
    pub flags: Vec<CellFlag>,
    /// The model's probability that this cell is a blast (any leukemia class).
    pub p_blast: f32,
    /// The model's call at the bundle's threshold.
    pub call: CellCall,
    /// Whether the model counts this cell (not flagged small or smudge).
    pub decides: bool,
    /// The nucleus and whole-cell masks, run-length encoded (cell models; format in
    /// [`crate::masks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<crate::masks::CellMasks>,
    /// Grad-CAM overlay of this cell's view, a path relative to the report's folder
    /// (`allscan report --gradcam K` writes `gradcam/<id>.png` for K cells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradcam: Option<String>,
    /// The reviewer's label, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewLabel>,
    /// The outcome of `call`, `decides` and `review` (module docs); recomputed, never read.
    pub status: CellStatus,
}

impl SlideCell {
    /// The module's counting rule for one cell.
    pub fn status_of(call: CellCall, decides: bool, review: Option<ReviewLabel>) -> CellStatus {
        match (review, call) {
            (Some(ReviewLabel::Blast), _) => CellStatus::Blast,
            (Some(ReviewLabel::NotBlast), _) => CellStatus::NotBlast,
            (Some(ReviewLabel::NotACell), _) => CellStatus::NotACell,
            (Some(ReviewLabel::Unsure), _) => CellStatus::Unsure,
            (None, _) if !decides => CellStatus::Excluded,
            (None, CellCall::Blast) => CellStatus::Blast,
            (None, CellCall::NotBlast) => CellStatus::NotBlast,
        }
    }
}

/// One field of a slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideField {
    /// The file name (as given: an uploaded name or a path relative to the slide folder).
    pub name: String,
    /// Field width in pixels.
    pub width: u32,
    /// Field height in pixels.
    pub height: u32,
    /// Micrometres per pixel (cell models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub um_per_px: Option<f32>,
    /// Where the scale came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_source: Option<ScaleSource>,
    /// The model's field call (`leukemia`, `healthy` or `no white cell found`).
    pub prediction: String,
    /// Every cell the finder found, in the model's order.
    pub cells: Vec<SlideCell>,
    /// Cells of this field in the white-cell count.
    pub white_cells: usize,
    /// Of those, blasts.
    pub blasts: usize,
}

/// What a slide adds up to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideCounts {
    /// Fields in the slide.
    pub fields: usize,
    /// Fields in which no cell was found.
    pub fields_without_cells: usize,
    /// Every cell listed, counted or not.
    pub cells_found: usize,
    /// White cells counted (status blast or not_blast).
    pub white_cells: usize,
    /// Of those, blasts.
    pub blasts: usize,
    /// `blasts / white_cells` (0 without white cells).
    pub blast_fraction: f64,
    /// Wilson score 95% interval of the blast fraction (`[0, 1]` without white cells).
    pub blast_fraction_ci95: [f64; 2],
    /// Unreviewed cells flagged small or smudge.
    pub excluded: usize,
    /// Cells the reviewer removed.
    pub not_a_cell: usize,
    /// Cells the reviewer could not call.
    pub unsure: usize,
    /// Cells with a reviewer's label.
    pub reviewed: usize,
}

/// The slide-level decision rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideRule {
    /// The slide is flagged when the blast fraction is at or above this level.
    pub blast_fraction: f64,
    /// The per-cell threshold on p(blast) (the bundle's decision threshold).
    pub cell_threshold: f64,
    /// The rule in words.
    pub text: String,
    /// What the WHO 20% threshold means, and that this is research use.
    pub who_note: String,
}

impl SlideRule {
    /// A rule flagging slides at `blast_fraction` (in (0, 1]) with cells called at `cell_threshold`.
    pub fn new(blast_fraction: f64, cell_threshold: f64) -> Result<Self, SlideError> {
        if !(blast_fraction > 0.0 && blast_fraction <= 1.0) {
            return Err(SlideError::BadLevel(blast_fraction));
        }
        Ok(Self {
            blast_fraction,
            cell_threshold,
            text: format!(
                "A cell is called blast when p(blast) >= {cell_threshold:.3}; cells flagged small or smudge are \
                 left out unless reviewed; the slide is flagged when blasts / white cells >= {:.0}%.",
                100.0 * blast_fraction
            ),
            who_note: WHO_NOTE.to_string(),
        })
    }
}

/// The slide's call under its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlideCall {
    /// Blast fraction at or above the level: review the slide.
    Flagged,
    /// Below the level.
    NotFlagged,
    /// No white cell counted: nothing to judge.
    NoWhiteCells,
}

/// A field that could not be read or predicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedField {
    /// The file name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// One smear: its fields, their cells, the counts and the call (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideReport {
    /// [`SLIDE_FORMAT`].
    pub format: String,
    /// [`NOTICE`].
    pub notice: String,
    /// The decision rule.
    pub rule: SlideRule,
    /// The call under the rule.
    pub call: SlideCall,
    /// The counts.
    pub counts: SlideCounts,
    /// Ids of the counted blasts that drove the call, most suspicious first (at most
    /// [`MAX_DECISIVE`]; empty when no cell counts as a blast).
    pub decisive_cells: Vec<String>,
    /// Every field, in order.
    pub fields: Vec<SlideField>,
    /// Fields left out, with reasons.
    #[serde(default)]
    pub failed: Vec<FailedField>,
}

/// A person's corrections: cell id -> label.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Review {
    /// [`REVIEW_FORMAT`].
    pub format: String,
    /// The labels, by cell id.
    pub labels: BTreeMap<String, ReviewLabel>,
}

impl Review {
    /// An empty review.
    pub fn new() -> Self {
        Self { format: REVIEW_FORMAT.to_string(), labels: BTreeMap::new() }
    }

    /// Adds or replaces the label of `cell`.
    pub fn with(mut self, cell: &str, label: ReviewLabel) -> Self {
        self.labels.insert(cell.to_string(), label);
        self
    }
}

/// The box of a prediction's cell: the whole cell, else the nucleus, else the crop clipped
/// to the field.
fn cell_box(c: &CellPrediction, width: u32, height: u32) -> BBox {
    if let Some(b) = c.cell.or(c.nucleus) {
        return b;
    }
    let Region { x, y, width: w, height: h } = c.region;
    let clip = |v: i64, max: u32| v.clamp(0, i64::from(max)) as u32;
    let (x0, y0) = (clip(x, width), clip(y, height));
    let (x1, y1) = (clip(x + i64::from(w), width), clip(y + i64::from(h), height));
    BBox { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
}

impl SlideCounts {
    /// Counts of `fields` fields before any cell is counted (the fraction's interval is [0, 1]).
    pub fn empty(fields: usize) -> Self {
        Self {
            fields,
            fields_without_cells: 0,
            cells_found: 0,
            white_cells: 0,
            blasts: 0,
            blast_fraction: 0.0,
            blast_fraction_ci95: [0.0, 1.0],
            excluded: 0,
            not_a_cell: 0,
            unsure: 0,
            reviewed: 0,
        }
    }
}

/// Wilson score 95% interval of `k / n` (`[0, 1]` for `n = 0`).
pub fn wilson95(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (z, nf) = (1.959_964f64, n as f64);
    let p = k as f64 / nf;
    let d = 1.0 + z * z / nf;
    let c = (p + z * z / (2.0 * nf)) / d;
    let h = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / d;
    [(c - h).max(0.0), (c + h).min(1.0)]
}

impl SlideReport {
    /// The report of predicted fields `(name, prediction)`, in order, under `rule`; `failed`
    /// lists the fields left out.
    pub fn new(fields: Vec<(String, FieldPrediction)>, rule: SlideRule, failed: Vec<FailedField>) -> Self {
        Self::with_first_field(fields, rule, failed, 0)
    }

    /// [`Self::new`] with field indices (and so cell ids) starting at `first`: for a slide
    /// sent in several parts whose reports are then concatenated.
    pub fn with_first_field(
        fields: Vec<(String, FieldPrediction)>,
        rule: SlideRule,
        failed: Vec<FailedField>,
        first: usize,
    ) -> Self {
        let fields = fields
            .into_iter()
            .enumerate()
            .map(|(i, (name, f))| {
                let fi = first + i;
                let cells = f
                    .cells
                    .iter()
                    .enumerate()
                    .map(|(ci, c)| {
                        let call = if c.prediction == LEUKEMIA { CellCall::Blast } else { CellCall::NotBlast };
                        let decides = c.decides();
                        SlideCell {
                            id: format!("f{fi}-c{ci}"),
                            field: fi,
                            bbox: cell_box(c, f.width, f.height),
                            nucleus: c.nucleus,
                            flags: c.flags.clone(),
                            p_blast: c.p_leukemia,
                            call,
                            decides,
                            masks: c.masks.clone(),
                            gradcam: None,
                            review: None,
                            status: SlideCell::status_of(call, decides, None),
                        }
                    })
                    .collect();
                SlideField {
                    name,
                    width: f.width,
                    height: f.height,
                    um_per_px: f.scale.as_ref().map(|s| s.um_per_px),
                    scale_source: f.scale.as_ref().map(|s| s.source),
                    prediction: f.prediction.clone(),
                    cells,
                    white_cells: 0,
                    blasts: 0,
                }
            })
            .collect();
        let mut report = Self {
            format: SLIDE_FORMAT.to_string(),
            notice: NOTICE.to_string(),
            rule,
            call: SlideCall::NoWhiteCells,
            counts: SlideCounts::empty(0),
            decisive_cells: Vec::new(),
            fields,
            failed,
        };
        report.recount();
        report
    }

    /// Every cell, field by field.
    pub fn cells(&self) -> impl Iterator<Item = &SlideCell> {
        self.fields.iter().flat_map(|f| f.cells.iter())
    }

    /// The cell with this id.
    pub fn cell(&self, id: &str) -> Option<&SlideCell> {
        self.cells().find(|c| c.id == id)
    }

    /// Applies a review: every named cell takes its label (cells not named keep theirs), then
    /// every count is recomputed. A review naming an unknown cell changes nothing.
    pub fn apply(&mut self, review: &Review) -> Result<(), SlideError> {
        if review.format != REVIEW_FORMAT {
            return Err(SlideError::Format { found: review.format.clone() });
        }
        let ids: std::collections::HashSet<&str> = self.cells().map(|c| c.id.as_str()).collect();
        if let Some(bad) = review.labels.keys().find(|k| !ids.contains(k.as_str())) {
            return Err(SlideError::UnknownCell(bad.clone()));
        }
        for c in self.fields.iter_mut().flat_map(|f| f.cells.iter_mut()) {
            if let Some(l) = review.labels.get(&c.id) {
                c.review = Some(*l);
            }
        }
        self.recount();
        Ok(())
    }

    /// The review this report carries (every cell with a reviewer's label).
    pub fn review(&self) -> Review {
        let mut r = Review::new();
        for c in self.cells() {
            if let Some(l) = c.review {
                r.labels.insert(c.id.clone(), l);
            }
        }
        r
    }

    /// Recomputes every status, count, the call and the decisive cells from the cells'
    /// calls, flags and reviews (module docs).
    pub fn recount(&mut self) {
        let mut k = SlideCounts::empty(self.fields.len());
        for f in &mut self.fields {
            let (mut white, mut blasts) = (0, 0);
            for c in &mut f.cells {
                c.status = SlideCell::status_of(c.call, c.decides, c.review);
                match c.status {
                    CellStatus::Blast => blasts += 1,
                    CellStatus::Excluded => k.excluded += 1,
                    CellStatus::NotACell => k.not_a_cell += 1,
                    CellStatus::Unsure => k.unsure += 1,
                    CellStatus::NotBlast => {}
                }
                white += usize::from(c.status.counted());
                k.reviewed += usize::from(c.review.is_some());
            }
            f.white_cells = white;
            f.blasts = blasts;
            k.cells_found += f.cells.len();
            k.fields_without_cells += usize::from(f.cells.is_empty());
            k.white_cells += white;
            k.blasts += blasts;
        }
        k.blast_fraction = if k.white_cells > 0 { k.blasts as f64 / k.white_cells as f64 } else { 0.0 };
        k.blast_fraction_ci95 = wilson95(k.blasts, k.white_cells);
        self.call = if k.white_cells == 0 {
            SlideCall::NoWhiteCells
        } else if k.blast_fraction >= self.rule.blast_fraction {
            SlideCall::Flagged
        } else {
            SlideCall::NotFlagged
        };
        let mut blasts: Vec<&SlideCell> = self.cells().filter(|c| c.status == CellStatus::Blast).collect();
        blasts.sort_by(|a, b| b.p_blast.total_cmp(&a.p_blast));
        self.decisive_cells = blasts.iter().take(MAX_DECISIVE).map(|c| c.id.clone()).collect();
        self.counts = k;
    }

    /// The `k` cells worth a Grad-CAM: the cells that drove the call ([`Self::decisive_cells`],
    /// most suspicious first), then the other cells by suspicion, excluded ones included.
    pub fn gradcam_cells(&self, k: usize) -> Vec<&SlideCell> {
        let mut out: Vec<&SlideCell> = self.decisive_cells.iter().filter_map(|id| self.cell(id)).take(k).collect();
        for c in self.by_suspicion() {
            if out.len() >= k {
                break;
            }
            if !out.iter().any(|o| o.id == c.id) {
                out.push(c);
            }
        }
        out
    }

    /// Mutable access to the cell with this id.
    pub fn cell_mut(&mut self, id: &str) -> Option<&mut SlideCell> {
        self.fields.iter_mut().flat_map(|f| f.cells.iter_mut()).find(|c| c.id == id)
    }

    /// The slide's cells, most suspicious first (p(blast) descending, ties by id order).
    pub fn by_suspicion(&self) -> Vec<&SlideCell> {
        let mut v: Vec<&SlideCell> = self.cells().collect();
        v.sort_by(|a, b| b.p_blast.total_cmp(&a.p_blast));
        v
    }
}

/// Thumbnails of a slide's fields and crops of its cells, for [`render_html`]: made while
/// each decoded field is at hand, so the fields need not stay in memory.
#[derive(Debug, Clone, Default)]
pub struct SlideImages {
    /// Field index -> `data:` URL of its thumbnail.
    pub fields: BTreeMap<usize, String>,
    /// Cell id -> `data:` URL of its crop.
    pub cells: BTreeMap<String, String>,
    /// Cell id -> `data:` URL of its Grad-CAM overlay (cells with [`SlideCell::gradcam`]).
    pub gradcam: BTreeMap<String, String>,
}

/// Longest side of a field thumbnail in the HTML report.
pub const THUMB_SIDE: u32 = 720;
/// Longest side of a cell crop in the gallery.
pub const CROP_SIDE: u32 = 96;

pub use crate::explain::overlay::png_data_url;

fn jpeg_data_url(img: &image::RgbImage) -> Option<String> {
    use base64::Engine as _;
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 82).encode_image(img).ok()?;
    Some(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(buf)))
}

impl SlideImages {
    /// Adds the thumbnail of `field` (decoded as `image`) and a crop of each of its cells.
    /// An image that cannot be encoded is left out (the report then shows its boxes only).
    pub fn add_field(&mut self, index: usize, field: &SlideField, image: &image::RgbImage) {
        let (w, h) = image.dimensions();
        let k = (THUMB_SIDE as f32 / w.max(h).max(1) as f32).min(1.0);
        let thumb = image::imageops::thumbnail(
            image,
            ((w as f32 * k).round() as u32).max(1),
            ((h as f32 * k).round() as u32).max(1),
        );
        if let Some(u) = jpeg_data_url(&thumb) {
            self.fields.insert(index, u);
        }
        for c in &field.cells {
            // The box plus a quarter of its side around it, within the field.
            let b = c.bbox;
            let pad = b.width.max(b.height) / 4;
            let (x0, y0) = (b.x.saturating_sub(pad), b.y.saturating_sub(pad));
            let x1 = (b.x + b.width + pad).min(w);
            let y1 = (b.y + b.height + pad).min(h);
            if x1 <= x0 || y1 <= y0 {
                continue;
            }
            let crop = image::imageops::crop_imm(image, x0, y0, x1 - x0, y1 - y0).to_image();
            let s = (CROP_SIDE as f32 / (x1 - x0).max(y1 - y0) as f32).min(4.0);
            let crop = image::imageops::resize(
                &crop,
                (((x1 - x0) as f32 * s).round() as u32).max(1),
                (((y1 - y0) as f32 * s).round() as u32).max(1),
                image::imageops::FilterType::Triangle,
            );
            if let Some(u) = jpeg_data_url(&crop) {
                self.cells.insert(c.id.clone(), u);
            }
        }
    }
}

/// Display name of a status, and the CSS class that colours it.
pub fn status_name(s: CellStatus) -> &'static str {
    match s {
        CellStatus::Blast => "blast",
        CellStatus::NotBlast => "not blast",
        CellStatus::NotACell => "not a cell",
        CellStatus::Unsure => "unsure",
        CellStatus::Excluded => "excluded (small / smudge)",
    }
}

fn status_class(s: CellStatus) -> &'static str {
    match s {
        CellStatus::Blast => "blast",
        CellStatus::NotBlast => "not_blast",
        CellStatus::NotACell => "not_a_cell",
        CellStatus::Unsure => "unsure",
        CellStatus::Excluded => "excluded",
    }
}

/// The call in words.
pub fn call_text(call: SlideCall) -> &'static str {
    match call {
        SlideCall::Flagged => "FLAGGED for review: blast fraction at or above the level",
        SlideCall::NotFlagged => "not flagged: blast fraction below the level",
        SlideCall::NoWhiteCells => "no white cell counted: nothing to judge",
    }
}

/// A percentage as the HTML shows it (one decimal).
pub fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

const REPORT_CSS: &str =
    "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1rem;color:#222}\
.notice{background:#fff3cd;border:1px solid #e0c060;padding:.6rem 1rem;border-radius:6px;font-weight:600}\
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}\
.call{font-size:1.2rem;font-weight:700}.flagged{color:#b00020}.not_flagged{color:#0a7d32}\
.fieldwrap{position:relative;display:inline-block;max-width:100%}.fieldwrap img{display:block;max-width:100%}\
.fieldwrap svg{position:absolute;left:0;top:0;width:100%;height:100%}\
rect{fill:none;stroke-width:3;vector-effect:non-scaling-stroke}\
rect.blast{stroke:#ff1744}rect.not_blast{stroke:#00c853}rect.unsure{stroke:#ffab00}\
rect.not_a_cell{stroke:#444;stroke-dasharray:4 3}rect.excluded{stroke:#9e9e9e;stroke-dasharray:2 2}\
.gallery{display:flex;flex-wrap:wrap;gap:6px}.cell{margin:0;border:3px solid #ccc;border-radius:4px;padding:2px;\
font-size:.75rem;text-align:center;width:104px}.cell img{width:96px;height:96px;object-fit:contain;background:#f4f4f4}\
.cell.blast{border-color:#ff1744}.cell.not_blast{border-color:#00c853}.cell.unsure{border-color:#ffab00}\
.cell.not_a_cell{border-color:#444}.cell.excluded{border-color:#9e9e9e}.small{color:#555;font-size:.9rem}\
.cam{margin:0;border:3px solid #ccc;border-radius:4px;padding:2px;font-size:.75rem;text-align:center}\
.cam img{width:192px;height:192px;display:block}.cam.blast{border-color:#ff1744}.cam.not_blast{border-color:#00c853}";

/// The self-contained HTML of a report: every figure is taken from `report` (never computed
/// here), images from `images`. Numbers carry `data-k` attributes naming their JSON key.
pub fn render_html(report: &SlideReport, images: &SlideImages, title: &str) -> String {
    use std::fmt::Write as _;
    let e = crate::eval::report::html_escape;
    let k = &report.counts;
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{t}</title><style>{REPORT_CSS}</style></head>\
         <body><h1>{t}</h1><p class=notice>{n}</p>",
        t = e(title),
        n = e(&report.notice)
    );
    let call_class = match report.call {
        SlideCall::Flagged => "flagged",
        SlideCall::NotFlagged => "not_flagged",
        SlideCall::NoWhiteCells => "none",
    };
    let _ = write!(
        h,
        "<p class=\"call {call_class}\" data-k=call data-v={:?}>{}</p>",
        serde_json::to_value(report.call).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        e(call_text(report.call))
    );
    let _ = write!(h, "<h2>Counts</h2><table class=counts>");
    let row = |h: &mut String, label: &str, key: &str, value: String| {
        let _ = write!(h, "<tr><th>{}</th><td data-k={key}>{}</td></tr>", e(label), e(&value));
    };
    row(&mut h, "fields", "fields", k.fields.to_string());
    row(&mut h, "fields without a cell", "fields_without_cells", k.fields_without_cells.to_string());
    row(&mut h, "cells found", "cells_found", k.cells_found.to_string());
    row(&mut h, "white cells counted", "white_cells", k.white_cells.to_string());
    row(&mut h, "blasts", "blasts", k.blasts.to_string());
    row(&mut h, "blast fraction", "blast_fraction", pct(k.blast_fraction));
    row(
        &mut h,
        "95% CI (Wilson)",
        "blast_fraction_ci95",
        format!("{} to {}", pct(k.blast_fraction_ci95[0]), pct(k.blast_fraction_ci95[1])),
    );
    row(&mut h, "excluded (small / smudge, not reviewed)", "excluded", k.excluded.to_string());
    row(&mut h, "reviewed: not a cell", "not_a_cell", k.not_a_cell.to_string());
    row(&mut h, "reviewed: unsure", "unsure", k.unsure.to_string());
    row(&mut h, "reviewed cells", "reviewed", k.reviewed.to_string());
    let _ = write!(
        h,
        "</table><h2>Rule</h2><p>{}</p><p class=small>Level: <span data-k=level>{}</span> blasts among counted \
         white cells; cell threshold <span data-k=cell_threshold>{}</span>.</p><p class=small>{}</p>",
        e(&report.rule.text),
        pct(report.rule.blast_fraction),
        report.rule.cell_threshold,
        e(&report.rule.who_note)
    );
    let _ = write!(h, "<h2>Cells that drove the call</h2>");
    if report.decisive_cells.is_empty() {
        let _ = write!(h, "<p>No cell counts as a blast.</p>");
    } else {
        let _ = write!(h, "<ol class=decisive>");
        for id in &report.decisive_cells {
            if let Some(c) = report.cell(id) {
                let name = report.fields.get(c.field).map_or("", |f| f.name.as_str());
                let _ = write!(h, "<li data-id=\"{}\">{} in {}: p(blast) {:.3}</li>", e(id), e(id), e(name), c.p_blast);
            }
        }
        let _ = write!(h, "</ol>");
    }
    let cams: Vec<&SlideCell> = report.cells().filter(|c| c.gradcam.is_some()).collect();
    if !cams.is_empty() {
        let _ = write!(
            h,
            "<h2>Grad-CAM of the most suspicious cells</h2><p class=small>Where the model looked for its call on \
             each cell's view (red hot, blue cold); it explains the model, not the cell.</p><div class=gallery>"
        );
        let mut cams = cams;
        cams.sort_by(|a, b| b.p_blast.total_cmp(&a.p_blast));
        for c in cams {
            let img = images.gradcam.get(&c.id).map_or(String::new(), |u| format!("<img alt=\"\" src=\"{u}\">"));
            let _ = write!(
                h,
                "<figure class=\"cam {cls}\" data-gradcam=\"{id}\">{img}<figcaption>{id}<br>p {p:.3}</figcaption></figure>",
                cls = status_class(c.status),
                id = e(&c.id),
                p = c.p_blast
            );
        }
        let _ = write!(h, "</div>");
    }
    let _ = write!(h, "<h2>Cells by call, most suspicious first</h2>");
    let groups =
        [CellStatus::Blast, CellStatus::Unsure, CellStatus::NotBlast, CellStatus::Excluded, CellStatus::NotACell];
    let ranked = report.by_suspicion();
    for g in groups {
        let members: Vec<&&SlideCell> = ranked.iter().filter(|c| c.status == g).collect();
        let _ = write!(
            h,
            "<h3>{} (<span data-k=\"group-{}\">{}</span>)</h3><div class=gallery data-group={}>",
            e(status_name(g)),
            status_class(g),
            members.len(),
            status_class(g)
        );
        for c in members {
            let img = images.cells.get(&c.id).map_or(String::new(), |u| format!("<img alt=\"\" src=\"{u}\">"));
            let name = report.fields.get(c.field).map_or("", |f| f.name.as_str());
            let _ = write!(
                h,
                "<figure class=\"cell {cls}\" data-id=\"{id}\" data-p=\"{p:.4}\" title=\"{name}\">{img}\
                 <figcaption>{id}<br>p {p:.3}</figcaption></figure>",
                cls = status_class(c.status),
                id = e(&c.id),
                p = c.p_blast,
                name = e(name)
            );
        }
        let _ = write!(h, "</div>");
    }
    let _ = write!(
        h,
        "<h2>Fields</h2><p class=small>Boxes: red blast, green not blast, amber unsure, dashed grey excluded, \
         dashed black not a cell.</p>"
    );
    for (i, f) in report.fields.iter().enumerate() {
        let scale = match (f.um_per_px, f.scale_source) {
            (Some(u), Some(s)) => format!(
                "; {u:.3} um/px ({})",
                serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ),
            _ => String::new(),
        };
        let _ = write!(
            h,
            "<section class=field data-field={i}><h3>{}</h3><p class=small>{}x{}{}; \
             <span data-k=\"field-{i}-white_cells\">{}</span> white cell(s), \
             <span data-k=\"field-{i}-blasts\">{}</span> blast(s); model: {}</p>",
            e(&f.name),
            f.width,
            f.height,
            e(&scale),
            f.white_cells,
            f.blasts,
            e(&f.prediction)
        );
        let img = images.fields.get(&i).map_or(String::new(), |u| format!("<img alt=\"\" src=\"{u}\">"));
        let _ = write!(
            h,
            "<div class=fieldwrap>{img}<svg viewBox=\"0 0 {} {}\" preserveAspectRatio=\"none\">",
            f.width.max(1),
            f.height.max(1)
        );
        for c in &f.cells {
            let _ = write!(
                h,
                "<rect class={} data-id=\"{}\" x={} y={} width={} height={}><title>{} p {:.3}</title></rect>",
                status_class(c.status),
                e(&c.id),
                c.bbox.x,
                c.bbox.y,
                c.bbox.width,
                c.bbox.height,
                e(&c.id),
                c.p_blast
            );
        }
        let _ = write!(h, "</svg></div></section>");
    }
    if !report.failed.is_empty() {
        let _ = write!(h, "<h2>Fields left out</h2><ul>");
        for f in &report.failed {
            let _ = write!(h, "<li>{}: {}</li>", e(&f.name), e(&f.reason));
        }
        let _ = write!(h, "</ul>");
    }
    let _ = write!(h, "<p class=notice>{}</p></body></html>", e(&report.notice));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::ClassProbability;

    fn cell(p: f32, flags: Vec<CellFlag>) -> CellPrediction {
        CellPrediction {
            region: Region { x: -4, y: 10, width: 40, height: 40 },
            nucleus: Some(BBox { x: 5, y: 15, width: 20, height: 20 }),
            cell: Some(BBox { x: 2, y: 12, width: 30, height: 30 }),
            flags,
            masks: None,
            prediction: if p >= 0.5 { LEUKEMIA.into() } else { crate::infer::HEALTHY.into() },
            p_leukemia: p,
            subtype: None,
            probabilities: vec![ClassProbability { class: "leukemia".into(), p }],
        }
    }

    fn field(cells: Vec<CellPrediction>) -> FieldPrediction {
        FieldPrediction {
            prediction: LEUKEMIA.into(),
            p_leukemia: 0.9,
            subtype: None,
            probabilities: Vec::new(),
            decisive_cell: 0,
            cells,
            nuclei: Vec::new(),
            scale: None,
            width: 200,
            height: 100,
            threshold: 0.5,
        }
    }

    /// Two fields: 0.9 blast, 0.7 blast, 0.2, 0.1, a small 0.95 (excluded); then an empty one.
    fn report() -> SlideReport {
        let a = field(vec![cell(0.9, vec![]), cell(0.2, vec![]), cell(0.95, vec![CellFlag::Small])]);
        let b = field(vec![cell(0.1, vec![CellFlag::TouchesBorder]), cell(0.7, vec![])]);
        let c = field(Vec::new());
        SlideReport::new(
            vec![("a.png".into(), a), ("b.png".into(), b), ("c.png".into(), c)],
            SlideRule::new(0.2, 0.5).unwrap(),
            Vec::new(),
        )
    }

    #[test]
    fn counts_follow_the_model_and_the_flags() {
        let r = report();
        let k = &r.counts;
        assert_eq!((k.fields, k.fields_without_cells, k.cells_found), (3, 1, 5));
        assert_eq!((k.white_cells, k.blasts, k.excluded), (4, 2, 1));
        assert_eq!(k.blast_fraction, 0.5);
        assert_eq!(k.blast_fraction_ci95, wilson95(2, 4));
        assert!(k.blast_fraction_ci95[0] < 0.5 && k.blast_fraction_ci95[1] > 0.5);
        assert_eq!(r.call, SlideCall::Flagged);
        assert_eq!(r.decisive_cells, vec!["f0-c0".to_string(), "f1-c1".to_string()]);
        assert_eq!((r.fields[0].white_cells, r.fields[0].blasts), (2, 1));
        assert_eq!(r.cell("f0-c2").unwrap().status, CellStatus::Excluded);
        assert_eq!(r.by_suspicion()[0].id, "f0-c2");
    }

    #[test]
    fn corrections_update_the_counts() {
        let mut r = report();
        r.apply(&Review::new().with("f0-c0", ReviewLabel::NotBlast).with("f1-c1", ReviewLabel::NotBlast)).unwrap();
        assert_eq!((r.counts.white_cells, r.counts.blasts, r.counts.reviewed), (4, 0, 2));
        assert_eq!(r.call, SlideCall::NotFlagged);
        assert!(r.decisive_cells.is_empty());
        // A reviewed small cell counts: the reviewer, not the finder, has the last word.
        r.apply(&Review::new().with("f0-c2", ReviewLabel::Blast)).unwrap();
        assert_eq!((r.counts.white_cells, r.counts.blasts, r.counts.excluded), (5, 1, 0));
        assert_eq!(r.counts.blast_fraction, 0.2);
        assert_eq!(r.call, SlideCall::Flagged, "0.2 is at the level");
        assert_eq!(r.review().labels.len(), 3);
    }

    #[test]
    fn not_a_cell_leaves_the_count_and_unsure_is_counted_apart() {
        let mut r = report();
        r.apply(&Review::new().with("f0-c0", ReviewLabel::NotACell).with("f0-c1", ReviewLabel::Unsure)).unwrap();
        let k = &r.counts;
        assert_eq!((k.white_cells, k.blasts, k.not_a_cell, k.unsure), (2, 1, 1, 1));
        assert_eq!(k.cells_found, 5, "reviewed cells stay listed");
        assert_eq!(r.cell("f0-c0").unwrap().status, CellStatus::NotACell);
        assert_eq!((r.fields[0].white_cells, r.fields[0].blasts), (0, 0));
        // Relabelling replaces the earlier label.
        r.apply(&Review::new().with("f0-c0", ReviewLabel::Blast)).unwrap();
        assert_eq!((r.counts.white_cells, r.counts.blasts, r.counts.not_a_cell), (3, 2, 0));
    }

    #[test]
    fn bad_reviews_and_levels_are_errors() {
        let mut r = report();
        let before = r.clone();
        assert!(matches!(r.apply(&Review::new().with("f9-c0", ReviewLabel::Blast)), Err(SlideError::UnknownCell(_))));
        let mut other = Review::new();
        other.format = "something/2".into();
        assert!(matches!(r.apply(&other), Err(SlideError::Format { .. })));
        assert_eq!(r, before);
        assert!(SlideRule::new(0.0, 0.5).is_err() && SlideRule::new(1.5, 0.5).is_err());
        assert!(SlideRule::new(f64::NAN, 0.5).is_err());
    }

    #[test]
    fn json_round_trips_and_ids_offset() {
        let r = report();
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["fields"][0]["cells"][0]["box"]["width"], 30);
        assert_eq!(j["fields"][0]["cells"][0]["status"], "blast");
        assert_eq!(j["call"], "flagged");
        let back: SlideReport = serde_json::from_value(j).unwrap();
        assert_eq!(back, r);
        let part = SlideReport::with_first_field(
            vec![("x.png".into(), field(vec![cell(0.3, vec![])]))],
            SlideRule::new(0.2, 0.5).unwrap(),
            Vec::new(),
            7,
        );
        assert_eq!(part.fields[0].cells[0].id, "f7-c0");
        assert_eq!(part.fields[0].cells[0].field, 7);
    }

    #[test]
    fn html_shows_the_report_figures_and_escapes_names() {
        let mut r = report();
        r.fields[1].name = "<b>&.png".into();
        let mut images = SlideImages::default();
        let img = image::RgbImage::from_pixel(200, 100, image::Rgb([200, 100, 150]));
        let f0 = r.fields[0].clone();
        images.add_field(0, &f0, &img);
        assert_eq!(images.cells.len(), 3);
        let h = render_html(&r, &images, "slide");
        assert!(h.contains("<td data-k=white_cells>4</td>") && h.contains("<td data-k=blast_fraction>50.0%</td>"));
        assert!(h.contains("&lt;b&gt;&amp;.png") && !h.contains("<b>&.png"));
        assert_eq!(h.matches("<figure class=\"cell").count(), 5);
        assert_eq!(h.matches("data:image/jpeg;base64,").count(), 4);
        assert!(h.contains("data-v=\"flagged\""));
    }

    #[test]
    fn gradcam_goes_to_the_decisive_cells_first_and_shows_in_the_html() {
        let mut r = report();
        let ids = |v: Vec<&SlideCell>| v.into_iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        // Decisive: f0-c0 (0.9), f1-c1 (0.7); then by suspicion the excluded 0.95 and 0.2.
        assert_eq!(ids(r.gradcam_cells(1)), ["f0-c0"]);
        assert_eq!(ids(r.gradcam_cells(3)), ["f0-c0", "f1-c1", "f0-c2"]);
        assert_eq!(r.gradcam_cells(99).len(), 5);
        assert!(r.gradcam_cells(0).is_empty());
        r.cell_mut("f1-c1").unwrap().gradcam = Some("gradcam/f1-c1.png".into());
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["fields"][1]["cells"][1]["gradcam"], "gradcam/f1-c1.png");
        assert!(j["fields"][1]["cells"][0].get("gradcam").is_none());
        let mut images = SlideImages::default();
        images.gradcam.insert("f1-c1".into(), png_data_url(b"\x89PNG"));
        let h = render_html(&r, &images, "slide");
        assert_eq!(h.matches("data-gradcam=").count(), 1);
        assert!(h.contains("data-gradcam=\"f1-c1\"><img alt=\"\" src=\"data:image/png;base64,iVBORw==\">"));
        assert!(!render_html(&report(), &images, "slide").contains("data-gradcam="));
    }

    #[test]
    fn crops_without_cell_or_nucleus_boxes_are_clipped_to_the_field() {
        let mut c = cell(0.3, vec![]);
        c.cell = None;
        c.nucleus = None;
        assert_eq!(cell_box(&c, 20, 30), BBox { x: 0, y: 10, width: 20, height: 20 });
    }
}
