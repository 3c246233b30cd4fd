//! Review feeds training: a reviewed slide (`slide.json` from `allscan report --review` or the
//! page's JSON export) + the folder of its field images -> a class-folder dataset of the
//! reviewed cells (`blast/`, `normal/`), one PNG per cell, that `allscan train` reads as is or
//! as one source of an `allscan-sources.json`.
//!
//! Only cells a person labelled `blast` or `not_blast` are written (the model's own calls and
//! `unsure` / `not_a_cell` are not labels). Each crop is centred on the cell's box: a window of
//! [`WINDOW_UM`] micrometres where the field's scale is known, else [`WINDOW_BOXES`] times the
//! box's longer side, clipped to the field; the cell finder then finds the cell again in it.

use std::path::{Path, PathBuf};

use allscan_preprocess::{decode_file, DecodeLimits};
use image::RgbImage;

use crate::slide::{ReviewLabel, SlideReport};

/// Crop side in micrometres (the cell profile's 24 um window plus a margin for the finder).
pub const WINDOW_UM: f32 = 30.0;
/// Crop side as a multiple of the box's longer side when the scale is unknown.
pub const WINDOW_BOXES: f32 = 2.5;

/// What an export wrote and left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReviewExport {
    /// Cells written to `blast/`.
    pub blasts: usize,
    /// Cells written to `normal/`.
    pub normal: usize,
    /// Reviewed cells with another label (`unsure`, `not_a_cell`), not written.
    pub not_labels: usize,
    /// `(field, reason)` of fields whose image could not be read; their cells are not written.
    pub missing: Vec<(String, String)>,
}

/// Writes the reviewed cells of `report`, reading each field's image as `fields_dir/<name>`
/// (a name with `..` or a root is cut to its last component: a report cannot point outside
/// `fields_dir`).
pub fn export_reviewed_cells(
    report: &SlideReport,
    fields_dir: &Path,
    out: &Path,
    limits: &DecodeLimits,
) -> std::io::Result<ReviewExport> {
    let mut done = ReviewExport::default();
    for field in &report.fields {
        let labelled: Vec<_> = field.cells.iter().filter(|c| c.review.is_some()).collect();
        if labelled.is_empty() {
            continue;
        }
        // A relative name of plain components (`allscan report`'s sub-folders) is kept; any
        // other (absolute, `..`) is cut to its last component.
        let given = Path::new(&field.name);
        let plain = given.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        let name = if plain { given.to_path_buf() } else { given.file_name().map(PathBuf::from).unwrap_or_default() };
        let path = fields_dir.join(&name);
        let img = match decode_file(&path, limits) {
            Ok(img) => img,
            Err(e) => {
                done.missing.push((field.name.clone(), e.reason()));
                continue;
            }
        };
        let stem = name.to_string_lossy().replace(['/', '\\'], "_");
        for cell in labelled {
            let class = match cell.review {
                Some(ReviewLabel::Blast) => "blast",
                Some(ReviewLabel::NotBlast) => "normal",
                _ => {
                    done.not_labels += 1;
                    continue;
                }
            };
            let crop = window(&img, cell.bbox, field.um_per_px);
            let mut png = Vec::new();
            crop.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(std::io::Error::other)?;
            let dir = out.join(class);
            std::fs::create_dir_all(&dir)?;
            crate::fsutil::write_atomic(&dir.join(format!("{stem}-{}.png", cell.id)), &png)?;
            if class == "blast" {
                done.blasts += 1;
            } else {
                done.normal += 1;
            }
        }
    }
    Ok(done)
}

/// The square window around `b` (see the module docs), clipped to `img`.
fn window(img: &RgbImage, b: allscan_preprocess::BBox, um_per_px: Option<f32>) -> RgbImage {
    let longer = b.width.max(b.height).max(1) as f32;
    let side = match um_per_px {
        Some(u) if u > 0.0 => (WINDOW_UM / u).max(longer),
        _ => longer * WINDOW_BOXES,
    };
    let side = (side.round() as u32).clamp(1, img.width().min(img.height()).max(1));
    let (cx, cy) = (b.x + b.width / 2, b.y + b.height / 2);
    let x = cx.saturating_sub(side / 2).min(img.width() - side);
    let y = cy.saturating_sub(side / 2).min(img.height() - side);
    image::imageops::crop_imm(img, x, y, side, side).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_square_centred_and_clipped() {
        let img = RgbImage::new(200, 100);
        let b = allscan_preprocess::BBox { x: 90, y: 40, width: 20, height: 20 };
        assert_eq!(window(&img, b, None).dimensions(), (50, 50));
        // 30 um at 0.5 um/px = 60 px.
        assert_eq!(window(&img, b, Some(0.5)).dimensions(), (60, 60));
        // Near a corner the window shifts inside; never larger than the field.
        let corner = allscan_preprocess::BBox { x: 0, y: 0, width: 10, height: 10 };
        assert_eq!(window(&img, corner, Some(0.1)).dimensions(), (100, 100));
    }
}
