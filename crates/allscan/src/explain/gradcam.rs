//! Explain stage, Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391) on the last dense block.
//!
//! Input: a classifier and normalised views `[B, 3, H, W]`. Output: one heat map per view,
//! `H x W`, normalised to `[0, 1]`.
//!
//! Steps: the feature map `A = forward_features(x)` (`[B, C, h, w]`, after `norm5` + ReLU) is
//! computed on the inference model, then re-entered as an autodiff leaf that requires its
//! gradient; the head runs on it and the class score `y` is back-propagated to `A` only (the
//! backbone's parameters need no gradient, so no autodiff copy of the model is made).
//! Channel weights `a_c = mean_ij dy/dA_cij`; map `relu(sum_c a_c A_c)`, bilinearly upsampled
//! to the input and divided by its maximum.
//!
//! A model that averages its logits over the 8 flips and rotations ([`TestViews::Dihedral`])
//! is explained the same way: `y` is the averaged score of the class the averaged logits
//! predict, each view's map `sum_c a_c A_c` is turned back to the input's orientation, and the
//! maps are averaged before the ReLU. The map of a flipped field is then the flipped map.

use burn::tensor::{Tensor, TensorData};

use crate::model::{dihedral_view, undo_dihedral_view, LeukemiaClassifier, Task, TestViews};

/// Errors of the explanation stage.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// Burn returned no gradient or data in an unexpected form.
    #[error("Grad-CAM failed: {0}")]
    Backend(String),
}

/// Which class score a Grad-CAM map explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CamTarget {
    /// The predicted class of each view (binary: the leukemia logit when it is positive, its
    /// negation, i.e. the evidence for healthy, otherwise).
    Predicted,
    /// Binary: the leukemia logit whatever the prediction; subtype: this class index.
    Class(usize),
}

/// A single-channel map over an image, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` values, row-major.
    pub values: Vec<f32>,
}

impl Heatmap {
    /// An all-zero map.
    pub fn zeros(width: u32, height: u32) -> Self {
        Self { width, height, values: vec![0.0; width as usize * height as usize] }
    }

    /// Value at `(x, y)` (0 outside).
    pub fn get(&self, x: u32, y: u32) -> f32 {
        if x >= self.width || y >= self.height {
            return 0.0;
        }
        self.values[y as usize * self.width as usize + x as usize]
    }

    /// Bilinear sample at continuous pixel-centre coordinates (edges clamped).
    pub fn sample(&self, fx: f32, fy: f32) -> f32 {
        if self.width == 0 || self.height == 0 {
            return 0.0;
        }
        let fx = (fx - 0.5).clamp(0.0, (self.width - 1) as f32);
        let fy = (fy - 0.5).clamp(0.0, (self.height - 1) as f32);
        let (x0, y0) = (fx.floor() as u32, fy.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
        let top = self.get(x0, y0) * (1.0 - tx) + self.get(x1, y0) * tx;
        let bottom = self.get(x0, y1) * (1.0 - tx) + self.get(x1, y1) * tx;
        top * (1.0 - ty) + bottom * ty
    }

    /// Bilinear resampling to `width x height` (half-pixel centres, as `align_corners=False`).
    pub fn resized(&self, width: u32, height: u32) -> Self {
        let sx = self.width as f32 / width.max(1) as f32;
        let sy = self.height as f32 / height.max(1) as f32;
        let mut values = Vec::with_capacity(width as usize * height as usize);
        for y in 0..height {
            for x in 0..width {
                values.push(self.sample((x as f32 + 0.5) * sx, (y as f32 + 0.5) * sy));
            }
        }
        Self { width, height, values }
    }

    /// Divides by the maximum so the hottest pixel is 1 (an all-zero map stays zero).
    pub fn normalized(mut self) -> Self {
        let max = self.values.iter().copied().fold(0.0f32, f32::max);
        if max > 0.0 && max.is_finite() {
            for v in &mut self.values {
                *v = (*v / max).clamp(0.0, 1.0);
            }
        } else {
            self.values.iter_mut().for_each(|v| *v = 0.0);
        }
        self
    }

    /// Share of the total heat inside `[x0, y0, x1, y1)`.
    pub fn mass_inside(&self, bbox: [u32; 4]) -> f32 {
        let total: f32 = self.values.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        let mut inside = 0.0;
        for y in bbox[1]..bbox[3].min(self.height) {
            for x in bbox[0]..bbox[2].min(self.width) {
                inside += self.get(x, y);
            }
        }
        inside / total
    }

    /// Share of the hot region (pixels at or above `level`, e.g. 0.5 of a normalised map) that
    /// lies inside `[x0, y0, x1, y1)`: what a reader of the overlay sees as "where the heat
    /// is". `None` when no pixel reaches `level`.
    pub fn hot_share_inside(&self, bbox: [u32; 4], level: f32) -> Option<f32> {
        let (mut hot, mut inside) = (0usize, 0usize);
        for y in 0..self.height {
            for x in 0..self.width {
                if self.get(x, y) >= level {
                    hot += 1;
                    if x >= bbox[0] && x < bbox[2] && y >= bbox[1] && y < bbox[3] {
                        inside += 1;
                    }
                }
            }
        }
        (hot > 0).then(|| inside as f32 / hot as f32)
    }

    /// Position `(x, y)` of the hottest pixel (the first in row-major order on ties).
    pub fn argmax(&self) -> (u32, u32) {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (i, &v) in self.values.iter().enumerate() {
            if v > best.1 {
                best = (i, v);
            }
        }
        let w = self.width.max(1) as usize;
        ((best.0 % w) as u32, (best.0 / w) as u32)
    }
}

/// Grad-CAM maps of `input` (`[B, 3, H, W]`, normalised) for `target`, one per input, at the
/// input's size, for a model that averages `views` of each input. `model` should be an
/// inference copy (eval mode), on a non-autodiff device.
pub fn grad_cam(
    model: &LeukemiaClassifier,
    task: Task,
    input: Tensor<4>,
    target: CamTarget,
    views: TestViews,
) -> Result<Vec<Heatmap>, ExplainError> {
    let [b, _, in_h, in_w] = input.dims();
    let symmetries: Vec<usize> = match views {
        TestViews::Single => vec![0],
        TestViews::Dihedral => (0..8).collect(),
    };
    let n = symmetries.len();
    // Every view of every input, view-major: rows t*B..(t+1)*B are symmetry t.
    let x = if n == 1 {
        input
    } else {
        Tensor::cat(symmetries.iter().map(|&v| dihedral_view(input.clone(), v)).collect(), 0)
    };
    let features = model.forward_features(x).without_autodiff(); // [n*B, C, h, w]
    let [_, c, h, w] = features.dims();
    let leaf = features.clone().autodiff().require_grad();
    let logits = model.forward_head(leaf.clone()); // [n*B, K]
    let k = logits.dims()[1];
    let values = read(logits.clone().without_autodiff().into_data())?;
    // Per input, the explained score of the averaged logits: +-1/n on one logit of each view.
    let mut select = vec![0f32; n * b * k];
    for i in 0..b {
        let row: Vec<f32> =
            (0..k).map(|j| (0..n).map(|t| values[(t * b + i) * k + j]).sum::<f32>() / n as f32).collect();
        let (idx, sign) = match (task, target) {
            (Task::Binary, CamTarget::Predicted) => (0, if row[0] >= 0.0 { 1.0 } else { -1.0 }),
            (Task::Binary, CamTarget::Class(_)) => (0, 1.0),
            (Task::Subtype { .. }, CamTarget::Predicted) => {
                (row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(j, _)| j), 1.0)
            }
            (Task::Subtype { .. }, CamTarget::Class(j)) => (j.min(k - 1), 1.0),
        };
        for t in 0..n {
            select[(t * b + i) * k + idx] = sign / n as f32;
        }
    }
    let device = logits.device();
    let select = Tensor::<2>::from_data(TensorData::new(select, [n * b, k]), &device);
    let score = (logits * select).sum();
    let grads = score.backward();
    let grad = leaf.grad(&grads).ok_or_else(|| ExplainError::Backend("no gradient reached the feature map".into()))?;
    let weights = grad.mean_dims(&[2, 3]); // [n*B, C, 1, 1]
    let cam = (features * weights.without_autodiff()).sum_dim(1); // [n*B, 1, h, w]
                                                                  // Each view's map back in the input's orientation, averaged over the views.
    let view = |t: usize| undo_dihedral_view(cam.clone().narrow(0, t * b, b), symmetries[t]);
    let cam = (1..n).fold(view(0), |sum, t| sum + view(t)).div_scalar(n as f32); // [B, 1, h, w]
    let cam = read(cam.into_data())?;
    let plane = h * w;
    debug_assert_eq!(cam.len(), b * plane, "channels {c}");
    Ok((0..b)
        .map(|i| {
            let small = Heatmap {
                width: w as u32,
                height: h as u32,
                values: cam[i * plane..(i + 1) * plane].iter().map(|v| v.max(0.0)).collect(),
            };
            small.resized(in_w as u32, in_h as u32).normalized()
        })
        .collect())
}

fn read(data: TensorData) -> Result<Vec<f32>, ExplainError> {
    data.try_to_vec::<f32>().map_err(|e| ExplainError::Backend(format!("{e:?}")))
}
