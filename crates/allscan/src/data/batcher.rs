//! Batching (stub).
