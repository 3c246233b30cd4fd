//! Prediction rows as CSV: the one writer behind `allscan predict --format csv` and `eval`'s
//! `predictions.csv`, so both give the same columns and values for the same images.
//!
//! Columns: `path,prediction,p_leukemia`, then `subtype,p_<class>...` for subtype models,
//! `um_per_px,scale_source` for cell models, and with `cells` one `field` row followed by one
//! `cell` row per view: `n_cells,level,cell,x,y,width,height` (+ the whole-cell box and flags).

use std::io::Write;

use crate::infer::{FieldPrediction, Predictor};

/// One CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
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
    let mut header = vec!["path".to_string(), "prediction".into(), "p_leukemia".into()];
    if p.is_subtype() {
        header.push("subtype".into());
        header.extend(p.class_names().iter().map(|c| format!("p_{c}")));
    }
    let scale = p.cell_mode();
    if scale {
        header.extend(["um_per_px", "scale_source"].map(String::from));
    }
    if cells {
        header.extend(["n_cells", "level", "cell", "x", "y", "width", "height"].map(String::from));
        if scale {
            header.extend(["cell_x", "cell_y", "cell_width", "cell_height", "flags"].map(String::from));
        }
    }
    writeln!(out, "{}", header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","))?;
    for &(path, f) in rows {
        let n_cells = f.cells.len();
        let mut line = vec![csv_field(path), f.prediction.clone(), format!("{:.6}", f.p_leukemia)];
        if p.is_subtype() {
            line.push(csv_field(f.subtype.as_deref().unwrap_or("")));
            line.extend(f.probabilities.iter().map(|c| format!("{:.6}", c.p)));
        }
        let scale_cols = scale_columns(f);
        if scale {
            line.extend(scale_cols.clone());
        }
        if cells {
            line.extend([n_cells.to_string(), "field".into(), String::new()]);
            line.extend([0.to_string(), 0.to_string(), f.width.to_string(), f.height.to_string()]);
            if scale {
                line.extend(["", "", "", "", ""].map(String::from));
            }
        }
        writeln!(out, "{}", line.join(","))?;
        if cells {
            for (i, c) in f.cells.iter().enumerate() {
                let mut line = vec![csv_field(path), c.prediction.clone(), format!("{:.6}", c.p_leukemia)];
                if p.is_subtype() {
                    line.push(csv_field(c.subtype.as_deref().unwrap_or("")));
                    line.extend(c.probabilities.iter().map(|x| format!("{:.6}", x.p)));
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
                writeln!(out, "{}", line.join(","))?;
            }
        }
    }
    Ok(())
}

/// `um_per_px,scale_source` of a field (empty without a scale).
pub fn scale_columns(f: &FieldPrediction) -> Vec<String> {
    match &f.scale {
        Some(s) => vec![format!("{:.4}", s.um_per_px), scale_source_name(s.source)],
        None => vec![String::new(), String::new()],
    }
}

fn scale_source_name(s: allscan_preprocess::ScaleSource) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn flag_name(f: allscan_preprocess::CellFlag) -> String {
    serde_json::to_value(f).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}
