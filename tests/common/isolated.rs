//! An isolated lab modelled on an inventory (the shipped one, the HA example, one with a node added), for the
//! suites that run the shipped playbooks end to end (shipped_install, ha_install, day_two, resume_changes).
//!
//! Each node is a real sshd on loopback with a private view of /etc, /var/lib, /usr/local, /opt, /root and /home
//! and the recording stand-ins first on its PATH ([`LabOptions::isolated`]). The lab gets a loopback range of its
//! own from `lab::net`; its folder holds the lab, kubeboot's state folder and whatever the test writes next to them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubeboot::lab::{self, ContainerdLayout, LabGuard, LabOptions, NodeKind, NodeOs};
use serde_json::Value;

use super::{claim_net, repo, wait_with_cap};

/// How long one run may take before it counts as hung: far beyond a whole shipped install on this machine.
pub const RUN_CAP: Duration = Duration::from_secs(900);

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

    /// `kubeboot <args>` on the lab's inventory, run to the end (or killed after [`RUN_CAP`]).
    pub fn run(&self, args: &[&str]) -> LabRun {
        self.run_with(&self.lab.inventory, args)
    }

    /// Like [`IsolatedLab::run`] with another inventory.
    pub fn run_with(&self, inventory: &Path, args: &[&str]) -> LabRun {
        LabRun::of(self.kubeboot_with(inventory, args), RUN_CAP)
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

    /// The stand-ins' calls recorded on a node so far, one JSON object each (`cmd`, `argv`, `t`, applied
    /// `objects`); a line being written while a run is killed is left out.
    pub fn records(&self, node: &str) -> Vec<Value> {
        std::fs::read_to_string(self.lab.standin_dir(node).join("record.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A file as a node sees it (`/etc/fstab`); panics naming the node when it cannot be read.
    pub fn node_text(&self, node: &str, path: &str) -> String {
        let p = self.lab.node_file(node, path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{node}: cannot read {path} ({}): {e}", p.display()))
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

/// One kubeboot run on the lab: what it printed and the JSON events on its stdout.
pub struct LabRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Every stdout line that is JSON (a run killed mid-write may end with a line cut short; plain-text
    /// commands such as `plan` have none).
    pub events: Vec<Value>,
    pub took: Duration,
}

impl LabRun {
    /// Runs `cmd` to the end; kills it after `cap` (its code is then `None`), so a hang fails the test.
    pub fn of(mut cmd: Command, cap: Duration) -> LabRun {
        let started = Instant::now();
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the kubeboot binary starts");
        let out = wait_with_cap(child, cap);
        LabRun::from_parts(out.status.code(), &out.stdout, &out.stderr, started.elapsed())
    }

    /// A run from what its process wrote.
    pub fn from_parts(code: Option<i32>, stdout: &[u8], stderr: &[u8], took: Duration) -> LabRun {
        let stdout = String::from_utf8_lossy(stdout).into_owned();
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        LabRun {
            code,
            stdout,
            stderr: String::from_utf8_lossy(stderr).into_owned(),
            events,
            took,
        }
    }

    /// The `task_finished` events of one node, in order.
    pub fn finished(&self, node: &str) -> Vec<&Value> {
        self.task_events("task_finished", node)
    }

    /// The `task_started` events of one node, in order.
    pub fn started(&self, node: &str) -> Vec<&Value> {
        self.task_events("task_started", node)
    }

    fn task_events(&self, kind: &str, node: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["event"] == kind && e["node"] == node)
            .collect()
    }

    /// Every task of `node` finished ok, changed or skipped (and at least one finished).
    pub fn assert_all_succeeded(&self, node: &str) {
        let finished = self.finished(node);
        assert!(!finished.is_empty(), "{node}: no task finished\n{}", self.explain());
        for e in finished {
            let status = e["status"].as_str().unwrap_or_default();
            assert!(
                matches!(status, "ok" | "changed" | "skipped"),
                "{node}: task {} / {} ended {status}: {}\n{}",
                e["stage"],
                e["task"],
                e["error"],
                self.explain()
            );
        }
    }

    /// The exit code, stderr and the last 40 stdout lines, for a failure message.
    pub fn explain(&self) -> String {
        let tail: Vec<&str> = self.stdout.lines().rev().take(40).collect();
        format!(
            "exit {:?}\n--- stderr\n{}\n--- last stdout lines (newest first)\n{}",
            self.code,
            self.stderr,
            tail.join("\n")
        )
    }
}
