//! Inference (stub).
