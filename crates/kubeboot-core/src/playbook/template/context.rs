//! The per-node context templates are rendered with: the layered vars, the `node`, `cluster`,
//! `clusters`, `nodes` and `central` objects, `[sources]`, facts, and the placeholders of secrets
//! and outputs.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::Value as Json;

use super::{FUEL, oci_api_base};
use crate::facts::Facts;
use crate::inventory::{Cluster, Inventory, Node, NodeRole, Role};
use crate::playbook::model::Stage;

/// The outputs each node registers: node → output name → secret.
pub type Registry = BTreeMap<String, BTreeMap<String, bool>>;

/// The variables one node's tasks are rendered with.
#[derive(Debug, Clone)]
pub struct Context {
    pub(super) vars: BTreeMap<String, Value>,
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

    pub(super) fn value(&self) -> Value {
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
