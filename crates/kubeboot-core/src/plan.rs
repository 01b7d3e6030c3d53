//! Inventory × playbooks × journal → per-node plans. Pure: no SSH, no clock, no terminal.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::diag::{Diagnostic, Diagnostics, closest};
use crate::event::{Inputs, NodeOutline, SkipReason, TaskOutline};
use crate::facts::Facts;
use crate::inventory::{Inventory, Node, Role};
use crate::journal::Progress;
use crate::outputs::OutputRef;
use crate::playbook::template::{Context, Registry, Renderer, file_start};
use crate::playbook::{Capture, Hosts, Location, Playbooks, RegisterDef, Stage, TaskDef, TaskKey, WaitForDef};
use crate::secrets::Digests;
use crate::task::Render as _;

pub mod depends;
mod text;

pub use text::render;

pub use crate::task::{Action, FileCopy, HttpCheck, S3Buckets};

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
            Why::AfterChanged(task) => format!("after changed: {task}"),
            Why::IfChanged(task) => format!("after changed: {task} (if it changes)"),
            Why::Again(why) => format!("again: {why}"),
        }
    }
}

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
    pub after: Vec<TaskKey>,
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

const COMMAND_LINE: &str = "command line";

/// A problem with the command line (`--limit`, `--only`, `--from`).
fn command_line(message: impl Into<String>, hint: impl Into<String>) -> Diagnostic {
    Diagnostic::at(COMMAND_LINE, 1, 1, message).with_hint(hint)
}

/// Problems with `--only`/`--from`/`--limit` themselves.
fn check_selection(inv: &Inventory, books: &Playbooks, sel: &Selection) -> Diagnostics {
    let mut diags = Diagnostics::default();
    if !sel.only.is_empty() && sel.from.is_some() {
        diags.push(command_line(
            "--only and --from cannot be used together",
            "use --only to pick stages, or --from to start at one",
        ));
    }
    let stage_names = || books.stages.iter().map(|s| s.name.as_str());
    for name in sel.only.iter().chain(sel.from.iter()) {
        if !stage_names().any(|s| s == name) {
            let hint = match closest(name, stage_names()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("stages: {}", stage_names().collect::<Vec<_>>().join(", ")),
            };
            diags.push(command_line(format!("no stage is named `{name}`"), hint));
        }
    }
    let targets = || {
        inv.nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(inv.clusters.iter().map(|c| c.name.as_str()))
    };
    for name in &sel.limit {
        if !targets().any(|t| t == name) {
            let hint = match closest(name, targets()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => "--limit takes node or cluster names from the inventory".into(),
            };
            diags.push(command_line(
                format!("--limit `{name}` matches no node or cluster"),
                hint,
            ));
        }
    }
    diags
}

/// The stages the selection keeps, in run order.
fn selected_stages<'b>(books: &'b Playbooks, sel: &Selection) -> Vec<&'b Stage> {
    let start = sel
        .from
        .as_ref()
        .and_then(|f| books.stages.iter().position(|s| &s.name == f))
        .unwrap_or(0);
    books.stages[start..]
        .iter()
        .filter(|s| sel.only.is_empty() || sel.only.contains(&s.name))
        .collect()
}

/// True when a stage's `hosts` selects this node.
pub(crate) fn stage_runs_on(inv: &Inventory, stage: &Stage, node: &Node) -> bool {
    if stage.once_per_cluster && inv.first_control_plane(node).is_none_or(|f| f.name != node.name) {
        return false;
    }
    let Hosts::Select(names) = &stage.hosts else {
        return true;
    };
    let cluster = node.cluster.as_deref().and_then(|c| inv.cluster(c));
    names.iter().any(|sel| match sel.as_str() {
        "central" => cluster.is_some_and(|c| c.role == Role::Central),
        "edge" => cluster.is_some_and(|c| c.role == Role::Edge),
        other => other == node.name || node.cluster.as_deref() == Some(other),
    })
}

/// `hosts` entries that name nothing in the inventory.
fn check_hosts(inv: &Inventory, books: &Playbooks) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let known = || {
        ["all", "central", "edge"]
            .into_iter()
            .chain(inv.clusters.iter().map(|c| c.name.as_str()))
            .chain(inv.nodes.iter().map(|n| n.name.as_str()))
    };
    for stage in &books.stages {
        let Hosts::Select(names) = &stage.hosts else { continue };
        for name in names {
            if !known().any(|k| k == name) {
                let hint = match closest(name, known()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "all | central | edge | a cluster name | a node name".into(),
                };
                let l = &stage.hosts_location;
                diags.push(
                    Diagnostic::at(
                        &l.file,
                        l.line,
                        l.column,
                        format!("hosts `{name}` matches no cluster or node"),
                    )
                    .with_hint(hint),
                );
            }
        }
    }
    diags
}

/// `--fresh`: starts a new generation of every selected stage on every selected node in `progress` (in memory),
/// and returns what was started, per node, for the journal.
pub fn start_fresh(
    inv: &Inventory,
    books: &Playbooks,
    sel: &Selection,
    progress: &mut Progress,
) -> Result<Vec<(String, Vec<String>)>, Diagnostics> {
    let stages = selected_stages(books, sel);
    let mut started = Vec::new();
    for n in select_nodes(inv, books, sel)? {
        let names: Vec<String> = stages
            .iter()
            .filter(|s| stage_runs_on(inv, s, n))
            .map(|s| s.name.clone())
            .collect();
        progress.start_generation(&n.name, &names);
        started.push((n.name.clone(), names));
    }
    Ok(started)
}

/// Nodes selected by --limit (node or cluster names) that have at least one selected stage.
pub fn select_nodes<'a>(inv: &'a Inventory, books: &Playbooks, sel: &Selection) -> Result<Vec<&'a Node>, Diagnostics> {
    check_selection(inv, books, sel).into_result(())?;
    let stages = selected_stages(books, sel);
    Ok(inv
        .nodes
        .iter()
        .filter(|n| sel.limits_to(n))
        .filter(|n| stages.iter().any(|s| stage_runs_on(inv, s, n)))
        .collect())
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
                        None => stage.tasks[..ti]
                            .iter()
                            .map(|d| (stage.name.clone(), d.name.clone()))
                            .collect(),
                        Some(names) => names.iter().filter_map(|a| books.resolve_after(si, ti, a)).collect(),
                    };
                    if t.decision == Decision::Run {
                        let (decision, why) = resume(&n.name, &t, progress, secrets, &tasks);
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

/// Whether a task (whose `when` holds) runs, from the journal: it runs when it never finished in its stage's
/// current generation, when its content or its secrets differ from its last finish, when a task it depends on
/// reported `changed` after that finish, or (conditionally, decided by the engine) when such a task runs now.
/// `earlier` are the node's tasks planned before it.
pub fn resume(
    node: &str,
    t: &PlannedTask,
    progress: &Progress,
    secrets: &Digests,
    earlier: &[PlannedTask],
) -> (Decision, Option<Why>) {
    let run = |why| (Decision::Run, Some(why));
    let Some(done) = progress.done(node, &t.stage, &t.task) else {
        return run(if progress.cut_off(node, &t.stage, &t.task) {
            Why::CutOff
        } else if progress.failed_last(node, &t.stage, &t.task) {
            Why::FailedBefore
        } else {
            Why::New
        });
    };
    if done.generation != progress.generation(node, &t.stage) {
        return run(Why::FreshGeneration);
    }
    // Secrets not read in this run (a plan shown without them) cannot be compared: they count as unchanged.
    let secrets_differ = !t.secrets.is_empty() && secrets.knows_all(&t.secrets) && done.secrets != t.inputs.secrets;
    if done.fingerprint != t.fingerprint || secrets_differ {
        let mut parts: Vec<String> = Vec::new();
        if !done.inputs.is_empty() {
            let now = &t.inputs.parts;
            parts.extend(
                now.iter()
                    .filter(|(k, v)| done.inputs.get(*k) != Some(*v))
                    .map(|(k, _)| k.clone()),
            );
            parts.extend(done.inputs.keys().filter(|k| !now.contains_key(*k)).cloned());
        }
        if secrets_differ {
            parts.push("secrets".into());
        }
        return run(Why::InputChanged(parts));
    }
    let label = |(stage, task): &TaskKey| {
        if *stage == t.stage {
            task.clone()
        } else {
            format!("{stage}/{task}")
        }
    };
    if let Some(dep) = t
        .after
        .iter()
        .find(|(s, name)| progress.changed_at(node, s, name).is_some_and(|at| at > done.seq))
    {
        return run(Why::AfterChanged(label(dep)));
    }
    if let Some(dep) = t.after.iter().find(|(s, name)| {
        earlier
            .iter()
            .any(|e| e.stage == *s && e.task == *name && e.decision == Decision::Run)
    }) {
        return run(Why::IfChanged(label(dep)));
    }
    (Decision::Skip(SkipReason::Done), None)
}

/// `host:port`, with IPv6 addresses in brackets.
fn host_port(address: &str, port: u16) -> String {
    if address.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Renders one task for one node. A task whose `when` is false is still checked, but a runtime template
/// failure in it is not an error (it will not run); its raw text is kept instead.
fn plan_task(
    r: &Renderer,
    books: &Playbooks,
    stage: &Stage,
    def: &TaskDef,
    stage_waits: &[WaitForDef],
    ctx: &Context,
) -> Result<PlannedTask, Vec<Diagnostic>> {
    let field = |name: &str| def.fields.get(name).cloned().unwrap_or_else(|| def.location.clone());
    let mut problems = Vec::new();
    let mut asset_problems = Vec::new();
    let decision = match &def.when {
        Some(w) => match r.condition(w, &field("when"), ctx) {
            Ok(true) => Decision::Run,
            Ok(false) => Decision::Skip(SkipReason::Condition),
            Err(p) => {
                problems.extend(p);
                Decision::Run
            }
        },
        None => Decision::Run,
    };
    let lenient = decision != Decision::Run;
    let mut render = TaskRender {
        r,
        books,
        ctx,
        field: &field,
        lenient,
        problems: &mut problems,
        late: &mut asset_problems,
    };
    let action = def.action.render(&mut render);
    let mut text = |raw: &str, name: &str| render.text(raw, name);
    let unless = def.unless.as_ref().map(|u| text(u, "unless"));
    let env: Vec<(String, String)> = def
        .env
        .iter()
        .map(|(k, v)| (k.clone(), text(v, &format!("env.{k}"))))
        .collect();
    problems.extend(asset_problems);
    let needs = depends::needs(&action, unless.as_deref(), &env);
    problems.extend(depends::misplaced_outputs(def, &action, &needs));
    problems.extend(secrets_on_command_lines(def, &action, unless.as_deref()));
    problems.extend(secrets_outside_credentials(def, &action));
    if !lenient {
        problems.extend(kind_problems(def, &action));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Nothing of a jump-host task runs on the node, so the stage's sudo does not apply to it.
    let become_ = def.become_.unwrap_or(stage.become_) && !action.runs_on_jump_host();
    let extras = Extras {
        changed_when: def.changed_when,
        register: def.register.as_ref(),
        waits: stage_waits.iter().chain(&def.wait_for).collect(),
    };
    let fingerprint = fingerprint(
        &stage.name,
        &def.name,
        &action,
        unless.as_deref(),
        become_,
        &env,
        &extras,
    );
    let inputs = Inputs {
        secrets: None,
        parts: parts(&action, unless.as_deref(), become_, &env, &extras),
    };
    let secrets = secrets_used(&action, &env);
    Ok(PlannedTask {
        stage: stage.name.clone(),
        task: def.name.clone(),
        action,
        become_,
        unless,
        retries: def.retries,
        delay: def.delay,
        timeout: def.timeout,
        env,
        fingerprint,
        inputs,
        secrets,
        after: Vec::new(),
        decision,
        register: def.register.as_ref().map(|r| Register {
            name: r.name.clone(),
            secret: r.secret,
            capture: r.capture.clone(),
        }),
        waits: Vec::new(),
        needs,
        serial: stage.serial,
        why: None,
        changed_when: def.changed_when,
    })
}

/// The secret names a task's env values and the texts its kind fills secrets into refer to, sorted.
fn secrets_used(action: &Action, env: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = env.iter().flat_map(|(_, v)| crate::secrets::referenced(v)).collect();
    names.extend(action.filled().iter().flat_map(|text| crate::secrets::referenced(text)));
    names.sort();
    names.dedup();
    names
}

/// The parts of a task's identity only some tasks have, as written: `changed_when: false`, what it hands to
/// other tasks and what it waits for. A changed one runs the task again; a task with none keeps the
/// fingerprint it had before they existed.
struct Extras<'a> {
    /// False for a read-only task.
    changed_when: bool,
    register: Option<&'a RegisterDef>,
    /// The stage's `wait_for` (for its first task) and the task's own.
    waits: Vec<&'a WaitForDef>,
}

impl Extras<'_> {
    /// The register's name, secrecy and capture (the `register` part); empty without one.
    fn register(&self) -> Vec<Vec<u8>> {
        let Some(r) = self.register else { return Vec::new() };
        vec![
            b"register".to_vec(),
            r.name.clone().into_bytes(),
            (if r.secret { "secret" } else { "plain" }).into(),
            format!("{:?}", r.capture).into_bytes(),
        ]
    }

    /// Each declared wait: which nodes and which task (the `waits` part); empty without any.
    fn waits(&self) -> Vec<Vec<u8>> {
        if self.waits.is_empty() {
            return Vec::new();
        }
        let mut out = vec![b"wait_for".to_vec()];
        for w in &self.waits {
            out.push(format!("{:?}", w.nodes).into_bytes());
            out.push(w.task.clone().into_bytes());
        }
        out
    }
}

/// Short digests (sha256, 16 hex digits) of the parts of a task, so a rerun can say which part changed:
/// `command` (what the kind does, all of it), `guard`, `env`, `sudo`, for a copy `owner` and `file <dest>`
/// for each copied file, and the [`Extras`] a task has: `changed_when`, `register`, `waits`.
fn parts(
    action: &Action,
    unless: Option<&str>,
    become_: bool,
    env: &[(String, String)],
    extras: &Extras<'_>,
) -> BTreeMap<String, String> {
    let short = |pieces: &[&[u8]]| {
        let mut h = Sha256::new();
        for p in pieces {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        hex::encode(&h.finalize()[..8])
    };
    let mut out = BTreeMap::new();
    match action {
        Action::Copy(c) => {
            for f in &c.files {
                out.insert(format!("file {}", f.dest), short(&[&f.mode.to_le_bytes(), &f.content]));
            }
            out.insert("owner".into(), short(&[c.owner.as_deref().unwrap_or("").as_bytes()]));
        }
        other => {
            let mut h = Sha256::new();
            other.fingerprint(&mut |bytes: &[u8]| {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            });
            out.insert("command".into(), hex::encode(&h.finalize()[..8]));
        }
    }
    if let Some(u) = unless {
        out.insert("guard".into(), short(&[u.as_bytes()]));
    }
    if !env.is_empty() {
        let flat: Vec<&[u8]> = env.iter().flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]).collect();
        out.insert("env".into(), short(&flat));
    }
    out.insert("sudo".into(), short(&[if become_ { b"become" } else { b"as-user" }]));
    if !extras.changed_when {
        out.insert("changed_when".into(), short(&[b"false"]));
    }
    for (part, pieces) in [("register", extras.register()), ("waits", extras.waits())] {
        if !pieces.is_empty() {
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            out.insert(part.into(), short(&refs));
        }
    }
    out
}

/// A jump-host task's fields other than its credentials end up in output, the plan and the journal's
/// messages, so a secret there would leak; kubeboot only fills secrets into the credential fields.
fn secrets_outside_credentials(def: &TaskDef, action: &Action) -> Vec<Diagnostic> {
    let fields = action.shown();
    secret_fields(
        def,
        &fields,
        |text| !crate::secrets::referenced(text).is_empty(),
        "would show in kubeboot's output, logs and journal",
        "secrets belong only in `user`/`password` (http) or `access_key`/`secret_key` (s3_buckets)",
    )
}

/// One diagnostic per field (the first of its kind) whose text holds a secret, at that field's place.
fn secret_fields(
    def: &TaskDef,
    fields: &[(&str, &str)],
    holds_secret: impl Fn(&str) -> bool,
    consequence: &str,
    hint: &str,
) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    let mut reported: Vec<&str> = Vec::new();
    for &(field, text) in fields {
        if reported.contains(&field) || !holds_secret(text) {
            continue;
        }
        reported.push(field);
        let at = def.fields.get(field).unwrap_or(&def.location);
        out.push(
            Diagnostic::at(
                &at.file,
                at.line,
                at.column,
                format!("a secret in `{field}` {consequence}"),
            )
            .with_hint(hint),
        );
    }
    out
}

/// What the task's kind finds wrong with it once rendered (URLs, paths), at the place of the field.
fn kind_problems(def: &TaskDef, action: &Action) -> Vec<Diagnostic> {
    action
        .problems()
        .into_iter()
        .map(|p| {
            let at = def.fields.get(p.field).unwrap_or(&def.location);
            Diagnostic::at(&at.file, at.line, at.column, p.message).with_hint(p.hint)
        })
        .collect()
}

/// Secrets may only reach a node through `env` or file content: anything else ends up on a command line,
/// visible in the node's process list.
fn secrets_on_command_lines(def: &TaskDef, action: &Action, unless: Option<&str>) -> Vec<Diagnostic> {
    let marker = crate::secrets::placeholder("");
    let marker = marker.trim_end_matches("@@");
    let mut fields = action.command_line();
    if let Some(u) = unless {
        fields.push(("unless", u));
    }
    secret_fields(
        def,
        &fields,
        |text| text.contains(marker),
        "would show on the node's command line",
        "pass it through `env:` (e.g. `env: { TOKEN: \"{{ secrets.NAME }}\" }`) and use $TOKEN",
    )
}

/// Hex sha256 over a length-prefixed encoding of everything that decides what the task does.
fn fingerprint(
    stage: &str,
    task: &str,
    action: &Action,
    unless: Option<&str>,
    become_: bool,
    env: &[(String, String)],
    extras: &Extras<'_>,
) -> String {
    let mut h = Sha256::new();
    let mut put = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(b"kubeboot-task-v1");
    put(stage.as_bytes());
    put(task.as_bytes());
    action.fingerprint(&mut put);
    match unless {
        Some(u) => {
            put(b"unless");
            put(u.as_bytes());
        }
        None => put(b"no-unless"),
    }
    put(if become_ { b"become" } else { b"as-user" });
    for (k, v) in env {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    // Only a read-only task adds it: it decides what later tasks do after it (an `ok` re-runs nothing), and
    // the fingerprints of every other task stay what earlier versions journaled.
    if !extras.changed_when {
        put(b"changed_when-false");
    }
    for piece in extras.register().iter().chain(&extras.waits()) {
        put(piece);
    }
    hex::encode(h.finalize())
}

/// A task's templates rendered for one node; what fails is recorded (leniently for a task that will not run).
struct TaskRender<'a> {
    r: &'a Renderer,
    books: &'a Playbooks,
    ctx: &'a Context,
    field: &'a dyn Fn(&str) -> Location,
    /// The task will not run (`when` is false): runtime template failures are not errors.
    lenient: bool,
    problems: &'a mut Vec<Diagnostic>,
    /// Problems with asset files, reported after the task's own fields.
    late: &'a mut Vec<Diagnostic>,
}

impl crate::task::Render for TaskRender<'_> {
    fn text(&mut self, raw: &str, name: &str) -> String {
        match self.r.render(raw, &(self.field)(name), name, self.ctx) {
            Ok(s) => s,
            Err(p) => {
                // Static problems (undefined names, syntax) are errors even for a task skipped by `when`.
                if !self.lenient || p.iter().any(|d| !d.message.starts_with("template error")) {
                    self.problems.extend(p);
                }
                raw.to_string()
            }
        }
    }

    fn asset(&mut self, text: &str, file: &Path) -> Option<String> {
        match self.r.render(text, &file_start(file), "template", self.ctx) {
            Ok(s) => Some(s),
            Err(p) => {
                self.late.extend(p);
                None
            }
        }
    }

    fn assets_dir(&self) -> &Path {
        &self.books.assets_dir
    }

    fn problem(&mut self, d: Diagnostic) {
        self.late.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TaskStatus;
    use crate::task::{ActionDef, CopyDef};

    fn fixture() -> (Inventory, Playbooks) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/good");
        let inv = match crate::inventory::load(&root.join("inventory.toml")) {
            Ok(i) => i,
            Err(d) => panic!("{d}"),
        };
        let books = match crate::playbook::load(&root.join("playbooks"), &root.join("assets")) {
            Ok(b) => b,
            Err(d) => panic!("{d}"),
        };
        (inv, books)
    }

    fn plan(inv: &Inventory, books: &Playbooks, node: &str, progress: &Progress, sel: &Selection) -> NodePlan {
        match plan_node(inv, books, node, &Facts::assumed(), progress, &Digests::none(), sel) {
            Ok(p) => p,
            Err(d) => panic!("{d}"),
        }
    }

    fn names(p: &NodePlan) -> Vec<String> {
        p.tasks.iter().map(|t| format!("{}/{}", t.stage, t.task)).collect()
    }

    #[test]
    fn the_good_fixture_checks_clean() {
        let (inv, books) = fixture();
        assert_eq!(check(&inv, &books, &Progress::empty(), &Selection::default()), Ok(()));
    }

    #[test]
    fn when_false_skips_by_condition_and_templates_render() {
        let (inv, books) = fixture();
        let p = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
        assert_eq!(p.address, "192.168.101.194:22");
        let redhat = p
            .tasks
            .iter()
            .find(|t| t.task == "install containerd (redhat)")
            .unwrap();
        assert_eq!(redhat.decision, Decision::Skip(SkipReason::Condition));
        let debian = p.tasks.iter().find(|t| t.task == "install containerd").unwrap();
        assert_eq!(debian.decision, Decision::Run);
        assert_eq!(debian.unless.as_deref(), Some("dpkg -s containerd.io"));
        assert!(debian.become_);
        let Action::Copy(crate::task::CopyFiles { files, owner }) =
            &p.tasks.iter().find(|t| t.task == "containerd config").unwrap().action
        else {
            panic!("not a copy")
        };
        assert_eq!(owner.as_deref(), Some("root:root"));
        assert!(String::from_utf8_lossy(&files[0].content).contains("sandbox_image = \"registry.k8s.io/pause:3.10\""));
        let lb = p.tasks.iter().find(|t| t.task == "lb address").unwrap();
        let Action::Copy(crate::task::CopyFiles { files, .. }) = &lb.action else {
            panic!()
        };
        assert_eq!(files[0].content, b"lb=192.168.101.210\n");
    }

    #[test]
    fn a_folder_src_copies_every_file_below_it_sorted() {
        let (inv, books) = fixture();
        let p = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
        let t = p.tasks.iter().find(|t| t.task == "addons").unwrap();
        let Action::Copy(crate::task::CopyFiles { files, .. }) = &t.action else {
            panic!()
        };
        let dests: Vec<&str> = files.iter().map(|f| f.dest.as_str()).collect();
        assert_eq!(
            dests,
            ["/etc/kubeboot/addons/a.yaml", "/etc/kubeboot/addons/sub/b.yaml"]
        );
    }

    #[test]
    fn secrets_stay_placeholders_in_the_plan() {
        let (inv, books) = fixture();
        let p = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
        let t = p.tasks.iter().find(|t| t.task == "s3 credentials").unwrap();
        assert_eq!(
            t.env,
            vec![(
                "AWS_ACCESS_KEY_ID".to_string(),
                crate::secrets::placeholder("s3_access_key")
            )]
        );
    }

    #[test]
    fn resume_skips_tasks_finished_before_unless_their_content_changed() {
        let (inv, mut books) = fixture();
        let first = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
        let mut progress = Progress::empty();
        for t in &first.tasks[..2] {
            progress.mark_done("node-194", &t.stage, &t.task, &t.fingerprint);
        }
        let again = plan(&inv, &books, "node-194", &progress, &Selection::default());
        assert_eq!(again.tasks[0].decision, Decision::Skip(SkipReason::Done));
        assert_eq!(again.tasks[1].decision, Decision::Skip(SkipReason::Done));
        assert_eq!(again.tasks[2].decision, Decision::Skip(SkipReason::Condition));

        // --fresh starts a new generation: what finished before it is not done.
        let fresh = Selection {
            fresh: true,
            ..Selection::default()
        };
        let mut fresh_progress = progress.clone();
        start_fresh(&inv, &books, &fresh, &mut fresh_progress).unwrap();
        let p = plan(&inv, &books, "node-194", &fresh_progress, &fresh);
        assert_eq!(p.tasks[0].decision, Decision::Run);
        assert_eq!(p.tasks[0].why, Some(Why::FreshGeneration));

        // A changed command gets a new fingerprint and runs again.
        books.stages[1].tasks[0].action = crate::task::ActionDef::Run("apt-get install -y containerd.io=2.0".into());
        let changed = plan(&inv, &books, "node-194", &progress, &Selection::default());
        assert_eq!(changed.tasks[0].decision, Decision::Skip(SkipReason::Done));
        assert_eq!(changed.tasks[1].decision, Decision::Run);
        assert_ne!(changed.tasks[1].fingerprint, first.tasks[1].fingerprint);
    }

    /// Records every task of a plan as the engine would: `changed` for run tasks, `ok` for copies and waits.
    fn record_all(progress: &mut Progress, p: &NodePlan, digests: &Digests) {
        for t in p
            .tasks
            .iter()
            .filter(|t| t.decision != Decision::Skip(SkipReason::Condition))
        {
            let status = match t.action {
                Action::Run { .. } => TaskStatus::Changed,
                _ => TaskStatus::Ok,
            };
            progress.apply(&crate::journal::Record::Task {
                run: "r".into(),
                ts: "t".into(),
                node: p.node.clone(),
                stage: t.stage.clone(),
                task: t.task.clone(),
                fingerprint: t.fingerprint.clone(),
                secrets: digests.of(&t.secrets),
                inputs: t.inputs.parts.clone(),
                status,
                reason: None,
                error: None,
            });
        }
    }

    fn decision_of(p: &NodePlan, task: &str) -> (Decision, Option<String>) {
        let t = p.tasks.iter().find(|t| t.task == task).unwrap();
        (t.decision, t.why.as_ref().map(Why::text))
    }

    #[test]
    fn a_task_runs_again_when_an_earlier_task_of_its_stage_changes() {
        let (inv, mut books) = fixture();
        let sel = Selection::default();
        let mut progress = Progress::empty();
        let first = plan(&inv, &books, "node-194", &progress, &sel);
        record_all(&mut progress, &first, &Digests::none());
        // An edited asset: the copy's content changed, so it runs; the later tasks of its stage run if it changes.
        let ActionDef::Copy(c) = &mut books.stages[1].tasks[3].action else {
            panic!("addons is a copy")
        };
        c.dest = "/etc/kubeboot/addons2".into();
        let p = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(decision_of(&p, "containerd config").0, Decision::Skip(SkipReason::Done));
        let (d, why) = decision_of(&p, "addons");
        assert_eq!(d, Decision::Run);
        let why = why.unwrap();
        assert!(
            why.starts_with("input changed: file /etc/kubeboot/addons2/a.yaml"),
            "{why}"
        );
        assert_eq!(
            decision_of(&p, "s3 credentials"),
            (Decision::Run, Some("after changed: addons (if it changes)".into()))
        );
        // Another stage is not touched by the stage rule.
        assert_eq!(decision_of(&p, "lb address").0, Decision::Skip(SkipReason::Done));

        // The copy reported `changed`, then the run was cut off: the next plan still owes the later task.
        let addons = p.tasks.iter().find(|t| t.task == "addons").unwrap();
        progress.apply(&crate::journal::Record::Task {
            run: "r2".into(),
            ts: "t".into(),
            node: "node-194".into(),
            stage: addons.stage.clone(),
            task: addons.task.clone(),
            fingerprint: addons.fingerprint.clone(),
            secrets: None,
            inputs: addons.inputs.parts.clone(),
            status: TaskStatus::Changed,
            reason: None,
            error: None,
        });
        let p = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(decision_of(&p, "addons").0, Decision::Skip(SkipReason::Done));
        assert_eq!(
            decision_of(&p, "s3 credentials"),
            (Decision::Run, Some("after changed: addons".into()))
        );

        // `after: []` opts out of the stage rule.
        books.stages[1].tasks[4].after = Some(Vec::new());
        let p = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(decision_of(&p, "s3 credentials").0, Decision::Skip(SkipReason::Done));
    }

    #[test]
    fn a_changed_register_or_wait_for_runs_the_task_again() {
        let (inv, mut books) = fixture();
        let sel = Selection::default();
        let mut progress = Progress::empty();
        let first = plan(&inv, &books, "node-194", &progress, &sel);
        record_all(&mut progress, &first, &Digests::none());
        let location = books.stages[1].tasks[0].location.clone();

        // A new `register` on a task done before: it runs again, and says why.
        books.stages[1].tasks[0].register = Some(crate::playbook::RegisterDef {
            name: "installed".into(),
            secret: false,
            capture: Capture::Line(-1),
            location: location.clone(),
        });
        let p = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(
            decision_of(&p, "install containerd"),
            (Decision::Run, Some("input changed: register".into()))
        );
        record_all(&mut progress, &p, &Digests::none());
        // Only a changed capture (the last line instead of the first) counts too.
        books.stages[1].tasks[0].register.as_mut().unwrap().capture = Capture::Line(1);
        let p = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(decision_of(&p, "install containerd").0, Decision::Run);
        record_all(&mut progress, &p, &Digests::none());
        let p = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(
            decision_of(&p, "install containerd").0,
            Decision::Skip(SkipReason::Done)
        );

        // A new `wait_for`: the same.
        books.stages[1].tasks[0].wait_for = vec![WaitForDef {
            nodes: crate::playbook::WaitNodes::Named("node-195".into()),
            task: "containerd/install containerd".into(),
            location,
        }];
        let p = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(
            decision_of(&p, "install containerd"),
            (Decision::Run, Some("input changed: waits".into()))
        );
        // A task with neither keeps the fingerprint it always had (journals of earlier versions stay valid).
        let untouched = |p: &NodePlan| {
            p.tasks
                .iter()
                .find(|t| t.task == "containerd config")
                .unwrap()
                .fingerprint
                .clone()
        };
        assert_eq!(untouched(&p), untouched(&first));
    }

    #[test]
    fn after_names_earlier_tasks_also_of_earlier_stages() {
        let (inv, mut books) = fixture();
        let sel = Selection::default();
        let mut progress = Progress::empty();
        let first = plan(&inv, &books, "node-194", &progress, &sel);
        record_all(&mut progress, &first, &Digests::none());
        books.stages[2].tasks[1].after = Some(vec!["containerd/containerd config".into()]);
        books.stages[1].tasks[2].action = ActionDef::Copy(CopyDef {
            src: None,
            content: Some("other".into()),
            dest: "/etc/containerd/config.toml".into(),
            mode: 0o644,
            owner: None,
            template: true,
        });
        let p = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(
            decision_of(&p, "lb address"),
            (
                Decision::Run,
                Some("after changed: containerd/containerd config (if it changes)".into())
            )
        );
        assert_eq!(
            books.resolve_after(2, 1, "containerd/containerd config"),
            Some(("containerd".into(), "containerd config".into()))
        );
        assert_eq!(
            books.resolve_after(1, 0, "addons"),
            None,
            "a later task is no dependency"
        );
    }

    #[test]
    fn a_changed_secret_runs_the_tasks_that_use_it() {
        let (inv, books) = fixture();
        let sel = Selection::default();
        let key = crate::secrets::DigestKey::random();
        let digests = |value: &str| {
            let mut v = crate::secrets::Vault::default();
            v.insert("s3_access_key", crate::secrets::Secret::new(value));
            v.digests(&key)
        };
        let before = digests("AKIA-ONE");
        let mut progress = Progress::empty();
        let first = plan_node(&inv, &books, "node-194", &Facts::assumed(), &progress, &before, &sel).unwrap();
        record_all(&mut progress, &first, &before);
        let same = plan_node(&inv, &books, "node-194", &Facts::assumed(), &progress, &before, &sel).unwrap();
        assert_eq!(decision_of(&same, "s3 credentials").0, Decision::Skip(SkipReason::Done));
        let rotated = plan_node(
            &inv,
            &books,
            "node-194",
            &Facts::assumed(),
            &progress,
            &digests("AKIA-TWO"),
            &sel,
        )
        .unwrap();
        assert_eq!(
            decision_of(&rotated, "s3 credentials"),
            (Decision::Run, Some("input changed: secrets".into()))
        );
        assert_eq!(decision_of(&rotated, "addons").0, Decision::Skip(SkipReason::Done));
        // Not read (a plan shown without the secret): compared without it.
        let unknown = plan(&inv, &books, "node-194", &progress, &sel);
        assert_eq!(
            decision_of(&unknown, "s3 credentials").0,
            Decision::Skip(SkipReason::Done)
        );
    }

    #[test]
    fn only_from_and_limit_choose_stages_and_nodes() {
        let (inv, books) = fixture();
        let only = Selection {
            only: vec!["api".into()],
            ..Selection::default()
        };
        let nodes: Vec<&str> = select_nodes(&inv, &books, &only)
            .unwrap()
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(nodes, ["node-194"], "api runs on the central cluster only");

        let from = Selection {
            from: Some("containerd".into()),
            ..Selection::default()
        };
        let p = plan(&inv, &books, "node-195", &Progress::empty(), &from);
        assert!(
            names(&p).iter().all(|n| n.starts_with("containerd/")),
            "{:?}",
            names(&p)
        );

        let limit = Selection {
            limit: vec!["cluster-02".into()],
            ..Selection::default()
        };
        let nodes: Vec<&str> = select_nodes(&inv, &books, &limit)
            .unwrap()
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(nodes, ["node-195"]);
    }

    #[test]
    fn bad_selections_are_command_line_errors() {
        let (inv, books) = fixture();
        let sel = Selection {
            limit: vec!["node-19".into()],
            only: vec!["containrd".into()],
            from: Some("api".into()),
            fresh: false,
        };
        let e = check(&inv, &books, &Progress::empty(), &sel).unwrap_err().to_string();
        assert!(
            e.contains("command line:1:1: error: --only and --from cannot be used together"),
            "{e}"
        );
        assert!(
            e.contains("no stage is named `containrd`\n  hint: did you mean `containerd`?"),
            "{e}"
        );
        assert!(e.contains("--limit `node-19` matches no node or cluster"), "{e}");
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(host_port("fd00::1", 22), "[fd00::1]:22");
        assert_eq!(host_port("node-1.lab", 2222), "node-1.lab:2222");
    }

    #[test]
    fn the_fixture_plan_matches_its_golden_file() {
        let (inv, books) = fixture();
        let sel = Selection::default();
        let plans: Vec<NodePlan> = select_nodes(&inv, &books, &sel)
            .unwrap()
            .iter()
            .map(|n| plan(&inv, &books, &n.name, &Progress::empty(), &sel))
            .collect();
        let text = render(&plans, true);
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/good/plan.txt");
        if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
            std::fs::write(&golden, &text).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&golden).unwrap_or_default(),
            text,
            "UPDATE_GOLDEN=1 to accept"
        );
    }

    #[test]
    fn the_plan_text_reads_like_a_runbook() {
        let (inv, books) = fixture();
        let mut progress = Progress::empty();
        let first = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
        progress.mark_done("node-194", "preflight", "show the OS", &first.tasks[0].fingerprint);
        let p = plan(&inv, &books, "node-194", &progress, &Selection::default());
        let text = render(std::slice::from_ref(&p), true);
        assert!(
            text.starts_with("node node-194 (192.168.101.194:22, cluster cluster-01): 8 tasks, 6 to run, 2 to skip\n"),
            "{text}"
        );
        assert!(
            text.contains("  stage preflight\n      1. [skip: done     ] show the OS\n"),
            "{text}"
        );
        assert!(
            text.contains("[skip: condition] install containerd (redhat) (sudo)"),
            "{text}"
        );
        assert!(
            text.contains("$ apt-get update\n             apt-get install -y containerd.io\n"),
            "{text}"
        );
        assert_eq!(render(&[p], true), text, "deterministic");
    }
}
