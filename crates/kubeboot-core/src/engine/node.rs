//! One node's run: connect, gather facts, plan with the real facts, then each task in order.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{NodeEnd, Shared};
use crate::event::{Counts, Event, NodeStatus, SkipReason, Stream, TaskStatus};
use crate::facts::Facts;
use crate::inventory::NewHostKeys;
use crate::plan::{self, Decision, PlannedTask};
use crate::ssh::{self, Command, Session, SshError, Target};
use crate::task::{Failure, RunCx};

/// Why a node stopped early.
enum Stop {
    Failed(String),
    Cancelled(String),
}

/// Runs one node to its end and reports how it ended (also as a `node_finished` event).
pub(super) async fn run(shared: Arc<Shared>, name: String) -> NodeEnd {
    let started = Instant::now();
    let mut counts = Counts::default();
    let outcome = tokio::select! {
        permit = shared.forks.acquire() => match permit {
            Ok(_permit) => run_with_slot(&shared, &name, &mut counts).await,
            Err(_) => Err(Stop::Cancelled("cancelled before it started".into())),
        },
        _ = shared.cancel.cancelled() => Err(Stop::Cancelled("cancelled before it started".into())),
    };
    let (status, error) = match outcome {
        Ok(()) => (NodeStatus::Ok, None),
        Err(Stop::Failed(e)) => (NodeStatus::Failed, Some(e)),
        Err(Stop::Cancelled(e)) => (NodeStatus::Cancelled, Some(e)),
    };
    shared.emit(Event::NodeFinished {
        node: name.clone(),
        status,
        error,
        counts,
        duration_ms: started.elapsed().as_millis() as u64,
    });
    NodeEnd {
        node: name,
        status,
        counts,
    }
}

async fn run_with_slot(shared: &Shared, name: &str, counts: &mut Counts) -> Result<(), Stop> {
    let spec = &shared.spec;
    let node = spec
        .inventory
        .node(name)
        .ok_or_else(|| Stop::Failed(format!("{name} is not in the inventory")))?;
    let target = target_for(shared, name)?;
    shared.emit(Event::NodeConnecting {
        node: name.to_string(),
        address: target.host_port(),
    });

    let session = tokio::select! {
        s = Session::connect(target) => s.map_err(|e| Stop::Failed(e.to_string()))?,
        _ = shared.cancel.cancelled() => return Err(Stop::Cancelled("cancelled while connecting".into())),
    };
    let result = match serve_bundle(shared, node, &session).await {
        Ok(()) => run_session(shared, name, node.name.as_str(), &session, counts).await,
        Err(e) => Err(e),
    };
    session.close().await;
    result
}

/// With `[sources] bundle`, makes the bundle folder answer on the node's `127.0.0.1:PORT`, through
/// a remote forward over this node's own connection (`sources.bundle_url` in the playbooks).
async fn serve_bundle(shared: &Shared, node: &crate::inventory::Node, session: &Session) -> Result<(), Stop> {
    let inv = &shared.spec.inventory;
    let Some(dir) = &inv.sources.bundle else {
        return Ok(());
    };
    let server = crate::bundle::FileServer::new(dir)
        .map_err(|e| Stop::Failed(format!("cannot serve the bundle {}: {e}", dir.display())))?;
    let port = inv.bundle_port(node);
    session
        .forward_remote(
            crate::bundle::LISTEN_ADDRESS,
            port,
            crate::bundle::forward_service(server),
        )
        .await
        .map_err(|e| Stop::Failed(format!("cannot serve the bundle to {}: {e}", node.name)))
}

async fn run_session(
    shared: &Shared,
    name: &str,
    node: &str,
    session: &Session,
    counts: &mut Counts,
) -> Result<(), Stop> {
    let facts = gather_facts(shared, session).await?;
    shared.emit(Event::NodeConnected {
        node: name.to_string(),
        facts: facts.clone(),
    });

    let spec = &shared.spec;
    let node_plan = {
        let progress = lock(&shared.progress);
        plan::plan_node(
            &spec.inventory,
            &spec.playbooks,
            node,
            &facts,
            &progress,
            &spec.selection,
        )
    }
    .map_err(|d| Stop::Failed(format!("cannot plan with the node's facts:\n{d}")))?;
    shared.emit(Event::NodePlanned {
        node: name.to_string(),
        plan: node_plan.outline(),
    });

    let total = node_plan.tasks.len();
    for (index, task) in node_plan.tasks.iter().enumerate() {
        if shared.cancel.is_cancelled() {
            return Err(Stop::Cancelled(format!(
                "cancelled before {}/{}",
                task.stage, task.task
            )));
        }
        let status = match task.decision {
            Decision::Skip(reason) => {
                finished(
                    shared,
                    name,
                    task,
                    TaskStatus::Skipped,
                    Some(reason),
                    None,
                    None,
                    Duration::ZERO,
                );
                TaskStatus::Skipped
            }
            Decision::Run => match run_task(shared, name, session, task, index, total).await {
                Ok(status) => status,
                Err(stop) => {
                    // The task that stopped the node counts in the node's `failed` (the summary's FAILED column).
                    if matches!(stop, Stop::Failed(_)) {
                        counts.add(TaskStatus::Failed);
                    }
                    return Err(stop);
                }
            },
        };
        counts.add(status);
    }
    Ok(())
}

/// Runs one task with its retries; returns its status, or why the node must stop.
async fn run_task(
    shared: &Shared,
    name: &str,
    session: &Session,
    task: &PlannedTask,
    index: usize,
    total: usize,
) -> Result<TaskStatus, Stop> {
    let attempts = task.retries.saturating_add(1);
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        shared.emit(Event::TaskStarted {
            node: name.to_string(),
            stage: task.stage.clone(),
            task: task.task.clone(),
            index,
            total,
            attempt,
        });
        let runner = TaskRunner {
            shared,
            name,
            session,
            task,
        };
        match runner.attempt().await {
            Ok((status, reason)) => {
                if status.is_success() {
                    lock(&shared.progress).mark_done(name, &task.stage, &task.task, &task.fingerprint);
                }
                finished(shared, name, task, status, reason, None, None, started.elapsed());
                return Ok(status);
            }
            Err(Failure::Cancelled) => {
                return Err(Stop::Cancelled(format!(
                    "cancelled during {}/{}",
                    task.stage, task.task
                )));
            }
            Err(failure) => {
                let lost = matches!(failure, Failure::Lost(_));
                if attempt < attempts && !lost && !shared.cancel.is_cancelled() {
                    shared.emit(Event::TaskRetrying {
                        node: name.to_string(),
                        stage: task.stage.clone(),
                        task: task.task.clone(),
                        attempt,
                        error: failure.message(),
                        delay_ms: task.delay.as_millis() as u64,
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(task.delay) => {}
                        _ = shared.cancel.cancelled() => {
                            return Err(Stop::Cancelled(format!("cancelled during {}/{}", task.stage, task.task)));
                        }
                    }
                    attempt += 1;
                    continue;
                }
                let message = failure.message();
                finished(
                    shared,
                    name,
                    task,
                    TaskStatus::Failed,
                    None,
                    failure.exit_code(),
                    Some(message.clone()),
                    started.elapsed(),
                );
                let error = match failure {
                    Failure::Lost(why) => format!("connection lost during {}/{}: {why}", task.stage, task.task),
                    _ => format!("{}/{} failed: {message}", task.stage, task.task),
                };
                return Err(Stop::Failed(error));
            }
        }
    }
}

struct TaskRunner<'a> {
    shared: &'a Shared,
    name: &'a str,
    session: &'a Session,
    task: &'a PlannedTask,
}

impl TaskRunner<'_> {
    /// One attempt: the guard, then the task's kind.
    async fn attempt(&self) -> Result<(TaskStatus, Option<SkipReason>), Failure> {
        let spec = &self.shared.spec;
        let cx = RunCx {
            node: self.name,
            session: self.session,
            env: &self.task.env,
            become_: self.task.become_,
            timeout: self.task.timeout,
            vault: &spec.vault,
            inventory: &spec.inventory,
            fetch_root: &spec.fetch_root,
            cancel: &self.shared.cancel,
            events: &self.shared.events,
        };
        if let Some(guard) = &self.task.unless {
            let (exit, _) = cx.exec(guard, false, self.task.timeout).await?;
            if exit.success() {
                return Ok((TaskStatus::Skipped, Some(SkipReason::Guard)));
            }
        }
        Ok((self.task.action.run(&cx).await?, None))
    }
}

async fn gather_facts(shared: &Shared, session: &Session) -> Result<Facts, Stop> {
    let command = Command {
        script: Facts::GATHER_SCRIPT.to_string(),
        env: Vec::new(),
        become_: false,
    };
    let text = Mutex::new(String::new());
    let output = |stream: Stream, line: String| {
        if stream == Stream::Stdout {
            let mut text = lock(&text);
            text.push_str(&line);
            text.push('\n');
        }
    };
    match session.exec(&command, &output, &shared.cancel).await {
        Ok(exit) if exit.success() => Ok(Facts::parse(&lock(&text))),
        Ok(exit) => Err(Stop::Failed(format!("gathering facts failed ({exit:?})"))),
        Err(SshError::Cancelled) => Err(Stop::Cancelled("cancelled while gathering facts".into())),
        Err(e) => Err(Stop::Failed(format!("gathering facts failed: {e}"))),
    }
}

#[allow(clippy::too_many_arguments)]
fn finished(
    shared: &Shared,
    name: &str,
    task: &PlannedTask,
    status: TaskStatus,
    reason: Option<SkipReason>,
    exit_code: Option<i32>,
    error: Option<String>,
    took: Duration,
) {
    shared.emit(Event::TaskFinished {
        node: name.to_string(),
        stage: task.stage.clone(),
        task: task.task.clone(),
        status,
        reason,
        fingerprint: task.fingerprint.clone(),
        exit_code,
        error,
        duration_ms: took.as_millis() as u64,
    });
}

/// The SSH target for a node, from its inventory settings and the secrets read at start.
fn target_for(shared: &Shared, name: &str) -> Result<Target, Stop> {
    let spec = &shared.spec;
    let node = spec
        .inventory
        .node(name)
        .ok_or_else(|| Stop::Failed(format!("{name} is not in the inventory")))?;
    let secrets = spec.secrets.get(name).cloned().unwrap_or_default();
    let s = &node.ssh;
    Ok(ssh::Target {
        node: node.name.clone(),
        host: node.connect_address().to_string(),
        port: s.port,
        user: s.user.clone(),
        key: s.key.clone(),
        agent: s.agent,
        password: secrets.password,
        sudo_password: secrets.sudo_password,
        known_hosts: s.known_hosts.clone(),
        new_host_keys: if spec.accept_new_host_keys || spec.accept_host_keys_for.contains(name) {
            NewHostKeys::Accept
        } else {
            s.new_host_keys
        },
        connect_timeout: s.connect_timeout,
        keepalive: s.keepalive,
    })
}

/// Locks a mutex even if a panicking holder poisoned it (the data is still consistent here).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
