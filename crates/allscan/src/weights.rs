//! Pretrained weights: cache dir, download, import.
