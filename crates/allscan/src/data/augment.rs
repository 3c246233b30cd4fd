//! Augmentation (stub).
