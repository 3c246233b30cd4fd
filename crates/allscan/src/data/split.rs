//! Leakage-safe splits: a [`DatasetIndex`] -> each image's part (train / val / test) or fold,
//! written as `split.json` with the seed and the dataset fingerprint.
//!
//! Images that must not straddle two parts are grouped first (union of: byte-identical files,
//! perceptual near-duplicates, images of one patient). Groups are then assigned per class stratum
//! (a group's stratum is its majority class): shuffled with the seed, largest first, each to the
//! part whose target count it falls furthest short of. This is stratified group splitting; with
//! few groups the fractions are met as closely as the groups allow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::index::{DatasetIndex, UnionFind};
use super::DataError;
use crate::fsutil::write_atomic;

/// Format tag written into every split file.
pub const SPLIT_FORMAT: &str = "allscan-split-v1";

/// Which part of a split an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Val,
    Test,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        }
    }
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Part::Train),
            "val" => Ok(Part::Val),
            "test" => Ok(Part::Test),
            other => Err(format!("unknown part `{other}` (train, val or test)")),
        }
    }
}

/// Split settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    /// Fraction of images held out for the final test.
    pub test: f64,
    /// Fraction used for validation (early stopping, threshold choice). Ignored with `folds`.
    pub val: f64,
    /// With `Some(k)`, every non-test image gets a fold in `0..k` (the validation part of each
    /// cross-validation round is its held-out fold) and `val` is not used.
    pub folds: Option<usize>,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { test: 0.2, val: 0.1, folds: None, seed: 0 }
    }
}

/// One image's assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitItem {
    pub path: String,
    pub class: String,
    pub part: Part,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
    /// Leakage group: images sharing it are always in the same part and fold.
    pub group: usize,
}

/// The contents of `split.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitFile {
    pub format: String,
    /// Fingerprint of the dataset the split was made for (see [`DatasetIndex::fingerprint`]).
    pub fingerprint: String,
    pub config: SplitConfig,
    /// What was grouped before splitting, in words.
    pub grouping: String,
    /// Whether patient ids were available (otherwise the split is image-level and patients may
    /// straddle parts).
    pub patient_level: bool,
    pub n_groups: usize,
    /// part -> class -> count (folds as `fold0`, `fold1`, ... when used).
    pub counts: BTreeMap<String, BTreeMap<String, usize>>,
    pub items: Vec<SplitItem>,
}

impl SplitFile {
    /// Splits an indexed dataset.
    pub fn make(index: &DatasetIndex, cfg: &SplitConfig) -> Result<SplitFile, DataError> {
        validate(cfg)?;
        let n = index.images.len();
        let mut uf = UnionFind::new(n);
        for g in index.exact_duplicates.iter().chain(&index.near_duplicates) {
            for w in g.windows(2) {
                uf.union(w[0], w[1]);
            }
        }
        let mut by_patient: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, r) in index.images.iter().enumerate() {
            if let Some(p) = &r.patient {
                match by_patient.get(p.as_str()) {
                    Some(&first) => uf.union(first, i),
                    None => {
                        by_patient.insert(p, i);
                    }
                }
            }
        }
        let groups = uf.groups();

        // Stratum of a group = its majority class (ties: first class in index order).
        let mut strata: BTreeMap<usize, Vec<usize>> = BTreeMap::new(); // class idx -> group ids
        for (gid, g) in groups.iter().enumerate() {
            let mut counts = vec![0usize; index.classes.len()];
            for &i in g {
                if let Some(c) = index.class_index(&index.images[i].class) {
                    counts[c] += 1;
                }
            }
            let best = (0..counts.len()).max_by(|&a, &b| counts[a].cmp(&counts[b]).then(b.cmp(&a))).unwrap_or(0);
            strata.entry(best).or_default().push(gid);
        }

        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut part_of_group = vec![Part::Train; groups.len()];
        let mut fold_of_group = vec![None; groups.len()];
        for gids in strata.values() {
            let mut gids = gids.clone();
            gids.shuffle(&mut rng);
            gids.sort_by_key(|&g| std::cmp::Reverse(groups[g].len())); // stable: ties stay shuffled
            let total: usize = gids.iter().map(|&g| groups[g].len()).sum();
            let parts: Vec<(Part, f64)> = if cfg.folds.is_some() {
                vec![(Part::Train, 1.0 - cfg.test), (Part::Test, cfg.test)]
            } else {
                vec![(Part::Train, 1.0 - cfg.test - cfg.val), (Part::Val, cfg.val), (Part::Test, cfg.test)]
            };
            let assigned = assign(&gids, &groups, total, &parts.iter().map(|p| p.1).collect::<Vec<_>>());
            for (&g, &k) in gids.iter().zip(&assigned) {
                part_of_group[g] = parts[k].0;
            }
            if let Some(k) = cfg.folds {
                let train: Vec<usize> = gids.iter().copied().filter(|&g| part_of_group[g] == Part::Train).collect();
                let n_train: usize = train.iter().map(|&g| groups[g].len()).sum();
                let folds = assign(&train, &groups, n_train, &vec![1.0 / k as f64; k]);
                for (&g, &f) in train.iter().zip(&folds) {
                    fold_of_group[g] = Some(f);
                }
            }
        }

        let mut items: Vec<SplitItem> = Vec::with_capacity(n);
        let mut group_of = vec![0usize; n];
        for (gid, g) in groups.iter().enumerate() {
            for &i in g {
                group_of[i] = gid;
            }
        }
        for (i, r) in index.images.iter().enumerate() {
            let g = group_of[i];
            items.push(SplitItem {
                path: r.path.clone(),
                class: r.class.clone(),
                part: part_of_group[g],
                fold: fold_of_group[g],
                group: g,
            });
        }
        let mut counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for it in &items {
            let key = match it.fold {
                Some(f) => format!("fold{f}"),
                None => it.part.as_str().to_owned(),
            };
            *counts.entry(key).or_default().entry(it.class.clone()).or_default() += 1;
        }
        let patient_level = index.has_patients();
        let grouping = format!(
            "exact duplicates (SHA-256) + near-duplicates (pHash distance <= {}){}",
            index.near_threshold,
            if patient_level {
                " + patient id"
            } else {
                "; no patient ids: image-level split, patients may straddle parts"
            }
        );
        Ok(SplitFile {
            format: SPLIT_FORMAT.to_owned(),
            fingerprint: index.fingerprint.clone(),
            config: *cfg,
            grouping,
            patient_level,
            n_groups: groups.len(),
            counts,
            items,
        })
    }

    /// Writes the split as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| DataError::Json { path: path.to_owned(), reason: e.to_string() })?;
        write_atomic(path, &json).map_err(|source| DataError::Io { path: path.to_owned(), source })
    }

    /// Reads a split file and checks that it was made for `index`'s dataset.
    pub fn load(path: &Path, index: &DatasetIndex) -> Result<SplitFile, DataError> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
        let split: SplitFile = serde_json::from_slice(&bytes)
            .map_err(|e| DataError::Json { path: path.to_owned(), reason: e.to_string() })?;
        if split.format != SPLIT_FORMAT {
            return Err(DataError::Json {
                path: path.to_owned(),
                reason: format!("format `{}`, expected `{SPLIT_FORMAT}`", split.format),
            });
        }
        if split.fingerprint != index.fingerprint {
            let in_split: BTreeSet<&str> = split.items.iter().map(|i| i.path.as_str()).collect();
            let in_data: BTreeSet<&str> = index.images.iter().map(|i| i.path.as_str()).collect();
            let missing = in_split.difference(&in_data).count();
            let added = in_data.difference(&in_split).count();
            return Err(DataError::SplitMismatch {
                path: path.to_owned(),
                data: index.root.clone(),
                detail: format!(
                    "fingerprint {} vs {}; {missing} image(s) of the split are not in the folder, {added} image(s) of the folder are not in the split{}",
                    short(&split.fingerprint),
                    short(&index.fingerprint),
                    if missing == 0 && added == 0 { ", so some files changed content" } else { "" }
                ),
            });
        }
        Ok(split)
    }

    /// Indices into `index.images` of the images in `part` (and `fold`, when given).
    pub fn select(&self, index: &DatasetIndex, part: Part, fold: Option<usize>) -> Vec<usize> {
        let by_path: BTreeMap<&str, &SplitItem> = self.items.iter().map(|i| (i.path.as_str(), i)).collect();
        index
            .images
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                by_path.get(r.path.as_str()).is_some_and(|it| it.part == part && (fold.is_none() || it.fold == fold))
            })
            .map(|(i, _)| i)
            .collect()
    }
}

fn short(fp: &str) -> &str {
    &fp[..fp.len().min(12)]
}

fn validate(cfg: &SplitConfig) -> Result<(), DataError> {
    let bad = |reason: String| Err(DataError::BadSplitConfig { reason });
    if !(0.0..1.0).contains(&cfg.test) {
        return bad(format!("--test must be in [0, 1), got {}", cfg.test));
    }
    if cfg.folds.is_none() && (!(0.0..1.0).contains(&cfg.val) || cfg.test + cfg.val >= 1.0) {
        return bad(format!("--val must be in [0, 1) and --test + --val < 1, got {} + {}", cfg.test, cfg.val));
    }
    if let Some(k) = cfg.folds {
        if k < 2 {
            return bad(format!("--folds must be at least 2, got {k}"));
        }
    }
    Ok(())
}

/// Assigns each group (in the given order) to the bucket whose target it falls furthest short of.
fn assign(gids: &[usize], groups: &[Vec<usize>], total: usize, fractions: &[f64]) -> Vec<usize> {
    let targets: Vec<f64> = fractions.iter().map(|f| f * total as f64).collect();
    let mut filled = vec![0usize; fractions.len()];
    gids.iter()
        .map(|&g| {
            let k = (0..targets.len())
                .filter(|&k| fractions[k] > 0.0)
                .max_by(|&a, &b| {
                    let da = targets[a] - filled[a] as f64;
                    let db = targets[b] - filled[b] as f64;
                    da.total_cmp(&db).then(b.cmp(&a))
                })
                .unwrap_or(0);
            filled[k] += groups[g].len();
            k
        })
        .collect()
}
