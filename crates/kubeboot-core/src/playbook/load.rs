//! Reading `playbooks/*.yaml` into [`Playbooks`], reporting every problem with file, line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;

use super::model::{
    ActionDef, Capture, Hosts, Location, Playbooks, RegisterDef, Stage, TaskDef, WaitForDef, WaitNodes,
};
use crate::diag::{Diagnostic, Diagnostics, closest};
use crate::spanned::{Entries, Node, Reader, Yaml, misspelled, yaml};
use crate::task;

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
const REGISTER_KEYS: &[&str] = &["name", "secret", "line", "json"];
const WAIT_FOR_KEYS: &[&str] = &["node", "task"];
/// Task keys besides the name and the action keys of the task kinds ([`task::KEYS`]).
const COMMON_TASK_KEYS: &[&str] = &[
    "interval",
    "unless",
    "when",
    "retries",
    "delay",
    "timeout",
    "become",
    "env",
    "register",
    "wait_for",
    "after",
    "changed_when",
];
/// Task keys that only mean something on the node, refused on tasks that run on the jump host.
const NODE_ONLY_KEYS: &[&str] = &["unless", "env", "become", "register"];
const DEFAULT_DELAY: Duration = Duration::from_secs(5);

/// Reads every `*.yaml`/`*.yml` in `dir` (one stage each, in file-name order); `copy.src` resolves under `assets_dir`.
pub fn load(dir: &Path, assets_dir: &Path) -> Result<Playbooks, Diagnostics> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Diagnostic::file(dir, format!("cannot read the playbooks folder: {e}")).with_hint("check the -p path")
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(Diagnostic::file(dir, "the playbooks folder has no *.yaml files")
            .with_hint("add one file per stage, e.g. 00-preflight.yaml")
            .into());
    }
    let mut diags = Diagnostics::default();
    let mut stages: Vec<Stage> = Vec::new();
    for file in files {
        let Some(stage) = load_file(&file, assets_dir, &mut diags) else {
            continue;
        };
        if let Some(first) = stages.iter().find(|s| s.name == stage.name) {
            diags.push(
                Diagnostic::at(
                    &file,
                    stage.location.line,
                    stage.location.column,
                    format!("stage `{}` is also defined in {}", stage.name, first.file.display()),
                )
                .with_hint("stage names must be unique across playbook files"),
            );
            continue;
        }
        stages.push(stage);
    }
    check_after(&stages, &mut diags);
    // Files in run order, problems in each file top to bottom.
    let order: Vec<PathBuf> = diags.0.iter().map(|d| d.file.clone()).fold(Vec::new(), |mut v, f| {
        if !v.contains(&f) {
            v.push(f);
        }
        v
    });
    diags
        .0
        .sort_by_key(|d| (order.iter().position(|f| *f == d.file), d.line, d.column));
    diags.into_result(Playbooks {
        dir: dir.to_path_buf(),
        assets_dir: assets_dir.to_path_buf(),
        stages,
    })
}

/// Every name in an `after` list must be an earlier task: of its stage by name, or of an earlier stage as
/// `stage/name` (a later task cannot have changed before this one runs).
fn check_after(stages: &[Stage], diags: &mut Diagnostics) {
    for (si, stage) in stages.iter().enumerate() {
        for (ti, task) in stage.tasks.iter().enumerate() {
            for name in task.after.iter().flatten() {
                if super::model::resolve_after(stages, si, ti, name).is_some() {
                    continue;
                }
                let earlier = stage.tasks[..ti].iter().map(|t| t.name.as_str());
                let hint = match closest(name, earlier) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "name an earlier task of this stage, or `stage/task` of an earlier stage".into(),
                };
                let at = task.fields.get("after").unwrap_or(&task.location);
                diags.push(
                    Diagnostic::at(
                        &stage.file,
                        at.line,
                        at.column,
                        format!("`after` names `{name}`, which is not an earlier task"),
                    )
                    .with_hint(hint),
                );
            }
        }
    }
}

fn load_file(file: &Path, assets_dir: &Path, diags: &mut Diagnostics) -> Option<Stage> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            diags.push(Diagnostic::file(file, format!("cannot read the playbook: {e}")));
            return None;
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let before = String::from_utf8_lossy(&e.as_bytes()[..offset]).into_owned();
            diags.push(
                Diagnostic::at_offset(file, &before, offset, "the playbook is not valid UTF-8 text")
                    .with_hint("save the file as UTF-8"),
            );
            return None;
        }
    };
    parse_text(file, &text, assets_dir, diags)
}

/// Parses one playbook's text as if it were read from `file` (for tests and fuzzing).
pub fn parse(file: &Path, text: &str, assets_dir: &Path) -> Result<Stage, Diagnostics> {
    let mut diags = Diagnostics::default();
    let stage = parse_text(file, text, assets_dir, &mut diags);
    match stage {
        Some(stage) if diags.is_empty() => Ok(stage),
        _ => Err(diags),
    }
}

fn parse_text(file: &Path, text: &str, assets_dir: &Path, diags: &mut Diagnostics) -> Option<Stage> {
    if text.trim().is_empty() {
        diags.push(
            Diagnostic::file(file, "the playbook is empty")
                .with_hint("a playbook needs `name`, `hosts` and `tasks`, or remove the file"),
        );
        return None;
    }
    let doc = match yaml::parse(file, text) {
        Ok(d) => d,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    if doc.value == Yaml::Null {
        diags.push(
            Diagnostic::file(file, "the playbook is empty")
                .with_hint("a playbook needs `name`, `hosts` and `tasks`, or remove the file"),
        );
        return None;
    }
    let mut r = Reader {
        file,
        assets_dir,
        diags,
    };
    r.stage(&doc)
}

impl Reader<'_> {
    fn vars(&mut self, v: &Node) -> BTreeMap<String, Json> {
        match &v.value {
            Yaml::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.value.scalar_text().unwrap_or_default(), to_json(&v.value)))
                .collect(),
            Yaml::Null => BTreeMap::new(),
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
                Yaml::Str(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
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
            Yaml::Str(s) if s.trim() == "all" => Some(Hosts::All),
            Yaml::Str(_) => one(self, v).map(|s| Hosts::Select(vec![s])),
            Yaml::Seq(items) if !items.is_empty() => {
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

    fn stage(&mut self, doc: &Node) -> Option<Stage> {
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
                        Yaml::Seq(items) => items.len(),
                        Yaml::Null => 0,
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

    fn tasks(&mut self, v: &Node) -> Vec<TaskDef> {
        let Yaml::Seq(items) = &v.value else {
            if !matches!(v.value, Yaml::Null) {
                let kind = v.value.kind();
                self.error(
                    v,
                    format!("`tasks` must be a list, not {kind}"),
                    "start each task with `- name: ...`",
                );
            }
            return Vec::new();
        };
        let mut out: Vec<TaskDef> = Vec::new();
        for item in items {
            let Some(task) = self.task(item) else { continue };
            if out.iter().any(|t| t.name == task.name) {
                let l = &task.location;
                self.diags.push(
                    Diagnostic::at(
                        self.file,
                        l.line,
                        l.column,
                        format!("task `{}` appears twice in this stage", task.name),
                    )
                    .with_hint("task names identify tasks for resume; make each one unique within the stage"),
                );
                continue;
            }
            out.push(task);
        }
        out
    }

    fn task(&mut self, n: &Node) -> Option<TaskDef> {
        let keys: Vec<&str> = ["name"]
            .iter()
            .chain(task::KEYS)
            .chain(COMMON_TASK_KEYS)
            .copied()
            .collect();
        let entries = self.mapping(n, &keys, "a task")?;
        let mut fields = BTreeMap::new();
        let mut name = None;
        let mut name_loc = self.loc(n);
        let mut actions: Vec<(&str, &Node)> = Vec::new();
        let mut interval = None;
        let mut interval_node = None;
        let mut register_key = None;
        let mut t = TaskDef {
            name: String::new(),
            action: ActionDef::Run(String::new()),
            unless: None,
            when: None,
            retries: 0,
            delay: DEFAULT_DELAY,
            timeout: None,
            become_: None,
            env: BTreeMap::new(),
            register: None,
            wait_for: Vec::new(),
            after: None,
            changed_when: true,
            location: self.loc(n),
            fields: BTreeMap::new(),
        };
        for (key, k, v) in &entries {
            match key.as_str() {
                "name" => {
                    name_loc = self.loc(v);
                    name = self.string("name", v).filter(|s| !s.trim().is_empty());
                    if name.is_none() {
                        self.error(v, "a task name must not be empty", "give the task a short, unique name");
                    }
                }
                k if task::KEYS.contains(&k) => actions.push((key.as_str(), v)),
                "interval" => {
                    interval_node = Some(*k);
                    interval = self.duration("interval", v);
                }
                "unless" => {
                    fields.insert("unless".to_string(), self.loc(v));
                    t.unless = self.string("unless", v);
                }
                "when" => {
                    fields.insert("when".to_string(), self.loc(v));
                    t.when = match &v.value {
                        Yaml::Bool(b) => Some(b.to_string()),
                        _ => self.string("when", v),
                    };
                }
                "retries" => t.retries = self.count("retries", v).unwrap_or(0),
                "delay" => t.delay = self.duration("delay", v).unwrap_or(DEFAULT_DELAY),
                "timeout" => t.timeout = self.duration("timeout", v),
                "become" => t.become_ = self.boolean("become", v),
                "env" => t.env = self.env(v, &mut fields),
                "register" => {
                    register_key = Some(*k);
                    t.register = self.register(v);
                }
                "wait_for" => t.wait_for = self.wait_for(v),
                "changed_when" => t.changed_when = self.changed_when(v),
                "after" => {
                    fields.insert("after".to_string(), self.loc(v));
                    t.after = Some(match &v.value {
                        Yaml::Seq(items) if items.is_empty() => Vec::new(),
                        _ => self.texts("after", v),
                    });
                }
                _ => {}
            }
        }
        let action = match actions.as_slice() {
            [] if misspelled(n, task::KEYS) => None,
            [] => {
                self.error(
                    n,
                    "the task has no action",
                    format!("give it one of {}", one_of(task::KEYS)),
                );
                None
            }
            [(kind, v)] => ActionDef::parse(kind, self, v, &mut fields),
            [_, (kind, v), ..] => {
                self.error(
                    v,
                    format!("the task has more than one action (`{kind}` is the second)"),
                    format!(
                        "a task does exactly one of {}; split it into two tasks",
                        one_of(task::KEYS)
                    ),
                );
                None
            }
        };
        if entries.iter().all(|(k, _, _)| k != "name") && !misspelled(n, &["name"]) {
            self.error(n, "the task has no `name`", "add `name: <what it does>`");
        }
        if actions.iter().any(|(kind, _)| task::key_runs_on_jump_host(kind)) {
            self.node_only_keys(&entries);
        } else if let (Some(k), [(kind, _)]) = (register_key, actions.as_slice())
            && !task::key_registers(kind)
        {
            self.error(
                k,
                format!("`register` does not apply to a `{kind}` task: it has no output to keep"),
                "only a `run` task registers what it printed; remove `register`, or add a `run` task that \
                 prints the value (e.g. `run: cat FILE` with `register: NAME`)",
            );
        }
        let mut action = action?;
        t.timeout = t.timeout.or(action.default_timeout());
        match (action.interval(), interval_node) {
            (Some(slot), _) => {
                if let Some(interval) = interval {
                    *slot = interval;
                }
            }
            (None, Some(k)) => self.error(
                k,
                "`interval` only applies to `wait` tasks",
                "remove it, or use `delay`",
            ),
            (None, None) => {}
        }
        t.name = name?;
        t.action = action;
        t.location = name_loc;
        t.fields = fields;
        Some(t)
    }

    /// `changed_when: false` (a read-only task): a boolean only, not Ansible's expressions.
    fn changed_when(&mut self, v: &Node) -> bool {
        match &v.value {
            Yaml::Bool(b) => *b,
            other => {
                let kind = other.kind();
                self.error(
                    v,
                    format!("`changed_when` must be true or false, not {kind}"),
                    "write `changed_when: false` on a task that changes nothing (a check); kubeboot does not \
                     evaluate expressions here",
                );
                true
            }
        }
    }

    /// `register: NAME` or `register: { name, secret, line | json }`.
    fn register(&mut self, v: &Node) -> Option<RegisterDef> {
        const HINT: &str = "e.g. `register: token` or `register: { name: token, secret: true, line: -1 }`";
        let valid = |r: &mut Self, n: &Node, name: &str| -> bool {
            let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                r.error(
                    n,
                    format!("output name `{name}` is not allowed"),
                    "output names are used in templates (`{{ outputs.NAME }}`): letters, digits and `_`",
                );
            }
            ok
        };
        match &v.value {
            Yaml::Str(name) => valid(self, v, name).then(|| RegisterDef {
                name: name.clone(),
                secret: false,
                capture: Capture::Stdout,
                location: self.loc(v),
            }),
            Yaml::Map(_) => {
                let entries = self.mapping(v, REGISTER_KEYS, "`register`")?;
                let mut name = None;
                let mut secret = false;
                let mut capture = Capture::Stdout;
                let mut chosen: Option<&str> = None;
                for (key, k, val) in &entries {
                    match key.as_str() {
                        "name" => {
                            name = self.string("name", val).filter(|n| valid(self, val, n));
                        }
                        "secret" => secret = self.boolean("secret", val).unwrap_or(true),
                        "line" | "json" => {
                            if let Some(first) = chosen {
                                self.error(
                                    k,
                                    format!("`register` has both `{first}` and `{key}`"),
                                    "take one line, or one JSON value, not both",
                                );
                                continue;
                            }
                            chosen = Some(if key == "line" { "line" } else { "json" });
                            capture = if key == "line" {
                                match &val.value {
                                    Yaml::Int(i) if *i != 0 => Capture::Line(*i),
                                    _ => {
                                        self.error(
                                            val,
                                            "`line` must be a line number: 1 is the first line, -1 the last",
                                            "e.g. `line: -1` for the last line",
                                        );
                                        Capture::Stdout
                                    }
                                }
                            } else {
                                match self.string("json", val) {
                                    Some(path) => Capture::Json(path),
                                    None => Capture::Stdout,
                                }
                            };
                        }
                        _ => {}
                    }
                }
                if entries.iter().all(|(k, _, _)| k != "name") {
                    self.error(v, "`register` has no `name`", HINT);
                }
                Some(RegisterDef {
                    name: name?,
                    secret,
                    capture,
                    location: self.loc(v),
                })
            }
            other => {
                let kind = other.kind();
                self.error(v, format!("`register` must be a name or a mapping, not {kind}"), HINT);
                None
            }
        }
    }

    /// `wait_for: { node: ..., task: ... }` or a list of those.
    fn wait_for(&mut self, v: &Node) -> Vec<WaitForDef> {
        let items: Vec<&Node> = match &v.value {
            Yaml::Seq(items) => items.iter().collect(),
            Yaml::Map(_) => vec![v],
            other => {
                let kind = other.kind();
                self.error(
                    v,
                    format!("`wait_for` must be a mapping or a list of them, not {kind}"),
                    "e.g. `wait_for: { node: first-control-plane, task: kubeadm-init/kubeadm init }`",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in items {
            let Some(entries) = self.mapping(item, WAIT_FOR_KEYS, "`wait_for`") else {
                continue;
            };
            let mut nodes = None;
            let mut task = None;
            for (key, _k, val) in &entries {
                let text = self.string(key, val);
                match key.as_str() {
                    "node" => {
                        nodes = text.map(|t| match t.as_str() {
                            "first-control-plane" => WaitNodes::FirstControlPlane,
                            "control-planes" => WaitNodes::ControlPlanes,
                            "cluster" => WaitNodes::Cluster,
                            _ => WaitNodes::Named(t),
                        })
                    }
                    _ => task = text.filter(|t| !t.trim().is_empty()),
                }
            }
            for (key, what) in [("node", nodes.is_some()), ("task", task.is_some())] {
                if !what && entries.iter().all(|(k, _, _)| k != key) {
                    self.error(
                        item,
                        format!("`wait_for` has no `{key}`"),
                        "give `node` (a node name, first-control-plane, control-planes or cluster) and `task` (stage/task)",
                    );
                }
            }
            if let (Some(nodes), Some(task)) = (nodes, task) {
                out.push(WaitForDef {
                    nodes,
                    task,
                    location: self.loc(item),
                });
            }
        }
        out
    }

    /// `unless`, `env` and `become` on a task that runs on the jump host: each would silently do nothing.
    fn node_only_keys(&mut self, entries: &Entries) {
        for (key, k, _) in entries {
            if !NODE_ONLY_KEYS.contains(&key.as_str()) {
                continue;
            }
            let hint = match key.as_str() {
                "unless" => "`unless` runs a command on the node; use `when` for a condition",
                "env" => "give credentials in the task's own fields (`user`/`password`, `access_key`/`secret_key`)",
                _ => "remove it: nothing of this task runs on the node",
            };
            self.error(
                k,
                format!("`{key}` does not apply to a task that runs on the jump host"),
                hint,
            );
        }
    }

    fn env(&mut self, v: &Node, fields: &mut BTreeMap<String, Location>) -> BTreeMap<String, String> {
        let Yaml::Map(entries) = &v.value else {
            let kind = v.value.kind();
            self.error(
                v,
                format!("`env` must be a mapping, not {kind}"),
                "e.g. `env: { KEY: value }`",
            );
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (k, val) in entries {
            let key = k.value.scalar_text().unwrap_or_default();
            let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.error(
                    k,
                    format!("`{key}` is not a valid environment variable name"),
                    "use letters, digits and `_`, not starting with a digit",
                );
                continue;
            }
            if let Some(s) = self.string(&key, val) {
                fields.insert(format!("env.{key}"), self.loc(val));
                out.insert(key, s);
            }
        }
        out
    }
}

/// `` `a`, `b` or `c` `` for a hint.
fn one_of(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn to_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Int(i) => Json::from(*i),
        Yaml::Float(f) => serde_json::Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        Yaml::Str(s) => Json::String(s.clone()),
        Yaml::Seq(items) => Json::Array(items.iter().map(|n| to_json(&n.value)).collect()),
        Yaml::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.value.scalar_text().unwrap_or_default(), to_json(&v.value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let books = tmp.path().join("playbooks");
        let assets = tmp.path().join("assets");
        std::fs::create_dir_all(&books).unwrap();
        std::fs::create_dir_all(assets.join("containerd")).unwrap();
        std::fs::write(assets.join("containerd/config.toml"), "x").unwrap();
        for (n, t) in files {
            write(&books, n, t);
        }
        (tmp, books, assets)
    }

    const CONTAINERD: &str = r#"name: containerd
hosts: [central, node-1]
become: true
vars: { a: 1 }
tasks:
  - name: install containerd
    run: apt-get install -y containerd.io
    unless: dpkg -s containerd.io
    when: "{{ os_family == 'debian' }}"
    retries: 3
    delay: 10s
    timeout: 10m
    become: false
    env: { AWS_ACCESS_KEY_ID: "{{ secrets.s3 }}" }
  - name: containerd config
    copy: { src: containerd/config.toml, dest: /etc/containerd/config.toml, mode: 0600, owner: "root:root", template: true }
  - name: inline file
    copy: { content: "x={{ a }}\n", dest: /etc/x.conf }
  - name: wait for the API server
    wait: kubectl get --raw=/readyz
    interval: 2s
"#;

    #[test]
    fn a_good_playbook_set_loads_in_file_name_order() {
        let (_tmp, books, assets) = setup(&[
            ("10-containerd.yaml", CONTAINERD),
            (
                "00-first.yml",
                "name: first\nhosts: all\ntasks:\n  - name: a\n    run: 'true'\n",
            ),
        ]);
        let p = match load(&books, &assets) {
            Ok(p) => p,
            Err(d) => panic!("{d}"),
        };
        assert_eq!(
            p.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["first", "containerd"]
        );
        let s = &p.stages[1];
        assert!(s.become_);
        assert_eq!(s.hosts, Hosts::Select(vec!["central".into(), "node-1".into()]));
        let t = &s.tasks[0];
        assert_eq!(t.retries, 3);
        assert_eq!(t.delay, Duration::from_secs(10));
        assert_eq!(t.timeout, Some(Duration::from_secs(600)));
        assert_eq!(t.become_, Some(false));
        assert_eq!(t.location.line, 6);
        assert_eq!(t.fields["run"].line, 7);
        let ActionDef::Copy(c) = &s.tasks[1].action else {
            panic!()
        };
        assert_eq!(c.mode, 0o600);
        assert!(c.template);
        let ActionDef::Wait(w) = &s.tasks[3].action else {
            panic!()
        };
        assert_eq!(w.interval, Duration::from_secs(2));
        assert_eq!(s.tasks[3].timeout, Some(Duration::from_secs(300)));
    }

    #[test]
    fn task_problems_point_at_the_offending_key() {
        let (_tmp, books, assets) = setup(&[(
            "a.yaml",
            "name: a\nhosts: all\ntasks:\n  - name: x\n    rnu: ls\n  - name: y\n    copy: { src: containerd/config.tom, dest: /x }\n",
        )]);
        let e = load(&books, &assets).unwrap_err().to_string();
        assert!(e.contains("a.yaml:5:5: error: unknown key `rnu` in a task"), "{e}");
        assert!(e.contains("did you mean `run`?"), "{e}");
        assert!(!e.contains("the task has no action"), "the typo already says it: {e}");
        assert!(
            e.contains("a.yaml:7:18: error: asset `containerd/config.tom` does not exist"),
            "{e}"
        );
        assert!(e.contains("did you mean `containerd/config.toml`?"), "{e}");
    }
}
