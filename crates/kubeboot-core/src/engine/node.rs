//! One node's run: connect, gather facts, plan with the real facts, then each task in order.
//!
//! One job (the run of one node), kept in one file past ~600 lines.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{NodeEnd, Shared};
use crate::event::{Counts, Event, NodeStatus, SkipReason, Stream, TaskStatus};
use crate::facts::Facts;
use crate::journal::Record;
use crate::plan::{self, Decision, PlannedTask, Why};
use crate::playbook::TaskKey;
use crate::ssh::{Command, Session, SshError, Target};
use crate::task::{Action, Failure, RunCx};

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
    }
    Ok(())
}

/// Waits for this node's turn in a serial stage of its cluster.
async fn serial_turn(
    shared: &Shared,
    name: &str,
    cluster: &str,
    task: &PlannedTask,
) -> Result<tokio::sync::OwnedMutexGuard<()>, Stop> {
    let slot = lock(&shared.serial)
        .entry((task.stage.clone(), cluster.to_string()))
        .or_default()
        .clone();
    if let Ok(guard) = slot.clone().try_lock_owned() {
        return Ok(guard);
    }
    shared.emit(Event::TaskWaiting {
        node: name.to_string(),
        stage: task.stage.clone(),
        task: task.task.clone(),
        on: vec![format!(
            "its turn: stage {} runs on one node of {cluster} at a time",
            task.stage
        )],
    });
    tokio::select! {
        guard = slot.lock_owned() => Ok(guard),
        _ = shared.cancel.cancelled() => Err(Stop::Cancelled(format!(
            "cancelled while waiting for its turn in {}", task.stage
        ))),
    }
}

/// Waits until every task this one waits for has finished on its node; a node that ended without finishing it
/// blocks this one. An output an earlier run kept counts as its task finished.
async fn wait_for_others(shared: &Shared, name: &str, task: &PlannedTask) -> Result<(), Stop> {
    if task.waits.is_empty() {
        return Ok(());
    }
    let mut changes = shared.board_changed.subscribe();
    let mut announced = false;
    loop {
        let mut open = Vec::new();
        {
            let board = lock(&shared.board);
            let store = lock(&shared.outputs);
            for w in &task.waits {
                let kept = w.output.as_ref().is_some_and(|o| store.has(&w.node, o));
                if kept
                    || board
                        .finished
                        .contains(&(w.node.clone(), w.stage.clone(), w.task.clone()))
                {
                    continue;
                }
                if let Some(status) = board.ended.get(&w.node) {
                    let how = match status {
                        NodeStatus::Ok => "ended",
                        NodeStatus::Failed => "failed",
                        NodeStatus::Cancelled => "was cancelled",
                        NodeStatus::Blocked => "was blocked",
                    };
                    return Err(Stop::Blocked(
                        w.node.clone(),
                        format!(
                            "blocked by {}: it {how} before {}/{} finished, which {}/{} waits for",
                            w.node, w.stage, w.task, task.stage, task.task
                        ),
                    ));
                }
                open.push(w.describe());
            }
        }
        if open.is_empty() {
            return Ok(());
        }
        if !announced {
            announced = true;
            shared.emit(Event::TaskWaiting {
                node: name.to_string(),
                stage: task.stage.clone(),
                task: task.task.clone(),
                on: open,
            });
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                return Err(Stop::Cancelled("the run ended while waiting".into()));
            },
            _ = shared.cancel.cancelled() => return Err(Stop::Cancelled(format!(
                "cancelled while {}/{} waited", task.stage, task.task
            ))),
        }
    }
}

/// The plan's decision, completed with what this run learned: a task recorded done runs again when a task it
/// depends on reported `changed` earlier in this run, and one planned to run only if such a task changed stays
/// done when none did. Also why it runs, for the `task_started` event (nothing for a task that is simply new).
fn live_decision(task: &PlannedTask, changed: &HashSet<TaskKey>) -> (Decision, Option<String>) {
    let dependency = task.after.iter().find(|dep| changed.contains(*dep));
    let after = |(stage, name): &TaskKey| {
        let label = if *stage == task.stage {
            name.clone()
        } else {
            format!("{stage}/{name}")
        };
        Why::AfterChanged(label).text()
    };
    match (&task.decision, &task.why, dependency) {
        (Decision::Skip(SkipReason::Done), _, Some(dep)) => (Decision::Run, Some(after(dep))),
        (Decision::Run, Some(Why::IfChanged(_)), None) => (Decision::Skip(SkipReason::Done), None),
        (Decision::Run, Some(Why::IfChanged(_)), Some(dep)) => (Decision::Run, Some(after(dep))),
        // A task that runs again for an output says so in the plan (under it), not in its event.
        (Decision::Run, Some(Why::New | Why::Again(_)), _) | (Decision::Run, None, _) => (Decision::Run, None),
        (Decision::Run, Some(why), _) => (Decision::Run, Some(why.text())),
        (decision, _, _) => (*decision, None),
    }
}

/// Runs one task with its retries; returns its status, or why the node must stop.
async fn run_task(
    shared: &Shared,
    name: &str,
    session: &Session,
    task: &PlannedTask,
    index: usize,
    total: usize,
    why: Option<&str>,
) -> Result<TaskStatus, Stop> {
    let attempts = task.retries.saturating_add(1);
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        let number = {
            let mut counts = lock(&shared.started);
            let n = counts.entry(name.to_string()).or_default();
            *n += 1;
            *n
        };
        // Re-running a task the journal records done: its `started` record must be on disk first, or a kill -9
        // in the middle of it would leave the old finish standing (and the next run would skip a half-done task).
        let recorded = lock(&shared.progress).done(name, &task.stage, &task.task).is_some();
        shared.emit(Event::TaskStarted {
            node: name.to_string(),
            stage: task.stage.clone(),
            task: task.task.clone(),
            index,
            total,
            attempt,
            why: why.map(str::to_string),
        });
        lock(&shared.progress).apply(&Record::TaskStarted {
            run: shared.spec.run_id.clone(),
            ts: String::new(),
            node: name.to_string(),
            stage: task.stage.clone(),
            task: task.task.clone(),
        });
        if recorded && let Some(durable) = &shared.spec.durable {
            let mut durable = durable.clone();
            tokio::select! {
                // An error means the fan-out ended (the run is ending): nothing more will be written anyway.
                _ = durable.wait_for(|counts| counts.get(name).is_some_and(|c| *c >= number)) => {}
                _ = shared.cancel.cancelled() => {
                    return Err(Stop::Cancelled(format!("cancelled before {}/{}", task.stage, task.task)));
                }
            }
        }
        let runner = TaskRunner {
            shared,
            name,
            session,
            task,
        };
        match runner.attempt().await {
            Ok((status, reason)) => {
                // A task done before that runs again only to make an output this run needs (a secret one is never
                // kept) restores what the run had: it is `ok`, and re-runs nothing that depends on it.
                // A read-only task (`changed_when: false`) is `ok` when it succeeds, whatever its kind reports.
                let again = recorded && matches!(task.why, Some(Why::Again(_)));
                let status = if status == TaskStatus::Changed && (again || !task.changed_when) {
                    TaskStatus::Ok
                } else {
                    status
                };
                remember(shared, name, task, status, reason);
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
                remember(shared, name, task, TaskStatus::Failed, None);
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

/// Folds a task's end into the run's own copy of the journal, as the journal will read it (a retry of a failed
/// node plans from it).
fn remember(shared: &Shared, name: &str, task: &PlannedTask, status: TaskStatus, reason: Option<SkipReason>) {
    lock(&shared.progress).apply(&Record::Task {
        run: shared.spec.run_id.clone(),
        ts: String::new(),
        node: name.to_string(),
        stage: task.stage.clone(),
        task: task.task.clone(),
        fingerprint: task.fingerprint.clone(),
        secrets: task.inputs.secrets.clone(),
        inputs: task.inputs.parts.clone(),
        status,
        reason,
        error: None,
    });
}

struct TaskRunner<'a> {
    shared: &'a Shared,
    name: &'a str,
    session: &'a Session,
    task: &'a PlannedTask,
}

impl<'a> TaskRunner<'a> {
    /// One attempt: the guard, then the task's kind (a `run` that registers an output captures it).
    async fn attempt(&self) -> Result<(TaskStatus, Option<SkipReason>), Failure> {
        let spec = &self.shared.spec;
        let task = self.with_outputs()?;
        let cx = RunCx {
            node: self.name,
            session: self.session,
            env: &task.env,
            become_: task.become_,
            timeout: task.timeout,
            vault: &spec.vault,
            inventory: &spec.inventory,
            fetch_root: &spec.fetch_root,
            cancel: &self.shared.cancel,
            events: &self.shared.events,
        };
        if let Some(guard) = &task.unless {
            let (exit, _) = cx.exec(guard, false, task.timeout).await?;
            if exit.success() {
                return Ok((TaskStatus::Skipped, Some(SkipReason::Guard)));
            }
        }
        if let (Some(register), Action::Run(run)) = (&task.register, &task.action) {
            return Ok((self.register(&cx, register, &run.command).await?, None));
        }
        Ok((task.action.run(&cx).await?, None))
    }

    /// The task with the outputs it uses put where their placeholders stand (secret ones only reach `env`
    /// values and file contents: the plan refuses them anywhere else).
    fn with_outputs(&self) -> Result<std::borrow::Cow<'a, PlannedTask>, Failure> {
        if self.task.needs.is_empty() {
            return Ok(std::borrow::Cow::Borrowed(self.task));
        }
        let store = lock(&self.shared.outputs);
        let fill = |text: &str| {
            store.fill(text).map_err(|missing| {
                Failure::Other(format!(
                    "{missing} has no value in this run: the task on {} that registers it did not run or printed \
                     nothing (check its node's result, or run again without --only/--from)",
                    missing.node
                ))
            })
        };
        let mut task = self.task.clone();
        if let Some(u) = &task.unless {
            task.unless = Some(fill(u)?);
        }
        for (_, v) in task.env.iter_mut() {
            *v = fill(v)?;
        }
        match &mut task.action {
            Action::Run(r) => r.command = fill(&r.command)?,
            Action::Wait(w) => w.until = fill(&w.until)?,
            Action::Copy(c) => {
                for f in c.files.iter_mut() {
                    f.dest = fill(&f.dest)?;
                    if let Ok(text) = std::str::from_utf8(&f.content) {
                        f.content = fill(text)?.into_bytes();
                    }
                }
            }
            // The plan refuses outputs in the other kinds.
            _ => {}
        }
        Ok(std::borrow::Cow::Owned(task))
    }

    /// A `run` with `register`: its stdout is kept; the value is registered (a secret one masked from then on)
    /// before its output lines are shown, so the value is masked in them too.
    async fn register(&self, cx: &RunCx<'_>, register: &plan::Register, command: &str) -> Result<TaskStatus, Failure> {
        let (exit, stdout, lines) = cx.capture(command, self.task.timeout).await?;
        let value = crate::outputs::capture(&register.capture, &stdout.join("\n"));
        if exit.success()
            && let Ok(v) = &value
        {
            lock(&self.shared.outputs).insert(self.name, &register.name, v.clone());
            self.shared.emit(Event::OutputRegistered {
                node: self.name.to_string(),
                stage: self.task.stage.clone(),
                task: self.task.task.clone(),
                name: register.name.clone(),
                secret: register.secret,
                value: (!register.secret).then(|| v.clone()),
                mask: register.secret.then(|| crate::secrets::Secret::new(v.clone())),
            });
        }
        for line in stdout {
            self.shared.emit(Event::Output {
                node: self.name.to_string(),
                stream: Stream::Stdout,
                line,
            });
        }
        crate::task::check_exit(exit, lines)?;
        value.map_err(|why| Failure::Other(format!("cannot register `{}`: {why}", register.name)))?;
        Ok(TaskStatus::Changed)
    }
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
