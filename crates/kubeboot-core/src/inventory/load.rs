//! Reading `inventory.toml` into an [`Inventory`], reporting every problem with file, line and column.
//!
//! The file goes through the TOML front end into the same spanned tree as the playbooks (not straight into
//! structs), and is read with the same [`Reader`], so one pass reports all unknown keys, wrong types and
//! semantic problems at once, each at its own position. This file reads the whole document, `[vars]` and
//! `[secrets]`; `[ssh]` is in `ssh.rs`, `[[clusters]]` and `[[nodes]]` in `nodes.rs`, `[sources]` in
//! `sources.rs`.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::model::{Inventory, SecretSource};
use super::ssh::{SECRET_KEYS, SSH_KEYS, SshPartial};
use crate::diag::{Diagnostic, Diagnostics};
use crate::spanned::{Node as Toml, Reader, Syntax, Value, misspelled, toml};

const TOP_KEYS: &[&str] = &["ssh", "clusters", "nodes", "vars", "secrets", "sources"];
pub(super) const BUNDLE_PORT_HINT: &str = "a free port on the nodes' 127.0.0.1; the bundle is served there";

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
    if text.trim().is_empty() {
        return Err(Diagnostic::file(path, "the inventory is empty")
            .with_hint("add at least one [[nodes]] entry with `name` and `address`")
            .into());
    }
    let doc = toml::parse(path, text)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut diags = Diagnostics::default();
    let inv = Loader(Reader {
        file: path,
        base: &base,
        diags: &mut diags,
        syntax: Syntax::Toml,
    })
    .inventory(&doc);
    diags.0.sort_by_key(|d| (d.line, d.column));
    diags.into_result(inv)
}

/// The shared [`Reader`] with the inventory's own parts (`[ssh]`, nodes, clusters, `[sources]`) on top.
pub(super) struct Loader<'a>(Reader<'a>);

impl<'a> Deref for Loader<'a> {
    type Target = Reader<'a>;
    fn deref(&self) -> &Reader<'a> {
        &self.0
    }
}

impl DerefMut for Loader<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A value that is a table (TOML's word for a mapping).
pub(super) fn table(v: &Toml) -> Option<&Toml> {
    matches!(v.value, Value::Map(_)).then_some(v)
}

pub(super) fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

impl Loader<'_> {
    fn inventory(&mut self, doc: &Toml) -> Inventory {
        self.check_keys(doc, TOP_KEYS, &[], "the inventory");
        let defaults = match doc.get("ssh") {
            Some(v) => match table(v) {
                Some(t) => {
                    self.check_keys(t, SSH_KEYS, SECRET_KEYS, "[ssh]");
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

    /// A path under `key`: `~` is the home folder, a relative path is relative to the inventory's folder.
    pub(super) fn path(&mut self, table: &Toml, key: &str) -> Option<PathBuf> {
        let (s, _) = self.string_in(table, key)?;
        Some(resolve_path(self.base, &s))
    }

    /// A table of template variables (`[vars]`, a cluster's or a node's `vars`).
    pub(super) fn vars(&mut self, t: &Toml, key: &str) -> BTreeMap<String, Json> {
        let Some(v) = t.get(key) else {
            return BTreeMap::new();
        };
        if table(v).is_none() {
            self.wrong_type(key, v, "a table");
            return BTreeMap::new();
        }
        v.entries()
            .into_iter()
            .map(|(k, _, v)| (k, v.value.to_json()))
            .collect()
    }

    /// The tables of an array of tables (`[[nodes]]`); wrong shapes are reported.
    pub(super) fn table_array<'n>(&mut self, doc: &'n Toml, key: &str) -> Vec<&'n Toml> {
        let Some(v) = doc.get(key) else {
            return Vec::new();
        };
        let Value::Seq(items) = &v.value else {
            let kind = self.kind(v);
            self.error(
                v,
                format!("`{key}` must be a list of tables, not {kind}"),
                format!("write each entry as a [[{key}]] section"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            match table(item) {
                Some(t) => out.push(t),
                None => self.wrong_type(key, item, "a table"),
            }
        }
        out
    }

    /// A required `name` that matches `[A-Za-z0-9][A-Za-z0-9._-]*`; a missing one is reported at the entry.
    pub(super) fn name<'n>(&mut self, entry: &'n Toml, what: &str) -> Option<(String, &'n Toml)> {
        let Some((name, at)) = self.string_in(entry, "name") else {
            if entry.get("name").is_none() && !misspelled(entry, &["name"]) {
                self.error(entry, format!("this {what} has no `name`"), "add `name = \"...\"`");
            }
            return None;
        };
        if !valid_name(&name) {
            self.error(
                at,
                format!("{what} name `{name}` is not allowed"),
                "names start with a letter or digit and contain only letters, digits, `.`, `_` and `-`",
            );
        }
        Some((name, at))
    }

    fn secrets(&mut self, doc: &Toml) -> BTreeMap<String, SecretSource> {
        let mut out = BTreeMap::new();
        let Some(v) = doc.get("secrets") else {
            return out;
        };
        let Some(t) = table(v) else {
            self.wrong_type("secrets", v, "a table");
            return out;
        };
        for (name, k, v) in t.entries() {
            let hint = "write `NAME = { env = \"VAR\" }` or `NAME = { file = \"path\" }`";
            let Some(entry) = table(v) else {
                // Never echo the value: it may be the secret itself.
                let msg = if matches!(v.value, Value::Str(_)) {
                    format!("secret `{name}` is written in plain text; it is refused")
                } else {
                    format!("secret `{name}` must be a table, not {}", self.kind(v))
                };
                self.error(k, msg, hint);
                continue;
            };
            self.check_keys(entry, &["env", "file"], &[], &format!("secret `{name}`"));
            match (self.string_in(entry, "env"), self.string_in(entry, "file")) {
                (Some((var, _)), None) => {
                    out.insert(name, SecretSource::Env(var));
                }
                (None, Some((path, _))) => {
                    out.insert(name, SecretSource::File(resolve_path(self.base, &path)));
                }
                _ => self.error(
                    v,
                    format!("secret `{name}` needs exactly one of `env` and `file`"),
                    hint,
                ),
            }
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::model::Role;
    use super::super::nodes::valid_dns_name;
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
    fn node_helper_defaults_on_and_a_node_overrides_ssh() {
        let inv = parse_ok(GOOD);
        assert!(inv.nodes.iter().all(|n| n.ssh.node_helper));
        let text = GOOD.replacen("[ssh]\n", "[ssh]\nnode_helper = false\n", 1).replacen(
            "port = 2222\n",
            "port = 2222\nnode_helper = true\n",
            1,
        );
        let inv = parse_ok(&text);
        assert!(!inv.nodes[0].ssh.node_helper);
        assert!(inv.nodes[1].ssh.node_helper);
        assert!(!inv.nodes[0].ssh_target(Default::default(), false).node_helper);
        let e = parse_err("[ssh]\nnode_helper = 1\n[[nodes]]\nname = \"a\"\naddress = \"10.0.0.1\"\n");
        assert!(
            e.contains("inventory.toml:2:15: error: `node_helper` must be true or false, not integer"),
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
    fn an_integer_beyond_64_bits_is_out_of_range() {
        let e = parse_err("[ssh]\nport = 99999999999999999999\n[[nodes]]\nname = \"a\"\naddress = \"10.0.0.1\"\n");
        assert!(
            e.contains("inventory.toml:2:8: error: `port` must be between 1 and 65535"),
            "{e}"
        );
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
