//! Reading `inventory.toml` into an [`Inventory`], reporting every problem with file, line and column.
//!
//! The file is parsed into toml's spanned document tree (not straight into structs) so that one pass can
//! report all unknown keys, wrong types and semantic problems at once, each at its own position.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::model::{Cluster, Inventory, Node, NodeRole, Role, SecretSource, SshSettings};
use crate::diag::{Diagnostic, Diagnostics, closest};

const TOP_KEYS: &[&str] = &["ssh", "clusters", "nodes", "vars", "secrets", "sources"];
const SSH_KEYS: &[&str] = &[
    "user",
    "port",
    "key",
    "agent",
    "password_env",
    "password_file",
    "sudo_password_env",
    "sudo_password_file",
    "known_hosts",
    "accept_new_host_keys",
    "connect_timeout",
    "keepalive",
    "persistent_shell",
];
const CLUSTER_KEYS: &[&str] = &["name", "role", "lb_ip", "domain", "vip", "vars"];
const NODE_KEYS: &[&str] = &[
    "name",
    "address",
    "ssh_address",
    "cluster",
    "role",
    "vars",
    "bundle_port",
];
pub(super) const BUNDLE_PORT_HINT: &str = "a free port on the nodes' 127.0.0.1; the bundle is served there";
const SECRET_HINT: &str = "keep secrets out of the inventory: use `password_env = \"VAR\"` (an environment variable) \
                           or `password_file = \"path\"` (a file readable only by you)";

/// Reads and validates an inventory file.
pub fn load(path: &Path) -> Result<Inventory, Diagnostics> {
    let bytes = std::fs::read(path).map_err(|e| {
        Diagnostic::file(path, format!("cannot read the inventory: {e}")).with_hint("check the -i path")
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(&e.into_bytes()[..offset]).into_owned();
            return Err(
                Diagnostic::at_offset(path, &text, offset, "the inventory is not valid UTF-8 text")
                    .with_hint("save the file as UTF-8")
                    .into(),
            );
        }
    };
    parse(path, &text)
}

/// Validates inventory text that was read from `path` (relative paths resolve against its folder).
pub fn parse(path: &Path, text: &str) -> Result<Inventory, Diagnostics> {
    let mut r = Reader {
        file: path,
        src: text,
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        diags: Diagnostics::default(),
    };
    if text.trim().is_empty() {
        return Err(Diagnostic::file(path, "the inventory is empty")
            .with_hint("add at least one [[nodes]] entry with `name` and `address`")
            .into());
    }
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            r.diags.push(
                Diagnostic::at_offset(path, text, offset, format!("TOML syntax error: {}", e.message().trim()))
                    .with_hint("see https://toml.io for the syntax"),
            );
        }
        return Err(r.diags);
    }
    let doc = doc.into_inner();
    let inv = r.inventory(&doc);
    r.diags.0.sort_by_key(|d| (d.line, d.column));
    r.diags.into_result(inv)
}

/// SSH settings as written in `[ssh]` or a node, before defaults apply.
#[derive(Default, Clone)]
struct SshPartial {
    user: Option<String>,
    port: Option<u16>,
    key: Option<PathBuf>,
    agent: Option<bool>,
    password: Option<SecretSource>,
    sudo_password: Option<SecretSource>,
    known_hosts: Option<PathBuf>,
    accept_new_host_keys: Option<bool>,
    connect_timeout: Option<Duration>,
    keepalive: Option<Duration>,
    persistent_shell: Option<bool>,
}

impl SshPartial {
    /// `self` (a node's settings) over `defaults` (`[ssh]`), then the built-in defaults.
    fn merged(&self, defaults: &SshPartial) -> SshSettings {
        let home = home();
        SshSettings {
            user: self
                .user
                .clone()
                .or_else(|| defaults.user.clone())
                .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "root".into())),
            port: self.port.or(defaults.port).unwrap_or(22),
            key: self.key.clone().or_else(|| defaults.key.clone()),
            agent: self.agent.or(defaults.agent).unwrap_or(true),
            password: self.password.clone().or_else(|| defaults.password.clone()),
            sudo_password: self.sudo_password.clone().or_else(|| defaults.sudo_password.clone()),
            known_hosts: self
                .known_hosts
                .clone()
                .or_else(|| defaults.known_hosts.clone())
                .unwrap_or_else(|| home.join(".ssh/known_hosts")),
            accept_new_host_keys: self
                .accept_new_host_keys
                .or(defaults.accept_new_host_keys)
                .unwrap_or(false),
            connect_timeout: self
                .connect_timeout
                .or(defaults.connect_timeout)
                .unwrap_or(Duration::from_secs(15)),
            keepalive: self.keepalive.or(defaults.keepalive).unwrap_or(Duration::from_secs(10)),
            persistent_shell: self.persistent_shell.or(defaults.persistent_shell).unwrap_or(true),
        }
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

pub(super) type Table<'i> = DeTable<'i>;
pub(super) type Val<'i> = Spanned<DeValue<'i>>;

pub(super) struct Reader<'a> {
    file: &'a Path,
    src: &'a str,
    pub(super) base: PathBuf,
    diags: Diagnostics,
}

impl Reader<'_> {
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::at_offset(self.file, self.src, span.start, message)
    }

    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        let mut d = self.at(span, message);
        d.hint = hint;
        self.diags.push(d);
    }

    /// The 1-based line of a byte offset.
    pub(super) fn line(&self, offset: usize) -> usize {
        crate::diag::line_col(self.src, offset).0
    }

    /// Entries of a table in the order they appear in the file.
    pub(super) fn entries<'t, 'i>(table: &'t Table<'i>) -> Vec<(&'t Spanned<std::borrow::Cow<'i, str>>, &'t Val<'i>)> {
        let mut v: Vec<_> = table.iter().collect();
        v.sort_by_key(|(k, _)| k.span().start);
        v
    }

    /// Reports keys that are not in `allowed` (with a did-you-mean), except those in `special`.
    pub(super) fn check_keys(&mut self, table: &Table<'_>, allowed: &[&str], special: &[&str], what: &str) {
        for (k, _) in Self::entries(table) {
            let key = k.get_ref().as_ref();
            if allowed.contains(&key) || special.contains(&key) {
                continue;
            }
            let hint = match closest(key, allowed.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("known keys in {what}: {}", allowed.join(", ")),
            };
            self.error(k.span(), format!("unknown key `{key}` in {what}"), Some(hint));
        }
    }

    pub(super) fn wrong_type(&mut self, key: &str, v: &Val<'_>, expected: &str) {
        let hint = match expected {
            "a string" => format!("quote it: {key} = \"...\""),
            "an integer" => "write the number without quotes".to_string(),
            "true or false" => "write true or false without quotes".to_string(),
            _ => format!("write it as a [{key}] table"),
        };
        self.error(
            v.span(),
            format!("`{key}` must be {expected}, not {}", v.get_ref().type_str()),
            Some(hint),
        );
    }

    pub(super) fn string(&mut self, table: &Table<'_>, key: &str) -> Option<(String, Range<usize>)> {
        let v = table.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some((s.to_string(), v.span())),
            None => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, table: &Table<'_>, key: &str) -> Option<bool> {
        let v = table.get(key)?;
        match v.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                self.wrong_type(key, v, "true or false");
                None
            }
        }
    }

    fn duration(&mut self, table: &Table<'_>, key: &str) -> Option<Duration> {
        let (s, span) = self.string(table, key)?;
        match humantime::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    span,
                    format!("`{key}` is not a duration: {e}"),
                    Some("write durations like \"15s\", \"2m\" or \"1h 30m\"".into()),
                );
                None
            }
        }
    }

    pub(super) fn path(&mut self, table: &Table<'_>, key: &str) -> Option<PathBuf> {
        let (s, _) = self.string(table, key)?;
        Some(resolve_path(&self.base, &s))
    }

    fn port(&mut self, table: &Table<'_>) -> Option<u16> {
        self.port_number(table, "port", "the SSH port is usually 22")
    }

    /// A TCP port number under `key`.
    pub(super) fn port_number(&mut self, table: &Table<'_>, key: &str, hint: &str) -> Option<u16> {
        let v = table.get(key)?;
        let Some(i) = v.get_ref().as_integer() else {
            self.wrong_type(key, v, "an integer");
            return None;
        };
        match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
            Ok(p) if (1..=65535).contains(&p) => u16::try_from(p).ok(),
            _ => {
                self.error(
                    v.span(),
                    format!("`{key}` must be between 1 and 65535"),
                    Some(hint.into()),
                );
                None
            }
        }
    }

    /// A secret given as `<prefix>_env` or `<prefix>_file`; a plain `<prefix>` is refused.
    pub(super) fn secret_source(&mut self, table: &Table<'_>, prefix: &str) -> Option<SecretSource> {
        if let Some((k, _)) = table.get_key_value(prefix) {
            self.error(
                k.span(),
                format!("`{prefix}` would put a secret in the inventory file; it is refused"),
                Some(SECRET_HINT.replace("password", prefix)),
            );
        }
        let env_key = format!("{prefix}_env");
        let file_key = format!("{prefix}_file");
        let env = self.string(table, &env_key);
        let file = self.string(table, &file_key);
        match (env, file) {
            (Some((_, span)), Some(_)) => {
                self.error(
                    span,
                    format!("both `{env_key}` and `{file_key}` are set"),
                    Some("keep only one of them".into()),
                );
                None
            }
            (Some((var, span)), None) => {
                if var.is_empty() {
                    self.error(
                        span,
                        format!("`{env_key}` is empty"),
                        Some("name an environment variable".into()),
                    );
                }
                Some(SecretSource::Env(var))
            }
            (None, Some((path, _))) => Some(SecretSource::File(resolve_path(&self.base, &path))),
            (None, None) => None,
        }
    }

    fn ssh(&mut self, table: &Table<'_>) -> SshPartial {
        let user = self.string(table, "user").map(|(u, _)| u);
        SshPartial {
            user,
            port: self.port(table),
            key: self.path(table, "key"),
            agent: self.boolean(table, "agent"),
            password: self.secret_source(table, "password"),
            sudo_password: self.secret_source(table, "sudo_password"),
            known_hosts: self.path(table, "known_hosts"),
            accept_new_host_keys: self.boolean(table, "accept_new_host_keys"),
            connect_timeout: self.duration(table, "connect_timeout"),
            keepalive: self.duration(table, "keepalive"),
            persistent_shell: self.boolean(table, "persistent_shell"),
        }
    }

    fn vars(&mut self, table: &Table<'_>, key: &str) -> BTreeMap<String, Json> {
        let Some(v) = table.get(key) else {
            return BTreeMap::new();
        };
        match v.get_ref().as_table() {
            Some(t) => Self::entries(t)
                .into_iter()
                .map(|(k, v)| (k.get_ref().to_string(), to_json(v.get_ref())))
                .collect(),
            None => {
                self.wrong_type(key, v, "a table");
                BTreeMap::new()
            }
        }
    }

    /// The tables of an array of tables (`[[nodes]]`); wrong shapes are reported.
    fn table_array<'t, 'i>(&mut self, doc: &'t Table<'i>, key: &str) -> Vec<(&'t Table<'i>, Range<usize>)> {
        let Some(v) = doc.get(key) else {
            return Vec::new();
        };
        let Some(items) = v.get_ref().as_array() else {
            self.error(
                v.span(),
                format!("`{key}` must be a list of tables, not {}", v.get_ref().type_str()),
                Some(format!("write each entry as a [[{key}]] section")),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref().as_table() {
                Some(t) => out.push((t, item.span())),
                None => self.wrong_type(key, item, "a table"),
            }
        }
        out
    }

    /// A required `name` that matches `[A-Za-z0-9][A-Za-z0-9._-]*`.
    fn name(&mut self, table: &Table<'_>, span: Range<usize>, what: &str) -> Option<(String, Range<usize>)> {
        let Some((name, name_span)) = self.string(table, "name") else {
            if !table.contains_key("name") && !misspelled(table, "name") {
                self.error(
                    span,
                    format!("this {what} has no `name`"),
                    Some("add `name = \"...\"`".into()),
                );
            }
            return None;
        };
        if !valid_name(&name) {
            self.error(
                name_span.clone(),
                format!("{what} name `{name}` is not allowed"),
                Some("names start with a letter or digit and contain only letters, digits, `.`, `_` and `-`".into()),
            );
        }
        Some((name, name_span))
    }

    fn inventory(&mut self, doc: &Table<'_>) -> Inventory {
        self.check_keys(doc, TOP_KEYS, &[], "the inventory");
        let defaults = match doc.get("ssh") {
            Some(v) => match v.get_ref().as_table() {
                Some(t) => {
                    self.check_keys(t, SSH_KEYS, &["password", "sudo_password"], "[ssh]");
                    self.ssh(t)
                }
                None => {
                    self.wrong_type("ssh", v, "a table");
                    SshPartial::default()
                }
            },
            None => SshPartial::default(),
        };
        let clusters = self.clusters(doc);
        let (nodes, rejected) = self.nodes(doc, &clusters, &defaults);
        let vars = self.vars(doc, "vars");
        let mut secrets = self.secrets(doc);
        let sources = self.sources(doc);
        // A registry mirror's credentials reach the nodes like any named secret (env values only).
        for (name, reg) in &sources.registries {
            for (what, source) in [("username", &reg.username), ("password", &reg.password)] {
                if let Some(source) = source {
                    secrets.insert(super::registry_secret(name, what), source.clone());
                }
            }
        }
        self.check_clusters_have_nodes(&clusters, &nodes, &rejected);
        Inventory {
            path: self.file.to_path_buf(),
            clusters: clusters.into_iter().map(|(c, _)| c).collect(),
            nodes,
            vars,
            secrets,
            sources,
        }
    }

    fn clusters(&mut self, doc: &Table<'_>) -> Vec<(Cluster, Range<usize>)> {
        let mut out: Vec<(Cluster, Range<usize>)> = Vec::new();
        let mut lb_ips: HashMap<IpAddr, String> = HashMap::new();
        let mut central: Option<String> = None;
        for (t, span) in self.table_array(doc, "clusters") {
            self.check_keys(t, CLUSTER_KEYS, &[], "a [[clusters]] entry");
            let name = self.name(t, span.clone(), "cluster");
            let role = match self.string(t, "role") {
                None => Role::Edge,
                Some((r, _)) if r == "edge" => Role::Edge,
                Some((r, _)) if r == "central" => Role::Central,
                Some((r, rspan)) => {
                    self.error(
                        rspan,
                        format!("unknown cluster role `{r}`"),
                        Some("`role` is `central` or `edge`".into()),
                    );
                    Role::Edge
                }
            };
            let lb_ip = self.ip(t, "lb_ip");
            let vip = self.ip(t, "vip");
            let domain = self.string(t, "domain").map(|(d, _)| d);
            let vars = self.vars(t, "vars");
            let Some((name, name_span)) = name else { continue };
            if out.iter().any(|(c, _)| c.name == name) {
                self.error(
                    name_span.clone(),
                    format!("cluster `{name}` is defined twice"),
                    Some("cluster names must be unique".into()),
                );
                continue;
            }
            if let Some((ip, ip_span)) = &lb_ip {
                if let Some(other) = lb_ips.get(ip) {
                    self.error(
                        ip_span.clone(),
                        format!("lb_ip {ip} is already used by cluster `{other}`"),
                        Some("each cluster needs its own LoadBalancer IP".into()),
                    );
                } else {
                    lb_ips.insert(*ip, name.clone());
                }
            }
            if role == Role::Central {
                if let Some(first) = &central {
                    self.error(
                        name_span.clone(),
                        format!("cluster `{name}` is a second central cluster (`{first}` is central)"),
                        Some("only one cluster can have role = \"central\"".into()),
                    );
                } else {
                    central = Some(name.clone());
                }
            }
            let line = self.line(span.start);
            out.push((
                Cluster {
                    name,
                    role,
                    lb_ip: lb_ip.map(|(ip, _)| ip),
                    domain,
                    vip: vip.map(|(ip, _)| ip),
                    vars,
                    line,
                },
                name_span,
            ));
        }
        out
    }

    /// An address a cluster announces on the LAN (`lb_ip`, `vip`).
    fn ip(&mut self, t: &Table<'_>, key: &str) -> Option<(IpAddr, Range<usize>)> {
        let (s, span) = self.string(t, key)?;
        let Ok(ip) = s.parse::<IpAddr>() else {
            self.error(
                span,
                format!("{key} `{s}` is not an IP address"),
                Some("write an IPv4 or IPv6 address, e.g. \"192.168.101.210\"".into()),
            );
            return None;
        };
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || broadcast {
            self.error(
                span,
                format!("{key} {ip} cannot be a LoadBalancer address"),
                Some("use a free unicast address on the nodes' network".into()),
            );
            return None;
        }
        Some((ip, span))
    }

    /// The nodes, and the clusters named by node entries that were refused (already reported:
    /// that such a cluster then has no nodes follows from it and is not reported again).
    fn nodes(
        &mut self,
        doc: &Table<'_>,
        clusters: &[(Cluster, Range<usize>)],
        defaults: &SshPartial,
    ) -> (Vec<Node>, Vec<String>) {
        let mut out: Vec<Node> = Vec::new();
        let mut rejected = Vec::new();
        let tables = self.table_array(doc, "nodes");
        if tables.is_empty() && doc.get("nodes").is_none() {
            self.error(
                0..0,
                "the inventory has no nodes",
                Some("add a [[nodes]] entry with `name` and `address`".into()),
            );
        }
        let mut allowed: Vec<&str> = NODE_KEYS.to_vec();
        allowed.extend_from_slice(SSH_KEYS);
        // (node, role as written, where the entry starts) for the multi-node checks below.
        let mut written_roles: Vec<(String, Option<NodeRole>, Range<usize>)> = Vec::new();
        for (t, span) in tables {
            self.check_keys(t, &allowed, &["password", "sudo_password"], "a [[nodes]] entry");
            let name = self.name(t, span.clone(), "node");
            let address = self.address(t, span.clone());
            let ssh_address = self.ssh_address(t);
            let cluster = match self.string(t, "cluster") {
                Some((c, cspan)) => {
                    if !clusters.iter().any(|(k, _)| k.name == c) {
                        let hint = match closest(&c, clusters.iter().map(|(k, _)| k.name.as_str())) {
                            Some(m) => format!("did you mean `{m}`?"),
                            None => "define it in a [[clusters]] entry".into(),
                        };
                        self.error(cspan, format!("node refers to unknown cluster `{c}`"), Some(hint));
                    }
                    Some(c)
                }
                None => None,
            };
            let role = self.node_role(t);
            let ssh = self.ssh(t).merged(defaults);
            let vars = self.vars(t, "vars");
            let bundle_port = self.port_number(t, "bundle_port", BUNDLE_PORT_HINT);
            let (Some((name, name_span)), Some(address)) = (name, address) else {
                rejected.extend(cluster);
                continue;
            };
            if out.iter().any(|n| n.name == name) {
                self.error(
                    name_span,
                    format!("node `{name}` is defined twice"),
                    Some("node names must be unique".into()),
                );
                continue;
            }
            // A role written but misspelled is reported already; it is not "missing" too.
            let written = role
                .as_ref()
                .map(|(r, _)| *r)
                .or(t.contains_key("role").then_some(NodeRole::ControlPlane));
            written_roles.push((name.clone(), written, span.clone()));
            out.push(Node {
                name,
                address,
                ssh_address,
                cluster,
                role: role.map(|(r, _)| r).unwrap_or(NodeRole::ControlPlane),
                ssh,
                vars,
                bundle_port,
                line: self.line(span.start),
            });
        }
        self.check_multi_node(clusters, &out, &written_roles);
        (out, rejected)
    }

    /// `role = "control-plane" | "worker"` of a node entry.
    fn node_role(&mut self, t: &Table<'_>) -> Option<(NodeRole, Range<usize>)> {
        let (r, span) = self.string(t, "role")?;
        match r.as_str() {
            "control-plane" => Some((NodeRole::ControlPlane, span)),
            "worker" => Some((NodeRole::Worker, span)),
            _ => {
                let hint = match closest(&r, ["control-plane", "worker"]) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "a node's `role` is `control-plane` or `worker`".into(),
                };
                self.error(span, format!("unknown node role `{r}`"), Some(hint));
                None
            }
        }
    }

    /// A cluster of several nodes: every node says its role, one at least is a control plane, and the cluster
    /// has a `vip` for its API server (the one address every node and Cilium reach it at).
    fn check_multi_node(
        &mut self,
        clusters: &[(Cluster, Range<usize>)],
        nodes: &[Node],
        written: &[(String, Option<NodeRole>, Range<usize>)],
    ) {
        for (c, cspan) in clusters {
            let members: Vec<&Node> = nodes
                .iter()
                .filter(|n| n.cluster.as_deref() == Some(c.name.as_str()))
                .collect();
            if members.len() < 2 {
                continue;
            }
            for (name, role, span) in written {
                if role.is_none() && members.iter().any(|n| &n.name == name) {
                    self.error(
                        span.clone(),
                        format!(
                            "node `{name}` is one of {} nodes of cluster `{}` but has no `role`",
                            members.len(),
                            c.name
                        ),
                        Some("add `role = \"control-plane\"` or `role = \"worker\"` (only a node alone in its cluster defaults to control-plane)".into()),
                    );
                }
            }
            let explicit = |n: &&Node| written.iter().any(|(w, r, _)| w == &n.name && r.is_some());
            if members.iter().all(|n| explicit(n) && n.role == NodeRole::Worker) {
                self.error(
                    cspan.clone(),
                    format!("cluster `{}` has no control-plane node", c.name),
                    Some("give at least one of its nodes `role = \"control-plane\"`".into()),
                );
            }
            if c.vip.is_none() {
                self.error(
                    cspan.clone(),
                    format!("cluster `{}` has {} nodes but no `vip`", c.name, members.len()),
                    Some("add `vip = \"<a free address on the nodes' network>\"`: the API server's virtual IP (controlPlaneEndpoint), announced by kube-vip".into()),
                );
            }
            if let Some(vip) = c.vip {
                let vip = vip.to_string();
                if c.lb_ip.is_some_and(|l| l.to_string() == vip) || members.iter().any(|n| n.address == vip) {
                    self.error(
                        cspan.clone(),
                        format!("cluster `{}`: vip {vip} is also its lb_ip or a node's address", c.name),
                        Some("the vip must be an address of its own, free on the nodes' network".into()),
                    );
                }
            }
        }
    }

    fn address(&mut self, t: &Table<'_>, span: Range<usize>) -> Option<String> {
        let Some((a, aspan)) = self.string(t, "address") else {
            if !t.contains_key("address") && !misspelled(t, "address") {
                self.error(
                    span,
                    "this node has no `address`",
                    Some("add `address = \"<IP or host name>\"`".into()),
                );
            }
            return None;
        };
        if a.parse::<IpAddr>().is_err() && !valid_dns_name(&a) {
            self.error(
                aspan,
                format!("address `{a}` is neither an IP address nor a valid host name"),
                Some("write an IP like \"192.168.101.194\" or a host name like \"node-194.lab\"".into()),
            );
            return None;
        }
        Some(a)
    }

    fn ssh_address(&mut self, t: &Table<'_>) -> Option<String> {
        let (a, aspan) = self.string(t, "ssh_address")?;
        if a.parse::<IpAddr>().is_err() && !valid_dns_name(&a) {
            self.error(
                aspan,
                format!("ssh_address `{a}` is neither an IP address nor a valid host name"),
                Some("write the IP or host name kubeboot's SSH connection goes to, e.g. \"10.0.0.5\"".into()),
            );
            return None;
        }
        Some(a)
    }

    fn secrets(&mut self, doc: &Table<'_>) -> BTreeMap<String, SecretSource> {
        let mut out = BTreeMap::new();
        let Some(v) = doc.get("secrets") else {
            return out;
        };
        let Some(t) = v.get_ref().as_table() else {
            self.wrong_type("secrets", v, "a table");
            return out;
        };
        for (k, v) in Self::entries(t) {
            let name = k.get_ref().to_string();
            let hint = "write `NAME = { env = \"VAR\" }` or `NAME = { file = \"path\" }`";
            let Some(entry) = v.get_ref().as_table() else {
                // Never echo the value: it may be the secret itself.
                let msg = if v.get_ref().is_str() {
                    format!("secret `{name}` is written in plain text; it is refused")
                } else {
                    format!("secret `{name}` must be a table, not {}", v.get_ref().type_str())
                };
                self.error(k.span(), msg, Some(hint.into()));
                continue;
            };
            self.check_keys(entry, &["env", "file"], &[], &format!("secret `{name}`"));
            match (self.string(entry, "env"), self.string(entry, "file")) {
                (Some((var, _)), None) => {
                    out.insert(name, SecretSource::Env(var));
                }
                (None, Some((path, _))) => {
                    out.insert(name, SecretSource::File(resolve_path(&self.base, &path)));
                }
                _ => self.error(
                    v.span(),
                    format!("secret `{name}` needs exactly one of `env` and `file`"),
                    Some(hint.into()),
                ),
            }
        }
        out
    }

    fn check_clusters_have_nodes(&mut self, clusters: &[(Cluster, Range<usize>)], nodes: &[Node], rejected: &[String]) {
        for (c, span) in clusters {
            if !nodes.iter().any(|n| n.cluster.as_deref() == Some(c.name.as_str())) && !rejected.contains(&c.name) {
                self.error(
                    span.clone(),
                    format!("cluster `{}` has no nodes", c.name),
                    Some(format!(
                        "add `cluster = \"{}\"` to its nodes, or remove the cluster",
                        c.name
                    )),
                );
            }
        }
    }
}

/// True when the table has an unknown key that looks like `wanted` (reported as a typo already).
fn misspelled(table: &Table<'_>, wanted: &str) -> bool {
    table
        .keys()
        .any(|k| k.get_ref() != wanted && closest(k.get_ref(), [wanted]).is_some())
}

/// `~` is the home folder; a relative path is relative to the inventory's folder.
pub(super) fn resolve_path(base: &Path, raw: &str) -> PathBuf {
    if raw == "~" {
        return home();
    }
    if let Some(rest) = raw.strip_prefix("~/") {
        return home().join(rest);
    }
    let p = Path::new(raw);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// True for names matching `[A-Za-z0-9][A-Za-z0-9._-]*` (nodes, clusters, stages).
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A DNS host name: labels of 1–63 letters, digits and inner hyphens; not all-numeric (that is a bad IP).
fn valid_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels_ok = s.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    });
    let all_numeric = s.chars().all(|c| c.is_ascii_digit() || c == '.');
    labels_ok && !all_numeric
}

/// A TOML value as a template variable.
fn to_json(v: &DeValue<'_>) -> Json {
    match v {
        DeValue::String(s) => Json::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(Json::from)
            .unwrap_or_else(|_| Json::String(i.to_string())),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        DeValue::Boolean(b) => Json::Bool(*b),
        DeValue::Datetime(d) => Json::String(d.to_string()),
        DeValue::Array(a) => Json::Array(a.iter().map(|v| to_json(v.get_ref())).collect()),
        DeValue::Table(t) => Json::Object(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), to_json(v.get_ref())))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[ssh]
user = "bsh"
key = "keys/id"
password_env = "KB_PW"
connect_timeout = "20s"

[[clusters]]
name = "cluster-01"
role = "central"
lb_ip = "192.168.101.210"
domain = "k8s.lab"
[clusters.vars]
x = 1

[[clusters]]
name = "cluster-02"
lb_ip = "192.168.101.211"

[[nodes]]
name = "node-194"
address = "192.168.101.194"
cluster = "cluster-01"

[[nodes]]
name = "node-195"
address = "node-195.lab"
cluster = "cluster-02"
port = 2222
user = "ops"
[nodes.vars]
y = "z"

[vars]
kubernetes_version = "1.34"

[secrets]
s3 = { env = "KB_S3" }
"#;

    fn parse_ok(text: &str) -> Inventory {
        match parse(Path::new("/inv/inventory.toml"), text) {
            Ok(i) => i,
            Err(d) => panic!("unexpected problems:\n{d}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(Path::new("inventory.toml"), text) {
            Ok(_) => panic!("expected problems"),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn a_good_inventory_loads_with_defaults_merged() {
        let inv = parse_ok(GOOD);
        assert_eq!(inv.clusters.len(), 2);
        assert_eq!(inv.clusters[0].role, Role::Central);
        assert_eq!(inv.clusters[1].role, Role::Edge);
        assert_eq!(inv.clusters[0].vars["x"], Json::from(1));
        let n = &inv.nodes[0];
        assert_eq!(n.ssh.user, "bsh");
        assert_eq!(n.ssh.port, 22);
        assert_eq!(n.ssh.key, Some(PathBuf::from("/inv/keys/id")));
        assert_eq!(n.ssh.password, Some(SecretSource::Env("KB_PW".into())));
        assert_eq!(n.ssh.connect_timeout, Duration::from_secs(20));
        assert_eq!(n.line, 20);
        let m = &inv.nodes[1];
        assert_eq!((m.ssh.user.as_str(), m.ssh.port), ("ops", 2222));
        assert_eq!(m.vars["y"], Json::from("z"));
        assert_eq!(inv.secrets["s3"], SecretSource::Env("KB_S3".into()));
        assert_eq!(inv.vars["kubernetes_version"], Json::from("1.34"));
    }

    #[test]
    fn persistent_shell_defaults_on_and_a_node_overrides_ssh() {
        let inv = parse_ok(GOOD);
        assert!(inv.nodes.iter().all(|n| n.ssh.persistent_shell));
        let text = GOOD
            .replacen("[ssh]\n", "[ssh]\npersistent_shell = false\n", 1)
            .replacen("port = 2222\n", "port = 2222\npersistent_shell = true\n", 1);
        let inv = parse_ok(&text);
        assert!(!inv.nodes[0].ssh.persistent_shell);
        assert!(inv.nodes[1].ssh.persistent_shell);
        let e = parse_err("[ssh]\npersistent_shell = \"no\"\n[[nodes]]\nname = \"a\"\naddress = \"10.0.0.1\"\n");
        assert!(
            e.contains("inventory.toml:2:20: error: `persistent_shell` must be true or false, not string"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_get_a_did_you_mean() {
        let e = parse_err("[[nodes]]\nname = \"a\"\nadress = \"10.0.0.1\"\n");
        assert!(e.contains("inventory.toml:3:1: error: unknown key `adress`"), "{e}");
        assert!(e.contains("did you mean `address`?"), "{e}");
    }

    #[test]
    fn a_plaintext_password_is_refused_without_echoing_it() {
        let e = parse_err("[ssh]\npassword = \"hunter2\"\n[[nodes]]\nname = \"a\"\naddress = \"10.0.0.1\"\n");
        assert!(e.contains("inventory.toml:2:1"), "{e}");
        assert!(e.contains("password_env"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_in_one_pass() {
        let e = parse_err(
            "[[clusters]]\nname = \"c\"\nlb_ip = \"127.0.0.1\"\n[[nodes]]\nname = \"a\"\naddress = \"bad_host!\"\nport = 0\n",
        );
        assert!(e.contains("3:9: error: lb_ip 127.0.0.1"), "{e}");
        assert!(e.contains("6:11: error: address"), "{e}");
        assert!(e.contains("7:8: error: `port`"), "{e}");
        assert!(e.contains("cluster `c` has no nodes"), "{e}");
    }

    #[test]
    fn host_names_and_ips_are_told_apart() {
        assert!(valid_dns_name("node-1.lab"));
        assert!(!valid_dns_name("999.1.1.1"));
        assert!(!valid_dns_name("-bad.lab"));
        assert!(valid_name("node-194"));
        assert!(!valid_name("_x"));
    }
}
