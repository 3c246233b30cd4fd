//! Run bundle (stub).
