//! The counting rule applied: predicted fields -> a [`SlideReport`] with every status, count,
//! the call and its decisive cells, recomputed after each review.

use allscan_preprocess::BBox;

use super::{
    CellCall, CellStatus, FailedField, Review, SlideCall, SlideCell, SlideCounts, SlideError, SlideField, SlideReport,
    SlideRule, MAX_DECISIVE, NOTICE, REVIEW_FORMAT, SLIDE_FORMAT,
};
use crate::decision::LEUKEMIA;
use crate::infer::{CellPrediction, FieldPrediction, Region};

/// The box of a prediction's cell: the whole cell, else the nucleus, else the crop clipped
/// to the field.
pub(super) fn cell_box(c: &CellPrediction, width: u32, height: u32) -> BBox {
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
