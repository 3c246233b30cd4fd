//! Batching, between augmentation and the model: u8 ROI crops (+ per-image seeds) -> one
//! normalised `[B, 3, H, W]` tensor, plus the epoch order (shuffled or class-balanced) and the
//! class weights that counter the class imbalance.
//!
//! Views are built on all CPU cores (scoped threads, one chunk each); every image's random draws
//! come from its own seed, so a batch is the same whatever the thread count.

use allscan_preprocess::Normalization;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::augment::{augment_view, AugmentConfig};

/// Mixes seeds into one (SplitMix64 steps): `mix(&[run_seed, stage, epoch, position])`.
pub fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
        h = splitmix(h);
    }
    h
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `[B, 3, H, W]` from crops of equal size. With `augment`, image `i` gets the random view of
/// seed `seeds[i]`; without, the deterministic view.
pub fn images_tensor(
    crops: &[&RgbImage],
    augment: Option<(&AugmentConfig, &[u64])>,
    norm: &Normalization,
    device: &Device,
) -> Tensor<4> {
    let (w, h) = crops.first().map(|c| c.dimensions()).unwrap_or((1, 1));
    let per = 3 * (w * h) as usize;
    let mut buf = vec![0f32; per * crops.len()];
    let threads = crate::device::cpu_threads().clamp(1, crops.len().max(1));
    let chunk = crops.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (k, out) in buf.chunks_mut(chunk * per).enumerate() {
            s.spawn(move || {
                for (j, view) in out.chunks_mut(per).enumerate() {
                    let i = k * chunk + j;
                    match augment {
                        Some((cfg, seeds)) => {
                            let mut rng = ChaCha8Rng::seed_from_u64(seeds[i]);
                            augment_view(crops[i], cfg, norm, &mut rng, view)
                        }
                        None => super::augment::plain_view(crops[i], norm, view),
                    }
                }
            });
        }
    });
    Tensor::from_data(TensorData::new(buf, [crops.len(), 3, h as usize, w as usize]), device)
}

/// `[B, C]` from rows of cached features (or any equal-length rows).
pub fn rows_tensor(rows: &[&[f32]], device: &Device) -> Tensor<2> {
    let c = rows.first().map(|r| r.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(rows.len() * c);
    for r in rows {
        buf.extend_from_slice(r);
    }
    Tensor::from_data(TensorData::new(buf, [rows.len(), c]), device)
}

/// `[B, C, h, w]` from cached activations of shape `shape` (`[C, h, w]`).
pub fn activations_tensor(rows: &[&[f32]], shape: [usize; 3], device: &Device) -> Tensor<4> {
    let mut buf = Vec::with_capacity(rows.len() * shape.iter().product::<usize>());
    for r in rows {
        buf.extend_from_slice(r);
    }
    Tensor::from_data(TensorData::new(buf, [rows.len(), shape[0], shape[1], shape[2]]), device)
}

/// Loss weight per class: `n / (K * n_c)` (1 for every class when balanced; 0 for an absent one).
pub fn class_weights(targets: &[usize], num_classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; num_classes];
    for &t in targets {
        if t < num_classes {
            counts[t] += 1;
        }
    }
    let n = targets.len() as f32;
    counts.iter().map(|&c| if c == 0 { 0.0 } else { n / (num_classes as f32 * c as f32) }).collect()
}

/// One epoch's order of training positions: a shuffle of `0..n`.
pub fn shuffled_order(n: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

/// One epoch's order drawn class-balanced: `n` draws, each a uniformly chosen class, then a
/// uniformly chosen image of it (with replacement).
pub fn balanced_order(targets: &[usize], num_classes: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &t) in targets.iter().enumerate() {
        if t < num_classes {
            by_class[t].push(i);
        }
    }
    let present: Vec<&Vec<usize>> = by_class.iter().filter(|v| !v.is_empty()).collect();
    if present.is_empty() {
        return Vec::new();
    }
    (0..targets.len())
        .map(|_| {
            let class = present[rng.gen_range(0..present.len())];
            class[rng.gen_range(0..class.len())]
        })
        .collect()
}

/// One epoch's order drawn class-balanced, then source-balanced within the class: `draws`
/// draws, each a uniformly chosen class, a uniformly chosen source among those that have the
/// class, then an image of it (with replacement).
pub fn source_class_order(
    targets: &[usize],
    sources: &[&str],
    num_classes: usize,
    draws: usize,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let mut strata: Vec<std::collections::BTreeMap<&str, Vec<usize>>> = vec![Default::default(); num_classes];
    for (i, (&t, &s)) in targets.iter().zip(sources).enumerate() {
        if t < num_classes {
            strata[t].entry(s).or_default().push(i);
        }
    }
    let present: Vec<Vec<&Vec<usize>>> =
        strata.iter().filter(|m| !m.is_empty()).map(|m| m.values().collect()).collect();
    if present.is_empty() {
        return Vec::new();
    }
    (0..draws)
        .map(|_| {
            let class = &present[rng.gen_range(0..present.len())];
            let source = class[rng.gen_range(0..class.len())];
            source[rng.gen_range(0..source.len())]
        })
        .collect()
}

/// Splits an epoch order into batches of `batch_size`, dropping a last batch of one image
/// (BatchNorm's batch statistics are undefined for it).
pub fn batches(order: &[usize], batch_size: usize) -> Vec<&[usize]> {
    order.chunks(batch_size.max(1)).filter(|b| b.len() >= 2 || order.len() == 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_class_order_balances_sources_within_a_class() {
        use rand::SeedableRng;
        // Class 0: 900 images of source a, 100 of b; class 1: 50 of a.
        let mut targets = vec![0; 1000];
        targets.extend(vec![1; 50]);
        let sources: Vec<&str> = (0..1050).map(|i| if (900..1000).contains(&i) { "b" } else { "a" }).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let order = source_class_order(&targets, &sources, 2, 1050, &mut rng);
        assert_eq!(order.len(), 1050);
        let count = |f: &dyn Fn(usize) -> bool| order.iter().filter(|&&i| f(i)).count() as f64 / 1050.0;
        assert!((count(&|i| targets[i] == 1) - 0.5).abs() < 0.05);
        assert!((count(&|i| sources[i] == "b") - 0.25).abs() < 0.05);
    }

    #[test]
    fn tensor_layout_matches_the_plain_view() {
        let a = RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0]));
        let b = RgbImage::from_pixel(4, 4, image::Rgb([0, 0, 255]));
        let norm = Normalization { mean: [0.0; 3], std: [1.0; 3] };
        let t = images_tensor(&[&a, &b, &a], None, &norm, &Device::flex());
        assert_eq!(t.dims(), [3, 3, 4, 4]);
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v[0], 1.0); // image 0, R
        assert_eq!(v[48 + 32], 1.0); // image 1, B
        assert_eq!(v[48], 0.0); // image 1, R
    }

    #[test]
    fn augmented_batches_depend_on_the_seeds_only() {
        let img = RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 90]));
        let crops = vec![&img; 5];
        let norm = Normalization::IMAGENET;
        let cfg = AugmentConfig::strong();
        let seeds: Vec<u64> = (0..5).map(|i| mix(&[1, 2, i])).collect();
        let d = Device::flex();
        let a = images_tensor(&crops, Some((&cfg, &seeds)), &norm, &d).into_data();
        let b = images_tensor(&crops, Some((&cfg, &seeds)), &norm, &d).into_data();
        assert_eq!(a, b);
    }

    #[test]
    fn weights_orders_and_batches() {
        let w = class_weights(&[0, 0, 0, 1], 3);
        assert!((w[0] - 4.0 / 9.0).abs() < 1e-6 && (w[1] - 4.0 / 3.0).abs() < 1e-6 && w[2] == 0.0);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let targets = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let order = balanced_order(&targets, 2, &mut rng);
        let ones = order.iter().filter(|&&i| targets[i] == 1).count();
        assert!(ones >= 2, "balanced sampling drew the rare class {ones} times of 10");
        let mut o = shuffled_order(10, &mut rng);
        o.sort();
        assert_eq!(o, (0..10).collect::<Vec<_>>());
        let order: Vec<usize> = (0..7).collect();
        assert_eq!(batches(&order, 3).len(), 2); // 3 + 3, the single last image dropped
        assert_ne!(mix(&[1, 2]), mix(&[2, 1]));
    }
}
