//! The dataset layer on the real development data in `../shared/data` (read in place, never
//! copied into the repository). Skips with a note when the folder is absent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use allscan::data::{DatasetIndex, IndexOptions, LayoutKind, Part, SplitConfig, SplitFile};

/// A shared dataset; a missing one fails the test with the path it needs (CI always has
/// `../shared`, so a pass never means "not run").
fn shared(sub: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(sub);
    assert!(p.is_dir(), "this test needs the shared dataset {} (see the README's Data section)", p.display());
    p
}

#[test]
fn aria_index_counts_duplicates_and_split_keeps_pairs_together() {
    let root = shared("aria");
    let ix = DatasetIndex::build(&root, &IndexOptions::default()).unwrap();
    assert_eq!(ix.layout, LayoutKind::Aria);
    assert_eq!(ix.images.len(), 1945);
    assert!(ix.bad.is_empty(), "{:?}", ix.bad);
    let counts: Vec<(&str, usize)> = ix.classes.iter().map(|c| (c.name.as_str(), c.count)).collect();
    assert_eq!(counts, vec![("Benign", 311), ("Early", 585), ("Pre", 585), ("Pro", 464)]);
    assert_eq!(ix.binary_labels().unwrap().iter().filter(|l| !l.is_leukemia()).count(), 311);
    assert!(!ix.has_patients());
    assert_eq!(ix.images.iter().filter(|r| r.segmented.is_some()).count(), 1945);

    // The release has 40 exact-duplicate pairs (all Pro, consecutive numbers); 20 of them fall in
    // this development part, both members each time (checked independently with md5sum).
    assert_eq!(ix.exact_duplicates.len(), 20, "{:?}", ix.exact_duplicates);
    for g in &ix.exact_duplicates {
        assert_eq!(g.len(), 2);
        assert!(g.iter().all(|&i| ix.images[i].class == "Pro"));
    }
    eprintln!("near-duplicate groups at distance <= {}: {}", ix.near_threshold, ix.near_duplicates.len());
    // The threshold's margin (see `phash::NEAR_DUPLICATE_MAX_DISTANCE`): distinct fields are far apart.
    let hashes: Vec<u64> = ix.images.iter().map(|r| r.phash).collect();
    let content: Vec<&str> = ix.images.iter().map(|r| r.sha256.as_str()).collect();
    let mut nn: Vec<u32> =
        allscan::data::phash::nearest_neighbour_distances(&hashes, &content).into_iter().flatten().collect();
    nn.sort();
    let pct = |q: f64| nn[((nn.len() - 1) as f64 * q) as usize];
    let hist: Vec<usize> = (0..=24).map(|d| nn.iter().filter(|&&x| x == d).count()).collect();
    eprintln!("nearest-neighbour pHash distance histogram 0..=24: {hist:?}");
    eprintln!("nearest-neighbour pHash distance: min {} p1 {} p5 {} median {}", nn[0], pct(0.01), pct(0.05), pct(0.5));
    let near = nn.iter().filter(|&&d| d <= ix.near_threshold).count();
    assert!(near * 20 < nn.len(), "{near} fields have a near-duplicate: the threshold is inside the bulk");
    assert!(pct(0.5) >= 2 * ix.near_threshold, "median nearest neighbour {} too close to the threshold", pct(0.5));

    for seed in [0, 1, 7] {
        let split = SplitFile::make(&ix, &SplitConfig { seed, ..SplitConfig::default() }).unwrap();
        let part: BTreeMap<&str, Part> = split.items.iter().map(|i| (i.path.as_str(), i.part)).collect();
        for g in ix.exact_duplicates.iter().chain(&ix.near_duplicates) {
            let parts: BTreeSet<Part> = g.iter().map(|&i| part[ix.images[i].path.as_str()]).collect();
            assert_eq!(parts.len(), 1, "group {g:?} straddles {parts:?}");
        }
        // Stratified: every class near 70/10/20.
        for c in &ix.classes {
            let n_test = split.items.iter().filter(|i| i.class == c.name && i.part == Part::Test).count();
            let frac = n_test as f64 / c.count as f64;
            assert!((frac - 0.2).abs() < 0.02, "{}: test fraction {frac}", c.name);
        }
    }
}

#[test]
fn cnmc_patients_never_straddle_parts() {
    let root = shared("cnmc-sample");
    let ix = DatasetIndex::build(&root, &IndexOptions::default()).unwrap();
    assert_eq!(ix.layout, LayoutKind::Cnmc);
    assert_eq!(ix.images.len(), 60);
    assert!(ix.images.iter().all(|r| r.patient.is_some()));
    // Healthy subjects carry an H prefix and the `hem` label.
    for r in &ix.images {
        let p = r.patient.as_deref().unwrap_or_default();
        assert_eq!(p.starts_with('H'), r.class == "hem", "{}", r.path);
    }
    for folds in [None, Some(3)] {
        let split = SplitFile::make(&ix, &SplitConfig { test: 0.25, val: 0.15, folds, seed: 3 }).unwrap();
        assert!(split.patient_level);
        let mut where_: BTreeMap<&str, BTreeSet<(Part, Option<usize>)>> = BTreeMap::new();
        for (it, r) in split.items.iter().zip(&ix.images) {
            assert_eq!(it.path, r.path);
            where_.entry(r.patient.as_deref().unwrap_or_default()).or_default().insert((it.part, it.fold));
        }
        for (p, parts) in &where_ {
            assert_eq!(parts.len(), 1, "patient {p} is in {parts:?}");
        }
        let test = split.items.iter().filter(|i| i.part == Part::Test).count();
        assert!(test > 0 && test < 60);
    }
}
