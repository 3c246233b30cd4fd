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
//!
//! [`FieldPrediction`]: crate::infer::FieldPrediction
//! [`CellPrediction::decides`]: crate::infer::CellPrediction::decides

mod counts;
mod html;
mod report;

pub use counts::wilson95;
pub use html::{call_text, pct, png_data_url, render_html, status_name, SlideImages, CROP_SIDE, THUMB_SIDE};
pub use report::{
    CellCall, CellStatus, FailedField, Review, ReviewLabel, SlideCall, SlideCell, SlideCounts, SlideField, SlideReport,
    SlideRule,
};

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

#[cfg(test)]
mod tests;
