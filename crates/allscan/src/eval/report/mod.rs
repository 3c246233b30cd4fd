//! Evaluation stage, report: figures with intervals, curves, training history and example
//! images in; `metrics.json`, a printable summary table and one self-contained HTML page
//! (plots inlined as SVG, images as base64 PNG) out.

use std::fmt::Write as _;
use std::path::Path;

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::{Deserialize, Serialize};

use super::calibration::reliability_bins;
use super::metrics::{pr_curve, roc_curve, BinaryEstimates, MulticlassEstimates, ThresholdChoice};
use super::plots::{self, NamedCurve};
use super::{write_atomic, Estimate, EvalError};
use crate::explain::overlay::png_data_url;

/// One epoch of training history. `stage` names the stage ("head", "finetune"); `epoch`
/// counts from 1 within it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub stage: String,
    pub epoch: usize,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_metric: Option<f64>,
}

/// One misclassified image for the gallery: the image, optionally a Grad-CAM overlay, and a
/// caption ("true ALL, p(leukemia) = 0.02, patient P17").
#[derive(Debug, Clone, PartialEq)]
pub struct GalleryItem {
    pub png_bytes: Vec<u8>,
    pub overlay_png: Option<Vec<u8>>,
    pub caption: String,
}

/// Scores and figures of one classifier on the test part.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEvaluation {
    pub name: String,
    pub y_leukemia: Vec<bool>,
    pub p_leukemia: Vec<f64>,
    pub binary: BinaryEstimates,
    pub subtype: Option<MulticlassEstimates>,
}

/// Everything the HTML report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportInput {
    pub title: String,
    /// Rows of the dataset table: ("images", "10,661"), ("patients", "118"), ...
    pub dataset_summary: Vec<(String, String)>,
    /// How the parts were drawn, in a sentence or two.
    pub split_protocol: String,
    pub model: ModelEvaluation,
    /// The colour-histogram baseline on the same test part.
    pub shortcut: Option<ModelEvaluation>,
    /// The same baseline on the pixels outside every white cell.
    pub background: Option<ModelEvaluation>,
    /// The model's figures per patient (where patient ids exist; see
    /// [`super::scoring::PATIENT_RULE`]).
    pub per_patient: Option<ModelEvaluation>,
    pub curves: Vec<EpochRow>,
    /// Name of `EpochRow::val_metric` ("accuracy", "balanced accuracy").
    pub curve_metric: String,
    /// How the threshold was chosen on the validation part.
    pub threshold_choice: Option<ThresholdChoice>,
    /// Where the threshold comes from: the run bundle's rule, or the one `eval` applied.
    pub threshold_rule: String,
    pub gallery: Vec<GalleryItem>,
    pub warnings: Vec<String>,
}

/// The layout of `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsFile {
    pub n: usize,
    /// Which part of which split ("test part of split.json, seed 42").
    pub split: String,
    pub threshold: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_choice: Option<ThresholdChoice>,
    /// Where `threshold` comes from (the run bundle's rule, or the one `eval` applied).
    #[serde(default)]
    pub threshold_rule: String,
    pub binary: BinaryEstimates,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtype: Option<MulticlassEstimates>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<ShortcutFigures>,
    /// The background-only baseline (pixels outside every white cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_shortcut: Option<ShortcutFigures>,
    /// Binary figures per patient, where patient ids exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_patient: Option<BinaryEstimates>,
    pub warnings: Vec<String>,
}

/// The baseline's figures in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShortcutFigures {
    pub binary: BinaryEstimates,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtype: Option<MulticlassEstimates>,
}

impl MetricsFile {
    /// Builds the file from the report input.
    pub fn from_report(input: &ReportInput, split: impl Into<String>) -> Self {
        MetricsFile {
            n: input.model.binary.report.n,
            split: split.into(),
            threshold: input.model.binary.report.threshold,
            threshold_choice: input.threshold_choice.clone(),
            threshold_rule: input.threshold_rule.clone(),
            binary: input.model.binary.clone(),
            subtype: input.model.subtype.clone(),
            shortcut: input
                .shortcut
                .as_ref()
                .map(|s| ShortcutFigures { binary: s.binary.clone(), subtype: s.subtype.clone() }),
            background_shortcut: input
                .background
                .as_ref()
                .map(|s| ShortcutFigures { binary: s.binary.clone(), subtype: s.subtype.clone() }),
            per_patient: input.per_patient.as_ref().map(|p| p.binary.clone()),
            warnings: input.warnings.clone(),
        }
    }
}

/// Writes `dir/metrics.json` and `dir/report.html`, each atomically.
pub fn write_report(dir: &Path, input: &ReportInput, split: &str) -> Result<(), EvalError> {
    let metrics = MetricsFile::from_report(input, split);
    let json = serde_json::to_string_pretty(&metrics)
        .map_err(|e| EvalError::Invalid { what: "metrics.json", reason: e.to_string() })?;
    write_atomic(&dir.join("metrics.json"), json.as_bytes())?;
    write_atomic(&dir.join("report.html"), render_report(input).as_bytes())
}

/// Indices of the `k` most confident errors at `threshold`: false positives by descending
/// `p`, false negatives by descending `1 - p`, merged by that confidence.
pub fn most_confident_errors(y: &[bool], p: &[f64], threshold: f64, k: usize) -> Vec<usize> {
    let mut errors: Vec<(f64, usize)> = y
        .iter()
        .zip(p)
        .enumerate()
        .filter(|(_, (t, s))| (**s >= threshold) != **t)
        .map(|(i, (t, s))| (if *t { 1.0 - s } else { *s }, i))
        .collect();
    errors.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    errors.into_iter().take(k).map(|(_, i)| i).collect()
}

/// Human names of the binary figures, in [`super::metrics::BINARY_FIGURES`] order.
const FIGURE_LABELS: [&str; 11] = [
    "Accuracy",
    "Balanced accuracy",
    "Sensitivity (recall)",
    "Specificity",
    "Precision (PPV)",
    "NPV",
    "F1",
    "ROC-AUC",
    "PR-AUC (average precision)",
    "Brier score (lower is better)",
    "ECE, 10 bins (lower is better)",
];

/// A plain-text table of the binary figures, model beside shortcut, for the terminal.
pub fn summary_table(
    model: &BinaryEstimates,
    shortcut: Option<&BinaryEstimates>,
    background: Option<&BinaryEstimates>,
) -> String {
    let mut out = String::new();
    let head_s = if shortcut.is_some() { "colour-only shortcut" } else { "" };
    let head_b = if background.is_some() { "background-only shortcut" } else { "" };
    let _ = writeln!(out, "{:<32} {:<26} {:<26} {}", "", "model", head_s, head_b);
    // Undefined figures get a star here and their reason in a note below, to keep the columns.
    let mut notes: Vec<String> = Vec::new();
    let mut short = |e: &Estimate, who: &str, i: usize| match &e.undefined {
        Some(r) if e.value.is_none() => {
            notes.push(format!("* {who} {}: undefined ({r})", FIGURE_LABELS[i]));
            "undefined*".to_string()
        }
        _ => e.display(3),
    };
    for (i, (_, e)) in model.report.figures().iter().enumerate() {
        let m = short(e, "model", i);
        let s = shortcut.map_or(String::new(), |s| short(s.report.figures()[i].1, "shortcut", i));
        let b = background.map_or(String::new(), |s| short(s.report.figures()[i].1, "background", i));
        let _ = writeln!(out, "{:<32} {:<26} {:<26} {}", FIGURE_LABELS[i], m, s, b);
    }
    let c = model.report.confusion_matrix;
    let _ = writeln!(
        out,
        "n = {} ({} leukemia, {} healthy); threshold {:.4}; TP {} FP {} TN {} FN {}; 95% CI from {} resamples of {}",
        model.report.n,
        model.report.n_leukemia,
        model.report.n_healthy,
        model.report.threshold,
        c.tp,
        c.fp,
        c.tn,
        c.fn_,
        model.bootstrap.n_boot,
        model.bootstrap.unit
    );
    for n in notes {
        let _ = writeln!(out, "{n}");
    }
    out
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An [`Estimate`] as a table cell: the value in bold with its interval, or why it is undefined.
pub(crate) fn estimate(e: &Estimate) -> Markup {
    html! {
        @match (e.value, e.ci95, &e.undefined) {
            (Some(v), Some([lo, hi]), _) => { b { (format!("{v:.3}")) } " " span.ci { (format!("[{lo:.3}, {hi:.3}]")) } }
            (Some(v), None, _) => b { (format!("{v:.3}")) },
            (None, _, Some(r)) => span.undef { "undefined: " (r) },
            (None, _, None) => span.undef { "undefined" },
        }
    }
}

/// [`estimate`] as an HTML string (for pages still assembled by hand).
pub(crate) fn cell(e: &Estimate) -> String {
    estimate(e).into_string()
}

/// An SVG plot, or the reason it could not be drawn.
fn plot(r: Result<String, EvalError>) -> Markup {
    html! {
        @match r {
            Ok(svg) => div.plot { (PreEscaped(svg)) },
            Err(e) => p.undef { (e.to_string()) },
        }
    }
}

fn confusion_text(c: &super::Confusion) -> String {
    format!("{} / {} / {} / {}", c.tp, c.fp, c.tn, c.fn_)
}

pub(crate) const CSS: &str = r#"
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#222;background:#f6f7f9}
main{max-width:1060px;margin:0 auto;padding:16px 28px 40px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;border-bottom:2px solid #e3e6ea;padding-bottom:4px;margin-top:30px}
.notice{background:#fff4d6;border:1px solid #e0b84a;padding:8px 12px;border-radius:4px;font-weight:600}
.warnings{background:#fdecea;border:1px solid #d9534f;padding:8px 14px;border-radius:4px}
.warnings li{margin:3px 0}
.shortcut-alert{background:#fdecea;border-left:5px solid #d9534f;padding:8px 12px;margin:10px 0}
.shortcut-ok{background:#eaf5ea;border-left:5px solid #4a9a4a;padding:8px 12px;margin:10px 0}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d5d9de;padding:4px 10px;text-align:left;font-size:14px}
th{background:#f0f2f5}.ci{color:#666;font-size:12px}.undef{color:#a33;font-style:italic;font-size:13px}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.plot svg{max-width:100%;height:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.gallery figure{margin:0;border:1px solid #d5d9de;padding:6px;border-radius:4px;background:#fafbfc}
.gallery img{width:160px;height:160px;object-fit:contain;display:block;background:#fff}
.pair{display:flex;gap:6px}
figcaption{font-size:12px;color:#444;margin-top:4px}
.small{font-size:13px;color:#555}
"#;

/// The self-contained HTML report (a maud template: every text is escaped on the way in).
pub fn render_report(input: &ReportInput) -> String {
    let m = &input.model;
    let b = &m.binary.report;
    // The baselines shown beside the model, colour first.
    let baselines: Vec<&ModelEvaluation> =
        [input.shortcut.as_ref(), input.background.as_ref()].into_iter().flatten().collect();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (input.title) }
                style { (PreEscaped(CSS)) }
            }
            body { main {
                h1 { (input.title) }
                p.notice {
                    "Research use only, not a diagnostic device. These figures describe one test set; \
                     they are not a clinical validation."
                }
                // Warnings first: they qualify everything below.
                @if !input.warnings.is_empty() {
                    div.warnings { b { "Warnings" } ul { @for w in &input.warnings { li { (w) } } } }
                }
                h2 { "Dataset" }
                table {
                    @for (k, v) in &input.dataset_summary { tr { th { (k) } td { (v) } } }
                    tr { th { "test images" } td { (b.n) " (" (b.n_leukemia) " leukemia, " (b.n_healthy) " healthy)" } }
                }
                h2 { "Split protocol" }
                p { (input.split_protocol) }
                (shortcut_section(input))
                h2 { "Binary figures (leukemia vs healthy)" }
                p.small {
                    "Threshold " (format!("{:.4}", b.threshold)) ": an image is called leukemia when \
                     p(leukemia) ≥ threshold. 95% percentile bootstrap intervals from "
                    (m.binary.bootstrap.n_boot) " resamples of " (m.binary.bootstrap.unit)
                    " (" (m.binary.bootstrap.n_units) ")."
                }
                table {
                    tr { th { "figure" } th { (m.name) } @for s in &baselines { th { (s.name) } } }
                    @for (i, (_, e)) in b.figures().iter().enumerate() {
                        tr {
                            td { (FIGURE_LABELS[i]) } td { (estimate(e)) }
                            @for s in &baselines { td { (estimate(s.binary.report.figures()[i].1)) } }
                        }
                    }
                    tr {
                        td { "Confusion (TP / FP / TN / FN)" } td { (confusion_text(&b.confusion_matrix)) }
                        @for s in &baselines { td { (confusion_text(&s.binary.report.confusion_matrix)) } }
                    }
                }
                @if !m.binary.bootstrap.notes.is_empty() {
                    ul.small { @for n in &m.binary.bootstrap.notes { li { (n) } } }
                }
                @if let Some(pp) = &input.per_patient { (patient_section(pp)) }
                (operating_point(input))
                @if let Some(sub) = &m.subtype {
                    h2 { "Subtypes" }
                    p { "Accuracy " (estimate(&sub.report.accuracy)) "; macro-F1 " (estimate(&sub.report.macro_f1)) "." }
                    table {
                        tr { th { "class" } th { "images" } th { "precision" } th { "recall" } th { "F1" } }
                        @for c in &sub.report.per_class {
                            tr {
                                td { (c.class) } td { (c.support) } td { (estimate(&c.precision)) }
                                td { (estimate(&c.recall)) } td { (estimate(&c.f1)) }
                            }
                        }
                    }
                    (plot(plots::confusion_svg(&sub.report.confusion_matrix, &sub.report.class_names)))
                }
                h2 { "Training curves" }
                @if input.curves.is_empty() {
                    p.undef { "No training history in this run." }
                } @else {
                    (plot(plots::training_curves_svg(&input.curves, &input.curve_metric)))
                }
                (curves_section(input))
                h2 { "Confusion matrix and calibration" }
                div.row {
                    @let c = b.confusion_matrix;
                    (plot(plots::confusion_svg(&[vec![c.tn, c.fp], vec![c.fn_, c.tp]], &["healthy".to_string(), "leukemia".to_string()])))
                    @match reliability_bins(&m.y_leukemia, &m.p_leukemia) {
                        Ok(bins) => (plot(plots::reliability_svg(&bins))),
                        Err(e) => p.undef { (e.to_string()) },
                    }
                }
                (gallery_section(&input.gallery))
                h2 { "Definitions" }
                ul.small {
                    li { "Sensitivity TP/(TP+FN); specificity TN/(TN+FP); PPV TP/(TP+FP); NPV TN/(TN+FN); \
                          F1 2TP/(2TP+FP+FN); balanced accuracy the mean of sensitivity and specificity." }
                    li { "ROC-AUC: Mann-Whitney statistic, ties counted one half. PR-AUC: average precision \
                          (step-wise, no interpolation, as scikit-learn)." }
                    li { "Brier score: mean squared difference between p(leukemia) and the label. ECE: 10 \
                          equal-width bins of p(leukemia), count-weighted mean |fraction leukemia - mean p|." }
                    li { "Intervals: 95% percentile bootstrap; whole patients are resampled when patient ids \
                          exist. A figure with a zero denominator is reported as undefined with the reason." }
                }
                p.small { "allscan " (env!("CARGO_PKG_VERSION")) " · research use only, not a diagnostic device." }
            } }
        }
    }
    .into_string()
        + "\n"
}

/// The headline: the model against what colour alone explains.
fn shortcut_section(input: &ReportInput) -> Markup {
    let b = &input.model.binary.report;
    html! {
        h2 { "Model against a colour-only shortcut" }
        @match &input.shortcut {
            Some(s) => {
                @let sb = &s.binary.report;
                @let text = format!(
                    "A classifier that sees only colour histograms (HSV histograms + logistic \
                     regression, trained on the same training part) reaches {} accuracy and {} \
                     ROC-AUC on this test part; the model reaches {} and {}. This is what colour \
                     alone explains.",
                    sb.accuracy.display(3), sb.roc_auc.display(3), b.accuracy.display(3), b.roc_auc.display(3)
                );
                @let close = matches!((sb.balanced_accuracy.value, b.balanced_accuracy.value), (Some(sv), Some(mv)) if mv - sv < 0.05);
                @if close {
                    p.shortcut-alert {
                        (text) " The shortcut comes within 5 points of the model's balanced accuracy: this \
                        test set cannot show that the model reads cell morphology rather than stain or \
                        scanner colour."
                    }
                } @else {
                    p.shortcut-ok { (text) }
                }
            }
            None => p.undef { "No shortcut baseline was run." },
        }
    }
}

fn patient_section(pp: &ModelEvaluation) -> Markup {
    let pb = &pp.binary.report;
    html! {
        h2 { "Per patient" }
        p.small {
            (pb.n) " patients (" (pb.n_leukemia) " leukemia, " (pb.n_healthy) " healthy); "
            (super::scoring::PATIENT_RULE) "; threshold " (format!("{:.4}", pb.threshold))
            "; intervals from " (pp.binary.bootstrap.n_boot) " resamples of patients."
        }
        table {
            tr { th { "figure" } th { (pp.name) } }
            @for (i, (_, e)) in pb.figures().iter().enumerate() { tr { td { (FIGURE_LABELS[i]) } td { (estimate(e)) } } }
            tr { td { "Confusion (TP / FP / TN / FN)" } td { (confusion_text(&pb.confusion_matrix)) } }
        }
    }
}

fn operating_point(input: &ReportInput) -> Markup {
    let b = &input.model.binary.report;
    let figure = |v: Option<f64>| v.map_or("undefined".to_string(), |v| format!("{v:.3}"));
    html! {
        h2 { "Operating point" }
        @match &input.threshold_choice {
            Some(t) => {
                p {
                    "Threshold " (format!("{:.4}", t.threshold)) ", chosen on the validation part ("
                    (t.n_leukemia) " leukemia, " (t.n_healthy) " healthy images) for sensitivity ≥ "
                    (format!("{:.3}", t.target_sensitivity)) ", at the best validation specificity, midway \
                    between the nearest healthy and leukemia scores; there it reached sensitivity "
                    (figure(t.sensitivity)) " and specificity " (figure(t.specificity)) ". On this test part: \
                    sensitivity " (b.sensitivity.display(3)) ", specificity " (b.specificity.display(3)) "."
                }
                @if let Some(w) = &t.warning { p.undef { (w) } }
            }
            None => p {
                "Threshold " (format!("{:.4}", b.threshold)) ", as stored in the run bundle (no validation \
                part of these data was used to choose it)."
            },
        }
        p { "Threshold rule: " (input.threshold_rule) "." }
    }
}

/// ROC and precision-recall curves of the model and the colour shortcut.
fn curves_section(input: &ReportInput) -> Markup {
    let m = &input.model;
    let b = &m.binary.report;
    let roc_m = roc_curve(&m.y_leukemia, &m.p_leukemia);
    let pr_m = pr_curve(&m.y_leukemia, &m.p_leukemia);
    let (roc_s, pr_s) = match &input.shortcut {
        Some(s) => (roc_curve(&s.y_leukemia, &s.p_leukemia), pr_curve(&s.y_leukemia, &s.p_leukemia)),
        None => (Vec::new(), Vec::new()),
    };
    let shortcut_name = input.shortcut.as_ref().map_or("", |s| s.name.as_str());
    let mut roc_curves = vec![NamedCurve { name: &m.name, points: &roc_m, shortcut: false }];
    let mut pr_curves = vec![NamedCurve { name: &m.name, points: &pr_m, shortcut: false }];
    if !roc_s.is_empty() {
        roc_curves.push(NamedCurve { name: shortcut_name, points: &roc_s, shortcut: true });
    }
    if !pr_s.is_empty() {
        pr_curves.push(NamedCurve { name: shortcut_name, points: &pr_s, shortcut: true });
    }
    let roc_op = b.specificity.value.map(|s| 1.0 - s).zip(b.sensitivity.value);
    let pr_op = b.sensitivity.value.zip(b.precision.value);
    let prevalence = (b.n > 0).then(|| b.n_leukemia as f64 / b.n as f64);
    html! {
        h2 { "ROC and precision-recall" }
        div.row {
            @if roc_m.is_empty() {
                p.undef { "ROC curve undefined: needs both leukemia and healthy images." }
            } @else {
                (plot(plots::roc_svg(&roc_curves, roc_op)))
            }
            @if pr_m.is_empty() {
                p.undef { "Precision-recall curve undefined: no leukemia images." }
            } @else {
                (plot(plots::pr_svg(&pr_curves, prevalence, pr_op)))
            }
        }
    }
}

fn gallery_section(gallery: &[GalleryItem]) -> Markup {
    let gradcam = gallery.iter().any(|g| g.overlay_png.is_some());
    html! {
        h2 { "Most confident errors" }
        p.small {
            (gallery.len()) " images the model got wrong with the highest confidence"
            @if gradcam { ", each beside its Grad-CAM overlay" } "."
        }
        @if gallery.is_empty() {
            p.undef { "No errors to show." }
        } @else {
            div.gallery {
                @for g in gallery {
                    figure {
                        @match &g.overlay_png {
                            Some(o) => div.pair {
                                img alt=(g.caption) src=(png_data_url(&g.png_bytes));
                                img alt={ "Grad-CAM: " (g.caption) } src=(png_data_url(o));
                            },
                            None => { img alt=(g.caption) src=(png_data_url(&g.png_bytes)); }
                        }
                        figcaption { (g.caption) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
