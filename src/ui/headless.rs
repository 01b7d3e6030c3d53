//! The headless frontend (`--yes`, or no terminal): indicatif bars on a terminal, plain
//! node-prefixed lines in a CI log, or one JSON event per line with `--output json`. The lines are
//! printed from each event as it comes; the run itself is folded into the core's run model, and the
//! end-of-run summary is derived from it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::event::{Counts, Event, NodeStatus, SkipReason, Stream, TaskStatus};
use crate::fanout::now;
use crate::run_model::RunModel;
use crate::ui::summary::Summary;

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
    /// The run so far (headless shows no live times, so the model's clock stays at 0).
    run: RunModel,
    log_dir: PathBuf,
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    out: std::io::BufWriter<std::io::Stdout>,
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
            run: RunModel::default(),
            log_dir,
            bars,
            out: std::io::BufWriter::new(std::io::stdout()),
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
        if self.style == Style::Json {
            if let Ok(text) = serde_json::to_string(&JsonLine { ts: now(), event }) {
                let _ = writeln!(self.out, "{text}");
            }
            self.run.apply(event, 0);
            return;
        }
        self.run.apply(event, 0);
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
            // The journal's mark: nothing for the operator to read.
            Event::NodeSynced { .. } | Event::RunFinished { .. } => {}
        }
    }

    fn finish(mut self) -> String {
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
        let text = Summary::recorded(&self.run, &self.log_dir).text();
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
