//! The TUI's view model: everything the screen shows, updated only by [`App::apply`] (events, in [`reduce`]) and
//! [`App::act`] (keys, in [`act`]). Both are pure: time comes in as milliseconds, nothing reads the clock or the terminal.
//!
//! The model's parts live one per file: [`node`] (a node, its tasks and stage cells), [`output`] (a node's output
//! pane and the sanitizing of remote lines), [`host_keys`] (the confirmation screen's host key look and decisions).
//! This file holds the [`App`] itself and what every part asks of it.

mod act;
mod host_keys;
mod node;
mod output;
mod reduce;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;

// The questions and answers of the core's contract; host_keys.rs adds what the operator decided.
pub use crate::event::{Control, HostKeyAnswer, HostKeyIssue, HostKeyPrompt};
use crate::event::{Counts, NodeOutline};

pub use host_keys::{HostKeyCheck, HostKeyDecision, HostKeyView};
pub use node::{Failure, NodeState, NodeView, StageCell, TaskState, TaskView};
pub use output::{LineKind, MAX_LINE_CHARS, OUTPUT_LINES_PER_NODE, OutputBuffer, OutputLine, sanitize};
pub use reduce::FAILURE_TAIL;

/// Which screen is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Before the run: what will happen, `y` to start.
    Confirm,
    /// The live view of a running (or finished, when reopened from the summary) run.
    Running,
    /// After the run: per-node results and log files.
    Summary,
}

/// Which pane the arrow keys move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The node list: arrows select a node.
    List,
    /// The output pane: arrows scroll.
    Output,
}

/// How the run ended, from `run_finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    /// Nodes that finished.
    pub nodes_ok: usize,
    /// Nodes that failed.
    pub nodes_failed: usize,
    /// Nodes cut short.
    pub nodes_cancelled: usize,
    /// All task tallies.
    pub counts: Counts,
    /// The run's duration.
    pub duration_ms: u64,
    /// The run was interrupted.
    pub interrupted: bool,
}

/// Node tallies for the header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTally {
    /// Not started yet.
    pub waiting: usize,
    /// Connecting or running.
    pub running: usize,
    /// Finished well.
    pub done: usize,
    /// Failed.
    pub failed: usize,
    /// Cancelled.
    pub cancelled: usize,
}

/// The whole view model.
#[derive(Debug, Clone)]
pub struct App {
    /// The run's id (names the journal entry).
    pub run_id: String,
    /// Stage names in order.
    pub stages: Vec<String>,
    /// Nodes in inventory order.
    pub nodes: Vec<NodeView>,
    index: HashMap<String, usize>,
    /// Where the per-node log files are.
    pub log_dir: PathBuf,
    /// The run only shows what it would do.
    pub dry_run: bool,
    /// Which screen is shown.
    pub screen: Screen,
    /// Which pane has the arrows.
    pub focus: Focus,
    /// Index of the selected node.
    pub selected: usize,
    /// The output pane sticks to the newest line.
    pub follow: bool,
    /// Sequence number of the first visible output line when not following.
    pub scroll_top: u64,
    /// The help overlay is open.
    pub help: bool,
    /// The "quit?" dialog is open.
    pub quit_confirm: bool,
    /// Cancel was sent; waiting for the engine to stop.
    pub cancelling: bool,
    /// The operator asked to leave while still cancelling; leave when the run ends.
    pub leaving: bool,
    /// Draw with colours (false under `NO_COLOR`).
    pub color: bool,
    /// The latest time the model was given (ms on the run's clock).
    pub now_ms: u64,
    /// When the run started.
    pub run_started_ms: Option<u64>,
    /// How the run ended.
    pub run_end: Option<RunEnd>,
    /// The engine's event channel closed.
    pub events_closed: bool,
    /// Host keys waiting for a decision on the confirmation screen (unknown or changed), in node order.
    pub host_keys: Vec<HostKeyView>,
    /// Index into `host_keys` of the selected one.
    pub host_key_selected: usize,
    /// The host key look still running before the confirmation screen (None once every node answered).
    pub host_key_check: Option<HostKeyCheck>,
}

impl App {
    /// A model showing the confirmation screen for these stages and nodes.
    pub fn new(run_id: &str, stages: Vec<String>, nodes: &[NodeOutline], log_dir: PathBuf) -> Self {
        let mut app = App {
            run_id: run_id.to_string(),
            stages,
            nodes: Vec::new(),
            index: HashMap::new(),
            log_dir,
            dry_run: false,
            screen: Screen::Confirm,
            focus: Focus::List,
            selected: 0,
            follow: true,
            scroll_top: 0,
            help: false,
            quit_confirm: false,
            cancelling: false,
            leaving: false,
            color: true,
            now_ms: 0,
            run_started_ms: None,
            run_end: None,
            events_closed: false,
            host_keys: Vec::new(),
            host_key_selected: 0,
            host_key_check: None,
        };
        for outline in nodes {
            app.upsert(outline);
        }
        app
    }

    fn upsert(&mut self, outline: &NodeOutline) -> usize {
        if let Some(&i) = self.index.get(&outline.node) {
            self.nodes[i].replan(outline);
            return i;
        }
        self.index.insert(outline.node.clone(), self.nodes.len());
        self.nodes.push(NodeView::new(outline));
        self.nodes.len() - 1
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeView {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.index.insert(name.to_string(), self.nodes.len());
                self.nodes.push(NodeView::unknown(name));
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    /// The selected node, if there is any node.
    pub fn selected_node(&self) -> Option<&NodeView> {
        self.nodes.get(self.selected)
    }

    /// The run ended (or the engine went away); nothing more will change.
    pub fn run_over(&self) -> bool {
        self.run_end.is_some() || self.events_closed
    }

    /// The main loop should stop: cancelling (or leaving) and the engine has stopped.
    pub fn should_exit(&self) -> bool {
        (self.cancelling || self.leaving) && self.run_over()
    }

    /// Tasks done and in total, over all nodes.
    pub fn task_progress(&self) -> (usize, usize) {
        self.nodes
            .iter()
            .fold((0, 0), |(d, t), n| (d + n.tasks_done(), t + n.tasks_total()))
    }

    /// Node tallies for the header.
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

    /// Elapsed run time at the model's `now_ms`.
    pub fn elapsed_ms(&self) -> u64 {
        if let Some(end) = self.run_end {
            return end.duration_ms;
        }
        self.run_started_ms.map_or(0, |start| self.now_ms.saturating_sub(start))
    }

    /// The log file of a node.
    pub fn log_path(&self, node: &str) -> PathBuf {
        crate::fanout::node_log_path(&self.log_dir, node)
    }

    /// Advances the model's clock (for elapsed times) without an event.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }
}
