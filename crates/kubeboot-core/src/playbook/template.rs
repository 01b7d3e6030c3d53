//! Templating of playbook fields and assets (minijinja, strict undefined), with the per-node context.
//!
//! Undefined names are caught twice: statically (every name a template reads must exist in the context,
//! even in a branch not taken with these facts) and while rendering (strict undefined behavior).
//!
//! One job (templating and its context), kept in one file past ~600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use serde_json::Value as Json;

use super::model::{Location, Stage};
use crate::diag::{Diagnostic, closest};
use crate::facts::Facts;
use crate::inventory::{Cluster, Inventory, Node, NodeRole, Role};

/// The outputs each node registers: node → output name → secret.
pub type Registry = BTreeMap<String, BTreeMap<String, bool>>;

/// Names minijinja provides itself; never reported as undefined.
const BUILTINS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "cycler",
    "joiner",
    "lipsum",
    "loop",
    "self",
    "super",
    "caller",
    "varargs",
    "kwargs",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
];

/// The variables one node's tasks are rendered with.
#[derive(Debug, Clone)]
pub struct Context {
    vars: BTreeMap<String, Value>,
    /// `[sources]` texts that did not render for this node (reported by the plan).
    problems: Vec<String>,
}

impl Context {
    /// The context for `node` in `stage`: `[vars]` < cluster vars < node vars < stage vars, then the
    /// `node`/`cluster`/`clusters`/`nodes`/`central` objects, then facts, then `secrets` and `outputs` (placeholders
    /// only: [`crate::outputs`]). `nodes` is a list that may also be indexed by name: `nodes['node-194']`.
    pub fn new(inv: &Inventory, node: &Node, stage: &Stage, facts: &Facts, outputs: &Registry) -> Context {
        Self::build(inv, node, Some(&stage.vars), facts, outputs)
    }

    /// The context for `node` outside any stage (what `kubeboot bundle` reads the sources from).
    pub fn for_node(inv: &Inventory, node: &Node, facts: &Facts) -> Context {
        Self::build(inv, node, None, facts, &Registry::new())
    }

    fn build(
        inv: &Inventory,
        node: &Node,
        stage_vars: Option<&BTreeMap<String, serde_json::Value>>,
        facts: &Facts,
        outputs: &Registry,
    ) -> Context {
        let node_object = |n: &Node| node_object(inv, n, outputs);
        let mut vars: BTreeMap<String, Value> = BTreeMap::new();
        let cluster = node.cluster.as_deref().and_then(|c| inv.cluster(c));
        let layers = [Some(&inv.vars), cluster.map(|c| &c.vars), Some(&node.vars), stage_vars];
        for layer in layers.into_iter().flatten() {
            for (k, v) in layer {
                vars.insert(k.clone(), to_value(v));
            }
        }
        vars.insert("node".into(), node_object(node));
        vars.insert("outputs".into(), outputs_object(&node.name, outputs));
        if let Some(c) = cluster {
            let names: Vec<Value> = members(inv, c).map(|n| Value::from(n.name.as_str())).collect();
            vars.insert("cluster".into(), cluster_object(inv, c, names));
        }
        let clusters: Vec<Value> = inv.clusters.iter().map(|c| full_cluster(inv, c, outputs)).collect();
        vars.insert("clusters".into(), Value::from(clusters));
        vars.insert(
            "nodes".into(),
            Value::from_object(NodeList(
                inv.nodes.iter().map(|n| (n.name.clone(), node_object(n))).collect(),
            )),
        );
        if let Some(c) = inv.clusters.iter().find(|c| c.role == Role::Central) {
            vars.insert("central".into(), full_cluster(inv, c, outputs));
        }
        let facts_map = facts_object(facts);
        for (k, v) in &facts_map {
            vars.insert(k.clone(), v.clone());
        }
        vars.insert("facts".into(), Value::from(facts_map));
        let secrets: BTreeMap<String, Value> = inv
            .secrets
            .keys()
            .map(|name| (name.clone(), Value::from(crate::secrets::placeholder(name))))
            .collect();
        vars.insert("secrets".into(), Value::from(secrets));
        let (sources, problems) = sources_object(inv, node, &vars);
        vars.insert("sources".into(), sources);
        Context { vars, problems }
    }

    /// `[sources]` texts that did not render with this node's variables.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The value of a top-level name (for tests and `when` evaluation).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }

    fn value(&self) -> Value {
        Value::from(self.vars.clone())
    }
}

/// `sources`: where the node gets each artifact, every text rendered with the node's variables
/// and facts (so `{{ kubernetes_version }}` in a source URL is the node's cluster's). A text that
/// does not render is kept as written and reported in `problems`.
fn sources_object(inv: &Inventory, node: &Node, vars: &BTreeMap<String, Value>) -> (Value, Vec<String>) {
    let src = &inv.sources;
    let bundle_url = src.bundle_url(inv.bundle_port(node));
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    let mut scope = vars.clone();
    scope.insert(
        "sources".into(),
        Value::from(BTreeMap::from([(
            "bundle_url".to_string(),
            Value::from(bundle_url.as_str()),
        )])),
    );
    let scope = Value::from(scope);
    let mut problems = Vec::new();
    let mut text = |what: &str, t: &str| -> Value {
        if !t.contains("{{") && !t.contains("{%") {
            return Value::from(t);
        }
        match env.render_str(t, scope.clone()) {
            Ok(r) => Value::from(r),
            // A default needing variables this inventory does not set (own playbooks without helm) is
            // just not offered; what the operator wrote must render.
            Err(_) if !src.written.contains(what) => Value::from(""),
            Err(e) => {
                problems.push(format!("[sources] {what} `{t}` does not render for {}: {e}", node.name));
                Value::from(t)
            }
        }
    };
    let mut urls: Vec<Value> = Vec::new();
    let mut url_entry = |what: String, url: &Value| {
        let Some(text) = url.as_str().filter(|u| !u.is_empty()) else {
            return;
        };
        let host = url::Url::parse(text)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
            .unwrap_or_default();
        urls.push(Value::from(BTreeMap::from([
            ("name".to_string(), Value::from(what)),
            ("url".to_string(), url.clone()),
            ("host".to_string(), Value::from(host)),
        ])));
    };
    let mut repos = |family: &str, map: &BTreeMap<String, crate::inventory::sources::Repo>| -> Value {
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        for (name, r) in map {
            let url = text(&format!("{family}.{name}.url"), &r.url);
            let key = text(&format!("{family}.{name}.key"), &r.key);
            let mut m = BTreeMap::new();
            m.insert("suite".to_string(), text(&format!("{family}.{name}.suite"), &r.suite));
            m.insert(
                "components".to_string(),
                text(&format!("{family}.{name}.components"), &r.components),
            );
            m.insert("url".to_string(), url.clone());
            m.insert("key".to_string(), key.clone());
            out.insert(name.clone(), Value::from(m));
        }
        Value::from(out)
    };
    let apt = repos("apt", &src.apt);
    let dnf = repos("dnf", &src.dnf);
    let mut releases: BTreeMap<String, Value> = BTreeMap::new();
    for (name, r) in &src.releases {
        let mut m = BTreeMap::new();
        m.insert("url".to_string(), text(&format!("releases.{name}.url"), &r.url));
        m.insert(
            "sha256".to_string(),
            text(&format!("releases.{name}.sha256"), &r.sha256),
        );
        releases.insert(name.clone(), Value::from(m));
    }
    let mut charts: BTreeMap<String, Value> = BTreeMap::new();
    for (name, c) in &src.charts {
        let repo = text(&format!("charts.{name}.repo"), &c.repo);
        charts.insert(name.clone(), Value::from(BTreeMap::from([("repo".to_string(), repo)])));
    }
    let mut registries: Vec<Value> = Vec::new();
    for (name, r) in &src.registries {
        let mut m = BTreeMap::new();
        m.insert("name".to_string(), Value::from(name.as_str()));
        m.insert(
            "mirror".to_string(),
            text(&format!("registries.{name}.mirror"), &r.mirror),
        );
        m.insert("skip_verify".to_string(), Value::from(r.skip_verify));
        m.insert("ca".to_string(), Value::from(r.ca_file.is_some()));
        m.insert("ca_pem".to_string(), Value::from(r.ca_pem.as_str()));
        m.insert(
            "auth".to_string(),
            Value::from(r.username.is_some() && r.password.is_some()),
        );
        m.insert(
            "username_secret".to_string(),
            Value::from(crate::inventory::registry_secret(name, "username")),
        );
        m.insert(
            "password_secret".to_string(),
            Value::from(crate::inventory::registry_secret(name, "password")),
        );
        registries.push(Value::from(m));
    }
    // Every place a node downloads from, for the preflight check (the bundle itself is one).
    let family = vars.get("os_family").and_then(|v| v.as_str().map(str::to_string));
    let (family_name, family_repos) = if family.as_deref() == Some("redhat") {
        ("dnf", &dnf)
    } else {
        ("apt", &apt)
    };
    if let Ok(iter) = family_repos.try_iter() {
        for name in iter {
            if let Ok(repo) = family_repos.get_item(&name)
                && let Ok(url) = repo.get_attr("url")
            {
                url_entry(format!("{family_name} {name}"), &url);
            }
        }
    }
    for (name, r) in &releases {
        if let Ok(url) = r.get_attr("url") {
            url_entry(format!("release {name}"), &url);
        }
    }
    for (name, c) in &charts {
        if let Ok(repo) = c.get_attr("repo") {
            // An OCI registry (`oci://HOST/PATH`, which the node's helm pulls from) answers at
            // https://HOST/v2/: any HTTP status, 401 without credentials included.
            let repo = match repo.as_str().and_then(oci_api_base) {
                Some(url) => Value::from(url),
                None => repo,
            };
            url_entry(format!("chart {name}"), &repo);
        }
    }
    for r in &registries {
        if let (Ok(name), Ok(mirror)) = (r.get_attr("name"), r.get_attr("mirror")) {
            url_entry(format!("registry mirror for {name}"), &mirror);
        }
    }
    if !bundle_url.is_empty() {
        url_entry("bundle".into(), &Value::from(format!("{bundle_url}/")));
    }
    let mut m: BTreeMap<String, Value> = BTreeMap::new();
    m.insert("bundle".into(), Value::from(src.bundle.is_some()));
    m.insert("bundle_url".into(), Value::from(bundle_url.as_str()));
    m.insert(
        "images_url".into(),
        Value::from(if bundle_url.is_empty() {
            String::new()
        } else {
            format!("{bundle_url}/images/")
        }),
    );
    m.insert("proxy".into(), text("proxy", &src.proxy));
    m.insert("no_proxy".into(), Value::from(src.no_proxy.join(",")));
    m.insert("containerd".into(), Value::from(src.containerd.as_str()));
    m.insert(
        "image_repository".into(),
        text("image_repository", &src.image_repository),
    );
    m.insert("apt".into(), apt);
    m.insert("dnf".into(), dnf);
    m.insert("releases".into(), Value::from(releases));
    m.insert("charts".into(), Value::from(charts));
    m.insert("registries".into(), Value::from(registries));
    m.insert("urls".into(), Value::from(urls));
    (Value::from(m), problems)
}

fn members<'a>(inv: &'a Inventory, c: &'a Cluster) -> impl Iterator<Item = &'a Node> + 'a {
    inv.nodes
        .iter()
        .filter(move |n| n.cluster.as_deref() == Some(c.name.as_str()))
}

/// Every node, in inventory order, also reachable by name (`nodes['node-194']`).
#[derive(Debug)]
struct NodeList(Vec<(String, Value)>);

impl minijinja::value::Object for NodeList {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Seq
    }

    fn get_value(self: &std::sync::Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str() {
            Some(name) => self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
            None => self.0.get(key.as_usize()?).map(|(_, v)| v.clone()),
        }
    }

    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Seq(self.0.len())
    }
}

/// A node's outputs as placeholders the engine fills when it sends a command.
fn outputs_object(node: &str, outputs: &Registry) -> Value {
    let m: BTreeMap<String, Value> = outputs
        .get(node)
        .into_iter()
        .flatten()
        .map(|(name, secret)| {
            (
                name.clone(),
                Value::from(crate::outputs::placeholder(node, name, *secret)),
            )
        })
        .collect();
    Value::from(m)
}

fn node_object(inv: &Inventory, n: &Node, outputs: &Registry) -> Value {
    let mut m: BTreeMap<String, Value> = BTreeMap::new();
    m.insert("name".into(), Value::from(n.name.as_str()));
    m.insert("role".into(), Value::from(n.role.as_str()));
    m.insert(
        "first_control_plane".into(),
        Value::from(inv.first_control_plane(n).is_some_and(|f| f.name == n.name)),
    );
    m.insert("outputs".into(), outputs_object(&n.name, outputs));
    m.insert("address".into(), Value::from(n.address.as_str()));
    m.insert("port".into(), Value::from(n.ssh.port));
    m.insert("user".into(), Value::from(n.ssh.user.as_str()));
    if let Some(c) = &n.cluster {
        m.insert("cluster".into(), Value::from(c.as_str()));
    }
    Value::from(m)
}

/// A cluster: its vars, then its fixed fields (which win over vars of the same name).
fn cluster_object(inv: &Inventory, c: &Cluster, nodes: Vec<Value>) -> Value {
    let mut m: BTreeMap<String, Value> = c.vars.iter().map(|(k, v)| (k.clone(), to_value(v))).collect();
    m.insert("name".into(), Value::from(c.name.as_str()));
    let with_role = |role: NodeRole| -> Vec<Value> {
        members(inv, c)
            .filter(|n| n.role == role)
            .map(|n| Value::from(n.name.as_str()))
            .collect()
    };
    let control_planes = with_role(NodeRole::ControlPlane);
    if let Some(first) = control_planes.first() {
        m.insert("first_control_plane".into(), first.clone());
    }
    m.insert("control_planes".into(), Value::from(control_planes));
    m.insert("workers".into(), Value::from(with_role(NodeRole::Worker)));
    m.insert("multi_node".into(), Value::from(members(inv, c).count() > 1));
    // The address the API server is reached at: the virtual IP of a cluster of several nodes, else the node.
    let endpoint = match (c.vip, members(inv, c).next()) {
        (Some(vip), _) => Some(vip.to_string()),
        (None, Some(only)) => Some(only.address.clone()),
        (None, None) => None,
    };
    if let Some(e) = endpoint {
        m.insert("api_host".into(), Value::from(e));
    }
    if let Some(vip) = c.vip {
        m.insert("vip".into(), Value::from(vip.to_string()));
    }
    m.insert("role".into(), Value::from(c.role.as_str()));
    if let Some(ip) = c.lb_ip {
        m.insert("lb_ip".into(), Value::from(ip.to_string()));
    }
    if let Some(d) = &c.domain {
        m.insert("domain".into(), Value::from(d.as_str()));
    }
    m.insert("nodes".into(), Value::from(nodes));
    Value::from(m)
}

fn full_cluster(inv: &Inventory, c: &Cluster, outputs: &Registry) -> Value {
    cluster_object(inv, c, members(inv, c).map(|n| node_object(inv, n, outputs)).collect())
}

fn facts_object(f: &Facts) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("os_family".into(), Value::from(f.os_family.as_str()));
    m.insert("os_id".into(), Value::from(f.os_id.as_str()));
    m.insert("os_version".into(), Value::from(f.os_version.as_str()));
    m.insert("os_version_major".into(), Value::from(f.os_version_major));
    m.insert("arch".into(), Value::from(f.arch.as_str()));
    m.insert("hostname".into(), Value::from(f.hostname.as_str()));
    m.insert("cpus".into(), Value::from(f.cpus));
    m.insert("memory_mb".into(), Value::from(f.memory_mb));
    m.insert("disk_gb".into(), Value::from(f.disk_gb));
    m.insert("user".into(), Value::from(f.user.as_str()));
    m
}

/// A variable from the inventory or a playbook as a template value.
fn to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::from(n.to_string()),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::from(a.iter().map(to_value).collect::<Vec<_>>()),
        Json::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// Renders templates for one context; problems become diagnostics at the field's place.
pub struct Renderer {
    env: Environment<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

/// Template instructions one render may execute: far more than any shipped template needs, and
/// it stops a runaway loop at plan time instead of hanging the plan.
const FUEL: u64 = 100_000;

impl Renderer {
    /// A strict renderer that keeps trailing newlines (files must stay byte-exact).
    pub fn new() -> Renderer {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        if let Ok(syntax) = SyntaxConfig::builder().keep_trailing_newline(true).build() {
            env.set_syntax(syntax);
        }
        Renderer { env }
    }

    /// Renders `text` (a template written at `at`); `field` names it in messages.
    pub fn render(&self, text: &str, at: &Location, field: &str, ctx: &Context) -> Result<String, Vec<Diagnostic>> {
        if !text.contains("{{") && !text.contains("{%") && !text.contains("{#") {
            return Ok(text.to_string());
        }
        let tmpl = self
            .env
            .template_from_str(text)
            .map_err(|e| vec![template_error(&e, at, field)])?;
        let problems = undefined_names(text, tmpl.undeclared_variables(true), at, field, ctx);
        if !problems.is_empty() {
            return Err(problems);
        }
        tmpl.render(ctx.value())
            .map_err(|e| vec![template_error(&e, at, field)])
    }

    /// Evaluates a `when` condition: `{{ expr }}` or a bare expression.
    pub fn condition(&self, text: &str, at: &Location, ctx: &Context) -> Result<bool, Vec<Diagnostic>> {
        let trimmed = text.trim();
        let expr = trimmed
            .strip_prefix("{{")
            .and_then(|t| t.strip_suffix("}}"))
            .filter(|inner| !inner.contains("{{") && !inner.contains("}}"))
            .unwrap_or(trimmed);
        let compiled = self
            .env
            .compile_expression(expr)
            .map_err(|e| vec![template_error(&e, at, "when")])?;
        let problems = undefined_names(expr, compiled.undeclared_variables(true), at, "when", ctx);
        if !problems.is_empty() {
            return Err(problems);
        }
        compiled
            .eval(ctx.value())
            .map(|v| v.is_true())
            .map_err(|e| vec![template_error(&e, at, "when")])
    }
}

/// A minijinja error as a diagnostic at the field's line plus the template's own line.
fn template_error(e: &minijinja::Error, at: &Location, field: &str) -> Diagnostic {
    let tline = e.line().unwrap_or(1).max(1);
    let column = if tline == 1 { at.column } else { 1 };
    let what = match e.kind() {
        ErrorKind::SyntaxError => "template syntax error",
        ErrorKind::UndefinedError => "undefined variable",
        ErrorKind::OutOfFuel => "template does too much work",
        _ => "template error",
    };
    let detail = e.detail().map(str::to_string).unwrap_or_else(|| e.kind().to_string());
    let outputs = e.kind() == ErrorKind::UndefinedError && e.to_string().contains("outputs");
    let hint = match e.kind() {
        _ if outputs => "no task of that node registers this output: add `register: NAME` to the task that prints it",
        ErrorKind::SyntaxError => "check the {{ }} / {% %} pairs and the expression syntax",
        ErrorKind::UndefinedError => "define it in [vars], the cluster or node vars, or the stage's `vars`",
        ErrorKind::OutOfFuel => {
            "it ran over 100000 template steps: shorten its loops, or move the work into the shell command"
        }
        _ => "check the expression and the types of the values it uses",
    };
    Diagnostic::at(
        &at.file,
        at.line + tline - 1,
        column,
        format!("{what} in `{field}`: {detail}"),
    )
    .with_hint(hint)
}

/// Names (and `a.b` lookups) the template reads that the context does not have.
fn undefined_names(
    source: &str,
    names: std::collections::HashSet<String>,
    at: &Location,
    field: &str,
    ctx: &Context,
) -> Vec<Diagnostic> {
    let sorted: BTreeSet<String> = names.into_iter().collect();
    let mut out = Vec::new();
    for path in sorted {
        let mut parts = path.split('.');
        let Some(top) = parts.next() else { continue };
        if BUILTINS.contains(&top) || guarded(source, top) {
            continue;
        }
        let Some(mut value) = ctx.vars.get(top).cloned() else {
            let hint = match closest(top, ctx.vars.keys().map(String::as_str)) {
                Some(m) => format!("did you mean `{m}`?"),
                None => "define it in [vars], the cluster or node vars, or the stage's `vars`".into(),
            };
            out.push(undefined_at(
                source,
                top,
                at,
                field,
                format!("`{top}` is not defined"),
                hint,
            ));
            continue;
        };
        let mut walked = top.to_string();
        for attr in parts {
            if value.kind() != minijinja::value::ValueKind::Map {
                break;
            }
            let keys: Vec<String> = value
                .try_iter()
                .map(|it| it.filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let Ok(next) = value.get_attr(attr) else { break };
            if next.is_undefined() && !guarded(source, &format!("{walked}.{attr}")) {
                let hint = if top == "outputs" {
                    format!(
                        "no task of this node registers `{attr}` (add `register: {attr}` to the task that prints it); registered here: {}",
                        keys.join(", ")
                    )
                } else if top == "secrets" {
                    match closest(attr, keys.iter().map(String::as_str)) {
                        Some(m) => format!("did you mean `{m}`? secrets are declared in the inventory's [secrets]"),
                        None => "declare it in the inventory's [secrets] as `NAME = { env = \"VAR\" }`".into(),
                    }
                } else {
                    match closest(attr, keys.iter().map(String::as_str)) {
                        Some(m) => format!("did you mean `{walked}.{m}`?"),
                        None => format!("`{walked}` has: {}", keys.join(", ")),
                    }
                };
                let msg = if top == "secrets" {
                    format!("unknown secret `{attr}`")
                } else {
                    format!("`{walked}.{attr}` is not defined")
                };
                out.push(undefined_at(source, &format!("{walked}.{attr}"), at, field, msg, hint));
                break;
            }
            walked = format!("{walked}.{attr}");
            value = next;
        }
    }
    out
}

/// True when the template itself makes the name optional: `is defined` / `is undefined`
/// tests, or a `default` filter (both work on undefined values even in strict mode).
fn guarded(source: &str, name: &str) -> bool {
    let tests = ["is defined", "is not defined", "is undefined"]
        .iter()
        .any(|t| source.contains(&format!("{name} {t}")));
    let defaulted = ["|default(", "| default(", "|d(", "| d("]
        .iter()
        .any(|f| source.contains(&format!("{name}{f}")) || source.contains(&format!("{name} {f}")));
    tests || defaulted
}

/// A diagnostic at the first line of the template that mentions `needle`.
fn undefined_at(source: &str, needle: &str, at: &Location, field: &str, msg: String, hint: String) -> Diagnostic {
    let tline = source
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(1);
    let column = if tline == 1 { at.column } else { 1 };
    Diagnostic::at(
        &at.file,
        at.line + tline - 1,
        column,
        format!("undefined variable in `{field}`: {msg}"),
    )
    .with_hint(hint)
}

/// Location of line 1 of a file (templated assets report the asset file and the template line).
pub fn file_start(file: &Path) -> Location {
    Location {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
    }
}

/// `https://HOST/v2/` for a chart repository `oci://HOST/PATH` (the OCI distribution API's base), else None.
// checked: OCI distribution-spec v1.1 spec.md (end-1: GET /v2/, 200 or 401), helm pkg/registry (oci://host/path)
pub fn oci_api_base(repo: &str) -> Option<String> {
    let rest = repo.strip_prefix("oci://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(format!("https://{host}/v2/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::parse;
    use crate::playbook::Hosts;

    fn inventory() -> Inventory {
        let text = r#"
[[clusters]]
name = "c1"
role = "central"
lb_ip = "10.0.0.100"
[clusters.vars]
level = "cluster"
only_cluster = 1

[[nodes]]
name = "n1"
address = "10.0.0.1"
cluster = "c1"
[nodes.vars]
level = "node"

[vars]
level = "global"
only_global = 2
os_family = "overridden by facts"

[secrets]
s3 = { env = "X" }
"#;
        match parse(Path::new("inventory.toml"), text) {
            Ok(i) => i,
            Err(d) => panic!("{d}"),
        }
    }

    fn stage(vars: &[(&str, Json)]) -> Stage {
        Stage {
            name: "s".into(),
            file: "s.yaml".into(),
            hosts: Hosts::All,
            become_: false,
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            wait_for: vec![],
            serial: false,
            once_per_cluster: false,
            tasks: vec![],
            location: file_start(Path::new("s.yaml")),
            hosts_location: file_start(Path::new("s.yaml")),
        }
    }

    fn at(line: usize) -> Location {
        Location {
            file: "s.yaml".into(),
            line,
            column: 10,
        }
    }

    fn render(text: &str, st: &Stage) -> Result<String, String> {
        let inv = inventory();
        let ctx = Context::new(&inv, &inv.nodes[0], st, &Facts::assumed(), &Registry::new());
        Renderer::new()
            .render(text, &at(5), "run", &ctx)
            .map_err(|d| d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))
    }

    #[test]
    fn a_runaway_loop_is_a_plan_error_not_a_hang() {
        let err = render(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            &stage(&[]),
        )
        .unwrap_err();
        assert!(err.contains("s.yaml:5:10"), "{err}");
        assert!(err.contains("template does too much work"), "{err}");
        assert!(err.contains("100000 template steps"), "{err}");
    }

    #[test]
    fn later_layers_override_earlier_ones() {
        assert_eq!(render("{{ level }}", &stage(&[])).unwrap(), "node");
        assert_eq!(
            render("{{ level }}", &stage(&[("level", Json::from("stage"))])).unwrap(),
            "stage"
        );
        assert_eq!(
            render("{{ only_global }}/{{ only_cluster }}", &stage(&[])).unwrap(),
            "2/1"
        );
        assert_eq!(
            render("{{ os_family }}/{{ facts.arch }}", &stage(&[])).unwrap(),
            "debian/x86_64"
        );
    }

    #[test]
    fn a_default_filter_makes_a_variable_optional_but_a_bare_typo_still_fails() {
        let st = stage(&[]);
        assert_eq!(render("{{ retention | default('30d') }}", &st).unwrap(), "30d");
        assert_eq!(render("{{ retention|d('1h') }}", &st).unwrap(), "1h");
        assert!(render("{{ retention }}", &st).unwrap_err().contains("retention"));
    }

    #[test]
    fn node_cluster_and_central_objects_are_available() {
        let st = stage(&[]);
        assert_eq!(
            render(
                "{{ node.name }}@{{ node.address }}:{{ node.port }} {{ cluster.lb_ip }} {{ cluster.nodes[0] }}",
                &st
            )
            .unwrap(),
            "n1@10.0.0.1:22 10.0.0.100 n1"
        );
        assert_eq!(
            render("{{ central.nodes[0].address }} {{ nodes|length }}", &st).unwrap(),
            "10.0.0.1 1"
        );
        assert_eq!(render("{{ cluster.level }}", &st).unwrap(), "cluster");
    }

    #[test]
    fn secrets_render_as_placeholders_and_unknown_ones_fail() {
        let st = stage(&[]);
        assert_eq!(
            render("{{ secrets.s3 }}", &st).unwrap(),
            crate::secrets::placeholder("s3")
        );
        let e = render("{{ secrets.s4 }}", &st).unwrap_err();
        assert!(
            e.contains("s.yaml:5:10: error: undefined variable in `run`: unknown secret `s4`"),
            "{e}"
        );
    }

    #[test]
    fn a_typo_in_a_branch_not_taken_is_still_reported() {
        let e = render(
            "line one\n{% if false %}{{ kubernets_version }}{% endif %}",
            &stage(&[]),
        )
        .unwrap_err();
        assert!(
            e.contains("s.yaml:6:1: error: undefined variable in `run`: `kubernets_version`"),
            "{e}"
        );
        let e = render("{{ node.adress }}", &stage(&[])).unwrap_err();
        assert!(e.contains("did you mean `node.address`?"), "{e}");
    }

    #[test]
    fn syntax_errors_point_at_the_template_line() {
        let e = render("a\nb {{ x + }}\n", &stage(&[])).unwrap_err();
        assert!(e.contains("s.yaml:6:1: error: template syntax error in `run`"), "{e}");
    }

    #[test]
    fn trailing_newlines_are_kept() {
        assert_eq!(render("x={{ level }}\n", &stage(&[])).unwrap(), "x=node\n");
    }

    #[test]
    fn conditions_accept_braces_or_bare_expressions() {
        let inv = inventory();
        let st = stage(&[]);
        let ctx = Context::new(&inv, &inv.nodes[0], &st, &Facts::assumed(), &Registry::new());
        let r = Renderer::new();
        assert_eq!(r.condition("{{ os_family == 'debian' }}", &at(1), &ctx), Ok(true));
        assert_eq!(r.condition("os_family == 'redhat'", &at(1), &ctx), Ok(false));
        assert!(r.condition("os_famly == 'x'", &at(1), &ctx).is_err());
    }
}
