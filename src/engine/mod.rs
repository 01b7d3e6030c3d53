//! The engine: runs each node's plan over its own SSH connection and publishes events.

/// What a frontend may ask of a running engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Run a failed node again from its failed task (the others keep running).
    Retry { node: String },
    /// Stop scheduling, cancel running commands, record what finished.
    Cancel,
}
