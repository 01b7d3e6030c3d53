//! A lab inventory modelled on an existing one (`kubeboot lab up --like inventory.toml`): the same clusters,
//! node names, roles, LB IPs, domains, vars and secrets, with each node's address and port replaced by its lab
//! sshd and the resource minimums lowered so a small machine passes preflight.

use std::fs;
use std::path::Path;

use toml::{Table, Value};

use super::{Lab, LabError, io, password_file};

/// The preflight minimums a lab node gets (the vars the shipped preflight reads).
const LAB_MINIMUMS: &[(&str, i64)] = &[("min_cpus", 1), ("min_memory_gb", 1), ("min_disk_gb", 1)];

/// One node of the model inventory: its name, cluster, and that cluster's domain and LB IP.
#[derive(Debug, Clone)]
pub(super) struct ModelNode {
    pub name: String,
    pub domain: Option<(String, String)>,
}

/// Reads the model inventory as a TOML table.
pub(super) fn read(path: &Path) -> Result<Table, LabError> {
    let text = fs::read_to_string(path).map_err(io(format!("cannot read {}", path.display())))?;
    text.parse::<Table>().map_err(|e| LabError::Io {
        what: format!("{} is not valid TOML: {e}", path.display()),
        source: std::io::ErrorKind::InvalidData.into(),
    })
}

/// The model's nodes in file order.
pub(super) fn nodes(model: &Table) -> Vec<ModelNode> {
    let clusters = array(model, "clusters");
    array(model, "nodes")
        .iter()
        .filter_map(|n| {
            let name = n.get("name")?.as_str()?.to_string();
            let cluster = n.get("cluster").and_then(Value::as_str);
            let domain = clusters
                .iter()
                .find(|c| c.get("name").and_then(Value::as_str) == cluster)
                .and_then(|c| {
                    let domain = c.get("domain")?.as_str()?;
                    let lb_ip = c.get("lb_ip")?.as_str()?;
                    Some((domain.to_string(), lb_ip.to_string()))
                });
            Some(ModelNode { name, domain })
        })
        .collect()
}

fn array<'a>(t: &'a Table, key: &str) -> Vec<&'a Table> {
    t.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_table).collect())
        .unwrap_or_default()
}

/// Where one lab node is reached, for the inventory.
#[derive(Debug, Clone)]
pub(super) struct LabAddress {
    pub name: String,
    /// The node's own address (`address`).
    pub address: String,
    /// Where kubeboot connects, when not `address`.
    pub ssh_address: Option<String>,
    pub port: u16,
    /// A folder for the example playbooks' side effects (sshd labs only).
    pub lab_root: Option<std::path::PathBuf>,
}

/// The lab's SSH settings, for the inventory.
#[derive(Debug, Clone)]
pub(super) struct LabSsh {
    pub user: String,
    pub key: std::path::PathBuf,
    pub sudo_password_file: std::path::PathBuf,
    pub known_hosts: std::path::PathBuf,
}

/// Writes the lab's inventory: the model with the lab's SSH settings and node addresses.
pub(super) fn write(lab: &Lab, model: &Table) -> Result<(), LabError> {
    let settings = LabSsh {
        user: lab.user.clone(),
        key: lab.dir.join("id_ed25519"),
        sudo_password_file: password_file(&lab.dir),
        known_hosts: lab.dir.join("known_hosts"),
    };
    let nodes: Vec<LabAddress> = lab
        .nodes
        .iter()
        .map(|n| LabAddress {
            name: n.name.clone(),
            address: n.address.to_string(),
            ssh_address: None,
            port: n.port,
            lab_root: Some(n.root.clone()),
        })
        .collect();
    let header = "# Written by kubeboot's local lab from a model inventory: same clusters, vars and secrets;\n\
                  # every node is an isolated sshd on a loopback address.\n";
    write_model(&lab.inventory, model, &settings, &nodes, &Table::new(), header)
}

/// Writes `path`: `model` with `settings` as its `[ssh]`, each node's address from `nodes`, the lab's preflight
/// minimums and `extra_vars` in `[vars]`.
pub(super) fn write_model(
    path: &Path,
    model: &Table,
    settings: &LabSsh,
    nodes: &[LabAddress],
    extra_vars: &Table,
    header: &str,
) -> Result<(), LabError> {
    let mut inv = model.clone();
    let mut ssh = Table::new();
    let path_value = |p: &Path| Value::String(p.display().to_string());
    ssh.insert("user".into(), Value::String(settings.user.clone()));
    ssh.insert("key".into(), path_value(&settings.key));
    ssh.insert("agent".into(), Value::Boolean(false));
    ssh.insert("sudo_password_file".into(), path_value(&settings.sudo_password_file));
    ssh.insert("known_hosts".into(), path_value(&settings.known_hosts));
    // Keep the model's timeouts: they are part of what is being exercised.
    for k in ["connect_timeout", "keepalive"] {
        if let Some(v) = model.get("ssh").and_then(|s| s.get(k)) {
            ssh.insert(k.into(), v.clone());
        }
    }
    inv.insert("ssh".into(), Value::Table(ssh));

    if let Some(Value::Array(model_nodes)) = inv.get_mut("nodes") {
        for n in model_nodes.iter_mut().filter_map(Value::as_table_mut) {
            let name = n.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            if let Some(node) = nodes.iter().find(|a| a.name == name) {
                n.insert("address".into(), Value::String(node.address.clone()));
                match &node.ssh_address {
                    Some(a) => n.insert("ssh_address".into(), Value::String(a.clone())),
                    None => n.remove("ssh_address"),
                };
                n.insert("port".into(), Value::Integer(i64::from(node.port)));
                for k in ["user", "key", "password_env", "password_file", "sudo_password_env"] {
                    n.remove(k);
                }
                if let Some(root) = &node.lab_root {
                    // Like every lab node, a folder of its own for side effects (the example playbooks use it).
                    let vars = n.entry("vars").or_insert_with(|| Value::Table(Table::new()));
                    if let Some(vars) = vars.as_table_mut() {
                        vars.insert("lab_root".into(), path_value(root));
                    }
                }
            }
        }
    }
    let vars = inv.entry("vars").or_insert_with(|| Value::Table(Table::new()));
    if let Some(vars) = vars.as_table_mut() {
        for (k, v) in LAB_MINIMUMS {
            vars.insert((*k).into(), Value::Integer(*v));
        }
        // The model's jump-host requests would go to its real addresses (LB IPs, the S3 endpoint), never
        // to the lab: the lab's nodes do those steps themselves.
        vars.insert("jump_checks".into(), Value::Boolean(false));
        for (k, v) in extra_vars {
            vars.insert(k.clone(), v.clone());
        }
    }
    let text = toml::to_string(&inv).map_err(|e| LabError::Io {
        what: format!("cannot write the lab inventory: {e}"),
        source: std::io::ErrorKind::InvalidData.into(),
    })?;
    fs::write(path, format!("{header}{text}")).map_err(io(format!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_nodes_carry_their_cluster_domain_and_lb_ip() {
        let model: Table = r#"
            [[clusters]]
            name = "c1"
            lb_ip = "10.0.0.1"
            domain = "c1.lab"
            [[nodes]]
            name = "n1"
            address = "10.0.0.9"
            cluster = "c1"
        "#
        .parse()
        .unwrap();
        let nodes = nodes(&model);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, "n1");
        assert_eq!(nodes[0].domain, Some(("c1.lab".into(), "10.0.0.1".into())));
    }
}
