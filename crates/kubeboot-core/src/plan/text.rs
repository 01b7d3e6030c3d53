//! The plan as text: `kubeboot plan` and `--dry-run`, per node and stage, like an install runbook.

use super::{Decision, NodePlan, PlannedTask, Why};
use crate::event::SkipReason;
use crate::task::{PAD, block};

/// `kubeboot plan` / `--dry-run` text: per node, per stage, each task with what will happen (run / skip: done /
/// skip: condition), readable like an install runbook; with `show_commands` the rendered command/copy/wait under
/// each task (secrets stay placeholders). Deterministic (golden-testable); no colors.
pub fn render(plans: &[NodePlan], show_commands: bool) -> String {
    let mut out = String::new();
    for (i, plan) in plans.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let to_run = plan.tasks.iter().filter(|t| t.decision == Decision::Run).count();
        let cluster = plan
            .cluster
            .as_deref()
            .map(|c| format!(", cluster {c}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "node {} ({}{cluster}): {} tasks, {to_run} to run, {} to skip\n",
            plan.node,
            plan.address,
            plan.tasks.len(),
            plan.tasks.len() - to_run
        ));
        let resumed = plan.tasks.iter().any(|t| {
            t.decision == Decision::Skip(SkipReason::Done) || !matches!(t.why, None | Some(Why::New | Why::Again(_)))
        });
        let mut stage: Option<&str> = None;
        let mut number = 0;
        for t in &plan.tasks {
            if stage != Some(t.stage.as_str()) {
                stage = Some(t.stage.as_str());
                let serial = match (&plan.cluster, t.serial) {
                    (Some(c), true) => format!(" (one node of {c} at a time)"),
                    _ => String::new(),
                };
                out.push_str(&format!("  stage {}{serial}\n", t.stage));
            }
            number += 1;
            let what = match t.decision {
                Decision::Run => "run".to_string(),
                Decision::Skip(r) => format!("skip: {}", r.as_str()),
            };
            let sudo = if t.action.runs_on_jump_host() {
                " (from the jump host)"
            } else if t.become_ {
                " (sudo)"
            } else {
                ""
            };
            // On a node nothing ever finished on, every task is new: saying so on each line says nothing.
            let why = match &t.why {
                Some(Why::New) if !resumed => String::new(),
                // Said under the task, by `runbook`.
                Some(Why::Again(_)) => String::new(),
                Some(why) => format!(" — {}", why.text()),
                None => String::new(),
            };
            out.push_str(&format!("    {number:>3}. [{what:<15}] {}{sudo}{why}\n", t.task));
            runbook(&mut out, t);
            if show_commands {
                details(&mut out, t);
            }
        }
    }
    out
}

/// Who waits for whom, under a task: what it waits for on other nodes, the outputs it uses, the output it
/// registers, and why a task done before runs again.
fn runbook(out: &mut String, t: &PlannedTask) {
    const PAD: &str = "           ";
    if let Some(why @ Why::Again(_)) = &t.why {
        out.push_str(&format!("{PAD}{}\n", why.text()));
    }
    for w in &t.waits {
        let what = match &w.output {
            Some(o) => format!(" (for output `{o}`)"),
            None => String::new(),
        };
        out.push_str(&format!("{PAD}waits for {}{what}\n", w.describe()));
    }
    for n in t.needs.iter().filter(|n| {
        !t.waits
            .iter()
            .any(|w| w.output.as_deref() == Some(&n.name) && w.node == n.node)
    }) {
        out.push_str(&format!("{PAD}uses {n}{}\n", if n.secret { " (secret)" } else { "" }));
    }
    if let Some(r) = t
        .register
        .as_ref()
        .filter(|_| t.decision != Decision::Skip(SkipReason::Condition))
    {
        let secret = if r.secret {
            " (secret: masked, kept in memory only)"
        } else {
            ""
        };
        out.push_str(&format!("{PAD}registers output `{}`{secret}\n", r.name));
    }
}

/// The rendered command, copy or wait under a task, indented.
fn details(out: &mut String, t: &PlannedTask) {
    for (k, v) in &t.env {
        out.push_str(&format!("{PAD}env {k}={v}\n"));
    }
    if let Some(u) = &t.unless {
        block(out, "unless: ", u);
    }
    t.action.describe(out);
    if t.retries > 0 {
        out.push_str(&format!(
            "{PAD}retries {} every {}\n",
            t.retries,
            humantime::format_duration(t.delay)
        ));
    }
    if let Some(limit) = t.timeout {
        out.push_str(&format!("{PAD}timeout {}\n", humantime::format_duration(limit)));
    }
}
