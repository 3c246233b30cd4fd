//! Evaluation stage, source-identification probe: images of several sources (labs) -> how well
//! a linear classifier on the model's pooled features tells the sources apart (lower is
//! better: a model that judges cells, not labs, should carry little of the lab), beside the
//! same probe on the model's input pixels (how much of the lab the input itself still shows).
//!
//! The probe reads one class at a time (by default the normal cells: Aria's hematogones,
//! Barcelona's and the other labs' normal leukocytes), because across classes the sources
//! differ in class too (every blast here is Aria's) and a perfect blast detector would then
//! "identify" Aria. Figures: k-fold cross-validated recall per source and their mean (balanced
//! accuracy), with chance = 1 / number of sources. Multinomial logistic regression as in
//! [`super::shortcut`].

use std::collections::BTreeMap;

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::shortcut::ColourShortcut;
use super::EvalError;

/// Probe figures for one feature set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeFigures {
    /// Which features (`model features`, `model input pixels`).
    pub features: String,
    /// Cross-validated recall per source, in [`ProbeReport::sources`] order.
    pub recall: Vec<f64>,
    /// Mean of the recalls.
    pub balanced_accuracy: f64,
}

/// The probe's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Source names.
    pub sources: Vec<String>,
    /// Images per source.
    pub n: Vec<usize>,
    /// `1 / sources`.
    pub chance: f64,
    /// Cross-validation folds.
    pub folds: usize,
    /// One row per feature set.
    pub rows: Vec<ProbeFigures>,
}

/// Grey-level histogram (32 bins) and a 4x4 grid of mean grey levels of a model input: a
/// small description of the pixels the model reads.
pub fn input_features(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let mut hist = [0f32; 32];
    let mut grid = [0f32; 16];
    let mut count = [0f32; 16];
    for (x, y, p) in img.enumerate_pixels() {
        let g = (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32) / 255.0;
        hist[((g * 32.0) as usize).min(31)] += 1.0;
        let cell = (4 * y / h.max(1)).min(3) * 4 + (4 * x / w.max(1)).min(3);
        grid[cell as usize] += g;
        count[cell as usize] += 1.0;
    }
    let n = (w * h).max(1) as f32;
    let mut f: Vec<f32> = hist.iter().map(|c| c / n).collect();
    f.extend(grid.iter().zip(&count).map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 }));
    f
}

/// Cross-validated source identification on `features` (one row per image) with `labels`
/// (source index per image, `< n_sources`).
pub fn cross_validated_recall(
    features: &[Vec<f32>],
    labels: &[usize],
    n_sources: usize,
    folds: usize,
    seed: u64,
) -> Result<Vec<f64>, EvalError> {
    if features.len() != labels.len() {
        return Err(EvalError::LengthMismatch { what: "probe", left: labels.len(), right: features.len() });
    }
    let folds = folds.max(2);
    // Stratified folds: each source's images dealt round-robin after a shuffle.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold_of = vec![0usize; labels.len()];
    for s in 0..n_sources {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == s).collect();
        idx.shuffle(&mut rng);
        for (k, i) in idx.into_iter().enumerate() {
            fold_of[i] = k % folds;
        }
    }
    let (mut hit, mut total) = (vec![0usize; n_sources], vec![0usize; n_sources]);
    for f in 0..folds {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in (0..labels.len()).filter(|&i| fold_of[i] != f) {
            x.push(features[i].clone());
            y.push(labels[i]);
        }
        let model = ColourShortcut::fit(&x, &y, n_sources, seed)?;
        for i in (0..labels.len()).filter(|&i| fold_of[i] == f) {
            let p = model.predict_proba(&features[i])?;
            let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(k, _)| k);
            total[labels[i]] += 1;
            hit[labels[i]] += usize::from(best == labels[i]);
        }
    }
    Ok(hit.iter().zip(&total).map(|(h, t)| if *t == 0 { 0.0 } else { *h as f64 / *t as f64 }).collect())
}

/// The probe on named feature sets: `sets` = (name, one feature row per image), `sources` =
/// each image's source name.
pub fn probe(
    sets: &[(&str, Vec<Vec<f32>>)],
    sources: &[String],
    folds: usize,
    seed: u64,
) -> Result<ProbeReport, EvalError> {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sources {
        let k = names.len();
        names.entry(s.as_str()).or_insert(k);
    }
    if names.len() < 2 {
        return Err(EvalError::Invalid {
            what: "probe",
            reason: format!("needs 2 or more sources, got {}", names.len()),
        });
    }
    let mut order: Vec<(&str, usize)> = names.iter().map(|(k, v)| (*k, *v)).collect();
    order.sort_by_key(|(_, v)| *v);
    let labels: Vec<usize> = sources.iter().map(|s| names[s.as_str()]).collect();
    let n_sources = order.len();
    let mut rows = Vec::new();
    for (name, x) in sets {
        let recall = cross_validated_recall(x, &labels, n_sources, folds, seed)?;
        let balanced_accuracy = recall.iter().sum::<f64>() / n_sources as f64;
        rows.push(ProbeFigures { features: (*name).to_string(), recall, balanced_accuracy });
    }
    Ok(ProbeReport {
        sources: order.iter().map(|(k, _)| (*k).to_string()).collect(),
        n: (0..n_sources).map(|s| labels.iter().filter(|&&l| l == s).count()).collect(),
        chance: 1.0 / n_sources as f64,
        folds,
        rows,
    })
}

impl ProbeReport {
    /// A terminal table: one row per feature set, one column per source.
    pub fn table(&self) -> String {
        let mut out = format!("{:<22}", "source-ID probe");
        for (s, n) in self.sources.iter().zip(&self.n) {
            out.push_str(&format!(" {:>16}", format!("{s} ({n})")));
        }
        out.push_str(&format!(" {:>10}\n", "bal. acc."));
        for r in &self.rows {
            out.push_str(&format!("{:<22}", r.features));
            for v in &r.recall {
                out.push_str(&format!(" {:>16.3}", v));
            }
            out.push_str(&format!(" {:>10.3}\n", r.balanced_accuracy));
        }
        out.push_str(&format!(
            "chance {:.3}; {}-fold cross-validated recall of a linear probe; lower is better\n",
            self.chance, self.folds
        ));
        out
    }
}

/// The probe on a dataset's images `idx` (records with a source), through `predictor`'s own
/// preprocessing: each image's first view (the dominant cell in `cell` mode) gives one row of
/// model features and one of input pixels. At most `max_per_source` images per source (the
/// first ones in path order after a seeded shuffle). Unreadable images are skipped.
pub fn probe_dataset(
    predictor: &crate::infer::Predictor,
    index: &crate::data::DatasetIndex,
    idx: &[usize],
    max_per_source: usize,
    folds: usize,
    seed: u64,
) -> Result<ProbeReport, EvalError> {
    let mut by_source: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &i in idx {
        let rec = &index.images[i];
        let source = rec.source.clone().unwrap_or_else(|| "(none)".into());
        by_source.entry(source).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = Vec::new();
    for (s, mut v) in by_source {
        v.shuffle(&mut rng);
        v.truncate(max_per_source.max(1));
        chosen.extend(v.into_iter().map(|i| (s.clone(), i)));
    }
    let limits = &predictor.preprocess().decode;
    let (mut sources, mut model_rows, mut input_rows) = (Vec::new(), Vec::new(), Vec::new());
    for (s, i) in chosen {
        let Ok(img) = allscan_preprocess::decode_file(&index.abs_path(&index.images[i]), limits) else { continue };
        let Ok(views) = predictor.views(&img) else { continue };
        let Some(first) = views.images.first() else { continue };
        let emb = predictor
            .view_embeddings(&[first])
            .map_err(|e| EvalError::Invalid { what: "probe", reason: e.to_string() })?;
        let Some(e) = emb.into_iter().next() else { continue };
        input_rows.push(input_features(first));
        model_rows.push(e);
        sources.push(s);
    }
    probe(&[("model features", model_rows), ("model input pixels", input_rows)], &sources, folds, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_finds_a_separable_source_and_not_a_random_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        use rand::Rng;
        let n = 120;
        let sources: Vec<String> = (0..n).map(|i| if i % 2 == 0 { "a".into() } else { "b".into() }).collect();
        let separable: Vec<Vec<f32>> =
            (0..n).map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 } + rng.gen_range(-0.3..0.3), rng.gen()]).collect();
        let random: Vec<Vec<f32>> = (0..n).map(|_| vec![rng.gen(), rng.gen()]).collect();
        let r = probe(&[("separable", separable), ("random", random)], &sources, 5, 1).unwrap();
        assert_eq!(r.sources, vec!["a", "b"]);
        assert!(r.rows[0].balanced_accuracy > 0.95, "{:?}", r.rows[0]);
        assert!((r.rows[1].balanced_accuracy - 0.5).abs() < 0.2, "{:?}", r.rows[1]);
        assert!(probe(&[("x", vec![vec![0.0]; 3])], &["a".into(), "a".into(), "a".into()], 2, 1).is_err());
    }
}
