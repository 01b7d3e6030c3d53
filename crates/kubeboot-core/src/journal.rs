//! The state directory: the run journal (append-only record of what finished, the only
//! source of "what already finished" for resume), the lock, and the log folders.
//!
//! The journal is JSON lines, one record per line, appended and flushed as events arrive
//! and synced to disk once per batch. A crash (even `kill -9`) at any byte leaves a
//! readable journal: a torn last line is ignored when reading.
//!
//! Resume reads three things from it: the last successful finish of every task (its fingerprint, the keyed
//! digest of the secrets it used, and where in the journal it finished), when each task last reported
//! `changed` (a task that finished before one of its dependencies changed is stale), and the generation of
//! every (node, stage): `--fresh` starts a new one, and only finishes of the current generation count as done.
//! Journals written before generations existed simply have none: every entry is generation 0. A fourth thing is
//! the node's boot: a task that finished in another boot than the node's now, with no `synced` record after it,
//! runs again (a hard reset can take what it wrote before the disk had it).
//!
//! This file holds the journal's records (its file format) and the state dir's errors; [`progress`](self::progress)
//! folds records into what resume reads ([`Progress`]), `state_dir` owns the files on disk (the folder, the lock, the
//! journal's writer, the digest key, the log folders).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::event::{Event, NodeStatus, SkipReason, TaskStatus};
use crate::facts::Facts;

mod progress;
mod state_dir;
#[cfg(test)]
mod tests;

pub use progress::{Done, NodeProgress, Progress};
pub use state_dir::{JournalWriter, Lock, StateDir};

/// Problems with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {path}: {source} (choose a writable folder with --state-dir)")]
    Unusable { path: PathBuf, source: io::Error },
    #[error(
        "another kubeboot run holds the lock on {path}{holder} — wait for it to finish, or stop it; \
         a killed run releases the lock by itself"
    )]
    Locked { path: PathBuf, holder: String },
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// A run began.
    Run { run: String, ts: String, pid: u32 },
    /// The run really starts (after the confirmation screen) on these nodes: `status` shows them
    /// as in this run from now on, before any of them finished a task.
    Started {
        run: String,
        ts: String,
        nodes: Vec<String>,
    },
    /// Facts gathered from a node.
    Facts { run: String, node: String, facts: Facts },
    /// `--fresh` started a new generation of these stages on this node: what finished before is not done.
    Fresh {
        run: String,
        ts: String,
        node: String,
        stages: Vec<String>,
    },
    /// A task began (an attempt): until it ends, the node is not known to be in any state of that task, so an
    /// earlier finish of it no longer counts (a run cut off in the middle of it must run it again).
    TaskStarted {
        run: String,
        ts: String,
        node: String,
        stage: String,
        task: String,
    },
    /// A task ended.
    Task {
        run: String,
        ts: String,
        node: String,
        stage: String,
        task: String,
        fingerprint: String,
        /// Keyed digest (HMAC) of the secrets the task used; never a secret or a plain hash of one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secrets: Option<String>,
        /// Short digests of the task's parts (command, guard, env, each file), to say what changed.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        inputs: BTreeMap<String, String>,
        status: TaskStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<SkipReason>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A node ended.
    Node {
        run: String,
        ts: String,
        node: String,
        status: NodeStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The node whose failure blocked this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blocked_by: Option<String>,
    },
    /// A non-secret output a task registered (secret ones are never journaled: they are made again when needed).
    Output {
        run: String,
        node: String,
        stage: String,
        task: String,
        name: String,
        value: String,
    },
    /// Everything the node did until here is on its disk (kubeboot ran `sync` there at the end of a stage): a
    /// hard reset after this loses none of it.
    Synced { run: String, ts: String, node: String },
    /// A run ended.
    End { run: String, ts: String, interrupted: bool },
    /// A node was torn down (`kubeboot reset`): what it finished before no longer holds, except the tasks of
    /// `keep` (the stages of a reset still under way, so that a resumed reset continues where it stopped).
    Forget {
        run: String,
        ts: String,
        node: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keep: Vec<String>,
    },
}

impl Record {
    /// The journal record for an event, if the event is one the journal keeps.
    pub fn from_event(run: &str, ts: &str, event: &Event) -> Option<Record> {
        let run = run.to_string();
        let ts = ts.to_string();
        match event {
            Event::TaskStarted { node, stage, task, .. } => Some(Record::TaskStarted {
                run,
                ts,
                node: node.clone(),
                stage: stage.clone(),
                task: task.clone(),
            }),
            Event::NodeConnected { node, facts } => Some(Record::Facts {
                run,
                node: node.clone(),
                facts: facts.clone(),
            }),
            Event::TaskFinished {
                node,
                stage,
                task,
                status,
                reason,
                fingerprint,
                inputs,
                error,
                ..
            } => Some(Record::Task {
                run,
                ts,
                node: node.clone(),
                stage: stage.clone(),
                task: task.clone(),
                fingerprint: fingerprint.clone(),
                secrets: inputs.secrets.clone(),
                inputs: inputs.parts.clone(),
                status: *status,
                reason: *reason,
                error: error.clone(),
            }),
            Event::NodeFinished {
                node,
                status,
                error,
                blocked_by,
                ..
            } => Some(Record::Node {
                run,
                ts,
                node: node.clone(),
                status: *status,
                error: error.clone(),
                blocked_by: blocked_by.clone(),
            }),
            Event::OutputRegistered {
                node,
                stage,
                task,
                name,
                secret: false,
                value: Some(value),
                ..
            } => Some(Record::Output {
                run,
                node: node.clone(),
                stage: stage.clone(),
                task: task.clone(),
                name: name.clone(),
                value: value.clone(),
            }),
            Event::NodeSynced { node } => Some(Record::Synced {
                run,
                ts,
                node: node.clone(),
            }),
            Event::RunFinished { interrupted, .. } => Some(Record::End {
                run,
                ts,
                interrupted: *interrupted,
            }),
            Event::RunStarted {
                nodes, dry_run: false, ..
            } => Some(Record::Started {
                run,
                ts,
                nodes: nodes.iter().map(|n| n.node.clone()).collect(),
            }),
            _ => None,
        }
    }
}
