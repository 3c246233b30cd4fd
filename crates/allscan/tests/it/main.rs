//! Integration tests, one binary (each test binary links the whole stack: one link, one
//! copy on disk).

mod data_real;
mod data_split;
mod eval_metrics;
mod eval_run;
mod layers;
mod sources;
