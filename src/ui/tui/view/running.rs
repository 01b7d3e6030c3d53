//! The live run's screen: the header, the node list, the stage matrix and the selected node's output.

use std::fmt::Write as _;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};

use super::super::state::{App, FAILURE_TAIL, Focus, LineKind, NodePane, NodeRun, NodeState};
use super::{Theme, bar, cell_symbol, footer, node_symbol, truncate};
use crate::ui::summary;

/// Width of the text progress bars in the node list.
const BAR_WIDTH: usize = 6;

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
    let wanted = app.run.nodes.len() as u16 + 3;
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
    let stages = app.run.stages.len() as u16;
    if stages == 0 {
        return 0;
    }
    if width < 100 {
        // On a small terminal the node list's stage/task text matters more than stage names: one symbol a stage.
        return 2;
    }
    let longest = app.run.stages.iter().map(|s| s.chars().count()).max().unwrap_or(0) as u16;
    let budget = (width * 2 / 5).saturating_sub(2) / stages;
    (longest + 1).min(12).min(budget).max(2)
}

fn matrix_width(width: u16, app: &App) -> u16 {
    if app.run.stages.is_empty() {
        return 0;
    }
    // At least wide enough for its " stages " title.
    (stage_column_width(width, app) * app.run.stages.len() as u16 + 2)
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
fn failure_height(node: &NodeRun, pane: &NodePane, inner_height: u16) -> u16 {
    let Some(failure) = &node.failure else { return 0 };
    if node.state != NodeState::Failed {
        return 0;
    }
    let budget = (inner_height / 2).saturating_sub(3) as usize;
    let tail = pane.failure_tail.len().min(budget).min(FAILURE_TAIL);
    let error = usize::from(failure.error.is_some());
    (1 + error + tail + 1) as u16
}

/// Lines of scrolling output visible on a terminal of `area` (what PgUp/PgDn move by).
pub fn output_page(area: Rect, app: &App) -> usize {
    let inner = regions(area, app).output.height.saturating_sub(2);
    let failure = app
        .selected_node()
        .zip(app.selected_pane())
        .map_or(0, |(n, p)| failure_height(n, p, inner));
    inner.saturating_sub(failure) as usize
}

pub(super) fn draw_running(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
    let tally = app.run.node_tally();
    let mut spans = vec![
        Span::styled(" kubeboot", theme.bold()),
        Span::raw(format!(
            " · run {} · ⏱ {} · nodes: ",
            app.run.run_id,
            summary::duration(app.run.elapsed_ms())
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
    if app.run.dry_run {
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
    let (done, total) = app.run.task_progress();
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

fn node_activity(node: &NodeRun, pane: &NodePane) -> String {
    if pane.retry_requested {
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

/// The rows of the nodes in view (`rows_visible` of them from `offset`), each made by `row`; the
/// selected node's row is highlighted. The node list and the stage matrix scroll together this way.
fn node_rows<'a>(
    app: &'a App,
    theme: Theme,
    offset: usize,
    rows_visible: usize,
    row: impl Fn(&'a NodeRun, &'a NodePane) -> Row<'a> + 'a,
) -> impl Iterator<Item = Row<'a>> + 'a {
    app.run
        .nodes
        .iter()
        .zip(&app.panes)
        .enumerate()
        .skip(offset)
        .take(rows_visible)
        .map(move |(i, (node, pane))| {
            let row = row(node, pane);
            if i == app.selected {
                row.style(selection_style(app, theme))
            } else {
                row
            }
        })
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
        .run
        .nodes
        .iter()
        .map(|n| n.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 18) as u16;
    let cluster_width = app
        .run
        .nodes
        .iter()
        .filter_map(|n| n.cluster.as_ref().map(|c| c.chars().count()))
        .max()
        .unwrap_or(0)
        .min(14) as u16;
    let most = app.run.nodes.iter().map(NodeRun::tasks_total).max().unwrap_or(0);
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

    let rows = node_rows(app, theme, offset, rows_visible, move |node, pane| {
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
            Span::styled(node_activity(node, pane), activity_style),
            Span::raw(format!(
                "{} {:>w$}/{:<w$}",
                bar(done, total, BAR_WIDTH),
                node.tasks_done(),
                total,
                w = digits as usize
            )),
            Span::raw(
                node.elapsed_ms(app.run.now_ms)
                    .map(summary::duration)
                    .unwrap_or_default(),
            ),
        ]);
        Row::new(cells)
    });
    let title = if app.run.nodes.len() > rows_visible {
        format!(" nodes {}/{} ", app.selected + 1, app.run.nodes.len())
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
    if area.width == 0 || app.run.stages.is_empty() {
        return;
    }
    let rows_visible = area.height.saturating_sub(3) as usize;
    let offset = list_offset(app.selected, rows_visible);
    let column = area.width.saturating_sub(2) / app.run.stages.len() as u16;
    let columns = (area.width.saturating_sub(2) / column.max(1)) as usize;
    let shown = &app.run.stages[..app.run.stages.len().min(columns)];
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
    let rows = node_rows(app, theme, offset, rows_visible, move |node, _| {
        Row::new(shown.iter().map(|stage| {
            let cell = node.stage_cell(stage);
            Span::styled(cell_symbol(cell), theme.cell(cell))
        }))
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
    let (Some(node), Some(pane)) = (app.selected_node(), app.selected_pane()) else {
        frame.render_widget(
            Block::bordered().title(" output ").border_style(theme.border(focused)),
            area,
        );
        return;
    };
    let inner_height = area.height.saturating_sub(2);
    let failure_rows = failure_height(node, pane, inner_height);
    let page = inner_height.saturating_sub(failure_rows) as usize;
    let top = app.output_top(page);
    let output = &pane.output;
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
        let skip = pane.failure_tail.len().saturating_sub(tail_rows);
        for line in pane.failure_tail.iter().skip(skip) {
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
