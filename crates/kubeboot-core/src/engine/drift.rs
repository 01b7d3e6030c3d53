//! `kubeboot plan --check`: connects to every selected node and runs the `unless` guards of the tasks the
//! journal records done, to find nodes that no longer match what was done (someone edited a file, stopped a
//! service, removed a package). Guards only: nothing else runs and nothing is changed on the nodes, and the
//! journal is not touched.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::node::{gather_facts_for_check, target_for};
use super::{RunSpec, Shared};
use crate::event::SkipReason;
use crate::plan::{self, Decision};
use crate::ssh::{Command, Exit, Session};

/// How long one guard may take before it counts as not holding.
const GUARD_LIMIT: Duration = Duration::from_secs(60);

/// What the check found for one task recorded done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Its guard exits 0: the node still matches.
    Holds,
    /// Its guard does not exit 0 any more: a plain `apply` with `--fresh` of its stage, or a change of the task,
    /// would run it again. The text says how the guard ended.
    Drifted(String),
    /// It has no guard: nothing to check it with.
    NoGuard,
}

/// One task's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCheck {
    pub stage: String,
    pub task: String,
    pub guard: Guard,
}

/// One node's result: its tasks recorded done, or why it could not be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCheck {
    pub node: String,
    pub tasks: Vec<TaskCheck>,
    pub error: Option<String>,
}

/// Runs the guards of the tasks recorded done on every node of the spec (all nodes at once, within `--forks`).
pub async fn check_guards(spec: RunSpec) -> Vec<NodeCheck> {
    let forks = spec.forks.unwrap_or(spec.nodes.len()).clamp(1, Semaphore::MAX_PERMITS);
    let (events, _unread) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(spec, events, forks));
    let checks = shared.spec.nodes.clone().into_iter().map(|name| {
        let shared = shared.clone();
        async move {
            let _slot = shared.forks.acquire().await;
            let result = check_node(&shared, &name).await;
            match result {
                Ok(tasks) => NodeCheck {
                    node: name,
                    tasks,
                    error: None,
                },
                Err(error) => NodeCheck {
                    node: name,
                    tasks: Vec::new(),
                    error: Some(error),
                },
            }
        }
    });
    futures::future::join_all(checks).await
}

async fn check_node(shared: &Shared, name: &str) -> Result<Vec<TaskCheck>, String> {
    let target = target_for(shared, name).map_err(|e| e.to_string())?;
    let session = Session::connect(target)
        .await
        .map_err(|e| crate::task::ssh_error_text(&e))?;
    let result = check_session(shared, name, &session).await;
    session.close().await;
    result
}

async fn check_session(shared: &Shared, name: &str, session: &Session) -> Result<Vec<TaskCheck>, String> {
    let spec = &shared.spec;
    let facts = gather_facts_for_check(shared, session).await?;
    let plan = {
        let progress = super::node::lock(&shared.progress);
        plan::plan_node(
            &spec.inventory,
            &spec.playbooks,
            name,
            &facts,
            &progress,
            &spec.secret_digests,
            &spec.selection,
        )
    }
    .map_err(|d| format!("cannot plan with the node's facts:\n{d}"))?;
    let mut out = Vec::new();
    for task in plan
        .tasks
        .iter()
        .filter(|t| t.decision == Decision::Skip(SkipReason::Done))
    {
        let guard = match &task.unless {
            None => Guard::NoGuard,
            Some(script) => {
                let command = Command {
                    script: script.clone(),
                    env: task.env.iter().map(|(k, v)| (k.clone(), spec.vault.fill(v))).collect(),
                    become_: task.become_,
                };
                let quiet = |_, _| {};
                let limit = task.timeout.unwrap_or(GUARD_LIMIT).min(GUARD_LIMIT);
                match tokio::time::timeout(limit, session.exec(&command, &quiet, &shared.cancel)).await {
                    Ok(Ok(Exit::Code(0))) => Guard::Holds,
                    Ok(Ok(Exit::Code(code))) => Guard::Drifted(format!("exit code {code}")),
                    Ok(Ok(Exit::Signal(sig))) => Guard::Drifted(format!("killed by signal {sig}")),
                    Ok(Err(e)) => return Err(format!("{}/{}: {e}", task.stage, task.task)),
                    Err(_) => Guard::Drifted(format!("no answer within {}", humantime::format_duration(limit))),
                }
            }
        };
        out.push(TaskCheck {
            stage: task.stage.clone(),
            task: task.task.clone(),
            guard,
        });
    }
    Ok(out)
}

/// The report `plan --check` prints.
pub fn render(checks: &[NodeCheck]) -> String {
    let mut out = String::from(
        "Drift check (guards only): the `unless` guards of the tasks recorded done were run on the nodes; \
         nothing else ran and nothing was changed.\n",
    );
    for c in checks {
        if let Some(e) = &c.error {
            out.push_str(&format!("node {}: not checked: {e}\n", c.node));
            continue;
        }
        let checked = c.tasks.iter().filter(|t| t.guard != Guard::NoGuard).count();
        let drifted: Vec<&TaskCheck> = c
            .tasks
            .iter()
            .filter(|t| matches!(t.guard, Guard::Drifted(_)))
            .collect();
        let unguarded = c.tasks.len() - checked;
        out.push_str(&format!(
            "node {}: {checked} guard(s) checked, {} no longer hold; {unguarded} done task(s) have no guard\n",
            c.node,
            drifted.len()
        ));
        for t in drifted {
            if let Guard::Drifted(how) = &t.guard {
                out.push_str(&format!(
                    "    would run again: {} / {} (guard: {how})\n",
                    t.stage, t.task
                ));
            }
        }
    }
    out
}

/// True when every node was checked and every guard holds.
pub fn all_hold(checks: &[NodeCheck]) -> bool {
    checks
        .iter()
        .all(|c| c.error.is_none() && c.tasks.iter().all(|t| !matches!(t.guard, Guard::Drifted(_))))
}
