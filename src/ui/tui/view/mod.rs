//! Drawing: a pure function of the [`App`] model. Nothing here reads the clock, the environment or the terminal,
//! so every screen is tested by drawing into ratatui's `TestBackend`.
//!
//! One file per screen: [`confirm`] (before the run), [`running`] (the live run: node list, stage matrix,
//! output), [`summary`] (after the run). This file holds what they share: the theme, the symbols, the small text
//! helpers and the overlays (help, quit dialog).

mod confirm;
mod running;
mod summary;

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::keys::HELP;
use super::state::{App, NodeState, Screen, StageCell};
use crate::ui::summary::NodeResult;

use confirm::draw_confirm;
use running::draw_running;
pub use running::{Regions, list_offset, output_page, regions};
use summary::{draw_summary, result_state};
pub use summary::{summary, summary_text};

/// Styles, all plain when colours are off (`NO_COLOR`): modifiers like bold and reverse still apply.
#[derive(Clone, Copy)]
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(self, color: Color) -> Style {
        if self.color {
            Style::new().fg(color)
        } else {
            Style::new()
        }
    }

    fn bold(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    fn dim(self) -> Style {
        if self.color {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new()
        }
    }

    fn node_state(self, state: NodeState) -> Style {
        match state {
            NodeState::Waiting => self.dim(),
            NodeState::Connecting | NodeState::Running => self.fg(Color::Cyan),
            NodeState::Done => self.fg(Color::Green),
            NodeState::Failed => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            NodeState::Cancelled => self.fg(Color::Yellow),
            NodeState::WaitingOnOthers => self.fg(Color::Magenta),
            NodeState::Blocked => self.fg(Color::Red),
        }
    }

    fn result(self, result: NodeResult) -> Style {
        self.node_state(result_state(result))
    }

    fn cell(self, cell: StageCell) -> Style {
        match cell {
            StageCell::NotApplicable | StageCell::Pending => self.dim(),
            StageCell::Running => self.fg(Color::Cyan),
            StageCell::Done => self.fg(Color::Green),
            StageCell::Skipped => self.fg(Color::Blue),
            StageCell::Failed => self.fg(Color::Red).add_modifier(Modifier::BOLD),
        }
    }

    fn border(self, focused: bool) -> Style {
        match (focused, self.color) {
            (true, true) => Style::new().fg(Color::Cyan),
            (true, false) => Style::new().add_modifier(Modifier::BOLD),
            (false, _) => self.dim(),
        }
    }
}

/// The symbol of a node's state in the node list.
pub fn node_symbol(state: NodeState) -> &'static str {
    match state {
        NodeState::Waiting => "·",
        NodeState::Connecting => "…",
        NodeState::Running => "▶",
        NodeState::Done => "✓",
        NodeState::Failed => "✗",
        NodeState::Cancelled => "■",
        NodeState::WaitingOnOthers => "⏸",
        NodeState::Blocked => "⊘",
    }
}

/// The symbol of a stage matrix cell.
pub fn cell_symbol(cell: StageCell) -> &'static str {
    match cell {
        StageCell::NotApplicable => " ",
        StageCell::Pending => "·",
        StageCell::Running => "▶",
        StageCell::Done => "✓",
        StageCell::Skipped => "↷",
        StageCell::Failed => "✗",
    }
}

/// Draws the whole screen for the model.
pub fn draw(frame: &mut Frame, app: &App) {
    let theme = Theme { color: app.color };
    let area = frame.area();
    match app.screen {
        Screen::Confirm => draw_confirm(frame, area, app, theme),
        Screen::Running => draw_running(frame, area, app, theme),
        Screen::Summary => draw_summary(frame, area, app, theme),
    }
    if app.quit_confirm {
        draw_quit_dialog(frame, area, theme);
    }
    if app.help {
        draw_help(frame, area, theme);
    }
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
    let mut bar = "█".repeat(filled);
    bar.push_str(&"░".repeat(width - filled));
    bar
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Keeps the end of `text` (the file name of a long path), marking the cut with `…`.
fn truncate_left(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    let mut out = String::from("…");
    out.extend(text.chars().skip(count + 1 - width.max(1)));
    out
}

fn footer<'a>(hints: &[(&'a str, &'a str)], theme: Theme) -> Paragraph<'a> {
    let mut spans = vec![Span::raw(" ")];
    for (key, what) in hints {
        spans.push(Span::styled(*key, theme.bold()));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Paragraph::new(Line::from(spans))
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    )
}

fn draw_help(frame: &mut Frame, area: Rect, theme: Theme) {
    let key_width = HELP.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!(" {key:<key_width$}  "), theme.bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        " matrix: · pending  ▶ running  ✓ done  ↷ skipped  ✗ failed",
        theme.dim(),
    ));
    let width = lines.iter().map(Line::width).max().unwrap_or(0) as u16 + 3;
    let popup = centered(area, width, lines.len() as u16 + 2);
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" keys · ? or Esc closes ")
        .border_style(theme.border(true));
    frame.render_widget(Paragraph::new(lines).block(block), popup);
}

fn draw_quit_dialog(frame: &mut Frame, area: Rect, theme: Theme) {
    let lines = vec![
        Line::styled("Quit? Progress is saved.", theme.bold()),
        Line::raw("Running tasks are cancelled; the next"),
        Line::raw("`kubeboot apply` continues from here."),
        Line::raw(""),
        Line::from(vec![
            Span::styled("y", theme.bold()),
            Span::raw(" quit   "),
            Span::styled("n", theme.bold()),
            Span::raw(" keep running"),
        ]),
    ];
    let popup = centered(area, 44, 7);
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(" quit ").border_style(theme.border(true));
    frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), popup);
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}
