//! The end-of-run summary: how each node ended and one table rendered from it, derived from the core's
//! [`RunModel`] (the one fold of the run's events). The headless printer derives it from what the engine recorded
//! ([`Summary::recorded`]: each node's `node_finished`, its words for why); the TUI from what its screen showed
//! ([`Summary::live`]: tallies and times as they stood, where a node failed). Both print [`Summary::text`] when the
//! run is over, and the TUI's summary screen draws the same model: its rows, columns ([`COLUMNS`]), title, tally
//! and reasons.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::event::{Counts, NodeStatus};
use crate::fanout::node_log_path;
use crate::run_model::{NodeRun, NodeState, RunModel};

/// The table's columns, in order.
pub const COLUMNS: [&str; 8] = ["NODE", "RESULT", "CHANGED", "OK", "SKIPPED", "FAILED", "TIME", "LOG"];

/// How a node ended (or where it was when the run stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeResult {
    /// Never started.
    #[default]
    NotRun,
    /// Started and not finished (the run stopped around it).
    Running,
    /// Every task finished.
    Ok,
    /// A task failed for good, or the node could not be reached.
    Failed,
    /// Cut short by a cancel.
    Cancelled,
    /// Stopped because a node it waits for failed.
    Blocked,
}

impl NodeResult {
    /// The word in the RESULT column (the two that need the operator in capitals).
    pub fn word(self) -> &'static str {
        match self {
            NodeResult::NotRun => "not run",
            NodeResult::Running => "running",
            NodeResult::Ok => "ok",
            NodeResult::Failed => "FAILED",
            NodeResult::Cancelled => "cancelled",
            NodeResult::Blocked => "BLOCKED",
        }
    }
}

impl From<NodeStatus> for NodeResult {
    fn from(status: NodeStatus) -> Self {
        match status {
            NodeStatus::Ok => NodeResult::Ok,
            NodeStatus::Failed => NodeResult::Failed,
            NodeStatus::Cancelled => NodeResult::Cancelled,
            NodeStatus::Blocked => NodeResult::Blocked,
        }
    }
}

/// One node's row.
#[derive(Debug, Clone, Default)]
pub struct NodeRow {
    /// The node's name.
    pub node: String,
    /// How it ended.
    pub result: NodeResult,
    /// Its task tallies.
    pub counts: Counts,
    /// How long it ran; None when it never started.
    pub duration_ms: Option<u64>,
    /// Why it failed or was blocked, in one line.
    pub why: Option<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// How the run ended, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    /// The whole run's task tallies.
    pub counts: Counts,
    /// The whole run's duration.
    pub duration_ms: u64,
    /// It was interrupted (Ctrl-C, a cancel).
    pub interrupted: bool,
}

/// The end-of-run summary of one run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The run's id.
    pub run_id: String,
    /// One row per node, in plan order.
    pub nodes: Vec<NodeRow>,
    /// How the run ended; None when it stopped without a `run_finished`.
    pub end: Option<RunEnd>,
    /// How long the run has been going (used while `end` is None).
    pub elapsed_ms: u64,
}

impl From<NodeState> for NodeResult {
    fn from(state: NodeState) -> Self {
        match state {
            NodeState::Waiting => NodeResult::NotRun,
            NodeState::Connecting | NodeState::Running | NodeState::WaitingOnOthers => NodeResult::Running,
            NodeState::Done => NodeResult::Ok,
            NodeState::Failed => NodeResult::Failed,
            NodeState::Cancelled => NodeResult::Cancelled,
            NodeState::Blocked => NodeResult::Blocked,
        }
    }
}

impl Summary {
    /// The summary of what the engine recorded: each node as its `node_finished` left it (`running` when it
    /// started and has none, `not run` when it never started), the engine's tallies, duration and reason.
    pub fn recorded(run: &RunModel, log_dir: &Path) -> Self {
        Summary::derive(run, run.end.map_or(0, |e| e.duration_ms), |node| NodeRow {
            node: node.name.clone(),
            result: match node.ended {
                Some(status) => status.into(),
                None if node.started_ms.is_some() => NodeResult::Running,
                None => NodeResult::NotRun,
            },
            counts: node.final_counts.unwrap_or_default(),
            duration_ms: node.duration_ms,
            why: node.error.clone(),
            log: node_log_path(log_dir, &node.name),
        })
    }

    /// The summary of what the screen showed at the model's time: each node's state, its tallies counted from
    /// its tasks until it finished, its time so far, and where it failed or who blocked it.
    pub fn live(run: &RunModel, log_dir: &Path) -> Self {
        Summary::derive(run, run.elapsed_ms(), |node| NodeRow {
            node: node.name.clone(),
            result: node.state.into(),
            counts: node.counts(),
            duration_ms: node.elapsed_ms(run.now_ms),
            why: match node.state {
                NodeState::Failed => node
                    .failure_text()
                    .strip_prefix(&format!("{}: ", node.name))
                    .map(str::to_string),
                NodeState::Blocked => node.blocked_by.as_ref().map(|by| format!("blocked by {by}")),
                _ => None,
            },
            log: node_log_path(log_dir, &node.name),
        })
    }

    fn derive(run: &RunModel, elapsed_ms: u64, row: impl Fn(&NodeRun) -> NodeRow) -> Self {
        Summary {
            run_id: run.run_id.clone(),
            nodes: run.nodes.iter().map(row).collect(),
            end: run.end.map(|e| RunEnd {
                counts: e.counts,
                duration_ms: e.duration_ms,
                interrupted: e.interrupted,
            }),
            elapsed_ms,
        }
    }

    /// How many nodes ended this way.
    pub fn count(&self, result: NodeResult) -> usize {
        self.nodes.iter().filter(|r| r.result == result).count()
    }

    /// The run's task tallies: the engine's when the run finished, else the nodes' added up.
    pub fn totals(&self) -> Counts {
        if let Some(end) = self.end {
            return end.counts;
        }
        let mut all = Counts::default();
        for c in self.nodes.iter().map(|r| &r.counts) {
            all.ok += c.ok;
            all.changed += c.changed;
            all.skipped += c.skipped;
            all.failed += c.failed;
        }
        all
    }

    /// The nodes that failed or were blocked, each with why.
    pub fn reasons(&self) -> impl Iterator<Item = (&NodeRow, &str)> {
        self.nodes.iter().filter_map(|row| match (row.result, &row.why) {
            (NodeResult::Failed | NodeResult::Blocked, Some(why)) => Some((row, why.as_str())),
            _ => None,
        })
    }

    /// `run <id> finished in 2m50s` (or interrupted after, or stopped after).
    pub fn title(&self) -> String {
        match self.end {
            Some(end) if end.interrupted => {
                format!("run {} interrupted after {}", self.run_id, duration(end.duration_ms))
            }
            Some(end) => format!("run {} finished in {}", self.run_id, duration(end.duration_ms)),
            None => format!("run {} stopped after {}", self.run_id, duration(self.elapsed_ms)),
        }
    }

    /// `3 nodes ok, 1 failed, 0 cancelled` (and the blocked ones, when there are).
    pub fn tally(&self) -> String {
        let ok = self.count(NodeResult::Ok);
        let mut text = format!(
            "{ok} {} ok, {} failed, {} cancelled",
            if ok == 1 { "node" } else { "nodes" },
            self.count(NodeResult::Failed),
            self.count(NodeResult::Cancelled)
        );
        let blocked = self.count(NodeResult::Blocked);
        if blocked > 0 {
            let _ = write!(text, ", {blocked} blocked");
        }
        text
    }

    /// The printed table: one line per node, the run's outcome, why each failed node failed, and what to do next.
    pub fn text(&self) -> String {
        let width = self
            .nodes
            .iter()
            .map(|r| r.node.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let [node, result, changed, ok, skipped, failed, time, log] = COLUMNS;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{node:<width$}  {result:<9}  {changed:>7}  {ok:>4}  {skipped:>7}  {failed:>6}  {time:>6}  {log}"
        );
        for row in &self.nodes {
            let c = &row.counts;
            let _ = writeln!(
                out,
                "{:<width$}  {:<9}  {:>7}  {:>4}  {:>7}  {:>6}  {:>6}  {}",
                row.node,
                row.result.word(),
                c.changed,
                c.ok,
                c.skipped,
                c.failed,
                row.duration_ms.map(duration).unwrap_or_else(|| "-".into()),
                row.log.display()
            );
        }
        let _ = write!(out, "\n{}: {}", self.title(), self.tally());
        if self.end.is_some_and(|e| e.interrupted) {
            out.push_str(" — progress is saved, run `kubeboot apply` again to continue");
        }
        out.push('\n');
        for (row, why) in self.reasons() {
            let _ = writeln!(out, "{}: {}: {why}", row.result.word().to_lowercase(), row.node);
        }
        let stopped = self.count(NodeResult::Failed) + self.count(NodeResult::Blocked) > 0;
        if stopped && self.end.is_some_and(|e| !e.interrupted) {
            out.push_str("Fix the cause and run `kubeboot apply` again: finished tasks are not repeated.\n");
            out.push_str(
                "After resetting a node by hand, add `--fresh` (with `--limit`/`--from`) so its finished tasks run again.\n",
            );
        }
        out
    }
}

/// A duration as the summary shows it: `58s`, `2m28s`, `1h05m`.
pub fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, NodeOutline};

    fn outline(node: &str) -> NodeOutline {
        NodeOutline {
            node: node.into(),
            cluster: None,
            address: "127.0.0.1:22".into(),
            tasks: Vec::new(),
        }
    }

    #[test]
    fn a_failed_node_is_named_with_its_reason_and_what_to_do_next() {
        let mut s = RunModel::default();
        s.apply(
            &Event::RunStarted {
                run_id: "r1".into(),
                stages: Vec::new(),
                nodes: vec![outline("node-1"), outline("node-2"), outline("node-3")],
                dry_run: false,
            },
            0,
        );
        s.apply(
            &Event::NodeConnecting {
                node: "node-2".into(),
                address: "127.0.0.1:22".into(),
            },
            0,
        );
        s.apply(
            &Event::NodeFinished {
                node: "node-1".into(),
                status: NodeStatus::Ok,
                error: None,
                blocked_by: None,
                counts: Counts {
                    ok: 2,
                    changed: 3,
                    skipped: 1,
                    failed: 0,
                },
                duration_ms: 62_000,
            },
            0,
        );
        s.apply(
            &Event::NodeFinished {
                node: "node-2".into(),
                status: NodeStatus::Failed,
                error: Some("files / check failed: exit code 1".into()),
                blocked_by: None,
                counts: Counts {
                    failed: 1,
                    ..Counts::default()
                },
                duration_ms: 1_500,
            },
            0,
        );
        s.apply(
            &Event::RunFinished {
                nodes_ok: 1,
                nodes_failed: 1,
                nodes_cancelled: 0,
                nodes_blocked: 0,
                counts: Counts::default(),
                duration_ms: 63_000,
                interrupted: false,
            },
            0,
        );
        let text = Summary::recorded(&s, Path::new("logs")).text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), COLUMNS);
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["node-1", "ok", "3", "2", "1", "0", "1m02s", "logs/node-1.log"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["node-2", "FAILED", "0", "0", "0", "1", "1s", "logs/node-2.log"]
        );
        assert!(lines[3].starts_with("node-3  not run"), "{text}");
        assert!(lines[3].contains("  -  "), "a node that never ran has no time: {text}");
        assert!(
            text.contains("run r1 finished in 1m03s: 1 node ok, 1 failed, 0 cancelled\n"),
            "{text}"
        );
        assert!(
            text.contains("failed: node-2: files / check failed: exit code 1\n"),
            "{text}"
        );
        assert!(text.contains("Fix the cause and run `kubeboot apply` again"), "{text}");
    }

    #[test]
    fn an_interrupted_run_says_progress_is_saved_and_gives_no_fix_hint() {
        let mut s = RunModel::new("r2", Vec::new(), &[]);
        s.apply(
            &Event::NodeFinished {
                node: "node-1".into(),
                status: NodeStatus::Cancelled,
                error: None,
                blocked_by: None,
                counts: Counts::default(),
                duration_ms: 4_000,
            },
            0,
        );
        s.apply(
            &Event::RunFinished {
                nodes_ok: 0,
                nodes_failed: 0,
                nodes_cancelled: 1,
                nodes_blocked: 0,
                counts: Counts::default(),
                duration_ms: 4_100,
                interrupted: true,
            },
            0,
        );
        let text = Summary::recorded(&s, Path::new("logs")).text();
        assert!(
            text.contains("run r2 interrupted after 4s: 0 nodes ok, 0 failed, 1 cancelled — progress is saved"),
            "{text}"
        );
        assert!(!text.contains("Fix the cause"), "{text}");
    }
}
