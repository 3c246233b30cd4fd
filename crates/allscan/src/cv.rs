//! Evaluation stage, cross-validation: a dataset folder + training options in; a grouped,
//! stratified k-fold split (test part set aside, untouched), one training run per fold
//! (fold k = validation, the other folds = training), each scored on its validation fold
//! through [`Predictor`], and `OUT/cv.json` + one `OUT/report.html` (mean ± sd per figure and
//! the per-fold tables) out.
//!
//! Each fold's threshold is chosen (by training) on the same fold it is scored on, so the
//! threshold-dependent figures are optimistic; ROC-AUC, PR-AUC and the Brier score are not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{DatasetIndex, IndexOptions, LabelMap, Part, SplitConfig, SplitFile};
use crate::eval::metrics::binary_metrics;
use crate::eval::report::{cell, html_escape, CSS};
use crate::eval::scoring::score_images;
use crate::eval::{write_atomic, EvalError};
use crate::infer::Predictor;
use crate::train::{train, TrainRequest};

/// What `allscan cv` asks for.
#[derive(Debug, Clone)]
pub struct CvRequest {
    /// Number of folds (at least 2).
    pub folds: usize,
    /// Fraction set aside as the (untouched) test part.
    pub test: f64,
    /// Training options of every fold; `data`, `out` and `split` are set per fold, the seed
    /// also draws the folds.
    pub train: TrainRequest,
}

/// `OUT/cv.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvFile {
    /// Folds.
    pub folds: usize,
    /// Whether patients were kept together.
    pub patient_level: bool,
    /// Per figure: mean ± sd over folds.
    pub summary: BTreeMap<String, MeanSd>,
    /// Each fold's figures on its validation fold.
    pub per_fold: Vec<FoldFigures>,
    /// Each fold's run folder.
    pub runs: Vec<String>,
    /// Caveats.
    pub warnings: Vec<String>,
}

/// What a cross-validation produced.
#[derive(Debug, Clone)]
pub struct CvOutcome {
    /// `cv.json`'s contents.
    pub file: CvFile,
    /// `OUT/report.html`.
    pub report_path: PathBuf,
    /// The terminal table.
    pub table: String,
}

/// The split of round `k`: fold `k` becomes the validation part, the other folds training; the
/// test part is kept as is.
pub fn fold_split(base: &SplitFile, k: usize) -> SplitFile {
    let mut s = base.clone();
    for it in &mut s.items {
        if it.part != Part::Test {
            it.part = if it.fold == Some(k) { Part::Val } else { Part::Train };
        }
    }
    let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for it in &s.items {
        *counts.entry(it.part.as_str().to_string()).or_default().entry(it.class.clone()).or_default() += 1;
    }
    s.counts = counts;
    s
}

/// Runs the k-fold cross-validation and writes `OUT/cv.json` and `OUT/report.html`.
pub fn cross_validate(req: &CvRequest) -> Result<CvOutcome, EvalError> {
    let t = &req.train;
    let out = t.out.clone();
    if out.exists() && std::fs::read_dir(&out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(EvalError::Invalid {
            what: "cross-validation",
            reason: format!("{} already exists and is not empty; choose another --out", out.display()),
        });
    }
    if req.folds < 2 {
        return Err(EvalError::Invalid {
            what: "cross-validation",
            reason: format!("{} folds: at least 2", req.folds),
        });
    }
    let map = t.map.as_deref().map(LabelMap::parse).transpose()?;
    let index = DatasetIndex::build(&t.data, &IndexOptions { map, progress: t.progress, ..Default::default() })?;
    let cfg = SplitConfig { test: req.test, val: 0.0, folds: Some(req.folds), seed: t.seed };
    let base = SplitFile::make(&index, &cfg)?;
    std::fs::create_dir_all(&out).map_err(|source| EvalError::Io { path: out.clone(), source })?;
    base.save(&out.join("split.json"))?;
    let mut warnings = Vec::new();
    if !base.patient_level {
        warnings.push(
            "no patient ids: folds are drawn by image (near-duplicates kept together), so images of \
             one patient may sit in both training and validation folds and the figures may be optimistic"
                .to_string(),
        );
    }
    warnings.push(
        "each fold's threshold is chosen on the fold it is scored on: sensitivity, specificity and \
         the other threshold figures are optimistic; ROC-AUC, PR-AUC and Brier are not"
            .to_string(),
    );
    let mut per_fold = Vec::new();
    let mut runs = Vec::new();
    for k in 0..req.folds {
        let dir = out.join(format!("fold-{k}"));
        let split = fold_split(&base, k);
        let split_path = dir.join("split.json");
        split.save(&split_path)?;
        let run_dir = dir.join("run");
        let fold_req = TrainRequest { out: run_dir.clone(), split: Some(split_path), split_config: None, ..t.clone() };
        let outcome = train(&fold_req)
            .map_err(|e| EvalError::Invalid { what: "cross-validation", reason: format!("fold {k}: {e}") })?;
        let device = crate::device::device(t.device)
            .map_err(|e| EvalError::Invalid { what: "device", reason: e.to_string() })?;
        let predictor = Predictor::from_bundle(&outcome.bundle, &device)?;
        let val = split.select(&index, Part::Val, None);
        let (scored, _) = score_images(&predictor, &index, &val, false);
        let y: Vec<bool> = scored.iter().map(|s| s.leukemia).collect();
        let p: Vec<f64> = scored.iter().map(|s| s.p_leukemia).collect();
        per_fold.push(FoldFigures { fold: k, binary: binary_metrics(&y, &p, outcome.bundle.metadata.threshold)? });
        runs.push(run_dir.display().to_string());
    }
    let summary: BTreeMap<String, MeanSd> = cv_aggregate(&per_fold).into_iter().collect();
    let file = CvFile { folds: req.folds, patient_level: base.patient_level, summary, per_fold, runs, warnings };
    let json = serde_json::to_string_pretty(&file)
        .map_err(|e| EvalError::Invalid { what: "cv.json", reason: e.to_string() })?;
    write_atomic(&out.join("cv.json"), json.as_bytes())?;
    let report_path = out.join("report.html");
    write_atomic(&report_path, render_cv_report(&file, &t.data).as_bytes())?;
    Ok(CvOutcome { table: cv_table(&file), file, report_path })
}

/// Plain-text table: figure, mean ± sd, then each fold.
pub fn cv_table(f: &CvFile) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:<20} {:<18}", "", "mean ± sd");
    for p in &f.per_fold {
        let _ = write!(s, " {:>8}", format!("fold {}", p.fold));
    }
    s.push('\n');
    for (k, name) in crate::eval::metrics::BINARY_FIGURES.iter().enumerate() {
        let m = f.summary.get(*name).map(mean_sd_display).unwrap_or_default();
        let _ = write!(s, "{name:<20} {m:<18}");
        for p in &f.per_fold {
            let v = p.binary.figures()[k].1.value.map_or("-".to_string(), |v| format!("{v:.3}"));
            let _ = write!(s, " {v:>8}");
        }
        s.push('\n');
    }
    s
}

/// One HTML page: protocol, warnings, mean ± sd and per-fold figures.
pub fn render_cv_report(f: &CvFile, data: &Path) -> String {
    let mut h = String::new();
    let title = format!("allscan {}-fold cross-validation: {}", f.folds, data.display());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{t}</title><style>{CSS}</style></head><body><main><h1>{t}</h1>",
        t = html_escape(&title)
    );
    h.push_str("<p class=notice>Research use only, not a diagnostic device.</p>");
    if !f.warnings.is_empty() {
        h.push_str("<div class=warnings><b>Warnings</b><ul>");
        for w in &f.warnings {
            let _ = write!(h, "<li>{}</li>", html_escape(w));
        }
        h.push_str("</ul></div>");
    }
    let _ = write!(
        h,
        "<h2>Protocol</h2><p>{}, stratified {}-fold split of the non-test images; in round k fold k \
         is the validation part (early stopping, threshold, figures) and the other folds train the \
         model. The test part is set aside and not used.</p>",
        if f.patient_level { "Grouped by patient" } else { "Grouped by duplicate images only (no patient ids)" },
        f.folds
    );
    h.push_str("<h2>Mean ± sd over folds</h2><table><tr><th>figure</th><th>mean ± sd</th><th>folds defined</th>");
    for p in &f.per_fold {
        let _ = write!(h, "<th>fold {}</th>", p.fold);
    }
    h.push_str("</tr>");
    for (k, name) in crate::eval::metrics::BINARY_FIGURES.iter().enumerate() {
        let (m, n) = f.summary.get(*name).map_or((String::new(), 0), |m| (mean_sd_display(m), m.n_folds));
        let _ = write!(h, "<tr><td>{name}</td><td><b>{}</b></td><td>{n}</td>", html_escape(&m));
        for p in &f.per_fold {
            let _ = write!(h, "<td>{}</td>", cell(p.binary.figures()[k].1));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><h2>Per fold</h2><table><tr><th>fold</th><th>images</th><th>leukemia</th><th>healthy</th><th>threshold</th><th>TP / FP / TN / FN</th><th>run</th></tr>");
    for (p, run) in f.per_fold.iter().zip(&f.runs) {
        let b = &p.binary;
        let c = b.confusion_matrix;
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{} / {} / {} / {}</td><td>{}</td></tr>",
            p.fold,
            b.n,
            b.n_leukemia,
            b.n_healthy,
            b.threshold,
            c.tp,
            c.fp,
            c.tn,
            c.fn_,
            html_escape(run)
        );
    }
    h.push_str("</table><p class=small>sd: sample standard deviation over folds (n - 1).</p></main></body></html>\n");
    h
}

/// One fold's figures (on its validation fold).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FoldFigures {
    /// Fold number (0-based).
    pub fold: usize,
    /// The fold's figures.
    pub binary: crate::eval::BinaryReport,
}

/// Mean and sample standard deviation of one figure over the folds where it is defined.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanSd {
    /// Mean; `None` when no fold has the figure.
    pub mean: Option<f64>,
    /// Sample standard deviation (n - 1); `None` with fewer than two folds.
    pub sd: Option<f64>,
    /// Folds that had the figure defined.
    pub n_folds: usize,
}

/// Per-figure mean ± sd over folds, in [`crate::eval::metrics::BINARY_FIGURES`] order.
pub fn cv_aggregate(folds: &[FoldFigures]) -> Vec<(String, MeanSd)> {
    crate::eval::metrics::BINARY_FIGURES
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let v: Vec<f64> = folds.iter().filter_map(|f| f.binary.figures()[k].1.value).collect();
            let n = v.len();
            let mean = (n > 0).then(|| v.iter().sum::<f64>() / n as f64);
            let sd = mean
                .filter(|_| n > 1)
                .map(|m| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
            (name.to_string(), MeanSd { mean, sd, n_folds: n })
        })
        .collect()
}

/// "0.912 ± 0.031 (5 folds)".
pub fn mean_sd_display(m: &MeanSd) -> String {
    match (m.mean, m.sd) {
        (Some(a), Some(s)) => format!("{a:.3} ± {s:.3}"),
        (Some(a), None) => format!("{a:.3}"),
        _ => "undefined".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SplitItem;

    #[test]
    fn fold_split_moves_only_non_test_items() {
        let item = |path: &str, part, fold| SplitItem { path: path.into(), class: "a".into(), part, fold, group: 0 };
        let base = SplitFile {
            format: "x".into(),
            fingerprint: "f".into(),
            config: SplitConfig { test: 0.2, val: 0.0, folds: Some(2), seed: 0 },
            grouping: "g".into(),
            patient_level: false,
            n_groups: 3,
            counts: BTreeMap::new(),
            items: vec![item("a", Part::Train, Some(0)), item("b", Part::Train, Some(1)), item("c", Part::Test, None)],
        };
        let s = fold_split(&base, 1);
        let parts: Vec<Part> = s.items.iter().map(|i| i.part).collect();
        assert_eq!(parts, vec![Part::Train, Part::Val, Part::Test]);
        assert_eq!(s.counts["val"]["a"], 1);
        let f = CvFile {
            folds: 2,
            patient_level: false,
            summary: BTreeMap::new(),
            per_fold: vec![FoldFigures { fold: 0, binary: binary_metrics(&[true, false], &[0.9, 0.1], 0.5).unwrap() }],
            runs: vec!["r<0>".into()],
            warnings: vec!["w".into()],
        };
        let html = render_cv_report(&f, Path::new("d"));
        assert!(html.contains("r&lt;0&gt;") && html.contains("fold 0"));
        assert!(cv_table(&f).contains("accuracy"));
    }

    #[test]
    fn cv_mean_and_sd() {
        let mk = |fold, p: Vec<f64>| {
            let y = vec![true, true, false, false];
            FoldFigures { fold, binary: binary_metrics(&y, &p, 0.5).unwrap() }
        };
        let folds = vec![mk(0, vec![0.9, 0.8, 0.1, 0.2]), mk(1, vec![0.9, 0.4, 0.1, 0.2])];
        let agg = cv_aggregate(&folds);
        let acc = &agg.iter().find(|(n, _)| n == "accuracy").unwrap().1;
        assert!((acc.mean.unwrap() - 0.875).abs() < 1e-12);
        // Sample sd of {1.0, 0.75}.
        assert!((acc.sd.unwrap() - (0.125f64 * 0.125 * 2.0).sqrt()).abs() < 1e-12);
        assert_eq!(acc.n_folds, 2);
        assert_eq!(mean_sd_display(acc), "0.875 ± 0.177");
        let one = cv_aggregate(&folds[..1]);
        assert!(one[0].1.sd.is_none());
    }
}
