//! Cell masks as run-length encoding, for JSON: the white-cell finder's per-pixel labels
//! ([`allscan_preprocess::CellResult`]) -> one [`CellMasks`] per cell (nucleus and whole cell),
//! carried by `/api/predict`, `/api/slide`, `allscan predict --format json` and `slide.json`.
//!
//! Format of one mask ([`Rle`]), stated exactly (COCO-like, but over a box and row-major):
//! - `box` = `[x, y, w, h]` in field pixels: the mask covers columns `x..x+w`, rows `y..y+h`;
//!   every pixel outside the box is 0;
//! - `counts` = run lengths over the box's `w * h` pixels in **row-major** order (left to right,
//!   then top to bottom), alternating 0-runs and 1-runs and **starting with a run of 0s** (which
//!   is 0 when the first pixel is set). Runs never have length 0 except that first one, and they
//!   sum to `w * h`.
//!
//! Example: the 3 x 2 box at (10, 20) with rows `011` and `110` is
//! `{"box": [10, 20, 3, 2], "counts": [1, 4, 1]}`.

use allscan_preprocess::{BBox, CellResult};
use serde::{Deserialize, Serialize};

/// Errors of [`Rle::decode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The runs do not cover the box exactly.
    #[error("mask runs sum to {sum}, the {w}x{h} box holds {area} pixels")]
    Length {
        /// Sum of `counts`.
        sum: u64,
        /// Box width.
        w: u32,
        /// Box height.
        h: u32,
        /// `w * h`.
        area: u64,
    },
}

/// One binary mask over a box, run-length encoded (module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rle {
    /// `[x, y, w, h]` in field pixels.
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
    /// Alternating run lengths, row-major over the box, the first run of 0s.
    pub counts: Vec<u32>,
}

impl Rle {
    /// Encodes the mask `inside(x, y)` (field coordinates) over `bbox`.
    pub fn from_fn(bbox: BBox, mut inside: impl FnMut(u32, u32) -> bool) -> Self {
        let mut counts = Vec::new();
        let (mut value, mut run) = (false, 0u32);
        for y in bbox.y..bbox.y + bbox.height {
            for x in bbox.x..bbox.x + bbox.width {
                let v = inside(x, y);
                if v != value {
                    counts.push(run);
                    value = v;
                    run = 0;
                }
                run += 1;
            }
        }
        counts.push(run);
        Self { bbox: [bbox.x, bbox.y, bbox.width, bbox.height], counts }
    }

    /// Encodes a row-major `w * h` mask whose top-left pixel is `(x, y)` in the field.
    pub fn encode(x: u32, y: u32, w: u32, h: u32, mask: &[bool]) -> Self {
        let bbox = BBox { x, y, width: w, height: h };
        Self::from_fn(bbox, |px, py| mask.get(((py - y) * w + (px - x)) as usize).copied().unwrap_or(false))
    }

    /// The row-major `w * h` mask over the box (`true` = inside).
    pub fn decode(&self) -> Result<Vec<bool>, MaskError> {
        let [_, _, w, h] = self.bbox;
        let area = u64::from(w) * u64::from(h);
        let sum: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if sum != area {
            return Err(MaskError::Length { sum, w, h, area });
        }
        let mut out = Vec::with_capacity(area as usize);
        for (i, &c) in self.counts.iter().enumerate() {
            out.extend(std::iter::repeat_n(i % 2 == 1, c as usize));
        }
        Ok(out)
    }

    /// Pixels inside the mask.
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| u64::from(c)).sum()
    }
}

/// The masks of one white cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellMasks {
    /// The nucleus pixels, over the nucleus box.
    pub nucleus: Rle,
    /// The whole cell (nucleus + cytoplasm), over the cell box.
    pub cell: Rle,
}

/// The masks of every cell the finder kept, in `found.cells` order (cell `i` is label `i + 1`
/// of `found.labels`; its nucleus, the pixels of that label that `found.mask` marks 255).
pub fn cell_masks(found: &CellResult) -> Vec<CellMasks> {
    found
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let label = i as u32 + 1;
            let in_cell = |x: u32, y: u32| found.labels.get_pixel(x, y)[0] == label;
            CellMasks {
                nucleus: Rle::from_fn(c.nucleus, |x, y| in_cell(x, y) && found.mask.get_pixel(x, y)[0] == 255),
                cell: Rle::from_fn(c.cell, in_cell),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example() {
        let r = Rle::encode(10, 20, 3, 2, &[false, true, true, true, true, false]);
        assert_eq!(r.counts, vec![1, 4, 1]);
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"box":[10,20,3,2],"counts":[1,4,1]}"#);
        // A mask starting inside opens with an empty run of 0s.
        assert_eq!(Rle::encode(0, 0, 2, 1, &[true, false]).counts, vec![0, 1, 1]);
        assert_eq!(Rle::encode(0, 0, 2, 1, &[false, false]).counts, vec![2]);
    }

    #[test]
    fn encode_decode_round_trips() {
        let mut state = 0x9E37_79B9u32;
        for (w, h) in [(1, 1), (7, 3), (16, 16), (33, 5)] {
            for density in [0u32, 3, 8, 13, 16] {
                let mask: Vec<bool> = (0..w * h)
                    .map(|_| {
                        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (state >> 28) < density
                    })
                    .collect();
                let r = Rle::encode(5, 9, w, h, &mask);
                assert_eq!(r.decode().unwrap(), mask, "{w}x{h} at density {density}");
                assert_eq!(r.area(), mask.iter().filter(|&&b| b).count() as u64);
                assert!(r.counts.iter().skip(1).all(|&c| c > 0), "only the first run may be empty");
                let back: Rle = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
                assert_eq!(back, r);
            }
        }
    }

    #[test]
    fn runs_that_miss_the_box_are_refused() {
        let r = Rle { bbox: [0, 0, 3, 3], counts: vec![4, 4] };
        assert_eq!(r.decode(), Err(MaskError::Length { sum: 8, w: 3, h: 3, area: 9 }));
    }

    #[test]
    fn masks_are_the_finders_labels() {
        let mut rng = crate::synth::field_rng(4, 2, 0);
        let field = crate::synth::render_field(2, 256, &mut rng).image;
        let cfg = allscan_preprocess::PreprocessConfig::default();
        let scale = allscan_preprocess::estimate_scale(&field, &cfg.cell.scale);
        let found = allscan_preprocess::find_white_cells(&field, &cfg.cell.finder, &scale);
        assert!(!found.cells.is_empty(), "a synthetic field has a white cell");
        let masks = cell_masks(&found);
        assert_eq!(masks.len(), found.cells.len());
        for (i, (m, c)) in masks.iter().zip(&found.cells).enumerate() {
            assert_eq!(m.cell.area(), u64::from(c.cell_area), "cell {i}");
            assert_eq!(m.nucleus.area(), u64::from(c.nucleus_area), "nucleus {i}");
            let whole = m.cell.decode().unwrap();
            let [x0, y0, w, _] = m.cell.bbox;
            for (j, &inside) in whole.iter().enumerate() {
                let (x, y) = (x0 + j as u32 % w, y0 + j as u32 / w);
                assert_eq!(inside, found.labels.get_pixel(x, y)[0] == i as u32 + 1);
            }
        }
    }

    #[test]
    fn prediction_json_carries_the_finders_masks() {
        use allscan_preprocess::{PreprocessConfig, SegmentMode};
        let cfg = PreprocessConfig { mode: SegmentMode::Cell, input_size: 64, ..Default::default() };
        let p = crate::infer::tests::tiny_predictor(crate::model::Task::Binary, cfg.clone());
        let field = crate::synth::render_field(3, 256, &mut crate::synth::field_rng(8, 3, 1)).image;
        let json = serde_json::to_value(p.predict_field(&field).unwrap()).unwrap();
        let scale = allscan_preprocess::estimate_scale(&field, &cfg.cell.scale);
        let found = allscan_preprocess::find_white_cells(&field, &cfg.cell.finder, &scale);
        let cells = json["cells"].as_array().unwrap();
        assert!(!cells.is_empty());
        assert_eq!(cells.len(), found.cells.len(), "one view per white cell");
        for (i, c) in cells.iter().enumerate() {
            let m: CellMasks = serde_json::from_value(c["masks"].clone()).unwrap();
            let b = &found.cells[i].cell;
            assert_eq!(m.cell.bbox, [b.x, b.y, b.width, b.height]);
            assert_eq!(c["cell"]["x"], b.x, "the masks' box is the cell box of the JSON");
            let (whole, nucleus) = (m.cell.decode().unwrap(), m.nucleus.decode().unwrap());
            for (j, &inside) in whole.iter().enumerate() {
                let (x, y) = (b.x + j as u32 % b.width, b.y + j as u32 / b.width);
                assert_eq!(inside, found.labels.get_pixel(x, y)[0] == i as u32 + 1, "cell {i} at ({x}, {y})");
            }
            let n = &found.cells[i].nucleus;
            for (j, &inside) in nucleus.iter().enumerate() {
                let (x, y) = (n.x + j as u32 % n.width, n.y + j as u32 / n.width);
                let want = found.labels.get_pixel(x, y)[0] == i as u32 + 1 && found.mask.get_pixel(x, y)[0] == 255;
                assert_eq!(inside, want, "nucleus {i} at ({x}, {y})");
            }
        }
        // Old JSON without masks still reads.
        let mut old = json.clone();
        for c in old["cells"].as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("masks");
        }
        let back: crate::infer::FieldPrediction = serde_json::from_value(old).unwrap();
        assert!(back.cells.iter().all(|c| c.masks.is_none()));
    }
}
