use super::testing::BundleFixture;
use super::*;

/// The fixture's two files, to change or write.
fn sample(task: TaskKind) -> (RunConfig, BundleMetadata) {
    let f = BundleFixture::new(task);
    (f.config, f.metadata)
}

#[test]
fn create_and_open_round_trip_with_the_config_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (config, metadata) = sample(TaskKind::Subtype);
    RunBundle::create(dir.path(), config.clone(), metadata.clone()).unwrap();
    let b = RunBundle::open(dir.path()).unwrap();
    assert_eq!(b.config, config);
    assert_eq!(b.metadata, metadata);
    assert_eq!(b.preprocess(), &config.preprocess);
    // metadata.json holds what training produced, not a second copy of the config.
    let written: serde_json::Value = read_json(&dir.path().join(METADATA_FILE)).unwrap();
    for field in ["preprocess", "input_size", "normalization"] {
        assert!(written.get(field).is_none(), "metadata.json repeats `{field}`");
    }
    // Subtype p(leukemia) sums the leukemia classes.
    let d = b.metadata.decision();
    assert!((d.p_leukemia(&[0.1, 0.2, 0.3, 0.4]) - 0.9).abs() < 1e-6);
    assert_eq!(d.class_name(d.predicted_class(&[0.1, 0.2, 0.3, 0.4])), "Pro");
}

#[test]
fn weights_round_trip_and_missing_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = RunBundle::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    let (config, metadata) = sample(TaskKind::Binary);
    let device = Device::flex();
    let model = config.model.init(&device).unwrap();
    let b = RunBundle::create(dir.path(), config, metadata).unwrap();
    let err = b.load_model(&device).unwrap_err().to_string();
    assert!(err.contains("model.bpk"), "{err}");
    b.save_weights(&model).unwrap();
    let loaded = b.load_model(&device).unwrap();
    let x = burn::tensor::Tensor::<4>::ones([1, 3, 32, 32], &device);
    let a = model.valid().forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
    let c = loaded.forward(x).into_data().try_to_vec::<f32>().unwrap();
    assert!((a[0] - c[0]).abs() < 1e-4, "{a:?} vs {c:?}");
    assert_eq!(b.metadata.decision().p_leukemia(&[0.7]), 0.7);
}

/// A binary bundle with saved weights in a fresh temporary directory.
fn bundle_with_weights() -> (tempfile::TempDir, RunBundle, LeukemiaClassifier) {
    let dir = tempfile::tempdir().unwrap();
    let (config, metadata) = sample(TaskKind::Binary);
    let model = config.model.init(&Device::flex()).unwrap();
    let b = RunBundle::create(dir.path(), config, metadata).unwrap();
    b.save_weights(&model).unwrap();
    (dir, b, model)
}

#[test]
fn a_flipped_byte_in_the_weights_is_refused_with_both_hashes() {
    let (dir, b, _) = bundle_with_weights();
    let path = dir.path().join(WEIGHTS_FILE);
    let good = std::fs::read(&path).unwrap();
    let recorded = sha256_hex(&good);
    let mut bad = good.clone();
    let k = bad.len() - 3; // inside the tensor data, where a flip still parses
    bad[k] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let err = RunBundle::open(dir.path()).unwrap().load_model(&Device::flex()).unwrap_err();
    assert!(matches!(err, BundleError::IntegrityMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("model.bpk"), "{msg}");
    assert!(msg.contains(&recorded), "{msg}");
    assert!(msg.contains(&sha256_hex(&bad)), "{msg}");
    // Restored, it loads again.
    std::fs::write(&path, &good).unwrap();
    b.load_model(&Device::flex()).unwrap();
}

#[test]
fn edited_config_or_metadata_is_refused() {
    let (dir, b, _) = bundle_with_weights();
    RunBundle::open(dir.path()).unwrap().load_model(&Device::flex()).unwrap();
    for file in [CONFIG_FILE, METADATA_FILE] {
        let path = dir.path().join(file);
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, good.replacen("\n", "\n ", 1)).unwrap();
        let err = RunBundle::open(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::IntegrityMismatch { .. }), "{file}: {err:?}");
        assert!(err.to_string().contains(file), "{err}");
        std::fs::write(&path, good).unwrap();
    }
    // Weights copied in without a record are refused too.
    let mut record = read_integrity(dir.path()).unwrap().unwrap();
    record.files.remove(WEIGHTS_FILE);
    write_json(&dir.path().join(INTEGRITY_FILE), &record).unwrap();
    let err = b.load_model(&Device::flex()).unwrap_err();
    assert!(matches!(err, BundleError::IntegrityUnrecorded { .. }), "{err:?}");
}

#[test]
fn an_older_bundle_without_hashes_still_loads() {
    let (dir, b, model) = bundle_with_weights();
    std::fs::remove_file(dir.path().join(INTEGRITY_FILE)).unwrap();
    RunBundle::open(dir.path()).unwrap().load_model(&Device::flex()).unwrap();
    // Re-saving the weights does not start a partial record that would strand the JSON files.
    b.save_weights(&model).unwrap();
    assert!(!dir.path().join(INTEGRITY_FILE).exists());
    RunBundle::open(dir.path()).unwrap().load_model(&Device::flex()).unwrap();
}

#[test]
fn inconsistent_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mut metadata) = sample(TaskKind::Subtype);
    metadata.leukemia_classes.push("Mystery".into());
    let err = RunBundle::create(dir.path(), config, metadata).unwrap_err().to_string();
    assert!(err.contains("Mystery") && err.contains("metadata.json"), "{err}");
}

/// Rewrites `metadata.json` through `edit` and records its new hash, as if an older allscan
/// had written it so.
fn rewrite_metadata(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(METADATA_FILE);
    let mut value: serde_json::Value = read_json(&path).unwrap();
    edit(&mut value);
    let hash = write_json(&path, &value).unwrap();
    let mut record = read_integrity(dir).unwrap().unwrap();
    record.files.insert(METADATA_FILE.into(), hash);
    write_json(&dir.join(INTEGRITY_FILE), &record).unwrap();
}

#[test]
fn older_metadata_with_copies_of_the_config_opens_when_they_agree_and_is_refused_when_not() {
    let (dir, b, _) = bundle_with_weights();
    let p = serde_json::to_value(b.preprocess()).unwrap();
    // As older bundles wrote it: the preprocessing again, and its input size and normalisation.
    let old = |m: &mut serde_json::Value| {
        m["preprocess"] = p.clone();
        m["input_size"] = p["input_size"].clone();
        m["normalization"] = p["normalization"].clone();
    };
    rewrite_metadata(dir.path(), old);
    let opened = RunBundle::open(dir.path()).unwrap();
    assert_eq!((&opened.config, &opened.metadata), (&b.config, &b.metadata));
    opened.load_model(&Device::flex()).unwrap();
    // Each copy is checked against config.json; the error names the file and the field.
    for (field, pointer, value) in [
        ("input_size", "/input_size", serde_json::json!(65)),
        ("normalization", "/normalization/std/0", serde_json::json!(0.5)),
        ("preprocess", "/preprocess/mode", serde_json::json!("field")),
    ] {
        rewrite_metadata(dir.path(), |m| {
            old(m);
            *m.pointer_mut(pointer).unwrap() = value;
        });
        let err = RunBundle::open(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::Inconsistent { .. }), "{field}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains("metadata.json") && msg.contains(&format!("`{field}`")), "{msg}");
    }
}
