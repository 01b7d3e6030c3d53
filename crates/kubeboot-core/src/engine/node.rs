//! One node's run: connect, gather facts, plan with the real facts, then each task in order.
//!
//! This file has the node's session (connect, facts, plan, then the tasks in order); waiting for
//! other nodes and for a serial stage's turn is `node/wait.rs`, one task with its retries
//! `node/task.rs`.

mod task;
mod wait;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{NodeEnd, Shared};
use crate::event::{Counts, Event, NodeStatus, SkipReason, Stream, TaskStatus};
use crate::facts::Facts;
use crate::plan::{self, Decision, PlannedTask, Why};
use crate::playbook::TaskKey;
use crate::ssh::{Command, Session, SshError, Target};
use task::{live_decision, run_task};
use wait::{serial_turn, wait_for_others};

/// Why a node stopped early.
pub(super) enum Stop {
    Failed(String),
    Cancelled(String),
    /// A node it waits for failed: (that node, what happened).
    Blocked(String, String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Failed(e) | Stop::Cancelled(e) | Stop::Blocked(_, e) => f.write_str(e),
        }
    }
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
    let (status, error, blocked_by) = match outcome {
        Ok(()) => (NodeStatus::Ok, None, None),
        Err(Stop::Failed(e)) => (NodeStatus::Failed, Some(e), None),
        Err(Stop::Cancelled(e)) => (NodeStatus::Cancelled, Some(e), None),
        Err(Stop::Blocked(by, e)) => (NodeStatus::Blocked, Some(e), Some(by)),
    };
    shared.on_board(|b| {
        b.ended.insert(name.clone(), status);
    });
    shared.emit(Event::NodeFinished {
        node: name.clone(),
        status,
        error,
        blocked_by,
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
        s = Session::connect(target) => s.map_err(|e| Stop::Failed(crate::task::ssh_error_text(&e)))?,
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
            &spec.secret_digests,
            &spec.selection,
        )
    }
    .map_err(|d| Stop::Failed(format!("cannot plan with the node's facts:\n{d}")))?;
    let mut node_plan = node_plan;
    for t in &mut node_plan.tasks {
        let key = (name.to_string(), t.stage.clone(), t.task.clone());
        let Some(why) = spec.again.get(&key) else { continue };
        // As plan::depends::again decided: done before, or to run only if an earlier task changes (its `after`),
        // it runs all the same, since the output it makes is never kept.
        let conditional = matches!(t.why, Some(Why::IfChanged(_)));
        if t.decision == Decision::Skip(SkipReason::Done) || conditional {
            t.decision = Decision::Run;
            t.why = Some(Why::Again(why.clone()));
        }
    }
    shared.emit(Event::NodePlanned {
        node: name.to_string(),
        plan: node_plan.outline(),
    });

    let total = node_plan.tasks.len();
    let cluster = node_plan.cluster.clone().unwrap_or_else(|| name.to_string());
    // The turn this node holds in a serial stage, released when it moves on to another stage.
    let mut turn: Option<(String, tokio::sync::OwnedMutexGuard<()>)> = None;
    // The tasks that reported `changed` in this run: the later tasks depending on them run again.
    let mut changed: HashSet<TaskKey> = HashSet::new();
    // Whether the node may hold writes not yet on its disk: what an earlier run finished in this boot, then what
    // ran since the last sync. Synced at the end of a stage (see `sync_disk`).
    let mut unsynced = true;
    for (index, task) in node_plan.tasks.iter().enumerate() {
        if shared.cancel.is_cancelled() {
            return Err(Stop::Cancelled(format!(
                "cancelled before {}/{}",
                task.stage, task.task
            )));
        }
        let (decision, why) = live_decision(task, &changed);
        if turn.as_ref().is_some_and(|(stage, _)| *stage != task.stage) {
            turn = None;
        }
        if decision == Decision::Run {
            // Dependencies first: a node never holds its turn in a serial stage while it waits for others.
            wait_for_others(shared, name, task).await?;
            if task.serial && turn.is_none() {
                turn = Some((task.stage.clone(), serial_turn(shared, name, &cluster, task).await?));
            }
        }
        let status = match decision {
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
            Decision::Run => match run_task(shared, name, session, task, index, total, why.as_deref()).await {
                Ok(status) => status,
                Err(stop) => {
                    // The task that stopped the node counts in the node's `failed` (the summary's FAILED column).
                    if matches!(stop, Stop::Failed(_)) {
                        counts.add(TaskStatus::Failed);
                        // What finished before the failure stays done for the next run, even across a reset.
                        sync_disk(shared, name, session).await;
                    }
                    return Err(stop);
                }
            },
        };
        shared.on_board(|b| {
            b.finished
                .insert((name.to_string(), task.stage.clone(), task.task.clone()));
        });
        if status == TaskStatus::Changed {
            changed.insert((task.stage.clone(), task.task.clone()));
        }
        counts.add(status);
        unsynced |= status != TaskStatus::Skipped;
        let stage_ends = node_plan
            .tasks
            .get(index + 1)
            .is_none_or(|next| next.stage != task.stage);
        if stage_ends && unsynced && sync_disk(shared, name, session).await {
            unsynced = false;
        }
    }
    Ok(())
}

/// How long `sync` may take on a node before kubeboot goes on without the mark (a node that wrote gigabytes of
/// images may need a while; one that does not answer must not hold the run).
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `sync` on the node and, when it worked, tells the journal (`node_synced`): the tasks finished until now
/// survive a hard reset or a power cut of the node. Without the mark, resume runs again what a node that
/// restarted since may have lost (found on the VM lab: an apt source written just before a reset came back
/// empty, and the resumed install found no packages). sync(2) needs no root. True when it synced.
async fn sync_disk(shared: &Shared, name: &str, session: &Session) -> bool {
    let cancel = shared.cancel.child_token();
    let command = Command {
        script: "sync".to_string(),
        env: Vec::new(),
        become_: false,
    };
    let ignore = |_: Stream, _: String| {};
    let exec = session.exec(&command, &ignore, &cancel);
    tokio::pin!(exec);
    let result = tokio::select! {
        r = &mut exec => r,
        _ = tokio::time::sleep(SYNC_TIMEOUT) => {
            cancel.cancel();
            exec.await
        }
    };
    let synced = matches!(result, Ok(exit) if exit.success());
    if synced {
        shared.emit(Event::NodeSynced { node: name.to_string() });
    }
    synced
}

/// The node's facts for the drift check, or why they could not be read.
pub(super) async fn gather_facts_for_check(shared: &Shared, session: &Session) -> Result<Facts, String> {
    gather_facts(shared, session).await.map_err(|stop| stop.to_string())
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
        Err(e) => Err(Stop::Failed(format!(
            "gathering facts failed: {}",
            crate::task::ssh_error_text(&e)
        ))),
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
        inputs: task.inputs.clone(),
        exit_code,
        error,
        duration_ms: took.as_millis() as u64,
    });
}

/// The SSH target for a node, from its inventory settings and the secrets read at start.
pub(super) fn target_for(shared: &Shared, name: &str) -> Result<Target, Stop> {
    let spec = &shared.spec;
    let node = spec
        .inventory
        .node(name)
        .ok_or_else(|| Stop::Failed(format!("{name} is not in the inventory")))?;
    let secrets = spec.secrets.get(name).cloned().unwrap_or_default();
    let accept = spec.accept_new_host_keys || spec.accept_host_keys_for.contains(name);
    Ok(node.ssh_target(secrets, accept))
}

/// Locks a mutex even if a panicking holder poisoned it (the data is still consistent here).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
