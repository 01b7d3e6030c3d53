//! One playbook file's stage: its keys (`name`, `hosts`, `become`, `vars`, `wait_for`, `serial`,
//! `once_per_cluster`, `tasks`) and what each must be.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::playbook::model::{Hosts, Stage};
use crate::spanned::{Node, Reader, Value, misspelled};

const STAGE_KEYS: &[&str] = &[
    "name",
    "hosts",
    "become",
    "vars",
    "wait_for",
    "serial",
    "once_per_cluster",
    "tasks",
];

impl Reader<'_> {
    fn vars(&mut self, v: &Node) -> BTreeMap<String, Json> {
        match &v.value {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.value.scalar_text().unwrap_or_default(), v.value.to_json()))
                .collect(),
            Value::Null => BTreeMap::new(),
            other => {
                let kind = other.kind();
                self.error(
                    v,
                    format!("`vars` must be a mapping, not {kind}"),
                    "e.g. `vars: { a: 1 }`",
                );
                BTreeMap::new()
            }
        }
    }

    fn hosts(&mut self, v: &Node) -> Option<Hosts> {
        let one = |r: &mut Self, n: &Node| -> Option<String> {
            match &n.value {
                Value::Str(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                _ => {
                    r.error(
                        n,
                        "`hosts` entries must be names",
                        "all | central | edge | a cluster name | a node name",
                    );
                    None
                }
            }
        };
        match &v.value {
            Value::Str(s) if s.trim() == "all" => Some(Hosts::All),
            Value::Str(_) => one(self, v).map(|s| Hosts::Select(vec![s])),
            Value::Seq(items) if !items.is_empty() => {
                let names: Vec<String> = items.iter().filter_map(|n| one(self, n)).collect();
                if names.iter().any(|n| n == "all") {
                    Some(Hosts::All)
                } else {
                    Some(Hosts::Select(names))
                }
            }
            _ => {
                self.error(
                    v,
                    "`hosts` must be a name or a list of names",
                    "all | central | edge | a cluster name | a node name | [a list of those]",
                );
                None
            }
        }
    }

    pub(super) fn stage(&mut self, doc: &Node) -> Option<Stage> {
        let entries = self.mapping(doc, STAGE_KEYS, "a playbook")?;
        let mut name = None;
        let mut name_loc = self.loc(doc);
        let mut hosts = None;
        let mut hosts_loc = self.loc(doc);
        let mut become_ = false;
        let mut vars = BTreeMap::new();
        let mut wait_for = Vec::new();
        let mut serial = false;
        let mut once_per_cluster = false;
        let mut tasks = Vec::new();
        let mut written_tasks = 0;
        for (key, _k, v) in &entries {
            match key.as_str() {
                "name" => {
                    name_loc = self.loc(v);
                    name = self.string("name", v);
                    if let Some(n) = &name
                        && !crate::inventory::valid_name(n)
                    {
                        self.error(
                            v,
                            format!("stage name `{n}` is not allowed"),
                            "names start with a letter or digit and contain only letters, digits, `.`, `_` and `-`",
                        );
                    }
                }
                "hosts" => {
                    hosts_loc = self.loc(v);
                    hosts = self.hosts(v);
                }
                "become" => become_ = self.boolean("become", v).unwrap_or(false),
                "vars" => vars = self.vars(v),
                "wait_for" => wait_for = self.wait_for(v),
                "serial" => serial = self.boolean("serial", v).unwrap_or(false),
                "once_per_cluster" => once_per_cluster = self.boolean("once_per_cluster", v).unwrap_or(false),
                "tasks" => {
                    written_tasks = match &v.value {
                        Value::Seq(items) => items.len(),
                        Value::Null => 0,
                        _ => 1,
                    };
                    tasks = self.tasks(v);
                }
                _ => {}
            }
        }
        let missing = |key: &str| entries.iter().all(|(k, _, _)| k != key);
        if missing("name") && !misspelled(doc, &["name"]) {
            self.error(doc, "the playbook has no `name`", "add `name: <stage name>` at the top");
        }
        if missing("hosts") && !misspelled(doc, &["hosts"]) {
            self.error(
                doc,
                "the playbook has no `hosts`",
                "add `hosts: all` (or central, edge, a cluster or node name)",
            );
        }
        if written_tasks == 0 {
            let at = entries
                .iter()
                .find(|(k, _, _)| k == "tasks")
                .map(|(_, _, v)| *v)
                .unwrap_or(doc);
            self.error(
                at,
                "the playbook has no tasks",
                "add a `tasks:` list with at least one task",
            );
        }
        Some(Stage {
            name: name?,
            file: self.file.to_path_buf(),
            hosts: hosts?,
            become_,
            vars,
            wait_for,
            serial,
            once_per_cluster,
            tasks,
            location: name_loc,
            hosts_location: hosts_loc,
        })
    }
}
