//! The reducer and the actions together, on a small two-node model.

use super::super::keys::{Action, Effect};
use super::*;
use crate::event::{Counts, Event, NodeStatus, SkipReason, Stream, TaskOutline, TaskStatus};
use crate::ui::summary::duration;

fn plan(node: &str) -> NodeOutline {
    let task = |stage: &str, task: &str| TaskOutline {
        stage: stage.into(),
        task: task.into(),
        skip: None,
    };
    NodeOutline {
        node: node.into(),
        cluster: Some("c1".into()),
        address: "10.0.0.1:22".into(),
        tasks: vec![task("prep", "a"), task("prep", "b"), task("install", "c")],
    }
}

fn app() -> App {
    let mut app = App::new(
        "run",
        vec!["prep".into(), "install".into()],
        &[plan("n1"), plan("n2")],
        "logs".into(),
    );
    let _ = app.act(Action::Start, 10);
    app
}

fn started(node: &str, stage: &str, task: &str) -> Event {
    Event::TaskStarted {
        node: node.into(),
        stage: stage.into(),
        task: task.into(),
        index: 0,
        total: 3,
        attempt: 1,
        why: None,
    }
}

fn finished(node: &str, stage: &str, task: &str, status: TaskStatus) -> Event {
    Event::TaskFinished {
        node: node.into(),
        stage: stage.into(),
        task: task.into(),
        status,
        reason: None,
        fingerprint: String::new(),
        inputs: Default::default(),
        exit_code: (status == TaskStatus::Failed).then_some(2),
        error: None,
        duration_ms: 5,
    }
}

fn node_finished(node: &str, status: NodeStatus) -> Event {
    Event::NodeFinished {
        node: node.into(),
        status,
        error: None,
        blocked_by: None,
        counts: Counts::default(),
        duration_ms: 9,
    }
}

fn run_finished() -> Event {
    Event::RunFinished {
        nodes_ok: 0,
        nodes_failed: 0,
        nodes_cancelled: 0,
        nodes_blocked: 0,
        counts: Counts::default(),
        duration_ms: 10,
        interrupted: false,
    }
}

#[test]
fn finished_tasks_count_as_done_and_fill_the_stage_matrix() {
    let mut app = app();
    app.apply(&started("n1", "prep", "a"), 1);
    assert_eq!(app.run.nodes[0].stage_cell("prep"), StageCell::Running);
    app.apply(&finished("n1", "prep", "a", TaskStatus::Changed), 2);
    app.apply(&finished("n1", "prep", "b", TaskStatus::Ok), 3);
    assert_eq!(app.run.nodes[0].tasks_done(), 2);
    assert_eq!(app.run.nodes[0].stage_cell("prep"), StageCell::Done);
    assert_eq!(app.run.nodes[0].stage_cell("install"), StageCell::Pending);
    assert_eq!(app.run.nodes[0].stage_cell("other"), StageCell::NotApplicable);
    assert_eq!(app.run.task_progress(), (2, 6));
}

#[test]
fn a_failed_task_keeps_its_exit_code_and_last_lines() {
    let mut app = app();
    app.apply(&started("n1", "prep", "a"), 1);
    app.apply(
        &Event::Output {
            node: "n1".into(),
            stream: Stream::Stderr,
            line: "boom".into(),
        },
        1,
    );
    app.apply(&finished("n1", "prep", "a", TaskStatus::Failed), 2);
    app.apply(&node_finished("n1", NodeStatus::Failed), 3);
    let node = &app.run.nodes[0];
    assert_eq!(node.state, NodeState::Failed);
    let failure = node
        .failure
        .as_ref()
        .map(|f| (f.exit_code, f.task.clone(), app.panes[0].failure_tail.last().cloned()));
    assert_eq!(failure, Some((Some(2), Some("a".into()), Some("boom".into()))));
    assert_eq!(node.stage_cell("prep"), StageCell::Failed);
}

#[test]
fn retry_is_sent_only_for_a_failed_node_which_runs_again_when_events_arrive() {
    let mut app = app();
    assert_eq!(app.act(Action::Retry, 10), None);
    app.apply(&finished("n1", "prep", "a", TaskStatus::Failed), 2);
    app.apply(&node_finished("n1", NodeStatus::Failed), 3);
    assert_eq!(
        app.act(Action::Retry, 10),
        Some(Effect::Control(Control::Retry { node: "n1".into() }))
    );
    assert!(app.panes[0].retry_requested);
    app.apply(&started("n1", "prep", "a"), 4);
    let node = &app.run.nodes[0];
    assert_eq!(node.state, NodeState::Running);
    assert!(node.failure.is_none() && !app.panes[0].retry_requested);
    assert_eq!(node.tasks_failed(), 0);
}

#[test]
fn quit_asks_then_cancels_and_leaves_once_the_run_has_stopped() {
    let mut app = app();
    assert_eq!(app.act(Action::AskQuit, 10), None);
    assert!(app.quit_confirm);
    assert_eq!(app.act(Action::ConfirmQuit, 10), Some(Effect::Control(Control::Cancel)));
    assert!(!app.should_exit());
    app.apply(&run_finished(), 5);
    assert!(app.should_exit());
}

#[test]
fn a_second_ctrl_c_leaves_without_waiting_for_the_engine() {
    let mut app = app();
    assert_eq!(app.act(Action::Interrupt, 10), Some(Effect::Control(Control::Cancel)));
    assert_eq!(app.act(Action::Interrupt, 10), Some(Effect::Exit));
}

#[test]
fn declining_the_confirmation_starts_nothing() {
    let mut app = App::new("run", vec![], &[plan("n1")], "logs".into());
    assert_eq!(app.act(Action::Decline, 10), Some(Effect::Go(false)));
    assert_eq!(app.act(Action::Interrupt, 10), Some(Effect::Go(false)));
    assert_eq!(app.screen, Screen::Confirm);
}

#[test]
fn the_end_of_the_run_opens_the_summary_which_stays_until_left() {
    let mut app = app();
    app.apply(&run_finished(), 5);
    assert_eq!(app.screen, Screen::Summary);
    assert_eq!(app.act(Action::ShowRun, 10), None);
    assert_eq!(app.act(Action::AskQuit, 10), None);
    assert_eq!(app.screen, Screen::Summary);
    assert_eq!(app.act(Action::Leave, 10), Some(Effect::Exit));
}

#[test]
fn scrolling_up_pauses_follow_and_reaching_the_end_resumes_it() {
    let mut app = app();
    for i in 0..100 {
        app.apply(
            &Event::Output {
                node: "n1".into(),
                stream: Stream::Stdout,
                line: format!("{i}"),
            },
            1,
        );
    }
    assert_eq!(app.output_top(10), 90);
    let _ = app.act(Action::PageUp, 10);
    assert!(!app.follow);
    assert_eq!(app.output_top(10), 81);
    // New output does not move a paused pane.
    app.apply(
        &Event::Output {
            node: "n1".into(),
            stream: Stream::Stdout,
            line: "new".into(),
        },
        2,
    );
    assert_eq!(app.output_top(10), 81);
    let _ = app.act(Action::Home, 10);
    assert_eq!(app.output_top(10), 0);
    let _ = app.act(Action::End, 10);
    assert!(app.follow);
    let _ = app.act(Action::ScrollUp(3), 10);
    let _ = app.act(Action::ScrollDown(3), 10);
    assert!(app.follow);
}

#[test]
fn events_about_unknown_nodes_and_tasks_are_added_not_dropped() {
    let mut app = app();
    app.apply(&finished("n9", "extra", "z", TaskStatus::Ok), 1);
    assert_eq!(app.run.nodes.len(), 3);
    assert_eq!(app.run.nodes[2].tasks_total(), 1);
    assert_eq!(app.run.nodes[2].tasks_done(), 1);
}

#[test]
fn a_new_plan_keeps_what_already_finished() {
    let mut app = app();
    app.apply(&finished("n1", "prep", "a", TaskStatus::Ok), 1);
    let mut replan = plan("n1");
    replan.tasks.push(TaskOutline {
        stage: "install".into(),
        task: "d".into(),
        skip: None,
    });
    app.apply(
        &Event::NodePlanned {
            node: "n1".into(),
            plan: replan,
        },
        2,
    );
    assert_eq!(app.run.nodes[0].tasks_total(), 4);
    assert_eq!(app.run.nodes[0].tasks_done(), 1);
}

#[test]
fn skipped_tasks_from_an_earlier_run_show_as_skipped() {
    let mut app = app();
    for task in ["a", "b"] {
        app.apply(
            &Event::TaskFinished {
                node: "n1".into(),
                stage: "prep".into(),
                task: task.into(),
                status: TaskStatus::Skipped,
                reason: Some(SkipReason::Done),
                fingerprint: String::new(),
                inputs: Default::default(),
                exit_code: None,
                error: None,
                duration_ms: 0,
            },
            1,
        );
    }
    assert_eq!(app.run.nodes[0].stage_cell("prep"), StageCell::Skipped);
    assert_eq!(app.run.nodes[0].counts().skipped, 2);
}

#[test]
fn elapsed_times_come_from_the_times_given() {
    let mut app = app();
    app.apply(
        &Event::NodeConnecting {
            node: "n1".into(),
            address: String::new(),
        },
        1_000,
    );
    app.tick(61_000);
    assert_eq!(app.run.nodes[0].elapsed_ms(app.run.now_ms), Some(60_000));
    assert_eq!(duration(60_000), "1m00s");
    assert_eq!(duration(3_723_000), "1h02m");
}
