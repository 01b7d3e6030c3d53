//! The inventory (`inventory.toml`): model, loading and validation.

pub mod model;

pub use model::*;
