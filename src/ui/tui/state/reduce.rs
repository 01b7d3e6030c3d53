//! The reducer: folds the engine's events into the model (the only way a run changes what the screen shows).

use crate::event::{Event, NodeStatus, SkipReason, Stream, TaskStatus};
use crate::ui::summary::duration;

use super::{App, Failure, LineKind, NodeState, RunEnd, Screen, TaskState};

/// Output lines copied into a failure report when a task fails.
pub const FAILURE_TAIL: usize = 8;

impl App {
    /// The engine's event channel closed: no `run_finished` will come.
    pub fn close_events(&mut self, now_ms: u64) {
        self.tick(now_ms);
        self.events_closed = true;
        for node in &mut self.nodes {
            if !node.state.is_finished() && node.started_ms.is_some() {
                node.state = NodeState::Cancelled;
                node.finished_ms = Some(self.now_ms);
            }
        }
        if self.screen == Screen::Running && !self.cancelling {
            self.screen = Screen::Summary;
        }
    }

    /// The reducer: folds one engine event into the model.
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
                self.run_started_ms.get_or_insert(now);
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
                }
                node.state = NodeState::Running;
                node.started_ms.get_or_insert(now);
                node.tasks[i].state = TaskState::Running;
                node.current = Some(i);
                node.attempt = *attempt;
                node.retrying = None;
                node.retry_requested = false;
                let note = if *attempt > 1 {
                    format!("▶ {stage} / {task} (attempt {attempt})")
                } else {
                    format!("▶ {stage} / {task}")
                };
                node.output.push(LineKind::Note, &note);
            }
            Event::TaskWaiting { node, stage, task, on } => {
                let node = self.node_mut(node);
                let text = on.join(", ");
                node.state = NodeState::WaitingOnOthers;
                node.output
                    .push(LineKind::Note, &format!("⏸ {stage} / {task} waits for {text}"));
                node.waiting_on = Some(text);
            }
            Event::OutputRegistered { node, name, secret, .. } => {
                let what = if *secret { " (secret)" } else { "" };
                self.node_mut(node)
                    .output
                    .push(LineKind::Note, &format!("⇢ output `{name}` registered{what}"));
            }
            Event::Output { node, stream, line } => {
                let kind = match stream {
                    Stream::Stdout => LineKind::Stdout,
                    Stream::Stderr => LineKind::Stderr,
                };
                self.node_mut(node).output.push(kind, line);
            }
            Event::TaskRetrying {
                node,
                attempt,
                error,
                delay_ms,
                ..
            } => {
                let node = self.node_mut(node);
                let note = format!(
                    "↻ attempt {attempt} failed: {error}; retrying in {}",
                    duration(*delay_ms)
                );
                node.output.push(LineKind::Note, &note);
                node.retrying = Some(note);
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
                    let last_lines = node.output.tail(FAILURE_TAIL);
                    let mut note = format!("✗ {stage} / {task} failed");
                    if let Some(code) = exit_code {
                        note.push_str(&format!(" (exit {code})"));
                    }
                    if let Some(error) = error {
                        note.push_str(&format!(": {error}"));
                    }
                    node.output.push(LineKind::Note, &note);
                    node.failure = Some(Failure {
                        stage: Some(stage.clone()),
                        task: Some(task.clone()),
                        exit_code: *exit_code,
                        error: error.clone(),
                        last_lines,
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
                node.waiting_on = None;
                node.blocked_by = blocked_by.clone();
                node.finished_ms = Some(now);
                node.duration_ms = Some(*duration_ms);
                node.final_counts = Some(*counts);
                node.retrying = None;
                node.retry_requested = false;
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
                    let failure = node.failure.get_or_insert_with(|| Failure {
                        last_lines: node.output.tail(FAILURE_TAIL),
                        ..Failure::default()
                    });
                    if failure.error.is_none() {
                        failure.error = error.clone();
                    }
                }
                if let Some(error) = error {
                    node.output.push(LineKind::Note, &format!("✗ {error}"));
                }
            }
            // The journal's mark that the node's disk has what finished: nothing on the screen.
            Event::NodeSynced { .. } => {}
            Event::RunFinished {
                nodes_ok,
                nodes_failed,
                nodes_cancelled,
                nodes_blocked: _,
                counts,
                duration_ms,
                interrupted,
            } => {
                self.run_end = Some(RunEnd {
                    nodes_ok: *nodes_ok,
                    nodes_failed: *nodes_failed,
                    nodes_cancelled: *nodes_cancelled,
                    counts: *counts,
                    duration_ms: *duration_ms,
                    interrupted: *interrupted,
                });
                for node in self
                    .nodes
                    .iter_mut()
                    .filter(|n| !n.state.is_finished() && n.started_ms.is_some())
                {
                    node.state = NodeState::Cancelled;
                    node.finished_ms = Some(now);
                }
                self.quit_confirm = false;
                if self.screen == Screen::Running && !self.cancelling {
                    self.screen = Screen::Summary;
                }
            }
        }
    }
}
