//! Day-two commands: `kubeconfig`, `backup`, `reset`, `upgrade`, `renew-certs`. Each is a thin entry point over
//! playbooks in a folder below `-p` (`playbooks/kubeconfig/`, `playbooks/backup/`, ...), run by the same engine as
//! the install, so they stream, resume and journal the same way. What is here is only what a playbook cannot do:
//! the typed confirmation of a reset, the journal records a reset leaves, the version check of an upgrade and its
//! order (one node of each cluster at a time), and the kubeconfig file written on the jump host.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::apply::run_playbooks;
use super::input::DayTwo;
use super::run::run_id;
use super::{Exit, Failure};
use crate::cli::{ApplyArgs, Cli, KubeconfigArgs, ResetArgs, RunArgs, SelectArgs};
use crate::diag::{Diagnostic, Diagnostics};
use crate::event::NodeStatus;
use crate::inventory::{self, Inventory};
use crate::journal::{Progress, Record, StateDir};
use crate::kubeconfig;
use crate::task::fetch;

/// With `--output json` stdout carries only events: the commands' own report lines go to stderr then.
static REPORT_TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints one report line of a day-two command (stdout, or stderr under `--output json`).
macro_rules! say {
    ($($arg:tt)*) => {
        if REPORT_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

fn report_mode(run: &RunArgs) {
    let json = run.output == crate::cli::OutputFormat::Json;
    REPORT_TO_STDERR.store(json, std::sync::atomic::Ordering::Relaxed);
}

/// `ApplyArgs` for a day-two run.
fn apply_args(run: &RunArgs, limit: Vec<String>, yes: bool) -> ApplyArgs {
    ApplyArgs {
        yes: run.yes || yes,
        output: run.output,
        select: SelectArgs {
            limit,
            only: Vec::new(),
            from: None,
        },
        fresh: false,
        forks: run.forks,
        dry_run: run.dry_run,
        accept_new_host_keys: run.accept_new_host_keys,
        bundle: None,
    }
}

fn command_line(message: impl Into<String>, hint: impl Into<String>) -> Failure {
    Failure::BadInput(Diagnostics::from(
        Diagnostic::at("command line", 1, 1, message).with_hint(hint),
    ))
}

/// The clusters `--limit` selects (cluster names, or the clusters of named nodes), in inventory order.
fn selected_clusters(inv: &Inventory, limit: &[String]) -> Result<Vec<String>, Failure> {
    let mut wanted = BTreeSet::new();
    for name in limit {
        if inv.cluster(name).is_some() {
            wanted.insert(name.clone());
        } else if let Some(c) = inv.node(name).and_then(|n| n.cluster.clone()) {
            wanted.insert(c);
        } else {
            return Err(command_line(
                format!("--limit `{name}` matches no node or cluster"),
                "--limit takes cluster or node names from the inventory",
            ));
        }
    }
    Ok(inv
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .filter(|c| limit.is_empty() || wanted.contains(c))
        .collect())
}

/// A cluster's nodes in inventory order; the first is its first control-plane node.
fn members<'a>(inv: &'a Inventory, cluster: &str) -> Vec<&'a inventory::Node> {
    inv.nodes
        .iter()
        .filter(|n| n.cluster.as_deref() == Some(cluster))
        .collect()
}

/// True when the node's latest run is `run` and it finished ok.
fn finished_ok(progress: &Progress, node: &str, run: &str) -> bool {
    progress
        .node(node)
        .is_some_and(|p| p.run == run && p.status == Some(NodeStatus::Ok))
}

fn read_progress(cli: &Cli) -> Result<Progress, Failure> {
    StateDir::existing(&cli.state_dir)
        .progress()
        .map_err(|e| Failure::Other(format!("cannot read the journal: {e}")))
}

// ---------------------------------------------------------------------------------------------------------------
// kubeconfig

/// The host the kubeconfig's server points at: the kubeconfig stage's `kubeconfig_server` var rendered for the
/// cluster's first node (the shipped one: the cluster's `vip` when it has one, else the node's address — the
/// API server's advertise address and controlPlaneEndpoint of the shipped install). Without the var, the address.
fn api_host(inv: &Inventory, stage: Option<&crate::playbook::Stage>, node: &inventory::Node) -> String {
    let rendered = stage.and_then(|stage| {
        let text = stage.vars.get("kubeconfig_server").and_then(Json::as_str)?;
        let registry = crate::playbook::template::Registry::new();
        let ctx = crate::playbook::template::Context::new(inv, node, stage, &crate::facts::Facts::assumed(), &registry);
        crate::playbook::template::Renderer::new()
            .render(text, &stage.location, "vars.kubeconfig_server", &ctx)
            .ok()
    });
    match rendered.map(|s| s.trim().to_string()) {
        Some(host) if !host.is_empty() => host,
        _ => node.address.clone(),
    }
}

/// `kubeboot kubeconfig`: fetch every selected cluster's admin.conf, then write one file with a context per cluster.
pub(crate) async fn kubeconfig(cli: &Cli, args: &KubeconfigArgs) -> Result<Exit, Failure> {
    report_mode(&args.run);
    let target = match (&args.out, args.merge) {
        (Some(out), _) => out.clone(),
        (None, true) => home_kubeconfig()?,
        (None, false) => cli.state_dir.join("kubeconfig.yaml"),
    };
    // A merge target that does not parse is bad input before anything runs.
    let existing = if args.merge {
        match std::fs::read_to_string(&target) {
            Ok(text) => Some(kubeconfig::parse(&text).map_err(|e| {
                Failure::BadInput(Diagnostics::from(
                    Diagnostic::file(&target, format!("cannot merge into it: {e}"))
                        .with_hint("fix the file, or write a separate one with --out FILE"),
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Failure::Other(format!("cannot read {}: {e}", target.display()))),
        }
    } else {
        None
    };
    let day_two = DayTwo {
        folders: vec!["kubeconfig"],
        vars: BTreeMap::new(),
        always: true,
        command: "kubeconfig",
    };
    let (exit, run) = run_playbooks(
        cli,
        &apply_args(&args.run, args.run.limit.clone(), true),
        Some(&day_two),
    )
    .await?;
    let Some(run) = run else { return Ok(exit) };
    let inv = inventory::load(&cli.inventory)?;
    let progress = read_progress(cli)?;
    let assets = cli.assets.clone().unwrap_or_else(|| cli.playbooks.join("../assets"));
    let books = crate::playbook::load(&cli.playbooks.join("kubeconfig"), &assets)?;
    let stage = books.stages.iter().find(|s| s.name == "kubeconfig");
    let mut combined = Json::Object(Default::default());
    let mut names = Vec::new();
    let mut missing = Vec::new();
    for cluster in selected_clusters(&inv, &args.run.limit)? {
        let Some(first) = members(&inv, &cluster).first().copied() else {
            continue;
        };
        let file = cli.state_dir.join(format!("kubeconfig/{cluster}/admin.conf"));
        if !finished_ok(&progress, &first.name, &run) {
            missing.push(format!("{cluster} (its node {} did not finish)", first.name));
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(|e| Failure::Other(format!("{}: {e}", file.display())))?;
        let renamed = kubeconfig::rename(&text, &cluster, &api_host(&inv, stage, first)).map_err(|e| {
            Failure::Other(format!(
                "{cluster}: the admin kubeconfig fetched from {}: {e}",
                first.name
            ))
        })?;
        combined = kubeconfig::merge(&combined, &renamed);
        names.push(cluster);
    }
    if names.is_empty() {
        eprintln!("kubeconfig: nothing fetched ({})", missing.join(", "));
        return Ok(Exit::NodesFailed);
    }
    let out = match existing {
        Some(mine) => kubeconfig::merge(&mine, &combined),
        None => combined,
    };
    let yaml = kubeconfig::to_yaml(&out).map_err(|e| Failure::Other(e.to_string()))?;
    fetch::write(&target, yaml.as_bytes(), true).map_err(Failure::Other)?;
    let how = if args.merge { "merged into" } else { "written to" };
    say!(
        "kubeconfig: {} context(s) {how} {} (mode 0600): {}",
        names.len(),
        target.display(),
        names.join(", ")
    );
    say!(
        "  try: kubectl --kubeconfig {} --context {} get nodes",
        target.display(),
        names[0]
    );
    if !missing.is_empty() {
        eprintln!("kubeconfig: not fetched: {}", missing.join(", "));
        return Ok(Exit::NodesFailed);
    }
    Ok(exit)
}

fn home_kubeconfig() -> Result<PathBuf, Failure> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(Path::new(&h).join(".kube/config")),
        _ => Err(command_line(
            "--merge needs HOME to find ~/.kube/config",
            "set HOME, or write a separate file with --out FILE",
        )),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// backup

/// The variables of a run that takes an etcd snapshot: its name stamp, and whether a node without etcd is an error.
fn backup_vars(required: bool) -> BTreeMap<String, Json> {
    let mut vars = BTreeMap::new();
    vars.insert("backup_stamp".into(), Json::String(run_id()));
    vars.insert("backup_required".into(), Json::Bool(required));
    vars
}

/// `kubeboot backup`: an etcd snapshot of each selected cluster, kept on the jump host.
pub(crate) async fn backup(cli: &Cli, args: &RunArgs) -> Result<Exit, Failure> {
    report_mode(args);
    let day_two = DayTwo {
        folders: vec!["backup"],
        vars: backup_vars(true),
        always: false,
        command: "backup",
    };
    let (exit, run) = run_playbooks(cli, &apply_args(args, args.limit.clone(), true), Some(&day_two)).await?;
    if run.is_some() {
        return keep_backups(cli, &day_two, exit).await;
    }
    Ok(exit)
}

/// Lists the snapshots this run kept and, when the inventory names an `etcd_backup_bucket`, stores them in S3 as
/// well (`etcd/<cluster>/<file>`, never overwriting an object). A failed upload is exit 1; the files stay here.
async fn keep_backups(cli: &Cli, day_two: &DayTwo, exit: Exit) -> Result<Exit, Failure> {
    let kept = report_backups(cli, day_two);
    let inv = inventory::load(&cli.inventory)?;
    let var = |k: &str| inv.vars.get(k).and_then(Json::as_str).unwrap_or_default().to_string();
    let bucket = var("etcd_backup_bucket");
    if bucket.is_empty() || kept.is_empty() {
        return Ok(exit);
    }
    let mut vault = crate::secrets::Vault::default();
    let mut sources = Vec::new();
    for name in ["s3_access_key", "s3_secret_key"] {
        let Some(source) = inv.secrets.get(name) else {
            return Err(Failure::BadInput(Diagnostics::from(
                Diagnostic::at(
                    &cli.inventory,
                    1,
                    1,
                    format!("etcd_backup_bucket is set but secret `{name}` is not defined"),
                )
                .with_hint("add it to [secrets], or set etcd_backup_bucket = \"\""),
            )));
        };
        sources.push(match source {
            inventory::SecretSource::Env(v) => v.clone(),
            inventory::SecretSource::File(p) => p.display().to_string(),
        });
        let secret = crate::secrets::read(source).map_err(|e| Failure::Other(format!("secret `{name}`: {e}")))?;
        vault.add_mask(secret.clone());
        vault.insert(name, secret);
    }
    let target = crate::task::s3_buckets::S3Upload {
        endpoint: var("s3_endpoint"),
        region: var("s3_region"),
        bucket: bucket.clone(),
        access_key: crate::secrets::placeholder("s3_access_key"),
        secret_key: crate::secrets::placeholder("s3_secret_key"),
    };
    let mut worst = exit;
    for path in kept {
        let (Some(cluster), Some(file)) = (
            path.parent()
                .and_then(|p| p.file_name())
                .map(|c| c.to_string_lossy().into_owned()),
            path.file_name().map(|f| f.to_string_lossy().into_owned()),
        ) else {
            continue;
        };
        let key = format!("etcd/{cluster}/{file}");
        let bytes = std::fs::read(&path).map_err(|e| Failure::Other(format!("{}: {e}", path.display())))?;
        match crate::task::s3_buckets::put_new(&target, &key, bytes, &vault, &sources.join(" / ")).await {
            Ok(crate::task::s3_buckets::Uploaded::Stored) => say!("etcd snapshot uploaded: s3://{bucket}/{key}"),
            Ok(crate::task::s3_buckets::Uploaded::AlreadyThere) => {
                say!("etcd snapshot already in S3, not overwritten: s3://{bucket}/{key}")
            }
            Err(e) => {
                let why = vault.redact(&e.to_string());
                eprintln!(
                    "{cluster}: S3 upload failed ({why}); the snapshot stays at {}",
                    path.display()
                );
                worst = Exit::NodesFailed;
            }
        }
    }
    Ok(worst)
}

/// Lists the snapshots this run kept.
fn report_backups(cli: &Cli, day_two: &DayTwo) -> Vec<PathBuf> {
    let Some(stamp) = day_two.vars.get("backup_stamp").and_then(Json::as_str) else {
        return Vec::new();
    };
    let dir = cli.state_dir.join("backups");
    let mut kept: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|c| std::fs::read_dir(c.path()).into_iter().flatten().flatten())
        .map(|f| f.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(stamp)))
        .collect();
    kept.sort();
    for p in &kept {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        say!("etcd snapshot kept: {} ({size} bytes, mode 0600)", p.display());
    }
    kept
}

// ---------------------------------------------------------------------------------------------------------------
// reset

/// The stages of the reset command (kept in the journal while a reset is under way).
fn command_stages(cli: &Cli, day_two: &DayTwo) -> Vec<String> {
    let assets = cli.assets.clone().unwrap_or_else(|| cli.playbooks.join("../assets"));
    day_two
        .folders
        .iter()
        .filter_map(|f| crate::playbook::load(&cli.playbooks.join(f), &assets).ok())
        .flat_map(|b| b.stages.into_iter().map(|s| s.name))
        .collect()
}

/// `kubeboot reset`: typed confirmation, then the backup and reset playbooks.
pub(crate) async fn reset(cli: &Cli, args: &ResetArgs) -> Result<Exit, Failure> {
    report_mode(&args.run);
    let inv = inventory::load(&cli.inventory)?;
    let clusters = selected_clusters(&inv, &args.run.limit)?;
    if !args.run.dry_run {
        confirm_reset(&clusters, args)?;
    }
    let mut vars = backup_vars(false);
    vars.insert("reset_purge_packages".into(), Json::Bool(args.purge_packages));
    let day_two = DayTwo {
        folders: vec!["backup", "reset"],
        vars,
        always: false,
        command: "reset",
    };
    // A reset covers whole clusters: every node of each selected cluster.
    let limit = if args.run.limit.is_empty() {
        Vec::new()
    } else {
        clusters.clone()
    };
    let (exit, run) = run_playbooks(cli, &apply_args(&args.run, limit, true), Some(&day_two)).await?;
    if run.is_some() {
        let exit = keep_backups(cli, &day_two, exit).await?;
        if exit == Exit::Ok {
            say!(
                "reset: {} — `kubeboot apply --limit {}` installs them again",
                clusters.join(", "),
                clusters.join(",")
            );
        }
    }
    Ok(exit)
}

/// On a terminal the operator types the cluster names; headless, `--yes --confirm NAMES` must name them all.
fn confirm_reset(clusters: &[String], args: &ResetArgs) -> Result<(), Failure> {
    let listed = clusters.join(",");
    for c in &args.confirm {
        if !clusters.contains(c) {
            return Err(command_line(
                format!("--confirm names `{c}`, which this reset does not select"),
                format!("the selected clusters are {listed}; choose them with --limit"),
            ));
        }
    }
    let confirmed: BTreeSet<&String> = args.confirm.iter().collect();
    let unconfirmed: Vec<&str> = clusters
        .iter()
        .filter(|c| !confirmed.contains(c))
        .map(String::as_str)
        .collect();
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if args.run.yes || !terminal {
        if !args.run.yes {
            return Err(command_line(
                "reset destroys clusters: without a terminal it needs --yes",
                format!("kubeboot reset --limit {listed} --yes --confirm {listed}"),
            ));
        }
        if !unconfirmed.is_empty() {
            return Err(command_line(
                format!("reset of {} is not confirmed", unconfirmed.join(", ")),
                format!("name every cluster to reset: --confirm {listed} (or narrow the reset with --limit)"),
            ));
        }
        return Ok(());
    }
    println!("kubeboot reset tears these clusters down to before kubeadm (etcd snapshot first):");
    for c in clusters {
        println!("  {c}");
    }
    print!("Type the cluster names to confirm ({}): ", clusters.join(" "));
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let typed: BTreeSet<&str> = line.split([' ', ',', '\t', '\n']).filter(|w| !w.is_empty()).collect();
    let wanted: BTreeSet<&str> = clusters.iter().map(String::as_str).collect();
    if typed != wanted {
        return Err(command_line(
            "the typed names do not match the clusters to reset",
            format!("type exactly: {}", clusters.join(" ")),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Hooks around the run (called by `run_playbooks` while it holds the state lock)

/// Before a day-two run starts: a reset forgets the nodes' install (so an interrupted reset never leaves a node
/// the journal calls installed); an upgrade checks the version step.
pub(crate) fn before_run(
    cli: &Cli,
    day_two: &DayTwo,
    inv: &Inventory,
    nodes: &[String],
    progress: &Progress,
    state: &StateDir,
) -> Result<(), Failure> {
    match day_two.command {
        "reset" => {
            let keep = command_stages(cli, day_two);
            forget(state, nodes, &keep)
        }
        "upgrade" => check_upgrade_step(cli, inv, nodes, progress),
        _ => Ok(()),
    }
}

/// After a day-two run: a node whose reset finished forgets the reset too, so the next reset runs whole and the
/// next `apply` installs the node from scratch.
pub(crate) fn after_run(
    cli: &Cli,
    day_two: &DayTwo,
    nodes: &[String],
    run: &str,
    state: &StateDir,
) -> Result<(), Failure> {
    if day_two.command != "reset" {
        return Ok(());
    }
    let _ = cli;
    let progress = state
        .progress()
        .map_err(|e| Failure::Other(format!("cannot read the journal: {e}")))?;
    let done: Vec<String> = nodes
        .iter()
        .filter(|n| finished_ok(&progress, n, run))
        .cloned()
        .collect();
    forget(state, &done, &[])
}

fn forget(state: &StateDir, nodes: &[String], keep: &[String]) -> Result<(), Failure> {
    if nodes.is_empty() {
        return Ok(());
    }
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let records: Vec<Record> = nodes
        .iter()
        .map(|n| Record::Forget {
            run: "reset".into(),
            ts: ts.clone(),
            node: n.clone(),
            keep: keep.to_vec(),
        })
        .collect();
    state
        .writer()
        .and_then(|mut w| w.append_all(&records))
        .map_err(|e| Failure::Other(format!("cannot write the journal: {e}")))
}

// ---------------------------------------------------------------------------------------------------------------
// upgrade

/// `major.minor` of a version text like `v1.34.2`, `1.34` or `1.34.2-1.1`.
fn minor_of(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().trim_start_matches('v').split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Where `kubernetes_version` is written in the inventory (line, column of its value), for messages.
fn version_location(path: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("kubernetes_version")
            && rest.trim_start().starts_with('=')
        {
            let col = line
                .find('=')
                .map(|e| e + 1 + line[e + 1..].len() - line[e + 1..].trim_start().len());
            return (i + 1, col.map(|c| c + 1).unwrap_or(1));
        }
    }
    (1, 1)
}

/// Refuses (bad input) an upgrade that skips a minor, by the version each node's kubeadm reported when kubeboot
/// last connected to it. Nodes never seen are checked on the node itself before anything changes there.
fn check_upgrade_step(cli: &Cli, inv: &Inventory, nodes: &[String], progress: &Progress) -> Result<(), Failure> {
    let target_text = inv
        .vars
        .get("kubernetes_version")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let (line, column) = version_location(&cli.inventory);
    let Some(target) = minor_of(target_text) else {
        return Err(Failure::BadInput(Diagnostics::from(
            Diagnostic::at(
                &cli.inventory,
                line,
                column,
                format!("kubernetes_version `{target_text}` is not a version"),
            )
            .with_hint("write the minor version, e.g. \"1.35\""),
        )));
    };
    let mut problems = Diagnostics::default();
    for name in nodes {
        let Some(seen) = progress
            .facts(name)
            .map(|f| f.kubernetes.clone())
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        let Some(have) = minor_of(&seen) else { continue };
        let step_ok = have == target || (have.0 == target.0 && have.1 + 1 == target.1);
        if !step_ok {
            let next = format!("{}.{}", have.0, have.1 + 1);
            let message = if target < have {
                format!(
                    "{name} runs Kubernetes {seen}: kubernetes_version {target_text} would be a downgrade, which kubeadm does not do"
                )
            } else {
                format!(
                    "{name} runs Kubernetes {seen}: going to {target_text} skips a minor version (kubeadm upgrades one minor at a time)"
                )
            };
            problems.push(
                Diagnostic::at(&cli.inventory, line, column, message).with_hint(format!(
                    "set kubernetes_version = \"{next}\", run kubeboot upgrade, then raise it again (a node upgraded since kubeboot last saw it: run kubeboot check first)"
                )),
            );
        }
    }
    problems.into_result(()).map_err(Failure::BadInput)
}

/// `kubeboot upgrade`: etcd snapshot, then the upgrade playbooks, one node of each cluster at a time (the first
/// control plane first), clusters in parallel.
pub(crate) async fn upgrade(cli: &Cli, args: &RunArgs) -> Result<Exit, Failure> {
    report_mode(args);
    let inv = inventory::load(&cli.inventory)?;
    let clusters = selected_clusters(&inv, &args.limit)?;
    let day_two = DayTwo {
        folders: vec!["backup", "upgrade"],
        vars: backup_vars(true),
        always: false,
        command: "upgrade",
    };
    if args.dry_run {
        return run_playbooks(cli, &apply_args(args, clusters, true), Some(&day_two))
            .await
            .map(|(e, _)| e);
    }
    let waves = clusters.iter().map(|c| members(&inv, c).len()).max().unwrap_or(0);
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut worst = Exit::Ok;
    for wave in 0..waves {
        let nodes: Vec<String> = clusters
            .iter()
            .filter(|c| !failed.contains(*c))
            .filter_map(|c| members(&inv, c).get(wave).map(|n| n.name.clone()))
            .collect();
        if nodes.is_empty() {
            break;
        }
        if waves > 1 {
            say!("upgrade: step {}/{waves}: {}", wave + 1, nodes.join(", "));
        }
        let (exit, run) = run_playbooks(cli, &apply_args(args, nodes.clone(), true), Some(&day_two)).await?;
        let Some(run) = run else { return Ok(exit) };
        if exit == Exit::Interrupted {
            return Ok(exit);
        }
        let progress = read_progress(cli)?;
        for n in &nodes {
            if !finished_ok(&progress, n, &run)
                && let Some(c) = inv.node(n).and_then(|n| n.cluster.clone())
            {
                // The cluster's later nodes wait for a fixed node: never upgrade past a failure.
                failed.insert(c);
            }
        }
        let exit = if wave == 0 {
            keep_backups(cli, &day_two, exit).await?
        } else {
            exit
        };
        if exit != Exit::Ok {
            worst = exit;
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "upgrade: stopped for {} (fix the failed node and run kubeboot upgrade again: it continues there)",
            failed.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(worst)
}

/// `kubeboot renew-certs`: kubeadm renews every certificate; the control-plane pods restart to load them.
pub(crate) async fn renew_certs(cli: &Cli, args: &RunArgs) -> Result<Exit, Failure> {
    report_mode(args);
    let day_two = DayTwo {
        folders: vec!["renew-certs"],
        vars: BTreeMap::new(),
        always: true,
        command: "renew-certs",
    };
    let (exit, run) = run_playbooks(cli, &apply_args(args, args.limit.clone(), false), Some(&day_two)).await?;
    if run.is_some() && exit == Exit::Ok {
        say!("renew-certs: done — run `kubeboot kubeconfig` to fetch the renewed admin kubeconfig");
    }
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_server_is_the_clusters_vip_when_it_has_one() {
        let inv_text = "[ssh]\nuser = \"u\"\n[[clusters]]\nname = \"c1\"\nrole = \"central\"\n[[clusters]]\nname = \"c2\"\nrole = \"edge\"\n[clusters.vars]\nvip = \"10.0.0.9\"\n[[nodes]]\nname = \"n1\"\naddress = \"10.0.0.1\"\ncluster = \"c1\"\n[[nodes]]\nname = \"n2\"\naddress = \"10.0.0.2\"\ncluster = \"c2\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.toml");
        std::fs::write(&path, inv_text).unwrap();
        let inv = match inventory::load(&path) {
            Ok(i) => i,
            Err(d) => panic!("{d}"),
        };
        let books = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/kubeconfig");
        let stage = match crate::playbook::load(&books, &books) {
            Ok(b) => b.stages.into_iter().next().unwrap(),
            Err(d) => panic!("{d}"),
        };
        assert_eq!(api_host(&inv, Some(&stage), inv.node("n1").unwrap()), "10.0.0.1");
        assert_eq!(api_host(&inv, Some(&stage), inv.node("n2").unwrap()), "10.0.0.9");
        assert_eq!(api_host(&inv, None, inv.node("n2").unwrap()), "10.0.0.2");
    }

    #[test]
    fn minor_versions_read_every_spelling() {
        assert_eq!(minor_of("v1.34.2"), Some((1, 34)));
        assert_eq!(minor_of("1.35"), Some((1, 35)));
        assert_eq!(minor_of("1.34.2-1.1"), Some((1, 34)));
        assert_eq!(minor_of(""), None);
    }
}
