//! Drawing: a pure function of the [`App`] model. Nothing here reads the clock, the environment or the terminal,
//! so every screen is tested by drawing into ratatui's `TestBackend`.

use std::fmt::Write as _;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table, Wrap};

use super::keys::HELP;
use super::state::{
    App, FAILURE_TAIL, Focus, HostKeyAnswer, HostKeyCheck, HostKeyDecision, HostKeyIssue, LineKind, NodeState,
    NodeView, Screen, StageCell,
};
use crate::ui::summary::{self, NodeResult, Summary};

/// Width of the text progress bars in the node list.
const BAR_WIDTH: usize = 6;

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

/// Where the running screen's regions go in `area`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    /// Title, elapsed time, node tallies and the task gauge.
    pub header: Rect,
    /// The node list.
    pub list: Rect,
    /// The stage matrix (empty when there are no stages).
    pub matrix: Rect,
    /// The selected node's output.
    pub output: Rect,
    /// Key hints.
    pub footer: Rect,
}

/// Lays the running screen out: the node list gets at most about half the height, the output the rest.
pub fn regions(area: Rect, app: &App) -> Regions {
    let body = area.height.saturating_sub(3);
    let wanted = app.nodes.len() as u16 + 3;
    let list_height = wanted.min((body * 11 / 20).max(5)).min(body);
    let [header, middle, output, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(list_height),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let matrix_width = matrix_width(middle.width, app);
    let [list, matrix] = Layout::horizontal([Constraint::Fill(1), Constraint::Length(matrix_width)]).areas(middle);
    Regions {
        header,
        list,
        matrix,
        output,
        footer,
    }
}

/// Width of one stage column in the matrix for a terminal `width` wide.
fn stage_column_width(width: u16, app: &App) -> u16 {
    let stages = app.stages.len() as u16;
    if stages == 0 {
        return 0;
    }
    if width < 100 {
        // On a small terminal the node list's stage/task text matters more than stage names: one symbol a stage.
        return 2;
    }
    let longest = app.stages.iter().map(|s| s.chars().count()).max().unwrap_or(0) as u16;
    let budget = (width * 2 / 5).saturating_sub(2) / stages;
    (longest + 1).min(12).min(budget).max(2)
}

fn matrix_width(width: u16, app: &App) -> u16 {
    if app.stages.is_empty() {
        return 0;
    }
    // At least wide enough for its " stages " title.
    (stage_column_width(width, app) * app.stages.len() as u16 + 2)
        .max(10)
        .min(width / 2)
}

/// First node row shown in a list `rows` high so the selection stays visible.
pub fn list_offset(selected: usize, rows: usize) -> usize {
    if rows == 0 || selected < rows {
        0
    } else {
        selected + 1 - rows
    }
}

/// Lines the failure report takes at the top of an output pane `inner_height` high.
fn failure_height(node: &NodeView, inner_height: u16) -> u16 {
    let Some(failure) = &node.failure else { return 0 };
    if node.state != NodeState::Failed {
        return 0;
    }
    let budget = (inner_height / 2).saturating_sub(3) as usize;
    let tail = failure.last_lines.len().min(budget).min(FAILURE_TAIL);
    let error = usize::from(failure.error.is_some());
    (1 + error + tail + 1) as u16
}

/// Lines of scrolling output visible on a terminal of `area` (what PgUp/PgDn move by).
pub fn output_page(area: Rect, app: &App) -> usize {
    let inner = regions(area, app).output.height.saturating_sub(2);
    let failure = app.selected_node().map_or(0, |n| failure_height(n, inner));
    inner.saturating_sub(failure) as usize
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

fn draw_running(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let r = regions(area, app);
    draw_header(frame, r.header, app, theme);
    draw_node_list(frame, r.list, app, theme);
    draw_matrix(frame, r.matrix, app, theme);
    draw_output(frame, r.output, app, theme);
    let last = if app.run_over() { "summary" } else { "quit" };
    let hints = [
        ("↑↓", "node"),
        ("Tab", "focus"),
        ("PgUp/PgDn", "scroll"),
        ("f", "follow"),
        ("r", "retry"),
        ("q", last),
        ("?", "help"),
    ];
    frame.render_widget(footer(&hints, theme), r.footer);
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let tally = app.node_tally();
    let mut spans = vec![
        Span::styled(" kubeboot", theme.bold()),
        Span::raw(format!(
            " · run {} · ⏱ {} · nodes: ",
            app.run_id,
            summary::duration(app.elapsed_ms())
        )),
        Span::styled(format!("{} running", tally.running), theme.fg(Color::Cyan)),
        Span::raw(", "),
        Span::styled(format!("{} done", tally.done), theme.fg(Color::Green)),
        Span::raw(", "),
        Span::styled(format!("{} failed", tally.failed), theme.node_state(NodeState::Failed)),
    ];
    if tally.waiting > 0 {
        spans.push(Span::raw(format!(", {} waiting", tally.waiting)));
    }
    if tally.cancelled > 0 {
        spans.push(Span::raw(format!(", {} cancelled", tally.cancelled)));
    }
    if app.dry_run {
        spans.push(Span::styled(
            " · DRY RUN",
            theme.fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    if app.cancelling && !app.run_over() {
        spans.push(Span::styled(
            " · cancelling…",
            theme.fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    let (done, total) = app.task_progress();
    let percent = (done * 100).checked_div(total).unwrap_or(0);
    let label = format!(" {done}/{total} tasks ({percent}%)");
    let width = (area.width as usize).saturating_sub(label.chars().count() + 8);
    let gauge = Line::from(vec![
        Span::raw(" tasks "),
        Span::styled(bar(done, total, width), theme.fg(Color::Green)),
        Span::raw(label),
    ]);
    frame.render_widget(Paragraph::new(vec![Line::from(spans), gauge]), area);
}

fn node_activity(node: &NodeView) -> String {
    if node.retry_requested {
        return "retry requested…".to_string();
    }
    match node.state {
        NodeState::Waiting => "waiting".to_string(),
        NodeState::Connecting => "connecting…".to_string(),
        NodeState::Running => match node.current_task() {
            Some(task) => {
                let mut text = format!("{} / {}", task.stage, task.name);
                if node.attempt > 1 {
                    let _ = write!(text, " (try {})", node.attempt);
                }
                if node.retrying.is_some() {
                    text.insert_str(0, "↻ ");
                }
                text
            }
            None => "running".to_string(),
        },
        NodeState::Done => "done".to_string(),
        NodeState::Failed => match node
            .failure
            .as_ref()
            .and_then(|f| f.stage.as_ref().zip(f.task.as_ref()))
        {
            Some((stage, task)) => format!("failed: {stage} / {task}"),
            None => "failed".to_string(),
        },
        NodeState::Cancelled => "cancelled".to_string(),
        NodeState::WaitingOnOthers => format!("waiting for {}", node.waiting_on.as_deref().unwrap_or("other nodes")),
        NodeState::Blocked => format!("blocked by {}", node.blocked_by.as_deref().unwrap_or("another node")),
    }
}

fn selection_style(app: &App, theme: Theme) -> Style {
    match app.focus {
        Focus::List => Style::new().add_modifier(Modifier::REVERSED),
        Focus::Output => theme.bold().add_modifier(Modifier::UNDERLINED),
    }
}

fn draw_node_list(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let rows_visible = area.height.saturating_sub(3) as usize;
    let offset = list_offset(app.selected, rows_visible);
    let name_width = app
        .nodes
        .iter()
        .map(|n| n.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 18) as u16;
    let cluster_width = app
        .nodes
        .iter()
        .filter_map(|n| n.cluster.as_ref().map(|c| c.chars().count()))
        .max()
        .unwrap_or(0)
        .min(14) as u16;
    let most = app.nodes.iter().map(NodeView::tasks_total).max().unwrap_or(0);
    let digits = most.to_string().len() as u16;
    let progress_width = BAR_WIDTH as u16 + 2 + digits * 2;
    // The cluster column goes first when space is short: the stage/task is what the operator watches.
    let fixed = 1 + name_width + progress_width + 6 + 5;
    let show_cluster = cluster_width > 0 && area.width.saturating_sub(2) >= fixed + cluster_width + 1 + 24;
    let mut widths = vec![Constraint::Length(1), Constraint::Length(name_width)];
    if show_cluster {
        widths.push(Constraint::Length(cluster_width));
    }
    widths.extend([
        Constraint::Fill(1),
        Constraint::Length(progress_width),
        Constraint::Length(6),
    ]);

    let mut header = vec!["", "node"];
    if show_cluster {
        header.push("cluster");
    }
    header.extend(["stage / task", "tasks", "time"]);

    let rows = app
        .nodes
        .iter()
        .enumerate()
        .skip(offset)
        .take(rows_visible)
        .map(|(i, node)| {
            let done = node.tasks_done() + node.tasks_failed();
            let total = node.tasks_total();
            let mut cells = vec![
                Span::styled(node_symbol(node.state), theme.node_state(node.state)),
                Span::raw(node.name.clone()),
            ];
            if show_cluster {
                cells.push(Span::styled(node.cluster.clone().unwrap_or_default(), theme.dim()));
            }
            let activity_style = if node.state == NodeState::Failed {
                theme.node_state(node.state)
            } else {
                Style::new()
            };
            cells.extend([
                Span::styled(node_activity(node), activity_style),
                Span::raw(format!(
                    "{} {:>w$}/{:<w$}",
                    bar(done, total, BAR_WIDTH),
                    node.tasks_done(),
                    total,
                    w = digits as usize
                )),
                Span::raw(node.elapsed_ms(app.now_ms).map(summary::duration).unwrap_or_default()),
            ]);
            let row = Row::new(cells);
            if i == app.selected {
                row.style(selection_style(app, theme))
            } else {
                row
            }
        });
    let title = if app.nodes.len() > rows_visible {
        format!(" nodes {}/{} ", app.selected + 1, app.nodes.len())
    } else {
        " nodes ".to_string()
    };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.bold()))
        .column_spacing(1)
        .block(
            Block::bordered()
                .title(title)
                .border_style(theme.border(app.focus == Focus::List)),
        );
    frame.render_widget(table, area);
}

fn draw_matrix(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if area.width == 0 || app.stages.is_empty() {
        return;
    }
    let rows_visible = area.height.saturating_sub(3) as usize;
    let offset = list_offset(app.selected, rows_visible);
    let column = area.width.saturating_sub(2) / app.stages.len() as u16;
    let columns = (area.width.saturating_sub(2) / column.max(1)) as usize;
    let shown = &app.stages[..app.stages.len().min(columns)];
    // Numbers too wide for their column (stages 10 and up in one-character columns) show their units digit in
    // the header and their tens digit above it, on the border line: `1` over `0` reads as stage 10.
    let narrow = column < 3 && shown.len() >= 10;
    let header = shown.iter().enumerate().map(|(i, stage)| {
        if column >= 4 {
            truncate(stage, column as usize - 1)
        } else if narrow {
            ((i + 1) % 10).to_string()
        } else {
            ((i + 1) % 100).to_string()
        }
    });
    let rows = app
        .nodes
        .iter()
        .enumerate()
        .skip(offset)
        .take(rows_visible)
        .map(|(i, node)| {
            let row = Row::new(shown.iter().map(|stage| {
                let cell = node.stage_cell(stage);
                Span::styled(cell_symbol(cell), theme.cell(cell))
            }));
            if i == app.selected {
                row.style(selection_style(app, theme))
            } else {
                row
            }
        });
    let table = Table::new(
        rows,
        shown
            .iter()
            .map(|_| Constraint::Length(column.saturating_sub(1).max(1))),
    )
    .header(Row::new(header).style(theme.bold()))
    .column_spacing(u16::from(column >= 2))
    .block(Block::bordered().title(" stages ").border_style(theme.border(false)));
    frame.render_widget(table, area);
    if narrow {
        let buffer = frame.buffer_mut();
        for i in 9..shown.len() {
            let x = area.x + 1 + i as u16 * column;
            if x + 1 < area.x + area.width {
                buffer.set_string(x, area.y, ((i + 1) / 10).to_string(), theme.bold());
            }
        }
    }
}

fn draw_output(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let focused = app.focus == Focus::Output;
    let Some(node) = app.selected_node() else {
        frame.render_widget(
            Block::bordered().title(" output ").border_style(theme.border(focused)),
            area,
        );
        return;
    };
    let inner_height = area.height.saturating_sub(2);
    let failure_rows = failure_height(node, inner_height);
    let page = inner_height.saturating_sub(failure_rows) as usize;
    let top = app.output_top(page);
    let output = &node.output;
    let mode = if app.follow {
        "following".to_string()
    } else {
        "paused · f/End to follow".to_string()
    };
    let range = if output.is_empty() {
        String::new()
    } else {
        let first = top - output.first_seq() + 1;
        let last = (first as usize + page).min(output.len() + 1) - 1;
        format!(" · {first}-{last}/{}", output.len())
    };
    let title = format!(" output · {} · {mode}{range} ", node.name);

    let mut lines = Vec::with_capacity(inner_height as usize);
    if failure_rows > 0
        && let Some(failure) = &node.failure
    {
        let red = theme.node_state(NodeState::Failed);
        let mut what = match (&failure.stage, &failure.task) {
            (Some(stage), Some(task)) => format!("✗ failed: {stage} / {task}"),
            _ => "✗ failed".to_string(),
        };
        if let Some(code) = failure.exit_code {
            let _ = write!(what, " · exit {code}");
        }
        lines.push(Line::styled(what, red));
        if let Some(error) = &failure.error {
            lines.push(Line::styled(format!("  {error}"), red));
        }
        let tail_rows = (failure_rows as usize).saturating_sub(lines.len() + 1);
        let skip = failure.last_lines.len().saturating_sub(tail_rows);
        for line in failure.last_lines.iter().skip(skip) {
            lines.push(Line::from(vec![Span::styled("  │ ", red), Span::raw(line.clone())]));
        }
        lines.push(Line::styled(
            "─".repeat(area.width.saturating_sub(2) as usize),
            theme.dim(),
        ));
    }
    for line in output.window(top, page) {
        let style = match line.kind {
            LineKind::Stdout => Style::new(),
            LineKind::Stderr => theme.fg(Color::Yellow),
            LineKind::Note => theme.fg(Color::Cyan).add_modifier(Modifier::BOLD),
        };
        lines.push(Line::styled(line.text.as_str(), style));
    }
    let block = Block::bordered().title(title).border_style(theme.border(focused));
    frame.render_widget(Paragraph::new(lines).block(block), area);
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

fn draw_confirm(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let clusters = {
        let mut names: Vec<&str> = app.nodes.iter().filter_map(|n| n.cluster.as_deref()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    };
    let (_, total) = app.task_progress();
    let skips: usize = app.nodes.iter().map(NodeView::resume_skips).sum();
    let mut intro = vec![Line::from(vec![
        Span::styled(plural(app.nodes.len(), "node"), theme.bold()),
        Span::raw(format!(
            " in {} · {} · {}",
            plural(clusters, "cluster"),
            plural(app.stages.len(), "stage"),
            plural(total, "task")
        )),
    ])];
    intro.push(if skips > 0 {
        Line::styled(
            format!(
                "Resume: {} finished in an earlier run will be skipped.",
                plural(skips, "task")
            ),
            theme.fg(Color::Blue),
        )
    } else {
        Line::raw("Nothing remembered from an earlier run: every task runs.")
    });

    let stage_rows = app.stages.len() as u16 + 3;
    let key_lines = host_key_lines(app, theme);
    let key_rows = if key_lines.is_empty() {
        0
    } else {
        (key_lines.len() as u16 + 2).min(area.height.saturating_sub(5) / 2)
    };
    let [intro_area, keys_area, stages_area, nodes_area, footer_area] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(key_rows),
        Constraint::Length(stage_rows.min(area.height.saturating_sub(5 + key_rows) / 2)),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let title = format!(" kubeboot apply · run {} ", app.run_id);
    frame.render_widget(
        Paragraph::new(intro).block(Block::bordered().title(title).border_style(theme.border(true))),
        intro_area,
    );

    // When the stages do not all fit, the last row says how many more there are.
    let fits = stages_area.height.saturating_sub(3) as usize;
    let (listed, more) = if app.stages.len() > fits && fits > 0 {
        (fits - 1, app.stages.len() - (fits - 1))
    } else {
        (app.stages.len(), 0)
    };
    let more_row =
        (more > 0).then(|| Row::new(vec![String::new(), format!("+{more} more")]).style(theme.fg(Color::DarkGray)));
    let stage_table = Table::new(
        app.stages
            .iter()
            .take(listed)
            .enumerate()
            .map(|(i, stage)| {
                let nodes = app
                    .nodes
                    .iter()
                    .filter(|n| n.tasks.iter().any(|t| &t.stage == stage))
                    .count();
                let tasks = app.nodes.iter().flat_map(|n| &n.tasks).filter(|t| &t.stage == stage);
                let (count, skip) = tasks.fold((0, 0), |(c, s), t| {
                    (
                        c + 1,
                        s + usize::from(t.planned_skip == Some(crate::event::SkipReason::Done)),
                    )
                });
                let skip = if skip > 0 { skip.to_string() } else { String::new() };
                Row::new(vec![
                    (i + 1).to_string(),
                    stage.clone(),
                    nodes.to_string(),
                    count.to_string(),
                    skip,
                ])
            })
            .chain(more_row),
        [
            Constraint::Length(3),
            Constraint::Fill(1),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(11),
        ],
    )
    .header(Row::new(vec!["#", "stage", "nodes", "tasks", "skip (done)"]).style(theme.bold()))
    .block(Block::bordered().title(" stages ").border_style(theme.border(false)));
    frame.render_widget(stage_table, stages_area);

    if key_rows > 0 {
        // Keep the selected key in view when there are more than fit.
        let inner = key_rows.saturating_sub(2) as usize;
        let selected_line = host_key_line_index(app, app.host_key_selected);
        let scroll = (selected_line + 1).saturating_sub(inner) as u16;
        let undecided = app
            .host_keys
            .iter()
            .filter(|k| k.decision == HostKeyDecision::Undecided)
            .count();
        let title = if let Some(check) = &app.host_key_check {
            format!(
                " checking host keys of {}… {}/{} answered ",
                plural(check.nodes.len(), "node"),
                check.answered(),
                check.nodes.len()
            )
        } else if undecided > 0 {
            format!(" host keys · {undecided} waiting for a decision (undecided = refused) ")
        } else {
            " host keys ".to_string()
        };
        frame.render_widget(
            Paragraph::new(key_lines)
                .scroll((scroll, 0))
                .block(Block::bordered().title(title).border_style(theme.fg(Color::Yellow))),
            keys_area,
        );
    }

    let rows_visible = nodes_area.height.saturating_sub(3) as usize;
    let hidden = app.nodes.len().saturating_sub(rows_visible);
    let node_rows = app.nodes.iter().take(rows_visible).map(|node| {
        let skip = node.resume_skips();
        Row::new(vec![
            node.name.clone(),
            node.cluster.clone().unwrap_or_default(),
            node.address.clone(),
            node.tasks_total().to_string(),
            if skip > 0 { skip.to_string() } else { String::new() },
        ])
    });
    let title = if hidden > 0 {
        format!(" nodes · {hidden} more not shown ")
    } else {
        " nodes ".to_string()
    };
    let node_table = Table::new(
        node_rows,
        [
            Constraint::Fill(2),
            Constraint::Fill(2),
            Constraint::Fill(3),
            Constraint::Length(6),
            Constraint::Length(11),
        ],
    )
    .header(Row::new(vec!["node", "cluster", "address", "tasks", "skip (done)"]).style(theme.bold()))
    .block(Block::bordered().title(title).border_style(theme.border(false)));
    frame.render_widget(node_table, nodes_area);

    let hints: &[(&str, &str)] = if app.checking_host_keys() {
        &[
            ("n/q", "leave"),
            ("?", "help"),
            ("", "· the run can start once every node has answered"),
        ]
    } else if app.host_keys.is_empty() {
        &[("y/Enter", "start"), ("n/q", "leave"), ("?", "help")]
    } else {
        &[
            ("y/Enter", "start"),
            ("↑↓", "key"),
            ("a", "accept key"),
            ("x", "refuse key"),
            ("n/q", "leave"),
        ]
    };
    frame.render_widget(footer(hints, theme), footer_area);
}

/// Lines of the host key box: one per unknown key, two per changed key (the second says why it cannot be accepted).
/// The full fingerprint fits on an 80-column line for node names up to 10 characters: the operator compares it.
fn host_key_lines(app: &App, theme: Theme) -> Vec<Line<'static>> {
    if let Some(check) = &app.host_key_check {
        return host_key_check_lines(check, theme);
    }
    let name_width = app
        .host_keys
        .iter()
        .map(|k| k.prompt.node.chars().count())
        .max()
        .unwrap_or(0);
    let mut lines = Vec::new();
    for (i, key) in app.host_keys.iter().enumerate() {
        let marker = if i == app.host_key_selected { "▸ " } else { "  " };
        let node = format!("{:<name_width$}", key.prompt.node);
        let selected = if i == app.host_key_selected {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        match &key.prompt.issue {
            HostKeyIssue::Unknown => {
                let (word, style) = match key.decision {
                    HostKeyDecision::Undecided => ("? undecided", theme.fg(Color::Yellow)),
                    HostKeyDecision::Accept => ("✓ accept   ", theme.fg(Color::Green)),
                    HostKeyDecision::Refuse => ("✗ refuse   ", theme.fg(Color::Red)),
                };
                lines.push(Line::from(vec![
                    Span::raw(marker),
                    Span::styled(word, style.patch(selected)),
                    Span::raw("  "),
                    Span::styled(node, theme.bold()),
                    Span::raw("  "),
                    Span::raw(key.prompt.fingerprint.clone()),
                ]));
            }
            HostKeyIssue::Changed { line, path } => {
                let red = theme.fg(Color::Red).add_modifier(Modifier::BOLD);
                lines.push(Line::from(vec![
                    Span::raw(marker),
                    Span::styled("✗ CHANGED  ", red.patch(selected)),
                    Span::raw("  "),
                    Span::styled(node, theme.bold()),
                    Span::raw("  "),
                    Span::styled(key.prompt.fingerprint.clone(), red),
                ]));
                lines.push(Line::styled(
                    format!("    not acceptable: line {line} of {path} has another key for it"),
                    red,
                ));
            }
        }
    }
    lines
}

/// One line per node while the host key look runs: what it answered, or that it is still asked.
fn host_key_check_lines(check: &HostKeyCheck, theme: Theme) -> Vec<Line<'static>> {
    let name_width = check.nodes.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
    check
        .nodes
        .iter()
        .map(|(node, answer)| {
            let (word, style) = match answer {
                None => ("… asking".to_string(), theme.dim()),
                Some(HostKeyAnswer::Known) => ("✓ known".to_string(), theme.fg(Color::Green)),
                Some(HostKeyAnswer::Found(p)) => match p.issue {
                    HostKeyIssue::Unknown => (
                        "? unknown key: decide once all have answered".to_string(),
                        theme.fg(Color::Yellow),
                    ),
                    HostKeyIssue::Changed { .. } => (
                        "✗ CHANGED key".to_string(),
                        theme.fg(Color::Red).add_modifier(Modifier::BOLD),
                    ),
                },
                Some(HostKeyAnswer::NoAnswer) => ("- no answer (the run reports it)".to_string(), theme.dim()),
            };
            Line::from(vec![
                Span::raw("  "),
                Span::styled(format!("{node:<name_width$}"), theme.bold()),
                Span::raw("  "),
                Span::styled(word, style),
            ])
        })
        .collect()
}

/// The line in the host key box where key `index` starts.
fn host_key_line_index(app: &App, index: usize) -> usize {
    app.host_keys
        .iter()
        .take(index)
        .map(|k| match k.prompt.issue {
            HostKeyIssue::Unknown => 1,
            HostKeyIssue::Changed { .. } => 2,
        })
        .sum()
}

fn draw_summary(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let summary = summary(app);
    let counts = summary.totals();
    let red = theme.node_state(NodeState::Failed);
    let mut tally = vec![
        Span::styled(
            format!("{} ok", plural(summary.count(NodeResult::Ok), "node")),
            theme.fg(Color::Green),
        ),
        Span::raw(" · "),
        Span::styled(format!("{} failed", summary.count(NodeResult::Failed)), red),
        Span::raw(format!(" · {} cancelled", summary.count(NodeResult::Cancelled))),
    ];
    let blocked = summary.count(NodeResult::Blocked);
    if blocked > 0 {
        tally.push(Span::raw(" · "));
        tally.push(Span::styled(
            format!("{blocked} blocked"),
            theme.result(NodeResult::Blocked),
        ));
    }
    let intro = vec![
        Line::from(tally),
        Line::raw(format!(
            "tasks: {} ok · {} changed · {} skipped · {} failed",
            counts.ok, counts.changed, counts.skipped, counts.failed
        )),
    ];
    let reasons: Vec<String> = summary
        .reasons()
        .map(|(row, why)| format!("{}: {why}", row.node))
        .collect();
    let failure_rows = if reasons.is_empty() {
        0
    } else {
        (reasons.len() as u16 * 2 + 2).min(area.height / 3)
    };
    let [intro_area, table_area, failures_area, footer_area] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Fill(1),
        Constraint::Length(failure_rows),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(intro).block(
            Block::bordered()
                .title(format!(" kubeboot · {} ", summary.title()))
                .border_style(theme.border(true)),
        ),
        intro_area,
    );

    let rows_visible = table_area.height.saturating_sub(3) as usize;
    let offset = list_offset(app.selected, rows_visible);
    let name_width = summary
        .nodes
        .iter()
        .map(|r| r.node.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 18) as u16;
    // The printed table's columns (summary::COLUMNS) in lower case; short count headers on a small terminal leave
    // room for the log path, which matters more.
    let wide = table_area.width >= 100;
    let [node, result, changed, ok, skipped, failed, time, log] = summary::COLUMNS.map(str::to_lowercase);
    let (changed, ok, skipped, failed) = if wide {
        (changed, format!(" {ok}"), skipped, failed)
    } else {
        (" chg".into(), " ok".into(), "skip".into(), "fail".into())
    };
    let [changed_w, ok_w, skipped_w, failed_w] = [&changed, &ok, &skipped, &failed].map(|h| h.chars().count());
    let fixed = 1 + name_width + 9 + (changed_w + ok_w + skipped_w + failed_w) as u16 + 6 + 8 + 2;
    let log_width = table_area.width.saturating_sub(fixed) as usize;
    let rows = summary
        .nodes
        .iter()
        .enumerate()
        .skip(offset)
        .take(rows_visible)
        .map(|(i, row)| {
            let c = &row.counts;
            let style = theme.result(row.result);
            let cells = vec![
                Span::styled(result_symbol(row.result), style),
                Span::raw(row.node.clone()),
                Span::styled(row.result.word().to_lowercase(), style),
                Span::raw(format!("{:>changed_w$}", c.changed)),
                Span::raw(format!("{:>ok_w$}", c.ok)),
                Span::raw(format!("{:>skipped_w$}", c.skipped)),
                Span::raw(format!("{:>failed_w$}", c.failed)),
                Span::raw(row.duration_ms.map(summary::duration).unwrap_or_default()),
                Span::styled(truncate_left(&row.log.display().to_string(), log_width), theme.dim()),
            ];
            if i == app.selected {
                Row::new(cells).style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                Row::new(cells)
            }
        });
    let header = vec![String::new(), node, result, changed, ok, skipped, failed, time, log];
    let table = Table::new(
        rows,
        [
            Constraint::Length(1),
            Constraint::Length(name_width),
            Constraint::Length(9),
            Constraint::Length(changed_w as u16),
            Constraint::Length(ok_w as u16),
            Constraint::Length(skipped_w as u16),
            Constraint::Length(failed_w as u16),
            Constraint::Length(6),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(header).style(theme.bold()))
    .block(Block::bordered().title(" nodes ").border_style(theme.border(false)));
    frame.render_widget(table, table_area);

    if failure_rows > 0 {
        let lines: Vec<Line> = reasons.into_iter().map(|text| Line::styled(text, red)).collect();
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .block(Block::new().borders(Borders::ALL).title(" failures ").border_style(red)),
            failures_area,
        );
    }
    let mut hints = vec![("q/Enter", "leave"), ("Tab", "run view"), ("↑↓", "select")];
    if !app.events_closed && app.nodes.iter().any(|n| n.state == NodeState::Failed) {
        // The engine still takes retries after the run ended.
        hints.push(("r", "retry"));
    }
    hints.push(("?", "help"));
    frame.render_widget(footer(&hints, theme), footer_area);
}

/// The symbol in front of a node's summary row (the node list's symbol of the state it ended in).
fn result_symbol(result: NodeResult) -> &'static str {
    node_symbol(result_state(result))
}

/// The node state a summary result stands for, to draw it in that state's symbol and colour.
fn result_state(result: NodeResult) -> NodeState {
    match result {
        NodeResult::NotRun => NodeState::Waiting,
        NodeResult::Running => NodeState::Running,
        NodeResult::Ok => NodeState::Done,
        NodeResult::Failed => NodeState::Failed,
        NodeResult::Cancelled => NodeState::Cancelled,
        NodeResult::Blocked => NodeState::Blocked,
    }
}

/// One line naming where and why a failed node failed.
fn failure_text(node: &NodeView) -> String {
    let mut text = node.name.clone();
    let Some(failure) = &node.failure else {
        return format!("{text}: failed");
    };
    if let (Some(stage), Some(task)) = (&failure.stage, &failure.task) {
        let _ = write!(text, ": {stage} / {task}");
    }
    if let Some(code) = failure.exit_code {
        let _ = write!(text, " (exit {code})");
    }
    if let Some(error) = &failure.error {
        let _ = write!(text, ": {error}");
    }
    text
}

/// The end-of-run summary of the TUI's run, in the model both frontends print.
pub fn summary(app: &App) -> Summary {
    let mut summary = Summary::new(&app.log_dir);
    summary.run_id = app.run_id.clone();
    summary.elapsed_ms = app.elapsed_ms();
    summary.end = app.run_end.map(|e| summary::RunEnd {
        counts: e.counts,
        duration_ms: e.duration_ms,
        interrupted: e.interrupted,
    });
    summary.nodes = app
        .nodes
        .iter()
        .map(|node| summary::NodeRow {
            node: node.name.clone(),
            result: match node.state {
                NodeState::Waiting => NodeResult::NotRun,
                NodeState::Connecting | NodeState::Running | NodeState::WaitingOnOthers => NodeResult::Running,
                NodeState::Done => NodeResult::Ok,
                NodeState::Failed => NodeResult::Failed,
                NodeState::Cancelled => NodeResult::Cancelled,
                NodeState::Blocked => NodeResult::Blocked,
            },
            counts: node.counts(),
            duration_ms: node.elapsed_ms(app.now_ms),
            why: match node.state {
                NodeState::Failed => failure_text(node)
                    .strip_prefix(&format!("{}: ", node.name))
                    .map(str::to_string),
                NodeState::Blocked => node.blocked_by.as_ref().map(|by| format!("blocked by {by}")),
                _ => None,
            },
            log: app.log_path(&node.name),
        })
        .collect();
    summary
}

/// The printable summary table the caller shows after the terminal is restored.
pub fn summary_text(app: &App) -> String {
    summary(app).text()
}
