//! Training input, once per run: a dataset index + split -> u8 model-input crops per part
//! (decoded and preprocessed once, kept in memory; augmentation works on these), with each
//! image's target, binary label and content hash. Unreadable files are skipped and counted.

use std::path::Path;

use allscan_preprocess::{decode_file, prepare_views_at, PreprocessConfig, ScaleEstimate, ScalePool};
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
    /// The feature caches' key: the file's SHA-256, plus `#k` for its `k`-th cell (k > 0);
    /// exact duplicates share one entry.
    pub key: String,
    /// The record's source (sources datasets); the sampler balances source x class.
    pub source: Option<String>,
    /// The field (record index in the dataset index) this view was cut from: the field call
    /// is the [`crate::decision::field_call`] rule over the views of one field.
    pub field: usize,
    /// The view's label is known. Cell mode labels fields, not cells: every cell of a
    /// not-leukemia field is not leukemia, but only the dominant cell of a leukemia field
    /// takes its label (its other cells may be anything). Unlabelled views are never trained
    /// on nor in the loss; validation and the held-out report score them in the field call.
    pub labelled: bool,
    /// The view may decide its field's call (cell mode: not flagged small or smudge).
    pub decides: bool,
}

/// Number of distinct fields the views `samples` were cut from.
pub fn field_count(samples: &[Sample]) -> usize {
    samples.iter().map(|s| s.field).collect::<std::collections::HashSet<_>>().len()
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
///
/// One view per field outside cell mode. In cell mode validation and test keep every cell
/// (the field call is scored as inference scores it), and training keeps the labelled ones:
/// the dominant cell of a leukemia field, up to `negative_cells` cells of any other field.
/// Each source's images of one size are one instrument: a field without a red-cell scale is
/// cut again at that set's pooled scale, as inference does ([`crate::infer::Predictor::predict_set`]).
pub fn prepare(
    index: &DatasetIndex,
    split: &SplitFile,
    pre: &PreprocessConfig,
    negative_cells: usize,
    target: &(dyn Fn(&ImageRecord) -> Option<usize> + Sync),
    progress: bool,
) -> Prepared {
    let parts = [Part::Train, Part::Val, Part::Test];
    let jobs: Vec<(Part, usize)> =
        parts.iter().flat_map(|&p| split.select(index, p, None).into_iter().map(move |i| (p, i))).collect();
    let run = |jobs: &[(Part, usize)], scales: &[Option<ScaleEstimate>], what: &str| {
        let bar = crate::progress::bar(jobs.len() as u64, what, progress);
        let done = parallel_map(jobs.len(), |k| {
            let (p, i) = jobs[k];
            let rec = &index.images[i];
            let keep = match p {
                Part::Train => negative_cells.max(1),
                Part::Val | Part::Test => usize::MAX,
            };
            let r = one(&index.abs_path(rec), i, rec, pre, keep, target, scales.get(k).and_then(Option::as_ref));
            bar.inc(1);
            r
        });
        bar.finish_and_clear();
        done
    };
    let mut results = run(&jobs, &[], "preprocessing");

    // One set per source and image size (one camera, one size), as inference pools.
    let items: Vec<_> = jobs
        .iter()
        .zip(&results)
        .map(|(&(_, i), r)| match r {
            Ok((_, Some((scale, dims)))) => Some(((index.images[i].source.as_deref(), *dims), scale)),
            _ => None,
        })
        .collect();
    let (again, scales): (Vec<usize>, Vec<Option<ScaleEstimate>>) =
        ScalePool::regroup(&items, &pre.cell.scale).into_iter().map(|(k, s)| (k, Some(s))).unzip();
    let redo: Vec<(Part, usize)> = again.iter().map(|&k| jobs[k]).collect();
    for (k, r) in again.into_iter().zip(run(&redo, &scales, "pooled scale")) {
        results[k] = r;
    }

    let mut out = Prepared::default();
    for (&(part, _), r) in jobs.iter().zip(results) {
        match r {
            Ok((samples, _)) => match part {
                Part::Train => out.train.extend(samples.into_iter().filter(|s| s.labelled)),
                Part::Val => out.val.extend(samples),
                Part::Test => out.test.extend(samples),
            },
            Err(bad) => out.skipped.push(bad),
        }
    }
    out
}

/// A field's scale and its size in pixels (one pooled set per source and size).
type SizedScale = (ScaleEstimate, (u32, u32));

/// `f(0..n)` on all cores, in order.
fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = crate::device::cpu_threads().max(1);
    let chunk = n.div_ceil(threads).max(1);
    let ids: Vec<usize> = (0..n).collect();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> =
            ids.chunks(chunk).map(|c| s.spawn(move || c.iter().map(|&k| f(k)).collect::<Vec<T>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// The views of one field: every cell in cell mode (up to `negative_cells` for a
/// not-leukemia field), else the first view; with the field's scale (cell mode). `scale`: a
/// known one (the source's pooled scale), else the source's given one or the field's own.
fn one(
    path: &Path,
    field: usize,
    rec: &ImageRecord,
    pre: &PreprocessConfig,
    negative_cells: usize,
    target: &(dyn Fn(&ImageRecord) -> Option<usize> + Sync),
    scale: Option<&ScaleEstimate>,
) -> Result<(Vec<Sample>, Option<SizedScale>), (String, String)> {
    let bad = |reason: String| (rec.path.clone(), reason);
    let t = target(rec).ok_or_else(|| bad(format!("class `{}` has no label for this task", rec.class)))?;
    let img = decode_file(path, &pre.decode).map_err(|e| bad(e.reason()))?;
    // The source's own scale (sources datasets) stands over each image's red-cell estimate.
    let given = rec.um_per_px.filter(|_| pre.cell.scale.um_per_px.is_none()).map(ScaleEstimate::given);
    let views = prepare_views_at(&img, pre, scale.or(given.as_ref())).map_err(|e| bad(e.to_string()))?;
    let cell_mode = pre.mode == allscan_preprocess::SegmentMode::Cell;
    if views.images.is_empty() {
        return Err(bad(if cell_mode { "no white cell found" } else { "preprocessing gave no view" }.into()));
    }
    let leukemia = rec.label.is_some_and(|l| l.is_leukemia());
    let n = if cell_mode { views.images.len().min(negative_cells) } else { 1 };
    let scale = views.scale.clone().map(|s| (s, img.dimensions()));
    let samples = views
        .images
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(k, crop)| Sample {
            crop,
            target: t,
            leukemia,
            path: rec.path.clone(),
            key: if k == 0 { rec.sha256.clone() } else { format!("{}#{k}", rec.sha256) },
            source: rec.source.clone(),
            field,
            labelled: k == 0 || !leukemia,
            decides: views.cells.get(k).is_none_or(|c| crate::decision::cell_decides(&c.flags)),
        })
        .collect();
    Ok((samples, scale))
}
