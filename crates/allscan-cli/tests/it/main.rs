//! Integration tests, one binary (each test binary links the whole stack: one link, one
//! copy on disk).

mod common;
mod csv_quoting;
mod data_bad_input;
mod demo_data;
mod eval;
mod explain;
mod predict;
mod report;
mod scale_pool;
mod seed_code;
mod segment;
mod serve;
mod train;
mod weights;
