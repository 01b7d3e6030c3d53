//! `[[clusters]]` and `[[nodes]]`: names, roles, addresses, which node belongs to which cluster, and the
//! checks across entries (names defined twice, one central cluster, a multi-node cluster's roles and vip).

use std::collections::HashMap;
use std::net::IpAddr;

use super::load::{BUNDLE_PORT_HINT, Loader};
use super::model::{Cluster, Node, NodeRole, Role};
use super::ssh::{SECRET_KEYS, SSH_KEYS, SshPartial};
use crate::diag::closest;
use crate::spanned::{Node as Toml, misspelled};

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

impl Loader<'_> {
    pub(super) fn clusters<'n>(&mut self, doc: &'n Toml) -> Vec<(Cluster, &'n Toml)> {
        let mut out: Vec<(Cluster, &Toml)> = Vec::new();
        let mut lb_ips: HashMap<IpAddr, String> = HashMap::new();
        let mut central: Option<String> = None;
        for t in self.table_array(doc, "clusters") {
            self.check_keys(t, CLUSTER_KEYS, &[], "a [[clusters]] entry");
            let name = self.name(t, "cluster");
            let role = match self.string_in(t, "role") {
                None => Role::Edge,
                Some((r, _)) if r == "edge" => Role::Edge,
                Some((r, _)) if r == "central" => Role::Central,
                Some((r, rspan)) => {
                    self.error(
                        rspan,
                        format!("unknown cluster role `{r}`"),
                        "`role` is `central` or `edge`",
                    );
                    Role::Edge
                }
            };
            let lb_ip = self.ip(t, "lb_ip");
            let vip = self.ip(t, "vip");
            let domain = self.string_in(t, "domain").map(|(d, _)| d);
            let vars = self.vars(t, "vars");
            let Some((name, name_span)) = name else { continue };
            if out.iter().any(|(c, _)| c.name == name) {
                self.error(
                    name_span,
                    format!("cluster `{name}` is defined twice"),
                    "cluster names must be unique",
                );
                continue;
            }
            if let Some((ip, ip_span)) = &lb_ip {
                if let Some(other) = lb_ips.get(ip) {
                    self.error(
                        ip_span,
                        format!("lb_ip {ip} is already used by cluster `{other}`"),
                        "each cluster needs its own LoadBalancer IP",
                    );
                } else {
                    lb_ips.insert(*ip, name.clone());
                }
            }
            if role == Role::Central {
                if let Some(first) = &central {
                    self.error(
                        name_span,
                        format!("cluster `{name}` is a second central cluster (`{first}` is central)"),
                        "only one cluster can have role = \"central\"",
                    );
                } else {
                    central = Some(name.clone());
                }
            }
            let line = t.line;
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
    fn ip<'n>(&mut self, t: &'n Toml, key: &str) -> Option<(IpAddr, &'n Toml)> {
        let (s, span) = self.string_in(t, key)?;
        let Ok(ip) = s.parse::<IpAddr>() else {
            self.error(
                span,
                format!("{key} `{s}` is not an IP address"),
                "write an IPv4 or IPv6 address, e.g. \"192.168.101.210\"",
            );
            return None;
        };
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || broadcast {
            self.error(
                span,
                format!("{key} {ip} cannot be a LoadBalancer address"),
                "use a free unicast address on the nodes' network",
            );
            return None;
        }
        Some((ip, span))
    }

    /// The nodes, and the clusters named by node entries that were refused (already reported:
    /// that such a cluster then has no nodes follows from it and is not reported again).
    pub(super) fn nodes(
        &mut self,
        doc: &Toml,
        clusters: &[(Cluster, &Toml)],
        defaults: &SshPartial,
    ) -> (Vec<Node>, Vec<String>) {
        let mut out: Vec<Node> = Vec::new();
        let mut rejected = Vec::new();
        let tables = self.table_array(doc, "nodes");
        if tables.is_empty() && doc.get("nodes").is_none() {
            self.error(
                doc,
                "the inventory has no nodes",
                "add a [[nodes]] entry with `name` and `address`",
            );
        }
        let mut allowed: Vec<&str> = NODE_KEYS.to_vec();
        allowed.extend_from_slice(SSH_KEYS);
        // (node, role as written, where the entry starts) for the multi-node checks below.
        let mut written_roles: Vec<(String, Option<NodeRole>, &Toml)> = Vec::new();
        for t in tables {
            self.check_keys(t, &allowed, SECRET_KEYS, "a [[nodes]] entry");
            let name = self.name(t, "node");
            let address = self.address(t);
            let ssh_address = self.ssh_address(t);
            let cluster = match self.string_in(t, "cluster") {
                Some((c, cspan)) => {
                    if !clusters.iter().any(|(k, _)| k.name == c) {
                        let hint = match closest(&c, clusters.iter().map(|(k, _)| k.name.as_str())) {
                            Some(m) => format!("did you mean `{m}`?"),
                            None => "define it in a [[clusters]] entry".into(),
                        };
                        self.error(cspan, format!("node refers to unknown cluster `{c}`"), hint);
                    }
                    Some(c)
                }
                None => None,
            };
            let role = self.node_role(t);
            let ssh = self.ssh(t).merged(defaults);
            let vars = self.vars(t, "vars");
            let bundle_port = self.port_in(t, "bundle_port", BUNDLE_PORT_HINT);
            let (Some((name, name_span)), Some(address)) = (name, address) else {
                rejected.extend(cluster);
                continue;
            };
            if out.iter().any(|n| n.name == name) {
                self.error(
                    name_span,
                    format!("node `{name}` is defined twice"),
                    "node names must be unique",
                );
                continue;
            }
            // A role written but misspelled is reported already; it is not "missing" too.
            let written = role
                .as_ref()
                .map(|(r, _)| *r)
                .or(t.get("role").is_some().then_some(NodeRole::ControlPlane));
            written_roles.push((name.clone(), written, t));
            out.push(Node {
                name,
                address,
                ssh_address,
                cluster,
                role: role.map(|(r, _)| r).unwrap_or(NodeRole::ControlPlane),
                ssh,
                vars,
                bundle_port,
                line: t.line,
            });
        }
        self.check_multi_node(clusters, &out, &written_roles);
        (out, rejected)
    }

    /// `role = "control-plane" | "worker"` of a node entry.
    fn node_role<'n>(&mut self, t: &'n Toml) -> Option<(NodeRole, &'n Toml)> {
        let (r, span) = self.string_in(t, "role")?;
        match r.as_str() {
            "control-plane" => Some((NodeRole::ControlPlane, span)),
            "worker" => Some((NodeRole::Worker, span)),
            _ => {
                let hint = match closest(&r, ["control-plane", "worker"]) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "a node's `role` is `control-plane` or `worker`".into(),
                };
                self.error(span, format!("unknown node role `{r}`"), hint);
                None
            }
        }
    }

    /// A cluster of several nodes: every node says its role, one at least is a control plane, and the cluster
    /// has a `vip` for its API server (the one address every node and Cilium reach it at).
    fn check_multi_node(
        &mut self,
        clusters: &[(Cluster, &Toml)],
        nodes: &[Node],
        written: &[(String, Option<NodeRole>, &Toml)],
    ) {
        for (c, cspan) in clusters {
            let members: Vec<&Node> = nodes
                .iter()
                .filter(|n| n.cluster.as_deref() == Some(c.name.as_str()))
                .collect();
            if members.len() < 2 {
                continue;
            }
            for (name, role, at) in written {
                if role.is_none() && members.iter().any(|n| &n.name == name) {
                    self.error(
                        at,
                        format!(
                            "node `{name}` is one of {} nodes of cluster `{}` but has no `role`",
                            members.len(),
                            c.name
                        ),
                        "add `role = \"control-plane\"` or `role = \"worker\"` (only a node alone in its cluster defaults to control-plane)",
                    );
                }
            }
            let explicit = |n: &&Node| written.iter().any(|(w, r, _)| w == &n.name && r.is_some());
            if members.iter().all(|n| explicit(n) && n.role == NodeRole::Worker) {
                self.error(
                    cspan,
                    format!("cluster `{}` has no control-plane node", c.name),
                    "give at least one of its nodes `role = \"control-plane\"`",
                );
            }
            if c.vip.is_none() {
                self.error(
                    cspan,
                    format!("cluster `{}` has {} nodes but no `vip`", c.name, members.len()),
                    "add `vip = \"<a free address on the nodes' network>\"`: the API server's virtual IP (controlPlaneEndpoint), announced by kube-vip",
                );
            }
            if let Some(vip) = c.vip {
                let vip = vip.to_string();
                if c.lb_ip.is_some_and(|l| l.to_string() == vip) || members.iter().any(|n| n.address == vip) {
                    self.error(
                        cspan,
                        format!("cluster `{}`: vip {vip} is also its lb_ip or a node's address", c.name),
                        "the vip must be an address of its own, free on the nodes' network",
                    );
                }
            }
        }
    }

    fn address(&mut self, t: &Toml) -> Option<String> {
        let Some((a, aspan)) = self.string_in(t, "address") else {
            if t.get("address").is_none() && !misspelled(t, &["address"]) {
                self.error(t, "this node has no `address`", "add `address = \"<IP or host name>\"`");
            }
            return None;
        };
        if a.parse::<IpAddr>().is_err() && !valid_dns_name(&a) {
            self.error(
                aspan,
                format!("address `{a}` is neither an IP address nor a valid host name"),
                "write an IP like \"192.168.101.194\" or a host name like \"node-194.lab\"",
            );
            return None;
        }
        Some(a)
    }

    fn ssh_address(&mut self, t: &Toml) -> Option<String> {
        let (a, aspan) = self.string_in(t, "ssh_address")?;
        if a.parse::<IpAddr>().is_err() && !valid_dns_name(&a) {
            self.error(
                aspan,
                format!("ssh_address `{a}` is neither an IP address nor a valid host name"),
                "write the IP or host name kubeboot's SSH connection goes to, e.g. \"10.0.0.5\"",
            );
            return None;
        }
        Some(a)
    }

    pub(super) fn check_clusters_have_nodes(
        &mut self,
        clusters: &[(Cluster, &Toml)],
        nodes: &[Node],
        rejected: &[String],
    ) {
        for (c, at) in clusters {
            if !nodes.iter().any(|n| n.cluster.as_deref() == Some(c.name.as_str())) && !rejected.contains(&c.name) {
                self.error(
                    at,
                    format!("cluster `{}` has no nodes", c.name),
                    format!("add `cluster = \"{}\"` to its nodes, or remove the cluster", c.name),
                );
            }
        }
    }
}

/// A DNS host name: labels of 1–63 letters, digits and inner hyphens; not all-numeric (that is a bad IP).
pub(super) fn valid_dns_name(s: &str) -> bool {
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
