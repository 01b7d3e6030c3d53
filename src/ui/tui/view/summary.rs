//! The summary screen after the run, and the one summary model both frontends print.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, Wrap};

use super::super::state::{App, NodeState};
use super::{Theme, footer, list_offset, node_symbol, plural, truncate_left};
use crate::ui::summary::{self, NodeResult, Summary};

pub(super) fn draw_summary(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
    if !app.run.events_closed && app.run.nodes.iter().any(|n| n.state == NodeState::Failed) {
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
pub(super) fn result_state(result: NodeResult) -> NodeState {
    match result {
        NodeResult::NotRun => NodeState::Waiting,
        NodeResult::Running => NodeState::Running,
        NodeResult::Ok => NodeState::Done,
        NodeResult::Failed => NodeState::Failed,
        NodeResult::Cancelled => NodeState::Cancelled,
        NodeResult::Blocked => NodeState::Blocked,
    }
}

/// The end-of-run summary of the TUI's run, in the model both frontends print.
pub fn summary(app: &App) -> Summary {
    Summary::live(&app.run, &app.log_dir)
}

/// The printable summary table the caller shows after the terminal is restored.
pub fn summary_text(app: &App) -> String {
    summary(app).text()
}
