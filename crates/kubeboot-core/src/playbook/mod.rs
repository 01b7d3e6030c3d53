//! Playbooks (`playbooks/*.yaml`): model, loading, validation and templating.

mod load;
pub mod model;
pub mod template;

pub use load::{load, parse};
pub use model::*;
