//! Property tests of the TUI reducer: any sequence of events and keys, in any order, never panics, keeps the
//! counts consistent and draws at any terminal size.

use std::path::PathBuf;

use crossterm::event::{Event as InputEvent, KeyCode, KeyEvent, KeyModifiers};
use kubeboot::event::Control;
use kubeboot::event::{Counts, Event, NodeOutline, NodeStatus, SkipReason, Stream, TaskOutline, TaskStatus};
use kubeboot::ui::tui::keys::{self, Action, Effect};
use kubeboot::ui::tui::state::{App, HostKeyDecision, HostKeyIssue, HostKeyPrompt, OUTPUT_LINES_PER_NODE, Screen};
use kubeboot::ui::tui::view;
use proptest::prelude::*;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const STAGES: [&str; 2] = ["prep", "install"];
const TASKS: [&str; 3] = ["a", "b", "c"];

fn outline(node: &str) -> NodeOutline {
    NodeOutline {
        node: node.into(),
        cluster: Some("c1".into()),
        address: "127.0.0.1:22".into(),
        tasks: STAGES
            .iter()
            .flat_map(|s| TASKS.iter().map(move |t| (s, t)))
            .enumerate()
            .map(|(i, (s, t))| TaskOutline {
                stage: s.to_string(),
                task: t.to_string(),
                skip: (i == 0).then_some(SkipReason::Done),
            })
            .collect(),
    }
}

fn status() -> impl Strategy<Value = TaskStatus> {
    prop_oneof![
        Just(TaskStatus::Ok),
        Just(TaskStatus::Changed),
        Just(TaskStatus::Skipped),
        Just(TaskStatus::Failed)
    ]
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![
        Just(NodeStatus::Ok),
        Just(NodeStatus::Failed),
        Just(NodeStatus::Cancelled)
    ]
}

/// Events about a few nodes (one not in the plan), stages and tasks (one not in the plan), in any order.
fn event() -> impl Strategy<Value = Event> {
    let node = prop::sample::select(vec!["n1", "n2", "n3", "stranger"]).prop_map(String::from);
    let stage = prop::sample::select(vec!["prep", "install", "extra"]).prop_map(String::from);
    let task = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from);
    prop_oneof![
        Just(Event::RunStarted {
            run_id: "r".into(),
            stages: STAGES.iter().map(|s| s.to_string()).collect(),
            nodes: NODES.iter().map(|n| outline(n)).collect(),
            dry_run: false,
        }),
        node.clone().prop_map(|node| Event::NodeConnecting {
            node,
            address: String::new()
        }),
        (node.clone(), stage.clone(), task.clone(), 1u32..4).prop_map(|(node, stage, task, attempt)| {
            Event::TaskStarted {
                node,
                stage,
                task,
                index: 0,
                total: 6,
                attempt,
                why: None,
            }
        }),
        (node.clone(), ".{0,40}", any::<bool>()).prop_map(|(node, line, err)| Event::Output {
            node,
            stream: if err { Stream::Stderr } else { Stream::Stdout },
            line
        }),
        (node.clone(), stage.clone(), task.clone()).prop_map(|(node, stage, task)| Event::TaskRetrying {
            node,
            stage,
            task,
            attempt: 1,
            error: "timeout".into(),
            delay_ms: 2000
        }),
        (node.clone(), stage, task, status(), any::<Option<i32>>()).prop_map(|(node, stage, task, status, code)| {
            Event::TaskFinished {
                node,
                stage,
                task,
                status,
                reason: (status == TaskStatus::Skipped).then_some(SkipReason::Done),
                fingerprint: String::new(),
                inputs: Default::default(),
                exit_code: code,
                error: None,
                duration_ms: 3,
            }
        }),
        (node, node_status()).prop_map(|(node, status)| Event::NodeFinished {
            node,
            status,
            error: Some("lost".into()),
            blocked_by: None,
            counts: Counts::default(),
            duration_ms: 10
        }),
        Just(Event::RunFinished {
            nodes_ok: 0,
            nodes_failed: 0,
            nodes_cancelled: 0,
            nodes_blocked: 0,
            counts: Counts::default(),
            duration_ms: 100,
            interrupted: true
        }),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Up),
        Just(Action::Down),
        Just(Action::ToggleFocus),
        (0usize..50).prop_map(Action::ScrollUp),
        (0usize..50).prop_map(Action::ScrollDown),
        Just(Action::PageUp),
        Just(Action::PageDown),
        Just(Action::Home),
        Just(Action::End),
        Just(Action::ToggleFollow),
        Just(Action::Retry),
        Just(Action::AskQuit),
        Just(Action::Dismiss),
        Just(Action::ToggleHelp),
        Just(Action::ShowRun),
        Just(Action::AcceptHostKey),
        Just(Action::RefuseHostKey),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Event(Box<Event>, u64),
    Action(Action, usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (event(), 0u64..1_000_000).prop_map(|(e, t)| Step::Event(Box::new(e), t)),
        1 => (action(), 0usize..60).prop_map(|(a, p)| Step::Action(a, p)),
    ]
}

fn new_app() -> App {
    let nodes: Vec<NodeOutline> = NODES.iter().map(|n| outline(n)).collect();
    let mut app = App::new(
        "r",
        STAGES.iter().map(|s| s.to_string()).collect(),
        &nodes,
        PathBuf::from("logs"),
    );
    let _ = app.act(Action::Start, 10);
    app
}

fn assert_consistent(app: &App) {
    let (done, total) = app.run.task_progress();
    assert!(done <= total, "{done} done of {total}");
    assert_eq!(app.panes.len(), app.run.nodes.len(), "one pane per node");
    for (node, pane) in app.run.nodes.iter().zip(&app.panes) {
        assert!(
            node.tasks_done() + node.tasks_failed() <= node.tasks_total(),
            "{}",
            node.name
        );
        assert!(pane.output.len() <= OUTPUT_LINES_PER_NODE);
        assert!(node.current.is_none_or(|i| i < node.tasks.len()));
    }
    assert!(app.run.nodes.is_empty() || app.selected < app.run.nodes.len());
    let tally = app.run.node_tally();
    assert_eq!(
        tally.waiting + tally.running + tally.done + tally.failed + tally.cancelled,
        app.run.nodes.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_sequence_of_events_and_keys_keeps_the_model_consistent(steps in prop::collection::vec(step(), 0..120)) {
        let mut app = new_app();
        for step in steps {
            match step {
                Step::Event(event, now) => app.apply(&event, now),
                Step::Action(action, page) => {
                    if let Some(Effect::Control(Control::Retry { node })) = app.act(action, page) {
                        prop_assert!(app.run.nodes.iter().any(|n| n.name == node));
                    }
                }
            }
            assert_consistent(&app);
        }
    }

    #[test]
    fn any_model_draws_at_any_terminal_size(
        steps in prop::collection::vec(step(), 0..60),
        width in 1u16..160,
        height in 1u16..50,
    ) {
        let mut app = new_app();
        for step in steps {
            match step {
                Step::Event(event, now) => app.apply(&event, now),
                Step::Action(action, page) => { let _ = app.act(action, page); }
            }
        }
        let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
            Ok(terminal) => terminal,
            Err(never) => match never {},
        };
        for screen in [Screen::Confirm, Screen::Running, Screen::Summary] {
            app.screen = screen;
            let _ = terminal.draw(|frame| view::draw(frame, &app));
        }
        let _ = view::summary_text(&app);
    }
}

fn key(code: KeyCode) -> InputEvent {
    InputEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

#[test]
fn keys_map_to_actions_by_screen_and_dialog() {
    let nodes = [outline("n1")];
    let mut app = App::new("r", vec![], &nodes, PathBuf::from("logs"));
    assert_eq!(keys::action_for(&key(KeyCode::Char('y')), &app), Some(Action::Start));
    assert_eq!(keys::action_for(&key(KeyCode::Enter), &app), Some(Action::Start));
    assert_eq!(keys::action_for(&key(KeyCode::Char('n')), &app), Some(Action::Decline));
    assert_eq!(keys::action_for(&key(KeyCode::Char('q')), &app), Some(Action::Decline));
    let ctrl_c = InputEvent::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert_eq!(keys::action_for(&ctrl_c, &app), Some(Action::Interrupt));

    app.screen = Screen::Running;
    assert_eq!(keys::action_for(&key(KeyCode::Char('j')), &app), Some(Action::Down));
    assert_eq!(keys::action_for(&key(KeyCode::Up), &app), Some(Action::Up));
    assert_eq!(keys::action_for(&key(KeyCode::Tab), &app), Some(Action::ToggleFocus));
    assert_eq!(keys::action_for(&key(KeyCode::Enter), &app), Some(Action::ToggleFocus));
    assert_eq!(keys::action_for(&key(KeyCode::PageUp), &app), Some(Action::PageUp));
    assert_eq!(keys::action_for(&key(KeyCode::End), &app), Some(Action::End));
    assert_eq!(
        keys::action_for(&key(KeyCode::Char('f')), &app),
        Some(Action::ToggleFollow)
    );
    assert_eq!(keys::action_for(&key(KeyCode::Char('r')), &app), Some(Action::Retry));
    assert_eq!(keys::action_for(&key(KeyCode::Char('q')), &app), Some(Action::AskQuit));
    assert_eq!(
        keys::action_for(&key(KeyCode::Char('?')), &app),
        Some(Action::ToggleHelp)
    );
    assert_eq!(keys::action_for(&ctrl_c, &app), Some(Action::Interrupt));
    let wheel = InputEvent::Mouse(crossterm::event::MouseEvent {
        kind: crossterm::event::MouseEventKind::ScrollUp,
        column: 0,
        row: 0,
        modifiers: KeyModifiers::NONE,
    });
    assert_eq!(
        keys::action_for(&wheel, &app),
        Some(Action::ScrollUp(keys::WHEEL_LINES))
    );

    app.quit_confirm = true;
    assert_eq!(
        keys::action_for(&key(KeyCode::Char('y')), &app),
        Some(Action::ConfirmQuit)
    );
    assert_eq!(keys::action_for(&key(KeyCode::Char('n')), &app), Some(Action::Dismiss));
    assert_eq!(keys::action_for(&key(KeyCode::Char('j')), &app), None);

    app.quit_confirm = false;
    app.screen = Screen::Summary;
    assert_eq!(keys::action_for(&key(KeyCode::Char('q')), &app), Some(Action::Leave));
    assert_eq!(keys::action_for(&key(KeyCode::Enter), &app), Some(Action::Leave));
    assert_eq!(keys::action_for(&key(KeyCode::Tab), &app), Some(Action::ShowRun));
}

fn host_key(node: &str, issue: HostKeyIssue) -> HostKeyPrompt {
    HostKeyPrompt {
        node: node.into(),
        fingerprint: format!("SHA256:{node}"),
        issue,
    }
}

fn app_with_host_keys() -> App {
    let nodes: Vec<NodeOutline> = NODES.iter().map(|n| outline(n)).collect();
    let mut app = App::new("r", vec![], &nodes, PathBuf::from("logs"));
    app.set_host_keys(vec![
        host_key("n1", HostKeyIssue::Unknown),
        host_key("n2", HostKeyIssue::Unknown),
        host_key(
            "n3",
            HostKeyIssue::Changed {
                line: 2,
                path: "known_hosts".into(),
            },
        ),
    ]);
    app
}

#[test]
fn host_keys_are_accepted_or_refused_per_node_with_the_arrows_choosing_which() {
    let mut app = app_with_host_keys();
    assert!(app.accepted_host_keys().is_empty(), "undecided keys count as refused");
    assert_eq!(app.act(Action::AcceptHostKey, 10), None);
    assert_eq!(app.act(Action::Down, 10), None);
    let _ = app.act(Action::AcceptHostKey, 10);
    let _ = app.act(Action::RefuseHostKey, 10);
    assert_eq!(app.host_keys[0].decision, HostKeyDecision::Accept);
    assert_eq!(app.host_keys[1].decision, HostKeyDecision::Refuse);
    assert_eq!(
        app.accepted_host_keys(),
        std::collections::HashSet::from(["n1".to_string()])
    );
    // The selection stays on the list.
    for _ in 0..5 {
        let _ = app.act(Action::Down, 10);
    }
    assert_eq!(app.host_key_selected, 2);
    for _ in 0..5 {
        let _ = app.act(Action::Up, 10);
    }
    assert_eq!(app.host_key_selected, 0);
}

#[test]
fn a_changed_host_key_can_never_be_accepted() {
    let mut app = app_with_host_keys();
    let _ = app.act(Action::Down, 10);
    let _ = app.act(Action::Down, 10);
    let _ = app.act(Action::AcceptHostKey, 10);
    assert_eq!(app.host_keys[2].decision, HostKeyDecision::Refuse);
    assert!(!app.accepted_host_keys().contains("n3"));
}

#[test]
fn host_key_decisions_end_when_the_run_starts() {
    let mut app = app_with_host_keys();
    assert_eq!(app.act(Action::Start, 10), Some(Effect::Go(true)));
    let _ = app.act(Action::AcceptHostKey, 10);
    assert!(app.accepted_host_keys().is_empty());
    // The arrows move between nodes again.
    let _ = app.act(Action::Down, 10);
    assert_eq!(app.selected, 1);
}

#[test]
fn host_key_keys_work_only_on_the_confirmation_screen_with_keys_to_decide() {
    let mut app = app_with_host_keys();
    assert_eq!(
        keys::action_for(&key(KeyCode::Char('a')), &app),
        Some(Action::AcceptHostKey)
    );
    assert_eq!(
        keys::action_for(&key(KeyCode::Char('x')), &app),
        Some(Action::RefuseHostKey)
    );
    assert_eq!(keys::action_for(&key(KeyCode::Down), &app), Some(Action::Down));
    assert_eq!(keys::action_for(&key(KeyCode::Char('k')), &app), Some(Action::Up));
    app.screen = Screen::Running;
    assert_eq!(keys::action_for(&key(KeyCode::Char('a')), &app), None);
    let plain = App::new("r", vec![], &[outline("n1")], PathBuf::from("logs"));
    assert_eq!(keys::action_for(&key(KeyCode::Char('a')), &plain), None);
}

#[test]
fn a_failed_node_can_be_retried_from_the_summary_while_the_engine_still_listens() {
    let mut app = new_app();
    app.apply(
        &Event::NodeFinished {
            node: "n2".into(),
            status: NodeStatus::Failed,
            error: Some("boom".into()),
            blocked_by: None,
            counts: Counts::default(),
            duration_ms: 1,
        },
        1,
    );
    app.apply(
        &Event::RunFinished {
            nodes_ok: 0,
            nodes_failed: 1,
            nodes_cancelled: 0,
            nodes_blocked: 0,
            counts: Counts::default(),
            duration_ms: 2,
            interrupted: false,
        },
        2,
    );
    assert_eq!(app.screen, Screen::Summary);
    assert_eq!(keys::action_for(&key(KeyCode::Char('r')), &app), Some(Action::Retry));
    let _ = app.act(Action::Down, 10);
    assert_eq!(
        app.act(Action::Retry, 10),
        Some(Effect::Control(Control::Retry { node: "n2".into() }))
    );
    assert_eq!(app.screen, Screen::Running);
    assert!(!app.run_over());
    // Once the engine is gone there is nothing to retry with.
    let mut gone = app.clone();
    gone.apply(
        &Event::NodeFinished {
            node: "n2".into(),
            status: NodeStatus::Failed,
            error: None,
            blocked_by: None,
            counts: Counts::default(),
            duration_ms: 1,
        },
        3,
    );
    gone.close_events(4);
    assert_eq!(gone.act(Action::Retry, 10), None);
}
