//! Input → actions. Which key means what depends only on the screen and open dialogs, so this is a pure mapping;
//! what an action does lives in [`App::act`](super::state::App::act).

use crossterm::event::{Event as InputEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind};

use crate::event::Control;

use super::state::{App, Screen};

/// Lines one mouse-wheel notch scrolls.
pub const WHEEL_LINES: usize = 3;

/// Something the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Confirmation screen: start the run.
    Start,
    /// Confirmation screen: leave without running.
    Decline,
    /// Confirmation screen: accept the selected unknown host key.
    AcceptHostKey,
    /// Confirmation screen: refuse the selected host key.
    RefuseHostKey,
    /// Previous node (list focus) or one line up (output focus).
    Up,
    /// Next node (list focus) or one line down (output focus).
    Down,
    /// Switch the focus between the node list and the output pane.
    ToggleFocus,
    /// Scroll the output up by lines.
    ScrollUp(usize),
    /// Scroll the output down by lines.
    ScrollDown(usize),
    /// Scroll the output up a page.
    PageUp,
    /// Scroll the output down a page.
    PageDown,
    /// Jump to the oldest kept line.
    Home,
    /// Jump to the newest line and follow.
    End,
    /// Toggle auto-follow of new output.
    ToggleFollow,
    /// Retry the selected failed node.
    Retry,
    /// Ask "quit?" (or leave a finished run's view).
    AskQuit,
    /// Answer yes to "quit?".
    ConfirmQuit,
    /// Close the open dialog or overlay.
    Dismiss,
    /// Ctrl-C: quit without asking.
    Interrupt,
    /// Open or close the key help.
    ToggleHelp,
    /// Leave the summary screen.
    Leave,
    /// From the summary, look at the run's view again.
    ShowRun,
}

/// What the main loop must do after an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Answer the confirmation: start (true) or not.
    Go(bool),
    /// Send this to the engine.
    Control(Control),
    /// Leave the TUI now.
    Exit,
}

/// Maps one terminal input event to an action for the current state of `app`.
pub fn action_for(input: &InputEvent, app: &App) -> Option<Action> {
    match input {
        InputEvent::Key(key) => key_action(key, app),
        InputEvent::Mouse(mouse) if app.screen == Screen::Running && !app.help => match mouse.kind {
            MouseEventKind::ScrollUp => Some(Action::ScrollUp(WHEEL_LINES)),
            MouseEventKind::ScrollDown => Some(Action::ScrollDown(WHEEL_LINES)),
            _ => None,
        },
        _ => None,
    }
}

fn key_action(key: &KeyEvent, app: &App) -> Option<Action> {
    // Some terminals report releases too (kitty protocol); act on presses and repeats only.
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C')) {
        return Some(Action::Interrupt);
    }
    if app.help {
        return match key.code {
            KeyCode::Char('?') | KeyCode::Esc | KeyCode::Char('q') | KeyCode::Enter => Some(Action::Dismiss),
            _ => None,
        };
    }
    if app.quit_confirm {
        return match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => Some(Action::ConfirmQuit),
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => Some(Action::Dismiss),
            _ => None,
        };
    }
    match app.screen {
        Screen::Confirm => match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => Some(Action::Start),
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Char('q') | KeyCode::Esc => Some(Action::Decline),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            KeyCode::Up | KeyCode::Char('k') if !app.host_keys.is_empty() => Some(Action::Up),
            KeyCode::Down | KeyCode::Char('j') if !app.host_keys.is_empty() => Some(Action::Down),
            KeyCode::Char('a') if !app.host_keys.is_empty() => Some(Action::AcceptHostKey),
            KeyCode::Char('x') if !app.host_keys.is_empty() => Some(Action::RefuseHostKey),
            _ => None,
        },
        Screen::Summary => match key.code {
            KeyCode::Char('q') | KeyCode::Enter | KeyCode::Esc => Some(Action::Leave),
            KeyCode::Tab | KeyCode::Char('o') => Some(Action::ShowRun),
            KeyCode::Up | KeyCode::Char('k') => Some(Action::Up),
            KeyCode::Down | KeyCode::Char('j') => Some(Action::Down),
            KeyCode::Char('r') => Some(Action::Retry),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            _ => None,
        },
        Screen::Running => match key.code {
            KeyCode::Up | KeyCode::Char('k') => Some(Action::Up),
            KeyCode::Down | KeyCode::Char('j') => Some(Action::Down),
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Enter => Some(Action::ToggleFocus),
            KeyCode::PageUp => Some(Action::PageUp),
            KeyCode::PageDown | KeyCode::Char(' ') => Some(Action::PageDown),
            KeyCode::Home | KeyCode::Char('g') => Some(Action::Home),
            KeyCode::End | KeyCode::Char('G') => Some(Action::End),
            KeyCode::Char('f') => Some(Action::ToggleFollow),
            KeyCode::Char('r') => Some(Action::Retry),
            KeyCode::Char('q') | KeyCode::Esc => Some(Action::AskQuit),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            _ => None,
        },
    }
}

/// Every key with what it does, for the help overlay and the operators' guide.
pub const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "select node (list) / scroll a line (output)"),
    ("Tab  Enter", "switch focus: node list ↔ output"),
    ("PgUp PgDn", "scroll the output a page"),
    ("Home End", "oldest kept line / newest line"),
    ("mouse wheel", "scroll the output"),
    ("f", "follow new output on/off"),
    ("r", "retry the selected failed node"),
    ("q  Esc", "quit (asks; progress is saved)"),
    ("Ctrl-C", "quit now (cancels running tasks)"),
    ("?", "this help"),
];
