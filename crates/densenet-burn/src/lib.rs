//! DenseNet-121/169/201 in Burn 0.22, structured exactly like torchvision's
//! (Huang et al., "Densely Connected Convolutional Networks", arXiv:1608.06993), with
//! torchvision weight import.
//!
//! Input: images `[B, 3, H, W]`. Output: logits, pooled features or the final feature map
//! (`[B, 1920, 7, 7]` for DenseNet201 at 224x224). Knows nothing about leukemia.
//!
//! ```no_run
//! use burn::tensor::{Device, Tensor};
//! let device = Device::flex();
//! let config = densenet_burn::DenseNetVariant::DenseNet201.config().features_only();
//! let (model, report) = densenet_burn::weights::load_torchvision(
//!     &config, std::path::Path::new("densenet201-c1103571.pth"), &device).unwrap();
//! let fmap = model.forward_features(Tensor::zeros([1, 3, 224, 224], &device)); // [1, 1920, 7, 7]
//! ```

// DenseNetError::Incompatible carries every offending key and shape so the message can list
// them; it is built at most once per failed load, so its size (> 128 bytes) costs nothing
// that boxing it would save, and boxing would make matching on its fields clumsier.
#![allow(clippy::result_large_err)]

pub mod bf16;
mod block;
mod bn;
mod config;
mod conv;
mod densenet;
mod error;
mod fast;
pub mod fold;
mod pool;
pub mod weights;

pub use block::{ChannelAffine, DenseBlock, DenseLayer, Transition};
pub use config::{DenseNetConfig, DenseNetVariant};
pub use densenet::{
    densenet121, densenet121_features, densenet169, densenet169_features, densenet201, densenet201_features, DenseNet,
    Features,
};
pub use error::{DenseNetError, ShapeMismatch};
pub use fast::InferencePlan;
