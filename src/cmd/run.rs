//! The run wiring `apply`, `check` and `plan --check` share: the one place a [`RunSpec`] is built, the fan-out
//! thread, the headless frontend with Ctrl-C cancelling, the run id and run log, and the exit code of a run.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::input::{Again, Input};
use super::{Exit, Failure};
use crate::cli::Cli;
use crate::engine::{self, NodeSecrets, RunResult, RunSpec};
use crate::event::{Control, Event, EventSink};
use crate::fanout::{self, Durable};
use crate::journal::{JournalWriter, Progress};
use crate::secrets::{Digests, Vault};
use crate::ui::headless;

/// The engine's input for a run over `input`'s nodes. What only `apply` sets has its neutral value here, for it to
/// override: the run id `check` (a run that writes no journal), no outlines, no `--forks`, no durable journal,
/// no screen, no host keys accepted on the confirmation screen, no task run again for its outputs.
pub(super) fn spec(
    cli: &Cli,
    input: &Input,
    progress: Progress,
    vault: Arc<Vault>,
    secret_digests: Digests,
    secrets: HashMap<String, NodeSecrets>,
    accept_new_host_keys: bool,
) -> RunSpec {
    RunSpec {
        run_id: "check".into(),
        inventory: input.inventory.clone(),
        playbooks: input.playbooks.clone(),
        progress,
        selection: input.selection.clone(),
        nodes: input.nodes.clone(),
        outlines: Vec::new(),
        forks: None,
        vault,
        secret_digests,
        durable: None,
        secrets,
        accept_new_host_keys,
        accept_host_keys_for: HashSet::new(),
        fetch_root: cli.state_dir.clone(),
        interactive: false,
        again: Again::new(),
    }
}

/// A run's events wired up: the engine's sink, the fan-out thread behind it (journal, logs, masking), what the
/// journal has made durable, and the frontend's copy of the events.
pub(super) struct Wiring {
    pub events: EventSink,
    pub fanout: std::thread::JoinHandle<()>,
    pub durable: Durable,
    pub front: mpsc::UnboundedReceiver<Event>,
}

/// Starts the fan-out thread of a run: the journal (None for a run that writes none), the run's log folder.
pub(super) fn wire(
    run_id: String,
    journal: Option<JournalWriter>,
    log_dir: PathBuf,
    vault: Arc<Vault>,
) -> Result<Wiring, Failure> {
    let (front_tx, front) = mpsc::unbounded_channel();
    let (events, fanout, durable) = fanout::start(run_id, journal, log_dir, vault, Some(front_tx))
        .map_err(|e| Failure::Other(format!("cannot start: {e}")))?;
    Ok(Wiring {
        events,
        fanout,
        durable,
        front,
    })
}

/// Runs the engine with the headless printer in this style, Ctrl-C (and SIGTERM) cancelling, and waits until the
/// journal and the printer have seen every event.
pub(super) async fn headless(
    style: headless::Style,
    spec: RunSpec,
    events: EventSink,
    fanout: std::thread::JoinHandle<()>,
    front: mpsc::UnboundedReceiver<Event>,
    log_dir: PathBuf,
) -> RunResult {
    let printer = tokio::spawn(headless::run(style, front, log_dir));
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    spawn_interrupt_handler(control_tx.clone());
    let result = engine::run(spec, events, control_rx).await;
    drop(control_tx);
    let _ = fanout.join();
    let _ = printer.await;
    result
}

/// The exit code of a finished run.
pub(super) fn exit_for(result: RunResult) -> Exit {
    if result.interrupted {
        Exit::Interrupted
    } else if result.nodes_failed + result.nodes_blocked > 0 {
        Exit::NodesFailed
    } else {
        Exit::Ok
    }
}

/// Ctrl-C (and SIGTERM) cancel the run cleanly; a second Ctrl-C leaves at once (the journal is already durable).
pub(super) fn spawn_interrupt_handler(control: mpsc::UnboundedSender<Control>) {
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

/// A new run's id: its start time (UTC) and a random suffix, e.g. `20261202-041500-3f2a`.
pub(super) fn run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let stamp = now.format(&format).unwrap_or_else(|_| now.unix_timestamp().to_string());
    format!("{stamp}-{:04x}", rand::random::<u16>())
}

/// The run log (`<log_dir>/kubeboot.log`), written in the background by tracing-appender.
pub(super) fn init_run_log(log_dir: &Path) -> Option<tracing_appender::non_blocking::WorkerGuard> {
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
