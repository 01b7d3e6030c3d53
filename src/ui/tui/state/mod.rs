//! The TUI's view model: the core's [`RunModel`] (the one fold of the run's events: nodes, tasks, stage cells,
//! tallies, how the run ended) with the screen's own state on top, updated only by [`App::apply`] (events, in
//! [`reduce`]) and [`App::act`] (keys, in [`act`]). Both are pure: time comes in as milliseconds, nothing reads the
//! clock or the terminal.
//!
//! The screen's parts live one per file: [`output`] (a node's output pane and the sanitizing of remote lines),
//! [`host_keys`] (the confirmation screen's host key look and decisions). This file holds the [`App`] itself and
//! what every part asks of it.

mod act;
mod host_keys;
mod output;
mod reduce;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::event::NodeOutline;

// The questions and answers of the core's contract; host_keys.rs adds what the operator decided.
pub use crate::event::{Control, HostKeyAnswer, HostKeyIssue, HostKeyPrompt};
// The run as the events tell it (the core's run model); the screen reads it and keeps its own state beside it.
pub use crate::run_model::{Failure, NodeRun, NodeState, NodeTally, RunEnd, RunModel, StageCell, TaskRun, TaskState};

pub use host_keys::{HostKeyCheck, HostKeyDecision, HostKeyView};
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

/// What the screen keeps of one node beside its row in the run model.
#[derive(Debug, Clone, Default)]
pub struct NodePane {
    /// Its recent output, with kubeboot's own notes between the lines.
    pub output: OutputBuffer,
    /// The last output lines at the moment it failed (shown above the output while it is failed).
    pub failure_tail: Vec<String>,
    /// The operator asked for a retry and no event has answered yet.
    pub retry_requested: bool,
}

/// The whole view model.
#[derive(Debug, Clone)]
pub struct App {
    /// The run itself, folded from the engine's events.
    pub run: RunModel,
    /// One pane per node, in the order of `run.nodes`.
    pub panes: Vec<NodePane>,
    /// Where the per-node log files are.
    pub log_dir: PathBuf,
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
            run: RunModel::new(run_id, stages, nodes),
            panes: Vec::new(),
            log_dir,
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
            host_keys: Vec::new(),
            host_key_selected: 0,
            host_key_check: None,
        };
        app.add_panes();
        app
    }

    /// Gives every node of the run model its pane (the model adds nodes that only events name).
    fn add_panes(&mut self) {
        let nodes = self.run.nodes.len();
        if self.panes.len() < nodes {
            self.panes.resize_with(nodes, NodePane::default);
        }
    }

    /// The selected node, if there is any node.
    pub fn selected_node(&self) -> Option<&NodeRun> {
        self.run.nodes.get(self.selected)
    }

    /// The selected node's pane, if there is any node.
    pub fn selected_pane(&self) -> Option<&NodePane> {
        self.panes.get(self.selected)
    }

    /// The pane of the node at `index` in `run.nodes`.
    pub fn pane(&self, index: usize) -> Option<&NodePane> {
        self.panes.get(index)
    }

    /// The run ended (or the engine went away); nothing more will change.
    pub fn run_over(&self) -> bool {
        self.run.run_over()
    }

    /// The main loop should stop: cancelling (or leaving) and the engine has stopped.
    pub fn should_exit(&self) -> bool {
        (self.cancelling || self.leaving) && self.run_over()
    }

    /// The log file of a node.
    pub fn log_path(&self, node: &str) -> PathBuf {
        crate::fanout::node_log_path(&self.log_dir, node)
    }

    /// Advances the model's clock (for elapsed times) without an event.
    pub fn tick(&mut self, now_ms: u64) {
        self.run.tick(now_ms);
    }
}
