//! Model-input normalisation: RGB crop -> planar `[3, H, W]` f32, per-channel mean/std.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Per-channel `(x / 255 - mean) / std`, RGB order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel means on the 0..1 scale.
    pub mean: [f32; 3],
    /// Channel standard deviations on the 0..1 scale (must be non-zero).
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics, as torchvision's pretrained DenseNets expect
    /// (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225).
    pub const IMAGENET: Normalization = Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
}

impl Default for Normalization {
    /// ImageNet: the pretrained backbone's features assume it.
    fn default() -> Self {
        Self::IMAGENET
    }
}

/// RGB image -> planar `[3, H, W]` values `(x / 255 - mean) / std`, the layout Burn and
/// PyTorch tensors use. A zero std is treated as 1 (never divides by zero).
pub fn to_chw_normalized(img: &RgbImage, norm: &Normalization) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w as usize) * (h as usize);
    let mut out = vec![0f32; 3 * plane];
    let scale: [f32; 3] = std::array::from_fn(|c| {
        let s = if norm.std[c] == 0.0 { 1.0 } else { norm.std[c] };
        1.0 / (255.0 * s)
    });
    let offset: [f32; 3] = std::array::from_fn(|c| {
        let s = if norm.std[c] == 0.0 { 1.0 } else { norm.std[c] };
        norm.mean[c] / s
    });
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c] as f32 * scale[c] - offset[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_layout_and_values() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        img.put_pixel(1, 0, image::Rgb([0, 255, 128]));
        let v = to_chw_normalized(&img, &Normalization::IMAGENET);
        assert_eq!(v.len(), 6);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
        assert!(close(v[0], (1.0 - 0.485) / 0.229)); // R plane, pixel 0
        assert!(close(v[1], (0.0 - 0.485) / 0.229)); // R plane, pixel 1
        assert!(close(v[3], (1.0 - 0.456) / 0.224)); // G plane, pixel 1
        assert!(close(v[5], (128.0 / 255.0 - 0.406) / 0.225)); // B plane, pixel 1
    }
}
