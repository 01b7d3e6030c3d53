//! Playbooks (`playbooks/*.yaml`): model, loading, validation and templating.

mod load;
pub mod model;
mod yaml;

pub use load::load;
pub use model::*;
