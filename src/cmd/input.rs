//! The operator's input, loaded and checked (inventory, playbooks or a day-two command's folders, `--limit`/
//! `--only`/`--from`, `--bundle`), the preliminary plans of every selected node, and the secrets they use.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Failure;
use crate::cli::{Cli, SelectArgs};
use crate::diag::{Diagnostic, Diagnostics};
use crate::engine::NodeSecrets;
use crate::event::SkipReason;
use crate::facts::Facts;
use crate::inventory::{self, Inventory};
use crate::journal::Progress;
use crate::plan::{self, Decision, NodePlan, Selection};
use crate::playbook::{self, Playbooks};
use crate::secrets::{self, Digests, Vault};

/// The operator's input, loaded and checked.
pub(super) struct Input {
    pub inventory: Arc<Inventory>,
    pub playbooks: Arc<Playbooks>,
    pub selection: Selection,
    pub nodes: Vec<String>,
}

/// A day-two command as the engine sees it: the playbook folders it runs (below `-p`, in this order) and the
/// variables it adds for this run. The install is the top of `-p` itself.
#[derive(Debug, Clone, Default)]
pub(super) struct DayTwo {
    /// Folder names below the playbooks folder, e.g. `["backup", "reset"]`.
    pub folders: Vec<&'static str>,
    /// Added to the inventory's `[vars]` for this run (a backup's time stamp, `--purge-packages`, ...).
    pub vars: std::collections::BTreeMap<String, serde_json::Value>,
    /// Plan as if nothing had finished: the command's work is done anew on every call (kubeconfig, check).
    pub always: bool,
    /// The command's name, for what it does before and after the run (`reset`, `upgrade`, ...).
    pub command: &'static str,
}

/// The stages of a day-two command: every folder's playbooks, in the command's order, one stage name once.
fn load_day_two(cli: &Cli, day_two: &DayTwo, assets: &Path) -> Result<Playbooks, Failure> {
    let mut stages: Vec<playbook::Stage> = Vec::new();
    let mut problems = Diagnostics::default();
    for folder in &day_two.folders {
        let books = playbook::load(&cli.playbooks.join(folder), assets)?;
        for stage in books.stages {
            if let Some(first) = stages.iter().find(|s| s.name == stage.name) {
                problems.push(
                    Diagnostic::at(
                        &stage.file,
                        stage.location.line,
                        stage.location.column,
                        format!("stage `{}` is also defined in {}", stage.name, first.file.display()),
                    )
                    .with_hint("one command's stages must have distinct names"),
                );
                continue;
            }
            stages.push(stage);
        }
    }
    let books = Playbooks {
        dir: cli.playbooks.join(day_two.folders.first().copied().unwrap_or_default()),
        assets_dir: assets.to_path_buf(),
        stages,
    };
    Ok(problems.into_result(books)?)
}

pub(super) fn load(cli: &Cli, select: &SelectArgs, fresh: bool, progress: &Progress) -> Result<Input, Failure> {
    load_for(cli, select, fresh, progress, None)
}

pub(super) fn load_for(
    cli: &Cli,
    select: &SelectArgs,
    fresh: bool,
    progress: &Progress,
    day_two: Option<&DayTwo>,
) -> Result<Input, Failure> {
    let mut inventory = inventory::load(&cli.inventory)?;
    let assets = cli.assets.clone().unwrap_or_else(|| default_assets(&cli.playbooks));
    let playbooks = match day_two {
        None => playbook::load(&cli.playbooks, &assets)?,
        Some(d) => {
            for (k, v) in &d.vars {
                inventory.vars.insert(k.clone(), v.clone());
            }
            load_day_two(cli, d, &assets)?
        }
    };
    let selection = Selection {
        limit: select.limit.clone(),
        only: select.only.clone(),
        from: select.from.clone(),
        fresh: fresh || day_two.is_some_and(|d| d.always),
    };
    plan::check(&inventory, &playbooks, progress, &selection)?;
    let nodes = plan::select_nodes(&inventory, &playbooks, &selection)?
        .iter()
        .map(|n| n.name.clone())
        .collect();
    Ok(Input {
        inventory: Arc::new(inventory),
        playbooks: Arc::new(playbooks),
        selection,
        nodes,
    })
}

/// `--bundle DIR`: serve this folder instead of the inventory's `[sources] bundle`.
pub(super) fn use_bundle(input: &mut Input, dir: Option<&Path>) -> Result<(), Failure> {
    let Some(dir) = dir else {
        return Ok(());
    };
    if !dir.is_dir() {
        return Err(Failure::BadInput(
            Diagnostic::at(
                "command line",
                1,
                1,
                format!("--bundle {}: no such folder", dir.display()),
            )
            .with_hint("build one with `kubeboot bundle --out DIR`, or give the path of a copied bundle")
            .into(),
        ));
    }
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    Arc::make_mut(&mut input.inventory).sources.bundle = Some(dir);
    Ok(())
}

pub(super) fn default_assets(playbooks: &Path) -> PathBuf {
    let parent = playbooks
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join("assets")
}

/// Tasks done before that run again because this run needs their secret outputs: (node, stage, task) → why.
pub(super) type Again = std::collections::BTreeMap<(String, String, String), String>;

/// Plans every selected node before connecting: with the facts remembered from the last run, or assumed ones;
/// tasks whose secret outputs this run needs are set to run again.
pub(super) fn preliminary_plans(
    input: &Input,
    progress: &Progress,
    digests: &Digests,
) -> Result<Vec<NodePlan>, Failure> {
    preliminary_plans_again(input, progress, digests).map(|(plans, _)| plans)
}

pub(super) fn preliminary_plans_again(
    input: &Input,
    progress: &Progress,
    digests: &Digests,
) -> Result<(Vec<NodePlan>, Again), Failure> {
    let assumed = Facts::assumed();
    let mut plans = Vec::new();
    let mut problems = Diagnostics::default();
    for node in &input.nodes {
        let facts = progress.facts(node).unwrap_or(&assumed);
        match plan::plan_node(
            &input.inventory,
            &input.playbooks,
            node,
            facts,
            progress,
            digests,
            &input.selection,
        ) {
            Ok(p) => plans.push(p),
            Err(d) => problems.0.extend(d.0),
        }
    }
    let mut plans = problems.into_result(plans).map_err(Failure::BadInput)?;
    let again = plan::depends::again(&mut plans, progress, input.selection.fresh);
    Ok((plans, again))
}

/// Reads the SSH/sudo passwords of the selected nodes and the named secrets the plans use.
pub(super) fn read_secrets(
    cli: &Cli,
    input: &Input,
    plans: &[NodePlan],
) -> Result<(Vault, HashMap<String, NodeSecrets>), Failure> {
    let mut vault = Vault::default();
    let mut problems = Diagnostics::default();
    let mut per_node = HashMap::new();
    let at = |line: usize, msg: String| Diagnostic::at(&cli.inventory, line, 1, msg);
    // Nodes whose sudo password variable is unset and that use their login password instead.
    let mut sudo_fallback: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in &input.nodes {
        let Some(node) = input.inventory.node(name) else {
            continue;
        };
        let mut read = |source: &Option<inventory::SecretSource>, what: &str| match source {
            None => None,
            Some(s) => match secrets::read(s) {
                Ok(secret) => {
                    vault.add_mask(secret.clone());
                    Some(secret)
                }
                Err(e) => {
                    problems.push(at(node.line, format!("{name}: cannot read the {what}: {e}")));
                    None
                }
            },
        };
        let password = read(&node.ssh.password, "SSH password");
        let sudo_password = match &node.ssh.sudo_password {
            // The guide's promise: without its own sudo password, sudo uses the login password. A
            // named variable that is not set counts as none when there is a login password.
            Some(inventory::SecretSource::Env(var)) if password.is_some() && std::env::var_os(var).is_none() => {
                sudo_fallback.entry(var.clone()).or_default().push(name.clone());
                password.clone()
            }
            Some(_) => read(&node.ssh.sudo_password, "sudo password"),
            None => password.clone(),
        };
        per_node.insert(
            name.clone(),
            NodeSecrets {
                password,
                sudo_password,
            },
        );
    }
    for (var, nodes) in &sudo_fallback {
        eprintln!(
            "note: {var} is not set: sudo uses the SSH login password on {}",
            nodes.join(", ")
        );
    }
    for name in used_secrets(plans) {
        match input.inventory.secrets.get(&name) {
            Some(source) => match secrets::read(source) {
                Ok(secret) => vault.insert(&name, secret),
                Err(e) => problems.push(at(1, format!("secret `{name}`: {e}"))),
            },
            None => problems.push(at(1, format!("secret `{name}` is used but not defined in [secrets]"))),
        }
    }
    problems.into_result((vault, per_node)).map_err(Failure::BadInput)
}

/// The secrets the tasks of these plans use, done ones included: a task recorded done runs again when one of
/// its secrets changed, which only its value tells.
pub(super) fn used_secrets(plans: &[NodePlan]) -> BTreeSet<String> {
    plans
        .iter()
        .flat_map(|p| &p.tasks)
        .filter(|t| t.decision != Decision::Skip(SkipReason::Condition))
        .flat_map(|t| t.secrets.iter().cloned())
        .collect()
}
