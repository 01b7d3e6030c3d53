//! Fans engine events out to the journal, the log files and one frontend, in that order,
//! after masking every secret value.
//!
//! It runs on its own thread: it takes every event waiting, writes them all, then syncs the
//! journal once for the batch, so durability costs one disk sync per batch, not per task.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use crate::event::{Event, Stream, TaskStatus};
use crate::journal::{JournalWriter, Record};
use crate::secrets::Vault;

/// How many `task_started` events of each node are durable in the journal (synced). The engine waits for its
/// own before it runs a task again that the journal records done, so a kill -9 in the middle of that task can
/// never leave the old finish standing.
pub type Durable = watch::Receiver<HashMap<String, u64>>;

/// Starts the fan-out thread. Events sent into the returned sender end up in the journal and
/// `<log_dir>/<node>.log`, then in `frontend`. Join the handle after the engine ended to be sure
/// everything is on disk.
pub fn start(
    run_id: String,
    journal: Option<JournalWriter>,
    log_dir: PathBuf,
    vault: Arc<Vault>,
    frontend: Option<mpsc::UnboundedSender<Event>>,
) -> std::io::Result<(mpsc::UnboundedSender<Event>, JoinHandle<()>, Durable)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let (durable_tx, durable) = watch::channel(HashMap::new());
    let handle = std::thread::Builder::new()
        .name("kubeboot-fanout".into())
        .spawn(move || {
            let mut out = Outputs {
                run_id,
                journal,
                log_dir,
                node_logs: HashMap::new(),
                vault: (*vault).clone(),
                frontend,
                durable: durable_tx,
                started: HashMap::new(),
            };
            out.record_start();
            let mut batch = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 4096 {
                        break;
                    }
                }
                out.write_batch(&mut batch);
            }
            out.flush_all();
        })?;
    Ok((tx, handle, durable))
}

struct Outputs {
    run_id: String,
    journal: Option<JournalWriter>,
    log_dir: PathBuf,
    node_logs: HashMap<String, BufWriter<File>>,
    /// The inventory's secrets, then every secret output as it is registered.
    vault: Vault,
    frontend: Option<mpsc::UnboundedSender<Event>>,
    durable: watch::Sender<HashMap<String, u64>>,
    /// `task_started` events seen per node.
    started: HashMap<String, u64>,
}

impl Outputs {
    fn record_start(&mut self) {
        let record = Record::Run {
            run: self.run_id.clone(),
            ts: now(),
            pid: std::process::id(),
        };
        if let Some(j) = &mut self.journal {
            let _ = j.append(&record).and_then(|_| j.sync());
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Event>) {
        let ts = now();
        let mut started = false;
        for event in batch.drain(..) {
            if let Event::TaskStarted { node, .. } = &event {
                *self.started.entry(node.clone()).or_default() += 1;
                started = true;
            }
            let event = self.take_mask(event);
            let event = redact(&self.vault, event);
            if let Some(journal) = &mut self.journal
                && let Some(record) = Record::from_event(&self.run_id, &ts, &event)
                && let Err(e) = journal.append(&record)
            {
                tracing::error!("cannot write the journal: {e}");
            }
            self.log(&ts, &event);
            if let Some(frontend) = &self.frontend {
                let _ = frontend.send(event);
            }
        }
        if let Some(journal) = &mut self.journal
            && let Err(e) = journal.sync()
        {
            tracing::error!("cannot sync the journal: {e}");
        }
        if started {
            let counts = self.started.clone();
            self.durable.send_replace(counts);
        }
        for log in self.node_logs.values_mut() {
            let _ = log.flush();
        }
    }

    /// A secret output's value: masked in everything from this event on, and taken out of it.
    fn take_mask(&mut self, mut event: Event) -> Event {
        if let Event::OutputRegistered { mask, .. } = &mut event
            && let Some(value) = mask.take()
        {
            crate::outputs::mask(&mut self.vault, &value);
        }
        event
    }

    fn flush_all(&mut self) {
        for log in self.node_logs.values_mut() {
            let _ = log.flush();
        }
    }

    /// One human-readable line per event in the run log, and every output line in the node's log.
    fn log(&mut self, ts: &str, event: &Event) {
        match event {
            Event::Output { .. } => {}
            Event::RunFinished {
                nodes_ok,
                nodes_failed,
                nodes_cancelled,
                interrupted,
                ..
            } => tracing::info!(nodes_ok, nodes_failed, nodes_cancelled, interrupted, "run finished"),
            Event::TaskFinished {
                node,
                stage,
                task,
                status,
                error,
                ..
            } if *status == TaskStatus::Failed => {
                tracing::warn!(node, stage, task, error = error.as_deref().unwrap_or(""), "task failed")
            }
            Event::NodeFinished {
                node, status, error, ..
            } => {
                tracing::info!(node, status = ?status, error = error.as_deref().unwrap_or(""), "node finished")
            }
            other => tracing::debug!(event = ?other),
        }
        let Some(node) = event.node() else { return };
        let line = match event {
            Event::Output {
                stream: Stream::Stdout,
                line,
                ..
            } => format!("{ts}   {line}"),
            Event::Output {
                stream: Stream::Stderr,
                line,
                ..
            } => format!("{ts} ! {line}"),
            Event::TaskStarted {
                stage,
                task,
                attempt,
                why,
                ..
            } => {
                let why = why.as_ref().map(|w| format!(" — {w}")).unwrap_or_default();
                format!("{ts} ▶ {stage} / {task} (attempt {attempt}){why}")
            }
            Event::TaskFinished {
                stage,
                task,
                status,
                reason,
                error,
                exit_code,
                duration_ms,
                ..
            } => {
                let mut s = format!("{ts} ■ {stage} / {task}: {status:?}");
                if let Some(r) = reason {
                    s.push_str(&format!(" ({})", r.as_str()));
                }
                if let Some(c) = exit_code {
                    s.push_str(&format!(", exit code {c}"));
                }
                if let Some(e) = error {
                    s.push_str(&format!(": {e}"));
                }
                s.push_str(&format!(" [{duration_ms} ms]"));
                s
            }
            Event::TaskRetrying {
                stage,
                task,
                attempt,
                error,
                ..
            } => {
                format!("{ts} ↻ {stage} / {task}: attempt {attempt} failed: {error}")
            }
            Event::NodeConnecting { address, .. } => format!("{ts} connecting to {address}"),
            Event::NodeConnected { facts, .. } => format!(
                "{ts} connected: {} {} ({}), {} CPU, {} MiB",
                facts.os_id, facts.os_version, facts.arch, facts.cpus, facts.memory_mb
            ),
            Event::NodeFinished { status, error, .. } => {
                format!(
                    "{ts} node finished: {status:?}{}",
                    error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                )
            }
            _ => return,
        };
        let Some(log) = self.node_log(node) else { return };
        let _ = writeln!(log, "{line}");
    }

    fn node_log(&mut self, node: &str) -> Option<&mut BufWriter<File>> {
        if !self.node_logs.contains_key(node) {
            let path = node_log_path(&self.log_dir, node);
            match OpenOptions::new().create(true).append(true).mode(0o600).open(&path) {
                Ok(f) => {
                    self.node_logs.insert(node.to_string(), BufWriter::new(f));
                }
                Err(e) => {
                    tracing::error!("cannot open {}: {e}", path.display());
                    return None;
                }
            }
        }
        self.node_logs.get_mut(node)
    }
}

/// Where a node's full output of a run goes.
pub fn node_log_path(log_dir: &Path, node: &str) -> PathBuf {
    log_dir.join(format!("{node}.log"))
}

/// Masks secret values in every free-text field of an event (also used by the engine for secret outputs).
pub fn redact(vault: &Vault, event: Event) -> Event {
    if vault.is_empty() {
        return event;
    }
    match event {
        Event::Output { node, stream, line } => Event::Output {
            node,
            stream,
            line: vault.redact(&line),
        },
        Event::TaskFinished {
            node,
            stage,
            task,
            status,
            reason,
            fingerprint,
            inputs,
            exit_code,
            error,
            duration_ms,
        } => Event::TaskFinished {
            node,
            stage,
            task,
            status,
            reason,
            fingerprint,
            inputs,
            exit_code,
            error: error.map(|e| vault.redact(&e)),
            duration_ms,
        },
        Event::TaskRetrying {
            node,
            stage,
            task,
            attempt,
            error,
            delay_ms,
        } => Event::TaskRetrying {
            node,
            stage,
            task,
            attempt,
            error: vault.redact(&error),
            delay_ms,
        },
        Event::NodeFinished {
            node,
            status,
            error,
            blocked_by,
            counts,
            duration_ms,
        } => Event::NodeFinished {
            node,
            status,
            error: error.map(|e| vault.redact(&e)),
            blocked_by,
            counts,
            duration_ms,
        },
        Event::OutputRegistered {
            node,
            stage,
            task,
            name,
            secret,
            value,
            ..
        } => Event::OutputRegistered {
            node,
            stage,
            task,
            name,
            // A secret output never travels with its value; a plain one is masked like any text.
            value: if secret { None } else { value.map(|v| vault.redact(&v)) },
            secret,
            mask: None,
        },
        other => other,
    }
}

/// The current time as RFC 3339 (UTC), for records and log lines.
pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}
