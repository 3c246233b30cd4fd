//! Stage 2 of the pipeline: a raw smear field (any image file) -> decoded RGB, HSV masks,
//! nucleus masks, ROI crops and normalised tensors as plain `Vec<f32>`.
//!
//! No Burn here: this crate builds in seconds and is testable alone.

pub mod decode;

pub use decode::{decode_file, decode_bytes, DecodeError, DecodeLimits};
