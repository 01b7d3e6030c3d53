//! One task on one node: the decision completed with what this run learned, the attempts with
//! their retries and timeout, the guard, and the output a `run` registers.

use std::collections::HashSet;
use std::time::Instant;

use super::{Shared, Stop, finished, lock};
use crate::event::{Event, SkipReason, Stream, TaskStatus};
use crate::journal::Record;
use crate::plan::{self, Decision, PlannedTask, Why};
use crate::playbook::TaskKey;
use crate::ssh::Session;
use crate::task::{Action, Failure, RunCx};

/// The plan's decision, completed with what this run learned: a task recorded done runs again when a task it
/// depends on reported `changed` earlier in this run, and one planned to run only if such a task changed stays
/// done when none did. Also why it runs, for the `task_started` event (nothing for a task that is simply new).
pub(super) fn live_decision(task: &PlannedTask, changed: &HashSet<TaskKey>) -> (Decision, Option<String>) {
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
pub(super) async fn run_task(
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
