//! Dataset layer: discovery, index, splits.
