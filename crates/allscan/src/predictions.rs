//! Prediction rows as CSV: the one writer behind `allscan predict --format csv` and `eval`'s
//! `predictions.csv`, so both give the same columns and values for the same images.
//!
//! Columns: `path,prediction,p_leukemia`, then `subtype,p_<class>...` for subtype models,
//! `um_per_px,scale_source,pixel_aspect` for cell models, and with `cells` one `field` row followed by one
//! `cell` row per view: `n_cells,level,cell,x,y,width,height` (+ the whole-cell box and flags).
//! Written through the `csv` crate: a field holding a comma, a quote or a line break (a path
//! such as `a,"b".png`) is quoted, every other field is written as is.

use std::io::Write;

use crate::infer::{ClassProbability, FieldPrediction, Predictor};

/// Which columns a prediction CSV has: set by the model ([`CsvLayout::of`]) and by whether
/// cell rows are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvLayout {
    /// The class names of a subtype model (`subtype,p_<class>...` columns); `None` otherwise.
    pub subtype_classes: Option<Vec<String>>,
    /// A cell model: the scale columns, and on cell rows the whole-cell box and flags.
    pub scale: bool,
    /// One `cell` row per view after each `field` row.
    pub cells: bool,
}

impl CsvLayout {
    /// The layout of `p`'s model, with or without cell rows.
    pub fn of(p: &Predictor, cells: bool) -> Self {
        Self { subtype_classes: p.is_subtype().then(|| p.class_names().to_vec()), scale: p.cell_mode(), cells }
    }

    /// The header row.
    pub fn header(&self) -> Vec<String> {
        let mut header = vec!["path".to_string(), "prediction".into(), "p_leukemia".into()];
        if let Some(classes) = &self.subtype_classes {
            header.push("subtype".into());
            header.extend(classes.iter().map(|c| format!("p_{c}")));
        }
        if self.scale {
            header.extend(["um_per_px", "scale_source", "pixel_aspect"].map(String::from));
        }
        if self.cells {
            header.extend(["n_cells", "level", "cell", "x", "y", "width", "height"].map(String::from));
            if self.scale {
                header.extend(["cell_x", "cell_y", "cell_width", "cell_height", "flags"].map(String::from));
            }
        }
        header
    }
}

/// Writes the header and one row per field (plus one per cell with `cells`) of `rows`
/// (`(path as shown, prediction)`), for `p`'s model.
pub fn write_csv(
    out: &mut impl Write,
    p: &Predictor,
    rows: &[(&str, &FieldPrediction)],
    cells: bool,
) -> std::io::Result<()> {
    write_rows(out, &CsvLayout::of(p, cells), rows)
}

/// [`write_csv`] for a given layout.
pub fn write_rows(out: &mut impl Write, layout: &CsvLayout, rows: &[(&str, &FieldPrediction)]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(layout.header())?;
    let classes = layout.subtype_classes.as_ref().map_or(0, Vec::len);
    let scale = layout.scale;
    for &(path, f) in rows {
        let n_cells = f.cells.len();
        let mut line = vec![path.to_string(), f.prediction.clone(), format!("{:.6}", f.p_leukemia)];
        if layout.subtype_classes.is_some() {
            line.push(f.subtype.clone().unwrap_or_default());
            line.extend(probability_columns(&f.probabilities, classes));
        }
        let scale_cols = scale_columns(f);
        if scale {
            line.extend(scale_cols.clone());
        }
        if layout.cells {
            line.extend([n_cells.to_string(), "field".into(), String::new()]);
            line.extend([0.to_string(), 0.to_string(), f.width.to_string(), f.height.to_string()]);
            if scale {
                line.extend(["", "", "", "", ""].map(String::from));
            }
        }
        w.write_record(&line)?;
        if !layout.cells {
            continue;
        }
        for (i, c) in f.cells.iter().enumerate() {
            let mut line = vec![path.to_string(), c.prediction.clone(), format!("{:.6}", c.p_leukemia)];
            if layout.subtype_classes.is_some() {
                line.push(c.subtype.clone().unwrap_or_default());
                line.extend(probability_columns(&c.probabilities, classes));
            }
            if scale {
                line.extend(scale_cols.clone());
            }
            line.extend([n_cells.to_string(), "cell".into(), i.to_string()]);
            line.extend([
                c.region.x.to_string(),
                c.region.y.to_string(),
                c.region.width.to_string(),
                c.region.height.to_string(),
            ]);
            if scale {
                match c.cell {
                    Some(b) => line.extend([b.x, b.y, b.width, b.height].map(|v| v.to_string())),
                    None => line.extend(["", "", "", ""].map(String::from)),
                }
                let flags: Vec<String> = c.flags.iter().map(|f| flag_name(*f)).collect();
                line.push(flags.join(" "));
            }
            w.write_record(&line)?;
        }
    }
    w.flush()
}

/// The `p_<class>` columns: one per class, empty where a prediction has none (a field
/// without a cell), so every row has the header's length.
fn probability_columns(probabilities: &[ClassProbability], classes: usize) -> Vec<String> {
    (0..classes).map(|i| probabilities.get(i).map(|c| format!("{:.6}", c.p)).unwrap_or_default()).collect()
}

/// `um_per_px,scale_source,pixel_aspect` of a field (empty without a scale); `um_per_px` is
/// the pixel's height, its width `pixel_aspect` times that.
pub fn scale_columns(f: &FieldPrediction) -> Vec<String> {
    match &f.scale {
        Some(s) => vec![format!("{:.4}", s.um_per_px), scale_source_name(s.source), format!("{:.3}", s.aspect.ratio)],
        None => vec![String::new(), String::new(), String::new()],
    }
}

fn scale_source_name(s: allscan_preprocess::ScaleSource) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn flag_name(f: allscan_preprocess::CellFlag) -> String {
    serde_json::to_value(f).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Predictions made by hand for the tests of this module and of [`crate::slide`].
#[cfg(test)]
pub(crate) mod fixtures {
    use allscan_preprocess::{BBox, CellFlag};

    use crate::decision::{HEALTHY, LEUKEMIA};
    use crate::infer::{CellPrediction, ClassProbability, FieldPrediction, Region};

    /// A 200x100 field of `cells`, called from `p` at 0.5.
    pub(crate) fn field(p: f32, cells: Vec<CellPrediction>) -> FieldPrediction {
        FieldPrediction {
            prediction: if p >= 0.5 { LEUKEMIA.into() } else { HEALTHY.into() },
            p_leukemia: p,
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

    /// A cell of p(leukemia) `p` (called at 0.5) with `flags`: its crop at (-4, 10) 40x40, a
    /// nucleus box and a whole-cell box at (2, 12) 30x30.
    pub(crate) fn cell(p: f32, flags: Vec<CellFlag>) -> CellPrediction {
        CellPrediction {
            region: Region { x: -4, y: 10, width: 40, height: 40 },
            nucleus: Some(BBox { x: 5, y: 15, width: 20, height: 20 }),
            cell: Some(BBox { x: 2, y: 12, width: 30, height: 30 }),
            flags,
            masks: None,
            prediction: if p >= 0.5 { LEUKEMIA.into() } else { HEALTHY.into() },
            p_leukemia: p,
            subtype: None,
            probabilities: vec![ClassProbability { class: LEUKEMIA.into(), p }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{cell, field};
    use super::*;

    fn csv_text(layout: &CsvLayout, rows: &[(&str, &FieldPrediction)]) -> String {
        let mut out = Vec::new();
        write_rows(&mut out, layout, rows).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ordinary_rows_are_plain_comma_separated_lines() {
        let layout = CsvLayout { subtype_classes: None, scale: false, cells: true };
        let f = field(0.25, vec![cell(0.75, Vec::new())]);
        assert_eq!(
            csv_text(&layout, &[("a/b.png", &f)]),
            "path,prediction,p_leukemia,n_cells,level,cell,x,y,width,height\n\
             a/b.png,healthy,0.250000,1,field,,0,0,200,100\n\
             a/b.png,leukemia,0.750000,1,cell,0,-4,10,40,40\n"
        );
        let subtype = CsvLayout { subtype_classes: Some(vec!["ALL".into(), "hem".into()]), scale: true, cells: false };
        // A subtype field without a cell has no probabilities: its row still has every column.
        let mut empty = field(0.0, Vec::new());
        empty.prediction = crate::infer::NO_WHITE_CELL.into();
        assert_eq!(
            csv_text(&subtype, &[("c.png", &empty)]),
            "path,prediction,p_leukemia,subtype,p_ALL,p_hem,um_per_px,scale_source,pixel_aspect\n\
             c.png,no white cell found,0.000000,,,,,,\n"
        );
    }

    #[test]
    fn a_path_with_a_comma_and_a_quote_round_trips() {
        let path = "lab 2/smear, \"B\"\nfield.png";
        let layout = CsvLayout { subtype_classes: None, scale: false, cells: true };
        let f = field(0.9, vec![cell(0.9, Vec::new()), cell(0.1, Vec::new())]);
        let text = csv_text(&layout, &[(path, &f), ("plain.png", &f)]);
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header = r.headers().unwrap().clone();
        assert_eq!(header.len(), layout.header().len());
        let rows: Vec<csv::StringRecord> = r.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows.len(), 6, "a field row and two cell rows per field");
        assert!(rows.iter().all(|row| row.len() == header.len()));
        assert!(rows[..3].iter().all(|row| &row[0] == path));
        assert_eq!((&rows[1][4], &rows[1][5]), ("cell", "0"));
        assert_eq!(&rows[3][0], "plain.png");
    }
}
