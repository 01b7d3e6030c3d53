//! Frame time of the running screen: 64 nodes, 100,000 buffered output lines in total, drawn into ratatui's
//! `TestBackend` again and again. Prints mean and median; the goal is under 5 ms a frame.
//!
//! Run: `cargo bench --bench tui`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubeboot::event::{Event, NodeOutline, Stream, TaskOutline, TaskStatus};
use kubeboot::ui::tui::keys::Action;
use kubeboot::ui::tui::state::App;
use kubeboot::ui::tui::view;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const NODES: usize = 64;
const LINES: usize = 100_000;
const STAGES: [&str; 8] = [
    "preflight",
    "os-prep",
    "containerd",
    "kubeadm",
    "join",
    "cni",
    "storage",
    "addons",
];
const FRAMES: usize = 300;

fn build() -> App {
    let stages: Vec<String> = STAGES.iter().map(|s| s.to_string()).collect();
    let nodes: Vec<NodeOutline> = (0..NODES)
        .map(|n| NodeOutline {
            node: format!("node-{n:03}"),
            cluster: Some(format!("cluster-{:02}", n / 16)),
            address: format!("127.0.0.{}:22", n + 1),
            tasks: STAGES
                .iter()
                .flat_map(|s| {
                    (0..5).map(move |t| TaskOutline {
                        stage: s.to_string(),
                        task: format!("task {t}"),
                        skip: None,
                    })
                })
                .collect(),
        })
        .collect();
    let mut app = App::new("bench", stages, &nodes, PathBuf::from(".kubeboot/logs"));
    let _ = app.act(Action::Start, 10);
    for (n, node) in nodes.iter().enumerate() {
        let finished = n % 40;
        for task in node.tasks.iter().take(finished) {
            app.apply(
                &Event::TaskFinished {
                    node: node.node.clone(),
                    stage: task.stage.clone(),
                    task: task.task.clone(),
                    status: TaskStatus::Changed,
                    reason: None,
                    fingerprint: String::new(),
                    inputs: Default::default(),
                    exit_code: Some(0),
                    error: None,
                    duration_ms: 10,
                },
                1_000,
            );
        }
        if let Some(task) = node.tasks.get(finished) {
            app.apply(
                &Event::TaskStarted {
                    node: node.node.clone(),
                    stage: task.stage.clone(),
                    task: task.task.clone(),
                    index: finished,
                    total: node.tasks.len(),
                    attempt: 1,
                    why: None,
                },
                1_000,
            );
        }
    }
    for i in 0..LINES {
        let node = format!("node-{:03}", i % NODES);
        let line = format!("Setting up package-{i} (1.{i}.0-1) ... \u{1b}[32mdone\u{1b}[0m");
        app.apply(
            &Event::Output {
                node,
                stream: Stream::Stdout,
                line,
            },
            2_000,
        );
    }
    app.tick(95_000);
    app
}

fn measure(app: &mut App, width: u16, height: u16) -> (Duration, Duration) {
    let Ok(mut terminal) = Terminal::new(TestBackend::new(width, height));
    let mut times = Vec::with_capacity(FRAMES);
    for frame in 0..FRAMES {
        // Move the selection and the clock so every frame has something new to draw, as a live run would.
        let _ = app.act(if frame % 2 == 0 { Action::Down } else { Action::Up }, 10);
        app.tick(95_000 + frame as u64 * 66);
        let start = Instant::now();
        let _ = terminal.draw(|f| view::draw(f, app));
        times.push(start.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / FRAMES as u32;
    (mean, times[FRAMES / 2])
}

fn main() {
    let start = Instant::now();
    let mut app = build();
    let lines: usize = app.panes.iter().map(|p| p.output.len()).sum();
    println!("built {NODES} nodes, {lines} buffered lines in {:?}", start.elapsed());
    for (width, height) in [(80, 24), (120, 40), (200, 60)] {
        let (mean, median) = measure(&mut app, width, height);
        println!("tui frame {width}x{height}: mean {mean:?}, median {median:?} over {FRAMES} frames (goal < 5ms)");
    }
}
