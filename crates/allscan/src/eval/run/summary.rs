//! Evaluation, the report's inputs besides the figures: the dataset summary, the split
//! protocol, the gallery of confident errors and the terminal table.

use std::collections::BTreeSet;
use std::path::Path;

use allscan_preprocess::decode_file;
use image::RgbImage;

use super::{EvalData, EvalRequest};
use crate::bundle::RunBundle;
use crate::data::DatasetIndex;
use crate::eval::report::{most_confident_errors, summary_table, GalleryItem, ModelEvaluation, ReportInput};
use crate::eval::scoring::{per_source_figures, per_source_table, ScoredImage};
use crate::eval::EvalError;
use crate::infer::Predictor;
use crate::model::Task;

/// Side of gallery thumbnails.
const THUMB: u32 = 200;

pub(super) fn thumbnail_png(path: &Path, limits: &allscan_preprocess::DecodeLimits) -> Option<(RgbImage, Vec<u8>)> {
    let img = decode_file(path, limits).ok()?;
    let thumb = image::imageops::thumbnail(&img, THUMB, THUMB);
    Some((img, crate::explain::overlay::png_bytes(&thumb).ok()?))
}

pub(super) fn count_label(s: &[ScoredImage]) -> (usize, usize) {
    let l = s.iter().filter(|x| x.leukemia).count();
    (l, s.len() - l)
}

/// Thumbnails (and Grad-CAM overlays) of the most confident errors.
pub(super) fn error_gallery(
    data: &EvalData,
    predictor: &Predictor,
    scored: &[ScoredImage],
    model: &ModelEvaluation,
    threshold: f64,
    req: &EvalRequest,
) -> Vec<GalleryItem> {
    let limits = &data.bundle.preprocess().decode;
    let mut gallery = Vec::new();
    for i in most_confident_errors(&model.y_leukemia, &model.p_leukemia, threshold, req.gallery) {
        let s = &scored[i];
        let Some(rec) = data.index.images.iter().find(|r| r.path == s.path) else { continue };
        let Some((field, png)) = thumbnail_png(&data.index.abs_path(rec), limits) else { continue };
        let overlay_png =
            req.gradcam.then(|| crate::explain::explain_field(predictor, &field).ok()).flatten().and_then(|x| {
                let o = x.field_overlay(&field);
                crate::explain::overlay::png_bytes(&image::imageops::thumbnail(&o, THUMB, THUMB)).ok()
            });
        gallery.push(GalleryItem {
            png_bytes: png,
            overlay_png,
            caption: format!(
                "{}: true {} ({}), p(leukemia) = {:.3}{}",
                s.path,
                if s.leukemia { "leukemia" } else { "healthy" },
                s.class,
                s.p_leukemia,
                s.patient.as_deref().map(|p| format!(", patient {p}")).unwrap_or_default()
            ),
        });
    }
    gallery
}

/// The protocol paragraph of the report and the short label of what was evaluated.
pub(super) fn split_protocol(data: &EvalData, req: &EvalRequest) -> (String, String) {
    match &data.split {
        Some((s, path)) => {
            let folds = s.config.folds.map(|k| format!(", {k} folds")).unwrap_or_default();
            (
                format!(
                    "{} split of {} groups ({}; test {:.0}%, validation {:.0}%{folds}, seed {}), from {}. \
                     The {} part is evaluated; the threshold is chosen on the validation part; the \
                     colour shortcut is trained on the training part.",
                    if s.patient_level { "Patient-level" } else { "Image-level (no patient ids)" },
                    s.n_groups,
                    s.grouping,
                    s.config.test * 100.0,
                    s.config.val * 100.0,
                    s.config.seed,
                    path.display(),
                    req.part.as_str()
                ),
                format!("{} part of {} (seed {})", req.part.as_str(), path.display(), s.config.seed),
            )
        }
        None => (
            format!(
                "Cross-dataset: the model was trained on {}; every readable image of {} ({}) is \
                 evaluated. Labels: {}. The threshold is the bundle's.",
                data.bundle.config.data.root,
                req.data.display(),
                data.index.layout.describe(),
                req.map.as_deref().map_or("from the layout".to_string(), |m| format!("--map {m}"))
            ),
            format!("all images of {} (cross-dataset)", req.data.display()),
        ),
    }
}

/// The terminal table (model beside the shortcuts, per source, per patient); writes
/// `OUT/per_source.json` for a sources dataset.
pub(super) fn terminal_table(
    input: &ReportInput,
    scored: &[ScoredImage],
    threshold: f64,
    out: &Path,
) -> Result<String, EvalError> {
    let mut table = summary_table(
        &input.model.binary,
        input.shortcut.as_ref().map(|s| &s.binary),
        input.background.as_ref().map(|s| &s.binary),
    );
    let per_source = per_source_figures(scored, input, threshold)?;
    if !per_source.is_empty() {
        table.push_str(&per_source_table(&per_source));
        let path = out.join("per_source.json");
        let json = serde_json::to_string_pretty(&per_source)
            .map_err(|e| EvalError::Invalid { what: "per_source.json", reason: e.to_string() })?;
        crate::fsutil::write_atomic(&path, json.as_bytes()).map_err(|source| EvalError::Io { path, source })?;
    }
    if let Some(p) = &input.per_patient {
        table.push_str(&format!(
            "per patient ({} patients): ROC-AUC {}, sensitivity {}, specificity {}\n",
            p.binary.report.n,
            p.binary.report.roc_auc.display(3),
            p.binary.report.sensitivity.display(3),
            p.binary.report.specificity.display(3)
        ));
    }
    Ok(table)
}

pub(super) fn short_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

pub(super) fn model_name(bundle: &RunBundle) -> String {
    let task = match bundle.metadata.task {
        Task::Binary => "binary".to_string(),
        Task::Subtype { num_classes } => format!("{num_classes}-class"),
    };
    format!("model ({task}, {})", bundle.preprocess().mode)
}

pub(super) fn dataset_summary(
    index: &DatasetIndex,
    bundle: &RunBundle,
    scored: &[ScoredImage],
    threshold: f64,
    cross: bool,
) -> Vec<(String, String)> {
    let patients: BTreeSet<&str> = index.images.iter().filter_map(|r| r.patient.as_deref()).collect();
    let classes: Vec<String> = index
        .classes
        .iter()
        .map(|c| format!("{} ({}, {})", c.name, c.label.map_or("unlabelled", |l| l.as_str()), c.count))
        .collect();
    let (l, h) = count_label(scored);
    let (m, p) = (&bundle.metadata, bundle.preprocess());
    let bundles = if threshold == m.threshold { String::new() } else { format!(" (the bundle's: {:.4})", m.threshold) };
    vec![
        ("data".into(), index.root.display().to_string()),
        ("layout".into(), index.layout.describe().to_string()),
        ("images".into(), format!("{} readable, {} unreadable", index.images.len(), index.bad.len())),
        ("classes".into(), classes.join(", ")),
        (
            "patients".into(),
            if patients.is_empty() {
                "none: file names carry no patient id".into()
            } else {
                patients.len().to_string()
            },
        ),
        (
            "duplicates".into(),
            format!(
                "{} exact groups, {} near-duplicate groups",
                index.exact_duplicates.len(),
                index.near_duplicates.len()
            ),
        ),
        ("scored".into(), format!("{} images ({l} leukemia, {h} healthy)", scored.len())),
        ("run".into(), bundle.dir.display().to_string()),
        ("model classes".into(), m.class_names.join(", ")),
        (
            "preprocessing".into(),
            format!("{} mode, {} px input, threshold {threshold:.4}{bundles}", p.mode, p.input_size),
        ),
        (
            "relation to training data".into(),
            if cross { "another dataset (cross-dataset evaluation)".into() } else { "same dataset as training".into() },
        ),
    ]
}
