//! The shipped install planned for every node, as the pure tests read it: the repository's
//! `inventory.toml` (or another inventory) with its `playbooks/` and `assets/`, no journal, no secrets.

use std::path::Path;

use kubeboot::facts::Facts;
use kubeboot::journal::Progress;
use kubeboot::plan::{self, NodePlan, Selection};
use kubeboot::{inventory, playbook};

use super::repo;

/// Every node's plan of the shipped inventory, with the given facts.
pub fn shipped_plans(facts: &Facts) -> Vec<NodePlan> {
    plans_of(&repo().join("inventory.toml"), facts)
}

/// Every node's plan of `inventory` with the shipped playbooks, after the same checks `kubeboot plan` makes;
/// panics with the diagnostics when the input is refused.
pub fn plans_of(inventory: &Path, facts: &Facts) -> Vec<NodePlan> {
    let inv = inventory::load(inventory).unwrap_or_else(|d| panic!("{d}"));
    let books = playbook::load(&repo().join("playbooks"), &repo().join("assets")).unwrap_or_else(|d| panic!("{d}"));
    let sel = Selection::default();
    plan::check(&inv, &books, &Progress::empty(), &sel).unwrap_or_else(|d| panic!("{d}"));
    inv.nodes
        .iter()
        .map(|n| {
            plan::plan_node(
                &inv,
                &books,
                &n.name,
                facts,
                &Progress::empty(),
                &kubeboot::secrets::Digests::none(),
                &sel,
            )
            .unwrap_or_else(|d| panic!("{d}"))
        })
        .collect()
}

/// The facts of a RHEL 9.4 node (the other package branch of the shipped playbooks).
pub fn rhel() -> Facts {
    Facts {
        os_family: "redhat".into(),
        os_id: "rhel".into(),
        os_version: "9.4".into(),
        os_version_major: 9,
        ..Facts::assumed()
    }
}

/// Every node's plan of a day-two folder of the shipped playbooks (`playbooks/backup`, ...), with the variables the
/// day-two commands add for their runs (src/cmd/daytwo.rs) set to sample values.
pub fn shipped_day_two_plans(folder: &str, facts: &Facts) -> Vec<NodePlan> {
    let mut inv = inventory::load(&repo().join("inventory.toml")).unwrap_or_else(|d| panic!("{d}"));
    for (name, value) in [
        ("backup_stamp", serde_json::Value::String("20260101-000000-abcd".into())),
        ("backup_required", serde_json::Value::Bool(true)),
        ("reset_purge_packages", serde_json::Value::Bool(true)),
    ] {
        inv.vars.insert(name.into(), value);
    }
    let books = playbook::load(&repo().join("playbooks").join(folder), &repo().join("assets"))
        .unwrap_or_else(|d| panic!("{d}"));
    let sel = Selection::default();
    inv.nodes
        .iter()
        .map(|n| {
            plan::plan_node(
                &inv,
                &books,
                &n.name,
                facts,
                &Progress::empty(),
                &kubeboot::secrets::Digests::none(),
                &sel,
            )
            .unwrap_or_else(|d| panic!("{folder}: {d}"))
        })
        .collect()
}
