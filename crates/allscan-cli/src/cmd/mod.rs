//! One module per subcommand.

pub mod cv;
pub mod data;
pub mod demo;
pub mod demo_data;
pub mod eval;
pub mod explain;
pub mod predict;
pub mod probe;
pub mod report;
pub mod segment;
pub mod serve;
pub mod train;
pub mod weights;
