//! The slide report as one self-contained HTML page: field thumbnails with boxes, cell crops
//! by call, the counts and the rule, every figure read from the report.

use std::collections::BTreeMap;

use super::{CellStatus, SlideCall, SlideCell, SlideField, SlideReport};

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
