//! A node waiting for others: for the tasks of other nodes a task waits for (`wait_for`), and for its
//! turn in a serial stage of its cluster.

use super::{Shared, Stop, lock};
use crate::event::{Event, NodeStatus};
use crate::plan::PlannedTask;

/// Waits for this node's turn in a serial stage of its cluster.
pub(super) async fn serial_turn(
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
pub(super) async fn wait_for_others(shared: &Shared, name: &str, task: &PlannedTask) -> Result<(), Stop> {
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
