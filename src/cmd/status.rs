//! `status`: per node, what the journal says of the last run, and what is left to do by today's plan.

use super::input::{load, preliminary_plans};
use super::{Exit, Failure};
use crate::cli::{Cli, OutputFormat, SelectArgs, StatusArgs};
use crate::journal::StateDir;
use crate::plan::{self, Decision};
use crate::secrets::Digests;

/// Prints the state of every node, as text or JSON lines.
pub(super) fn status(cli: &Cli, args: &StatusArgs) -> Result<Exit, Failure> {
    let (text, json) = status_report(cli)?;
    match args.output {
        OutputFormat::Json => print!("{json}"),
        _ => print!("{text}"),
    }
    Ok(Exit::Ok)
}

/// What `status` prints: the text and the JSON lines (one row per node), both whole.
pub(super) fn status_report(cli: &Cli) -> Result<(String, String), Failure> {
    use std::fmt::Write as _;
    let state = StateDir::existing(&cli.state_dir);
    let progress = state
        .progress()
        .map_err(|e| Failure::Other(format!("cannot read the journal: {e}")))?;
    let select = SelectArgs {
        limit: Vec::new(),
        only: Vec::new(),
        from: None,
    };
    let input = load(cli, &select, false, &progress)?;
    let plans = preliminary_plans(&input, &progress, &Digests::none())?;
    let running = state.running_holder();
    let mut rows = Vec::new();
    for p in &plans {
        let left: Vec<&plan::PlannedTask> = p.tasks.iter().filter(|t| t.decision == Decision::Run).collect();
        // The run holding the lock has started on this node but not finished anything there yet:
        // the node is in that run, whatever its previous run said.
        let current = running
            .and_then(|pid| progress.started_run_of(pid, &p.node))
            .filter(|(run, _)| progress.node(&p.node).is_none_or(|n| n.run != *run));
        if let Some((run, ts)) = current {
            rows.push(serde_json::json!({
                "node": p.node,
                "cluster": p.cluster,
                "run": run,
                "updated": ts,
                "status": null,
                "last_done": null,
                "failed": null,
                "done": p.tasks.len() - left.len(),
                "left": left.len(),
                "next": left.first().map(|t| format!("{} / {}", t.stage, t.task)),
            }));
            continue;
        }
        let node = progress.node(&p.node);
        rows.push(serde_json::json!({
            "node": p.node,
            "cluster": p.cluster,
            "run": node.map(|n| n.run.clone()),
            "updated": node.map(|n| n.ts.clone()),
            "status": node.and_then(|n| n.status),
            "last_done": node.and_then(|n| n.last_done.clone()).map(|(s, t)| format!("{s} / {t}")),
            "failed": node.and_then(|n| n.failed.clone()).map(|(s, t, e)| serde_json::json!({"stage": s, "task": t, "error": e})),
            "blocked_by": node.and_then(|n| n.blocked_by.clone()),
            "done": p.tasks.len() - left.len(),
            "left": left.len(),
            "next": left.first().map(|t| format!("{} / {}", t.stage, t.task)),
        }));
    }
    let mut json = String::new();
    for row in &rows {
        let _ = writeln!(json, "{row}");
    }
    let mut out = String::new();
    if progress.unreadable_lines > 0 {
        let _ = writeln!(
            out,
            "note: {} unreadable journal line(s) skipped (a run was cut off while writing)\n",
            progress.unreadable_lines
        );
    }
    for row in &rows {
        let s = |k: &str| row[k].as_str().unwrap_or("").to_string();
        // No end record: the run holding the lock is still at it, or it never started, or it was cut off.
        let status = match (row["status"].as_str(), running) {
            (Some(st), _) => st.to_string(),
            (None, Some(pid)) => format!("running (process {pid})"),
            (None, None) if row["run"].is_null() => "never run".into(),
            (None, None) => "interrupted".into(),
        };
        let _ = writeln!(
            out,
            "{} ({})  {}",
            s("node"),
            row["cluster"].as_str().unwrap_or("-"),
            status
        );
        let _ = writeln!(
            out,
            "  done {} / {} tasks, last run {} at {}",
            row["done"],
            row["done"].as_u64().unwrap_or(0) + row["left"].as_u64().unwrap_or(0),
            s("run"),
            s("updated")
        );
        if !row["last_done"].is_null() {
            let _ = writeln!(out, "  last finished: {}", s("last_done"));
        }
        if let Some(by) = row["blocked_by"].as_str() {
            let why = row["failed"]["error"].as_str().unwrap_or("");
            let _ = writeln!(out, "  BLOCKED by {by}: {why}");
        } else if let Some(f) = row["failed"].as_object() {
            let field = |k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or("");
            if field("task").is_empty() {
                let _ = writeln!(out, "  FAILED: {}", field("error"));
            } else {
                let _ = writeln!(
                    out,
                    "  FAILED: {} / {}: {}",
                    field("stage"),
                    field("task"),
                    field("error")
                );
            }
        }
        let blocked: Vec<&str> = rows
            .iter()
            .filter(|r| r["blocked_by"].as_str() == row["node"].as_str())
            .filter_map(|r| r["node"].as_str())
            .collect();
        if !blocked.is_empty() {
            let _ = writeln!(out, "  its failure blocked: {} (they wait for it)", blocked.join(", "));
        }
        let _ = match row["next"].as_str() {
            Some(next) => writeln!(out, "  next: {next} ({} left)", row["left"]),
            None => writeln!(out, "  nothing left to do"),
        };
    }
    Ok((out, json))
}
