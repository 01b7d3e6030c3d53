//! Which nodes and stages a run covers (`--limit`, `--only`, `--from`, each stage's `hosts`), and the problems with
//! those selections, reported as command-line or playbook positions.

use crate::diag::{Diagnostic, Diagnostics, closest};
use crate::inventory::{Inventory, Node, Role};
use crate::playbook::{Hosts, Playbooks, Stage};

use super::Selection;

const COMMAND_LINE: &str = "command line";

/// A problem with the command line (`--limit`, `--only`, `--from`).
pub(super) fn command_line(message: impl Into<String>, hint: impl Into<String>) -> Diagnostic {
    Diagnostic::at(COMMAND_LINE, 1, 1, message).with_hint(hint)
}

/// Problems with `--only`/`--from`/`--limit` themselves.
pub(super) fn check_selection(inv: &Inventory, books: &Playbooks, sel: &Selection) -> Diagnostics {
    let mut diags = Diagnostics::default();
    if !sel.only.is_empty() && sel.from.is_some() {
        diags.push(command_line(
            "--only and --from cannot be used together",
            "use --only to pick stages, or --from to start at one",
        ));
    }
    let stage_names = || books.stages.iter().map(|s| s.name.as_str());
    for name in sel.only.iter().chain(sel.from.iter()) {
        if !stage_names().any(|s| s == name) {
            let hint = match closest(name, stage_names()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("stages: {}", stage_names().collect::<Vec<_>>().join(", ")),
            };
            diags.push(command_line(format!("no stage is named `{name}`"), hint));
        }
    }
    let targets = || {
        inv.nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(inv.clusters.iter().map(|c| c.name.as_str()))
    };
    for name in &sel.limit {
        if !targets().any(|t| t == name) {
            let hint = match closest(name, targets()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => "--limit takes node or cluster names from the inventory".into(),
            };
            diags.push(command_line(
                format!("--limit `{name}` matches no node or cluster"),
                hint,
            ));
        }
    }
    diags
}

/// The stages the selection keeps, in run order.
pub(super) fn selected_stages<'b>(books: &'b Playbooks, sel: &Selection) -> Vec<&'b Stage> {
    let start = sel
        .from
        .as_ref()
        .and_then(|f| books.stages.iter().position(|s| &s.name == f))
        .unwrap_or(0);
    books.stages[start..]
        .iter()
        .filter(|s| sel.only.is_empty() || sel.only.contains(&s.name))
        .collect()
}

/// True when a stage's `hosts` selects this node.
pub(crate) fn stage_runs_on(inv: &Inventory, stage: &Stage, node: &Node) -> bool {
    if stage.once_per_cluster && inv.first_control_plane(node).is_none_or(|f| f.name != node.name) {
        return false;
    }
    let Hosts::Select(names) = &stage.hosts else {
        return true;
    };
    let cluster = node.cluster.as_deref().and_then(|c| inv.cluster(c));
    names.iter().any(|sel| match sel.as_str() {
        "central" => cluster.is_some_and(|c| c.role == Role::Central),
        "edge" => cluster.is_some_and(|c| c.role == Role::Edge),
        other => other == node.name || node.cluster.as_deref() == Some(other),
    })
}

/// `hosts` entries that name nothing in the inventory.
pub(super) fn check_hosts(inv: &Inventory, books: &Playbooks) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let known = || {
        ["all", "central", "edge"]
            .into_iter()
            .chain(inv.clusters.iter().map(|c| c.name.as_str()))
            .chain(inv.nodes.iter().map(|n| n.name.as_str()))
    };
    for stage in &books.stages {
        let Hosts::Select(names) = &stage.hosts else { continue };
        for name in names {
            if !known().any(|k| k == name) {
                let hint = match closest(name, known()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "all | central | edge | a cluster name | a node name".into(),
                };
                let l = &stage.hosts_location;
                diags.push(
                    Diagnostic::at(
                        &l.file,
                        l.line,
                        l.column,
                        format!("hosts `{name}` matches no cluster or node"),
                    )
                    .with_hint(hint),
                );
            }
        }
    }
    diags
}

/// Nodes selected by --limit (node or cluster names) that have at least one selected stage.
pub fn select_nodes<'a>(inv: &'a Inventory, books: &Playbooks, sel: &Selection) -> Result<Vec<&'a Node>, Diagnostics> {
    check_selection(inv, books, sel).into_result(())?;
    let stages = selected_stages(books, sel);
    Ok(inv
        .nodes
        .iter()
        .filter(|n| sel.limits_to(n))
        .filter(|n| stages.iter().any(|s| stage_runs_on(inv, s, n)))
        .collect())
}
