//! The TUI's view model: everything the screen shows, updated only by [`App::apply`] (events) and
//! [`App::act`] (keys). Both are pure: time comes in as milliseconds, nothing reads the clock or the terminal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

// The questions and answers of the core's contract; state.rs adds what the operator decided.
pub use crate::event::{Control, HostKeyAnswer, HostKeyIssue, HostKeyPrompt};
use crate::event::{Counts, Event, NodeOutline, NodeStatus, SkipReason, Stream, TaskOutline, TaskStatus};

use super::keys::{Action, Effect};
use crate::ui::summary::duration;

/// Output lines kept per node; older lines are dropped so memory stays bounded whatever a command prints.
pub const OUTPUT_LINES_PER_NODE: usize = 2_000;
/// Characters kept of one output line (a minified JSON blob must not cost megabytes).
pub const MAX_LINE_CHARS: usize = 1_000;
/// Output lines copied into a failure report when a task fails.
pub const FAILURE_TAIL: usize = 8;

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

/// Where a node is in its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Not started yet (e.g. held back by `--forks`).
    Waiting,
    /// Opening the SSH connection.
    Connecting,
    /// Connected and working through its tasks.
    Running,
    /// Every task finished.
    Done,
    /// A task failed or the node was unreachable.
    Failed,
    /// The run was interrupted before the node finished.
    Cancelled,
    /// Connected, but its next task waits for tasks on other nodes (or its turn in a serial stage).
    WaitingOnOthers,
    /// A node it waits for failed; it stopped.
    Blocked,
}

impl NodeState {
    /// True once the node will not change any more (unless retried).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            NodeState::Done | NodeState::Failed | NodeState::Cancelled | NodeState::Blocked
        )
    }
}

/// Where one task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Not started.
    Pending,
    /// Running now.
    Running,
    /// Finished, nothing changed.
    Ok,
    /// Finished and changed the node.
    Changed,
    /// Not run, and why.
    Skipped(SkipReason),
    /// Failed after all its retries.
    Failed,
}

impl TaskState {
    /// True for ok, changed and skipped: the task counts as done.
    pub fn is_done(self) -> bool {
        matches!(self, TaskState::Ok | TaskState::Changed | TaskState::Skipped(_))
    }
}

/// One cell of the stage matrix: how far a node is in one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageCell {
    /// The stage has no task for this node (its `hosts` does not select it).
    NotApplicable,
    /// Nothing of the stage has run yet.
    Pending,
    /// A task of the stage is running (or the stage is half done on a live node).
    Running,
    /// Every task finished and at least one ran.
    Done,
    /// Every task was skipped (e.g. finished in an earlier run).
    Skipped,
    /// A task of the stage failed.
    Failed,
}

/// One task as the TUI tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    /// The stage (playbook) it belongs to.
    pub stage: String,
    /// The task's name.
    pub name: String,
    /// The plan already knows the task will be skipped (and why).
    pub planned_skip: Option<SkipReason>,
    /// Where it is now.
    pub state: TaskState,
}

impl TaskView {
    fn from_outline(outline: &TaskOutline) -> Self {
        TaskView {
            stage: outline.stage.clone(),
            name: outline.task.clone(),
            planned_skip: outline.skip,
            state: TaskState::Pending,
        }
    }
}

/// Where an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
    /// A line kubeboot added (task started, retrying, failed).
    Note,
}

/// One line of a node's output pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// Where it came from.
    pub kind: LineKind,
    /// The text, cleaned of terminal escapes and control characters.
    pub text: String,
}

/// A ring buffer of the last lines a node printed, numbered so a scroll position survives dropped lines.
#[derive(Debug, Clone, Default)]
pub struct OutputBuffer {
    lines: VecDeque<OutputLine>,
    pushed: u64,
}

impl OutputBuffer {
    /// Adds a line, dropping the oldest beyond [`OUTPUT_LINES_PER_NODE`].
    pub fn push(&mut self, kind: LineKind, text: &str) {
        if self.lines.len() >= OUTPUT_LINES_PER_NODE {
            self.lines.pop_front();
        }
        self.lines.push_back(OutputLine {
            kind,
            text: sanitize(text),
        });
        self.pushed += 1;
    }

    /// Lines held now.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when nothing was printed yet.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Sequence number of the oldest line held.
    pub fn first_seq(&self) -> u64 {
        self.pushed - self.lines.len() as u64
    }

    /// Sequence number the next line will get (= lines ever pushed).
    pub fn end_seq(&self) -> u64 {
        self.pushed
    }

    /// Up to `count` lines starting at sequence number `from` (clamped to what is held).
    pub fn window(&self, from: u64, count: usize) -> impl Iterator<Item = &OutputLine> {
        let start = from.saturating_sub(self.first_seq()) as usize;
        self.lines.iter().skip(start).take(count)
    }

    /// The last `count` lines' text.
    pub fn tail(&self, count: usize) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(count);
        self.lines.iter().skip(skip).map(|l| l.text.clone()).collect()
    }
}

/// What the operator needs to see about a failure without scrolling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    /// The failed task's stage, when a task failed (not set for an unreachable node).
    pub stage: Option<String>,
    /// The failed task.
    pub task: Option<String>,
    /// The command's exit code, if it ran to an exit.
    pub exit_code: Option<i32>,
    /// The error kubeboot reported (timeout, connection lost, ...).
    pub error: Option<String>,
    /// The last output lines at the moment of failure.
    pub last_lines: Vec<String>,
}

/// One node as the TUI shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Name from the inventory.
    pub name: String,
    /// Its cluster, if any.
    pub cluster: Option<String>,
    /// `host:port`.
    pub address: String,
    /// Where it is.
    pub state: NodeState,
    /// Its tasks in plan order.
    pub tasks: Vec<TaskView>,
    /// Index into `tasks` of the running task.
    pub current: Option<usize>,
    /// Attempt number of the running task (from 1).
    pub attempt: u32,
    /// Set while a retry of a failed attempt is pending.
    pub retrying: Option<String>,
    /// The operator asked for a retry and no event has answered yet.
    pub retry_requested: bool,
    /// When the node started (ms on the run's clock).
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// The engine's own duration for the node, once finished.
    pub duration_ms: Option<u64>,
    /// The engine's own tallies, once finished.
    pub final_counts: Option<Counts>,
    /// Its recent output.
    pub output: OutputBuffer,
    /// Why it failed.
    pub failure: Option<Failure>,
    /// What its next task waits for, while it waits.
    pub waiting_on: Option<String>,
    /// The node whose failure blocked it.
    pub blocked_by: Option<String>,
}

impl NodeView {
    fn new(outline: &NodeOutline) -> Self {
        NodeView {
            name: outline.node.clone(),
            cluster: outline.cluster.clone(),
            address: outline.address.clone(),
            state: NodeState::Waiting,
            tasks: outline.tasks.iter().map(TaskView::from_outline).collect(),
            current: None,
            attempt: 0,
            retrying: None,
            retry_requested: false,
            started_ms: None,
            finished_ms: None,
            duration_ms: None,
            final_counts: None,
            output: OutputBuffer::default(),
            failure: None,
            waiting_on: None,
            blocked_by: None,
        }
    }

    fn unknown(name: &str) -> Self {
        NodeView::new(&NodeOutline {
            node: name.to_string(),
            cluster: None,
            address: String::new(),
            tasks: vec![],
        })
    }

    /// Tallies of finished tasks: the engine's once the node finished, else counted from the tasks.
    pub fn counts(&self) -> Counts {
        if let Some(counts) = self.final_counts {
            return counts;
        }
        let mut counts = Counts::default();
        for task in &self.tasks {
            match task.state {
                TaskState::Ok => counts.add(TaskStatus::Ok),
                TaskState::Changed => counts.add(TaskStatus::Changed),
                TaskState::Skipped(_) => counts.add(TaskStatus::Skipped),
                TaskState::Failed => counts.add(TaskStatus::Failed),
                TaskState::Pending | TaskState::Running => {}
            }
        }
        counts
    }

    /// Tasks done (ok, changed or skipped).
    pub fn tasks_done(&self) -> usize {
        self.tasks.iter().filter(|t| t.state.is_done()).count()
    }

    /// Tasks failed.
    pub fn tasks_failed(&self) -> usize {
        self.tasks.iter().filter(|t| t.state == TaskState::Failed).count()
    }

    /// Tasks in the plan.
    pub fn tasks_total(&self) -> usize {
        self.tasks.len()
    }

    /// Tasks the plan skips because an earlier run finished them.
    pub fn resume_skips(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.planned_skip == Some(SkipReason::Done))
            .count()
    }

    /// The running task, if any.
    pub fn current_task(&self) -> Option<&TaskView> {
        self.current.and_then(|i| self.tasks.get(i))
    }

    /// How far the node is in `stage`.
    pub fn stage_cell(&self, stage: &str) -> StageCell {
        let mut total = 0;
        let (mut finished, mut skipped, mut running, mut failed) = (0, 0, false, false);
        for task in self.tasks.iter().filter(|t| t.stage == stage) {
            total += 1;
            match task.state {
                TaskState::Pending => {}
                TaskState::Running => running = true,
                TaskState::Failed => failed = true,
                TaskState::Skipped(_) => {
                    finished += 1;
                    skipped += 1;
                }
                TaskState::Ok | TaskState::Changed => finished += 1,
            }
        }
        if total == 0 {
            StageCell::NotApplicable
        } else if failed {
            StageCell::Failed
        } else if running {
            StageCell::Running
        } else if finished == total {
            if skipped == total {
                StageCell::Skipped
            } else {
                StageCell::Done
            }
        } else if finished > 0 && matches!(self.state, NodeState::Running | NodeState::Connecting) {
            StageCell::Running
        } else {
            StageCell::Pending
        }
    }

    /// How long the node has been (or was) running at `now_ms`.
    pub fn elapsed_ms(&self, now_ms: u64) -> Option<u64> {
        if let Some(duration) = self.duration_ms {
            return Some(duration);
        }
        let started = self.started_ms?;
        let end = self.finished_ms.unwrap_or(now_ms);
        Some(end.saturating_sub(started))
    }

    /// Finds the task an event is about: the running one if it matches, else the first unfinished one with that
    /// stage and name, else the first with that name; an unknown task is appended so nothing is lost.
    fn task_index(&mut self, stage: &str, task: &str) -> usize {
        let matches = |t: &TaskView| t.stage == stage && t.name == task;
        if let Some(i) = self.current.filter(|&i| self.tasks.get(i).is_some_and(matches)) {
            return i;
        }
        if let Some(i) = self.tasks.iter().position(|t| matches(t) && !t.state.is_done()) {
            return i;
        }
        if let Some(i) = self.tasks.iter().position(matches) {
            return i;
        }
        self.tasks.push(TaskView {
            stage: stage.to_string(),
            name: task.to_string(),
            planned_skip: None,
            state: TaskState::Pending,
        });
        self.tasks.len() - 1
    }

    /// Takes a new plan for the node, keeping what already happened to tasks that are still in it.
    fn replan(&mut self, plan: &NodeOutline) {
        let mut old: Vec<Option<TaskView>> = std::mem::take(&mut self.tasks).into_iter().map(Some).collect();
        let current = self.current.take().and_then(|i| old.get(i).and_then(|t| t.clone()));
        for outline in &plan.tasks {
            let mut task = TaskView::from_outline(outline);
            let earlier = old
                .iter_mut()
                .find(|t| t.as_ref().is_some_and(|t| t.stage == task.stage && t.name == task.name));
            if let Some(earlier) = earlier.and_then(Option::take) {
                task.state = earlier.state;
            }
            self.tasks.push(task);
        }
        if let Some(current) = current {
            self.current = self
                .tasks
                .iter()
                .position(|t| t.stage == current.stage && t.name == current.name);
        }
        if plan.cluster.is_some() {
            self.cluster = plan.cluster.clone();
        }
        if !plan.address.is_empty() {
            self.address = plan.address.clone();
        }
    }
}

/// What the operator decided about one host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyDecision {
    /// Not decided yet: treated like refused when the run starts.
    Undecided,
    /// Record the key in known_hosts when connecting.
    Accept,
    /// Do not record it: the node fails with the unknown-host error.
    Refuse,
}

/// A host key prompt with the operator's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyView {
    /// What was found.
    pub prompt: HostKeyPrompt,
    /// What the operator decided.
    pub decision: HostKeyDecision,
}

/// The host key look while it runs: the confirmation screen shows each node's answer as it comes and
/// starts nothing until every node has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyCheck {
    /// Each node looked at, in node order, with its answer once it came.
    pub nodes: Vec<(String, Option<HostKeyAnswer>)>,
}

impl HostKeyCheck {
    /// How many nodes have answered.
    pub fn answered(&self) -> usize {
        self.nodes.iter().filter(|(_, a)| a.is_some()).count()
    }
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

    /// Shows these host keys on the confirmation screen, all undecided (changed ones stay refused).
    pub fn set_host_keys(&mut self, prompts: Vec<HostKeyPrompt>) {
        self.host_keys = prompts
            .into_iter()
            .map(|prompt| HostKeyView {
                decision: match prompt.issue {
                    HostKeyIssue::Unknown => HostKeyDecision::Undecided,
                    HostKeyIssue::Changed { .. } => HostKeyDecision::Refuse,
                },
                prompt,
            })
            .collect();
        self.host_key_selected = 0;
    }

    /// The confirmation screen says it is looking at these nodes' host keys; it starts nothing until each
    /// has answered ([`App::host_key_answered`]). No nodes: nothing to wait for.
    pub fn start_host_key_check(&mut self, nodes: Vec<String>) {
        self.host_key_check = (!nodes.is_empty()).then(|| HostKeyCheck {
            nodes: nodes.into_iter().map(|n| (n, None)).collect(),
        });
    }

    /// One node's answer; when it is the last, the keys to decide on are shown (in node order).
    pub fn host_key_answered(&mut self, node: &str, answer: HostKeyAnswer) {
        let Some(check) = &mut self.host_key_check else {
            return;
        };
        if let Some((_, slot)) = check.nodes.iter_mut().find(|(n, _)| n == node) {
            *slot = Some(answer);
        }
        if check.answered() == check.nodes.len() {
            self.finish_host_key_check();
        }
    }

    /// Ends the look: nodes that have not answered count as not answering (the run reports them).
    pub fn finish_host_key_check(&mut self) {
        let Some(check) = self.host_key_check.take() else {
            return;
        };
        let prompts = check
            .nodes
            .into_iter()
            .filter_map(|(_, answer)| match answer {
                Some(HostKeyAnswer::Found(prompt)) => Some(prompt),
                _ => None,
            })
            .collect();
        self.set_host_keys(prompts);
    }

    /// True while the host key look runs (the run cannot be started yet).
    pub fn checking_host_keys(&self) -> bool {
        self.host_key_check.is_some()
    }

    /// The nodes whose unknown host key the operator accepted.
    pub fn accepted_host_keys(&self) -> HashSet<String> {
        self.host_keys
            .iter()
            .filter(|k| k.decision == HostKeyDecision::Accept && k.prompt.issue == HostKeyIssue::Unknown)
            .map(|k| k.prompt.node.clone())
            .collect()
    }

    fn decide_host_key(&mut self, decision: HostKeyDecision) {
        if self.screen != Screen::Confirm {
            return;
        }
        if let Some(key) = self.host_keys.get_mut(self.host_key_selected)
            && key.prompt.issue == HostKeyIssue::Unknown
        {
            key.decision = decision;
        }
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

    /// Applies an operator action; `page` is the output pane's height in lines. Returns what the loop must do.
    pub fn act(&mut self, action: Action, page: usize) -> Option<Effect> {
        let page = page.max(1);
        match action {
            // The operator decides on the host keys once they are all in.
            Action::Start if self.checking_host_keys() => {}
            Action::Start => {
                self.screen = Screen::Running;
                return Some(Effect::Go(true));
            }
            Action::Decline => return Some(Effect::Go(false)),
            Action::Up if self.screen == Screen::Confirm => {
                self.host_key_selected = self.host_key_selected.saturating_sub(1);
            }
            Action::Down if self.screen == Screen::Confirm => {
                self.host_key_selected = (self.host_key_selected + 1).min(self.host_keys.len().saturating_sub(1));
            }
            Action::AcceptHostKey => self.decide_host_key(HostKeyDecision::Accept),
            Action::RefuseHostKey => self.decide_host_key(HostKeyDecision::Refuse),
            Action::Up => match self.focus {
                Focus::List => self.select(self.selected.saturating_sub(1)),
                Focus::Output => self.scroll_up(1, page),
            },
            Action::Down => match self.focus {
                Focus::List => self.select(self.selected + 1),
                Focus::Output => self.scroll_down(1, page),
            },
            Action::ToggleFocus => {
                self.focus = match self.focus {
                    Focus::List => Focus::Output,
                    Focus::Output => Focus::List,
                }
            }
            Action::ScrollUp(n) => self.scroll_up(n, page),
            Action::ScrollDown(n) => self.scroll_down(n, page),
            Action::PageUp => self.scroll_up(page.saturating_sub(1).max(1), page),
            Action::PageDown => self.scroll_down(page.saturating_sub(1).max(1), page),
            Action::Home => {
                self.follow = false;
                self.scroll_top = self.selected_node().map_or(0, |n| n.output.first_seq());
            }
            Action::End => self.follow = true,
            Action::ToggleFollow => {
                if self.follow {
                    self.scroll_top = self.bottom_top(page);
                }
                self.follow = !self.follow;
            }
            Action::Retry => {
                // After `run_finished` the engine still takes retries until the screen lets go of it.
                let engine_gone = self.events_closed;
                let node = self.nodes.get_mut(self.selected)?;
                if node.state != NodeState::Failed || engine_gone || self.cancelling {
                    return None;
                }
                node.retry_requested = true;
                if self.run_end.take().is_some() {
                    self.screen = Screen::Running;
                    self.follow = true;
                }
                return Some(Effect::Control(Control::Retry {
                    node: node.name.clone(),
                }));
            }
            Action::AskQuit => {
                if self.run_over() {
                    return self.leave_run_view();
                }
                self.quit_confirm = true;
            }
            Action::ConfirmQuit => {
                self.quit_confirm = false;
                return self.quit();
            }
            Action::Dismiss => {
                self.quit_confirm = false;
                self.help = false;
            }
            Action::Interrupt => {
                self.quit_confirm = false;
                return match self.screen {
                    Screen::Confirm => Some(Effect::Go(false)),
                    Screen::Summary => Some(Effect::Exit),
                    // A second Ctrl-C while cancelling leaves without waiting for the engine.
                    Screen::Running if self.cancelling => Some(Effect::Exit),
                    Screen::Running => self.quit(),
                };
            }
            Action::ToggleHelp => self.help = !self.help,
            Action::Leave => return Some(Effect::Exit),
            Action::ShowRun => {
                self.screen = Screen::Running;
                self.follow = true;
            }
        }
        None
    }

    fn quit(&mut self) -> Option<Effect> {
        if self.run_over() {
            return Some(Effect::Exit);
        }
        self.leaving = true;
        if self.cancelling {
            return None;
        }
        self.cancelling = true;
        Some(Effect::Control(Control::Cancel))
    }

    fn leave_run_view(&mut self) -> Option<Effect> {
        if self.cancelling || self.leaving {
            return Some(Effect::Exit);
        }
        self.screen = Screen::Summary;
        None
    }

    fn select(&mut self, index: usize) {
        let index = index.min(self.nodes.len().saturating_sub(1));
        if index != self.selected {
            self.selected = index;
            self.follow = true;
        }
    }

    /// The first visible line when showing the newest lines in a pane of `page` lines.
    fn bottom_top(&self, page: usize) -> u64 {
        self.selected_node().map_or(0, |n| {
            n.output.end_seq().saturating_sub(page as u64).max(n.output.first_seq())
        })
    }

    /// The first visible output line for a pane of `page` lines.
    pub fn output_top(&self, page: usize) -> u64 {
        let bottom = self.bottom_top(page);
        if self.follow {
            return bottom;
        }
        let first = self.selected_node().map_or(0, |n| n.output.first_seq());
        self.scroll_top.clamp(first, bottom.max(first))
    }

    fn scroll_up(&mut self, lines: usize, page: usize) {
        let top = self.output_top(page);
        self.follow = false;
        self.scroll_top = top.saturating_sub(lines as u64);
        self.scroll_top = self.output_top(page);
    }

    fn scroll_down(&mut self, lines: usize, page: usize) {
        if self.follow {
            return;
        }
        self.scroll_top = self.output_top(page) + lines as u64;
        if self.scroll_top >= self.bottom_top(page) {
            // Reaching the end picks the live tail up again, like `tail -f`.
            self.follow = true;
        }
    }
}

/// Makes a remote line safe to draw: keeps what a terminal would show after carriage returns, drops escape
/// sequences and control characters, expands tabs and caps the length.
pub fn sanitize(line: &str) -> String {
    let line = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(line.len().min(MAX_LINE_CHARS));
    let mut count = 0;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if count >= MAX_LINE_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters then one final byte in @..~
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: ends with BEL or ESC \
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => {
                let spaces = 4 - count % 4;
                out.extend(std::iter::repeat_n(' ', spaces));
                count += spaces;
            }
            c if c.is_control() => {}
            c => {
                out.push(c);
                count += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(node: &str) -> NodeOutline {
        let task = |stage: &str, task: &str| TaskOutline {
            stage: stage.into(),
            task: task.into(),
            skip: None,
        };
        NodeOutline {
            node: node.into(),
            cluster: Some("c1".into()),
            address: "10.0.0.1:22".into(),
            tasks: vec![task("prep", "a"), task("prep", "b"), task("install", "c")],
        }
    }

    fn app() -> App {
        let mut app = App::new(
            "run",
            vec!["prep".into(), "install".into()],
            &[plan("n1"), plan("n2")],
            "logs".into(),
        );
        let _ = app.act(Action::Start, 10);
        app
    }

    fn started(node: &str, stage: &str, task: &str) -> Event {
        Event::TaskStarted {
            node: node.into(),
            stage: stage.into(),
            task: task.into(),
            index: 0,
            total: 3,
            attempt: 1,
            why: None,
        }
    }

    fn finished(node: &str, stage: &str, task: &str, status: TaskStatus) -> Event {
        Event::TaskFinished {
            node: node.into(),
            stage: stage.into(),
            task: task.into(),
            status,
            reason: None,
            fingerprint: String::new(),
            inputs: Default::default(),
            exit_code: (status == TaskStatus::Failed).then_some(2),
            error: None,
            duration_ms: 5,
        }
    }

    fn node_finished(node: &str, status: NodeStatus) -> Event {
        Event::NodeFinished {
            node: node.into(),
            status,
            error: None,
            blocked_by: None,
            counts: Counts::default(),
            duration_ms: 9,
        }
    }

    fn run_finished() -> Event {
        Event::RunFinished {
            nodes_ok: 0,
            nodes_failed: 0,
            nodes_cancelled: 0,
            nodes_blocked: 0,
            counts: Counts::default(),
            duration_ms: 10,
            interrupted: false,
        }
    }

    #[test]
    fn the_output_buffer_keeps_only_the_newest_lines() {
        let mut buffer = OutputBuffer::default();
        for i in 0..OUTPUT_LINES_PER_NODE + 10 {
            buffer.push(LineKind::Stdout, &format!("line {i}"));
        }
        assert_eq!(buffer.len(), OUTPUT_LINES_PER_NODE);
        assert_eq!(buffer.first_seq(), 10);
        assert_eq!(buffer.window(10, 1).next().map(|l| l.text.as_str()), Some("line 10"));
        assert_eq!(buffer.tail(1), vec![format!("line {}", OUTPUT_LINES_PER_NODE + 9)]);
    }

    #[test]
    fn sanitize_drops_escapes_and_keeps_what_follows_a_carriage_return() {
        assert_eq!(sanitize("\u{1b}[31mred\u{1b}[0m text"), "red text");
        assert_eq!(sanitize(" 10%\r 50%\r100%"), "100%");
        assert_eq!(sanitize("done\r"), "done");
        assert_eq!(sanitize("a\tb\u{7}"), "a   b");
        assert_eq!(sanitize("\u{1b}]0;title\u{7}ok"), "ok");
        assert_eq!(sanitize(&"x".repeat(5000)).chars().count(), MAX_LINE_CHARS + 1);
    }

    #[test]
    fn finished_tasks_count_as_done_and_fill_the_stage_matrix() {
        let mut app = app();
        app.apply(&started("n1", "prep", "a"), 1);
        assert_eq!(app.nodes[0].stage_cell("prep"), StageCell::Running);
        app.apply(&finished("n1", "prep", "a", TaskStatus::Changed), 2);
        app.apply(&finished("n1", "prep", "b", TaskStatus::Ok), 3);
        assert_eq!(app.nodes[0].tasks_done(), 2);
        assert_eq!(app.nodes[0].stage_cell("prep"), StageCell::Done);
        assert_eq!(app.nodes[0].stage_cell("install"), StageCell::Pending);
        assert_eq!(app.nodes[0].stage_cell("other"), StageCell::NotApplicable);
        assert_eq!(app.task_progress(), (2, 6));
    }

    #[test]
    fn a_failed_task_keeps_its_exit_code_and_last_lines() {
        let mut app = app();
        app.apply(&started("n1", "prep", "a"), 1);
        app.apply(
            &Event::Output {
                node: "n1".into(),
                stream: Stream::Stderr,
                line: "boom".into(),
            },
            1,
        );
        app.apply(&finished("n1", "prep", "a", TaskStatus::Failed), 2);
        app.apply(&node_finished("n1", NodeStatus::Failed), 3);
        let node = &app.nodes[0];
        assert_eq!(node.state, NodeState::Failed);
        let failure = node
            .failure
            .as_ref()
            .map(|f| (f.exit_code, f.task.clone(), f.last_lines.last().cloned()));
        assert_eq!(failure, Some((Some(2), Some("a".into()), Some("boom".into()))));
        assert_eq!(node.stage_cell("prep"), StageCell::Failed);
    }

    #[test]
    fn retry_is_sent_only_for_a_failed_node_which_runs_again_when_events_arrive() {
        let mut app = app();
        assert_eq!(app.act(Action::Retry, 10), None);
        app.apply(&finished("n1", "prep", "a", TaskStatus::Failed), 2);
        app.apply(&node_finished("n1", NodeStatus::Failed), 3);
        assert_eq!(
            app.act(Action::Retry, 10),
            Some(Effect::Control(Control::Retry { node: "n1".into() }))
        );
        assert!(app.nodes[0].retry_requested);
        app.apply(&started("n1", "prep", "a"), 4);
        let node = &app.nodes[0];
        assert_eq!(node.state, NodeState::Running);
        assert!(node.failure.is_none() && !node.retry_requested);
        assert_eq!(node.tasks_failed(), 0);
    }

    #[test]
    fn quit_asks_then_cancels_and_leaves_once_the_run_has_stopped() {
        let mut app = app();
        assert_eq!(app.act(Action::AskQuit, 10), None);
        assert!(app.quit_confirm);
        assert_eq!(app.act(Action::ConfirmQuit, 10), Some(Effect::Control(Control::Cancel)));
        assert!(!app.should_exit());
        app.apply(&run_finished(), 5);
        assert!(app.should_exit());
    }

    #[test]
    fn a_second_ctrl_c_leaves_without_waiting_for_the_engine() {
        let mut app = app();
        assert_eq!(app.act(Action::Interrupt, 10), Some(Effect::Control(Control::Cancel)));
        assert_eq!(app.act(Action::Interrupt, 10), Some(Effect::Exit));
    }

    #[test]
    fn declining_the_confirmation_starts_nothing() {
        let mut app = App::new("run", vec![], &[plan("n1")], "logs".into());
        assert_eq!(app.act(Action::Decline, 10), Some(Effect::Go(false)));
        assert_eq!(app.act(Action::Interrupt, 10), Some(Effect::Go(false)));
        assert_eq!(app.screen, Screen::Confirm);
    }

    #[test]
    fn the_end_of_the_run_opens_the_summary_which_stays_until_left() {
        let mut app = app();
        app.apply(&run_finished(), 5);
        assert_eq!(app.screen, Screen::Summary);
        assert_eq!(app.act(Action::ShowRun, 10), None);
        assert_eq!(app.act(Action::AskQuit, 10), None);
        assert_eq!(app.screen, Screen::Summary);
        assert_eq!(app.act(Action::Leave, 10), Some(Effect::Exit));
    }

    #[test]
    fn scrolling_up_pauses_follow_and_reaching_the_end_resumes_it() {
        let mut app = app();
        for i in 0..100 {
            app.apply(
                &Event::Output {
                    node: "n1".into(),
                    stream: Stream::Stdout,
                    line: format!("{i}"),
                },
                1,
            );
        }
        assert_eq!(app.output_top(10), 90);
        let _ = app.act(Action::PageUp, 10);
        assert!(!app.follow);
        assert_eq!(app.output_top(10), 81);
        // New output does not move a paused pane.
        app.apply(
            &Event::Output {
                node: "n1".into(),
                stream: Stream::Stdout,
                line: "new".into(),
            },
            2,
        );
        assert_eq!(app.output_top(10), 81);
        let _ = app.act(Action::Home, 10);
        assert_eq!(app.output_top(10), 0);
        let _ = app.act(Action::End, 10);
        assert!(app.follow);
        let _ = app.act(Action::ScrollUp(3), 10);
        let _ = app.act(Action::ScrollDown(3), 10);
        assert!(app.follow);
    }

    #[test]
    fn events_about_unknown_nodes_and_tasks_are_added_not_dropped() {
        let mut app = app();
        app.apply(&finished("n9", "extra", "z", TaskStatus::Ok), 1);
        assert_eq!(app.nodes.len(), 3);
        assert_eq!(app.nodes[2].tasks_total(), 1);
        assert_eq!(app.nodes[2].tasks_done(), 1);
    }

    #[test]
    fn a_new_plan_keeps_what_already_finished() {
        let mut app = app();
        app.apply(&finished("n1", "prep", "a", TaskStatus::Ok), 1);
        let mut replan = plan("n1");
        replan.tasks.push(TaskOutline {
            stage: "install".into(),
            task: "d".into(),
            skip: None,
        });
        app.apply(
            &Event::NodePlanned {
                node: "n1".into(),
                plan: replan,
            },
            2,
        );
        assert_eq!(app.nodes[0].tasks_total(), 4);
        assert_eq!(app.nodes[0].tasks_done(), 1);
    }

    #[test]
    fn skipped_tasks_from_an_earlier_run_show_as_skipped() {
        let mut app = app();
        for task in ["a", "b"] {
            app.apply(
                &Event::TaskFinished {
                    node: "n1".into(),
                    stage: "prep".into(),
                    task: task.into(),
                    status: TaskStatus::Skipped,
                    reason: Some(SkipReason::Done),
                    fingerprint: String::new(),
                    inputs: Default::default(),
                    exit_code: None,
                    error: None,
                    duration_ms: 0,
                },
                1,
            );
        }
        assert_eq!(app.nodes[0].stage_cell("prep"), StageCell::Skipped);
        assert_eq!(app.nodes[0].counts().skipped, 2);
    }

    #[test]
    fn elapsed_times_come_from_the_times_given() {
        let mut app = app();
        app.apply(
            &Event::NodeConnecting {
                node: "n1".into(),
                address: String::new(),
            },
            1_000,
        );
        app.tick(61_000);
        assert_eq!(app.nodes[0].elapsed_ms(app.now_ms), Some(60_000));
        assert_eq!(duration(60_000), "1m00s");
        assert_eq!(duration(3_723_000), "1h02m");
    }
}
