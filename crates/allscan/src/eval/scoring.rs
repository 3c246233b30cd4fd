//! Evaluation stage, scoring: dataset images -> [`ScoredImage`]s through [`Predictor`] (the one
//! inference path), their `predictions.csv`, and the figures of one scorer (the model or a
//! shortcut) over them: binary and subtype figures with bootstrap CIs, per patient, per source.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use allscan_preprocess::decode_file;

use super::metrics::{binary_metrics, bootstrap_binary, bootstrap_multiclass};
use super::report::{ModelEvaluation, ReportInput};
use super::EvalError;
use crate::data::{DatasetIndex, ImageRecord};
use crate::infer::{FieldPrediction, Predictor};

/// Images decoded and scored together (bounds memory on large fields).
const SCORE_CHUNK: usize = 16;

/// One scored image.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredImage {
    /// Path relative to the dataset root.
    pub path: String,
    /// Class folder (or layout class) of the image.
    pub class: String,
    /// True label.
    pub leukemia: bool,
    /// Patient id, where the layout has one.
    pub patient: Option<String>,
    /// The model's p(leukemia) for the field.
    pub p_leukemia: f64,
    /// Class probabilities in the model's class order.
    pub probs: Vec<f64>,
    /// Source of a sources dataset's image.
    pub source: Option<String>,
}

pub(crate) fn scored_from(rec: &ImageRecord, p_leukemia: f64, probs: Vec<f64>) -> ScoredImage {
    ScoredImage {
        source: rec.source.clone(),
        path: rec.path.clone(),
        class: rec.class.clone(),
        leukemia: rec.label.is_some_and(|l| l.is_leukemia()),
        patient: rec.patient.clone(),
        p_leukemia,
        probs,
    }
}

/// `predictions.csv` of the evaluated part: `allscan predict --format csv` rows (cell rows
/// too for cell models), paths relative to the dataset root.
pub(crate) fn write_predictions(
    out: &Path,
    predictor: &Predictor,
    scored: &[ScoredImage],
    fields: &[FieldPrediction],
) -> Result<(), EvalError> {
    let rows: Vec<(&str, &FieldPrediction)> = scored.iter().map(|s| s.path.as_str()).zip(fields).collect();
    let mut csv = Vec::new();
    let path = out.join(PREDICTIONS_FILE);
    let io = |source| EvalError::Io { path: path.clone(), source };
    crate::predictions::write_csv(&mut csv, predictor, &rows, predictor.cell_mode()).map_err(io)?;
    std::fs::create_dir_all(out).map_err(io)?;
    crate::fsutil::write_atomic(&path, &csv).map_err(io)
}

/// The evaluated part's per-image rows, in the output folder.
pub const PREDICTIONS_FILE: &str = "predictions.csv";

/// Scores the images `indices` of `index`; unreadable images are skipped and returned as
/// `(path, reason)`.
pub fn score_images(
    predictor: &Predictor,
    index: &DatasetIndex,
    indices: &[usize],
    progress: bool,
) -> (Vec<ScoredImage>, Vec<(String, String)>) {
    let (scored, _, skipped) = score_fields(predictor, index, indices, progress);
    (scored, skipped)
}

/// [`score_images`], keeping each scored image's [`FieldPrediction`] (same order).
pub fn score_fields(
    predictor: &Predictor,
    index: &DatasetIndex,
    indices: &[usize],
    progress: bool,
) -> (Vec<ScoredImage>, Vec<FieldPrediction>, Vec<(String, String)>) {
    let bar = crate::progress::bar(indices.len() as u64, "scoring", progress);
    let limits = &predictor.preprocess().decode;
    // Each source is one instrument: its images share a pooled scale (`Predictor::predict_set`).
    let mut sets: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
    for &i in indices {
        sets.entry(index.images[i].source.as_deref()).or_default().push(i);
    }
    let mut results: BTreeMap<usize, Result<FieldPrediction, String>> = BTreeMap::new();
    for set in sets.values() {
        let load = |k: usize| {
            let rec = &index.images[set[k]];
            decode_file(&index.abs_path(rec), limits).map(|img| (img, rec.um_per_px)).map_err(|e| e.to_string())
        };
        let predicted = predictor.predict_set(set.len(), SCORE_CHUNK, &load, &|n| bar.inc(n));
        results.extend(set.iter().copied().zip(predicted));
    }
    bar.finish_and_clear();
    let mut fps = Vec::with_capacity(indices.len());
    let mut out = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for &i in indices {
        let rec = &index.images[i];
        match results.remove(&i) {
            Some(Ok(fp)) => {
                let probs = fp.probabilities.iter().map(|c| f64::from(c.p).clamp(0.0, 1.0)).collect();
                out.push(scored_from(rec, f64::from(fp.p_leukemia).clamp(0.0, 1.0), probs));
                fps.push(fp);
            }
            Some(Err(e)) => skipped.push((rec.path.clone(), e)),
            None => {}
        }
    }
    (out, fps, skipped)
}

/// Bootstrap groups: patient ids where any image has one (an image without one is its own
/// group), otherwise `None` (resample images).
pub fn bootstrap_groups(scored: &[ScoredImage]) -> Option<Vec<String>> {
    scored
        .iter()
        .any(|s| s.patient.is_some())
        .then(|| scored.iter().map(|s| s.patient.clone().unwrap_or_else(|| format!("image:{}", s.path))).collect())
}

/// Scores of one classifier: binary figures at `threshold` and, with `subtype_classes`,
/// multiclass figures over them (every image's class must be one of them).
pub fn evaluate_scores(
    name: &str,
    scored: &[ScoredImage],
    threshold: f64,
    subtype_classes: Option<&[String]>,
    n_boot: usize,
    seed: u64,
) -> Result<ModelEvaluation, EvalError> {
    let y: Vec<bool> = scored.iter().map(|s| s.leukemia).collect();
    let p: Vec<f64> = scored.iter().map(|s| s.p_leukemia).collect();
    let groups = bootstrap_groups(scored);
    let binary = bootstrap_binary(&y, &p, threshold, groups.as_deref(), n_boot, seed)?;
    let subtype = match subtype_classes {
        Some(names) => {
            let mut yc = Vec::with_capacity(scored.len());
            for s in scored {
                let k = names.iter().position(|n| *n == s.class).ok_or_else(|| EvalError::Invalid {
                    what: "subtype figures",
                    reason: format!("class `{}` of {} is not one of {names:?}", s.class, s.path),
                })?;
                yc.push(k);
            }
            let probs: Vec<Vec<f64>> = scored.iter().map(|s| s.probs.clone()).collect();
            Some(bootstrap_multiclass(&yc, &probs, names, groups.as_deref(), n_boot, seed)?)
        }
        None => None,
    };
    Ok(ModelEvaluation { name: name.to_string(), y_leukemia: y, p_leukemia: p, binary, subtype })
}

/// Per-patient scores: a patient is leukemia when any of their images is (C-NMC subjects are
/// all one or the other) and their p(leukemia) is the mean over their images.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientScores {
    /// Patient ids, sorted.
    pub patients: Vec<String>,
    /// Patient labels.
    pub y: Vec<bool>,
    /// Mean p(leukemia) per patient.
    pub p: Vec<f64>,
    /// Patients whose images carry both labels.
    pub mixed: Vec<String>,
}

/// The aggregation rule, in words, for reports.
pub const PATIENT_RULE: &str =
    "a patient's p(leukemia) is the mean over their images; a patient is leukemia when any of their images is";

/// Aggregates images to patients; `None` when no image has a patient id. Images without one
/// are left out.
pub fn per_patient(scored: &[ScoredImage]) -> Option<PatientScores> {
    let mut by: BTreeMap<&str, (bool, bool, f64, usize)> = BTreeMap::new();
    for s in scored {
        let Some(pid) = s.patient.as_deref() else { continue };
        let e = by.entry(pid).or_insert((false, false, 0.0, 0));
        if s.leukemia {
            e.0 = true;
        } else {
            e.1 = true;
        }
        e.2 += s.p_leukemia;
        e.3 += 1;
    }
    if by.is_empty() {
        return None;
    }
    let mut out = PatientScores { patients: Vec::new(), y: Vec::new(), p: Vec::new(), mixed: Vec::new() };
    for (pid, (any_l, any_h, sum, n)) in by {
        out.patients.push(pid.to_string());
        out.y.push(any_l);
        out.p.push((sum / n as f64).clamp(0.0, 1.0));
        if any_l && any_h {
            out.mixed.push(pid.to_string());
        }
    }
    Some(out)
}

/// One source's figures at the evaluation's threshold (sources datasets).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceFigures {
    /// Source name.
    pub source: String,
    /// Images scored.
    pub n: usize,
    /// Of those, leukemia (blast).
    pub n_leukemia: usize,
    /// The model's and each shortcut's figures.
    pub rows: Vec<SourceRow>,
}

/// One scorer's figures on one source; `None` where undefined (one class only).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceRow {
    /// The model or the shortcut's name.
    pub who: String,
    pub roc_auc: Option<f64>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
}

/// Per-source figures of the model and the shortcuts (empty unless images carry a source).
pub(crate) fn per_source_figures(
    scored: &[ScoredImage],
    input: &ReportInput,
    threshold: f64,
) -> Result<Vec<SourceFigures>, EvalError> {
    let sources: BTreeSet<&str> = scored.iter().filter_map(|s| s.source.as_deref()).collect();
    let mut out = Vec::new();
    for src in sources {
        let idx: Vec<usize> = (0..scored.len()).filter(|&i| scored[i].source.as_deref() == Some(src)).collect();
        let mut rows = Vec::new();
        for e in [Some(&input.model), input.shortcut.as_ref(), input.background.as_ref()].into_iter().flatten() {
            if e.y_leukemia.len() != scored.len() {
                continue;
            }
            let y: Vec<bool> = idx.iter().map(|&i| e.y_leukemia[i]).collect();
            let p: Vec<f64> = idx.iter().map(|&i| e.p_leukemia[i]).collect();
            let t = if std::ptr::eq(e, &input.model) { threshold } else { e.binary.report.threshold };
            let r = binary_metrics(&y, &p, t)?;
            rows.push(SourceRow {
                who: e.name.clone(),
                roc_auc: r.roc_auc.value,
                sensitivity: r.sensitivity.value,
                specificity: r.specificity.value,
            });
        }
        out.push(SourceFigures {
            source: src.to_string(),
            n: idx.len(),
            n_leukemia: idx.iter().filter(|&&i| scored[i].leukemia).count(),
            rows,
        });
    }
    Ok(out)
}

pub(crate) fn per_source_table(rows: &[SourceFigures]) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut out = String::from("per source (each at its own threshold):\n");
    for s in rows {
        out.push_str(&format!("  {} ({} images, {} leukemia)\n", s.source, s.n, s.n_leukemia));
        for r in &s.rows {
            out.push_str(&format!(
                "    {:<34} ROC-AUC {:>6}  sensitivity {:>6}  specificity {:>6}\n",
                r.who,
                f(r.roc_auc),
                f(r.sensitivity),
                f(r.specificity)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(path: &str, class: &str, leukemia: bool, patient: Option<&str>, p: f64) -> ScoredImage {
        ScoredImage {
            path: path.into(),
            class: class.into(),
            leukemia,
            patient: patient.map(Into::into),
            p_leukemia: p,
            probs: vec![1.0 - p, p],
            source: None,
        }
    }

    #[test]
    fn per_patient_means_and_flags_mixed_patients() {
        let v = vec![
            s("a", "all", true, Some("P1"), 0.9),
            s("b", "all", true, Some("P1"), 0.7),
            s("c", "hem", false, Some("H2"), 0.2),
            s("d", "hem", false, Some("P3"), 0.4),
            s("e", "all", true, Some("P3"), 0.6),
            s("f", "all", true, None, 0.6),
        ];
        let p = per_patient(&v).unwrap();
        assert_eq!(p.patients, vec!["H2", "P1", "P3"]);
        assert_eq!(p.y, vec![false, true, true]);
        assert!((p.p[1] - 0.8).abs() < 1e-12 && (p.p[2] - 0.5).abs() < 1e-12);
        assert_eq!(p.mixed, vec!["P3"]);
        assert!(per_patient(&v[5..]).is_none());
        // Bootstrap groups: patients, and the image without one on its own.
        let g = bootstrap_groups(&v).unwrap();
        assert_eq!(g[0], g[1]);
        assert_eq!(g[5], "image:f");
        assert!(bootstrap_groups(&v[5..]).is_none());
    }

    #[test]
    fn scores_become_binary_and_subtype_figures() {
        let names: Vec<String> = vec!["hem".into(), "all".into()];
        let v: Vec<ScoredImage> = (0..40)
            .map(|i| {
                let l = i % 2 == 0;
                s(
                    &format!("x{i}"),
                    if l { "all" } else { "hem" },
                    l,
                    Some(&format!("P{}", i / 4)),
                    if l { 0.8 } else { 0.3 },
                )
            })
            .collect();
        let e = evaluate_scores("m", &v, 0.5, Some(&names), 200, 1).unwrap();
        assert_eq!(e.binary.report.accuracy.value, Some(1.0));
        assert_eq!(e.binary.bootstrap.unit, "patients");
        assert_eq!(e.subtype.as_ref().unwrap().report.accuracy.value, Some(1.0));
        let bad: Vec<String> = vec!["Benign".into(), "Pro".into()];
        assert!(evaluate_scores("m", &v, 0.5, Some(&bad), 10, 1).is_err());
    }
}
