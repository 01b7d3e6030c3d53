//! The inventory (`inventory.toml`): model, loading and validation.

mod load;
pub mod model;

pub use load::{load, parse};
pub use model::*;
