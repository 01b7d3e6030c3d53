//! `plan` (what a run would do, changing nothing; also `apply --dry-run`) and `plan --check`, the drift check: the
//! guards of the tasks recorded done, run on the nodes.

use std::path::Path;
use std::sync::Arc;

use super::input::{DayTwo, Input, load_for, preliminary_plans, read_secrets, use_bundle, used_secrets};
use super::{Exit, Failure, run};
use crate::cli::{Cli, PlanArgs, SelectArgs};
use crate::engine;
use crate::facts::Facts;
use crate::journal::{Progress, StateDir};
use crate::plan::{self, NodePlan};
use crate::secrets::{self, Digests, Vault};

pub(super) async fn plan(cli: &Cli, args: &PlanArgs) -> Result<Exit, Failure> {
    let (input, progress, plans, note) = preview(cli, &args.select, args.fresh, None, None)?;
    print!("{}", facts_note(&input.nodes, &progress));
    print!("{note}");
    print!("{}", plan::render(&plans, args.commands));
    if !args.check {
        return Ok(Exit::Ok);
    }
    // The drift check: the guards of the tasks recorded done, on the nodes, with the real facts.
    let (vault, node_secrets) = read_secrets(cli, &input, &plans)?;
    let digests = match StateDir::existing(&cli.state_dir).existing_digest_key() {
        Ok(Some(key)) => vault.digests(&key),
        _ => Digests::none(),
    };
    let spec = run::spec(
        cli,
        &input,
        progress,
        Arc::new(vault),
        digests,
        node_secrets,
        args.accept_new_host_keys,
    );
    let checks = engine::drift::check_guards(spec).await;
    println!();
    print!("{}", engine::drift::render(&checks));
    Ok(if engine::drift::all_hold(&checks) {
        Exit::Ok
    } else {
        Exit::NodesFailed
    })
}

/// `plan` and `apply --dry-run`: the plans a run would start with, changing nothing (a `--fresh` generation is
/// only started in memory). Secrets that can be read are compared by their digests; the note says when some
/// could not be.
pub(super) fn preview(
    cli: &Cli,
    select: &SelectArgs,
    fresh: bool,
    day_two: Option<&DayTwo>,
    bundle: Option<&Path>,
) -> Result<(Input, Progress, Vec<NodePlan>, String), Failure> {
    let state = StateDir::existing(&cli.state_dir);
    let mut progress = state.progress().unwrap_or_default();
    let mut input = load_for(cli, select, fresh, &progress, day_two)?;
    use_bundle(&mut input, bundle)?;
    if input.selection.fresh {
        plan::start_fresh(&input.inventory, &input.playbooks, &input.selection, &mut progress)?;
    }
    let plans = preliminary_plans(&input, &progress, &Digests::none())?;
    let mut vault = Vault::default();
    let mut unread = Vec::new();
    for name in used_secrets(&plans) {
        match input.inventory.secrets.get(&name).map(secrets::read) {
            Some(Ok(secret)) => vault.insert(&name, secret),
            _ => unread.push(name),
        }
    }
    let key = state.existing_digest_key().ok().flatten();
    let digests = key.as_ref().map(|k| vault.digests(k)).unwrap_or_default();
    let plans = preliminary_plans(&input, &progress, &digests)?;
    let resumed = input.nodes.iter().any(|n| progress.done_count(n) > 0);
    let note = match (resumed, key.is_some(), unread.is_empty()) {
        (true, true, false) => format!(
            "Secrets: {} not set here; the tasks using them are compared without them.\n\n",
            unread.join(", ")
        ),
        (true, false, _) if !vault.is_empty() || !unread.is_empty() => {
            "Secrets: no digest key in the state dir yet; the tasks using secrets are compared without them.\n\n"
                .to_string()
        }
        _ => String::new(),
    };
    Ok((input, progress, plans, note))
}

pub(super) fn facts_note(nodes: &[String], progress: &Progress) -> String {
    let assumed: Vec<&str> = nodes
        .iter()
        .filter(|n| progress.facts(n).is_none())
        .map(String::as_str)
        .collect();
    if assumed.is_empty() {
        return "Facts: as gathered in the last run.\n\n".into();
    }
    let f = Facts::assumed();
    format!(
        "Facts: not gathered yet for {} — assuming {} {} ({}); the real facts are used when kubeboot connects.\n\n",
        assumed.join(", "),
        f.os_id,
        f.os_version,
        f.arch
    )
}
