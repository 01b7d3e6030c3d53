//! The inventory as kubeboot uses it after loading and validation.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use super::sources::Sources;
use crate::secrets::NodeSecrets;
pub use crate::secrets::SecretSource;
use crate::ssh;

/// How to reach and log in to one node; `[ssh]` defaults merged with the node's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    pub user: String,
    pub port: u16,
    /// Private key file (`~` expanded, relative paths resolved against the inventory's folder).
    pub key: Option<PathBuf>,
    /// Try the keys of a running ssh-agent (`SSH_AUTH_SOCK`). Default true.
    pub agent: bool,
    /// Login password, when password authentication is wanted.
    pub password: Option<SecretSource>,
    /// sudo password for `become`; defaults to the login password when unset.
    pub sudo_password: Option<SecretSource>,
    /// The known_hosts file host keys are checked against (default `~/.ssh/known_hosts`).
    pub known_hosts: PathBuf,
    /// `accept_new_host_keys`: record a host key never seen before instead of refusing the node
    /// (a *changed* key is refused whatever this says). Default false.
    pub accept_new_host_keys: bool,
    /// How long connecting and authenticating may take. Default 15s.
    pub connect_timeout: Duration,
    /// SSH keepalive interval; a node silent for 3 intervals is lost. Default 10s.
    pub keepalive: Duration,
    /// Run each node's commands through one persistent shell (one channel, one sudo per node)
    /// instead of one channel per command. Default true.
    pub persistent_shell: bool,
    /// Let the persistent shell hand its jobs to kubeboot's node helper (`kubeboot-node`, copied
    /// to the node once) where it can run. Default true.
    pub node_helper: bool,
}

/// A cluster's part in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The cluster that hosts the shared services (Thanos Query, Grafana, OpenSearch).
    Central,
    /// A cluster that ships its metrics and logs to the central one.
    Edge,
}

impl Role {
    /// The word used in the inventory and the templates.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Central => "central",
            Role::Edge => "edge",
        }
    }
}

/// One Kubernetes cluster (`[[clusters]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub role: Role,
    /// The one LoadBalancer IP all its LoadBalancer services share.
    pub lb_ip: Option<IpAddr>,
    /// The ingress domain (`grafana.<domain>` ...).
    pub domain: Option<String>,
    /// The virtual IP of the API server of a cluster with several nodes (its `controlPlaneEndpoint`).
    pub vip: Option<IpAddr>,
    /// Cluster-level template variables (override `[vars]`).
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Where the `[[clusters]]` entry starts (1-based line), for messages.
    pub line: usize,
}

/// A node's part in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Runs the API server and etcd (and, with no workers in the cluster, the workloads too).
    ControlPlane,
    /// Runs only workloads; joins a control plane.
    Worker,
}

impl NodeRole {
    /// The word used in the inventory and the templates.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeRole::ControlPlane => "control-plane",
            NodeRole::Worker => "worker",
        }
    }
}

/// One machine (`[[nodes]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    /// The node's own host name or IP address (what the playbooks see as `node.address`); kubeboot connects to it
    /// unless `ssh_address` says otherwise.
    pub address: String,
    /// Where kubeboot's SSH connection goes when the node is not reached at `address` itself (a NAT or port
    /// forward, the VM lab's loopback forwards).
    pub ssh_address: Option<String>,
    pub cluster: Option<String>,
    /// Control plane or worker; a node alone in its cluster (or in none) is a control plane.
    pub role: NodeRole,
    pub ssh: SshSettings,
    /// Node-level template variables (override cluster and `[vars]`).
    pub vars: BTreeMap<String, serde_json::Value>,
    /// The port on this node's loopback the bundle is served on, when it differs from
    /// `[sources] bundle_port` (a port taken on this node, or nodes sharing one network).
    pub bundle_port: Option<u16>,
    /// Where the `[[nodes]]` entry starts (1-based line), for messages.
    pub line: usize,
}

impl Node {
    /// The host kubeboot's SSH connection goes to.
    pub fn connect_address(&self) -> &str {
        self.ssh_address.as_deref().unwrap_or(&self.address)
    }

    /// The SSH target for this node (see [`SshSettings::target`]).
    pub fn ssh_target(&self, secrets: NodeSecrets, accept_new_host_key: bool) -> ssh::Target {
        self.ssh
            .target(&self.name, self.connect_address(), secrets, accept_new_host_key)
    }
}

impl SshSettings {
    /// The one place SSH settings become an [`ssh::Target`] for the node `node` at `host`, with its
    /// secrets already read. `accept_new_host_key` records an unknown host key even when
    /// `accept_new_host_keys` is off.
    pub fn target(&self, node: &str, host: &str, secrets: NodeSecrets, accept_new_host_key: bool) -> ssh::Target {
        ssh::Target {
            node: node.to_string(),
            host: host.to_string(),
            port: self.port,
            user: self.user.clone(),
            key: self.key.clone(),
            agent: self.agent,
            password: secrets.password,
            sudo_password: secrets.sudo_password,
            known_hosts: self.known_hosts.clone(),
            new_host_keys: if accept_new_host_key || self.accept_new_host_keys {
                ssh::NewHostKeys::Accept
            } else {
                ssh::NewHostKeys::Refuse
            },
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            persistent_shell: self.persistent_shell,
            node_helper: self.node_helper,
        }
    }
}

/// A loaded, validated `inventory.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The file it was read from.
    pub path: PathBuf,
    pub clusters: Vec<Cluster>,
    pub nodes: Vec<Node>,
    /// `[vars]`: free variables for the playbooks.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// `[secrets]`: named secrets the playbooks may use as `{{ secrets.NAME }}`.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `[sources]`: where every artifact the install downloads comes from.
    pub sources: Sources,
}

impl Inventory {
    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The port `node`'s bundle is served on (its own `bundle_port`, else `[sources] bundle_port`).
    pub fn bundle_port(&self, node: &Node) -> u16 {
        node.bundle_port.unwrap_or(self.sources.bundle_port)
    }

    /// The cluster with this name.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The nodes of a cluster, in inventory order.
    pub fn members<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.cluster.as_deref() == Some(cluster))
    }

    /// The first control-plane node of a node's cluster (the one that runs `kubeadm init`); a node in no
    /// cluster is its own.
    pub fn first_control_plane<'a>(&'a self, node: &'a Node) -> Option<&'a Node> {
        match &node.cluster {
            None => Some(node),
            Some(c) => self.members(c).find(|n| n.role == NodeRole::ControlPlane),
        }
    }
}
