//! The commands behind the command line: load and check the input, choose the frontend,
//! run the engine, and map the outcome to an exit code.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::cli::{
    ApplyArgs, CheckArgs, Cli, Command, LabArgs, LabCommand, OutputFormat, PlanArgs, SelectArgs, StatusArgs,
};
use crate::diag::{Diagnostic, Diagnostics};
use crate::engine::{self, NodeSecrets, RunResult, RunSpec};
use crate::event::SkipReason;
use crate::event::{Control, HostKeyAnswer, HostKeyIssue, HostKeyPrompt};
use crate::facts::Facts;
use crate::inventory::{self, Inventory, NewHostKeys};
use crate::journal::Record;
use crate::journal::{Progress, StateDir, StateError};
use crate::plan::{self, Decision, NodePlan, Selection};
use crate::playbook::{self, Playbooks};
use crate::secrets::{self, Digests, Vault};
use crate::ssh::{self, HostKeyState};
use crate::ui::{headless, tui};
use crate::{fanout, lab};

/// How kubeboot exits (the numbers are part of the contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// All selected nodes finished.
    Ok = 0,
    /// One or more nodes failed.
    NodesFailed = 1,
    /// Bad input: nothing was run.
    BadInput = 2,
    /// Another run holds the state lock.
    Locked = 3,
    /// Interrupted; progress is saved.
    Interrupted = 130,
}

/// Runs one command line.
pub async fn main(cli: Cli) -> Exit {
    let result = match &cli.command {
        Command::Apply(args) => apply(&cli, args).await,
        Command::Plan(args) => plan_cmd(&cli, args).await,
        Command::Status(args) => status(&cli, args),
        Command::Check(args) => check(&cli, args).await,
        Command::Lab(args) => lab_cmd(args),
        Command::Bundle(args) => crate::bundle_cmd::bundle(&cli, args).await,
        Command::Kubeconfig(args) => crate::daytwo::kubeconfig(&cli, args).await,
        Command::Backup(args) => crate::daytwo::backup(&cli, args).await,
        Command::Reset(args) => crate::daytwo::reset(&cli, args).await,
        Command::Upgrade(args) => crate::daytwo::upgrade(&cli, args).await,
        Command::RenewCerts(args) => crate::daytwo::renew_certs(&cli, args).await,
        Command::Report(args) => crate::report::report(&cli, args),
    };
    match result {
        Ok(exit) => exit,
        Err(Failure::BadInput(d)) => {
            eprintln!("{d}");
            eprintln!("nothing was run.");
            Exit::BadInput
        }
        Err(Failure::State(e @ StateError::Locked { .. })) => {
            eprintln!("error: {e}");
            Exit::Locked
        }
        Err(Failure::State(e)) => {
            eprintln!("error: {e}");
            Exit::BadInput
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e}");
            Exit::NodesFailed
        }
    }
}

/// Why a command stopped before or outside the engine.
pub(crate) enum Failure {
    BadInput(Diagnostics),
    State(StateError),
    Other(String),
}

impl From<Diagnostics> for Failure {
    fn from(d: Diagnostics) -> Self {
        Failure::BadInput(d)
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        Failure::State(e)
    }
}

/// The operator's input, loaded and checked.
struct Input {
    inventory: Arc<Inventory>,
    playbooks: Arc<Playbooks>,
    selection: Selection,
    nodes: Vec<String>,
}

/// A day-two command as the engine sees it: the playbook folders it runs (below `-p`, in this order) and the
/// variables it adds for this run. The install is the top of `-p` itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct DayTwo {
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

fn load(cli: &Cli, select: &SelectArgs, fresh: bool, progress: &Progress) -> Result<Input, Failure> {
    load_for(cli, select, fresh, progress, None)
}

fn load_for(
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
fn use_bundle(input: &mut Input, dir: Option<&Path>) -> Result<(), Failure> {
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

pub(crate) fn default_assets(playbooks: &Path) -> PathBuf {
    let parent = playbooks
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join("assets")
}

/// Tasks done before that run again because this run needs their secret outputs: (node, stage, task) → why.
type Again = std::collections::BTreeMap<(String, String, String), String>;

/// Plans every selected node before connecting: with the facts remembered from the last run, or assumed ones;
/// tasks whose secret outputs this run needs are set to run again.
fn preliminary_plans(input: &Input, progress: &Progress, digests: &Digests) -> Result<Vec<NodePlan>, Failure> {
    preliminary_plans_again(input, progress, digests).map(|(plans, _)| plans)
}

fn preliminary_plans_again(
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

async fn apply(cli: &Cli, args: &ApplyArgs) -> Result<Exit, Failure> {
    run_playbooks(cli, args, None).await.map(|(exit, _)| exit)
}

/// `apply`, or a day-two command's playbooks: the same checks, frontends, journal and exit codes. Returns the
/// exit code and the run's id (None when nothing ran: a dry run, or the operator declined).
pub(crate) async fn run_playbooks(
    cli: &Cli,
    args: &ApplyArgs,
    day_two: Option<&DayTwo>,
) -> Result<(Exit, Option<String>), Failure> {
    if args.dry_run {
        let (input, progress, plans, note) = preview(cli, &args.select, args.fresh, day_two, args.bundle.as_deref())?;
        print!("{}", facts_note(&input.nodes, &progress));
        print!("{note}");
        print!("{}", plan::render(&plans, true));
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
        crate::daytwo::before_run(cli, d, &input.inventory, &input.nodes, &progress, &state)?;
    }
    // --fresh: a new generation of the selected stages, in memory now and in the journal before anything runs.
    let fresh = if input.selection.fresh {
        plan::start_fresh(&input.inventory, &input.playbooks, &input.selection, &mut progress)?
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

    let run_id = run_id();
    let spec_run_id = run_id.clone();
    let log_dir = state
        .run_logs(&run_id)
        .map_err(|e| Failure::Other(format!("cannot create the log folder: {e}")))?;
    let _log_guard = init_run_log(&log_dir);
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

    let (front_tx, front_rx) = mpsc::unbounded_channel();
    let (events, fanout_thread, durable) = fanout::start(
        run_id.clone(),
        Some(journal),
        log_dir.clone(),
        vault.clone(),
        Some(front_tx),
    )
    .map_err(|e| Failure::Other(format!("cannot start: {e}")))?;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let mut spec = RunSpec {
        run_id: run_id.clone(),
        inventory: input.inventory.clone(),
        playbooks: input.playbooks.clone(),
        progress,
        selection: input.selection.clone(),
        nodes: input.nodes.clone(),
        outlines: outlines.clone(),
        forks: args.forks.map(|f| f as usize),
        vault,
        secret_digests: digests,
        durable: Some(durable),
        secrets: node_secrets,
        accept_new_host_keys: args.accept_new_host_keys,
        accept_host_keys_for: HashSet::new(),
        fetch_root: cli.state_dir.clone(),
        interactive: tui_wanted,
        again,
    };
    let result = if tui_wanted {
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
        let printer = tokio::spawn(headless::run(style, front_rx, log_dir.clone()));
        spawn_interrupt_handler(control_tx.clone());
        state.mark_latest(&spec_run_id);
        let result = engine::run(spec, events, control_rx).await;
        drop(control_tx);
        let _ = fanout_thread.join();
        let _ = printer.await;
        result
    };
    if let Some(d) = day_two {
        crate::daytwo::after_run(cli, d, &input.nodes, &spec_run_id, &state)?;
    }
    Ok((exit_for(result), Some(spec_run_id)))
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
        .filter(|node| node.ssh.new_host_keys == NewHostKeys::Refuse)
        .map(|node| {
            // No credentials: the probe never logs in.
            let mut target = engine::node_target(node, NodeSecrets::default(), false);
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

fn exit_for(result: RunResult) -> Exit {
    if result.interrupted {
        Exit::Interrupted
    } else if result.nodes_failed + result.nodes_blocked > 0 {
        Exit::NodesFailed
    } else {
        Exit::Ok
    }
}

/// Ctrl-C (and SIGTERM) cancel the run cleanly; a second Ctrl-C leaves at once (the journal is already durable).
fn spawn_interrupt_handler(control: mpsc::UnboundedSender<Control>) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        eprintln!("\ninterrupted: cancelling running commands (progress is saved; Ctrl-C again to leave at once)");
        let _ = control.send(Control::Cancel);
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(Exit::Interrupted as i32);
        }
    });
}

/// Reads the SSH/sudo passwords of the selected nodes and the named secrets the plans use.
fn read_secrets(
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
fn used_secrets(plans: &[NodePlan]) -> BTreeSet<String> {
    plans
        .iter()
        .flat_map(|p| &p.tasks)
        .filter(|t| t.decision != Decision::Skip(SkipReason::Condition))
        .flat_map(|t| t.secrets.iter().cloned())
        .collect()
}

/// `plan` and `apply --dry-run`: the plans a run would start with, changing nothing (a `--fresh` generation is
/// only started in memory). Secrets that can be read are compared by their digests; the note says when some
/// could not be.
fn preview(
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

pub(crate) fn run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let stamp = now.format(&format).unwrap_or_else(|_| now.unix_timestamp().to_string());
    format!("{stamp}-{:04x}", rand::random::<u16>())
}

/// The run log (`<log_dir>/kubeboot.log`), written in the background by tracing-appender.
fn init_run_log(log_dir: &Path) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    // Created private first: the appender keeps the mode of an existing file.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_dir.join("kubeboot.log"));
    let appender = tracing_appender::rolling::never(log_dir, "kubeboot.log");
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBEBOOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init()
        .ok()?;
    Some(guard)
}

fn facts_note(nodes: &[String], progress: &Progress) -> String {
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

async fn plan_cmd(cli: &Cli, args: &PlanArgs) -> Result<Exit, Failure> {
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
    let spec = RunSpec {
        run_id: "check".into(),
        inventory: input.inventory.clone(),
        playbooks: input.playbooks.clone(),
        progress,
        selection: input.selection.clone(),
        nodes: input.nodes.clone(),
        outlines: Vec::new(),
        forks: None,
        vault: Arc::new(vault),
        fetch_root: cli.state_dir.clone(),
        secret_digests: digests,
        durable: None,
        secrets: node_secrets,
        accept_new_host_keys: args.accept_new_host_keys,
        accept_host_keys_for: HashSet::new(),
        interactive: false,
        again: Again::new(),
    };
    let checks = engine::drift::check_guards(spec).await;
    println!();
    print!("{}", engine::drift::render(&checks));
    Ok(if engine::drift::all_hold(&checks) {
        Exit::Ok
    } else {
        Exit::NodesFailed
    })
}

fn status(cli: &Cli, args: &StatusArgs) -> Result<Exit, Failure> {
    let (text, json) = status_report(cli)?;
    match args.output {
        OutputFormat::Json => print!("{json}"),
        _ => print!("{text}"),
    }
    Ok(Exit::Ok)
}

/// What `status` prints: the text and the JSON lines (one row per node), both whole.
pub(crate) fn status_report(cli: &Cli) -> Result<(String, String), Failure> {
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

async fn check(cli: &Cli, args: &CheckArgs) -> Result<Exit, Failure> {
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
    let select = SelectArgs {
        limit: args.limit.clone(),
        only: Vec::new(),
        from: None,
    };
    let selection = Selection {
        limit: select.limit.clone(),
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
        nodes = inventory
            .nodes
            .iter()
            .filter(|n| {
                args.limit.is_empty() || args.limit.iter().any(|l| *l == n.name || Some(l) == n.cluster.as_ref())
            })
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
    let (front_tx, front_rx) = mpsc::unbounded_channel();
    let (events, fanout_thread, _durable) =
        fanout::start(run_id(), None, log_dir.clone(), vault.clone(), Some(front_tx))
            .map_err(|e| Failure::Other(format!("cannot start: {e}")))?;
    let style = if args.output == OutputFormat::Json {
        headless::Style::Json
    } else {
        headless::Style::Plain
    };
    let printer = tokio::spawn(headless::run(style, front_rx, log_dir.clone()));
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    spawn_interrupt_handler(control_tx.clone());
    let spec = RunSpec {
        run_id: "check".into(),
        inventory: input.inventory.clone(),
        playbooks: input.playbooks.clone(),
        progress,
        selection: input.selection.clone(),
        nodes: input.nodes.clone(),
        outlines: plans.iter().map(NodePlan::outline).collect(),
        forks: None,
        vault,
        secret_digests: Digests::none(),
        durable: None,
        secrets: node_secrets,
        accept_new_host_keys: args.accept_new_host_keys,
        accept_host_keys_for: HashSet::new(),
        fetch_root: cli.state_dir.clone(),
        interactive: false,
        again: Again::new(),
    };
    let result = engine::run(spec, events, control_rx).await;
    drop(control_tx);
    let _ = fanout_thread.join();
    let _ = printer.await;
    let _ = std::fs::remove_dir_all(&log_dir);
    Ok(exit_for(result))
}

fn lab_cmd(args: &LabArgs) -> Result<Exit, Failure> {
    match &args.command {
        LabCommand::Up {
            nodes,
            dir,
            first_address,
            first_port,
            isolated,
            vm,
            like,
            rhel,
            containerd_1_7,
        } => {
            if *vm {
                return vm_lab_up(*nodes, dir, *first_address, *first_port, like, rhel);
            }
            if !rhel.is_empty() && !*isolated {
                return Err(Diagnostics::from(
                    Diagnostic::file("command line", "--rhel needs --isolated or --vm")
                        .with_hint("an sshd lab node shares this machine's own system and cannot look like RHEL"),
                )
                .into());
            }
            let mut opts = lab::LabOptions {
                dir: dir.clone(),
                nodes: *nodes,
                first_address: *first_address,
                first_port: *first_port,
                isolated: *isolated,
                kinds: Vec::new(),
                like: like.clone(),
                private_tmp: false,
            };
            opts.kinds = lab_node_kinds(&opts, rhel, containerd_1_7)?;
            let lab = lab::up(&opts).map_err(|e| Failure::Other(e.to_string()))?;
            let what = if *isolated { " isolated" } else { "" };
            println!("lab up: {}{what} node(s) as user {}", lab.nodes.len(), lab.user);
            for n in &lab.nodes {
                let kind = n.kind.map(|k| format!("  ({k})")).unwrap_or_default();
                println!("  {}  {}:{}{kind}", n.name, n.address, n.port);
            }
            println!("inventory: {}", lab.inventory.display());
            println!("stop it with: kubeboot lab down --dir {}", dir.display());
            Ok(Exit::Ok)
        }
        LabCommand::Down { dir } => {
            lab::down(dir).map_err(|e| Failure::Other(e.to_string()))?;
            println!("lab down: {}", dir.display());
            Ok(Exit::Ok)
        }
        // Only the lab's own processes: each acts on the sshd recorded in the node's PID file
        // (checked to be an sshd) and on what runs under it.
        LabCommand::Stop(n) => {
            lab::stop_node(&n.dir, &n.node).map_err(|e| Failure::Other(e.to_string()))?;
            println!(
                "lab stop: {} (start it again with: kubeboot lab start {} --dir {})",
                n.node,
                n.node,
                n.dir.display()
            );
            Ok(Exit::Ok)
        }
        LabCommand::Freeze(n) => {
            lab::pause_node(&n.dir, &n.node).map_err(|e| Failure::Other(e.to_string()))?;
            println!(
                "lab freeze: {} (thaw it with: kubeboot lab start {} --dir {})",
                n.node,
                n.node,
                n.dir.display()
            );
            Ok(Exit::Ok)
        }
        LabCommand::Start(n) => {
            lab::resume_node(&n.dir, &n.node)
                .and_then(|()| lab::start_node(&n.dir, &n.node))
                .map_err(|e| Failure::Other(e.to_string()))?;
            println!("lab start: {}", n.node);
            Ok(Exit::Ok)
        }
    }
}

/// `lab up --vm`: boots the VMs and prints where they are and what it took.
fn vm_lab_up(
    nodes: usize,
    dir: &std::path::Path,
    first_address: std::net::Ipv4Addr,
    first_port: u16,
    like: &Option<std::path::PathBuf>,
    rhel: &[String],
) -> Result<Exit, Failure> {
    let mut opts = lab::vm::VmOptions::new(dir);
    opts.nodes = nodes;
    opts.like = like.clone();
    opts.first_address = first_address;
    opts.first_port = first_port;
    opts.rhel_like = rhel.to_vec();
    let lab = lab::vm::up(&opts).map_err(|e| Failure::Other(e.to_string()))?;
    println!(
        "lab up: {} VM(s) as user {} (image {:.0?}, boot {:.0?}, {:?})",
        lab.nodes.len(),
        lab.user,
        lab.image_time,
        lab.boot_time,
        opts.accel
    );
    for n in &lab.nodes {
        let rhel = if n.rhel_like { "  (RHEL-like sudo)" } else { "" };
        println!("  {}  ssh {}  switch {}{rhel}", n.name, n.ssh, n.address);
    }
    println!("inventory: {}", lab.inventory.display());
    println!("stop it with: kubeboot lab down --dir {}", dir.display());
    Ok(Exit::Ok)
}

/// The per-node look of an isolated lab from `--rhel` and `--containerd-1-7`, by node name.
fn lab_node_kinds(
    opts: &lab::LabOptions,
    rhel: &[String],
    containerd_1_7: &[String],
) -> Result<Vec<lab::NodeKind>, Failure> {
    if rhel.is_empty() && containerd_1_7.is_empty() {
        return Ok(Vec::new());
    }
    let names = lab::planned_node_names(opts).map_err(|e| Failure::Other(e.to_string()))?;
    for asked in rhel.iter().chain(containerd_1_7) {
        if !names.contains(asked) {
            let flag = if rhel.contains(asked) {
                "--rhel"
            } else {
                "--containerd-1-7"
            };
            return Err(Diagnostics::from(
                Diagnostic::file(
                    "command line",
                    format!("{flag} {asked}: the lab has no node named `{asked}`"),
                )
                .with_hint(format!("its nodes are {}", names.join(", "))),
            )
            .into());
        }
    }
    Ok(names
        .iter()
        .map(|name| lab::NodeKind {
            os: if rhel.contains(name) {
                lab::NodeOs::Rhel
            } else {
                lab::NodeOs::Ubuntu
            },
            containerd: if containerd_1_7.contains(name) {
                lab::ContainerdLayout::V2
            } else {
                lab::ContainerdLayout::V3
            },
        })
        .collect())
}
