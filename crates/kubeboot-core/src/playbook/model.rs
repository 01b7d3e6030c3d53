//! Playbooks as kubeboot uses them after loading and validation.
//!
//! One file is one [`Stage`]; stages run in file-name order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::spanned::Location;
pub use crate::task::{ActionDef, CopyDef, HttpDef, S3BucketsDef, WaitDef};

/// Which nodes a stage runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    /// Every node.
    All,
    /// Each entry: `central`, `edge`, a cluster name or a node name.
    Select(Vec<String>),
}

/// One task as written in a playbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDef {
    pub name: String,
    pub action: ActionDef,
    /// Skip when this command exits 0 (a template).
    pub unless: Option<String>,
    /// Run only when this expression is true (`{{ ... }}` or a bare expression).
    pub when: Option<String>,
    /// Extra attempts after a failure. Default 0.
    pub retries: u32,
    /// Pause between attempts. Default 5s.
    pub delay: Duration,
    /// Per-attempt limit; for `wait`, the limit of the whole wait. Default: none for run/copy, 5m for wait.
    pub timeout: Option<Duration>,
    /// Overrides the stage's `become`.
    pub become_: Option<bool>,
    /// Environment variables for the command (values are templates; secrets belong here, not in `run`).
    pub env: BTreeMap<String, String>,
    pub location: Location,
    /// Where each templated field's value starts (`run`, `unless`, `when`, `copy.dest`, `env.NAME`, ...),
    /// so template problems point at the field.
    pub fields: BTreeMap<String, Location>,
}

/// One playbook file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    pub hosts: Hosts,
    /// Run tasks via sudo. Default false.
    pub become_: bool,
    /// Stage-level variables.
    pub vars: BTreeMap<String, serde_json::Value>,
    pub tasks: Vec<TaskDef>,
    pub location: Location,
    /// Where the `hosts` value is, for unknown-selector messages.
    pub hosts_location: Location,
}

/// All stages of a playbook folder, in run order, with the assets folder they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Playbooks {
    pub dir: PathBuf,
    /// `assets/` next to the playbooks folder (or as configured).
    pub assets_dir: PathBuf,
    pub stages: Vec<Stage>,
}
