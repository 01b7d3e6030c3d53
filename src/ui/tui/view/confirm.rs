//! The confirmation screen: what the run will do, the host keys to decide on, `y` to start.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};

use super::super::state::{App, HostKeyAnswer, HostKeyCheck, HostKeyDecision, HostKeyIssue, NodeRun};
use super::{Theme, footer, plural};

pub(super) fn draw_confirm(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let clusters = {
        let mut names: Vec<&str> = app.run.nodes.iter().filter_map(|n| n.cluster.as_deref()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    };
    let (_, total) = app.run.task_progress();
    let skips: usize = app.run.nodes.iter().map(NodeRun::resume_skips).sum();
    let mut intro = vec![Line::from(vec![
        Span::styled(plural(app.run.nodes.len(), "node"), theme.bold()),
        Span::raw(format!(
            " in {} · {} · {}",
            plural(clusters, "cluster"),
            plural(app.run.stages.len(), "stage"),
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

    let stage_rows = app.run.stages.len() as u16 + 3;
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
    let title = format!(" kubeboot apply · run {} ", app.run.run_id);
    frame.render_widget(
        Paragraph::new(intro).block(Block::bordered().title(title).border_style(theme.border(true))),
        intro_area,
    );

    // When the stages do not all fit, the last row says how many more there are.
    let fits = stages_area.height.saturating_sub(3) as usize;
    let (listed, more) = if app.run.stages.len() > fits && fits > 0 {
        (fits - 1, app.run.stages.len() - (fits - 1))
    } else {
        (app.run.stages.len(), 0)
    };
    let more_row =
        (more > 0).then(|| Row::new(vec![String::new(), format!("+{more} more")]).style(theme.fg(Color::DarkGray)));
    let stage_table = Table::new(
        app.run
            .stages
            .iter()
            .take(listed)
            .enumerate()
            .map(|(i, stage)| {
                let nodes = app
                    .run
                    .nodes
                    .iter()
                    .filter(|n| n.tasks.iter().any(|t| &t.stage == stage))
                    .count();
                let tasks = app
                    .run
                    .nodes
                    .iter()
                    .flat_map(|n| &n.tasks)
                    .filter(|t| &t.stage == stage);
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
    let hidden = app.run.nodes.len().saturating_sub(rows_visible);
    let node_rows = app.run.nodes.iter().take(rows_visible).map(|node| {
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
