//! One node's run: connect, gather facts, plan with the real facts, then each task in order.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{NodeEnd, Shared, fetch};
use crate::event::{Counts, Event, NodeStatus, SkipReason, Stream, TaskStatus};
use crate::facts::Facts;
use crate::inventory::{NewHostKeys, SecretSource};
use crate::journal::Record;
use crate::jump;
use crate::plan::{self, Action, Decision, PlannedTask, Why};
use crate::playbook::TaskKey;
use crate::ssh::{self, Command, Exit, Session, SshError, Target};

/// Default limit of a `wait` task when the playbook sets none.
const WAIT_DEFAULT: Duration = Duration::from_secs(300);
/// Default per-attempt limit of a jump-host task when the plan sets none.
const JUMP_DEFAULT: Duration = Duration::from_secs(60);
/// Output lines kept per task to explain a failure.
const TAIL_LINES: usize = 20;

/// Why a node stopped early.
pub(super) enum Stop {
    Failed(String),
    Cancelled(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Failed(e) | Stop::Cancelled(e) => f.write_str(e),
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
            &spec.secret_digests,
            &spec.selection,
        )
    }
    .map_err(|d| Stop::Failed(format!("cannot plan with the node's facts:\n{d}")))?;
    shared.emit(Event::NodePlanned {
        node: name.to_string(),
        plan: node_plan.outline(),
    });

    let total = node_plan.tasks.len();
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
            Decision::Run => run_task(shared, name, session, task, index, total, why.as_deref()).await?,
        };
        if status == TaskStatus::Changed {
            changed.insert((task.stage.clone(), task.task.clone()));
        }
        counts.add(status);
    }
    Ok(())
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
        (Decision::Run, Some(Why::New), _) | (Decision::Run, None, _) => (Decision::Run, None),
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
        lock(&shared.progress).apply(&Record::Started {
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

/// Why one attempt of a task failed.
enum Failure {
    Exit { code: i32, tail: Vec<String> },
    Signal(String),
    Timeout(Duration),
    Lost(String),
    Cancelled,
    Other(String),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Exit { code, tail } => {
                let last = tail.iter().rev().find(|l| !l.trim().is_empty());
                match last {
                    Some(line) => format!("exit code {code}: {}", line.trim()),
                    None => format!("exit code {code}"),
                }
            }
            Failure::Signal(sig) => format!("killed by signal {sig}"),
            Failure::Timeout(after) => format!(
                "timed out after {} (the command was stopped)",
                humantime::format_duration(*after)
            ),
            Failure::Lost(why) => why.clone(),
            Failure::Cancelled => "cancelled".into(),
            Failure::Other(why) => why.clone(),
        }
    }

    fn exit_code(&self) -> Option<i32> {
        match self {
            Failure::Exit { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<SshError> for Failure {
    fn from(e: SshError) -> Self {
        match e {
            SshError::Cancelled => Failure::Cancelled,
            SshError::ConnectionLost(why) => Failure::Lost(why),
            other => Failure::Other(other.to_string()),
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
    /// One attempt: the guard, then the action.
    async fn attempt(&self) -> Result<(TaskStatus, Option<SkipReason>), Failure> {
        if let Some(guard) = &self.task.unless {
            let (exit, _) = self.exec(guard, false, self.task.timeout).await?;
            if exit.success() {
                return Ok((TaskStatus::Skipped, Some(SkipReason::Guard)));
            }
        }
        match &self.task.action {
            Action::Http(_) | Action::S3Buckets(_) => self.on_jump_host().await,
            Action::Fetch { src, dest, overwrite } => self.fetch(src, dest, *overwrite).await,
            Action::Run { command } => {
                let (exit, tail) = self.exec(command, true, self.task.timeout).await?;
                check_exit(exit, tail)?;
                Ok((TaskStatus::Changed, None))
            }
            Action::Copy { files, owner } => {
                // The plan's contract: folders on the way to a copied file are created (0755, like mkdir -p).
                let mut dirs: Vec<&str> = files
                    .iter()
                    .filter_map(|f| f.dest.rsplit_once('/').map(|(dir, _)| dir))
                    .filter(|dir| !dir.is_empty())
                    .collect();
                dirs.sort_unstable();
                dirs.dedup();
                if !dirs.is_empty() {
                    let quoted: Vec<String> = dirs.iter().map(|d| format!("'{}'", d.replace('\'', "'\\''"))).collect();
                    let (exit, tail) = self
                        .exec(
                            &format!("umask 022; mkdir -p -- {}", quoted.join(" ")),
                            false,
                            self.task.timeout,
                        )
                        .await?;
                    check_exit(exit, tail)?;
                }
                let mut changed = false;
                for file in files {
                    let content = self.fill_bytes(&file.content);
                    let upload = self.session.upload(
                        &file.dest,
                        &content,
                        file.mode,
                        owner.as_deref(),
                        self.task.become_,
                        &self.shared.cancel,
                    );
                    changed |= match self.task.timeout {
                        Some(limit) => tokio::time::timeout(limit, upload)
                            .await
                            .map_err(|_| Failure::Timeout(limit))?,
                        None => upload.await,
                    }?;
                }
                Ok((if changed { TaskStatus::Changed } else { TaskStatus::Ok }, None))
            }
            Action::Wait { until, interval } => {
                let limit = self.task.timeout.unwrap_or(WAIT_DEFAULT);
                let deadline = Instant::now() + limit;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let (exit, tail) = match self.exec(until, true, Some(left)).await {
                        Err(Failure::Timeout(_)) => return Err(Failure::Timeout(limit)),
                        other => other?,
                    };
                    if exit.success() {
                        return Ok((TaskStatus::Ok, None));
                    }
                    if Instant::now() + *interval >= deadline {
                        let last = match check_exit(exit, tail) {
                            Err(f) => f.message(),
                            Ok(()) => String::new(),
                        };
                        return Err(Failure::Other(format!(
                            "still not true after {} (last try: {last})",
                            humantime::format_duration(limit)
                        )));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(*interval) => {}
                        _ = self.shared.cancel.cancelled() => return Err(Failure::Cancelled),
                    }
                }
            }
        }
    }

    /// A `fetch`: the node prints the file (digest + base64, never shown as output), kubeboot writes it here.
    async fn fetch(&self, src: &str, dest: &str, overwrite: bool) -> Result<(TaskStatus, Option<SkipReason>), Failure> {
        let (exit, lines, tail) = self.capture(&fetch::script(src), self.task.timeout).await?;
        check_exit(exit, tail)?;
        let bytes = fetch::decode(&lines).map_err(|e| Failure::Other(format!("fetching {src}: {e}")))?;
        let path = fetch::destination(&self.shared.spec.fetch_root, dest);
        let written = fetch::write(&path, &bytes, overwrite).map_err(Failure::Other)?;
        let line = match written {
            fetch::Written::Changed => format!("fetched {src} ({} bytes) -> {}", bytes.len(), path.display()),
            fetch::Written::Unchanged => format!("unchanged: {} already holds {src}", path.display()),
        };
        self.shared.emit(Event::Output {
            node: self.name.to_string(),
            stream: Stream::Stdout,
            line,
        });
        Ok(match written {
            fetch::Written::Changed => (TaskStatus::Changed, None),
            fetch::Written::Unchanged => (TaskStatus::Ok, None),
        })
    }

    /// Runs a script of this task and keeps all of its stdout (not shown: it may be a file's content).
    async fn capture(
        &self,
        script: &str,
        limit: Option<Duration>,
    ) -> Result<(Exit, Vec<String>, Vec<String>), Failure> {
        let command = Command {
            script: script.to_string(),
            env: Vec::new(),
            become_: self.task.become_,
        };
        let stdout = Mutex::new(Vec::new());
        let stderr = Mutex::new(Vec::new());
        let output = |stream: Stream, line: String| match stream {
            Stream::Stdout => lock(&stdout).push(line),
            _ => {
                let mut e = lock(&stderr);
                if e.len() < TAIL_LINES {
                    e.push(line);
                }
            }
        };
        let run = self.session.exec(&command, &output, &self.shared.cancel);
        let exit = match limit {
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .map_err(|_| Failure::Timeout(limit))??,
            None => run.await?,
        };
        let out = std::mem::take(&mut *lock(&stdout));
        let err = std::mem::take(&mut *lock(&stderr));
        Ok((exit, out, err))
    }

    /// A task kubeboot does itself on the jump host, within the task's limit; its report lines are the
    /// task's output, like a command's.
    async fn on_jump_host(&self) -> Result<(TaskStatus, Option<SkipReason>), Failure> {
        let vault = &self.shared.spec.vault;
        let out = |line: String| {
            self.shared.emit(Event::Output {
                node: self.name.to_string(),
                stream: Stream::Stdout,
                line,
            })
        };
        let work = async {
            match &self.task.action {
                Action::Http(check) => jump::http(check, vault, &out).await.map(|()| TaskStatus::Ok),
                Action::S3Buckets(task) => {
                    let keys = key_sources(&self.shared.spec.inventory, &[&task.access_key, &task.secret_key]);
                    let created = jump::s3_buckets(task, vault, &keys, &out).await?;
                    Ok(if created { TaskStatus::Changed } else { TaskStatus::Ok })
                }
                _ => Err(jump::JumpError::Client("not a jump-host task".into())),
            }
        };
        let limit = self.task.timeout.unwrap_or(JUMP_DEFAULT);
        tokio::select! {
            result = tokio::time::timeout(limit, work) => match result {
                Ok(Ok(status)) => Ok((status, None)),
                Ok(Err(e)) => Err(Failure::Other(e.to_string())),
                Err(_) => Err(Failure::Timeout(limit)),
            },
            _ = self.shared.cancel.cancelled() => Err(Failure::Cancelled),
        }
    }

    /// Runs a script of this task; streams its output as events when `show` is set.
    async fn exec(&self, script: &str, show: bool, limit: Option<Duration>) -> Result<(Exit, Vec<String>), Failure> {
        let command = Command {
            script: script.to_string(),
            env: self
                .task
                .env
                .iter()
                .map(|(k, v)| (k.clone(), self.shared.spec.vault.fill(v)))
                .collect(),
            become_: self.task.become_,
        };
        let tail = Mutex::new(std::collections::VecDeque::with_capacity(TAIL_LINES));
        let last_error = Mutex::new(None);
        let output = |stream: Stream, line: String| {
            if stream == Stream::Stderr && !line.trim().is_empty() {
                *lock(&last_error) = Some(line.clone());
            }
            {
                let mut tail = lock(&tail);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
            }
            if show {
                self.shared.emit(Event::Output {
                    node: self.name.to_string(),
                    stream,
                    line,
                });
            }
        };
        let cancel: &CancellationToken = &self.shared.cancel;
        let run = self.session.exec(&command, &output, cancel);
        let exit = match limit {
            // Dropping the exec future on timeout kills the remote command.
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .map_err(|_| Failure::Timeout(limit))??,
            None => run.await?,
        };
        let mut tail: Vec<String> = lock(&tail).drain(..).collect();
        // The last error line explains a failure better than the last output line, and the two streams may
        // arrive in any order (stdout comes in batches): it goes last, where the failure message looks.
        if let Some(line) = lock(&last_error).take()
            && tail.last() != Some(&line)
        {
            tail.push(line);
        }
        Ok((exit, tail))
    }

    fn fill_bytes(&self, content: &[u8]) -> Vec<u8> {
        match std::str::from_utf8(content) {
            Ok(text) => self.shared.spec.vault.fill(text).into_bytes(),
            Err(_) => content.to_vec(),
        }
    }
}

/// Where the credentials of a jump-host task come from, in the operator's words (the environment variables or
/// files of the secrets they name), for an access-denied message.
fn key_sources(inv: &crate::inventory::Inventory, fields: &[&str]) -> String {
    let sources: Vec<String> = fields
        .iter()
        .flat_map(|f| crate::secrets::referenced(f))
        .map(|name| match inv.secrets.get(&name) {
            Some(SecretSource::Env(var)) => var.clone(),
            Some(SecretSource::File(path)) => path.display().to_string(),
            None => format!("secrets.{name}"),
        })
        .collect();
    if sources.is_empty() {
        "the task's access_key / secret_key".into()
    } else {
        sources.join(" / ")
    }
}

fn check_exit(exit: Exit, tail: Vec<String>) -> Result<(), Failure> {
    match exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(code) => Err(Failure::Exit { code, tail }),
        Exit::Signal(sig) => Err(Failure::Signal(sig)),
    }
}

/// The node's facts for the drift check, or why they could not be read.
pub(super) async fn gather_facts_for_check(shared: &Shared, session: &Session) -> Result<Facts, String> {
    gather_facts(shared, session).await.map_err(|stop| match stop {
        Stop::Failed(e) | Stop::Cancelled(e) => e,
    })
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
    let s = &node.ssh;
    Ok(ssh::Target {
        node: node.name.clone(),
        host: node.address.clone(),
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
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
