//! An isolated lab modelled on an inventory (the shipped one, the HA example, one with a node added), for the
//! suites that run the shipped playbooks end to end (shipped_install, ha_install, day_two, resume_changes).
//!
//! Each node is a real sshd on loopback with a private view of /etc, /var/lib, /usr/local, /opt, /root and /home
//! and the recording stand-ins first on its PATH ([`LabOptions::isolated`]). The lab gets a loopback range of its
//! own from `lab::net`; its folder holds the lab, kubeboot's state folder and whatever the test writes next to them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kubeboot::lab::{self, ContainerdLayout, LabGuard, LabOptions, NodeKind, NodeOs};

use super::{claim_net, repo};

/// A running isolated lab, with the state folder and the secrets of every kubeboot run on it.
pub struct IsolatedLab {
    /// Stops sshd when dropped; declared first so it drops before the range and the folder go.
    pub lab: LabGuard,
    /// kubeboot's `--state-dir`.
    pub state: PathBuf,
    /// The secrets the model inventory names, as environment variables of every kubeboot run.
    pub secrets: Vec<(&'static str, String)>,
    /// The lab's loopback range, held while it runs.
    _net: lab::net::Net,
    dir: tempfile::TempDir,
}

/// An Ubuntu-like node whose containerd config has this layout.
pub fn ubuntu(containerd: ContainerdLayout) -> NodeKind {
    NodeKind {
        os: NodeOs::Ubuntu,
        containerd,
    }
}

/// A RHEL-like node (with containerd's version 2 config layout, as RHEL's packages have it).
pub fn rhel() -> NodeKind {
    NodeKind {
        os: NodeOs::Rhel,
        containerd: ContainerdLayout::V2,
    }
}

/// Starts an isolated lab like `model` whose nodes must be `nodes`, in that order; node i looks like `kinds[i]`
/// (Ubuntu with containerd 2 past the end). Panics (never skips) when the lab cannot start.
pub fn start_isolated_lab(
    model: &Path,
    nodes: &[&str],
    kinds: Vec<NodeKind>,
    secrets: Vec<(&'static str, String)>,
) -> IsolatedLab {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let net = claim_net(nodes.len());
    let opts = LabOptions {
        dir: dir.path().join("lab"),
        first_address: net.first_address,
        first_port: net.first_port,
        isolated: true,
        kinds,
        like: Some(model.to_path_buf()),
        ..Default::default()
    };
    let lab = lab::up(&opts).unwrap_or_else(|e| panic!("the isolated local lab did not start: {e}"));
    let got: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(got, nodes, "the lab mirrors the model inventory's nodes");
    IsolatedLab {
        lab: LabGuard(lab),
        state: dir.path().join("state"),
        secrets,
        _net: net,
        dir,
    }
}

impl IsolatedLab {
    /// The test's folder: the lab (`lab/`), the state folder (`state/`) and what the test writes next to them.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubeboot -i <the lab's inventory> -p playbooks --state-dir STATE <args>` in the repository, with the
    /// secrets set (not yet started).
    pub fn kubeboot(&self, args: &[&str]) -> Command {
        self.kubeboot_with(&self.lab.inventory, args)
    }

    /// Like [`IsolatedLab::kubeboot`] with another inventory.
    pub fn kubeboot_with(&self, inventory: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kubeboot"));
        c.current_dir(repo())
            .arg("-i")
            .arg(inventory)
            .args(["-p", "playbooks", "--state-dir"])
            .arg(&self.state)
            .args(args)
            .envs(self.secrets.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null());
        c
    }

    /// Gives the secret `name` a new value for the runs from now on (a rotation).
    pub fn set_secret(&mut self, name: &str, value: &str) {
        let (_, v) = self
            .secrets
            .iter_mut()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("the lab has no secret {name}"));
        *v = value.to_string();
    }
}

/// Writes `base` (an inventory) with `entries` added, each a TOML table pushed onto a list (`("nodes", "name =
/// 'node-199'\n...")`), to `path`: the model of a lab with a node or a cluster more than an example has.
pub fn model_with(base: &Path, entries: &[(&str, &str)], path: &Path) -> PathBuf {
    let text = std::fs::read_to_string(base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let mut model: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", base.display()));
    for (list, entry) in entries {
        let entry: toml::Table = entry.parse().expect("a TOML table");
        model
            .get_mut(*list)
            .and_then(toml::Value::as_array_mut)
            .unwrap_or_else(|| panic!("{} has no list {list}", base.display()))
            .push(entry.into());
    }
    std::fs::write(path, toml::to_string(&model).expect("TOML")).expect("write the model inventory");
    path.to_path_buf()
}
