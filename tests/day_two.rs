//! Day two on the shipped playbooks, end to end on an isolated lab modelled on the shipped inventory.toml (four
//! real sshd nodes; kubeadm, kubectl, crictl/etcdctl, apt/dnf, iptables and `ip link` are the recording
//! stand-ins of crates/kubeboot-lab/standins/standin.py, which keep state: packages and holds, the control plane's
//! static pod manifests and version, etcd data, Cilium's links and chains, certificate ages).
//!
//! The shipped install, then `kubeconfig` (4 contexts, 0600, the right servers, kubectl reads it; `--merge`
//! keeps other contexts), `backup` (twice: nothing overwritten), `upgrade` 1.34 -> 1.35 (refused when it skips a
//! minor, `apply` refused after raising the version, kill -9 in the middle (one node stopped between installing
//! kubeadm and holding it) and resumed; per node the upstream order of commands, packages held again), `check`
//! warning about certificates and `renew-certs`, `reset` of cluster-03 (refused without confirmation; only
//! cluster-03 touched) and `apply` reinstalling cluster-03 only.
//! Needs root, sshd, sudo, unshare, python3 and kubectl: a missing one fails, never skips.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::isolated::{IsolatedLab, rhel, start_isolated_lab, ubuntu};
use common::{Run, file_mode, repo, run_for, strings, wait_until};
use kubeboot::lab::ContainerdLayout;
use serde_json::Value;

const NODES: [&str; 4] = ["node-194", "node-196", "node-197", "node-198"];
const CLUSTERS: [&str; 4] = ["cluster-01", "cluster-02", "cluster-03", "cluster-04"];
const RHEL_NODE: &str = "node-196";
/// How long one run may take before it counts as hung (the whole shipped install is one run).
const INSTALL_CAP: Duration = Duration::from_secs(600);

struct Day2 {
    lab: IsolatedLab,
    /// HOME of every run (`kubeconfig --merge` writes ~/.kube/config).
    home: PathBuf,
}

impl Day2 {
    fn start() -> Day2 {
        let ubuntu = ubuntu(ContainerdLayout::V3);
        let secrets = [
            ("KUBEBOOT_S3_ACCESS_KEY", "lab-access"),
            ("KUBEBOOT_S3_SECRET_KEY", "lab-secret"),
            ("KUBEBOOT_GRAFANA_ADMIN_PASSWORD", "lab-grafana"),
            ("KUBEBOOT_OPENSEARCH_ADMIN_PASSWORD", "lab-opensearch"),
        ]
        .map(|(k, v)| (k, v.to_string()))
        .to_vec();
        let lab = start_isolated_lab(
            &repo().join("inventory.toml"),
            &NODES,
            vec![ubuntu, rhel(), ubuntu, ubuntu],
            secrets,
        );
        let home = lab.dir().join("home");
        fs::create_dir_all(&home).unwrap();
        Day2 { lab, home }
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_with(&self.lab.lab.inventory, args)
    }

    fn command_with(&self, inventory: &Path, args: &[&str]) -> Command {
        let mut c = self.lab.kubeboot_with(inventory, args);
        c.env("HOME", &self.home);
        c
    }

    fn kubeboot(&self, args: &[&str]) -> Run {
        run_for(self.command(args), INSTALL_CAP)
    }

    fn calls(&self, node: &str) -> Vec<String> {
        self.lab
            .records(node)
            .iter()
            .map(|v| {
                format!(
                    "{} {}",
                    v["cmd"].as_str().unwrap_or_default(),
                    strings(&v["argv"]).join(" ")
                )
            })
            .collect()
    }

    fn standin_state(&self, node: &str) -> Value {
        let path = self.lab.lab.standin_dir(node).join("state.json");
        serde_json::from_str(&fs::read_to_string(&path).unwrap_or_default()).unwrap_or(Value::Null)
    }

    fn node_text(&self, node: &str, path: &str) -> Option<String> {
        fs::read_to_string(self.lab.lab.node_file(node, path)).ok()
    }

    fn set_version(&self, version: &str) {
        let text = fs::read_to_string(&self.lab.lab.inventory).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with("kubernetes_version") {
                out.push_str(&format!("kubernetes_version = \"{version}\"\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        fs::write(&self.lab.lab.inventory, out).unwrap();
    }

    fn backups(&self, cluster: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.lab.state.join("backups").join(cluster))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }
}

/// Index of the first call starting with `prefix` at or after `from`.
fn after(calls: &[String], from: usize, prefix: &str, node: &str) -> usize {
    calls[from..]
        .iter()
        .position(|c| c.starts_with(prefix))
        .map(|i| i + from)
        .unwrap_or_else(|| {
            panic!(
                "{node}: no `{prefix}` after call {from}; calls:\n{}",
                calls[from..].join("\n")
            )
        })
}

#[test]
fn day_two_kubeconfig_backup_upgrade_certificates_reset_and_reinstall_on_the_shipped_playbooks() {
    let t = Day2::start();
    let install = t.kubeboot(&["apply", "--yes", "--output", "json"]);
    install.assert_code(0);

    // --- kubeconfig: one file, four contexts, 0600, each pointed at its node; kubectl reads it.
    let kc = t.kubeboot(&["kubeconfig", "--yes"]);
    kc.assert_code(0);
    let file = t.lab.state.join("kubeconfig.yaml");
    assert_eq!(file_mode(&file), 0o600, "{kc}");
    let contexts = Command::new("kubectl")
        .args(["config", "get-contexts", "-o", "name", "--kubeconfig"])
        .arg(&file)
        .output()
        .expect("kubectl is installed on this machine");
    let names: Vec<String> = String::from_utf8_lossy(&contexts.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        names,
        CLUSTERS,
        "kubectl lists the contexts: {}",
        String::from_utf8_lossy(&contexts.stderr)
    );
    let config = kubeboot::kubeconfig::parse(&fs::read_to_string(&file).unwrap()).unwrap();
    for (i, cluster) in CLUSTERS.iter().enumerate() {
        let address = t.lab.lab.node(NODES[i]).unwrap().address;
        let entry = config["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == *cluster)
            .unwrap();
        assert_eq!(
            entry["cluster"]["server"],
            format!("https://{address}:6443"),
            "{cluster}"
        );
    }
    // --merge keeps the operator's other contexts and current context.
    fs::create_dir_all(t.home.join(".kube")).unwrap();
    fs::write(
        t.home.join(".kube/config"),
        "apiVersion: v1\nkind: Config\ncurrent-context: prod\nclusters:\n- name: prod\n  cluster: {server: 'https://prod.example:6443'}\ncontexts:\n- name: prod\n  context: {cluster: prod, user: me}\nusers:\n- name: me\n  user: {token: abc}\n",
    )
    .unwrap();
    t.kubeboot(&["kubeconfig", "--yes", "--merge"]).assert_code(0);
    let merged = kubeboot::kubeconfig::parse(&fs::read_to_string(t.home.join(".kube/config")).unwrap()).unwrap();
    let merged_names = kubeboot::kubeconfig::contexts(&merged);
    assert_eq!(
        merged_names,
        ["prod", "cluster-01", "cluster-02", "cluster-03", "cluster-04"]
    );
    assert_eq!(merged["current-context"], "prod");
    assert_eq!(file_mode(&t.home.join(".kube/config")), 0o600);

    // --- backup, twice: 0600 snapshots named per run, the older one never overwritten.
    t.kubeboot(&["backup", "--yes"]).assert_code(0);
    std::thread::sleep(Duration::from_millis(1100));
    let second = t.kubeboot(&["backup", "--yes"]);
    second.assert_code(0);
    assert!(second.stdout.contains("etcd snapshot kept:"), "{second}");
    for (i, cluster) in CLUSTERS.iter().enumerate() {
        let files = t.backups(cluster);
        assert_eq!(files.len(), 2, "{cluster}: {files:?}");
        for f in &files {
            assert_eq!(file_mode(f), 0o600);
            let bytes = fs::read(f).unwrap();
            assert!(
                bytes.starts_with(format!("etcd snapshot (stand-in) of {}", NODES[i]).as_bytes()),
                "{}",
                f.display()
            );
        }
        assert!(
            t.calls(NODES[i])
                .iter()
                .any(|c| c.starts_with("etcdctl --endpoints=https://127.0.0.1:2379"))
        );
    }

    // With an etcd_backup_bucket the snapshots also go to S3 (moto on loopback), each under its own name.
    let (_moto, s3) = common::start_moto();
    let with_s3 = t.lab.lab.dir.join("inventory-s3.toml");
    let text: Vec<String> = fs::read_to_string(&t.lab.lab.inventory)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("s3_endpoint") {
                format!("s3_endpoint = \"{s3}\"")
            } else if l.starts_with("etcd_backup_bucket") {
                "etcd_backup_bucket = \"etcd-backups\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    fs::write(&with_s3, text.join("\n")).unwrap();
    let uploaded = run_for(t.command_with(&with_s3, &["backup", "--yes"]), INSTALL_CAP);
    uploaded.assert_code(0);
    for cluster in CLUSTERS {
        let line = format!("etcd snapshot uploaded: s3://etcd-backups/etcd/{cluster}/etcd-{cluster}-");
        assert!(uploaded.stdout.contains(&line), "{uploaded}");
    }
    let listing = Command::new("curl")
        .args(["-s", &format!("{s3}/etcd-backups?list-type=2")])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(listing.matches("<Key>etcd/").count(), 4, "{listing}");
    assert!(!uploaded.stdout.contains("lab-secret"), "{uploaded}");

    // --- upgrade: skipping a minor is bad input, located at the inventory's kubernetes_version.
    t.set_version("1.36");
    let skip = t.kubeboot(&["upgrade", "--yes"]);
    skip.assert_code(2);
    assert!(
        skip.stderr.contains(&format!("{}:", t.lab.lab.inventory.display()))
            && skip.stderr.contains("skips a minor version")
            && skip.stderr.contains("kubernetes_version = \"1.35\""),
        "{skip}"
    );
    // `apply` after raising the version refuses on the node, before any package changes.
    t.set_version("1.35");
    let before = t.calls("node-194").len();
    let refused = t.kubeboot(&["apply", "--yes", "--output", "json", "--limit", "cluster-01"]);
    refused.assert_code(1);
    assert!(
        refused.stdout.contains("changes version with kubeboot upgrade"),
        "{refused}"
    );
    assert!(
        !t.calls("node-194")[before..].iter().any(|c| c.contains("kubeadm=1.35")),
        "apply installed the new kubeadm"
    );

    // Killed (-9) in the middle of the upgrade, then resumed. node-194 is stopped between installing the new
    // kubeadm and holding it again (its `apt-mark hold` is held by the stand-in): its guard must not call the
    // task done on the resume, or kubeadm stays unheld.
    let hold = t.lab.lab.standin_dir("node-194").join("hold");
    fs::create_dir_all(&hold).unwrap();
    fs::write(hold.join("apt-mark-hold"), "").unwrap();
    let mut child = t
        .command(&["upgrade", "--yes", "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = wait_until(Duration::from_secs(120), || {
        t.calls("node-198")
            .iter()
            .any(|c| c.starts_with("kubeadm upgrade plan"))
            && t.calls("node-194").iter().any(|c| c == "apt-mark hold kubeadm")
    });
    let _ = child.kill();
    let _ = child.wait();
    fs::remove_file(hold.join("apt-mark-hold")).unwrap();
    assert!(
        started,
        "the upgrade never reached kubeadm upgrade plan on node-198 and apt-mark hold kubeadm on node-194"
    );
    let resumed = t.kubeboot(&["upgrade", "--yes", "--output", "json"]);
    resumed.assert_code(0);
    // It continued: what finished before the kill is skipped as done, and kubeadm was installed once.
    let done_before: Vec<String> = resumed
        .events_of("task_finished")
        .into_iter()
        .filter(|e| e["node"] == "node-198" && e["stage"] == "upgrade" && e["reason"] == "done")
        .map(|e| e["task"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        done_before.iter().any(|t| t == "kubeadm of the new version"),
        "the resumed upgrade redid finished tasks: {done_before:?}\n{resumed}"
    );
    let installs = t
        .calls("node-198")
        .iter()
        .filter(|c| c.contains("install -y kubeadm=1.35."))
        .count();
    assert_eq!(installs, 1, "node-198: kubeadm 1.35 installed again after the resume");
    let reinstalls = t
        .calls("node-194")
        .iter()
        .filter(|c| c.contains("install -y kubeadm=1.35."))
        .count();
    assert_eq!(
        reinstalls, 2,
        "node-194: stopped before the hold, kubeadm is installed and held again on the resume\n{resumed}"
    );
    for node in NODES {
        let calls = t.calls(node);
        let start = calls
            .iter()
            .position(|c| c.starts_with("kubeadm upgrade plan"))
            .unwrap();
        let apply = after(&calls, start, "kubeadm upgrade apply -y v1.35.", node);
        let kubelet = if node == RHEL_NODE {
            after(
                &calls,
                apply,
                "dnf install -y --disableexcludes=kubernetes kubelet-1.35.",
                node,
            )
        } else {
            let unhold = after(&calls, apply, "apt-mark unhold kubelet kubectl", node);
            let install = after(
                &calls,
                unhold,
                "apt-get -o DPkg::Lock::Timeout=300 install -y kubelet=1.35.",
                node,
            );
            after(&calls, install, "apt-mark hold kubelet kubectl", node)
        };
        after(&calls, kubelet, "systemctl restart kubelet", node);
        if node != RHEL_NODE {
            let kubeadm = calls
                .iter()
                .position(|c| c.contains("install -y kubeadm=1.35."))
                .unwrap();
            assert!(
                calls[..kubeadm].iter().any(|c| c == "apt-mark unhold kubeadm"),
                "{node}: kubeadm unheld first"
            );
            assert!(kubeadm < start, "{node}: kubeadm upgraded before kubeadm upgrade plan");
            let state = t.standin_state(node);
            let held: Vec<&str> = state["held"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            for p in ["kubelet", "kubeadm", "kubectl"] {
                assert!(held.contains(&p), "{node}: {p} held again: {held:?}");
                assert!(
                    state["packages"][p].as_str().unwrap().starts_with("1.35."),
                    "{node}: {p}"
                );
            }
        }
        let manifest = t
            .node_text(node, "/etc/kubernetes/manifests/kube-apiserver.yaml")
            .unwrap();
        assert!(manifest.contains("kube-apiserver:v1.35."), "{node}: {manifest}");
    }
    for cluster in CLUSTERS {
        assert!(
            t.backups(cluster).len() >= 4,
            "{cluster}: a snapshot before the upgrade"
        );
    }
    // The install converges with the new version: nothing is reinstalled by apply.
    t.kubeboot(&["apply", "--yes", "--output", "json"]).assert_code(0);

    // --- certificates: check warns under 30 days, renew-certs renews them and restarts the control plane.
    fs::write(t.lab.lab.standin_dir("node-194").join("cert_days_left"), "12").unwrap();
    let check = t.kubeboot(&["check", "--limit", "cluster-01"]);
    check.assert_code(0);
    assert!(
        check
            .stdout
            .contains("WARN cluster-01: certificate apiserver expires in 12d (under 30 days)"),
        "{check}"
    );
    let renew = t.kubeboot(&["renew-certs", "--yes", "--limit", "cluster-01"]);
    renew.assert_code(0);
    let calls = t.calls("node-194");
    assert!(calls.iter().any(|c| c == "kubeadm certs renew all"));
    let again = t.kubeboot(&["check", "--limit", "cluster-01"]);
    assert!(
        again
            .stdout
            .contains("PASS cluster-01: certificate apiserver expires in 364d"),
        "{again}"
    );

    // --- reset: refused without the confirmation naming every selected cluster; nothing runs.
    let counts: BTreeMap<&str, usize> = NODES.iter().map(|n| (*n, t.calls(n).len())).collect();
    for args in [
        vec!["reset", "--limit", "cluster-03"],
        vec!["reset", "--limit", "cluster-03", "--yes"],
        vec!["reset", "--yes", "--confirm", "cluster-03"],
    ] {
        let r = t.kubeboot(&args);
        r.assert_code(2);
        assert!(
            r.stderr.contains("command line:1:1: error:") && r.stderr.contains("nothing was run"),
            "{r}"
        );
    }
    for n in NODES {
        assert_eq!(t.calls(n).len(), counts[n], "{n}: a refused reset ran something");
    }
    let reset = t.kubeboot(&[
        "reset",
        "--limit",
        "cluster-03",
        "--yes",
        "--confirm",
        "cluster-03",
        "--output",
        "json",
    ]);
    reset.assert_code(0);
    assert!(reset.stdout.contains("clean: no kubernetes folders"), "{reset}");
    for n in NODES.iter().filter(|n| **n != "node-197") {
        assert_eq!(t.calls(n).len(), counts[n], "{n}: touched by the reset of cluster-03");
    }
    let calls = t.calls("node-197");
    assert!(
        calls[counts["node-197"]..]
            .iter()
            .any(|c| c == "kubeadm reset -f --cleanup-tmp-dir")
    );
    let state = t.standin_state("node-197");
    assert!(state["cluster"].is_null());
    let links: Vec<&str> = state["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(links, ["lo", "eth0"], "Cilium's links are gone");
    let rules: Vec<&str> = state["iptables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        rules,
        ["-A INPUT -s 10.1.2.0/24 -j ACCEPT"],
        "only the operator's own rule stays"
    );
    assert!(t.node_text("node-197", "/etc/kubernetes/admin.conf").is_none());
    assert!(
        state["packages"]["kubeadm"].is_string(),
        "packages are kept without --purge-packages"
    );
    assert!(t.backups("cluster-03").len() >= 5, "a snapshot before the reset");

    // --- apply reinstalls cluster-03 only.
    let counts: BTreeMap<&str, usize> = NODES.iter().map(|n| (*n, t.calls(n).len())).collect();
    let reinstall = t.kubeboot(&["apply", "--yes", "--output", "json"]);
    reinstall.assert_code(0);
    assert!(
        t.calls("node-197")[counts["node-197"]..]
            .iter()
            .any(|c| c.starts_with("kubeadm init"))
    );
    for n in NODES.iter().filter(|n| **n != "node-197") {
        assert_eq!(
            t.calls(n).len(),
            counts[n],
            "{n}: the reinstall of cluster-03 touched it"
        );
    }
}
