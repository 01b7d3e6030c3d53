//! The end-of-run summary: one model of how each node ended and one table rendered from it. The headless printer
//! folds the run's events into it ([`Summary::apply`]); the TUI fills it from its view model. Both print
//! [`Summary::text`] when the run is over, and the TUI's summary screen draws the same model: its rows, columns
//! ([`COLUMNS`]), title, tally and reasons.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::event::{Counts, Event, NodeStatus};
use crate::fanout::node_log_path;

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
    /// The run's log folder.
    log_dir: PathBuf,
}

impl Summary {
    /// An empty summary whose nodes log below `log_dir`.
    pub fn new(log_dir: &Path) -> Self {
        Summary {
            log_dir: log_dir.to_path_buf(),
            ..Summary::default()
        }
    }

    fn row(&mut self, node: &str) -> &mut NodeRow {
        let i = match self.nodes.iter().position(|r| r.node == node) {
            Some(i) => i,
            None => {
                self.nodes.push(NodeRow {
                    node: node.to_string(),
                    log: node_log_path(&self.log_dir, node),
                    ..NodeRow::default()
                });
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    /// Folds one event of the run in.
    pub fn apply(&mut self, event: &Event) {
        if let Some(node) = event.node() {
            self.row(node);
        }
        match event {
            Event::RunStarted { run_id, nodes, .. } => {
                self.run_id = run_id.clone();
                for n in nodes {
                    self.row(&n.node);
                }
            }
            Event::NodeConnecting { node, .. } => {
                let row = self.row(node);
                if row.result == NodeResult::NotRun {
                    row.result = NodeResult::Running;
                }
            }
            Event::NodeFinished {
                node,
                status,
                error,
                counts,
                duration_ms,
                ..
            } => {
                let row = self.row(node);
                row.result = (*status).into();
                row.counts = *counts;
                row.duration_ms = Some(*duration_ms);
                row.why = error.clone();
            }
            Event::RunFinished {
                counts,
                duration_ms,
                interrupted,
                ..
            } => {
                self.elapsed_ms = *duration_ms;
                self.end = Some(RunEnd {
                    counts: *counts,
                    duration_ms: *duration_ms,
                    interrupted: *interrupted,
                })
            }
            _ => {}
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
    use crate::event::NodeOutline;

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
        let mut s = Summary::new(Path::new("logs"));
        s.apply(&Event::RunStarted {
            run_id: "r1".into(),
            stages: Vec::new(),
            nodes: vec![outline("node-1"), outline("node-2"), outline("node-3")],
            dry_run: false,
        });
        s.apply(&Event::NodeConnecting {
            node: "node-2".into(),
            address: "127.0.0.1:22".into(),
        });
        s.apply(&Event::NodeFinished {
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
        });
        s.apply(&Event::NodeFinished {
            node: "node-2".into(),
            status: NodeStatus::Failed,
            error: Some("files / check failed: exit code 1".into()),
            blocked_by: None,
            counts: Counts {
                failed: 1,
                ..Counts::default()
            },
            duration_ms: 1_500,
        });
        s.apply(&Event::RunFinished {
            nodes_ok: 1,
            nodes_failed: 1,
            nodes_cancelled: 0,
            nodes_blocked: 0,
            counts: Counts::default(),
            duration_ms: 63_000,
            interrupted: false,
        });
        let text = s.text();
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
        let mut s = Summary::new(Path::new("logs"));
        s.run_id = "r2".into();
        s.apply(&Event::NodeFinished {
            node: "node-1".into(),
            status: NodeStatus::Cancelled,
            error: None,
            blocked_by: None,
            counts: Counts::default(),
            duration_ms: 4_000,
        });
        s.apply(&Event::RunFinished {
            nodes_ok: 0,
            nodes_failed: 0,
            nodes_cancelled: 1,
            nodes_blocked: 0,
            counts: Counts::default(),
            duration_ms: 4_100,
            interrupted: true,
        });
        let text = s.text();
        assert!(
            text.contains("run r2 interrupted after 4s: 0 nodes ok, 0 failed, 1 cancelled — progress is saved"),
            "{text}"
        );
        assert!(!text.contains("Fix the cause"), "{text}");
    }
}
