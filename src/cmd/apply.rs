//! `apply`, and the run of a day-two command's playbooks: the checks, `--fresh`, the secrets, the journal, the
//! confirmation screen (with its look at the host keys) or the headless frontend, and the exit code.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::input::{DayTwo, load_for, preliminary_plans, preliminary_plans_again, read_secrets, use_bundle};
use super::{Exit, Failure, plan, run};
use crate::cli::{ApplyArgs, Cli, OutputFormat};
use crate::engine::{self, NodeSecrets, RunSpec};
use crate::event::{HostKeyAnswer, HostKeyIssue, HostKeyPrompt};
use crate::fanout;
use crate::inventory::Inventory;
use crate::journal::{Record, StateDir};
use crate::plan::NodePlan;
use crate::secrets::Digests;
use crate::ssh::{self, HostKeyState, NewHostKeys};
use crate::ui::{headless, tui};

pub(super) async fn apply(cli: &Cli, args: &ApplyArgs) -> Result<Exit, Failure> {
    run_playbooks(cli, args, None).await.map(|(exit, _)| exit)
}

/// `apply`, or a day-two command's playbooks: the same checks, frontends, journal and exit codes. Returns the
/// exit code and the run's id (None when nothing ran: a dry run, or the operator declined).
pub(super) async fn run_playbooks(
    cli: &Cli,
    args: &ApplyArgs,
    day_two: Option<&DayTwo>,
) -> Result<(Exit, Option<String>), Failure> {
    if args.dry_run {
        let (input, progress, plans, note) =
            plan::preview(cli, &args.select, args.fresh, day_two, args.bundle.as_deref())?;
        print!("{}", plan::facts_note(&input.nodes, &progress));
        print!("{note}");
        print!("{}", crate::plan::render(&plans, true));
        println!("dry run: nothing was run.");
        return Ok((Exit::Ok, None));
    }
    let state = StateDir::open(&cli.state_dir)?;
    let _lock = state.lock()?;
    let mut progress = state
        .progress()
        .map_err(|e| Failure::Other(format!("cannot read the journal: {e}")))?;
    let mut input = load_for(cli, &args.select, args.fresh, &progress, day_two)?;
    use_bundle(&mut input, args.bundle.as_deref())?;
    if let Some(d) = day_two {
        super::daytwo::before_run(cli, d, &input.inventory, &input.nodes, &progress, &state)?;
    }
    // --fresh: a new generation of the selected stages, in memory now and in the journal before anything runs.
    let fresh = if input.selection.fresh {
        crate::plan::start_fresh(&input.inventory, &input.playbooks, &input.selection, &mut progress)?
    } else {
        Vec::new()
    };
    let plans = preliminary_plans(&input, &progress, &Digests::none())?;
    let (vault, node_secrets) = read_secrets(cli, &input, &plans)?;
    let key = state
        .digest_key()
        .map_err(|e| Failure::Other(format!("cannot read or make the secrets' digest key: {e}")))?;
    let digests = vault.digests(&key);
    let (plans, again) = preliminary_plans_again(&input, &progress, &digests)?;
    let vault = Arc::new(vault);

    let run_id = run::run_id();
    let spec_run_id = run_id.clone();
    let log_dir = state
        .run_logs(&run_id)
        .map_err(|e| Failure::Other(format!("cannot create the log folder: {e}")))?;
    let _log_guard = run::init_run_log(&log_dir);
    tracing::info!(run = %run_id, inventory = %cli.inventory.display(), nodes = input.nodes.len(), "run started");
    let mut journal = state
        .writer()
        .map_err(|e| Failure::Other(format!("cannot open the journal: {e}")))?;
    if !fresh.is_empty() {
        let ts = fanout::now();
        let written: std::io::Result<()> = fresh.iter().try_for_each(|(node, stages)| {
            journal.append(&Record::Fresh {
                run: run_id.clone(),
                ts: ts.clone(),
                node: node.clone(),
                stages: stages.clone(),
            })
        });
        // Durable before the first task of the fresh run can be recorded.
        written
            .and_then(|()| journal.sync())
            .map_err(|e| Failure::Other(format!("cannot write the journal: {e}")))?;
    }

    let stages: Vec<String> = input.playbooks.stages.iter().map(|s| s.name.clone()).collect();
    let outlines: Vec<_> = plans.iter().map(NodePlan::outline).collect();
    let tui_wanted = !args.yes && args.output == OutputFormat::Text && std::io::stdout().is_terminal();

    let run::Wiring {
        events,
        fanout: fanout_thread,
        durable,
        front: front_rx,
    } = run::wire(run_id.clone(), Some(journal), log_dir.clone(), vault.clone())?;
    let mut spec = RunSpec {
        run_id: run_id.clone(),
        outlines: outlines.clone(),
        forks: args.forks.map(|f| f as usize),
        durable: Some(durable),
        interactive: tui_wanted,
        again,
        ..run::spec(
            cli,
            &input,
            progress,
            vault,
            digests,
            node_secrets,
            args.accept_new_host_keys,
        )
    };
    let result = if tui_wanted {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (go_tx, go_rx) = oneshot::channel();
        // The look at the host keys runs while the confirmation screen already shows its progress.
        let probes = if args.accept_new_host_keys {
            None
        } else {
            host_key_probes(&input.inventory, &input.nodes)
        };
        let setup = tui::TuiSetup {
            stages,
            nodes: outlines,
            log_dir: log_dir.clone(),
            run_id,
            host_keys: Vec::new(),
            probes,
        };
        let screen = tokio::spawn(tui::run(setup, go_tx, front_rx, control_tx));
        let answer = go_rx.await.unwrap_or(tui::Answer::Decline);
        let result = if let tui::Answer::Start { accept_host_keys_for } = answer {
            if !accept_host_keys_for.is_empty() {
                let mut names: Vec<&String> = accept_host_keys_for.iter().collect();
                names.sort();
                tracing::info!(nodes = ?names, "the operator accepted these unknown host keys");
            }
            spec.accept_host_keys_for = accept_host_keys_for;
            state.mark_latest(&spec_run_id);
            Some(engine::run(spec, events, control_rx).await)
        } else {
            // Declined: nothing ran, so no log folder of this run stays and `logs/latest` keeps
            // pointing at the last run that did.
            drop(events);
            let _ = std::fs::remove_dir_all(&log_dir);
            None
        };
        let _ = fanout_thread.join();
        let outcome = screen
            .await
            .map_err(|e| Failure::Other(format!("the screen stopped: {e}")))?;
        match outcome {
            Ok(outcome) => print!("{}", outcome.summary),
            Err(e) => eprintln!("error: the terminal UI failed: {e}"),
        }
        match result {
            Some(r) => r,
            None => {
                println!("nothing was run.");
                return Ok((Exit::Ok, None));
            }
        }
    } else {
        let style = match args.output {
            OutputFormat::Json => headless::Style::Json,
            OutputFormat::Text if std::io::stdout().is_terminal() => headless::Style::Bars,
            OutputFormat::Text => headless::Style::Plain,
        };
        state.mark_latest(&spec_run_id);
        run::headless(style, spec, events, fanout_thread, front_rx, log_dir.clone()).await
    };
    if let Some(d) = day_two {
        super::daytwo::after_run(cli, d, &input.nodes, &spec_run_id, &state)?;
    }
    Ok((run::exit_for(result), Some(spec_run_id)))
}

/// How long the host key look before the confirmation screen may take per node.
const HOST_KEY_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Looks at the host keys of the nodes whose policy refuses an unknown one, all at once, so the operator can decide
/// on the confirmation screen; each answer is sent as it comes. Unreachable nodes answer "no answer": the run reports
/// them with their own error. None when no node needs a look.
fn host_key_probes(inventory: &Inventory, nodes: &[String]) -> Option<tui::HostKeyProbes> {
    let targets: Vec<ssh::Target> = nodes
        .iter()
        .filter_map(|name| inventory.node(name))
        .filter(|node| !node.ssh.accept_new_host_keys)
        .map(|node| {
            // No credentials: the probe never logs in.
            let mut target = node.ssh_target(NodeSecrets::default(), false);
            target.key = None;
            target.agent = false;
            target.new_host_keys = NewHostKeys::Refuse;
            target.connect_timeout = target.connect_timeout.min(HOST_KEY_PROBE_TIMEOUT);
            target
        })
        .collect();
    if targets.is_empty() {
        return None;
    }
    let names = targets.iter().map(|t| t.node.clone()).collect();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut probes: futures::stream::FuturesUnordered<_> = targets
            .into_iter()
            .map(|target| async move { (target.node.clone(), ssh::probe_host_key(&target).await) })
            .collect();
        while let Some((node, state)) = futures::StreamExt::next(&mut probes).await {
            let prompt = |fingerprint, issue| {
                HostKeyAnswer::Found(HostKeyPrompt {
                    node: node.clone(),
                    fingerprint,
                    issue,
                })
            };
            let answer = match state {
                Ok(HostKeyState::Known) => HostKeyAnswer::Known,
                Ok(HostKeyState::Unknown { fingerprint }) => prompt(fingerprint, HostKeyIssue::Unknown),
                Ok(HostKeyState::Changed {
                    line,
                    path,
                    fingerprint,
                }) => prompt(fingerprint, HostKeyIssue::Changed { line, path }),
                Err(e) => {
                    tracing::info!(node = %node, error = %e, "host key not checked before the run");
                    HostKeyAnswer::NoAnswer
                }
            };
            // The screen may be gone (the operator left): nobody needs the rest.
            if tx.send((node, answer)).is_err() {
                return;
            }
        }
    });
    Some(tui::HostKeyProbes {
        nodes: names,
        answers: rx,
    })
}
