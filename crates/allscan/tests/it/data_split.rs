//! Splits on small generated folders: fingerprints, folds, determinism, near-duplicates.

use std::io::Cursor;
use std::path::Path;

use allscan::data::{DataError, DatasetIndex, IndexOptions, Part, SplitConfig, SplitFile};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

fn field(seed: u32) -> RgbImage {
    // Distinct structure per seed, so perceptual hashes differ.
    RgbImage::from_fn(48, 48, |x, y| {
        let v = ((x * (seed % 5 + 1) + y * (seed % 7 + 2) + seed * 13) % 97) as u8;
        let blob = ((x as i32 - (seed % 40) as i32).pow(2) + (y as i32 - (seed * 7 % 40) as i32).pow(2)) < 120;
        Rgb([if blob { 40 } else { 2 * v }, v, 255 - v])
    })
}

fn write_png(p: &Path, img: &RgbImage) {
    let mut buf = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img.clone()).write_to(&mut buf, ImageFormat::Png).unwrap();
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, buf.into_inner()).unwrap();
}

fn make_set(root: &Path, per_class: u32) {
    for (c, name) in ["healthy", "leukemia"].iter().enumerate() {
        for i in 0..per_class {
            write_png(&root.join(name).join(format!("{i:03}.png")), &field(c as u32 * 1000 + i * 31 + 1));
        }
    }
}

#[test]
fn split_is_deterministic_and_refuses_another_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("set");
    make_set(&root, 20);
    let ix = DatasetIndex::build(&root, &IndexOptions::default()).unwrap();
    let cfg = SplitConfig { seed: 5, ..SplitConfig::default() };
    let a = SplitFile::make(&ix, &cfg).unwrap();
    let b = SplitFile::make(&ix, &cfg).unwrap();
    assert_eq!(a, b);
    let c = SplitFile::make(&ix, &SplitConfig { seed: 6, ..cfg }).unwrap();
    assert_ne!(a.items, c.items, "another seed gives another split");
    assert_eq!(a.counts["test"].values().sum::<usize>(), 8);
    assert_eq!(a.counts["val"].values().sum::<usize>(), 4);

    let path = dir.path().join("split.json");
    a.save(&path).unwrap();
    assert_eq!(SplitFile::load(&path, &ix).unwrap(), a);

    // Change one file: the fingerprint no longer matches and the split is refused.
    write_png(&root.join("healthy/000.png"), &field(77_777));
    let ix2 = DatasetIndex::build(&root, &IndexOptions::default()).unwrap();
    let err = SplitFile::load(&path, &ix2).unwrap_err();
    assert!(matches!(err, DataError::SplitMismatch { .. }));
    assert!(err.to_string().contains("changed content"), "{err}");
    // Remove one: also refused, and the message counts it.
    std::fs::remove_file(root.join("leukemia/003.png")).unwrap();
    let ix3 = DatasetIndex::build(&root, &IndexOptions::default()).unwrap();
    let err = SplitFile::load(&path, &ix3).unwrap_err().to_string();
    assert!(err.contains("1 image(s) of the split are not in the folder"), "{err}");
}

#[test]
fn duplicates_stay_together_and_folds_cover_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("set");
    make_set(&root, 15);
    // An exact copy and a near copy (re-encoded as JPEG, brighter) of two images.
    std::fs::copy(root.join("healthy/001.png"), root.join("healthy/001-copy.png")).unwrap();
    let near = image::open(root.join("leukemia/004.png")).unwrap().to_rgb8();
    let mut brighter = near.clone();
    brighter.pixels_mut().for_each(|p| p.0 = p.0.map(|c| c.saturating_add(6)));
    write_png(&root.join("leukemia/004-near.png"), &brighter);

    let ix = DatasetIndex::build(&root, &IndexOptions::default()).unwrap();
    assert_eq!(ix.exact_duplicates.len(), 1);
    assert!(!ix.near_duplicates.is_empty(), "the brightened copy is a near-duplicate");
    let split = SplitFile::make(&ix, &SplitConfig { test: 0.2, val: 0.0, folds: Some(4), seed: 1 }).unwrap();
    let item = |p: &str| split.items.iter().find(|i| i.path == p).unwrap().clone();
    let (a, b) = (item("healthy/001.png"), item("healthy/001-copy.png"));
    assert_eq!((a.part, a.fold, a.group), (b.part, b.fold, b.group));
    let (a, b) = (item("leukemia/004.png"), item("leukemia/004-near.png"));
    assert_eq!((a.part, a.fold), (b.part, b.fold));
    for it in &split.items {
        assert_eq!(it.part == Part::Train, it.fold.is_some(), "{it:?}");
        assert_ne!(it.part, Part::Val);
    }
    for f in 0..4 {
        assert!(split.items.iter().filter(|i| i.fold == Some(f)).count() >= 4, "fold {f} too small");
    }
}

#[test]
fn bad_settings_and_unmapped_classes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("set");
    make_set(&root, 4);
    std::fs::rename(root.join("leukemia"), root.join("cats")).unwrap();
    let ix = DatasetIndex::build(&root, &IndexOptions::default()).unwrap();
    let err = ix.binary_labels().unwrap_err().to_string();
    assert!(err.contains("cats") && err.contains("--map"), "{err}");
    let opts =
        IndexOptions { map: Some(allscan::data::LabelMap::parse("cats=leukemia").unwrap()), ..Default::default() };
    let ix = DatasetIndex::build(&root, &opts).unwrap();
    assert_eq!(ix.binary_labels().unwrap().iter().filter(|l| l.is_leukemia()).count(), 4);
    for cfg in [
        SplitConfig { test: 1.5, ..Default::default() },
        SplitConfig { test: 0.6, val: 0.5, ..Default::default() },
        SplitConfig { folds: Some(1), ..Default::default() },
    ] {
        assert!(matches!(SplitFile::make(&ix, &cfg), Err(DataError::BadSplitConfig { .. })));
    }
}
