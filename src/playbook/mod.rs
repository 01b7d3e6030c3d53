//! Playbooks (`playbooks/*.yaml`): model, loading, validation and templating.

pub mod model;

pub use model::*;
