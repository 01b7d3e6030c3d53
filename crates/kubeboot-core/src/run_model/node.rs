//! One node of the run model: where it is, its tasks in plan order and how far it is in each stage.

use std::fmt::Write as _;

use crate::event::{Counts, NodeOutline, NodeStatus, SkipReason, TaskOutline, TaskStatus};

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

/// One task as the run model tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRun {
    /// The stage (playbook) it belongs to.
    pub stage: String,
    /// The task's name.
    pub name: String,
    /// The plan already knows the task will be skipped (and why).
    pub planned_skip: Option<SkipReason>,
    /// Where it is now.
    pub state: TaskState,
}

impl TaskRun {
    fn from_outline(outline: &TaskOutline) -> Self {
        TaskRun {
            stage: outline.stage.clone(),
            name: outline.task.clone(),
            planned_skip: outline.skip,
            state: TaskState::Pending,
        }
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
}

/// An attempt that failed while the task will be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrying {
    /// The attempt that failed (from 1).
    pub attempt: u32,
    /// Why it failed.
    pub error: String,
    /// How long the engine waits before the next attempt.
    pub delay_ms: u64,
}

/// One node's row of the run model.
#[derive(Debug, Clone)]
pub struct NodeRun {
    /// Name from the inventory.
    pub name: String,
    /// Its cluster, if any.
    pub cluster: Option<String>,
    /// `host:port`.
    pub address: String,
    /// Where it is.
    pub state: NodeState,
    /// Its tasks in plan order.
    pub tasks: Vec<TaskRun>,
    /// Index into `tasks` of the running task.
    pub current: Option<usize>,
    /// Attempt number of the running task (from 1).
    pub attempt: u32,
    /// Set while a retry of a failed attempt is pending.
    pub retrying: Option<Retrying>,
    /// When the node started (ms on the run's clock).
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// The engine's own duration for the node, once finished.
    pub duration_ms: Option<u64>,
    /// The engine's own tallies, once finished.
    pub final_counts: Option<Counts>,
    /// How the engine said it ended (`node_finished`); None while it runs, and when the run stopped without it.
    pub ended: Option<NodeStatus>,
    /// The engine's one-line reason from `node_finished` (why it failed, was cancelled or blocked).
    pub error: Option<String>,
    /// Why it failed.
    pub failure: Option<Failure>,
    /// What its next task waits for, while it waits.
    pub waiting_on: Option<String>,
    /// The node whose failure blocked it.
    pub blocked_by: Option<String>,
}

impl NodeRun {
    pub(super) fn new(outline: &NodeOutline) -> Self {
        NodeRun {
            name: outline.node.clone(),
            cluster: outline.cluster.clone(),
            address: outline.address.clone(),
            state: NodeState::Waiting,
            tasks: outline.tasks.iter().map(TaskRun::from_outline).collect(),
            current: None,
            attempt: 0,
            retrying: None,
            started_ms: None,
            finished_ms: None,
            duration_ms: None,
            final_counts: None,
            ended: None,
            error: None,
            failure: None,
            waiting_on: None,
            blocked_by: None,
        }
    }

    pub(super) fn unknown(name: &str) -> Self {
        NodeRun::new(&NodeOutline {
            node: name.to_string(),
            cluster: None,
            address: String::new(),
            tasks: vec![],
        })
    }

    /// `node: stage / task (exit 2): error`, as far as the failure is known (`node: failed` when nothing is).
    pub fn failure_text(&self) -> String {
        let mut text = self.name.clone();
        let Some(failure) = &self.failure else {
            return format!("{text}: failed");
        };
        if let (Some(stage), Some(task)) = (&failure.stage, &failure.task) {
            let _ = write!(text, ": {stage} / {task}");
        }
        if let Some(code) = failure.exit_code {
            let _ = write!(text, " (exit {code})");
        }
        if let Some(error) = &failure.error {
            let _ = write!(text, ": {error}");
        }
        text
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
    pub fn current_task(&self) -> Option<&TaskRun> {
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
    pub(super) fn task_index(&mut self, stage: &str, task: &str) -> usize {
        let matches = |t: &TaskRun| t.stage == stage && t.name == task;
        if let Some(i) = self.current.filter(|&i| self.tasks.get(i).is_some_and(matches)) {
            return i;
        }
        if let Some(i) = self.tasks.iter().position(|t| matches(t) && !t.state.is_done()) {
            return i;
        }
        if let Some(i) = self.tasks.iter().position(matches) {
            return i;
        }
        self.tasks.push(TaskRun {
            stage: stage.to_string(),
            name: task.to_string(),
            planned_skip: None,
            state: TaskState::Pending,
        });
        self.tasks.len() - 1
    }

    /// Takes a new plan for the node, keeping what already happened to tasks that are still in it.
    pub(super) fn replan(&mut self, plan: &NodeOutline) {
        let mut old: Vec<Option<TaskRun>> = std::mem::take(&mut self.tasks).into_iter().map(Some).collect();
        let current = self.current.take().and_then(|i| old.get(i).and_then(|t| t.clone()));
        for outline in &plan.tasks {
            let mut task = TaskRun::from_outline(outline);
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
