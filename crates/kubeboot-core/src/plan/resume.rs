//! What the journal says about a planned task: whether it runs again and why (resume is decided here, when
//! planning), and `--fresh`, which starts a new generation of the selected stages.

use crate::diag::Diagnostics;
use crate::event::SkipReason;
use crate::inventory::Inventory;
use crate::journal::Progress;
use crate::playbook::{Playbooks, TaskKey};
use crate::secrets::Digests;

use super::select::{select_nodes, selected_stages, stage_runs_on};
use super::{Decision, PlannedTask, Selection, Why};

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

/// Whether a task (whose `when` holds) runs, from the journal: it runs when it never finished in its stage's
/// current generation, when its content or its secrets differ from its last finish, when a task it depends on
/// reported `changed` after that finish, or (conditionally, decided by the engine) when such a task runs now.
/// `earlier` are the node's tasks planned before it; `boot` is the node's boot now (empty: not known), and a finish
/// in another boot that the node never synced does not count.
pub fn resume(
    node: &str,
    t: &PlannedTask,
    progress: &Progress,
    secrets: &Digests,
    earlier: &[PlannedTask],
    boot: &str,
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
    if progress.lost_in_restart(node, done, boot) {
        return run(Why::Restarted);
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
