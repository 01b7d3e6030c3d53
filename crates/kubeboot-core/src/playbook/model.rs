//! Playbooks as kubeboot uses them after loading and validation.
//!
//! One file is one [`Stage`]; stages run in file-name order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::outputs::Capture;
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

/// `register:` — keep what a task printed under a name, for later tasks of this node (`{{ outputs.NAME }}`) and
/// of other nodes (`{{ nodes['NODE'].outputs.NAME }}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterDef {
    pub name: String,
    /// Masked like the inventory's secrets, never journaled, allowed only where secrets are (`env`, file content).
    pub secret: bool,
    pub capture: Capture,
    pub location: Location,
}

/// Which nodes a `wait_for` waits for, seen from the waiting node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitNodes {
    /// This node by name.
    Named(String),
    /// The first control-plane node of the waiting node's cluster.
    FirstControlPlane,
    /// Every other control-plane node of the cluster.
    ControlPlanes,
    /// Every other node of the cluster.
    Cluster,
}

/// `wait_for:` — do not start until a task has finished on other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitForDef {
    pub nodes: WaitNodes,
    /// `stage/task`, or a task of the same stage.
    pub task: String,
    pub location: Location,
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
    /// Keep what it printed under a name.
    pub register: Option<RegisterDef>,
    /// Tasks on other nodes that must have finished first.
    pub wait_for: Vec<WaitForDef>,
    /// The earlier tasks whose `changed` makes this one run again (`name` in the same stage, `stage/name` in an
    /// earlier one). None: every earlier task of its stage (the stage rule); an empty list: none.
    pub after: Option<Vec<String>>,
    /// False (`changed_when: false`): a read-only task (a check) whose success is `ok`, never `changed`, so it
    /// never makes later tasks run again. Default true: the kind decides (a `run` reports `changed`).
    pub changed_when: bool,
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
    /// Tasks on other nodes that must have finished before this stage starts on a node.
    pub wait_for: Vec<WaitForDef>,
    /// One node of a cluster at a time runs this stage.
    pub serial: bool,
    /// Only the first control-plane node of each cluster runs this stage (cluster-wide work: manifests).
    pub once_per_cluster: bool,
    pub tasks: Vec<TaskDef>,
    pub location: Location,
    /// Where the `hosts` value is, for unknown-selector messages.
    pub hosts_location: Location,
}

/// A task's identity in the playbooks: (stage, task).
pub type TaskKey = (String, String);

/// All stages of a playbook folder, in run order, with the assets folder they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Playbooks {
    pub dir: PathBuf,
    /// `assets/` next to the playbooks folder (or as configured).
    pub assets_dir: PathBuf,
    pub stages: Vec<Stage>,
}

impl Playbooks {
    /// What a name in the `after` list of task `task` of stage `stage` (indexes) means: an earlier task of the
    /// same stage by its name, or `stage/name` of an earlier stage. None when it names nothing earlier.
    pub fn resolve_after(&self, stage: usize, task: usize, name: &str) -> Option<TaskKey> {
        resolve_after(&self.stages, stage, task, name)
    }
}

/// [`Playbooks::resolve_after`] over a list of stages in run order.
pub fn resolve_after(stages: &[Stage], stage: usize, task: usize, name: &str) -> Option<TaskKey> {
    let own = stages.get(stage)?;
    if own.tasks[..task.min(own.tasks.len())].iter().any(|t| t.name == name) {
        return Some((own.name.clone(), name.to_string()));
    }
    // Stage names may not hold `/` in practice, task names may: the first `/` ends the stage.
    let (stage_name, task_name) = name.split_once('/')?;
    stages[..stage]
        .iter()
        .find(|s| s.name == stage_name.trim())
        .filter(|s| s.tasks.iter().any(|t| t.name == task_name.trim()))
        .map(|s| (s.name.clone(), task_name.trim().to_string()))
}
