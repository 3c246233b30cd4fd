//! Bootstrap intervals of the figures: resamples of images, or of whole patients, drawn as
//! per-image multiplicities over data sorted once (see the parent module's notes).

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Draws resamples as per-image multiplicities: of images, or of whole groups (patients).
pub(super) struct Resampler {
    /// Unit index of each image.
    unit_of: Vec<usize>,
    n_units: usize,
    rng: ChaCha8Rng,
    counts: Vec<u32>,
}

impl Resampler {
    pub(super) fn new(n: usize, groups: Option<&[String]>, seed: u64) -> Self {
        let (unit_of, n_units) = match groups {
            Some(g) => {
                let mut ids: HashMap<&str, usize> = HashMap::new();
                let unit_of: Vec<usize> = g
                    .iter()
                    .map(|s| {
                        let next = ids.len();
                        *ids.entry(s.as_str()).or_insert(next)
                    })
                    .collect();
                (unit_of, ids.len())
            }
            None => ((0..n).collect(), n),
        };
        Resampler { unit_of, n_units, rng: ChaCha8Rng::seed_from_u64(seed), counts: vec![0; n_units] }
    }

    pub(super) fn draw(&mut self, w: &mut [f64]) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        if self.n_units > 0 {
            for _ in 0..self.n_units {
                let u = self.rng.gen_range(0..self.n_units);
                self.counts[u] += 1;
            }
        }
        for (wi, &u) in w.iter_mut().zip(&self.unit_of) {
            *wi = f64::from(self.counts[u]);
        }
    }
}

fn check_groups(what: &'static str, n: usize, groups: Option<&[String]>) -> Result<(), EvalError> {
    match groups {
        Some(g) if g.len() != n => Err(EvalError::LengthMismatch { what, left: n, right: g.len() }),
        _ => Ok(()),
    }
}

/// Percentile interval from the defined resample values; notes when some were undefined.
fn fill_interval(
    est: &mut Estimate,
    name: &str,
    mut samples: Vec<f64>,
    undefined_reasons: &HashMap<String, usize>,
    n_boot: usize,
    notes: &mut Vec<String>,
) {
    if est.value.is_none() || n_boot == 0 {
        return;
    }
    let n_undefined = n_boot - samples.len();
    if n_undefined > 0 {
        let mut why: Vec<(&String, &usize)> = undefined_reasons.iter().collect();
        why.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let why = why.first().map(|(r, _)| r.as_str()).unwrap_or("undefined");
        // Fewer than half the resamples defined: the interval would describe a different
        // population than the point value, so none is given.
        if samples.len() * 2 < n_boot {
            notes.push(format!("{name}: {n_undefined} of {n_boot} resamples undefined ({why}); no interval"));
            return;
        }
        notes.push(format!(
            "{name}: {n_undefined} of {n_boot} resamples undefined ({why}); interval from the other {}",
            samples.len()
        ));
    }
    samples.sort_by(f64::total_cmp);
    est.ci95 = Some([quantile(&samples, 0.025), quantile(&samples, 0.975)]);
}

/// Quantile of sorted, non-empty data with linear interpolation (numpy's default).
pub(super) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Binary figures at `threshold` with 95% percentile bootstrap intervals from `n_boot`
/// resamples of images, or of whole groups when `groups` (one patient id per image) is given.
/// Deterministic for a given `seed`.
pub fn bootstrap_binary(
    y_leukemia: &[bool],
    p_leukemia: &[f64],
    threshold: f64,
    groups: Option<&[String]>,
    n_boot: usize,
    seed: u64,
) -> Result<BinaryEstimates, EvalError> {
    let mut report = binary_metrics(y_leukemia, p_leukemia, threshold)?;
    check_groups("bootstrap", y_leukemia.len(), groups)?;
    let order = order_desc(p_leukemia);
    let bootstrap = resample(
        (y_leukemia.len(), groups, n_boot, seed),
        &BINARY_FIGURES.map(String::from),
        report.figures_mut().into_iter().collect(),
        |w| binary_core(y_leukemia, p_leukemia, &order, w, threshold).figures.to_vec(),
    );
    Ok(BinaryEstimates { report, bootstrap })
}

/// Draws `n_boot` weightings of `n` images (or of `groups`' patients, see [`Resampler`]),
/// computes `figures` under each and fills each estimate's interval from them (named by
/// `names`, one per estimate, for the notes).
fn resample(
    (n, groups, n_boot, seed): (usize, Option<&[String]>, usize, u64),
    names: &[String],
    estimates: Vec<&mut Estimate>,
    mut figures: impl FnMut(&[f64]) -> Vec<Figure>,
) -> BootstrapInfo {
    let mut sampler = Resampler::new(n, groups, seed);
    let mut w = vec![0.0; n];
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(n_boot); names.len()];
    let mut undefined: Vec<HashMap<String, usize>> = vec![HashMap::new(); names.len()];
    for _ in 0..n_boot {
        sampler.draw(&mut w);
        for (i, f) in figures(&w).into_iter().enumerate() {
            match f {
                Ok(v) => samples[i].push(v),
                Err(r) => *undefined[i].entry(r).or_insert(0) += 1,
            }
        }
    }
    let mut notes = Vec::new();
    for (i, (est, s)) in estimates.into_iter().zip(samples).enumerate() {
        fill_interval(est, &names[i], s, &undefined[i], n_boot, &mut notes);
    }
    BootstrapInfo {
        n_boot,
        unit: if groups.is_some() { "patients" } else { "images" }.to_string(),
        n_units: sampler.n_units,
        seed,
        notes,
    }
}

/// Multiclass figures with 95% percentile bootstrap intervals; resampling as in
/// [`bootstrap_binary`].
pub fn bootstrap_multiclass(
    y: &[usize],
    probs: &[Vec<f64>],
    class_names: &[String],
    groups: Option<&[String]>,
    n_boot: usize,
    seed: u64,
) -> Result<MulticlassEstimates, EvalError> {
    let pred = check_multiclass("multiclass bootstrap", y, probs, class_names)?;
    check_groups("multiclass bootstrap", y.len(), groups)?;
    let k = class_names.len();
    let ones = vec![1.0; y.len()];
    let mut report = multiclass_report_from(y, class_names, &multiclass_core(y, &pred, &ones, k));
    let names = report.figure_names();
    let bootstrap = resample((y.len(), groups, n_boot, seed), &names, report.figures_mut(), |w| {
        multiclass_core(y, &pred, w, k).figures
    });
    Ok(MulticlassEstimates { report, bootstrap })
}
