//! The run model on short event sequences: what each node's row and the run's tallies say afterwards.

use super::*;
use crate::event::{Inputs, TaskOutline};

fn plan(node: &str) -> NodeOutline {
    let task = |stage: &str, task: &str, skip: Option<SkipReason>| TaskOutline {
        stage: stage.into(),
        task: task.into(),
        skip,
    };
    NodeOutline {
        node: node.into(),
        cluster: Some("c1".into()),
        address: "10.0.0.1:22".into(),
        tasks: vec![
            task("prep", "a", None),
            task("prep", "b", Some(SkipReason::Done)),
            task("install", "c", None),
        ],
    }
}

fn run(nodes: &[&str]) -> RunModel {
    let mut run = RunModel::default();
    run.apply(
        &Event::RunStarted {
            run_id: "r1".into(),
            stages: vec!["prep".into(), "install".into()],
            nodes: nodes.iter().map(|n| plan(n)).collect(),
            dry_run: false,
        },
        100,
    );
    run
}

fn connecting(node: &str) -> Event {
    Event::NodeConnecting {
        node: node.into(),
        address: "10.0.0.9:22".into(),
    }
}

fn started(node: &str, stage: &str, task: &str, attempt: u32) -> Event {
    Event::TaskStarted {
        node: node.into(),
        stage: stage.into(),
        task: task.into(),
        index: 0,
        total: 3,
        attempt,
        why: None,
    }
}

fn finished(node: &str, stage: &str, task: &str, status: TaskStatus, reason: Option<SkipReason>) -> Event {
    let failed = status == TaskStatus::Failed;
    Event::TaskFinished {
        node: node.into(),
        stage: stage.into(),
        task: task.into(),
        status,
        reason,
        fingerprint: String::new(),
        inputs: Inputs::default(),
        exit_code: failed.then_some(2),
        error: failed.then(|| "exit code 2".to_string()),
        duration_ms: 5,
    }
}

fn node_finished(
    node: &str,
    status: NodeStatus,
    error: Option<&str>,
    blocked_by: Option<&str>,
    counts: Counts,
) -> Event {
    Event::NodeFinished {
        node: node.into(),
        status,
        error: error.map(str::to_string),
        blocked_by: blocked_by.map(str::to_string),
        counts,
        duration_ms: 1_500,
    }
}

fn run_finished(interrupted: bool) -> Event {
    Event::RunFinished {
        nodes_ok: 1,
        nodes_failed: 1,
        nodes_cancelled: 0,
        nodes_blocked: 1,
        counts: Counts {
            ok: 1,
            changed: 1,
            skipped: 1,
            failed: 1,
        },
        duration_ms: 9_000,
        interrupted,
    }
}

#[test]
fn a_node_that_runs_to_the_end_has_its_tasks_stages_and_the_engines_tallies() {
    let mut run = run(&["n1", "n2"]);
    assert_eq!(run.run_id, "r1");
    assert_eq!(run.started_ms, Some(100));
    run.apply(&connecting("n1"), 200);
    assert_eq!(run.nodes[0].state, NodeState::Connecting);
    assert_eq!(run.nodes[0].address, "10.0.0.9:22");
    run.apply(&started("n1", "prep", "a", 1), 300);
    assert_eq!(run.nodes[0].state, NodeState::Running);
    assert_eq!(run.nodes[0].current_task().map(|t| t.name.as_str()), Some("a"));
    assert_eq!(run.nodes[0].stage_cell("prep"), StageCell::Running);
    run.apply(&finished("n1", "prep", "a", TaskStatus::Changed, None), 400);
    assert_eq!(run.nodes[0].current, None);
    run.apply(&started("n1", "install", "c", 1), 500);
    run.apply(&finished("n1", "install", "c", TaskStatus::Ok, None), 600);
    let counts = Counts {
        ok: 1,
        changed: 1,
        skipped: 1,
        failed: 0,
    };
    run.apply(&node_finished("n1", NodeStatus::Ok, None, None, counts), 700);
    let n1 = &run.nodes[0];
    assert_eq!(n1.state, NodeState::Done);
    assert_eq!(n1.ended, Some(NodeStatus::Ok));
    // The task the plan knew it would skip gets no event of its own.
    assert_eq!(n1.tasks[1].state, TaskState::Skipped(SkipReason::Done));
    assert_eq!(n1.stage_cell("prep"), StageCell::Done);
    assert_eq!(n1.stage_cell("install"), StageCell::Done);
    assert_eq!(n1.counts(), counts);
    assert_eq!(
        (n1.started_ms, n1.finished_ms, n1.duration_ms),
        (Some(200), Some(700), Some(1_500))
    );
    assert_eq!(n1.elapsed_ms(10_000), Some(1_500));
    assert_eq!(run.task_progress(), (3, 6));
    assert_eq!(
        run.node_tally(),
        NodeTally {
            waiting: 1,
            done: 1,
            ..NodeTally::default()
        }
    );
    assert!(!run.run_over());
    assert_eq!(run.elapsed_ms(), 600);
}

#[test]
fn a_retried_attempt_shows_as_retrying_until_the_next_attempt_starts() {
    let mut run = run(&["n1"]);
    run.apply(&connecting("n1"), 200);
    run.apply(&started("n1", "prep", "a", 1), 300);
    run.apply(
        &Event::TaskRetrying {
            node: "n1".into(),
            stage: "prep".into(),
            task: "a".into(),
            attempt: 1,
            error: "exit code 1".into(),
            delay_ms: 2_000,
        },
        400,
    );
    assert_eq!(
        run.nodes[0].retrying,
        Some(Retrying {
            attempt: 1,
            error: "exit code 1".into(),
            delay_ms: 2_000,
        })
    );
    run.apply(&started("n1", "prep", "a", 2), 2_400);
    let n1 = &run.nodes[0];
    assert_eq!((n1.retrying.clone(), n1.attempt), (None, 2));
    assert_eq!(n1.tasks[0].state, TaskState::Running);
    assert_eq!(n1.tasks.len(), 3, "the second attempt is the same task, not a new one");
}

#[test]
fn skipped_tasks_count_with_their_reason_and_a_stage_of_skips_is_skipped() {
    let mut run = run(&["n1"]);
    run.apply(&connecting("n1"), 200);
    run.apply(
        &finished("n1", "prep", "a", TaskStatus::Skipped, Some(SkipReason::Guard)),
        300,
    );
    run.apply(&finished("n1", "prep", "b", TaskStatus::Skipped, None), 300);
    let n1 = &run.nodes[0];
    assert_eq!(n1.tasks[0].state, TaskState::Skipped(SkipReason::Guard));
    assert_eq!(
        n1.tasks[1].state,
        TaskState::Skipped(SkipReason::Condition),
        "no reason reads as a condition"
    );
    assert_eq!(n1.stage_cell("prep"), StageCell::Skipped);
    assert_eq!(n1.counts().skipped, 2, "counted from the tasks until node_finished");
    assert_eq!(n1.resume_skips(), 1);
}

#[test]
fn a_failed_task_is_the_nodes_failure_and_a_retry_clears_its_end() {
    let mut run = run(&["n1"]);
    run.apply(&connecting("n1"), 200);
    run.apply(&started("n1", "prep", "a", 1), 300);
    run.apply(&finished("n1", "prep", "a", TaskStatus::Failed, None), 400);
    let counts = Counts {
        failed: 1,
        ..Counts::default()
    };
    run.apply(
        &node_finished(
            "n1",
            NodeStatus::Failed,
            Some("prep / a failed: exit code 2"),
            None,
            counts,
        ),
        500,
    );
    let n1 = &run.nodes[0];
    assert_eq!(n1.state, NodeState::Failed);
    assert_eq!(n1.stage_cell("prep"), StageCell::Failed);
    assert_eq!(n1.failure_text(), "n1: prep / a (exit 2): exit code 2");
    assert_eq!(n1.error.as_deref(), Some("prep / a failed: exit code 2"));
    assert_eq!(run.node_tally().failed, 1);

    // The operator retries: the engine starts the failed task again.
    run.apply(&started("n1", "prep", "a", 1), 600);
    let n1 = &run.nodes[0];
    assert_eq!(n1.state, NodeState::Running);
    assert_eq!((n1.failure.clone(), n1.ended, n1.error.clone()), (None, None, None));
    assert_eq!((n1.final_counts, n1.duration_ms, n1.finished_ms), (None, None, None));
    assert_eq!(n1.tasks_failed(), 0);
}

#[test]
fn an_unreachable_node_fails_with_the_engines_words() {
    let mut run = run(&["n1"]);
    run.apply(&connecting("n1"), 200);
    run.apply(
        &node_finished(
            "n1",
            NodeStatus::Failed,
            Some("connection refused"),
            None,
            Counts::default(),
        ),
        300,
    );
    let n1 = &run.nodes[0];
    let failure = n1.failure.clone().unwrap_or_default();
    assert_eq!(
        (failure.stage, failure.error.as_deref()),
        (None, Some("connection refused"))
    );
    assert_eq!(n1.failure_text(), "n1: connection refused");
}

#[test]
fn a_blocked_node_names_who_blocked_it_and_forgets_what_it_waited_for() {
    let mut run = run(&["n1", "n2"]);
    run.apply(&connecting("n2"), 200);
    run.apply(
        &Event::TaskWaiting {
            node: "n2".into(),
            stage: "install".into(),
            task: "c".into(),
            on: vec!["n1: prep/a".into(), "n1: prep/b".into()],
        },
        300,
    );
    assert_eq!(run.nodes[1].state, NodeState::WaitingOnOthers);
    assert_eq!(run.nodes[1].waiting_on.as_deref(), Some("n1: prep/a, n1: prep/b"));
    assert_eq!(run.node_tally().waiting, 2);
    run.apply(
        &node_finished(
            "n2",
            NodeStatus::Blocked,
            Some("blocked by n1"),
            Some("n1"),
            Counts::default(),
        ),
        400,
    );
    let n2 = &run.nodes[1];
    assert_eq!(n2.state, NodeState::Blocked);
    assert_eq!((n2.blocked_by.as_deref(), n2.waiting_on.as_deref()), (Some("n1"), None));
    assert_eq!(n2.ended, Some(NodeStatus::Blocked));
    assert_eq!(run.node_tally().failed, 1, "blocked counts with the failed");
}

#[test]
fn run_finished_ends_the_run_and_cancels_nodes_that_started_and_did_not_finish() {
    let mut run = run(&["n1", "n2", "n3"]);
    run.apply(&connecting("n1"), 200);
    run.apply(&started("n1", "prep", "a", 1), 300);
    run.apply(
        &node_finished(
            "n2",
            NodeStatus::Cancelled,
            Some("cancelled before it started"),
            None,
            Counts::default(),
        ),
        400,
    );
    run.apply(&run_finished(true), 500);
    assert!(run.run_over());
    assert_eq!(run.end.map(|e| (e.nodes_blocked, e.interrupted)), Some((1, true)));
    assert_eq!(run.elapsed_ms(), 9_000, "the engine's duration once the run finished");
    let n1 = &run.nodes[0];
    assert_eq!(
        (n1.state, n1.finished_ms, n1.ended),
        (NodeState::Cancelled, Some(500), None)
    );
    assert_eq!(run.nodes[1].state, NodeState::Cancelled);
    assert_eq!(run.nodes[1].ended, Some(NodeStatus::Cancelled));
    assert_eq!(
        run.nodes[2].state,
        NodeState::Waiting,
        "a node that never started stays not run"
    );
    assert_eq!(
        run.node_tally(),
        NodeTally {
            waiting: 1,
            cancelled: 2,
            ..NodeTally::default()
        }
    );
}

#[test]
fn a_closed_event_stream_is_over_without_an_end() {
    let mut run = run(&["n1"]);
    run.apply(&connecting("n1"), 200);
    run.close_events(800);
    assert!(run.run_over() && run.end.is_none());
    assert_eq!(run.nodes[0].state, NodeState::Cancelled);
    assert_eq!(run.elapsed_ms(), 700);
}

#[test]
fn nodes_and_tasks_only_events_name_are_added_and_a_new_plan_keeps_what_finished() {
    let mut run = run(&["n1"]);
    run.apply(&finished("n9", "extra", "x", TaskStatus::Ok, None), 200);
    assert_eq!(run.position("n9"), Some(1));
    assert_eq!((run.nodes[1].tasks_total(), run.nodes[1].tasks_done()), (1, 1));
    run.apply(&finished("n1", "prep", "a", TaskStatus::Ok, None), 300);
    let mut replan = plan("n1");
    replan.tasks.push(TaskOutline {
        stage: "install".into(),
        task: "d".into(),
        skip: None,
    });
    run.apply(
        &Event::NodePlanned {
            node: "n1".into(),
            plan: replan,
        },
        400,
    );
    assert_eq!((run.nodes[0].tasks_total(), run.nodes[0].tasks_done()), (4, 1));
    assert_eq!(run.nodes.len(), 2);
}
