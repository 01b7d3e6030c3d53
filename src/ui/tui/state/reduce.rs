//! The reducer: folds the engine's events into the model (the only way a run changes what the screen shows). The
//! run itself is the core's [`RunModel`](crate::run_model::RunModel); this adds what the screen keeps per node: the
//! output pane with kubeboot's notes, the lines shown with a failure, and the pending retry request.

use crate::event::{Event, NodeStatus, Stream, TaskStatus};
use crate::ui::summary::duration;

use super::{App, LineKind, Screen};

/// Output lines copied into a failure report when a task fails.
pub const FAILURE_TAIL: usize = 8;

impl App {
    /// The engine's event channel closed: no `run_finished` will come.
    pub fn close_events(&mut self, now_ms: u64) {
        self.run.close_events(now_ms);
        if self.screen == Screen::Running && !self.cancelling {
            self.screen = Screen::Summary;
        }
    }

    /// The reducer: folds one engine event into the model.
    pub fn apply(&mut self, event: &Event, now_ms: u64) {
        let had_failure = event
            .node()
            .and_then(|n| self.run.position(n))
            .is_some_and(|i| self.run.nodes[i].failure.is_some());
        self.run.apply(event, now_ms);
        self.add_panes();
        let pane = match event.node().and_then(|n| self.run.position(n)) {
            Some(i) => &mut self.panes[i],
            None => {
                if let Event::RunFinished { .. } = event {
                    self.quit_confirm = false;
                    if self.screen == Screen::Running && !self.cancelling {
                        self.screen = Screen::Summary;
                    }
                }
                return;
            }
        };
        match event {
            Event::RunStarted { .. }
            | Event::RunFinished { .. }
            | Event::NodeConnecting { .. }
            | Event::NodeConnected { .. }
            | Event::NodePlanned { .. } => {}
            // The journal's mark that the node's disk has what finished: nothing on the screen.
            Event::NodeSynced { .. } => {}
            Event::TaskStarted {
                stage, task, attempt, ..
            } => {
                pane.retry_requested = false;
                let note = if *attempt > 1 {
                    format!("▶ {stage} / {task} (attempt {attempt})")
                } else {
                    format!("▶ {stage} / {task}")
                };
                pane.output.push(LineKind::Note, &note);
            }
            Event::TaskWaiting { stage, task, on, .. } => {
                let text = on.join(", ");
                pane.output
                    .push(LineKind::Note, &format!("⏸ {stage} / {task} waits for {text}"));
            }
            Event::OutputRegistered { name, secret, .. } => {
                let what = if *secret { " (secret)" } else { "" };
                pane.output
                    .push(LineKind::Note, &format!("⇢ output `{name}` registered{what}"));
            }
            Event::Output { stream, line, .. } => {
                let kind = match stream {
                    Stream::Stdout => LineKind::Stdout,
                    Stream::Stderr => LineKind::Stderr,
                };
                pane.output.push(kind, line);
            }
            Event::TaskRetrying {
                attempt,
                error,
                delay_ms,
                ..
            } => {
                let note = format!(
                    "↻ attempt {attempt} failed: {error}; retrying in {}",
                    duration(*delay_ms)
                );
                pane.output.push(LineKind::Note, &note);
            }
            Event::TaskFinished {
                stage,
                task,
                status,
                exit_code,
                error,
                ..
            } => {
                if *status == TaskStatus::Failed {
                    pane.failure_tail = pane.output.tail(FAILURE_TAIL);
                    let mut note = format!("✗ {stage} / {task} failed");
                    if let Some(code) = exit_code {
                        note.push_str(&format!(" (exit {code})"));
                    }
                    if let Some(error) = error {
                        note.push_str(&format!(": {error}"));
                    }
                    pane.output.push(LineKind::Note, &note);
                }
            }
            Event::NodeFinished { status, error, .. } => {
                pane.retry_requested = false;
                if *status == NodeStatus::Failed && !had_failure {
                    pane.failure_tail = pane.output.tail(FAILURE_TAIL);
                }
                if let Some(error) = error {
                    pane.output.push(LineKind::Note, &format!("✗ {error}"));
                }
            }
        }
    }
}
