//! The predictor: a loaded model and the bundle's preprocessing -> views of a field ->
//! batched forward passes -> per-cell calls -> the field's call ([`crate::decision`]).

use allscan_preprocess::{prepare_views, to_chw_normalized, BBox, PreprocessConfig, PreprocessError, ScaleEstimate};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use super::*;
use crate::decision::{argmax, field_call, Decision};
use crate::model::{probabilities, ClassifierConfig, LeukemiaClassifier, Task};

impl Predictor {
    /// A predictor on an already loaded model, its preprocessing and how its outputs are
    /// called (`decision`, checked by [`Decision::new`]; its head must be the model's). The
    /// model is turned into its eval-mode copy (`valid()`: BatchNorm on running statistics, no
    /// autodiff); pass a BatchNorm-folded model (`for_inference()`) for speed.
    pub fn new(
        model: LeukemiaClassifier,
        model_config: ClassifierConfig,
        preprocess: PreprocessConfig,
        decision: Decision,
    ) -> Result<Self, InferError> {
        if decision.task != model_config.task {
            return Err(InferError::InvalidConfig(format!(
                "the decision is for a {:?} head but the model has a {:?} head",
                decision.task, model_config.task
            )));
        }
        if preprocess.input_size == 0 {
            return Err(InferError::InvalidConfig("input_size must be > 0".into()));
        }
        let device = model.devices().into_iter().next().unwrap_or_else(Device::flex);
        Ok(Self { model: model.valid(), preprocess, decision, model_config, device, batch_size: DEFAULT_BATCH })
    }

    /// The predictor of a trained run: its model (eval mode, BatchNorm folded), preprocessing,
    /// classes and decision threshold.
    pub fn from_bundle(bundle: &crate::bundle::RunBundle, device: &Device) -> Result<Self, InferError> {
        let model = bundle.load_model(device)?;
        Self::new(model, bundle.config.model.clone(), bundle.preprocess().clone(), bundle.metadata.decision())
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
        self.decision.threshold = threshold.clamp(0.0, 1.0);
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

    /// How outputs are called: classes, leukemia classes, threshold.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Class names in output order.
    pub fn class_names(&self) -> &[String] {
        &self.decision.class_names
    }

    /// Classes counted as leukemia.
    pub fn leukemia_classes(&self) -> &[String] {
        &self.decision.leukemia_classes
    }

    /// The decision threshold on `p_leukemia`.
    pub fn threshold(&self) -> f64 {
        self.decision.threshold
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
        // In field pixels (a cell view's square may be a rectangle there: non-square pixels).
        let regions = (0..v.regions.len())
            .map(|i| v.field_region(i).map(|(x, y, width, height)| Region { x, y, width, height }).unwrap_or(whole))
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

    fn cell(&self, probs: &[f32], region: Region, nucleus: Option<BBox>) -> CellPrediction {
        let d = &self.decision;
        let p_leukemia = d.p_leukemia(probs);
        let probabilities = match d.task {
            Task::Binary => {
                let p = probs.first().copied().unwrap_or(0.0);
                vec![
                    ClassProbability { class: d.class_names[0].clone(), p: 1.0 - p },
                    ClassProbability { class: d.class_names[1].clone(), p },
                ]
            }
            Task::Subtype { .. } => {
                d.class_names.iter().zip(probs).map(|(c, p)| ClassProbability { class: c.clone(), p: *p }).collect()
            }
        };
        let subtype = match d.task {
            Task::Binary => None,
            // `probs` has one value per class (`view_probabilities` checks the width).
            Task::Subtype { .. } => d.class_names.get(argmax(probs)).cloned(),
        };
        CellPrediction {
            region,
            nucleus,
            cell: None,
            flags: Vec::new(),
            masks: None,
            prediction: d.label(p_leukemia).to_string(),
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
        let prediction = if views.cell_mode && cells.is_empty() {
            NO_WHITE_CELL.to_string()
        } else {
            self.decision.label(p_leukemia).to_string()
        };
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
            threshold: self.decision.threshold,
        }
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

    /// Predicts one decoded field.
    pub fn predict_field(&self, field: &RgbImage) -> Result<FieldPrediction, InferError> {
        self.predict_fields(&[field]).pop().unwrap_or_else(|| Err(InferError::Output("no result".into())))
    }
}
