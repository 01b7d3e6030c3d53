//! The run model: the one fold of the event stream every frontend reads. [`RunModel::apply`] takes the engine's
//! events in order and keeps, per node, where it is (state, current task and attempt, what it waits for), its tasks
//! and stage cells, tallies, times, why it failed or was blocked, and for the run its id, stages and how it ended.
//!
//! The TUI embeds it and keeps only screen state on top (selection, scrolling, output panes); the headless printer
//! folds into it for the end-of-run summary, which is derived from it for both. Pure like the events: time comes
//! in as milliseconds on the run's clock, nothing reads the clock, a terminal or the disk. One node's row lives in
//! [`node`].

mod node;

use std::collections::HashMap;

use crate::event::{Counts, Event, NodeOutline, NodeStatus, SkipReason, TaskStatus};

pub use node::{Failure, NodeRun, NodeState, Retrying, StageCell, TaskRun, TaskState};

/// How the run ended, from `run_finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    /// Nodes that finished.
    pub nodes_ok: usize,
    /// Nodes that failed.
    pub nodes_failed: usize,
    /// Nodes cut short.
    pub nodes_cancelled: usize,
    /// Nodes stopped because a node they wait for failed.
    pub nodes_blocked: usize,
    /// All task tallies.
    pub counts: Counts,
    /// The run's duration.
    pub duration_ms: u64,
    /// The run was interrupted.
    pub interrupted: bool,
}

/// Node tallies by where the nodes are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTally {
    /// Not started yet, or waiting on other nodes.
    pub waiting: usize,
    /// Connecting or running.
    pub running: usize,
    /// Finished well.
    pub done: usize,
    /// Failed or blocked.
    pub failed: usize,
    /// Cancelled.
    pub cancelled: usize,
}

/// One run as the events tell it.
#[derive(Debug, Clone, Default)]
pub struct RunModel {
    /// The run's id (names the journal entry).
    pub run_id: String,
    /// Stage names in order.
    pub stages: Vec<String>,
    /// Nodes in plan order (nodes only events name are added at the end).
    pub nodes: Vec<NodeRun>,
    index: HashMap<String, usize>,
    /// The run only shows what it would do.
    pub dry_run: bool,
    /// The latest time the model was given (ms on the run's clock).
    pub now_ms: u64,
    /// When the run started.
    pub started_ms: Option<u64>,
    /// How the run ended; None until `run_finished`.
    pub end: Option<RunEnd>,
    /// The engine's event channel closed.
    pub events_closed: bool,
}

impl RunModel {
    /// A model of a run not started yet, with these stages and node plans.
    pub fn new(run_id: &str, stages: Vec<String>, nodes: &[NodeOutline]) -> Self {
        let mut run = RunModel {
            run_id: run_id.to_string(),
            stages,
            ..RunModel::default()
        };
        for outline in nodes {
            run.upsert(outline);
        }
        run
    }

    fn upsert(&mut self, outline: &NodeOutline) -> usize {
        if let Some(&i) = self.index.get(&outline.node) {
            self.nodes[i].replan(outline);
            return i;
        }
        self.index.insert(outline.node.clone(), self.nodes.len());
        self.nodes.push(NodeRun::new(outline));
        self.nodes.len() - 1
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeRun {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.index.insert(name.to_string(), self.nodes.len());
                self.nodes.push(NodeRun::unknown(name));
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    /// Where a node is in [`RunModel::nodes`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The run ended (or the engine went away); nothing more will change.
    pub fn run_over(&self) -> bool {
        self.end.is_some() || self.events_closed
    }

    /// Tasks done and in total, over all nodes.
    pub fn task_progress(&self) -> (usize, usize) {
        self.nodes
            .iter()
            .fold((0, 0), |(d, t), n| (d + n.tasks_done(), t + n.tasks_total()))
    }

    /// Node tallies by state.
    pub fn node_tally(&self) -> NodeTally {
        let mut tally = NodeTally::default();
        for node in &self.nodes {
            match node.state {
                NodeState::Waiting => tally.waiting += 1,
                NodeState::Connecting | NodeState::Running => tally.running += 1,
                NodeState::Done => tally.done += 1,
                NodeState::Failed => tally.failed += 1,
                NodeState::Cancelled => tally.cancelled += 1,
                NodeState::WaitingOnOthers => tally.waiting += 1,
                NodeState::Blocked => tally.failed += 1,
            }
        }
        tally
    }

    /// Elapsed run time at the model's `now_ms` (the engine's duration once the run finished).
    pub fn elapsed_ms(&self) -> u64 {
        if let Some(end) = self.end {
            return end.duration_ms;
        }
        self.started_ms.map_or(0, |start| self.now_ms.saturating_sub(start))
    }

    /// Advances the model's clock (for elapsed times) without an event.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The engine's event channel closed: no `run_finished` will come; nodes that started and did not finish
    /// count as cancelled.
    pub fn close_events(&mut self, now_ms: u64) {
        self.tick(now_ms);
        self.events_closed = true;
        self.cancel_unfinished();
    }

    fn cancel_unfinished(&mut self) {
        let now = self.now_ms;
        for node in self
            .nodes
            .iter_mut()
            .filter(|n| !n.state.is_finished() && n.started_ms.is_some())
        {
            node.state = NodeState::Cancelled;
            node.finished_ms = Some(now);
        }
    }

    /// Folds one engine event in, at `now_ms` on the run's clock.
    pub fn apply(&mut self, event: &Event, now_ms: u64) {
        self.tick(now_ms);
        let now = self.now_ms;
        match event {
            Event::RunStarted {
                run_id,
                stages,
                nodes,
                dry_run,
            } => {
                self.started_ms.get_or_insert(now);
                if !run_id.is_empty() {
                    self.run_id = run_id.clone();
                }
                if !stages.is_empty() {
                    self.stages = stages.clone();
                }
                self.dry_run = *dry_run;
                for outline in nodes {
                    self.upsert(outline);
                }
            }
            Event::NodeConnecting { node, address } => {
                let node = self.node_mut(node);
                node.state = NodeState::Connecting;
                node.started_ms.get_or_insert(now);
                if !address.is_empty() {
                    node.address = address.clone();
                }
            }
            Event::NodeConnected { node, .. } => {
                let node = self.node_mut(node);
                node.state = NodeState::Running;
                node.started_ms.get_or_insert(now);
            }
            Event::NodePlanned { node, plan } => {
                self.node_mut(node).replan(plan);
            }
            Event::TaskStarted {
                node,
                stage,
                task,
                attempt,
                ..
            } => {
                let node = self.node_mut(node);
                let i = node.task_index(stage, task);
                if node.state.is_finished() {
                    // A retry: the node is live again and its earlier end no longer holds.
                    node.failure = None;
                    node.final_counts = None;
                    node.duration_ms = None;
                    node.finished_ms = None;
                    node.ended = None;
                    node.error = None;
                }
                node.state = NodeState::Running;
                node.started_ms.get_or_insert(now);
                node.tasks[i].state = TaskState::Running;
                node.current = Some(i);
                node.attempt = *attempt;
                node.retrying = None;
            }
            Event::TaskWaiting { node, on, .. } => {
                let node = self.node_mut(node);
                node.state = NodeState::WaitingOnOthers;
                node.waiting_on = Some(on.join(", "));
            }
            Event::OutputRegistered { node, .. } | Event::Output { node, .. } => {
                self.node_mut(node);
            }
            Event::TaskRetrying {
                node,
                attempt,
                error,
                delay_ms,
                ..
            } => {
                self.node_mut(node).retrying = Some(Retrying {
                    attempt: *attempt,
                    error: error.clone(),
                    delay_ms: *delay_ms,
                });
            }
            Event::TaskFinished {
                node,
                stage,
                task,
                status,
                reason,
                exit_code,
                error,
                ..
            } => {
                let node = self.node_mut(node);
                let i = node.task_index(stage, task);
                node.tasks[i].state = match status {
                    TaskStatus::Ok => TaskState::Ok,
                    TaskStatus::Changed => TaskState::Changed,
                    TaskStatus::Skipped => TaskState::Skipped(reason.unwrap_or(SkipReason::Condition)),
                    TaskStatus::Failed => TaskState::Failed,
                };
                if node.current == Some(i) {
                    node.current = None;
                }
                node.retrying = None;
                if *status == TaskStatus::Failed {
                    node.failure = Some(Failure {
                        stage: Some(stage.clone()),
                        task: Some(task.clone()),
                        exit_code: *exit_code,
                        error: error.clone(),
                    });
                }
            }
            Event::NodeFinished {
                node,
                status,
                error,
                blocked_by,
                counts,
                duration_ms,
            } => {
                let node = self.node_mut(node);
                node.state = match status {
                    NodeStatus::Ok => NodeState::Done,
                    NodeStatus::Failed => NodeState::Failed,
                    NodeStatus::Cancelled => NodeState::Cancelled,
                    NodeStatus::Blocked => NodeState::Blocked,
                };
                node.ended = Some(*status);
                node.error = error.clone();
                node.waiting_on = None;
                node.blocked_by = blocked_by.clone();
                node.finished_ms = Some(now);
                node.duration_ms = Some(*duration_ms);
                node.final_counts = Some(*counts);
                node.retrying = None;
                if let Some(i) = node.current.take()
                    && node.tasks[i].state == TaskState::Running
                {
                    node.tasks[i].state = TaskState::Pending;
                }
                if *status == NodeStatus::Ok {
                    // Tasks the plan knew it would skip may not get their own event.
                    for task in node.tasks.iter_mut().filter(|t| t.state == TaskState::Pending) {
                        if let Some(reason) = task.planned_skip {
                            task.state = TaskState::Skipped(reason);
                        }
                    }
                }
                if *status == NodeStatus::Failed {
                    let failure = node.failure.get_or_insert_with(Failure::default);
                    if failure.error.is_none() {
                        failure.error = error.clone();
                    }
                }
            }
            // The journal's mark that the node's disk has what finished: nothing a frontend shows (and, as
            // before, no row for a node only it names).
            Event::NodeSynced { .. } => {}
            Event::RunFinished {
                nodes_ok,
                nodes_failed,
                nodes_cancelled,
                nodes_blocked,
                counts,
                duration_ms,
                interrupted,
            } => {
                self.end = Some(RunEnd {
                    nodes_ok: *nodes_ok,
                    nodes_failed: *nodes_failed,
                    nodes_cancelled: *nodes_cancelled,
                    nodes_blocked: *nodes_blocked,
                    counts: *counts,
                    duration_ms: *duration_ms,
                    interrupted: *interrupted,
                });
                self.cancel_unfinished();
            }
        }
    }
}

#[cfg(test)]
mod tests;
