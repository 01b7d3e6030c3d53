//! Ordering between nodes, decided when planning: which node registers which output, which task waits for
//! which task on another node, and the checks that make a bad reference an input error before anything runs
//! (an output nobody registers, a wait for a node or task outside the selection, tasks waiting for each other).

use std::collections::{BTreeMap, HashMap};

use super::{Action, Decision, NodePlan, PlannedTask, Wait, stage_runs_on};
use crate::diag::{Diagnostic, Diagnostics, closest};
use crate::event::SkipReason;
use crate::inventory::{Inventory, Node, NodeRole};
use crate::journal::Progress;
use crate::outputs::OutputRef;
use crate::playbook::template::Registry;
use crate::playbook::{Location, Playbooks, Stage, TaskDef, WaitForDef, WaitNodes};

/// The task that registers an output on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    pub stage: String,
    pub task: String,
    pub secret: bool,
    pub at: Location,
}

/// (node, output name) → the task that registers it there.
pub type Producers = BTreeMap<(String, String), Producer>;

/// Every output each node registers, over all stages that run on it (a `--only`/`--from` run may still use an
/// output an earlier run kept).
pub fn producers(inv: &Inventory, books: &Playbooks) -> Producers {
    let mut out = Producers::new();
    for node in &inv.nodes {
        for stage in books.stages.iter().filter(|s| stage_runs_on(inv, s, node)) {
            for def in &stage.tasks {
                if let Some(r) = &def.register {
                    out.entry((node.name.clone(), r.name.clone())).or_insert(Producer {
                        stage: stage.name.clone(),
                        task: def.name.clone(),
                        secret: r.secret,
                        at: r.location.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The outputs as the templates see them: node → name → secret.
pub fn registry(producers: &Producers) -> Registry {
    let mut out = Registry::new();
    for ((node, name), p) in producers {
        out.entry(node.clone()).or_default().insert(name.clone(), p.secret);
    }
    out
}

/// Two tasks registering the same name would make "the" output ambiguous.
pub fn check_registers(inv: &Inventory, books: &Playbooks) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let mut seen: HashMap<String, &Location> = HashMap::new();
    for stage in &books.stages {
        for def in &stage.tasks {
            let Some(r) = &def.register else { continue };
            if let Some(first) = seen.get(&r.name) {
                // Two registers of one name are fine when no node runs both (e.g. one per cluster role).
                let both = inv.nodes.iter().any(|n| {
                    books.stages.iter().filter(|s| stage_runs_on(inv, s, n)).any(|s| {
                        s.tasks.iter().any(|t| {
                            t.register
                                .as_ref()
                                .is_some_and(|o| o.name == r.name && &o.location == *first)
                        })
                    }) && stage_runs_on(inv, stage, n)
                });
                if both {
                    let l = &r.location;
                    diags.push(
                        Diagnostic::at(
                            &l.file,
                            l.line,
                            l.column,
                            format!("output `{}` is registered twice on the same nodes", r.name),
                        )
                        .with_hint(format!(
                            "it is registered first at {}:{}; give one of them another name",
                            first.file.display(),
                            first.line
                        )),
                    );
                }
            } else {
                seen.insert(r.name.clone(), &r.location);
            }
        }
    }
    diags
}

/// The outputs a rendered task uses, in the order they appear.
pub fn needs(action: &Action, unless: Option<&str>, env: &[(String, String)]) -> Vec<OutputRef> {
    // Every text of the kind that reaches the node or the jump host: its command line, what it shows and what
    // secrets are filled into.
    let mut texts: Vec<String> = Vec::new();
    texts.extend(action.command_line().into_iter().map(|(_, t)| t.to_string()));
    texts.extend(action.shown().into_iter().map(|(_, t)| t.to_string()));
    texts.extend(action.filled().into_iter().map(|t| t.into_owned()));
    texts.extend(unless.map(str::to_string));
    texts.extend(env.iter().map(|(_, v)| v.clone()));
    let mut out: Vec<OutputRef> = Vec::new();
    for t in &texts {
        for r in crate::outputs::referenced(t) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// Outputs where they cannot work: in a task kubeboot runs on the jump host, or in `when` (decided while
/// planning, before any output exists).
pub fn misplaced_outputs(def: &TaskDef, action: &Action, needs: &[OutputRef]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if (action.runs_on_jump_host() || matches!(action, Action::Fetch(_))) && !needs.is_empty() {
        let l = &def.location;
        out.push(
            Diagnostic::at(
                &l.file,
                l.line,
                l.column,
                format!("task `{}` cannot use outputs (a jump-host task or a fetch)", def.name),
            )
            .with_hint("use outputs in tasks that run on a node (`run`, `wait`, `copy`, `unless`, `env`)"),
        );
    }
    if let Some(w) = &def.when
        && w.contains("outputs")
    {
        let l = def.fields.get("when").unwrap_or(&def.location);
        out.push(
            Diagnostic::at(&l.file, l.line, l.column, "`when` cannot use outputs").with_hint(
                "`when` is decided while planning, before any task ran; test the output in the command instead",
            ),
        );
    }
    out
}

/// Where a `stage/task` (or a task of `stage`) written in a `wait_for` points: (stage, task).
fn target<'b>(
    books: &'b Playbooks,
    stage: &'b Stage,
    text: &str,
    at: &Location,
) -> Result<(&'b Stage, String), Diagnostic> {
    let (in_stage, task) = match text.split_once('/') {
        Some((s, t)) if books.stages.iter().any(|b| b.name == s.trim()) => (
            books.stages.iter().find(|b| b.name == s.trim()).unwrap_or(stage),
            t.trim(),
        ),
        _ => (stage, text.trim()),
    };
    if in_stage.tasks.iter().any(|t| t.name == task) {
        return Ok((in_stage, task.to_string()));
    }
    let hint = match closest(task, in_stage.tasks.iter().map(|t| t.name.as_str())) {
        Some(m) => format!("did you mean `{}/{m}`?", in_stage.name),
        None => "write `stage/task` with the names as the playbooks give them".into(),
    };
    Err(Diagnostic::at(
        &at.file,
        at.line,
        at.column,
        format!(
            "`wait_for` names no task: stage `{}` has no task `{task}`",
            in_stage.name
        ),
    )
    .with_hint(hint))
}

/// The nodes a `wait_for` means for this node (never the node itself).
fn wait_nodes<'a>(inv: &'a Inventory, node: &'a Node, w: &WaitForDef) -> Result<Vec<&'a Node>, Diagnostic> {
    let others = |role: Option<NodeRole>| -> Vec<&'a Node> {
        match &node.cluster {
            None => Vec::new(),
            Some(c) => inv
                .members(c)
                .filter(|m| m.name != node.name && role.is_none_or(|r| m.role == r))
                .collect(),
        }
    };
    let at = &w.location;
    match &w.nodes {
        WaitNodes::FirstControlPlane => Ok(inv
            .first_control_plane(node)
            .filter(|f| f.name != node.name)
            .into_iter()
            .collect()),
        WaitNodes::ControlPlanes => Ok(others(Some(NodeRole::ControlPlane))),
        WaitNodes::Cluster => Ok(others(None)),
        WaitNodes::Named(name) if *name == node.name => Err(Diagnostic::at(
            &at.file,
            at.line,
            at.column,
            format!("node `{name}` would wait for itself"),
        )
        .with_hint("a node runs its own tasks in order already; wait_for names other nodes")),
        WaitNodes::Named(name) => match inv.node(name) {
            Some(n) => Ok(vec![n]),
            None => {
                let hint = match closest(name, inv.nodes.iter().map(|n| n.name.as_str())) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "a node name, first-control-plane, control-planes or cluster".into(),
                };
                Err(Diagnostic::at(
                    &at.file,
                    at.line,
                    at.column,
                    format!("`wait_for` names unknown node `{name}`"),
                )
                .with_hint(hint))
            }
        },
    }
}

/// A task's waits: its stage's `wait_for` (on the stage's first task), its own, and one for each output of
/// another node it uses (the task registering it). An output of its own node must come from an earlier task.
#[allow(clippy::too_many_arguments)]
pub fn waits(
    inv: &Inventory,
    books: &Playbooks,
    node: &Node,
    stage: &Stage,
    def: &TaskDef,
    stage_waits: &[WaitForDef],
    planned: &PlannedTask,
    producers: &Producers,
    earlier: &[PlannedTask],
) -> Result<Vec<Wait>, Vec<Diagnostic>> {
    let mut out: Vec<Wait> = Vec::new();
    let mut problems = Vec::new();
    for w in stage_waits.iter().chain(def.wait_for.iter()) {
        let (in_stage, task) = match target(books, stage, &w.task, &w.location) {
            Ok(t) => t,
            Err(d) => {
                problems.push(d);
                continue;
            }
        };
        let nodes = match wait_nodes(inv, node, w) {
            Ok(n) => n,
            Err(d) => {
                problems.push(d);
                continue;
            }
        };
        let group = matches!(w.nodes, WaitNodes::ControlPlanes | WaitNodes::Cluster);
        for m in nodes {
            // A group means those of its nodes that run the stage; a node named alone must run it.
            if group && !stage_runs_on(inv, in_stage, m) {
                continue;
            }
            if !stage_runs_on(inv, in_stage, m) {
                let l = &w.location;
                problems.push(
                    Diagnostic::at(
                        &l.file,
                        l.line,
                        l.column,
                        format!("`wait_for`: node `{}` does not run stage `{}`", m.name, in_stage.name),
                    )
                    .with_hint("wait for a task of a stage whose `hosts` selects that node"),
                );
                continue;
            }
            let wait = Wait {
                node: m.name.clone(),
                stage: in_stage.name.clone(),
                task: task.clone(),
                at: w.location.clone(),
                output: None,
            };
            if !out
                .iter()
                .any(|o| o.node == wait.node && o.stage == wait.stage && o.task == wait.task)
            {
                out.push(wait);
            }
        }
    }
    for need in &planned.needs {
        let Some(p) = producers.get(&(need.node.clone(), need.name.clone())) else {
            // The templates only know registered outputs; this cannot happen, but say so rather than guess.
            let l = &def.location;
            problems.push(Diagnostic::at(
                &l.file,
                l.line,
                l.column,
                format!("{need} is used but no task of node `{}` registers it", need.node),
            ));
            continue;
        };
        if need.node == node.name {
            let is_earlier = earlier.iter().any(|t| t.stage == p.stage && t.task == p.task);
            let stage_index = |name: &str| books.stages.iter().position(|s| s.name == name);
            let later_stage = stage_index(&p.stage) > stage_index(&stage.name);
            let same_stage_later = p.stage == stage.name
                && stage.tasks.iter().position(|t| t.name == p.task)
                    >= stage.tasks.iter().position(|t| t.name == def.name);
            if !is_earlier && (later_stage || same_stage_later) {
                let l = &def.location;
                problems.push(
                    Diagnostic::at(
                        &l.file,
                        l.line,
                        l.column,
                        format!(
                            "task `{}` uses `outputs.{}` before `{}/{}` registers it",
                            def.name, need.name, p.stage, p.task
                        ),
                    )
                    .with_hint("a node runs its tasks in order: move the task after the one that registers the output"),
                );
            }
            continue;
        }
        if !out
            .iter()
            .any(|o| o.node == need.node && o.stage == p.stage && o.task == p.task)
        {
            out.push(Wait {
                node: need.node.clone(),
                stage: p.stage.clone(),
                task: p.task.clone(),
                at: def.location.clone(),
                output: Some(need.name.clone()),
            });
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// A task of the run: (index of its node's plan, index of the task in it).
type At = (usize, usize);

/// For each task, the tasks on other nodes it waits for, with the wait that says so.
type Edges<'p> = HashMap<At, Vec<(At, &'p Wait)>>;

/// Checks over all selected nodes' plans: every wait points into this run, and no tasks wait for each other.
pub fn check_links(plans: &[NodePlan]) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let index: HashMap<(&str, &str, &str), (usize, usize)> = plans
        .iter()
        .enumerate()
        .flat_map(|(p, plan)| {
            plan.tasks
                .iter()
                .enumerate()
                .map(move |(i, t)| ((plan.node.as_str(), t.stage.as_str(), t.task.as_str()), (p, i)))
        })
        .collect();
    // edges[(p, i)] = the tasks (p, i) waits for on other nodes.
    let mut edges: Edges = HashMap::new();
    for (p, plan) in plans.iter().enumerate() {
        for (i, t) in plan.tasks.iter().enumerate() {
            for w in &t.waits {
                let l = &w.at;
                if !plans.iter().any(|o| o.node == w.node) {
                    let cluster = plan.cluster.as_deref().unwrap_or(&w.node);
                    push_once(
                        &mut diags,
                        Diagnostic::at(
                            &l.file,
                            l.line,
                            l.column,
                            format!(
                                "`{}/{}` on {} waits for {}, which this run does not include",
                                t.stage,
                                t.task,
                                plan.node,
                                w.describe()
                            ),
                        )
                        .with_hint(format!(
                            "select the node too (e.g. --limit {cluster}); it waits for {}",
                            what_it_waits_for(w)
                        )),
                    );
                    continue;
                }
                match index.get(&(w.node.as_str(), w.stage.as_str(), w.task.as_str())) {
                    Some(&target) => edges.entry((p, i)).or_default().push((target, w)),
                    None => push_once(
                        &mut diags,
                        Diagnostic::at(
                            &l.file,
                            l.line,
                            l.column,
                            format!(
                                "`{}/{}` on {} waits for {}, a stage this run does not include",
                                t.stage,
                                t.task,
                                plan.node,
                                w.describe()
                            ),
                        )
                        .with_hint(format!(
                            "include stage `{}` (check --only/--from); it waits for {}",
                            w.stage,
                            what_it_waits_for(w)
                        )),
                    ),
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(plans, &edges) {
        let (first, wait) = cycle
            .iter()
            .find_map(|&(p, i)| {
                edges
                    .get(&(p, i))
                    .and_then(|e| e.iter().find(|(to, _)| cycle.contains(to)).map(|(_, w)| ((p, i), *w)))
            })
            .unwrap_or((cycle[0], &plans[cycle[0].0].tasks[cycle[0].1].waits[0]));
        let names: Vec<String> = cycle
            .iter()
            .filter(|(p, i)| edges.contains_key(&(*p, *i)) || (*p, *i) == first)
            .map(|&(p, i)| {
                format!(
                    "{}: {}/{}",
                    plans[p].node, plans[p].tasks[i].stage, plans[p].tasks[i].task
                )
            })
            .collect();
        let l = &wait.at;
        diags.push(
            Diagnostic::at(
                &l.file,
                l.line,
                l.column,
                format!(
                    "these tasks wait for each other, so none could start: {}",
                    names.join(" → ")
                ),
            )
            .with_hint("remove or move one of the waits (wait_for, or an output used before it is registered)"),
        );
    }
    diags
}

fn what_it_waits_for(w: &Wait) -> String {
    match &w.output {
        Some(o) => format!("output `{o}` of {}", w.node),
        None => "that task to finish there".into(),
    }
}

fn push_once(diags: &mut Diagnostics, d: Diagnostic) {
    if !diags.0.contains(&d) {
        diags.push(d);
    }
}

/// A cycle through "task waits for task" (each task also waits for the one before it on its node), as the
/// tasks on it in order.
fn find_cycle(plans: &[NodePlan], edges: &Edges) -> Option<Vec<(usize, usize)>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Closed,
    }
    let mut mark: HashMap<(usize, usize), Mark> = HashMap::new();
    let successors = |(p, i): (usize, usize)| -> Vec<(usize, usize)> {
        let mut next: Vec<(usize, usize)> = edges.get(&(p, i)).into_iter().flatten().map(|(to, _)| *to).collect();
        if i > 0 {
            next.push((p, i - 1));
        }
        next
    };
    for (p, plan) in plans.iter().enumerate() {
        for i in 0..plan.tasks.len() {
            if mark.get(&(p, i)).copied().unwrap_or(Mark::New) != Mark::New {
                continue;
            }
            // Iterative depth-first search; `path` holds the open tasks.
            let mut path: Vec<(At, Vec<At>)> = vec![((p, i), successors((p, i)))];
            mark.insert((p, i), Mark::Open);
            while let Some((at, rest)) = path.last_mut() {
                let at = *at;
                match rest.pop() {
                    Some(next) => match mark.get(&next).copied().unwrap_or(Mark::New) {
                        Mark::New => {
                            mark.insert(next, Mark::Open);
                            let s = successors(next);
                            path.push((next, s));
                        }
                        Mark::Open => {
                            let start = path.iter().position(|(n, _)| *n == next).unwrap_or(0);
                            return Some(path[start..].iter().map(|(n, _)| *n).collect());
                        }
                        Mark::Closed => {}
                    },
                    None => {
                        mark.insert(at, Mark::Closed);
                        path.pop();
                    }
                }
            }
        }
    }
    None
}

/// Tasks done in an earlier run whose output a task of this run needs but cannot have: a secret output is
/// never kept, and a plain one may predate the journal's record of it. They run again (a fresh join token, say),
/// transitively. Returns them as (node, stage, task) → why.
pub fn again(plans: &mut [NodePlan], progress: &Progress, fresh: bool) -> BTreeMap<(String, String, String), String> {
    let mut forced = BTreeMap::new();
    loop {
        let mut wanted: Vec<(String, String, String)> = Vec::new();
        for plan in plans.iter() {
            for t in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
                for need in &t.needs {
                    let kept = !need.secret && !fresh && progress.output(&need.node, &need.name).is_some();
                    if kept {
                        continue;
                    }
                    let why = format!(
                        "output `{}` is needed by {}: {}/{}",
                        need.name, plan.node, t.stage, t.task
                    );
                    wanted.push((need.node.clone(), need.name.clone(), why));
                }
            }
        }
        let mut changed = false;
        for (node, name, why) in wanted {
            let Some(plan) = plans.iter_mut().find(|p| p.node == node) else {
                continue;
            };
            let Some(t) = plan
                .tasks
                .iter_mut()
                .find(|t| t.register.as_ref().is_some_and(|r| r.name == name))
            else {
                continue;
            };
            // A task that would run only if an earlier one changed must run: the output is never kept.
            let conditional = matches!(t.why, Some(super::Why::IfChanged(_)));
            if t.decision == Decision::Skip(SkipReason::Done) || conditional {
                t.decision = Decision::Run;
                t.why = Some(super::Why::Again(why.clone()));
                forced.insert((node.clone(), t.stage.clone(), t.task.clone()), why);
                changed = true;
            }
        }
        if !changed {
            return forced;
        }
    }
}
