//! Integration tests, one binary (each test binary links the whole stack: one link, one
//! copy on disk).

mod common;
mod explain;
mod hardening;
mod load;
mod pixel_budget;
mod router;
mod slide;
