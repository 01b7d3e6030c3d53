//! Inventory × playbooks × journal → per-node plans. Pure: no SSH, no clock, no terminal.
//!
//! This file holds the plan's model and the planning of a whole run and of one node. The parts, one job each:
//! [`select`](self::select) which nodes and stages `--limit`/`--only`/`--from` keep (and the checks on them),
//! [`resume`](fn@resume) what the journal says about a task (and `--fresh`), [`task`] one task definition rendered
//! for one node (templates, secret checks, fingerprint), [`depends`] what waits for and runs again after what,
//! [`render`](fn@render) the `plan` text.

use std::sync::Arc;
use std::time::Duration;

use crate::diag::{Diagnostic, Diagnostics};
use crate::event::{Inputs, NodeOutline, SkipReason, TaskOutline};
use crate::facts::Facts;
use crate::inventory::{Inventory, Node};
use crate::journal::Progress;
use crate::outputs::OutputRef;
use crate::playbook::template::{Context, Registry, Renderer};
use crate::playbook::{Capture, Location, Playbooks, TaskKey};
use crate::secrets::Digests;

pub mod depends;
mod resume;
mod select;
mod task;
#[cfg(test)]
mod tests;
mod text;

pub use text::render;

pub use crate::task::{Action, FileCopy, HttpCheck, S3Buckets};
pub use resume::{resume, start_fresh};
pub use select::select_nodes;
pub(crate) use select::stage_runs_on;
use select::{check_hosts, check_selection, command_line, selected_stages};
use task::plan_task;

/// What the plan decided for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Run,
    Skip(SkipReason),
}

/// Why a task runs, as the journal explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// It never finished on this node.
    New,
    /// Its latest attempt failed.
    FailedBefore,
    /// Its latest attempt started and never ended (the run was cut off in the middle of it).
    CutOff,
    /// It finished before, but what it is made of differs now: these parts (empty: not known which).
    InputChanged(Vec<String>),
    /// It finished only before a `--fresh` run started its stage anew.
    FreshGeneration,
    /// It finished in an earlier boot of the node and the node restarted before kubeboot synced its disk: what
    /// it wrote may be gone (its `unless` guard, if it has one, decides).
    Restarted,
    /// A task it depends on reported `changed` after it last finished (e.g. in a run cut off in between).
    AfterChanged(String),
    /// A task it depends on runs now: it runs again if that one reports `changed`, else it stays done.
    IfChanged(String),
    /// It finished before, or would run only if a task it depends on changed, but a task of this
    /// run needs its secret output, which is never kept: it runs again for that (this says which).
    /// Shown under the task (`again: ...`), not on its line; it restores what the run had, so it
    /// is `ok` and re-runs nothing after it.
    Again(String),
}

impl Why {
    /// The words the plan and the events use.
    pub fn text(&self) -> String {
        match self {
            Why::New => "new".into(),
            Why::FailedBefore => "failed before".into(),
            Why::CutOff => "cut off before".into(),
            Why::InputChanged(parts) if parts.is_empty() => "input changed".into(),
            Why::InputChanged(parts) => {
                const SHOWN: usize = 2;
                let mut text = format!("input changed: {}", parts[..parts.len().min(SHOWN)].join(", "));
                if parts.len() > SHOWN {
                    text.push_str(&format!(" (+{} more)", parts.len() - SHOWN));
                }
                text
            }
            Why::FreshGeneration => "fresh generation".into(),
            Why::Restarted => "node restarted before it was on disk".into(),
            Why::AfterChanged(task) => format!("after changed: {task}"),
            Why::IfChanged(task) => format!("after changed: {task} (if it changes)"),
            Why::Again(why) => format!("again: {why}"),
        }
    }
}

/// The tasks whose `changed` makes a task run again ([`PlannedTask::after`]), as a slice. For the
/// stage rule it is a prefix of the stage's task list, shared by every task of the stage: a list of
/// its own per task grew with the square of a stage's length (a plan of 4 nodes with one stage of
/// 1,600 tasks took 1.1 GB; the SSH benchmark's 128 nodes × 50 tasks, 126 MB at its peak).
#[derive(Clone, Default)]
pub struct After {
    keys: Arc<[TaskKey]>,
    len: usize,
}

impl After {
    /// The first `len` of `keys`.
    pub fn prefix(keys: Arc<[TaskKey]>, len: usize) -> After {
        After {
            len: len.min(keys.len()),
            keys,
        }
    }

    pub fn list(keys: Vec<TaskKey>) -> After {
        let len = keys.len();
        After { keys: keys.into(), len }
    }
}

impl std::ops::Deref for After {
    type Target = [TaskKey];
    fn deref(&self) -> &[TaskKey] {
        &self.keys[..self.len]
    }
}

impl std::fmt::Debug for After {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for After {
    fn eq(&self, other: &After) -> bool {
        **self == **other
    }
}

impl Eq for After {}

/// One task of one node, rendered for that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTask {
    pub stage: String,
    pub task: String,
    pub action: Action,
    /// Run via sudo.
    pub become_: bool,
    /// Rendered `unless` guard.
    pub unless: Option<String>,
    pub retries: u32,
    pub delay: Duration,
    pub timeout: Option<Duration>,
    /// Rendered environment for the command, in name order.
    pub env: Vec<(String, String)>,
    /// sha256 (hex) of the rendered content: the task's identity for resume, with (node, stage, task).
    pub fingerprint: String,
    /// The rest of its identity: keyed digest of the secrets it uses, digests of its parts.
    pub inputs: Inputs,
    /// The secrets it uses, by name.
    pub secrets: Vec<String>,
    /// The tasks whose `changed` makes it run again: the earlier tasks of its stage, or its `after` list.
    pub after: After,
    pub decision: Decision,
    /// What it keeps of its stdout, under which name.
    pub register: Option<Register>,
    /// Tasks on other nodes that must have finished before it starts (declared, or producing an output it needs).
    pub waits: Vec<Wait>,
    /// Outputs its rendered text uses (filled when it is sent).
    pub needs: Vec<OutputRef>,
    /// Its stage runs on one node of the cluster at a time.
    pub serial: bool,
    /// Why it runs (set with Decision::Run).
    pub why: Option<Why>,
    /// False for a read-only task (`changed_when: false`): a success is `ok`, so it re-runs nothing after it.
    pub changed_when: bool,
}

/// A planned task's `register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub name: String,
    pub secret: bool,
    pub capture: Capture,
}

/// One task on another node that must have finished (ok, changed or skipped) before a task starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub node: String,
    pub stage: String,
    pub task: String,
    /// Where it was asked for: the `wait_for` entry, or the field that uses the output.
    pub at: Location,
    /// The output it produces, when that is why the task waits.
    pub output: Option<String>,
}

impl Wait {
    /// `node-194: kubeadm-init/kubeadm init`.
    pub fn describe(&self) -> String {
        format!("{}: {}/{}", self.node, self.stage, self.task)
    }
}

/// One node's ordered, rendered tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub node: String,
    pub cluster: Option<String>,
    /// `host:port`.
    pub address: String,
    pub tasks: Vec<PlannedTask>,
}

impl NodePlan {
    /// The plan as the frontends show it.
    pub fn outline(&self) -> NodeOutline {
        NodeOutline {
            node: self.node.clone(),
            cluster: self.cluster.clone(),
            address: self.address.clone(),
            tasks: self
                .tasks
                .iter()
                .map(|t| TaskOutline {
                    stage: t.stage.clone(),
                    task: t.task.clone(),
                    skip: match t.decision {
                        Decision::Run => None,
                        Decision::Skip(r) => Some(r),
                    },
                })
                .collect(),
        }
    }
}

/// Which part of the work the operator chose (`--limit`, `--only`, `--from`, `--fresh`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Node or cluster names; empty = all.
    pub limit: Vec<String>,
    /// Stage names; empty = all.
    pub only: Vec<String>,
    /// Start at this stage (inclusive).
    pub from: Option<String>,
    /// `--fresh`: start a new generation of the selected stages on the selected nodes. The plan itself only reads
    /// generations: the caller starts one (in the journal, or in memory for a preview) with
    /// [`start_fresh`] before planning.
    pub fresh: bool,
}

impl Selection {
    /// True when `--limit` takes in this node: it names the node or its cluster, or there is no `--limit`.
    pub fn limits_to(&self, node: &Node) -> bool {
        self.limit.is_empty()
            || self
                .limit
                .iter()
                .any(|l| *l == node.name || node.cluster.as_deref() == Some(l.as_str()))
    }
}

/// Everything checkable before any node is reached: renders every task of every selected node with the remembered
/// facts (progress.facts) or Facts::assumed(); reports template errors, unknown hosts selectors, unknown --only/--from
/// stages, --only with --from together, --limit names that match nothing.
pub fn check(inv: &Inventory, books: &Playbooks, progress: &Progress, sel: &Selection) -> Result<(), Diagnostics> {
    let mut diags = check_selection(inv, books, sel);
    diags.0.extend(check_hosts(inv, books).0);
    if !diags.is_empty() {
        return Err(diags);
    }
    diags.0.extend(depends::check_registers(inv, books).0);
    let assumed = Facts::assumed();
    let mut plans = Vec::new();
    for node in select_nodes(inv, books, sel)? {
        let facts = progress.facts(&node.name).unwrap_or(&assumed);
        match plan_node(inv, books, &node.name, facts, progress, &Digests::none(), sel) {
            Ok(p) => plans.push(p),
            Err(d) => {
                for problem in d.0 {
                    // The same template problem shows up once per node; report it once.
                    if !diags.0.contains(&problem) {
                        diags.push(problem);
                    }
                }
            }
        }
    }
    if diags.is_empty() {
        diags.0.extend(depends::check_links(&plans).0);
    }
    diags.into_result(())
}

/// Every selected node's plan with the remembered (or assumed) facts, after `check`; tasks done before whose
/// secret outputs a task of this run needs are set to run again ([`depends::again`]).
pub fn plan_all(
    inv: &Inventory,
    books: &Playbooks,
    progress: &Progress,
    secrets: &Digests,
    sel: &Selection,
) -> Result<Vec<NodePlan>, Diagnostics> {
    let assumed = Facts::assumed();
    let mut plans = Vec::new();
    for node in select_nodes(inv, books, sel)? {
        let facts = progress.facts(&node.name).unwrap_or(&assumed);
        plans.push(plan_node(inv, books, &node.name, facts, progress, secrets, sel)?);
    }
    depends::again(&mut plans, progress, sel.fresh);
    Ok(plans)
}

/// One node's ordered rendered tasks. `when` is evaluated here (false -> Decision::Skip(Condition)); whether a
/// task is done comes from the journal ([`resume`]). `secrets` are the keyed digests of this run's secret values
/// (empty when they were not read: then tasks using secrets are compared without them).
pub fn plan_node(
    inv: &Inventory,
    books: &Playbooks,
    node: &str,
    facts: &Facts,
    progress: &Progress,
    secrets: &Digests,
    sel: &Selection,
) -> Result<NodePlan, Diagnostics> {
    let Some(n) = inv.node(node) else {
        return Err(command_line(format!("no node is named `{node}`"), "check the inventory").into());
    };
    let renderer = Renderer::new();
    let mut diags = Diagnostics::default();
    let mut tasks: Vec<PlannedTask> = Vec::new();
    let producers = depends::producers(inv, books);
    let registry: Registry = depends::registry(&producers);
    let selected = selected_stages(books, sel);
    for (si, stage) in books.stages.iter().enumerate() {
        if !selected.iter().any(|s| std::ptr::eq(*s, stage)) || !stage_runs_on(inv, stage, n) {
            continue;
        }
        let ctx = Context::new(inv, n, stage, facts, &registry);
        let stage_keys: Arc<[TaskKey]> = stage
            .tasks
            .iter()
            .map(|d| (stage.name.clone(), d.name.clone()))
            .collect();
        for problem in ctx.problems() {
            let d = Diagnostic::at(&inv.path, inv.sources.line.max(1), 1, problem.clone())
                .with_hint("a [sources] text may use the node's variables and facts, like a playbook");
            if !diags.0.contains(&d) {
                diags.push(d);
            }
        }
        for (ti, def) in stage.tasks.iter().enumerate() {
            let stage_waits = if ti == 0 { stage.wait_for.as_slice() } else { &[] };
            match plan_task(&renderer, books, stage, def, stage_waits, &ctx) {
                Ok(mut t) => {
                    t.inputs.secrets = secrets.of(&t.secrets);
                    t.after = match &def.after {
                        // The stage rule: every earlier task of the stage.
                        None => After::prefix(stage_keys.clone(), ti),
                        Some(names) => {
                            After::list(names.iter().filter_map(|a| books.resolve_after(si, ti, a)).collect())
                        }
                    };
                    if t.decision == Decision::Run {
                        let (decision, why) = resume(&n.name, &t, progress, secrets, &tasks, &facts.boot_id);
                        t.decision = decision;
                        t.why = why;
                    }
                    match depends::waits(inv, books, n, stage, def, stage_waits, &t, &producers, &tasks) {
                        Ok(w) => t.waits = w,
                        Err(p) => diags.0.extend(p),
                    }
                    if t.decision == Decision::Skip(SkipReason::Condition) {
                        // It will not run: it waits for nothing and needs nothing.
                        t.waits.clear();
                        t.needs.clear();
                    }
                    tasks.push(t);
                }
                Err(problems) => diags.0.extend(problems),
            }
        }
    }
    diags.into_result(NodePlan {
        node: n.name.clone(),
        cluster: n.cluster.clone(),
        address: host_port(n.connect_address(), n.ssh.port),
        tasks,
    })
}

/// `host:port`, with IPv6 addresses in brackets.
fn host_port(address: &str, port: u16) -> String {
    if address.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}
