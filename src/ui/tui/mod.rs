//! The operator's terminal UI: a confirmation screen, the live run, and a summary.
//!
//! It is a frontend over [`Event`]s only. [`state`] folds events and keys into a view model, [`view`] draws
//! that model (pure), [`keys`] maps input to actions. This module owns the terminal and the loop: at a fixed
//! frame rate it drains every pending event into the model and draws once.

pub mod keys;
pub mod state;
pub mod view;

use std::collections::HashSet;
use std::io::{self, Stdout};
use std::path::PathBuf;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::event::{DisableMouseCapture, EnableMouseCapture, EventStream};
use crossterm::execute;
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use futures::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use crate::event::{Control, HostKeyAnswer, HostKeyPrompt};
use crate::event::{Event, NodeOutline};

use keys::{Action, Effect};
use state::App;

/// Time between frames (about 15 per second).
const FRAME: Duration = Duration::from_millis(66);
/// Events folded in per frame at most, so a flood of output cannot starve drawing and keys.
const MAX_EVENTS_PER_FRAME: usize = 200_000;

/// The host key look that runs while the confirmation screen shows: the nodes asked, and each answer as it comes.
#[derive(Debug)]
pub struct HostKeyProbes {
    /// The nodes whose keys are looked at, in node order.
    pub nodes: Vec<String>,
    /// `(node, answer)` as each node answers; closed when all have (a node missing then did not answer).
    pub answers: mpsc::UnboundedReceiver<(String, HostKeyAnswer)>,
}

/// What the TUI needs before the run: the plan as the confirmation screen shows it.
#[derive(Debug)]
pub struct TuiSetup {
    /// Stage names in order.
    pub stages: Vec<String>,
    /// Each selected node's plan.
    pub nodes: Vec<NodeOutline>,
    /// Where the per-node log files are written (`<log_dir>/<node>.log`).
    pub log_dir: PathBuf,
    /// The run's id.
    pub run_id: String,
    /// Host keys found unknown (or changed) before the run, for the operator to decide on.
    pub host_keys: Vec<HostKeyPrompt>,
    /// The host key look still running: the screen shows its progress and adds what it finds.
    pub probes: Option<HostKeyProbes>,
}

/// The operator's answer on the confirmation screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Start the run, recording the unknown host keys of these nodes (accepted on the screen).
    Start { accept_host_keys_for: HashSet<String> },
    /// Leave without running anything.
    Decline,
}

/// How the TUI ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuiOutcome {
    /// The operator confirmed and the run was started.
    pub started: bool,
    /// The operator quit (cancelled) before the run finished by itself.
    pub quit_early: bool,
    /// A printable per-node summary table (empty when the run never started).
    pub summary: String,
}

/// Takes over the terminal: confirmation screen from `setup` (with host key decisions); on `y`/Enter sends
/// [`Answer::Start`] on `go` (the caller then starts the engine, whose events arrive on `events`); `n`/`q` sends
/// [`Answer::Decline`] and returns. While running, keys send
/// `Control::Retry{node}` / `Control::Cancel` on `control`. Returns when the run finished and the operator left the
/// summary screen (or quit). The terminal is always restored (normal return, error, panic, Ctrl-C).
pub async fn run(
    setup: TuiSetup,
    go: oneshot::Sender<Answer>,
    mut events: mpsc::UnboundedReceiver<Event>,
    control: mpsc::UnboundedSender<Control>,
) -> io::Result<TuiOutcome> {
    let mut app = App::new(&setup.run_id, setup.stages, &setup.nodes, setup.log_dir);
    app.set_host_keys(setup.host_keys);
    let mut answers = setup.probes.map(|p| {
        app.start_host_key_check(p.nodes);
        p.answers
    });
    app.color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut started = false;
    let result = {
        let mut session = TerminalSession::enter()?;
        let channels = Channels {
            events: &mut events,
            answers: &mut answers,
            control: &control,
        };
        run_loop(&mut session.terminal, &mut app, go, channels, &mut started).await
    };
    if result.is_err() && started && !app.run_over() {
        // The screen is gone but the engine is not: stop it so progress is recorded and the lock released.
        let _ = control.send(Control::Cancel);
    }
    result?;
    Ok(TuiOutcome {
        started,
        quit_early: started && app.cancelling,
        summary: if started {
            view::summary_text(&app)
        } else {
            String::new()
        },
    })
}

/// What the loop reads from and writes to besides the terminal.
struct Channels<'a> {
    events: &'a mut mpsc::UnboundedReceiver<Event>,
    answers: &'a mut Option<mpsc::UnboundedReceiver<(String, HostKeyAnswer)>>,
    control: &'a mpsc::UnboundedSender<Control>,
}

async fn run_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    go: oneshot::Sender<Answer>,
    channels: Channels<'_>,
    started: &mut bool,
) -> io::Result<()> {
    let Channels {
        events,
        answers,
        control,
    } = channels;
    let clock = Instant::now();
    let now = || u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut go = Some(go);
    let mut input = EventStream::new();
    let mut frames = tokio::time::interval(FRAME);
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Raw mode turns Ctrl-C into a key; these cover `kill` and a closed terminal.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    loop {
        let action = tokio::select! {
            _ = frames.tick() => {
                take_answers(app, answers);
                if *started && !app.run.events_closed {
                    drain(app, events, now());
                }
                app.tick(now());
                if app.should_exit() {
                    return Ok(());
                }
                terminal.draw(|frame| view::draw(frame, app))?;
                None
            }
            input = input.next() => match input {
                Some(Ok(input)) => keys::action_for(&input, app),
                Some(Err(error)) => return Err(error),
                None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "terminal input closed")),
            },
            _ = sigint.recv() => Some(Action::Interrupt),
            _ = sigterm.recv() => Some(Action::Interrupt),
            _ = sighup.recv() => Some(Action::Interrupt),
        };
        let Some(action) = action else { continue };
        let size = terminal.size()?;
        let page = view::output_page(Rect::new(0, 0, size.width, size.height), app);
        match app.act(action, page) {
            Some(Effect::Go(yes)) => {
                if let Some(go) = go.take() {
                    let answer = if yes {
                        Answer::Start {
                            accept_host_keys_for: app.accepted_host_keys(),
                        }
                    } else {
                        Answer::Decline
                    };
                    // A dropped receiver means the caller gave up; there is nothing to start then.
                    *started = yes && go.send(answer).is_ok();
                }
                if !*started {
                    return Ok(());
                }
            }
            Some(Effect::Control(message)) => {
                // The engine may already be gone (run over); then there is nothing to control.
                let _ = control.send(message);
            }
            Some(Effect::Exit) => return Ok(()),
            None => {}
        }
        if app.should_exit() {
            return Ok(());
        }
    }
}

/// Folds the host key answers that came in into the model; when the look is over, ends it there.
fn take_answers(app: &mut App, answers: &mut Option<mpsc::UnboundedReceiver<(String, HostKeyAnswer)>>) {
    let Some(rx) = answers else { return };
    loop {
        match rx.try_recv() {
            Ok((node, answer)) => app.host_key_answered(&node, answer),
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => {
                app.finish_host_key_check();
                *answers = None;
                return;
            }
        }
    }
}

/// Folds every pending event into the model (up to a cap per frame).
fn drain(app: &mut App, events: &mut mpsc::UnboundedReceiver<Event>, now_ms: u64) {
    for _ in 0..MAX_EVENTS_PER_FRAME {
        match events.try_recv() {
            Ok(event) => app.apply(&event, now_ms),
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => {
                app.close_events(now_ms);
                return;
            }
        }
    }
}

/// True while the TUI owns the terminal, so the panic hook knows whether to restore it.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Raw mode + alternate screen + mouse capture for as long as it lives; restored on drop and on panic.
struct TerminalSession {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalSession {
    fn enter() -> io::Result<Self> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let session = execute!(io::stdout(), EnterAlternateScreen, EnableMouseCapture)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())))
            .map(|terminal| TerminalSession { terminal });
        if session.is_err() {
            restore_terminal();
        }
        session
    }
}

impl Drop for TerminalSession {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Gives the terminal back as it was; does nothing when the TUI does not own it.
fn restore_terminal() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(
            io::stdout(),
            DisableMouseCapture,
            LeaveAlternateScreen,
            crossterm::cursor::Show
        );
    }
}
