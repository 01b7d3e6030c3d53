//! The inventory (`inventory.toml`): model, loading and validation.

mod load;
pub mod model;
mod sources;

pub use load::{load, parse, valid_name};
pub use model::*;
