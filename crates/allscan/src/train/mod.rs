//! Training (stub).
