//! Test support: the one builder of run-bundle fixtures. A tiny random-weight DenseNet
//! (growth 4, blocks [2, 2], 64-pixel inputs, one crop per nucleus): the bundle format and the
//! whole predict / explain / eval / serve path are real, the predictions are meaningless.
//! Change [`BundleFixture::config`] or [`BundleFixture::metadata`] before writing it, rather
//! than editing the written files (which would also break their integrity record).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::{BundleError, BundleMetadata, DataConfig, RunBundle, RunConfig, Versions, BUNDLE_FORMAT};
use crate::config::{Profile, TaskKind, WeightsSource};
use crate::data::SplitConfig;

/// A bundle's two JSON files, not written yet.
#[derive(Debug, Clone)]
pub struct BundleFixture {
    /// `config.json`.
    pub config: RunConfig,
    /// `metadata.json`.
    pub metadata: BundleMetadata,
}

impl BundleFixture {
    /// The fixture of `task`: the `cpu` profile's tree with a tiny backbone, nucleus crops
    /// (every crop, at most 4) at 64 px, the synthetic classes, threshold 0.5 (not tuned).
    pub fn new(task: TaskKind) -> Self {
        let d = Profile::Cpu.defaults(task, crate::synth::CLASSES.len());
        let mut model = d.model;
        model.backbone =
            crate::model::BackboneConfig::Custom(densenet_burn::DenseNetConfig::custom(4, vec![2, 2], 8, None));
        model.hidden = 8;
        // The nucleus-crop path whatever the cpu profile's view is, so crops are exercised.
        let preprocess = allscan_preprocess::PreprocessConfig {
            input_size: 64,
            roi: allscan_preprocess::RoiConfig {
                views: allscan_preprocess::RoiViews::All,
                max_crops: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let config = RunConfig {
            format: BUNDLE_FORMAT.into(),
            task,
            profile: Profile::Cpu,
            seed: 0,
            data: DataConfig {
                root: "synthetic".into(),
                map: None,
                split_file: None,
                split: SplitConfig::default(),
                fingerprint: "random".into(),
            },
            weights: WeightsSource::None,
            model: model.clone(),
            preprocess,
            train: d.train,
        };
        let classes: Vec<String> = crate::synth::CLASSES.iter().map(|s| s.to_string()).collect();
        let (class_names, leukemia_classes) = match task {
            TaskKind::Binary => (vec!["healthy".to_string(), "leukemia".to_string()], vec!["leukemia".to_string()]),
            TaskKind::Subtype => (classes.clone(), classes[1..].to_vec()),
        };
        let metadata = BundleMetadata {
            format: BUNDLE_FORMAT.into(),
            task: model.task,
            class_names,
            leukemia_classes,
            dataset_classes: Vec::new(),
            threshold: 0.5,
            threshold_rule: "fixed 0.5 (random test bundle)".into(),
            dataset_fingerprint: "random".into(),
            split: None,
            best: None,
            test_metrics: BTreeMap::new(),
            versions: Versions::default(),
        };
        Self { config, metadata }
    }

    /// Writes `config.json`, `metadata.json` and `integrity.json` into `dir`, no weights.
    pub fn create(self, dir: &Path) -> Result<RunBundle, BundleError> {
        RunBundle::create(dir, self.config, self.metadata)
    }

    /// [`create`](Self::create), then weights initialised at random (from the device's
    /// current seed) saved as the bundle's.
    pub fn write(self, dir: &Path) -> Result<RunBundle, BundleError> {
        let bundle = self.create(dir)?;
        let net = bundle
            .config
            .model
            .init(&Device::flex())
            .map_err(|source| BundleError::Model { path: dir.to_path_buf(), source })?;
        bundle.save_weights(&net)?;
        Ok(bundle)
    }
}

/// The fixture of `task` written with random weights into `dir`.
pub fn write_random_bundle(dir: &Path, task: TaskKind) -> Result<RunBundle, BundleError> {
    BundleFixture::new(task).write(dir)
}

/// Every file under `dir` (relative path -> bytes): a bundle's state, to show a command left
/// it unchanged.
pub fn snapshot(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_path_buf();
                out.insert(rel, std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}
