//! The headless frontend (`--yes`, or no terminal): indicatif bars on a terminal, plain
//! node-prefixed lines in a CI log, or one JSON event per line with `--output json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::event::{Counts, Event, NodeStatus, SkipReason, Stream, TaskStatus};
use crate::fanout::{node_log_path, now};

/// How headless progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One bar per node, output lines printed above the bars (stdout is a terminal).
    Bars,
    /// Plain lines, each prefixed with the node (CI logs, pipes).
    Plain,
    /// One JSON event per line on stdout; the summary goes to stderr.
    Json,
}

/// One node's line in the final summary.
#[derive(Debug, Clone, Default)]
struct NodeRow {
    status: Option<NodeStatus>,
    counts: Counts,
    duration_ms: u64,
    error: Option<String>,
}

/// Prints events until the channel closes; returns the summary table (already printed).
pub async fn run(style: Style, mut events: mpsc::UnboundedReceiver<Event>, log_dir: PathBuf) -> String {
    let mut printer = Printer::new(style, log_dir);
    let mut batch = Vec::new();
    while events.recv_many(&mut batch, 1024).await > 0 {
        for event in batch.drain(..) {
            printer.handle(&event);
        }
        printer.flush();
    }
    printer.finish()
}

struct Printer {
    style: Style,
    log_dir: PathBuf,
    rows: BTreeMap<String, NodeRow>,
    order: Vec<String>,
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    out: std::io::BufWriter<std::io::Stdout>,
    finished: Option<Event>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a Event,
}

impl Printer {
    fn new(style: Style, log_dir: PathBuf) -> Printer {
        let bars = (style == Style::Bars).then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(10)),
                BTreeMap::new(),
            )
        });
        Printer {
            style,
            log_dir,
            rows: BTreeMap::new(),
            order: Vec::new(),
            bars,
            out: std::io::BufWriter::new(std::io::stdout()),
            finished: None,
        }
    }

    fn line(&mut self, text: String) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => {
                let _ = writeln!(self.out, "{text}");
            }
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn bar(&self, node: &str) -> Option<&ProgressBar> {
        self.bars.as_ref().and_then(|(_, bars)| bars.get(node))
    }

    fn handle(&mut self, event: &Event) {
        if let Some(node) = event.node()
            && !self.rows.contains_key(node)
        {
            self.rows.insert(node.to_string(), NodeRow::default());
            self.order.push(node.to_string());
        }
        if self.style == Style::Json {
            if let Ok(text) = serde_json::to_string(&JsonLine { ts: now(), event }) {
                let _ = writeln!(self.out, "{text}");
            }
            self.track(event);
            return;
        }
        self.track(event);
        match event {
            Event::RunStarted {
                nodes, stages, dry_run, ..
            } => {
                let tasks: usize = nodes.iter().map(|n| n.tasks.len()).sum();
                let skip = nodes
                    .iter()
                    .flat_map(|n| &n.tasks)
                    .filter(|t| t.skip == Some(SkipReason::Done))
                    .count();
                let mut text = format!(
                    "kubeboot: {} nodes, {} stages, {tasks} tasks",
                    nodes.len(),
                    stages.len()
                );
                if skip > 0 {
                    text.push_str(&format!(" ({skip} finished before, skipped)"));
                }
                if *dry_run {
                    text.push_str(" — dry run");
                }
                self.line(text);
                if let Some((multi, bars)) = &mut self.bars {
                    let style =
                        ProgressStyle::with_template("{prefix:.bold} [{bar:24}] {pos}/{len} {elapsed:>4} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> ");
                    let width = nodes.iter().map(|n| n.node.len()).max().unwrap_or(4);
                    for n in nodes {
                        let bar = multi.add(ProgressBar::new(n.tasks.len() as u64));
                        bar.set_style(style.clone());
                        bar.set_prefix(format!("{:width$}", n.node));
                        bar.set_message("waiting");
                        bar.enable_steady_tick(Duration::from_millis(200));
                        bars.insert(n.node.clone(), bar);
                    }
                }
            }
            Event::NodeConnecting { node, address } => {
                if let Some(bar) = self.bar(node) {
                    bar.set_message(format!("connecting to {address}"));
                } else {
                    self.line(format!("[{node}] connecting to {address}"));
                }
            }
            Event::NodeConnected { node, facts } => {
                let text = format!(
                    "[{node}] connected: {} {} ({}), {} CPU, {} MiB RAM",
                    facts.os_id, facts.os_version, facts.arch, facts.cpus, facts.memory_mb
                );
                self.line(text);
            }
            Event::NodePlanned { node, plan } => {
                let done = plan.tasks.iter().filter(|t| t.skip == Some(SkipReason::Done)).count();
                if let Some(bar) = self.bar(node) {
                    bar.set_length(plan.tasks.len() as u64);
                }
                if done > 0 {
                    self.line(format!(
                        "[{node}] resuming: {done} of {} tasks finished before",
                        plan.tasks.len()
                    ));
                }
            }
            Event::TaskStarted {
                node,
                stage,
                task,
                attempt,
                why,
                ..
            } => {
                let mut retry = if *attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                if let Some(why) = why {
                    retry.push_str(&format!(" — {why}"));
                }
                match self.bar(node) {
                    Some(bar) => bar.set_message(format!("{stage} / {task}{retry}")),
                    None => self.line(format!("[{node}] ▶ {stage} / {task}{retry}")),
                }
            }
            Event::TaskWaiting { node, stage, task, on } => {
                let text = format!("{stage} / {task} waits for {}", on.join(", "));
                match self.bar(node) {
                    Some(bar) => bar.set_message(format!("waiting: {text}")),
                    None => self.line(format!("[{node}] ⏸ {text}")),
                }
            }
            Event::OutputRegistered { node, name, secret, .. } => {
                let what = if *secret { " (secret, kept in memory only)" } else { "" };
                self.line(format!("[{node}] ⇢ output `{name}` registered{what}"));
            }
            Event::Output { node, stream, line } => {
                let mark = if *stream == Stream::Stderr { '!' } else { '|' };
                self.line(format!("[{node}] {mark} {line}"));
            }
            Event::TaskRetrying {
                node,
                stage,
                task,
                attempt,
                error,
                delay_ms,
            } => self.line(format!(
                "[{node}] ↻ {stage} / {task}: attempt {attempt} failed ({error}); retrying in {}",
                humantime::format_duration(Duration::from_millis(*delay_ms))
            )),
            Event::TaskFinished {
                node,
                stage,
                task,
                status,
                reason,
                error,
                duration_ms,
                ..
            } => {
                if let Some(bar) = self.bar(node) {
                    bar.inc(1);
                }
                // Tasks finished in an earlier run are summed up at `node_planned`, not listed one by one.
                if *reason == Some(SkipReason::Done) {
                    return;
                }
                let took = secs(*duration_ms);
                let text = match status {
                    TaskStatus::Ok => format!("[{node}] ✓ {stage} / {task}: ok ({took})"),
                    TaskStatus::Changed => format!("[{node}] ✓ {stage} / {task}: changed ({took})"),
                    TaskStatus::Skipped => format!(
                        "[{node}] ↷ {stage} / {task}: skipped ({})",
                        reason.map(|r| r.as_str()).unwrap_or("skipped")
                    ),
                    TaskStatus::Failed => {
                        format!(
                            "[{node}] ✗ {stage} / {task}: FAILED: {} ({took})",
                            error.as_deref().unwrap_or("failed")
                        )
                    }
                };
                if self.bars.is_none() || *status != TaskStatus::Skipped {
                    self.line(text);
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
                let text = match status {
                    NodeStatus::Ok => format!("[{node}] ● done: {} in {}", counts_text(counts), secs(*duration_ms)),
                    NodeStatus::Failed => format!("[{node}] ✗ FAILED: {}", error.as_deref().unwrap_or("failed")),
                    NodeStatus::Cancelled => {
                        format!("[{node}] ■ cancelled: {}", error.as_deref().unwrap_or("cancelled"))
                    }
                    NodeStatus::Blocked => format!("[{node}] ⊘ BLOCKED: {}", error.as_deref().unwrap_or("blocked")),
                };
                if let Some(bar) = self.bar(node) {
                    bar.finish_with_message(match status {
                        NodeStatus::Ok => "done".to_string(),
                        NodeStatus::Failed => "FAILED".to_string(),
                        NodeStatus::Cancelled => "cancelled".to_string(),
                        NodeStatus::Blocked => "BLOCKED".to_string(),
                    });
                }
                self.line(text);
            }
            Event::RunFinished { .. } => {}
        }
    }

    fn track(&mut self, event: &Event) {
        match event {
            Event::RunStarted { nodes, .. } => {
                for n in nodes {
                    if !self.rows.contains_key(&n.node) {
                        self.rows.insert(n.node.clone(), NodeRow::default());
                        self.order.push(n.node.clone());
                    }
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
                let row = self.rows.entry(node.clone()).or_default();
                *row = NodeRow {
                    status: Some(*status),
                    counts: *counts,
                    duration_ms: *duration_ms,
                    error: error.clone(),
                };
            }
            Event::RunFinished { .. } => self.finished = Some(event.clone()),
            _ => {}
        }
    }

    fn finish(mut self) -> String {
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
        let rows: Vec<(String, NodeRow)> = self
            .order
            .iter()
            .filter_map(|n| self.rows.get(n).map(|r| (n.clone(), r.clone())))
            .collect();
        let text = summary(&rows, self.finished.as_ref(), &self.log_dir);
        if self.style == Style::Json {
            let _ = self.out.flush();
            eprint!("{text}");
        } else {
            let _ = write!(self.out, "\n{text}");
            let _ = self.out.flush();
        }
        text
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn counts_text(c: &Counts) -> String {
    format!("{} changed, {} ok, {} skipped", c.changed, c.ok, c.skipped)
}

/// The end-of-run table: one line per node, then what failed and where its log is.
fn summary(rows: &[(String, NodeRow)], finished: Option<&Event>, log_dir: &Path) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(4).max(4);
    let mut text = format!(
        "{:width$}  {:9} {:>7} {:>7} {:>7} {:>6} {:>8}\n",
        "NODE", "RESULT", "CHANGED", "OK", "SKIPPED", "FAILED", "TIME"
    );
    for (node, row) in rows {
        let result = match row.status {
            Some(NodeStatus::Ok) => "ok",
            Some(NodeStatus::Failed) => "FAILED",
            Some(NodeStatus::Cancelled) => "cancelled",
            Some(NodeStatus::Blocked) => "BLOCKED",
            None => "not run",
        };
        text.push_str(&format!(
            "{node:width$}  {result:9} {:>7} {:>7} {:>7} {:>6} {:>8}\n",
            row.counts.changed,
            row.counts.ok,
            row.counts.skipped,
            row.counts.failed,
            secs(row.duration_ms)
        ));
    }
    for (node, row) in rows {
        if let (Some(NodeStatus::Failed | NodeStatus::Blocked), Some(error)) = (row.status, &row.error) {
            text.push_str(&format!(
                "\n{node}: {error}\n  full output: {}\n",
                node_log_path(log_dir, node).display()
            ));
        }
    }
    if let Some(Event::RunFinished {
        nodes_ok,
        nodes_failed,
        nodes_cancelled,
        nodes_blocked,
        duration_ms,
        interrupted,
        ..
    }) = finished
    {
        let blocked = if *nodes_blocked > 0 {
            format!(", {nodes_blocked} blocked")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "\n{nodes_ok} ok, {nodes_failed} failed, {nodes_cancelled} cancelled{blocked} in {}{}\n",
            secs(*duration_ms),
            if *interrupted {
                " — interrupted; progress is saved, run `kubeboot apply` again to continue"
            } else {
                ""
            }
        ));
        if *nodes_failed + *nodes_blocked > 0 && !*interrupted {
            text.push_str("Fix the cause and run `kubeboot apply` again: finished tasks are not repeated.\n");
            text.push_str("After resetting a node by hand, add `--fresh` (with `--limit`/`--from`) so its finished tasks run again.\n");
        }
    }
    text
}
