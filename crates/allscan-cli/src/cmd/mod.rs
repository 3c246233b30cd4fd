//! One module per subcommand.

pub mod data;
pub mod demo;
pub mod demo_data;
pub mod segment;
pub mod weights;
