//! Explanations (stub).
