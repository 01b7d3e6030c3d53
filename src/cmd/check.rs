//! `check`: the `preflight` stage and the checks of an installed cluster (`<playbooks>/check/`), run on every
//! selected node as a fresh run that writes no journal.

use std::sync::Arc;

use super::input::{Input, default_assets, preliminary_plans, read_secrets};
use super::{Exit, Failure, run};
use crate::cli::{CheckArgs, Cli, OutputFormat};
use crate::engine::RunSpec;
use crate::inventory;
use crate::journal::Progress;
use crate::plan::{self, NodePlan, Selection};
use crate::playbook;
use crate::secrets::Digests;
use crate::ui::headless;

/// Runs the checks and prints them headless; exit 1 when one fails.
pub(super) async fn check(cli: &Cli, args: &CheckArgs) -> Result<Exit, Failure> {
    let progress = Progress::empty();
    let inventory = inventory::load(&cli.inventory)?;
    let assets = cli.assets.clone().unwrap_or_else(|| default_assets(&cli.playbooks));
    let playbooks = playbook::load(&cli.playbooks, &assets)?;
    let has_preflight = playbooks.stages.iter().any(|s| s.name == "preflight");
    let mut books = playbooks.clone();
    // Without a preflight stage, check still connects, logs in and reads the facts of every node.
    books.stages.retain(|s| s.name == "preflight");
    // The checks of an installed cluster (certificate expiry) live in `<playbooks>/check/`.
    let checks = cli.playbooks.join("check");
    if checks.is_dir() {
        books.stages.extend(playbook::load(&checks, &assets)?.stages);
    }
    let selection = Selection {
        limit: args.limit.clone(),
        only: Vec::new(),
        from: None,
        fresh: true,
    };
    plan::check(&inventory, &books, &progress, &selection)?;
    let mut nodes: Vec<String> = plan::select_nodes(&inventory, &books, &selection)?
        .iter()
        .map(|n| n.name.clone())
        .collect();
    if !has_preflight {
        // Every node `--limit` names, whether or not a check stage runs on it.
        nodes = inventory
            .nodes
            .iter()
            .filter(|n| selection.limits_to(n))
            .map(|n| n.name.clone())
            .collect();
    }
    let input = Input {
        inventory: Arc::new(inventory),
        playbooks: Arc::new(books),
        selection,
        nodes,
    };
    let plans = preliminary_plans(&input, &progress, &Digests::none())?;
    let (vault, node_secrets) = read_secrets(cli, &input, &plans)?;
    let vault = Arc::new(vault);
    let log_dir = std::env::temp_dir().join(format!("kubeboot-check-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&log_dir);
    let wiring = run::wire(run::run_id(), None, log_dir.clone(), vault.clone())?;
    let style = if args.output == OutputFormat::Json {
        headless::Style::Json
    } else {
        headless::Style::Plain
    };
    let spec = RunSpec {
        outlines: plans.iter().map(NodePlan::outline).collect(),
        ..run::spec(
            cli,
            &input,
            progress,
            vault,
            Digests::none(),
            node_secrets,
            args.accept_new_host_keys,
        )
    };
    let result = run::headless(style, spec, wiring.events, wiring.fanout, wiring.front, log_dir.clone()).await;
    let _ = std::fs::remove_dir_all(&log_dir);
    Ok(run::exit_for(result))
}
