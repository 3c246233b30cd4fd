//! Inference stage: decoded fields -> model views (whole field or nucleus ROI crops, exactly as
//! the bundle's [`PreprocessConfig`] says) -> batched forward passes -> per-cell and per-field
//! probabilities.
//!
//! Input: `RgbImage` fields (decoding, with its limits, is the caller's job so that the CLI
//! and the server can report decode errors their own way). Output: one [`FieldPrediction`]
//! per field, with one [`CellPrediction`] per model view and every nucleus box found.
//!
//! Aggregation rule (ROI and cell modes, several crops per field): the field's `p_leukemia` is
//! the **highest** `p_leukemia` among its cells (one blast is enough to flag a field), and the
//! field's class probabilities are those of that most suspicious cell. In `cell` mode, cells
//! flagged small (platelet-sized) or smudged are scored and listed but do not decide the field,
//! and a field with no white cell is reported as such ([`NO_WHITE_CELL`]), not as healthy. The field is called
//! `leukemia` when `p_leukemia >= threshold` (the bundle's decision threshold). With one view
//! per field (whole-field mode, or `roi.views = largest`) the rule reduces to that view.
//!
//! Research use only, not a diagnostic device.

use allscan_preprocess::{
    prepare_views, to_chw_normalized, BBox, CellFlag, PreprocessConfig, PreprocessError, ScaleEstimate, ScalePool,
    WhiteCell,
};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::model::{probabilities, ClassifierConfig, LeukemiaClassifier, Task};

/// Label of a field or cell at or above the threshold.
pub const LEUKEMIA: &str = "leukemia";
/// Label below the threshold.
pub const HEALTHY: &str = "healthy";
/// The call of a field in which no white cell was found (`cell` mode).
pub const NO_WHITE_CELL: &str = "no white cell found";
/// The documented aggregation rule, as reported in outputs.
pub const AGGREGATION_RULE: &str = "max p_leukemia over cells (cell mode: over cells not flagged small or smudge)";
/// Default number of views per forward pass.
pub const DEFAULT_BATCH: usize = 8;

/// Errors of the inference stage.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Predictor settings that cannot work together.
    #[error("invalid predictor settings: {0}")]
    InvalidConfig(String),
    /// `nucleus` mode found no nucleus and the fallback is off.
    #[error("no nucleus found in a {width}x{height} field")]
    NoNucleus {
        /// Field width.
        width: u32,
        /// Field height.
        height: u32,
    },
    /// The run bundle could not be loaded.
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    /// The preprocessing refused the field or its settings.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// Burn returned data in an unexpected form.
    #[error("model output could not be read: {0}")]
    Output(String),
}

/// A square (or whole-field) region in field pixels; may extend past the field when a crop
/// was padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Left column (may be negative for a padded crop).
    pub x: i64,
    /// Top row (may be negative).
    pub y: i64,
    /// Width in field pixels.
    pub width: u32,
    /// Height in field pixels.
    pub height: u32,
}

/// The model's view(s) of one field, before normalisation.
#[derive(Debug, Clone)]
pub struct FieldViews {
    /// Model inputs, `input_size` x `input_size` each.
    pub images: Vec<RgbImage>,
    /// Where each view was cut from, in field pixels.
    pub regions: Vec<Region>,
    /// Index of each view's nucleus in `nuclei` (`None` for a whole-field view).
    pub nucleus_of_view: Vec<Option<usize>>,
    /// Every nucleus the finder found (empty in `aria-hsv` mode), largest first.
    pub nuclei: Vec<BBox>,
    /// `cell` mode: every white cell, in view order.
    pub cells: Vec<WhiteCell>,
    /// `cell` mode: the nucleus and whole-cell masks of each of `cells`, in the same order.
    pub masks: Vec<crate::masks::CellMasks>,
    /// `cell` mode: the field's scale.
    pub scale: Option<ScaleEstimate>,
    /// Whether the preprocessing cuts cells (so zero views means no white cell).
    pub cell_mode: bool,
    /// Field size.
    pub width: u32,
    /// Field size.
    pub height: u32,
}

/// One model view's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellPrediction {
    /// Region the view was cut from, in field pixels.
    pub region: Region,
    /// The nucleus box of this view, if it is a nucleus crop.
    pub nucleus: Option<BBox>,
    /// `cell` mode: the whole white cell's box (nucleus + cytoplasm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<BBox>,
    /// `cell` mode: what the finder noticed about this cell (touches the border, small, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<CellFlag>,
    /// `cell` mode: the nucleus and whole-cell masks, run-length encoded over their boxes
    /// ([`crate::masks`] states the format). Absent in other modes and in older JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<crate::masks::CellMasks>,
    /// `leukemia` or `healthy` at the predictor's threshold.
    pub prediction: String,
    /// Probability of any leukemia class.
    pub p_leukemia: f32,
    /// Most probable class (subtype models only).
    pub subtype: Option<String>,
    /// Probability per class name (binary: `healthy`/`leukemia` style names from the bundle).
    pub probabilities: Vec<ClassProbability>,
}

/// A `(class, probability)` pair; a list rather than a map so the class order is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassProbability {
    /// Class name.
    pub class: String,
    /// Probability.
    pub p: f32,
}

/// One field's result after aggregation (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldPrediction {
    /// `leukemia` or `healthy`.
    pub prediction: String,
    /// Field-level probability of leukemia (max over cells).
    pub p_leukemia: f32,
    /// Most probable class of the most suspicious cell (subtype models only).
    pub subtype: Option<String>,
    /// Class probabilities of the most suspicious cell.
    pub probabilities: Vec<ClassProbability>,
    /// Index into `cells` of the cell that decided the field.
    pub decisive_cell: usize,
    /// Every scored view.
    pub cells: Vec<CellPrediction>,
    /// Every nucleus found in the field (boxes for display), largest first.
    pub nuclei: Vec<BBox>,
    /// `cell` mode: micrometres per pixel of the field and where that came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleEstimate>,
    /// Field width.
    pub width: u32,
    /// Field height.
    pub height: u32,
    /// Decision threshold used.
    pub threshold: f64,
}

impl FieldPrediction {
    /// Whether the field had no white cell to judge (`cell` mode).
    pub fn no_white_cell(&self) -> bool {
        self.prediction == NO_WHITE_CELL
    }
}

impl CellPrediction {
    /// Whether this cell may decide its field and counts as a white cell in summaries (see
    /// the module docs: cells flagged small or smudge do not).
    pub fn decides(&self) -> bool {
        cell_decides(&self.flags)
    }
}

/// Whether a cell with these flags may decide its field's call (not small, not a smudge).
pub fn cell_decides(flags: &[CellFlag]) -> bool {
    !flags.iter().any(|f| matches!(f, CellFlag::Small | CellFlag::Smudge))
}

/// The field call of [`AGGREGATION_RULE`] over a field's cells `(p_leukemia, decides)`: the
/// index and probability of the decisive cell (`None` for no cell). Training's validation and
/// held-out report, `eval` and inference all call fields through here.
pub fn field_call(cells: impl IntoIterator<Item = (f32, bool)>) -> Option<(usize, f32)> {
    let cells: Vec<(f32, bool)> = cells.into_iter().collect();
    // Cells that may decide; if none may, every cell does (a lone flagged cell is still a cell).
    let any_decides = cells.iter().any(|c| c.1);
    cells
        .iter()
        .enumerate()
        .filter(|(_, c)| !any_decides || c.1)
        .max_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
        .map(|(i, c)| (i, c.0))
}

/// Most views `Predictor::adapt` re-estimates BatchNorm statistics on.
pub const ADAPT_MAX_VIEWS: usize = 4096;
/// Views per batch when adapting (the statistics are the mean over batches of this size).
const ADAPT_BATCH: usize = 64;

/// A loaded model plus everything needed to repeat training's preprocessing.
#[derive(Debug)]
pub struct Predictor {
    model: LeukemiaClassifier,
    model_config: ClassifierConfig,
    preprocess: PreprocessConfig,
    class_names: Vec<String>,
    leukemia_classes: Vec<String>,
    threshold: f64,
    device: Device,
    batch_size: usize,
}

impl Predictor {
    /// A predictor on an already loaded model. `class_names` are the model's outputs in order
    /// (binary: two names, negative first; subtype: one per logit); `leukemia_classes` are
    /// the names whose probabilities sum to `p_leukemia` (subtype models). The model is turned
    /// into its eval-mode copy (`valid()`: BatchNorm on running statistics, no autodiff);
    /// pass a BatchNorm-folded model (`for_inference()`) for speed.
    pub fn new(
        model: LeukemiaClassifier,
        model_config: ClassifierConfig,
        preprocess: PreprocessConfig,
        class_names: Vec<String>,
        leukemia_classes: Vec<String>,
        threshold: f64,
    ) -> Result<Self, InferError> {
        let expected = match model_config.task {
            Task::Binary => 2,
            Task::Subtype { num_classes } => num_classes,
        };
        if class_names.len() != expected {
            return Err(InferError::InvalidConfig(format!(
                "the model has {expected} classes but {} class names were given ({:?})",
                class_names.len(),
                class_names
            )));
        }
        if let Task::Subtype { .. } = model_config.task {
            if let Some(bad) = leukemia_classes.iter().find(|c| !class_names.contains(c)) {
                return Err(InferError::InvalidConfig(format!(
                    "leukemia class {bad:?} is not among the class names {class_names:?}"
                )));
            }
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(InferError::InvalidConfig(format!("threshold {threshold} must be in [0, 1]")));
        }
        if preprocess.input_size == 0 {
            return Err(InferError::InvalidConfig("input_size must be > 0".into()));
        }
        let device = model.devices().into_iter().next().unwrap_or_else(Device::flex);
        Ok(Self {
            model: model.valid(),
            model_config,
            preprocess,
            class_names,
            leukemia_classes,
            threshold,
            device,
            batch_size: DEFAULT_BATCH,
        })
    }

    /// The predictor of a trained run: its model (eval mode, BatchNorm folded), preprocessing,
    /// classes and decision threshold.
    pub fn from_bundle(bundle: &crate::bundle::RunBundle, device: &Device) -> Result<Self, InferError> {
        let m = &bundle.metadata;
        let model = bundle.load_model(device)?;
        Self::new(
            model,
            bundle.config.model.clone(),
            bundle.preprocess().clone(),
            m.class_names.clone(),
            m.leukemia_classes.clone(),
            m.threshold,
        )
    }

    /// Test-time BatchNorm re-estimation (AdaBN, `--adapt`): every BatchNorm's statistics
    /// are re-estimated without labels on the views of `fields` (the images about to be
    /// predicted; at most [`ADAPT_MAX_VIEWS`] views, evenly spread), from `bundle`'s stored
    /// weights, then folded again. Use it after the scale override, before predicting. Returns
    /// the adapted predictor and the number of views it was adapted on.
    pub fn adapt(
        self,
        bundle: &crate::bundle::RunBundle,
        fields: &[image::RgbImage],
    ) -> Result<(Self, usize), InferError> {
        let views: Vec<image::RgbImage> =
            fields.iter().filter_map(|f| prepare_views(f, &self.preprocess).ok()).flat_map(|v| v.images).collect();
        if views.len() < 2 {
            return Err(InferError::InvalidConfig(format!(
                "--adapt needs at least 2 views of the images to predict, found {}",
                views.len()
            )));
        }
        let model = bundle.load_trainable(&self.device.clone().autodiff())?;
        self.adapt_model(model, &views)
    }

    /// [`adapt`](Self::adapt) from a trainable copy of the model (on an autodiff device) and
    /// the views themselves.
    pub fn adapt_model(
        mut self,
        model: LeukemiaClassifier,
        views: &[image::RgbImage],
    ) -> Result<(Self, usize), InferError> {
        let train_device = model.devices().into_iter().next().unwrap_or_else(|| self.device.clone().autodiff());
        let idx = crate::adapt::spread(views.len(), ADAPT_MAX_VIEWS);
        let crops: Vec<&image::RgbImage> = views.iter().collect();
        let k = idx.len().div_ceil(ADAPT_BATCH);
        let model = crate::adapt::reestimate_batchnorm(
            model,
            &crops,
            &idx,
            k,
            ADAPT_BATCH,
            &self.preprocess.normalization,
            &train_device,
        );
        self.model = model.for_inference();
        Ok((self, idx.len()))
    }

    /// Sets the number of views per forward pass (at least 1).
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch_size = batch.max(1);
        self
    }

    /// Sets the fields' physical scale (micrometres per pixel) instead of estimating it from
    /// red cells (`cell` mode; ignored by other modes).
    pub fn with_um_per_px(mut self, um_per_px: Option<f32>) -> Self {
        if um_per_px.is_some() {
            self.preprocess.cell.scale.um_per_px = um_per_px;
        }
        self
    }

    /// Pool the scales of fields predicted together ([`Self::predict_set`]; on by default).
    pub fn with_scale_pool(mut self, pool: bool) -> Self {
        self.preprocess.cell.scale.pool = pool;
        self
    }

    /// Whether the model scores white cells at a physical scale (`cell` mode).
    pub fn cell_mode(&self) -> bool {
        self.preprocess.mode == allscan_preprocess::SegmentMode::Cell
    }

    /// Overrides the decision threshold (clamped to [0, 1]).
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold.clamp(0.0, 1.0);
        self
    }

    /// The inference model (eval mode, BatchNorm folded).
    pub fn model(&self) -> &LeukemiaClassifier {
        &self.model
    }

    /// The classifier's structure.
    pub fn model_config(&self) -> &ClassifierConfig {
        &self.model_config
    }

    /// The preprocessing repeated at inference.
    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Class names in output order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Classes counted as leukemia.
    pub fn leukemia_classes(&self) -> &[String] {
        &self.leukemia_classes
    }

    /// The decision threshold on `p_leukemia`.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Views per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the model has a subtype head.
    pub fn is_subtype(&self) -> bool {
        matches!(self.model_config.task, Task::Subtype { .. })
    }

    /// The model's views of a field ([`allscan_preprocess::prepare_views`], the same path
    /// training takes), with regions in field pixels.
    pub fn views(&self, field: &RgbImage) -> Result<FieldViews, InferError> {
        self.views_at(field, None)
    }

    /// [`Self::views`] at a scale already known (`cell` mode: a given or a set's pooled scale,
    /// over the field's own estimate; a setting in the predictor's config wins over both).
    pub fn views_at(&self, field: &RgbImage, scale: Option<&ScaleEstimate>) -> Result<FieldViews, InferError> {
        let (width, height) = field.dimensions();
        let pre = &self.preprocess;
        let scale = scale.filter(|_| pre.cell.scale.um_per_px.is_none());
        // `cell` mode goes through `prepare_cells` itself (what `prepare_views` does for it,
        // after the same validation) to keep the finder's labels, from which the masks are encoded.
        let (v, masks) = if pre.mode == allscan_preprocess::SegmentMode::Cell {
            pre.validate().map_err(PreprocessError::InvalidConfig)?;
            let (v, found) = allscan_preprocess::prepare_cells_at(field, pre, scale);
            (v, crate::masks::cell_masks(&found))
        } else {
            let v = prepare_views(field, pre).map_err(|e| match e {
                PreprocessError::NoNucleus { width, height } => InferError::NoNucleus { width, height },
                other => InferError::Preprocess(other),
            })?;
            (v, Vec::new())
        };
        let whole = Region { x: 0, y: 0, width, height };
        let regions = v
            .regions
            .iter()
            .map(|r| r.map(|c| Region { x: c.x, y: c.y, width: c.side, height: c.side }).unwrap_or(whole))
            .collect();
        Ok(FieldViews {
            images: v.images,
            regions,
            nucleus_of_view: v.nucleus_of_view,
            nuclei: v.nuclei,
            cells: v.cells,
            masks,
            scale: v.scale,
            cell_mode: self.preprocess.mode == allscan_preprocess::SegmentMode::Cell,
            width,
            height,
        })
    }

    /// Normalised input tensor `[N, 3, S, S]` of views (all of one size). The views come from
    /// [`Self::views`] already in the bundle's `preprocess.channels` (RGB, or the seed script's
    /// H, S, 0), computed by `prepare_views` as in training; only the mean/std is applied here.
    pub fn input_tensor(&self, views: &[&RgbImage]) -> Result<Tensor<4>, InferError> {
        let size = self.preprocess.input_size as usize;
        let mut data = Vec::with_capacity(views.len() * 3 * size * size);
        for v in views {
            if v.dimensions() != (size as u32, size as u32) {
                return Err(InferError::InvalidConfig(format!(
                    "view is {}x{}, expected {size}x{size}",
                    v.width(),
                    v.height()
                )));
            }
            data.extend(to_chw_normalized(v, &self.preprocess.normalization));
        }
        Ok(Tensor::from_data(TensorData::new(data, [views.len(), 3, size, size]), &self.device))
    }

    /// Class probabilities of views, `[N][outputs]` (binary: `[p]`), in batches.
    pub fn view_probabilities(&self, views: &[&RgbImage]) -> Result<Vec<Vec<f32>>, InferError> {
        let mut out = Vec::with_capacity(views.len());
        let k = self.model_config.task.num_outputs();
        for chunk in views.chunks(self.batch_size) {
            let x = self.input_tensor(chunk)?;
            let logits = self.model.forward_views(x, self.model_config.test_views); // [b, k]
            let p = probabilities(self.model_config.task, logits);
            let flat = p.into_data().try_to_vec::<f32>().map_err(|e| InferError::Output(format!("{e:?}")))?;
            if flat.len() != chunk.len() * k {
                return Err(InferError::Output(format!("{} values for {} views x {k}", flat.len(), chunk.len())));
            }
            out.extend(flat.chunks(k).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// Pooled backbone features of views, `[N][C]` (the head's input), in batches.
    pub fn view_embeddings(&self, views: &[&RgbImage]) -> Result<Vec<Vec<f32>>, InferError> {
        let mut out = Vec::with_capacity(views.len());
        for chunk in views.chunks(self.batch_size) {
            let x = self.input_tensor(chunk)?;
            let pooled = densenet_burn::DenseNet::pool(self.model.forward_features(x)); // [b, C]
            let c = pooled.dims()[1];
            let flat = pooled.into_data().try_to_vec::<f32>().map_err(|e| InferError::Output(format!("{e:?}")))?;
            out.extend(flat.chunks(c.max(1)).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// `p_leukemia` of one output row: the sigmoid output (binary) or the summed probabilities
    /// of the leukemia classes (subtype).
    pub fn p_leukemia(&self, probs: &[f32]) -> f32 {
        match self.model_config.task {
            Task::Binary => probs.first().copied().unwrap_or(0.0),
            Task::Subtype { .. } => self
                .class_names
                .iter()
                .zip(probs)
                .filter(|(name, _)| self.leukemia_classes.contains(name))
                .map(|(_, p)| *p)
                .sum::<f32>()
                .clamp(0.0, 1.0),
        }
    }

    fn label(&self, p: f32) -> String {
        if f64::from(p) >= self.threshold {
            LEUKEMIA.to_string()
        } else {
            HEALTHY.to_string()
        }
    }

    fn cell(&self, probs: &[f32], region: Region, nucleus: Option<BBox>) -> CellPrediction {
        let p_leukemia = self.p_leukemia(probs);
        let probabilities = match self.model_config.task {
            Task::Binary => {
                let p = probs.first().copied().unwrap_or(0.0);
                vec![
                    ClassProbability { class: self.class_names[0].clone(), p: 1.0 - p },
                    ClassProbability { class: self.class_names[1].clone(), p },
                ]
            }
            Task::Subtype { .. } => {
                self.class_names.iter().zip(probs).map(|(c, p)| ClassProbability { class: c.clone(), p: *p }).collect()
            }
        };
        let subtype = match self.model_config.task {
            Task::Binary => None,
            Task::Subtype { .. } => probabilities.iter().max_by(|a, b| a.p.total_cmp(&b.p)).map(|c| c.class.clone()),
        };
        CellPrediction {
            region,
            nucleus,
            cell: None,
            flags: Vec::new(),
            masks: None,
            prediction: self.label(p_leukemia),
            p_leukemia,
            subtype,
            probabilities,
        }
    }

    /// Aggregates a field's cells with the module's rule.
    fn aggregate(&self, views: &FieldViews, cells: Vec<CellPrediction>) -> FieldPrediction {
        let decisive = field_call(cells.iter().map(|c| (c.p_leukemia, c.decides()))).map_or(0, |(i, _)| i);
        let (p_leukemia, subtype, probabilities) = match cells.get(decisive) {
            Some(c) => (c.p_leukemia, c.subtype.clone(), c.probabilities.clone()),
            None => (0.0, None, Vec::new()),
        };
        let prediction =
            if views.cell_mode && cells.is_empty() { NO_WHITE_CELL.to_string() } else { self.label(p_leukemia) };
        FieldPrediction {
            scale: views.scale.clone(),
            prediction,
            p_leukemia,
            subtype,
            probabilities,
            decisive_cell: decisive,
            cells,
            nuclei: views.nuclei.clone(),
            width: views.width,
            height: views.height,
            threshold: self.threshold,
        }
    }

    /// Predicts decoded fields: every view of every field goes through batched forward passes
    /// (views of different fields share batches). The fields are one set: those whose own
    /// scale fell back to Assumed are predicted again at the set's pooled scale (see
    /// [`Self::predict_set`]). One result per field, in order; a field whose views cannot be
    /// built gets its error in place.
    pub fn predict_fields(&self, fields: &[&RgbImage]) -> Vec<Result<FieldPrediction, InferError>> {
        let mut out = self.predict_fields_at(fields, &[]);
        let again = self.to_pool(&out);
        if !again.is_empty() {
            let refs: Vec<&RgbImage> = again.iter().map(|(i, _)| fields[*i]).collect();
            let scales: Vec<Option<ScaleEstimate>> = again.iter().map(|(_, s)| Some(s.clone())).collect();
            for ((i, _), r) in again.iter().zip(self.predict_fields_at(&refs, &scales)) {
                out[*i] = r;
            }
        }
        out
    }

    /// The fields of a predicted set to predict again at the set's pooled scale: `(index,
    /// resolved scale)` of those whose own scale fell back to Assumed. The set is split by
    /// image size first (one camera, one size: a dataset source may hold two labs' crops);
    /// a group without a pooled scale ([`ScalePool::pooled`]) keeps its own estimates.
    fn to_pool<E>(&self, results: &[Result<FieldPrediction, E>]) -> Vec<(usize, ScaleEstimate)> {
        let items: Vec<Option<((u32, u32), &ScaleEstimate)>> = results
            .iter()
            .map(|r| r.as_ref().ok().and_then(|fp| fp.scale.as_ref().map(|s| ((fp.width, fp.height), s))))
            .collect();
        ScalePool::regroup(&items, &self.preprocess.cell.scale)
    }

    /// [`Self::predict_fields`] with a known scale for some fields (`cell` mode; `scales[i] =
    /// None` or a shorter list: the field's own estimate).
    pub fn predict_fields_at(
        &self,
        fields: &[&RgbImage],
        scales: &[Option<ScaleEstimate>],
    ) -> Vec<Result<FieldPrediction, InferError>> {
        let views: Vec<Result<FieldViews, InferError>> =
            fields.iter().enumerate().map(|(i, f)| self.views_at(f, scales.get(i).and_then(Option::as_ref))).collect();
        let flat: Vec<&RgbImage> = views.iter().filter_map(|v| v.as_ref().ok()).flat_map(|v| v.images.iter()).collect();
        let probs = match self.view_probabilities(&flat) {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                return fields.iter().map(|_| Err(InferError::Output(msg.clone()))).collect();
            }
        };
        let mut next = probs.into_iter();
        views
            .into_iter()
            .map(|v| {
                let v = v?;
                let mut cells = Vec::with_capacity(v.images.len());
                for (i, region) in v.regions.iter().enumerate() {
                    let p = next.next().ok_or_else(|| InferError::Output("fewer outputs than views".into()))?;
                    let nucleus = v.nucleus_of_view[i].and_then(|n| v.nuclei.get(n).copied());
                    let mut cell = self.cell(&p, *region, nucleus);
                    if let Some(n) = v.nucleus_of_view[i] {
                        if let Some(wc) = v.cells.get(n) {
                            cell.cell = Some(wc.cell);
                            cell.flags = wc.flags.clone();
                        }
                        cell.masks = v.masks.get(n).cloned();
                    }
                    cells.push(cell);
                }
                Ok(self.aggregate(&v, cells))
            })
            .collect()
    }

    /// Predicts a set of `n` fields from one instrument (a dataset source, the files given to
    /// `predict`), `chunk` at a time: `load(i)` decodes field `i` and says its given scale, if
    /// any. Fields whose own scale fell back to Assumed are predicted again at the set's pooled
    /// scale ([`ScalePool`]; loaded twice, never all held in memory). `tick` counts first-pass
    /// fields. One result per field, in order; an error is the reason as text.
    pub fn predict_set(
        &self,
        n: usize,
        chunk: usize,
        load: &dyn Fn(usize) -> Result<(RgbImage, Option<f32>), String>,
        tick: &dyn Fn(u64),
    ) -> Vec<Result<FieldPrediction, String>> {
        let mut out: Vec<Result<FieldPrediction, String>> = Vec::with_capacity(n);
        let ids: Vec<usize> = (0..n).collect();
        for part in ids.chunks(chunk.max(1)) {
            out.extend(self.predict_loaded(part, load, |_| None));
            tick(part.len() as u64);
        }
        let again = self.to_pool(&out);
        for part in again.chunks(chunk.max(1)) {
            let ids: Vec<usize> = part.iter().map(|(i, _)| *i).collect();
            let redone = self.predict_loaded(&ids, load, |k| Some(part[k].1.clone()));
            for (&i, r) in ids.iter().zip(redone) {
                out[i] = r;
            }
        }
        out
    }

    /// Loads and predicts the fields `ids`; `scale(k)` overrides the `k`-th one's scale.
    fn predict_loaded(
        &self,
        ids: &[usize],
        load: &dyn Fn(usize) -> Result<(RgbImage, Option<f32>), String>,
        scale: impl Fn(usize) -> Option<ScaleEstimate>,
    ) -> Vec<Result<FieldPrediction, String>> {
        let loaded: Vec<Result<(RgbImage, Option<f32>), String>> = ids.iter().map(|&i| load(i)).collect();
        let refs: Vec<&RgbImage> = loaded.iter().flatten().map(|(img, _)| img).collect();
        let scales: Vec<Option<ScaleEstimate>> = loaded
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.as_ref().ok().map(|(_, given)| scale(k).or_else(|| given.map(ScaleEstimate::given))))
            .collect();
        let mut predicted = self.predict_fields_at(&refs, &scales).into_iter();
        loaded
            .into_iter()
            .map(|r| match r {
                Ok(_) => predicted
                    .next()
                    .unwrap_or_else(|| Err(InferError::Output("no result".into())))
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why),
            })
            .collect()
    }

    /// Predicts one decoded field.
    pub fn predict_field(&self, field: &RgbImage) -> Result<FieldPrediction, InferError> {
        self.predict_fields(&[field]).pop().unwrap_or_else(|| Err(InferError::Output("no result".into())))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use allscan_preprocess::{RoiConfig, RoiViews};
    use densenet_burn::{DenseNetConfig, DenseNetVariant};

    /// A tiny random binary classifier for fast tests.
    pub(crate) fn tiny_predictor(task: Task, preprocess: PreprocessConfig) -> Predictor {
        let device = Device::flex();
        let mut config = ClassifierConfig::binary(DenseNetVariant::DenseNet121)
            .with_custom_backbone(DenseNetConfig::custom(4, vec![2, 2], 8, None));
        config.task = task;
        config.hidden = 8;
        let model = config.init(&device).unwrap();
        let (names, leuk): (Vec<String>, Vec<String>) = match task {
            Task::Binary => (vec!["healthy".into(), "leukemia".into()], vec!["leukemia".into()]),
            Task::Subtype { num_classes } => {
                let names: Vec<String> = (0..num_classes).map(|i| format!("c{i}")).collect();
                (names.clone(), names[1..].to_vec())
            }
        };
        Predictor::new(model, config, preprocess, names, leuk, 0.5).unwrap()
    }

    fn small_cfg(views: RoiViews) -> PreprocessConfig {
        PreprocessConfig { input_size: 64, roi: RoiConfig { views, ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn binary_field_prediction_has_cells_and_a_consistent_label() {
        let p = tiny_predictor(Task::Binary, small_cfg(RoiViews::All));
        let mut rng = crate::synth::field_rng(1, 2, 0);
        let field = crate::synth::render_field(2, 128, &mut rng);
        let r = p.predict_field(&field.image).unwrap();
        assert!(!r.cells.is_empty());
        assert!(!r.nuclei.is_empty(), "a synthetic field has a nucleus");
        let max = r.cells.iter().map(|c| c.p_leukemia).fold(0.0f32, f32::max);
        assert_eq!(r.p_leukemia, max);
        assert_eq!(r.prediction == LEUKEMIA, f64::from(r.p_leukemia) >= 0.5);
        assert_eq!(r.probabilities.len(), 2);
        assert!((r.probabilities[0].p + r.probabilities[1].p - 1.0).abs() < 1e-5);
    }

    #[test]
    fn batching_does_not_change_results_and_threshold_moves_the_label() {
        let p = tiny_predictor(Task::Subtype { num_classes: 4 }, small_cfg(RoiViews::Largest));
        let fields: Vec<RgbImage> =
            (0..3).map(|i| crate::synth::render_field(i, 96, &mut crate::synth::field_rng(3, i, i)).image).collect();
        let refs: Vec<&RgbImage> = fields.iter().collect();
        let a: Vec<_> = p.predict_fields(&refs).into_iter().map(Result::unwrap).collect();
        let p = p.with_batch_size(1);
        let b: Vec<_> = p.predict_fields(&refs).into_iter().map(Result::unwrap).collect();
        for (x, y) in a.iter().zip(&b) {
            assert!((x.p_leukemia - y.p_leukemia).abs() < 1e-4);
            assert!(x.subtype.is_some());
            let s: f32 = x.probabilities.iter().map(|c| c.p).sum();
            assert!((s - 1.0).abs() < 1e-4);
        }
        let p0 = p.with_threshold(0.0);
        assert!(p0.predict_fields(&refs).into_iter().all(|r| r.unwrap().prediction == LEUKEMIA));
    }

    #[test]
    fn random_bundles_load_into_predictors() {
        use crate::config::TaskKind;
        for task in [TaskKind::Binary, TaskKind::Subtype] {
            let dir = tempfile::tempdir().unwrap();
            let b = crate::bundle::testing::write_random_bundle(dir.path(), task).unwrap();
            let p = Predictor::from_bundle(&crate::bundle::RunBundle::open(&b.dir).unwrap(), &Device::flex()).unwrap();
            assert_eq!(p.is_subtype(), task == TaskKind::Subtype);
            let f = crate::synth::render_field(1, 96, &mut crate::synth::field_rng(0, 1, 0)).image;
            assert!(p.predict_field(&f).unwrap().cells.len() <= 4);
        }
    }

    #[test]
    fn adapt_reestimates_batchnorm_on_the_images_to_predict() {
        use crate::config::TaskKind;
        let dir = tempfile::tempdir().unwrap();
        let b = crate::bundle::testing::write_random_bundle(dir.path(), TaskKind::Binary).unwrap();
        let bundle = crate::bundle::RunBundle::open(&b.dir).unwrap();
        let p = Predictor::from_bundle(&bundle, &Device::flex()).unwrap();
        let fields: Vec<RgbImage> =
            (0..4).map(|i| crate::synth::render_field(i, 96, &mut crate::synth::field_rng(5, i, i)).image).collect();
        let refs: Vec<&RgbImage> = fields.iter().collect();
        let score = |p: &Predictor| -> Vec<f32> {
            p.predict_fields(&refs).into_iter().map(|r| r.unwrap().p_leukemia).collect()
        };
        let before = score(&p);
        let (adapted, views) = p.adapt(&bundle, &fields).unwrap();
        assert!(views >= fields.len(), "{views} views of {} fields", fields.len());
        let after = score(&adapted);
        assert!(
            before.iter().zip(&after).any(|(a, b)| (a - b).abs() > 1e-4),
            "the fresh model's unit statistics were kept: {before:?} vs {after:?}"
        );
        // Adapting again on the same images is the same estimate.
        let (again, _) = adapted.adapt(&bundle, &fields).unwrap();
        for (a, b) in after.iter().zip(score(&again)) {
            assert!((a - b).abs() < 1e-4);
        }
        let p = Predictor::from_bundle(&bundle, &Device::flex()).unwrap();
        assert!(matches!(p.adapt(&bundle, &[]), Err(InferError::InvalidConfig(_))));
    }

    #[test]
    fn wrong_class_names_are_rejected() {
        let device = Device::flex();
        let config = ClassifierConfig::binary(DenseNetVariant::DenseNet121)
            .with_custom_backbone(DenseNetConfig::custom(4, vec![2], 8, None));
        let model = config.init(&device).unwrap();
        let r = Predictor::new(model, config, PreprocessConfig::default(), vec!["a".into()], vec![], 0.5);
        assert!(matches!(r, Err(InferError::InvalidConfig(_))));
    }

    #[test]
    fn no_nucleus_without_fallback_is_an_error() {
        let mut cfg = small_cfg(RoiViews::Largest);
        cfg.roi.fallback_to_field = false;
        let p = tiny_predictor(Task::Binary, cfg);
        let blank = RgbImage::from_pixel(80, 80, image::Rgb([235, 230, 240]));
        assert!(matches!(p.predict_field(&blank), Err(InferError::NoNucleus { .. })));
    }
}
