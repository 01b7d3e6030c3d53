//! Inventory × playbooks × journal → per-node plans. Pure: no SSH, no clock, no terminal.

use std::time::Duration;

use crate::event::{NodeOutline, SkipReason, TaskOutline};

/// What a planned task does on the node, fully rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run this shell script.
    Run { command: String },
    /// Put these bytes at `dest` with `mode` (and `owner`).
    Copy {
        dest: String,
        content: Vec<u8>,
        mode: u32,
        owner: Option<String>,
    },
    /// Run `until` every `interval` until it exits 0.
    Wait { until: String, interval: Duration },
}

/// One file a `copy` task puts on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    /// Absolute destination path on the node.
    pub dest: String,
    /// The (rendered) bytes.
    pub content: Vec<u8>,
    /// File mode, e.g. 0o644; folders on the way are created 0755.
    pub mode: u32,
}

/// What the plan decided for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Run,
    Skip(SkipReason),
}

/// One task of one node, rendered for that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTask {
    pub stage: String,
    pub task: String,
    pub action: Action,
    /// Run via sudo.
    pub become_: bool,
    /// Rendered `unless` guard.
    pub unless: Option<String>,
    pub retries: u32,
    pub delay: Duration,
    pub timeout: Option<Duration>,
    /// Rendered environment for the command, in name order.
    pub env: Vec<(String, String)>,
    /// sha256 (hex) of the rendered content: the task's identity for resume, with (node, stage, task).
    pub fingerprint: String,
    pub decision: Decision,
}

/// One node's ordered, rendered tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub node: String,
    pub cluster: Option<String>,
    /// `host:port`.
    pub address: String,
    pub tasks: Vec<PlannedTask>,
}

impl NodePlan {
    /// The plan as the frontends show it.
    pub fn outline(&self) -> NodeOutline {
        NodeOutline {
            node: self.node.clone(),
            cluster: self.cluster.clone(),
            address: self.address.clone(),
            tasks: self
                .tasks
                .iter()
                .map(|t| TaskOutline {
                    stage: t.stage.clone(),
                    task: t.task.clone(),
                    skip: match t.decision {
                        Decision::Run => None,
                        Decision::Skip(r) => Some(r),
                    },
                })
                .collect(),
        }
    }
}

/// Which part of the work the operator chose (`--limit`, `--only`, `--from`, `--fresh`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Node or cluster names; empty = all.
    pub limit: Vec<String>,
    /// Stage names; empty = all.
    pub only: Vec<String>,
    /// Start at this stage (inclusive).
    pub from: Option<String>,
    /// Ignore remembered progress.
    pub fresh: bool,
}
