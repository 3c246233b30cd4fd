//! Training, before the run folder is touched: a [`TrainRequest`] -> the index, the split, the
//! config tree (profile + overrides), the output classes and the preprocessed views, with every
//! check that can fail on bad input.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use super::dataset::{self, Prepared};
use super::{RunLog, TrainError, TrainRequest};
use crate::bundle::{DataConfig, RunConfig, BUNDLE_FORMAT};
use crate::config::{apply_overrides, parse_unfreeze, ConfigError, ProfileDefaults, TaskKind, WeightsSource};
use crate::data::{DatasetIndex, IndexOptions, LabelMap, SplitConfig, SplitFile};
use crate::model::BackboneConfig;

/// Everything decided before the run folder is touched.
pub(super) struct Plan {
    pub(super) config: RunConfig,
    pub(super) index: DatasetIndex,
    pub(super) split: SplitFile,
    pub(super) prepared: Prepared,
    pub(super) class_names: Vec<String>,
    pub(super) leukemia_classes: Vec<String>,
    pub(super) num_targets: usize,
}

/// Index, split, config tree and preprocessing: all checks that can fail on bad input.
pub(super) fn plan(req: &TrainRequest, log: &mut RunLog) -> Result<Plan, TrainError> {
    let map = req.map.as_deref().map(LabelMap::parse).transpose()?;
    let opts = IndexOptions { map, progress: req.progress, ..IndexOptions::default() };
    let index = DatasetIndex::build(&req.data, &opts)?;
    let ds_err = |reason: String| TrainError::Dataset { path: req.data.clone(), reason };
    if let Some(empty) = empty_class_folders(&index).first() {
        return Err(ds_err(format!("class folder `{empty}` has no readable images; remove it or add images")));
    }
    let classes: Vec<String> = index.classes.iter().map(|c| c.name.clone()).collect();
    let (class_names, leukemia_classes, num_targets) = match req.task {
        TaskKind::Binary => {
            index.binary_labels()?;
            (vec!["healthy".to_string(), "leukemia".to_string()], vec!["leukemia".to_string()], 2)
        }
        TaskKind::Subtype => {
            if classes.len() < 2 {
                return Err(ds_err(format!("a subtype model needs at least 2 classes, found {classes:?}")));
            }
            let leuk = index
                .classes
                .iter()
                .filter(|c| c.label.is_some_and(|l| l.is_leukemia()))
                .map(|c| c.name.clone())
                .collect();
            (classes.clone(), leuk, classes.len())
        }
    };
    let defaults = req.profile.defaults(req.task, classes.len());
    let ProfileDefaults { mut model, preprocess, train, weights } = apply_overrides(defaults, &req.overrides)?;
    if weights == WeightsSource::Imagenet && matches!(model.backbone, BackboneConfig::Custom(_)) {
        if let Some(v) = model.backbone.variant() {
            model.backbone = BackboneConfig::Torchvision { variant: v };
        } else {
            return Err(TrainError::Config(ConfigError(
                "--weights imagenet needs a torchvision backbone; the cpu profile's slim DenseNet trains from scratch"
                    .into(),
            )));
        }
    }
    train.validate()?;
    model.validate()?;
    if preprocess.input_size < 32 {
        return Err(TrainError::Config(ConfigError(format!("input size {} is below 32 px", preprocess.input_size))));
    }
    parse_unfreeze(&train.stage2.unfreeze, model.backbone.densenet().block_config.len())?;
    let split_cfg = req.split_config.unwrap_or(SplitConfig { seed: req.seed, ..SplitConfig::default() });
    let split = match &req.split {
        Some(p) => SplitFile::load(p, &index)?,
        None => SplitFile::make(&index, &split_cfg)?,
    };
    let config = RunConfig {
        format: BUNDLE_FORMAT.into(),
        task: req.task,
        profile: req.profile,
        seed: req.seed,
        data: DataConfig {
            root: req.data.display().to_string(),
            map: req.map.clone(),
            split_file: req.split.as_ref().map(|p| p.display().to_string()),
            split: split.config,
            fingerprint: index.fingerprint.clone(),
        },
        weights,
        model,
        preprocess,
        train,
    };
    log.line(&format!(
        "allscan train: {} task, {} profile, {} images in {} classes ({}), seed {}",
        req.task.name(),
        req.profile.name(),
        index.images.len(),
        classes.len(),
        classes.join(", "),
        req.seed
    ));
    let class_of: BTreeMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let task = req.task;
    let target = move |rec: &crate::data::ImageRecord| -> Option<usize> {
        match task {
            TaskKind::Binary => rec.label.map(|l| usize::from(l.is_leukemia())),
            TaskKind::Subtype => class_of.get(rec.class.as_str()).copied(),
        }
    };
    let t = Instant::now();
    let mut prepared =
        dataset::prepare(&index, &split, &config.preprocess, config.train.negative_cells, &target, req.progress);
    let mut skipped: Vec<(String, String)> = index.bad.iter().map(|b| (b.path.clone(), b.reason.clone())).collect();
    skipped.append(&mut prepared.skipped);
    prepared.skipped = skipped;
    let views = if config.preprocess.mode == allscan_preprocess::SegmentMode::Cell {
        format!(
            " ({} / {} / {} cell views: every cell of val / test fields, the labelled ones of train)",
            prepared.train.len(),
            prepared.val.len(),
            prepared.test.len()
        )
    } else {
        String::new()
    };
    log.line(&format!(
        "preprocessed {} train / {} val / {} test images{views} in {:.1} s ({} at {} px)",
        dataset::field_count(&prepared.train),
        dataset::field_count(&prepared.val),
        dataset::field_count(&prepared.test),
        t.elapsed().as_secs_f64(),
        config.preprocess.mode,
        config.preprocess.input_size
    ));
    if !prepared.skipped.is_empty() {
        // Every skipped file, one per line: the log is the record of what the run left out.
        log.line(&format!("skipped {} unreadable or unusable file(s):", prepared.skipped.len()));
        for (p, r) in &prepared.skipped {
            log.line(&format!("  skipped: {p} ({r})"));
        }
    }
    // Every output class must be in the training part, and validation must not be empty.
    let names = &class_names;
    for (k, name) in names.iter().enumerate() {
        if !prepared.train.iter().any(|s| s.target == k) {
            return Err(ds_err(format!("class `{name}` has no usable image in the training part")));
        }
    }
    if prepared.val.is_empty() {
        return Err(ds_err("the validation part is empty; use a split with --val > 0 or more images".into()));
    }
    Ok(Plan { config, index, split, prepared, class_names, leukemia_classes, num_targets })
}

/// Class folders beside the dataset's class folders that hold no indexed image.
fn empty_class_folders(index: &DatasetIndex) -> Vec<String> {
    let mut parents = std::collections::BTreeSet::new();
    let mut class_dirs = std::collections::BTreeSet::new();
    for rec in &index.images {
        if let Some(dir) = index.abs_path(rec).parent() {
            if dir.file_name().is_some_and(|n| n.to_string_lossy() == rec.class) {
                class_dirs.insert(dir.to_path_buf());
                if let Some(p) = dir.parent() {
                    parents.insert(p.to_path_buf());
                }
            }
        }
    }
    let mut empty = Vec::new();
    for p in parents {
        let Ok(entries) = std::fs::read_dir(&p) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() && !name.starts_with('.') && !class_dirs.contains(&path) && !has_files(&path) {
                empty.push(name);
            }
        }
    }
    empty.sort();
    empty
}

fn has_files(dir: &Path) -> bool {
    walkdir::WalkDir::new(dir).into_iter().flatten().any(|e| e.file_type().is_file())
}
