//! Evaluation stage, calibration: true labels + leukemia probabilities in, Brier score,
//! expected calibration error and reliability-diagram bins out.
//!
//! - Brier score: mean of `(p_leukemia - y)^2`, y = 1 for leukemia (sklearn's
//!   `brier_score_loss` with leukemia as the positive class). Defined with one class present.
//! - Reliability bins: 10 equal-width bins of `p_leukemia` over [0, 1]. Bin b holds
//!   `b/10 < p <= (b+1)/10`, and bin 0 also holds p = 0: the edges of sklearn's
//!   `calibration_curve(strategy="uniform")`, so the bins can be checked against it.
//! - Expected calibration error: `sum_b (n_b / n) * |fraction leukemia in b - mean p in b|` over
//!   those bins. This is the calibration of the leukemia probability itself (what a reliability
//!   diagram of `p_leukemia` shows), not the "top-label confidence" ECE of Guo et al. 2017,
//!   which for a binary model folds p < 0.5 onto 1 - p.

use serde::{Deserialize, Serialize};

use super::metrics::{check_probabilities, reason};
use super::EvalError;

/// Number of equal-width bins for ECE and the reliability diagram.
pub const ECE_BINS: usize = 10;

/// One bin of a reliability diagram. `mean_p` and `frac_leukemia` are `None` for an empty bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
    pub mean_p: Option<f64>,
    pub frac_leukemia: Option<f64>,
}

/// Bin of a probability: the number of interior edges strictly below it (numpy's
/// `searchsorted(edges[1:-1], p)`, edges computed as numpy's `linspace`).
fn bin_of(p: f64, bins: usize) -> usize {
    let step = 1.0 / bins as f64;
    (1..bins).filter(|&i| (i as f64) * step < p).count()
}

pub(crate) fn brier_weighted(y: &[bool], p: &[f64], w: &[f64]) -> Result<f64, String> {
    let (mut sum, mut n) = (0.0, 0.0);
    for ((&yi, &pi), &wi) in y.iter().zip(p).zip(w) {
        let t = if yi { 1.0 } else { 0.0 };
        sum += wi * (pi - t) * (pi - t);
        n += wi;
    }
    if n > 0.0 {
        Ok(sum / n)
    } else {
        Err(reason::NO_IMAGES.to_string())
    }
}

/// Per-bin (weight, sum of p, sum of y).
fn bin_sums(y: &[bool], p: &[f64], w: &[f64], bins: usize) -> Vec<(f64, f64, f64)> {
    let mut acc = vec![(0.0, 0.0, 0.0); bins];
    for ((&yi, &pi), &wi) in y.iter().zip(p).zip(w) {
        if wi == 0.0 {
            continue;
        }
        let b = &mut acc[bin_of(pi, bins)];
        b.0 += wi;
        b.1 += wi * pi;
        b.2 += if yi { wi } else { 0.0 };
    }
    acc
}

pub(crate) fn ece_weighted(y: &[bool], p: &[f64], w: &[f64], bins: usize) -> Result<f64, String> {
    let acc = bin_sums(y, p, w, bins);
    let n: f64 = acc.iter().map(|b| b.0).sum();
    if n == 0.0 {
        return Err(reason::NO_IMAGES.to_string());
    }
    Ok(acc.iter().filter(|b| b.0 > 0.0).map(|&(nb, sp, sy)| nb / n * (sy / nb - sp / nb).abs()).sum())
}

fn check(what: &'static str, y: &[bool], p: &[f64]) -> Result<(), EvalError> {
    if y.len() != p.len() {
        return Err(EvalError::LengthMismatch { what, left: y.len(), right: p.len() });
    }
    check_probabilities(what, p)
}

/// Brier score; `Ok(Err(reason))` when undefined (empty input).
pub fn brier_score(y: &[bool], p: &[f64]) -> Result<Result<f64, String>, EvalError> {
    check("brier score", y, p)?;
    Ok(brier_weighted(y, p, &vec![1.0; y.len()]))
}

/// Expected calibration error over [`ECE_BINS`] bins; `Ok(Err(reason))` when undefined.
pub fn expected_calibration_error(y: &[bool], p: &[f64]) -> Result<Result<f64, String>, EvalError> {
    check("expected calibration error", y, p)?;
    Ok(ece_weighted(y, p, &vec![1.0; y.len()], ECE_BINS))
}

/// The [`ECE_BINS`] bins of a reliability diagram, empty bins included.
pub fn reliability_bins(y: &[bool], p: &[f64]) -> Result<Vec<ReliabilityBin>, EvalError> {
    check("reliability diagram", y, p)?;
    let acc = bin_sums(y, p, &vec![1.0; y.len()], ECE_BINS);
    let step = 1.0 / ECE_BINS as f64;
    Ok(acc
        .iter()
        .enumerate()
        .map(|(b, &(nb, sp, sy))| ReliabilityBin {
            lo: b as f64 * step,
            hi: (b + 1) as f64 * step,
            n: nb.round() as usize,
            mean_p: (nb > 0.0).then(|| sp / nb),
            frac_leukemia: (nb > 0.0).then(|| sy / nb),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_follow_sklearn_edges() {
        assert_eq!(bin_of(0.0, 10), 0);
        assert_eq!(bin_of(0.1, 10), 0); // (0, 0.1]
        assert_eq!(bin_of(0.1000001, 10), 1);
        assert_eq!(bin_of(0.3, 10), 2); // edge 3 * 0.1 = 0.30000000000000004 > 0.3
        assert_eq!(bin_of(0.95, 10), 9);
        assert_eq!(bin_of(1.0, 10), 9);
    }

    /// Hand-worked: bin (0.1, 0.2] holds p 0.15, 0.15 with one leukemia -> |0.5 - 0.15| = 0.35;
    /// bin (0.8, 0.9] holds p 0.85, 0.85 both leukemia -> |1 - 0.85| = 0.15.
    /// ECE = 0.5 * 0.35 + 0.5 * 0.15 = 0.25.
    #[test]
    fn hand_worked_ece() {
        let y = [true, false, true, true];
        let p = [0.15, 0.15, 0.85, 0.85];
        let ece = expected_calibration_error(&y, &p).unwrap().unwrap();
        assert!((ece - 0.25).abs() < 1e-12);
        let bins = reliability_bins(&y, &p).unwrap();
        assert_eq!(bins[1].n, 2);
        assert_eq!(bins[1].frac_leukemia, Some(0.5));
        assert_eq!(bins[0].mean_p, None);
        let brier = brier_score(&y, &p).unwrap().unwrap();
        // (0.85^2 + 0.15^2 + 0.15^2 + 0.15^2) / 4
        assert!((brier - (0.7225 + 3.0 * 0.0225) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn perfectly_calibrated_is_zero_and_empty_is_undefined() {
        let y = [true, false, true, false];
        let p = [0.5, 0.5, 0.5, 0.5];
        assert!(expected_calibration_error(&y, &p).unwrap().unwrap().abs() < 1e-12);
        assert_eq!(expected_calibration_error(&[], &[]).unwrap(), Err(reason::NO_IMAGES.to_string()));
        assert!(brier_score(&[true], &[1.5]).is_err());
    }
}
