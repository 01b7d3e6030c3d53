//! One task of a stage: its action (the task kinds' keys, [`task::KEYS`]), the keys every task may
//! have, and the readers of the keys that are more than a scalar (`register`, `wait_for`, `env`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::Diagnostic;
use crate::playbook::model::{ActionDef, Capture, Location, RegisterDef, TaskDef, WaitForDef, WaitNodes};
use crate::spanned::{Entries, Node, Reader, Value, misspelled};
use crate::task;

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

impl Reader<'_> {
    pub(super) fn tasks(&mut self, v: &Node) -> Vec<TaskDef> {
        let Value::Seq(items) = &v.value else {
            if !matches!(v.value, Value::Null) {
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
                        Value::Bool(b) => Some(b.to_string()),
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
                        Value::Seq(items) if items.is_empty() => Vec::new(),
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
            Value::Bool(b) => *b,
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
            Value::Str(name) => valid(self, v, name).then(|| RegisterDef {
                name: name.clone(),
                secret: false,
                capture: Capture::Stdout,
                location: self.loc(v),
            }),
            Value::Map(_) => {
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
                                    Value::Int(i) if *i != 0 => Capture::Line(*i),
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
    pub(super) fn wait_for(&mut self, v: &Node) -> Vec<WaitForDef> {
        let items: Vec<&Node> = match &v.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Map(_) => vec![v],
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
        let Value::Map(entries) = &v.value else {
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
