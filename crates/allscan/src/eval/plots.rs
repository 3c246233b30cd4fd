//! Evaluation stage, figures: curves, confusion matrices and reliability bins in, SVG
//! documents (strings) out, for inlining into the HTML report.
//!
//! plotters is built with its SVG backend only (no bitmap backend, no font files): text is
//! written as SVG `<text>` and laid out by the browser, so label widths are estimates.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::calibration::ReliabilityBin;
use super::metrics::{PrPoint, RocPoint};
use super::report::EpochRow;
use super::EvalError;

const MODEL: RGBColor = RGBColor(31, 119, 180);
const SHORTCUT: RGBColor = RGBColor(230, 120, 20);
const POINT: RGBColor = RGBColor(200, 30, 30);
const GREY: RGBColor = RGBColor(150, 150, 150);
const STAGE_COLOURS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];
const FONT: &str = "sans-serif";

fn err(plot: &'static str) -> impl Fn(String) -> EvalError {
    move |reason| EvalError::Plot { plot, reason }
}

/// Runs `draw` on a fresh SVG canvas and returns the document.
fn svg<F>(plot: &'static str, size: (u32, u32), draw: F) -> Result<String, EvalError>
where
    F: FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
{
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(plot)(e.to_string()))?;
        draw(&root).map_err(err(plot))?;
        root.present().map_err(|e| err(plot)(e.to_string()))?;
    }
    Ok(out)
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn legend_line(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
}

/// A chart of the unit square (a little headroom above 1) with its mesh and axis names.
fn unit_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
) -> Result<UnitChart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .light_line_style(WHITE)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(s)?;
    Ok(chart)
}

type UnitChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The operating point (if any) and the legend box at `position`.
fn point_and_legend<'a, 'b: 'a>(
    chart: &mut UnitChart<'a, 'b>,
    operating: Option<(f64, f64)>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    if let Some((x, y)) = operating {
        chart
            .draw_series(std::iter::once(Circle::new((x, y), 5, POINT.filled())))
            .map_err(s)?
            .label("operating point")
            .legend(|(x, y)| Circle::new((x + 9, y), 4, POINT.filled()));
    }
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(s)
}

/// A named curve for the ROC and PR plots.
pub struct NamedCurve<'a, P> {
    pub name: &'a str,
    pub points: &'a [P],
    pub shortcut: bool,
}

/// ROC curves (model and, if given, the shortcut) with the chance line and the operating point
/// `(1 - specificity, sensitivity)` at the chosen threshold.
pub fn roc_svg(curves: &[NamedCurve<'_, RocPoint>], operating: Option<(f64, f64)>) -> Result<String, EvalError> {
    svg("roc", (460, 420), |root| {
        let mut chart = unit_chart(root, "ROC curve", "1 - specificity (false positive rate)", "sensitivity")?;
        chart.draw_series(DashedLineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], 4, 4, GREY.into())).map_err(s)?;
        for c in curves {
            let colour = if c.shortcut { SHORTCUT } else { MODEL };
            chart
                .draw_series(LineSeries::new(c.points.iter().map(|p| (p.fpr, p.tpr)), colour.stroke_width(2)))
                .map_err(s)?
                .label(c.name)
                .legend(legend_line(colour));
        }
        point_and_legend(&mut chart, operating, SeriesLabelPosition::LowerRight)
    })
}

/// Precision-recall curves (step-wise, as average precision integrates them), the prevalence
/// line (a classifier that guesses) and the operating point `(sensitivity, precision)`.
pub fn pr_svg(
    curves: &[NamedCurve<'_, PrPoint>],
    prevalence: Option<f64>,
    operating: Option<(f64, f64)>,
) -> Result<String, EvalError> {
    svg("precision-recall", (460, 420), |root| {
        let mut chart = unit_chart(root, "Precision-recall curve", "sensitivity (recall)", "precision (PPV)")?;
        if let Some(p) = prevalence {
            chart.draw_series(DashedLineSeries::new(vec![(0.0, p), (1.0, p)], 4, 4, GREY.into())).map_err(s)?;
        }
        for c in curves {
            let colour = if c.shortcut { SHORTCUT } else { MODEL };
            // Steps: precision holds from one recall to the next.
            let mut pts = Vec::with_capacity(2 * c.points.len());
            for w in c.points.windows(2) {
                pts.push((w[0].recall, w[1].precision));
                pts.push((w[1].recall, w[1].precision));
            }
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                .map_err(s)?
                .label(c.name)
                .legend(legend_line(colour));
        }
        point_and_legend(&mut chart, operating, SeriesLabelPosition::LowerLeft)
    })
}

/// Confusion matrix, rows = true class, columns = predicted class; cells shaded by the row
/// fraction (so a rare class is as visible as a common one) and labelled with counts.
pub fn confusion_svg(matrix: &[Vec<u64>], labels: &[String]) -> Result<String, EvalError> {
    let k = matrix.len();
    let cell = if k <= 2 { 110 } else { 80 };
    let (left, top) = (130i32, 60i32);
    let w = left as u32 + cell * k as u32 + 20;
    let h = top as u32 + cell * k as u32 + 50;
    svg("confusion matrix", (w.max(300), h), |root| {
        let t = |size: i32| TextStyle::from((FONT, size).into_font()).color(&BLACK);
        root.draw(&Text::new(
            "predicted",
            (left + (cell as i32 * k as i32) / 2, 16),
            t(17).pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(s)?;
        root.draw(&Text::new("true", (left - 8, top - 14), t(17).pos(Pos::new(HPos::Right, VPos::Center))))
            .map_err(s)?;
        for (i, row) in matrix.iter().enumerate() {
            let total: u64 = row.iter().sum();
            let name = labels.get(i).map_or("?", String::as_str);
            root.draw(&Text::new(
                name.to_string(),
                (left - 8, top + i as i32 * cell as i32 + cell as i32 / 2),
                t(16).pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(s)?;
            for (j, &count) in row.iter().enumerate() {
                let frac = if total > 0 { count as f64 / total as f64 } else { 0.0 };
                let x0 = left + j as i32 * cell as i32;
                let y0 = top + i as i32 * cell as i32;
                // White to blue; correct cells blue, errors red.
                let (r, g, b) = if i == j { (31, 119, 180) } else { (214, 39, 40) };
                let mix = |c: u8| (255.0 - (255.0 - f64::from(c)) * frac).round() as u8;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                    RGBColor(mix(r), mix(g), mix(b)).filled(),
                ))
                .map_err(s)?;
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell as i32, y0 + cell as i32)], BLACK.stroke_width(1)))
                    .map_err(s)?;
                let colour = if frac > 0.6 { WHITE } else { BLACK };
                let centred = |size: i32| {
                    TextStyle::from((FONT, size).into_font()).color(&colour).pos(Pos::new(HPos::Center, VPos::Center))
                };
                let cx = x0 + cell as i32 / 2;
                let cy = y0 + cell as i32 / 2;
                root.draw(&Text::new(format!("{count}"), (cx, cy - 9), centred(22))).map_err(s)?;
                root.draw(&Text::new(format!("{:.0}% of row", frac * 100.0), (cx, cy + 14), centred(15))).map_err(s)?;
            }
        }
        for (j, name) in labels.iter().enumerate().take(k) {
            root.draw(&Text::new(
                name.clone(),
                (left + j as i32 * cell as i32 + cell as i32 / 2, top - 14),
                t(16).pos(Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(s)?;
        }
        Ok(())
    })
}

/// Reliability diagram: fraction of leukemia images against mean predicted probability per
/// bin (points sized by count), the diagonal of perfect calibration, and bin counts below.
pub fn reliability_svg(bins: &[ReliabilityBin]) -> Result<String, EvalError> {
    svg("reliability diagram", (460, 460), |root| {
        let (upper, lower) = root.split_vertically(340);
        let mut chart = ChartBuilder::on(&upper)
            .caption("Reliability diagram", (FONT, 18))
            .margin(12)
            .x_label_area_size(20)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
            .map_err(s)?;
        chart
            .configure_mesh()
            .y_desc("fraction leukemia")
            .light_line_style(WHITE)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(s)?;
        chart.draw_series(DashedLineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], 4, 4, GREY.into())).map_err(s)?;
        let pts: Vec<(f64, f64)> = bins.iter().filter_map(|b| Some((b.mean_p?, b.frac_leukemia?))).collect();
        chart.draw_series(LineSeries::new(pts.clone(), MODEL.stroke_width(2))).map_err(s)?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, MODEL.filled()))).map_err(s)?;

        let max_n = bins.iter().map(|b| b.n).max().unwrap_or(0).max(1) as f64;
        let mut hist = ChartBuilder::on(&lower)
            .margin_left(12)
            .margin_right(12)
            .margin_bottom(8)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..1f64, 0f64..max_n * 1.1)
            .map_err(s)?;
        hist.configure_mesh()
            .x_desc("predicted leukemia probability")
            .y_desc("images")
            .y_labels(3)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(s)?;
        hist.draw_series(
            bins.iter()
                .map(|b| Rectangle::new([(b.lo + 0.005, 0.0), (b.hi - 0.005, b.n as f64)], GREY.mix(0.7).filled())),
        )
        .map_err(s)?;
        Ok(())
    })
}

/// Training curves of both stages on one epoch axis: losses on the left, the validation
/// metric on the right; each stage in its own colour, a dashed line where a stage begins.
pub fn training_curves_svg(rows: &[EpochRow], metric_name: &str) -> Result<String, EvalError> {
    // Stages in order of first appearance; x counts epochs across stages.
    let mut stages: Vec<&str> = Vec::new();
    for r in rows {
        if !stages.contains(&r.stage.as_str()) {
            stages.push(&r.stage);
        }
    }
    let mut xs = Vec::with_capacity(rows.len());
    let mut offset = 0.0;
    let mut starts = Vec::new();
    for st in &stages {
        starts.push(offset);
        let in_stage: Vec<&EpochRow> = rows.iter().filter(|r| r.stage == *st).collect();
        let max_epoch = in_stage.iter().map(|r| r.epoch).max().unwrap_or(0);
        for r in in_stage {
            xs.push((*st, r, offset + r.epoch as f64));
        }
        offset += max_epoch as f64;
    }
    // Half an epoch of room so the last points are not cut by the frame.
    let x_max = offset.max(1.0) + 0.5;
    let loss_max = rows
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(1e-6);

    svg("training curves", (920, 360), |root| {
        let (left, right) = root.split_horizontally(460);
        let mut loss = ChartBuilder::on(&left)
            .caption("Loss", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..x_max, 0f64..loss_max * 1.05)
            .map_err(s)?;
        loss.configure_mesh()
            .x_desc("epoch (all stages)")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(WHITE)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(s)?;
        let mut metric = ChartBuilder::on(&right)
            .caption(format!("Validation {metric_name}"), (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..x_max, 0f64..1.02f64)
            .map_err(s)?;
        metric
            .configure_mesh()
            .x_desc("epoch (all stages)")
            .y_desc(metric_name)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(WHITE)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(s)?;
        for (si, st) in stages.iter().enumerate() {
            let colour = STAGE_COLOURS[si % STAGE_COLOURS.len()];
            let pick = |f: fn(&EpochRow) -> Option<f64>| -> Vec<(f64, f64)> {
                xs.iter()
                    .filter(|(name, _, _)| name == st)
                    .filter_map(|(_, r, x)| f(r).filter(|v| v.is_finite()).map(|v| (*x, v)))
                    .collect()
            };
            loss.draw_series(LineSeries::new(pick(|r| r.train_loss), colour.stroke_width(2)))
                .map_err(s)?
                .label(format!("{st}: train"))
                .legend(legend_line(colour));
            loss.draw_series(DashedLineSeries::new(pick(|r| r.val_loss), 6, 3, colour.stroke_width(2)))
                .map_err(s)?
                .label(format!("{st}: validation (dashed)"))
                .legend(legend_line(colour));
            let m = pick(|r| r.val_metric);
            metric
                .draw_series(LineSeries::new(m.clone(), colour.stroke_width(2)))
                .map_err(s)?
                .label(st.to_string())
                .legend(legend_line(colour));
            metric.draw_series(m.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(s)?;
        }
        for &x in starts.iter().skip(1) {
            loss.draw_series(DashedLineSeries::new(vec![(x, 0.0), (x, loss_max * 1.05)], 3, 3, GREY.into()))
                .map_err(s)?;
            metric.draw_series(DashedLineSeries::new(vec![(x, 0.0), (x, 1.02)], 3, 3, GREY.into())).map_err(s)?;
        }
        loss.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(s)?;
        metric
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::{pr_curve, roc_curve};

    #[test]
    fn plots_are_svg_documents() {
        let y = [true, false, true, false, true];
        let p = [0.9, 0.4, 0.6, 0.1, 0.3];
        let roc = roc_curve(&y, &p);
        let doc = roc_svg(&[NamedCurve { name: "model", points: &roc, shortcut: false }], Some((0.0, 0.67))).unwrap();
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("operating point"));
        let pr = pr_curve(&y, &p);
        let doc = pr_svg(&[NamedCurve { name: "model", points: &pr, shortcut: false }], Some(0.6), None).unwrap();
        assert!(doc.contains("<polyline") || doc.contains("<path"));
        let cm = confusion_svg(&[vec![3, 1], vec![0, 4]], &["healthy".into(), "leukemia".into()]).unwrap();
        assert!(cm.contains("\nleukemia\n") && cm.contains("\n75% of row\n"));
    }

    #[test]
    fn empty_inputs_still_draw() {
        assert!(roc_svg(&[], None).is_ok());
        assert!(reliability_svg(&[]).is_ok());
        assert!(training_curves_svg(&[], "accuracy").is_ok());
        assert!(confusion_svg(&[], &[]).is_ok());
    }
}
