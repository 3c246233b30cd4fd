//! Sources datasets (`allscan-sources.json`): several datasets indexed as one, each record
//! tagged with its source, classes and patients prefixed, labels and scales from the manifest.

use std::io::Cursor;
use std::path::Path;

use allscan::data::{BinaryLabel, DataError, DatasetIndex, IndexOptions, LayoutKind};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

fn write(p: &Path, seed: u32, format: ImageFormat) {
    let img = RgbImage::from_fn(40, 40, |x, y| Rgb([(x * seed % 251) as u8, (y * 7 + seed) as u8, 128]));
    let mut buf = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img).write_to(&mut buf, format).unwrap();
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, buf.into_inner()).unwrap();
}

fn make(root: &Path, manifest: &str) {
    // Source "lab-a": class folders with the usual names.
    for i in 0..3 {
        write(&root.join(format!("lab-a/blast/a{i}.png")), 10 + i, ImageFormat::Png);
        write(&root.join(format!("lab-a/normal/b{i}.png")), 20 + i, ImageFormat::Png);
    }
    // Source "lab-b": C-NMC names (patients), one label for all, BMP images beside PNG masks.
    for i in 0..2 {
        write(&root.join(format!("lab-b/cells/UID_{i}_1_1_all.bmp")), 30 + i, ImageFormat::Bmp);
        write(&root.join(format!("lab-b/cells/UID_{i}_1_1_all.png")), 40 + i, ImageFormat::Png);
    }
    std::fs::write(root.join("allscan-sources.json"), manifest).unwrap();
}

#[test]
fn sources_are_indexed_as_one_dataset_with_their_labels_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make(
        root,
        r#"{"sources": [{"name": "lab-a", "um_per_px": 0.5},
                        {"name": "lab-b", "label": "healthy", "extensions": ["bmp"]}]}"#,
    );
    let ix = DatasetIndex::build(root, &IndexOptions::default()).unwrap();
    assert_eq!(ix.layout, LayoutKind::Sources);
    assert_eq!(ix.images.len(), 8, "the PNG masks of lab-b are not images of that source");
    let a: Vec<_> = ix.images.iter().filter(|r| r.source.as_deref() == Some("lab-a")).collect();
    assert_eq!(a.len(), 6);
    assert!(a.iter().all(|r| r.path.starts_with("lab-a/") && r.class.starts_with("lab-a/")));
    assert!(a.iter().all(|r| r.um_per_px == Some(0.5)));
    let blast = a.iter().find(|r| r.class == "lab-a/blast").unwrap();
    assert_eq!(blast.label, Some(BinaryLabel::Leukemia));
    let b: Vec<_> = ix.images.iter().filter(|r| r.source.as_deref() == Some("lab-b")).collect();
    assert_eq!(b.len(), 2);
    // The manifest's label wins over the C-NMC name; patients are namespaced by source.
    assert!(b.iter().all(|r| r.label == Some(BinaryLabel::Healthy) && r.um_per_px.is_none()));
    assert!(b.iter().all(|r| r.patient.as_deref().is_some_and(|p| p.starts_with("lab-b/"))));
    // Every image can be read back through the root.
    assert!(ix.images.iter().all(|r| ix.abs_path(r).is_file()));
}

#[test]
fn a_bad_manifest_is_refused_with_its_path_and_reason() {
    for (manifest, why) in [
        (r#"{"sources": []}"#, "lists no source"),
        (r#"{"sources": [{"name": "../x"}]}"#, "plain sub-folder name"),
        (r#"{"sources": [{"name": "missing"}]}"#, "is not a folder"),
        (r#"{"sources": [{"name": "lab-a", "um_per_px": -1}]}"#, "positive"),
        (r#"{"sources": 3}"#, "invalid type"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), manifest);
        let err = DatasetIndex::build(dir.path(), &IndexOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::BadManifest { .. }), "{manifest}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("allscan-sources.json") && msg.contains(why), "{manifest}: {msg}");
    }
}
