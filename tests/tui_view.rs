//! Snapshot tests of every TUI screen, drawn into ratatui's `TestBackend`. Time is an input to the model, so the
//! durations on screen are fixed values.

use std::path::PathBuf;

use kubeboot::event::{Counts, Event, NodeOutline, NodeStatus, SkipReason, Stream, TaskOutline, TaskStatus};
use kubeboot::facts::Facts;
use kubeboot::ui::tui::keys::Action;
use kubeboot::ui::tui::state::{App, Focus, HostKeyAnswer, HostKeyIssue, HostKeyPrompt};
use kubeboot::ui::tui::view;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const STAGES: [&str; 6] = ["preflight", "os-prep", "containerd", "kubeadm", "cni", "addons"];
const TASKS_PER_STAGE: usize = 3;

fn stages() -> Vec<String> {
    STAGES.iter().map(|s| s.to_string()).collect()
}

fn task_name(stage: &str, i: usize) -> String {
    match (stage, i) {
        ("containerd", 0) => "install containerd".to_string(),
        ("containerd", 1) => "containerd config".to_string(),
        ("containerd", 2) => "restart containerd".to_string(),
        _ => format!("{stage} step {}", i + 1),
    }
}

/// A node's plan: every stage, three tasks each; the first `done_earlier` tasks finished in an earlier run.
fn outline(node: &str, cluster: &str, host: u8, done_earlier: usize) -> NodeOutline {
    let tasks = STAGES
        .iter()
        .flat_map(|stage| (0..TASKS_PER_STAGE).map(move |i| (stage, i)))
        .enumerate()
        .map(|(n, (stage, i))| TaskOutline {
            stage: stage.to_string(),
            task: task_name(stage, i),
            skip: (n < done_earlier).then_some(SkipReason::Done),
        })
        .collect();
    NodeOutline {
        node: node.to_string(),
        cluster: Some(cluster.to_string()),
        address: format!("192.168.101.{host}:22"),
        tasks,
    }
}

fn outlines(done_earlier: usize) -> Vec<NodeOutline> {
    vec![
        outline("node-194", "cluster-01", 194, done_earlier),
        outline("node-195", "cluster-01", 195, done_earlier),
        outline("node-196", "cluster-01", 196, done_earlier),
        outline("edge-201", "edge-01", 201, done_earlier),
    ]
}

fn new_app(done_earlier: usize) -> App {
    let mut app = App::new(
        "20250101-0930",
        stages(),
        &outlines(done_earlier),
        PathBuf::from(".kubeboot/logs"),
    );
    app.color = false;
    app
}

fn finished(node: &str, stage: &str, task: &str, status: TaskStatus, reason: Option<SkipReason>) -> Event {
    Event::TaskFinished {
        node: node.into(),
        stage: stage.into(),
        task: task.into(),
        status,
        reason,
        fingerprint: "f".into(),
        inputs: Default::default(),
        exit_code: None,
        error: None,
        duration_ms: 1200,
    }
}

fn started(node: &str, stage: &str, task: &str, attempt: u32) -> Event {
    Event::TaskStarted {
        node: node.into(),
        stage: stage.into(),
        task: task.into(),
        index: 0,
        total: STAGES.len() * TASKS_PER_STAGE,
        attempt,
        why: None,
    }
}

fn output(node: &str, line: &str) -> Event {
    Event::Output {
        node: node.into(),
        stream: Stream::Stdout,
        line: line.into(),
    }
}

/// Starts the run and connects every node at fixed times.
fn start(app: &mut App, done_earlier: usize) {
    let _ = app.act(Action::Start, 10);
    app.apply(
        &Event::RunStarted {
            run_id: "20250101-0930".into(),
            stages: stages(),
            nodes: outlines(done_earlier),
            dry_run: false,
        },
        0,
    );
    for (i, node) in ["node-194", "node-195", "node-196", "edge-201"].iter().enumerate() {
        app.apply(
            &Event::NodeConnecting {
                node: node.to_string(),
                address: String::new(),
            },
            i as u64 * 100,
        );
        app.apply(
            &Event::NodeConnected {
                node: node.to_string(),
                facts: Facts::assumed(),
            },
            1500 + i as u64 * 100,
        );
    }
}

/// Finishes the node's first `count` tasks (ok or changed alternately), then starts the next one.
fn progress(app: &mut App, node: &str, count: usize, now_ms: u64) {
    let tasks: Vec<(String, String)> = STAGES
        .iter()
        .flat_map(|stage| (0..TASKS_PER_STAGE).map(move |i| (stage.to_string(), task_name(stage, i))))
        .collect();
    for (n, (stage, task)) in tasks.iter().take(count).enumerate() {
        app.apply(&started(node, stage, task, 1), now_ms);
        app.apply(&output(node, &format!("{task}: ok")), now_ms);
        let status = if n % 2 == 0 {
            TaskStatus::Changed
        } else {
            TaskStatus::Ok
        };
        app.apply(&finished(node, stage, task, status, None), now_ms);
    }
    if let Some((stage, task)) = tasks.get(count) {
        app.apply(&started(node, stage, task, 1), now_ms);
    }
}

fn fail_node_196(app: &mut App, now_ms: u64) {
    progress(app, "node-196", 6, now_ms);
    for line in [
        "Reading package lists...",
        "Building dependency tree...",
        "Reading state information...",
        "E: Unable to locate package containerd.io",
    ] {
        app.apply(&output("node-196", line), now_ms);
    }
    app.apply(
        &Event::TaskFinished {
            node: "node-196".into(),
            stage: "containerd".into(),
            task: "install containerd".into(),
            status: TaskStatus::Failed,
            reason: None,
            fingerprint: "f".into(),
            inputs: Default::default(),
            exit_code: Some(100),
            error: Some("command exited with status 100".into()),
            duration_ms: 4100,
        },
        now_ms,
    );
    app.apply(
        &Event::NodeFinished {
            node: "node-196".into(),
            status: NodeStatus::Failed,
            error: None,
            blocked_by: None,
            counts: Counts {
                ok: 3,
                changed: 3,
                skipped: 0,
                failed: 1,
            },
            duration_ms: 58_000,
        },
        now_ms,
    );
}

/// Four nodes mid-run: two running (one with streaming output), one failed, one still connecting-slow.
fn run_in_progress() -> App {
    let mut app = new_app(0);
    start(&mut app, 0);
    progress(&mut app, "node-194", 7, 60_000);
    for i in 1..=30 {
        app.apply(
            &output("node-194", &format!("Unpacking containerd.io (1.7.{i}) ...")),
            61_000,
        );
    }
    progress(&mut app, "node-195", 4, 62_000);
    fail_node_196(&mut app, 60_000);
    progress(&mut app, "edge-201", 1, 63_000);
    app.tick(125_000);
    app
}

fn render(app: &App, width: u16, height: u16) -> String {
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(terminal) => terminal,
        Err(never) => match never {},
    };
    let _ = terminal.draw(|frame| view::draw(frame, app));
    terminal.backend().to_string()
}

#[test]
fn confirmation_screen_lists_nodes_stages_and_task_counts() {
    let app = new_app(0);
    insta::assert_snapshot!("confirm_80x24", render(&app, 80, 24));
}

#[test]
fn confirmation_screen_says_what_a_resume_will_skip() {
    let app = new_app(7);
    insta::assert_snapshot!("confirm_resume_120x40", render(&app, 120, 40));
}

#[test]
fn running_screen_shows_four_nodes_in_progress_at_80x24() {
    let app = run_in_progress();
    insta::assert_snapshot!("running_80x24", render(&app, 80, 24));
}

#[test]
fn running_screen_uses_a_big_terminal_at_120x40() {
    let app = run_in_progress();
    insta::assert_snapshot!("running_120x40", render(&app, 120, 40));
}

#[test]
fn a_failed_node_shows_its_task_exit_code_and_last_lines_on_top_of_the_output() {
    let mut app = run_in_progress();
    let _ = app.act(Action::Down, 10);
    let _ = app.act(Action::Down, 10);
    assert_eq!(app.selected, 2);
    insta::assert_snapshot!("failed_node_80x24", render(&app, 80, 24));
    insta::assert_snapshot!("failed_node_120x40", render(&app, 120, 40));
}

#[test]
fn the_finished_summary_shows_counts_durations_and_log_files() {
    let mut app = run_in_progress();
    progress(&mut app, "node-194", 18, 150_000);
    progress(&mut app, "node-195", 18, 160_000);
    progress(&mut app, "edge-201", 18, 170_000);
    for (node, duration) in [("node-194", 148_000), ("node-195", 158_500), ("edge-201", 168_300)] {
        app.apply(
            &Event::NodeFinished {
                node: node.into(),
                status: NodeStatus::Ok,
                error: None,
                blocked_by: None,
                counts: Counts {
                    ok: 9,
                    changed: 9,
                    skipped: 0,
                    failed: 0,
                },
                duration_ms: duration,
            },
            170_000,
        );
    }
    app.apply(
        &Event::RunFinished {
            nodes_ok: 3,
            nodes_failed: 1,
            nodes_cancelled: 0,
            nodes_blocked: 0,
            counts: Counts {
                ok: 30,
                changed: 30,
                skipped: 0,
                failed: 1,
            },
            duration_ms: 170_500,
            interrupted: false,
        },
        170_500,
    );
    insta::assert_snapshot!("summary_80x24", render(&app, 80, 24));
    insta::assert_snapshot!("summary_text", view::summary_text(&app));
}

#[test]
fn the_summary_screen_and_the_printed_table_name_a_blocked_node_and_what_it_waits_for() {
    let mut app = run_in_progress();
    app.apply(
        &Event::NodeFinished {
            node: "edge-201".into(),
            status: NodeStatus::Blocked,
            error: None,
            blocked_by: Some("node-196".into()),
            counts: Counts::default(),
            duration_ms: 3_000,
        },
        126_000,
    );
    app.apply(
        &Event::RunFinished {
            nodes_ok: 0,
            nodes_failed: 1,
            nodes_cancelled: 0,
            nodes_blocked: 1,
            counts: Counts::default(),
            duration_ms: 126_000,
            interrupted: false,
        },
        126_000,
    );
    let screen = render(&app, 100, 30);
    let text = view::summary_text(&app);
    assert!(screen.contains("· 1 blocked"), "{screen}");
    assert!(screen.contains("edge-201: blocked by node-196"), "{screen}");
    assert!(
        screen
            .lines()
            .any(|l| l.contains("edge-201") && l.contains(" blocked ")),
        "{screen}"
    );
    assert!(text.contains("blocked: edge-201: blocked by node-196\n"), "{text}");
    assert!(text.contains(", 1 blocked\n"), "{text}");
}

#[test]
fn a_resumed_run_shows_earlier_tasks_as_skipped_done() {
    let mut app = new_app(7);
    start(&mut app, 7);
    let tasks: Vec<(String, String)> = STAGES
        .iter()
        .flat_map(|stage| (0..TASKS_PER_STAGE).map(move |i| (stage.to_string(), task_name(stage, i))))
        .collect();
    for node in ["node-194", "node-195", "node-196", "edge-201"] {
        for (stage, task) in tasks.iter().take(7) {
            app.apply(
                &finished(node, stage, task, TaskStatus::Skipped, Some(SkipReason::Done)),
                2_000,
            );
        }
        app.apply(&started(node, &tasks[7].0, &tasks[7].1, 1), 2_000);
    }
    app.apply(&output("node-194", "containerd config unchanged"), 2_500);
    app.tick(9_000);
    insta::assert_snapshot!("resumed_80x24", render(&app, 80, 24));
}

#[test]
fn the_help_overlay_lists_every_key() {
    let mut app = run_in_progress();
    let _ = app.act(Action::ToggleHelp, 10);
    insta::assert_snapshot!("help_80x24", render(&app, 80, 24));
}

#[test]
fn quitting_asks_first_and_says_progress_is_saved() {
    let mut app = run_in_progress();
    let _ = app.act(Action::AskQuit, 10);
    insta::assert_snapshot!("quit_dialog_80x24", render(&app, 80, 24));
}

#[test]
fn a_scrolled_output_pane_says_it_is_paused() {
    let mut app = run_in_progress();
    let _ = app.act(Action::ToggleFocus, 10);
    assert_eq!(app.focus, Focus::Output);
    let _ = app.act(Action::PageUp, 10);
    assert!(!app.follow);
    let screen = render(&app, 80, 24);
    assert!(screen.contains("paused"), "{screen}");
}

#[test]
fn sixty_four_nodes_keep_the_selection_visible() {
    let nodes: Vec<NodeOutline> = (0..64)
        .map(|i| outline(&format!("node-{i:02}"), "cluster-01", i as u8, 0))
        .collect();
    let mut app = App::new("r", stages(), &nodes, PathBuf::from("logs"));
    let _ = app.act(Action::Start, 10);
    for _ in 0..40 {
        let _ = app.act(Action::Down, 10);
    }
    let screen = render(&app, 80, 24);
    assert!(screen.contains("node-40"), "{screen}");
    assert!(screen.contains("41/64"), "{screen}");
}

/// Two unknown host keys (one accepted, one still undecided) and one that changed since known_hosts was written.
fn host_key_app() -> App {
    let mut app = new_app(0);
    app.set_host_keys(vec![
        HostKeyPrompt {
            node: "node-195".into(),
            fingerprint: "SHA256:rTpY0Zr1Cz8mQ2v3XnV8a7bCdEfGhIjKlMnOpQrStUv".into(),
            issue: HostKeyIssue::Unknown,
        },
        HostKeyPrompt {
            node: "node-196".into(),
            fingerprint: "SHA256:Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8Nn7Mm6Ll".into(),
            issue: HostKeyIssue::Unknown,
        },
        HostKeyPrompt {
            node: "edge-201".into(),
            fingerprint: "SHA256:Aa1Bb2Cc3Dd4Ee5Ff6Gg7Hh8Ii9Jj0Kk1Ll2Mm3Nn4Oo".into(),
            issue: HostKeyIssue::Changed {
                line: 4,
                path: "/root/.ssh/known_hosts".into(),
            },
        },
    ]);
    let _ = app.act(Action::AcceptHostKey, 10);
    let _ = app.act(Action::Down, 10);
    app
}

#[test]
fn confirmation_screen_shows_unknown_host_keys_with_fingerprints_and_decisions() {
    let app = host_key_app();
    insta::assert_snapshot!("confirm_host_keys_80x24", render(&app, 80, 24));
    insta::assert_snapshot!("confirm_host_keys_120x40", render(&app, 120, 40));
}

#[test]
fn a_changed_host_key_is_a_hard_error_on_the_confirmation_screen() {
    let mut app = host_key_app();
    let _ = app.act(Action::Down, 10);
    let _ = app.act(Action::AcceptHostKey, 10);
    let screen = render(&app, 120, 40);
    assert!(screen.contains("CHANGED"), "{screen}");
    assert!(
        screen.contains("not acceptable: line 4 of /root/.ssh/known_hosts"),
        "{screen}"
    );
    assert!(!app.accepted_host_keys().contains("edge-201"));
}

#[test]
fn the_first_screen_says_it_is_checking_host_keys_and_shows_each_answer_as_it_comes() {
    let mut app = new_app(0);
    app.start_host_key_check(vec![
        "node-194".into(),
        "node-195".into(),
        "node-196".into(),
        "edge-201".into(),
    ]);
    app.host_key_answered("node-194", HostKeyAnswer::Known);
    app.host_key_answered(
        "node-196",
        HostKeyAnswer::Found(HostKeyPrompt {
            node: "node-196".into(),
            fingerprint: "SHA256:Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8Nn7Mm6Ll".into(),
            issue: HostKeyIssue::Unknown,
        }),
    );
    insta::assert_snapshot!("confirm_checking_host_keys_80x24", render(&app, 80, 24));
    // Nothing starts before every node has answered.
    assert_eq!(app.act(Action::Start, 10), None);
    assert!(app.checking_host_keys());

    app.host_key_answered("edge-201", HostKeyAnswer::NoAnswer);
    app.host_key_answered(
        "node-195",
        HostKeyAnswer::Found(HostKeyPrompt {
            node: "node-195".into(),
            fingerprint: "SHA256:rTpY0Zr1Cz8mQ2v3XnV8a7bCdEfGhIjKlMnOpQrStUv".into(),
            issue: HostKeyIssue::Unknown,
        }),
    );
    // The last answer ends the look: the keys to decide on, in node order.
    assert!(!app.checking_host_keys());
    let keys: Vec<&str> = app.host_keys.iter().map(|k| k.prompt.node.as_str()).collect();
    assert_eq!(keys, ["node-195", "node-196"]);
    let screen = render(&app, 80, 24);
    assert!(screen.contains("2 waiting for a decision"), "{screen}");
    assert!(app.act(Action::Start, 10).is_some());
}

/// The shipped install's 18 stages, one task each, on two nodes: the first nine done, the tenth running.
fn eighteen_stages() -> App {
    let stages: Vec<String> = (0..18).map(|i| format!("stage-{:02}", i * 5)).collect();
    let outline = |node: &str, host: u8| NodeOutline {
        node: node.to_string(),
        cluster: Some("cluster-01".to_string()),
        address: format!("192.168.101.{host}:22"),
        tasks: stages
            .iter()
            .map(|s| TaskOutline {
                stage: s.clone(),
                task: "step".to_string(),
                skip: None,
            })
            .collect(),
    };
    let nodes = vec![outline("node-194", 194), outline("node-195", 195)];
    let mut app = App::new("20250101-0930", stages.clone(), &nodes, PathBuf::from(".kubeboot/logs"));
    app.color = false;
    app
}

#[test]
fn the_stage_matrix_numbers_stages_ten_and_up_with_two_digits_at_80x24() {
    let mut app = eighteen_stages();
    let _ = app.act(Action::Start, 10);
    let stages = app.run.stages.clone();
    for node in ["node-194", "node-195"] {
        for stage in &stages[..9] {
            app.apply(&started(node, stage, "step", 1), 100);
            app.apply(&finished(node, stage, "step", TaskStatus::Ok, None), 200);
        }
        app.apply(&started(node, &stages[9], "step", 1), 300);
    }
    let screen = render(&app, 80, 24);
    // The tens digits stand on the border above the units digits: `1` over `0` is stage 10.
    let lines: Vec<&str> = screen.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8"))
        .unwrap_or_else(|| panic!("no stage numbers in the matrix header:\n{screen}"));
    assert!(
        lines[at - 1].contains("1─1─1─1─1─1─1─1─1"),
        "tens digits above 10-18:\n{screen}"
    );
    insta::assert_snapshot!("matrix_18_stages_80x24", screen);
}

#[test]
fn the_confirmation_screen_says_how_many_stages_do_not_fit_at_80x24() {
    let app = eighteen_stages();
    let screen = render(&app, 80, 24);
    assert!(
        screen.contains(" more"),
        "the stages that do not fit are counted:\n{screen}"
    );
    insta::assert_snapshot!("confirm_18_stages_80x24", screen);
}
