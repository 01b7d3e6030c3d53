//! The inventory (`inventory.toml`): model, loading and validation.

mod load;
pub mod model;
mod nodes;
pub mod sources;
mod ssh;

pub use load::{load, parse, valid_name};
pub use model::*;

/// The name under `[secrets]` (and `{{ secrets.NAME }}`) of a registry mirror's username or
/// password: `registry_<host with . : - as _>_<what>`.
pub fn registry_secret(registry: &str, what: &str) -> String {
    let host: String = registry
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("registry_{host}_{what}")
}
