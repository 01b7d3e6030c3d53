//! The one vocabulary between the engine and everything else.
//!
//! The engine only produces [`Event`]s; the journal, the log files, the TUI and the
//! headless printer only consume them. `--output json` prints them as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::facts::Facts;

/// Where events go: the engine never waits for whoever reads them.
pub type EventSink = tokio::sync::mpsc::UnboundedSender<Event>;

/// Which output stream of a remote command a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Ran and found nothing to change (a `copy` whose file was already right, a `wait` that held).
    Ok,
    /// Ran and changed the node.
    Changed,
    /// Not run; see [`SkipReason`].
    Skipped,
    /// Failed after all its retries.
    Failed,
}

impl TaskStatus {
    /// True for the outcomes a resume may skip.
    pub fn is_success(self) -> bool {
        !matches!(self, TaskStatus::Failed)
    }
}

/// Why a task was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Finished in an earlier run with the same rendered content (from the journal).
    Done,
    /// Its `unless` guard exited 0: the node is already in the wanted state.
    Guard,
    /// Its `when` condition was false for this node.
    Condition,
}

impl SkipReason {
    /// The word used in output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Done => "done",
            SkipReason::Guard => "guard",
            SkipReason::Condition => "condition",
        }
    }
}

/// What the journal keeps of a task besides its fingerprint, for the next run's resume decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Keyed digest (HMAC-SHA256) of the secret values the task uses; None when it uses none.
    pub secrets: Option<String>,
    /// Short digests of the task's parts (`command`, `guard`, `env`, `file <dest>`, ...), to say what changed.
    pub parts: BTreeMap<String, String>,
}

/// How a node's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Every selected task finished (ok, changed or skipped).
    Ok,
    /// A task failed, or the node could not be reached.
    Failed,
    /// The run was interrupted before the node finished.
    Cancelled,
    /// A node it waits for failed (or a task it needs from that node did): it stopped without running on.
    Blocked,
}

/// One task as the frontends show it before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutline {
    /// The stage (playbook) the task belongs to.
    pub stage: String,
    /// The task's name.
    pub task: String,
    /// Set when the plan already knows the task will be skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<SkipReason>,
}

/// One node's plan as the frontends show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOutline {
    /// The node's name from the inventory.
    pub node: String,
    /// Its cluster, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `host:port` it is reached at.
    pub address: String,
    /// Its tasks in order.
    pub tasks: Vec<TaskOutline>,
}

/// Tallies of task outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: usize,
    pub changed: usize,
    pub skipped: usize,
    pub failed: usize,
}

impl Counts {
    /// Counts one task outcome.
    pub fn add(&mut self, status: TaskStatus) {
        match status {
            TaskStatus::Ok => self.ok += 1,
            TaskStatus::Changed => self.changed += 1,
            TaskStatus::Skipped => self.skipped += 1,
            TaskStatus::Failed => self.failed += 1,
        }
    }

    /// All tasks counted.
    pub fn total(&self) -> usize {
        self.ok + self.changed + self.skipped + self.failed
    }
}

/// What a frontend may ask of a running engine (the one way in; events are the one way out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Run a failed node again from its failed task (the others keep running).
    Retry { node: String },
    /// Stop scheduling, cancel running commands, record what finished.
    Cancel,
}

/// What is wrong with a node's host key, found before the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyIssue {
    /// known_hosts has no key for the node: the operator may accept this one.
    Unknown,
    /// known_hosts has another key (line `line` of `path`): never accepted from the screen.
    Changed { line: usize, path: String },
}

/// A node's host key that needs the operator before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyPrompt {
    /// The node's name.
    pub node: String,
    /// The key's fingerprint, `SHA256:...` as `ssh-keygen -l` shows it.
    pub fingerprint: String,
    /// Unknown or changed.
    pub issue: HostKeyIssue,
}

/// What one node answered to the host key look before the confirmation screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyAnswer {
    /// known_hosts has its key: nothing to decide.
    Known,
    /// Its key is unknown or changed: the operator decides on the confirmation screen.
    Found(HostKeyPrompt),
    /// It did not answer in time (or refused): the run reports it with its own error.
    NoAnswer,
}

/// Everything that happens during a run, in the order it happened for each node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run begins: the stages and each selected node's plan (facts may still be assumed).
    RunStarted {
        run_id: String,
        stages: Vec<String>,
        nodes: Vec<NodeOutline>,
        dry_run: bool,
    },
    /// kubeboot is opening the SSH connection to a node.
    NodeConnecting { node: String, address: String },
    /// Connected and authenticated; facts gathered.
    NodeConnected { node: String, facts: Facts },
    /// The node's plan rendered with its real facts (replaces the outline from `run_started`).
    NodePlanned { node: String, plan: NodeOutline },
    /// A task begins (attempt counts from 1).
    TaskStarted {
        node: String,
        stage: String,
        task: String,
        index: usize,
        total: usize,
        attempt: u32,
        /// Why it runs when it finished before ("input changed: command", "after changed: copy manifests", ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    /// A task waits before it starts: for tasks on other nodes (`wait_for`, outputs it needs) or for its turn in a
    /// `serial` stage. A `task_started` follows when it may go.
    TaskWaiting {
        node: String,
        stage: String,
        task: String,
        /// What it waits for, in the operator's words (`node-194: kubeadm-init/kubeadm init`).
        on: Vec<String>,
    },
    /// A task registered an output. `value` is there for a non-secret output only (the journal keeps it for
    /// resume); a secret one stays in kubeboot's memory.
    OutputRegistered {
        node: String,
        stage: String,
        task: String,
        name: String,
        secret: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// A secret output's value, only on its way to the fan-out, which masks it from then on and takes it
        /// out of the event: never serialized, so never in the journal, logs or `--output json`.
        #[serde(skip)]
        mask: Option<crate::secrets::Secret>,
    },
    /// One line a remote command printed, as it printed it.
    Output { node: String, stream: Stream, line: String },
    /// An attempt failed and the task will be tried again after `delay_ms`.
    TaskRetrying {
        node: String,
        stage: String,
        task: String,
        attempt: u32,
        error: String,
        delay_ms: u64,
    },
    /// A task ended.
    TaskFinished {
        node: String,
        stage: String,
        task: String,
        status: TaskStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<SkipReason>,
        /// Fingerprint of the task's rendered content (its identity for resume).
        fingerprint: String,
        /// The rest of its identity for the journal (not printed: `--output json` shows the fingerprint only).
        #[serde(skip)]
        inputs: Inputs,
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        duration_ms: u64,
    },
    /// A node ended; `error` says why when it failed; `blocked_by` names the node whose failure blocked it.
    NodeFinished {
        node: String,
        status: NodeStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blocked_by: Option<String>,
        counts: Counts,
        duration_ms: u64,
    },
    /// Everything the node did so far is on its disk: kubeboot ran `sync` there at the end of a stage in which
    /// something ran. The journal keeps it; a task finished before it survives a hard reset of the node.
    NodeSynced { node: String },
    /// The run ended.
    RunFinished {
        nodes_ok: usize,
        nodes_failed: usize,
        nodes_cancelled: usize,
        /// Nodes that stopped because a node they wait for failed.
        #[serde(default)]
        nodes_blocked: usize,
        counts: Counts,
        duration_ms: u64,
        interrupted: bool,
    },
}

impl Event {
    /// The node this event is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Event::RunStarted { .. } | Event::RunFinished { .. } => None,
            Event::NodeConnecting { node, .. }
            | Event::NodeConnected { node, .. }
            | Event::NodeSynced { node }
            | Event::NodePlanned { node, .. }
            | Event::TaskStarted { node, .. }
            | Event::TaskWaiting { node, .. }
            | Event::OutputRegistered { node, .. }
            | Event::Output { node, .. }
            | Event::TaskRetrying { node, .. }
            | Event::TaskFinished { node, .. }
            | Event::NodeFinished { node, .. } => Some(node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_an_event_tag_and_the_node() {
        let e = Event::TaskFinished {
            node: "node-1".into(),
            stage: "containerd".into(),
            task: "install".into(),
            status: TaskStatus::Skipped,
            reason: Some(SkipReason::Done),
            fingerprint: "abc".into(),
            inputs: Inputs::default(),
            exit_code: None,
            error: None,
            duration_ms: 0,
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event"], "task_finished");
        assert_eq!(json["node"], "node-1");
        assert_eq!(json["status"], "skipped");
        assert_eq!(json["reason"], "done");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
