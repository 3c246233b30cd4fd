//! BatchNorm statistics re-estimated on given views: after every training epoch on clean
//! training views (`train.bn_recalibration_batches`), and at test time on the images being
//! predicted (AdaBN, `--adapt`: no labels, the target lab's own statistics).

use burn::module::Module;
use burn::tensor::Device;
use image::RgbImage;

use crate::data::batcher::{batches, images_tensor};
use crate::model::LeukemiaClassifier;

/// Re-estimates every BatchNorm's running mean and variance of `model` (built on an autodiff
/// `device`, where BatchNorm uses batch statistics) as the plain average over the first `k`
/// batches of `batch` views of `crops` in `order`. The weights are untouched.
pub fn reestimate_batchnorm(
    model: LeukemiaClassifier,
    crops: &[&RgbImage],
    order: &[usize],
    k: usize,
    batch: usize,
    norm: &allscan_preprocess::Normalization,
    device: &Device,
) -> LeukemiaClassifier {
    // A copy whose parameters need no gradient: Burn records no graph for its forward (a graph
    // that is never run backward stays alive and grows RSS), while its BatchNorms, still in
    // training mode, share their running statistics with `model`.
    let mut probe = model.clone().no_grad();
    for (i, idx) in batches(order, batch).into_iter().take(k).enumerate() {
        // Momentum 1/(i+1): the running statistics end as the mean over the batches seen.
        probe.backbone = probe.backbone.with_batchnorm_momentum(1.0 / (i + 1) as f64);
        let views: Vec<&RgbImage> = idx.iter().map(|&j| crops[j]).collect();
        let _ = probe.forward_features(images_tensor(&views, None, norm, device));
    }
    drop(probe);
    model
}

/// Evenly spaced indices of at most `max` of `n` views (deterministic: every lab's images in
/// the order given, thinned without a random draw).
pub fn spread(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * n / max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_thins_evenly_and_keeps_small_sets() {
        assert_eq!(spread(3, 10), vec![0, 1, 2]);
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
    }
}
