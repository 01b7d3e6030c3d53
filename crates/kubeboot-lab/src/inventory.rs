//! The inventory the lab writes for its nodes (the lab's own, and variants tests ask for).

use std::fs;
use std::path::{Path, PathBuf};

use super::{Lab, LabError, io, password_file};

/// How to write a variant of the lab's inventory.
#[derive(Debug, Clone)]
pub struct InventoryOptions {
    /// Where to write it.
    pub path: PathBuf,
    /// Log in with the lab's client key.
    pub key: bool,
    /// Log in with the password in this file (the lab's password file works).
    pub password_file: Option<PathBuf>,
    pub known_hosts: PathBuf,
    pub accept_new_host_keys: bool,
}

impl InventoryOptions {
    /// The lab's own inventory: key auth, its known_hosts, its sudo password.
    pub fn for_lab(lab: &Lab) -> Self {
        InventoryOptions {
            path: lab.dir.join("inventory.toml"),
            key: true,
            password_file: None,
            known_hosts: lab.dir.join("known_hosts"),
            accept_new_host_keys: false,
        }
    }
}

/// Writes an inventory for the lab: one cluster per node (the first central), each node's `lab_root` as a var.
pub fn write_inventory(lab: &Lab, opts: &InventoryOptions) -> Result<PathBuf, LabError> {
    fs::write(&opts.path, inventory_text(lab, opts)).map_err(io(format!("cannot write {}", opts.path.display())))?;
    Ok(opts.path.clone())
}

fn inventory_text(lab: &Lab, opts: &InventoryOptions) -> String {
    let q = |p: &Path| toml_string(&p.display().to_string());
    let mut t =
        String::from("# Written by kubeboot's local lab: every node is an sshd on a loopback address.\n[ssh]\n");
    t.push_str(&format!("user = {}\n", toml_string(&lab.user)));
    if opts.key {
        t.push_str(&format!("key = {}\n", q(&lab.dir.join("id_ed25519"))));
    }
    t.push_str("agent = false\n");
    if let Some(p) = &opts.password_file {
        t.push_str(&format!("password_file = {}\n", q(p)));
    }
    t.push_str(&format!("sudo_password_file = {}\n", q(&password_file(&lab.dir))));
    t.push_str(&format!("known_hosts = {}\n", q(&opts.known_hosts)));
    if opts.accept_new_host_keys {
        t.push_str("accept_new_host_keys = true\n");
    }
    for (i, _) in lab.nodes.iter().enumerate() {
        let role = if i == 0 { "central" } else { "edge" };
        t.push_str(&format!(
            "\n[[clusters]]\nname = \"lab-{:02}\"\nrole = \"{role}\"\nlb_ip = \"10.255.0.{}\"\n",
            i + 1,
            10 + i
        ));
    }
    for (i, n) in lab.nodes.iter().enumerate() {
        t.push_str(&format!(
            "\n[[nodes]]\nname = {}\naddress = \"{}\"\nport = {}\ncluster = \"lab-{:02}\"\n[nodes.vars]\nlab_root = {}\n",
            toml_string(&n.name),
            n.address,
            n.port,
            i + 1,
            q(&n.root)
        ));
    }
    t
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
