//! Training input, once per run: a dataset index + split -> u8 model-input crops per part
//! (decoded and preprocessed once, kept in memory; augmentation works on these), with each
//! image's target, binary label and content hash. Unreadable files are skipped and counted.

use std::path::Path;

use allscan_preprocess::{decode_file, prepare_input, PreprocessConfig};
use image::RgbImage;

use crate::data::{DatasetIndex, ImageRecord, Part, SplitFile};

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The model-input view (`input_size` square), before normalisation.
    pub crop: RgbImage,
    /// Output index the loss aims at (binary: 0 healthy / 1 leukemia; subtype: class index).
    pub target: usize,
    /// Binary label.
    pub leukemia: bool,
    /// Path relative to the dataset root.
    pub path: String,
    /// SHA-256 of the file: the feature caches' key (exact duplicates share one entry).
    pub sha256: String,
    /// The record's source (sources datasets); the sampler balances source x class.
    pub source: Option<String>,
}

/// The three parts of the split, preprocessed.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Trains the weights.
    pub train: Vec<Sample>,
    /// Early stopping, best epoch, decision threshold.
    pub val: Vec<Sample>,
    /// Held out: reported at the end, never used to choose anything.
    pub test: Vec<Sample>,
    /// `(path, reason)` of files that could not be preprocessed.
    pub skipped: Vec<(String, String)>,
}

/// Decodes and preprocesses every image of the split's parts on all cores. `target` maps a
/// record to its output index (`None`: the record cannot be used, e.g. an unmapped class).
pub fn prepare(
    index: &DatasetIndex,
    split: &SplitFile,
    pre: &PreprocessConfig,
    target: &(dyn Fn(&ImageRecord) -> Option<usize> + Sync),
    progress: bool,
) -> Prepared {
    let mut out = Prepared::default();
    let parts = [Part::Train, Part::Val, Part::Test];
    let jobs: Vec<(Part, usize)> =
        parts.iter().flat_map(|&p| split.select(index, p, None).into_iter().map(move |i| (p, i))).collect();
    let bar = crate::train::progress::bar(jobs.len() as u64, "preprocessing", progress);
    let threads = crate::device::cpu_threads().max(1);
    let chunk = jobs.len().div_ceil(threads).max(1);
    // Per thread: (part, the sample or (path, why it could not be read)).
    type Loaded = Vec<(Part, Result<Sample, (String, String)>)>;
    let results: Vec<Loaded> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part_jobs| {
                let bar = bar.clone();
                s.spawn(move || {
                    part_jobs
                        .iter()
                        .map(|&(p, i)| {
                            let rec = &index.images[i];
                            let r = one(&index.abs_path(rec), rec, pre, target);
                            bar.inc(1);
                            (p, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    bar.finish_and_clear();
    for (part, r) in results.into_iter().flatten() {
        match r {
            Ok(sample) => match part {
                Part::Train => out.train.push(sample),
                Part::Val => out.val.push(sample),
                Part::Test => out.test.push(sample),
            },
            Err(bad) => out.skipped.push(bad),
        }
    }
    out
}

fn one(
    path: &Path,
    rec: &ImageRecord,
    pre: &PreprocessConfig,
    target: &(dyn Fn(&ImageRecord) -> Option<usize> + Sync),
) -> Result<Sample, (String, String)> {
    let bad = |reason: String| (rec.path.clone(), reason);
    let t = target(rec).ok_or_else(|| bad(format!("class `{}` has no label for this task", rec.class)))?;
    let img = decode_file(path, &pre.decode).map_err(|e| bad(e.reason()))?;
    let views = match rec.um_per_px {
        // The source's own scale (sources datasets), over each image's red-cell estimate.
        Some(u) if pre.cell.scale.um_per_px.is_none() => {
            let mut p = pre.clone();
            p.cell.scale.um_per_px = Some(u);
            prepare_input(&img, &p)
        }
        _ => prepare_input(&img, pre),
    }
    .map_err(|e| bad(e.to_string()))?;
    let none = || {
        if pre.mode == allscan_preprocess::SegmentMode::Cell {
            "no white cell found"
        } else {
            "preprocessing gave no view"
        }
    };
    let crop = views.into_iter().next().ok_or_else(|| bad(none().into()))?;
    Ok(Sample {
        crop,
        target: t,
        leukemia: rec.label.is_some_and(|l| l.is_leukemia()),
        path: rec.path.clone(),
        sha256: rec.sha256.clone(),
        source: rec.source.clone(),
    })
}
