//! Feature / activation cache for the frozen part of the network: preprocessed crops -> the
//! output of the frozen prefix (pooled backbone features in stage 1, the activation entering
//! the first unfrozen block in stage 2), computed once per stage instead of every epoch.
//!
//! Only valid for a deterministic view (no augmentation) and fixed frozen weights, which is
//! when the trainer builds one. Keyed by the image's SHA-256, so exact duplicates (40 pairs in
//! Aria) are computed once, and tagged with a hash of the frozen weights and the view settings
//! so a cache is never applied to another backbone.

use std::collections::HashMap;

use allscan_preprocess::Normalization;
use burn::tensor::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::dataset::Sample;
use crate::data::batcher::images_tensor;

/// Cached outputs of the frozen prefix, one row per distinct image.
#[derive(Debug, Default)]
pub struct FeatureCache {
    /// Shape of one row (`[C]` pooled, `[C, h, w]` activation).
    pub shape: Vec<usize>,
    /// What the rows were computed with: frozen weights + view settings.
    pub key: String,
    rows: HashMap<String, Vec<f32>>,
}

impl FeatureCache {
    /// Runs `frozen` (`[B, 3, H, W] -> [B, ...]`, inference mode) over every distinct image of
    /// `parts` in batches of `batch`. `key` names the frozen weights and view settings.
    pub fn build(
        parts: &[&[Sample]],
        batch: usize,
        norm: &Normalization,
        device: &Device,
        key: String,
        frozen: &dyn Fn(Tensor<4>) -> (Vec<f32>, Vec<usize>),
        on_batch: &dyn Fn(usize),
    ) -> FeatureCache {
        let mut cache = FeatureCache { key, ..FeatureCache::default() };
        let mut todo: Vec<&Sample> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in parts.iter().flat_map(|p| p.iter()) {
            if seen.insert(s.key.as_str()) {
                todo.push(s);
            }
        }
        for chunk in todo.chunks(batch.max(1)) {
            let crops: Vec<_> = chunk.iter().map(|s| &s.crop).collect();
            let (data, dims) = frozen(images_tensor(&crops, None, norm, device));
            let per = dims.iter().skip(1).product::<usize>();
            cache.shape = dims[1..].to_vec();
            for (s, row) in chunk.iter().zip(data.chunks(per)) {
                cache.rows.insert(s.key.clone(), row.to_vec());
            }
            on_batch(chunk.len());
        }
        cache
    }

    /// The row of an image (`None` if it was not in the parts the cache was built from).
    pub fn get(&self, sha256: &str) -> Option<&[f32]> {
        self.rows.get(sha256).map(Vec::as_slice)
    }

    /// Number of distinct images cached.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Memory held by the rows, in bytes.
    pub fn bytes(&self) -> usize {
        self.rows.values().map(|r| r.len() * 4).sum()
    }
}

/// Cache key: SHA-256 of the frozen weights' bytes and a description of the view.
pub fn key(weights: &[u8], view: &str) -> String {
    let mut h = Sha256::new();
    h.update(weights);
    h.update(view.as_bytes());
    hex::encode(&h.finalize()[..12])
}
