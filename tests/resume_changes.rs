//! Resume that never lies, with the SHIPPED playbooks on an isolated local lab (real sshd nodes, recording
//! stand-ins for kubeadm/kubectl/helm/kustomize/apt/systemctl from crates/kubeboot-lab/standins/standin.py):
//! the guide's procedures done with a plain `apply` re-run exactly the tasks that depend on the change.
//!
//! One install, then in turn: the drift check (guards only), removing a cluster (Thanos Query's endpoints come
//! from the inventory), adding one (its node runs its whole install, Query learns the endpoint), raising `cilium_version`, rotating a secret, and a `--fresh` run killed half-way
//! followed by a plain `apply`. Needs root, sshd, sudo, unshare and python3: a missing one fails, never skips.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::isolated::{IsolatedLab, LabRun, model_with, start_isolated_lab};
use common::repo;
use common::shipped::files_below;
use serde_json::Value;

const NODES: [&str; 4] = ["node-194", "node-196", "node-197", "node-198"];

struct Lab {
    lab: IsolatedLab,
    /// The lab inventory's entries of the cluster added later, held back from the first install.
    later: Vec<(&'static str, toml::Value)>,
}

/// A (stage, task) pair.
type Key = (String, String);

/// What the suite reads of a run's events beyond [`LabRun`]'s own.
impl LabRun {
    /// The (stage, task) of every task that started on a node.
    fn started_keys(&self, node: &str) -> BTreeSet<Key> {
        self.started(node)
            .into_iter()
            .map(|e| (s(&e["stage"]), s(&e["task"])))
            .collect()
    }

    fn why(&self, node: &str, task: &str) -> Option<String> {
        self.events
            .iter()
            .find(|e| e["event"] == "task_started" && e["node"] == node && e["task"] == task)
            .and_then(|e| e["why"].as_str().map(str::to_string))
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn keys(pairs: &[(&str, &str)]) -> BTreeSet<Key> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The cluster and node the test adds later (§3.4): a fifth lab machine, held back from the first install.
const LATER: [(&str, &str); 2] = [
    (
        "clusters",
        "name = 'cluster-05'\nrole = 'edge'\nlb_ip = '192.168.101.215'\ndomain = 'k8s-cluster-05.miribit.lab'",
    ),
    (
        "nodes",
        "name = 'node-199'\naddress = '192.168.101.199'\ncluster = 'cluster-05'",
    ),
];

fn start() -> Lab {
    // The lab is modelled on the shipped inventory plus the cluster added later, so that cluster's node is a
    // machine of its own that no install has touched.
    let model_dir = tempfile::tempdir().expect("a temporary folder");
    let like = model_with(
        &repo().join("inventory.toml"),
        &LATER,
        &model_dir.path().join("like.toml"),
    );
    let secrets = [
        ("KUBEBOOT_S3_ACCESS_KEY", "s3access-resume-test-1"),
        ("KUBEBOOT_S3_SECRET_KEY", "s3secret-resume-test-1"),
        ("KUBEBOOT_GRAFANA_ADMIN_PASSWORD", "grafana-resume-test-1"),
        ("KUBEBOOT_OPENSEARCH_ADMIN_PASSWORD", "opensearch-resume-test-1"),
    ]
    .map(|(k, v)| (k, v.to_string()))
    .to_vec();
    let mut nodes = NODES.to_vec();
    nodes.push("node-199");
    let t = Lab {
        later: Vec::new(),
        lab: start_isolated_lab(&like, &nodes, Vec::new(), secrets),
    };
    let mut later = Vec::new();
    t.edit_inventory(|inv| {
        for (list, name) in [("clusters", "cluster-05"), ("nodes", "node-199")] {
            later.push((list, take(inv, list, name)));
        }
    });
    Lab { later, ..t }
}

/// Removes the entry of this name from the inventory's list and returns it.
fn take(inv: &mut toml::Table, list: &str, name: &str) -> toml::Value {
    let items = inv
        .get_mut(list)
        .and_then(toml::Value::as_array_mut)
        .unwrap_or_else(|| panic!("the inventory has no {list}"));
    let at = items
        .iter()
        .position(|i| i.get("name").and_then(toml::Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{name} is not in the inventory's {list}"));
    items.remove(at)
}

impl Lab {
    fn kubeboot(&self, args: &[&str]) -> Command {
        self.lab.kubeboot(args)
    }

    fn run(&self, args: &[&str]) -> LabRun {
        self.lab.run(args)
    }

    fn apply(&self, extra: &[&str]) -> LabRun {
        let mut args = vec!["apply", "--yes", "--output", "json"];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        assert_eq!(run.code, Some(0), "apply {extra:?} failed\n{}", run.explain());
        run
    }

    /// The stand-in calls recorded on a node so far: (command, argv, applied objects).
    fn calls(&self, node: &str) -> Vec<Value> {
        self.lab.records(node)
    }

    fn edit_inventory(&self, edit: impl FnOnce(&mut toml::Table)) {
        let text = std::fs::read_to_string(&self.lab.lab.inventory).expect("the lab inventory");
        let mut inv: toml::Table = text.parse().expect("the lab inventory is TOML");
        edit(&mut inv);
        std::fs::write(&self.lab.lab.inventory, toml::to_string(&inv).expect("TOML")).expect("write the inventory");
    }

    fn node_file(&self, node: &str, path: &str) -> PathBuf {
        self.lab.lab.node_file(node, path)
    }

    /// Since call `before` on node-194, Thanos Query was applied exactly once, and its overlay names the
    /// `present` cluster's store endpoint and not the `absent` one's.
    fn assert_thanos_applied_once(&self, before: usize, run: &LabRun, present: &str, absent: &str) {
        let applied = self.calls("node-194")[before..]
            .iter()
            .filter(|c| applies(c, "Deployment", "thanos-query"))
            .count();
        assert_eq!(
            applied,
            1,
            "thanos applied once after the endpoint change\n{}",
            run.explain()
        );
        let overlay = std::fs::read_to_string(self.node_file(
            "node-194",
            "/var/lib/kubeboot/manifests/thanos/overlay/kustomization.yaml",
        ))
        .expect("the thanos overlay");
        assert!(
            overlay.contains(&format!("--endpoint={present}:10901")) && !overlay.contains(absent),
            "{overlay}"
        );
    }
}

/// True when the call is `kubectl apply` of an object of this kind and name.
fn applies(call: &Value, kind: &str, name: &str) -> bool {
    call["cmd"] == "kubectl"
        && call["objects"]
            .as_array()
            .is_some_and(|objs| objs.iter().any(|o| o["kind"] == kind && o["name"] == name))
}

fn describe(calls: &[Value]) -> String {
    calls
        .iter()
        .map(|c| format!("{} {}", s(&c["cmd"]), c["argv"]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_plain_apply_reruns_exactly_what_the_guides_changes_touch_and_a_killed_fresh_run_continues_fresh() {
    let t = start();
    let first = t.apply(&[]);
    for node in NODES {
        assert!(
            !first.started_keys(node).is_empty(),
            "{node} ran nothing\n{}",
            first.explain()
        );
    }

    // 1. Drift check: a service a done task started is stopped on node-197 (in the stand-ins' state); `plan
    //    --check` runs the guards of done tasks only, names the task that would run again, exits 1, and
    //    changes nothing (journal, node state).
    let units = t.lab.lab.standin_dir("node-197").join("state.json");
    let set_containerd = |active: bool| {
        let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&units).expect("stand-in state"))
            .expect("stand-in state is JSON");
        state["units"]["containerd"]["active"] = Value::Bool(active);
        std::fs::write(&units, state.to_string()).expect("write the stand-in state");
    };
    set_containerd(false);
    let journal_before = std::fs::read(t.lab.state.join("journal.jsonl")).expect("a journal");
    let calls_before: Vec<usize> = NODES.iter().map(|n| t.calls(n).len()).collect();
    let check = t.run(&["plan", "--check"]);
    assert_eq!(
        check.code,
        Some(1),
        "a drifted node makes plan --check exit 1\n{}",
        check.explain()
    );
    assert!(check.stdout.contains("Drift check (guards only)"), "{}", check.stdout);
    // The lab's stand-in `sysctl` cannot set the host's /proc/sys: that guard never holds in the lab, on any node.
    let drifted: Vec<&str> = check
        .stdout
        .lines()
        .filter(|l| l.contains("would run again") && !l.contains("os-prep / sysctl applied"))
        .collect();
    assert_eq!(
        drifted,
        ["    would run again: containerd / containerd running (guard: exit code 3)"],
        "{}",
        check.stdout
    );
    let node_197 = check.stdout.split("node node-197:").nth(1).unwrap_or_default();
    assert!(
        node_197.starts_with(' ') && node_197.contains("containerd running"),
        "{}",
        check.stdout
    );
    assert_eq!(
        std::fs::read(t.lab.state.join("journal.jsonl")).unwrap(),
        journal_before,
        "plan --check wrote the journal"
    );
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&units).unwrap()).unwrap();
    assert_eq!(
        state["units"]["containerd"]["active"], false,
        "plan --check started containerd"
    );
    for (i, node) in NODES.iter().enumerate() {
        let new = &t.calls(node)[calls_before[i]..];
        // Guards read (dpkg-query, systemctl is-*, apt-mark showhold, kubeadm version, ...); nothing that changes a
        // node ran.
        let changing: Vec<&Value> = new
            .iter()
            .filter(|c| {
                let argv0 = c["argv"][0].as_str().unwrap_or_default();
                matches!(s(&c["cmd"]).as_str(), "apt-get" | "dnf" | "modprobe" | "swapoff")
                    || (c["cmd"] == "kubeadm" && argv0 != "version")
                    || (c["cmd"] == "kubectl" && argv0 == "apply")
                    || (c["cmd"] == "systemctl" && !argv0.starts_with("is-") && argv0 != "cat")
            })
            .collect();
        assert!(
            changing.is_empty(),
            "{node}: plan --check changed something:\n{}",
            describe(new)
        );
    }
    set_containerd(true);

    // 2. Remove a cluster (§3.4): Thanos Query on the central cluster loses an endpoint with a plain apply.
    t.edit_inventory(|inv| {
        for (list, name) in [("clusters", "cluster-04"), ("nodes", "node-198")] {
            take(inv, list, name);
        }
    });
    let plan = t.run(&["plan"]);
    assert!(
        plan.stdout.contains("[run            ] copy thanos manifests (sudo) — input changed: file /var/lib/kubeboot/manifests/thanos/overlay/")
            && plan
                .stdout
                .contains("[run            ] apply thanos (sudo) — after changed: copy thanos manifests (if it changes)"),
        "{}",
        plan.stdout
    );
    let before = t.calls("node-194").len();
    let removed = t.apply(&[]);
    t.assert_thanos_applied_once(before, &removed, "192.168.101.212", "192.168.101.213");
    assert_eq!(
        removed.why("node-194", "apply thanos").as_deref(),
        Some("after changed: copy thanos manifests")
    );
    let mut expected_central = keys(&[
        ("thanos", "copy thanos manifests"),
        ("thanos", "apply thanos"),
        ("thanos", "wait for thanos"),
        ("verify-monitoring", "thanos query sees every store"),
        ("verify-monitoring", "opensearch receives logs from every cluster"),
    ]);
    let reran_alerts = keys(&[
        ("alerts-policies", "copy alert and policy manifests"),
        ("alerts-policies", "apply alerts and policies"),
        ("alerts-policies", "wait for rules to load"),
    ]);
    expected_central.extend(reran_alerts.iter().cloned());
    // Exactly what renders the cluster list (Thanos' endpoints and rules, the OpenSearch network policy, the
    // verify checks) and what follows it in its stage; nothing else, on any node.
    assert_eq!(removed.started_keys("node-194"), expected_central, "node-194");
    for node in ["node-196", "node-197"] {
        assert_eq!(removed.started_keys(node), reran_alerts, "{node}");
    }

    // 2b. Add a cluster (§3.4): cluster-05 with its node-199, a machine no install has touched, joins with a
    //     plain apply. The new node runs its whole install (nothing is "done" for a node the journal never saw);
    //     Thanos Query learns the new endpoint; the other nodes run only what renders the cluster list.
    t.edit_inventory(|inv| {
        for (list, entry) in &t.later {
            inv.get_mut(*list)
                .and_then(toml::Value::as_array_mut)
                .expect("the lab inventory lists clusters and nodes")
                .push(entry.clone());
        }
    });
    let before = t.calls("node-194").len();
    let added = t.apply(&[]);
    let done_on_new: Vec<&Value> = added
        .finished("node-199")
        .into_iter()
        .filter(|e| e["status"] == "skipped" && e["reason"] == "done")
        .collect();
    assert!(
        done_on_new.is_empty(),
        "the new node skipped tasks as done: {done_on_new:?}\n{}",
        added.explain()
    );
    let stages_on_new: BTreeSet<String> = added
        .started_keys("node-199")
        .into_iter()
        .map(|(stage, _)| stage)
        .collect();
    for stage in [
        "preflight",
        "os-prep",
        "containerd",
        "kubeadm-init",
        "cilium",
        "verify-monitoring",
        "verify",
    ] {
        assert!(
            stages_on_new.contains(stage),
            "node-199 ran nothing in {stage}: {stages_on_new:?}\n{}",
            added.explain()
        );
    }
    t.assert_thanos_applied_once(before, &added, "192.168.101.215", "192.168.101.213");
    assert_eq!(added.started_keys("node-194"), expected_central, "node-194");
    for node in ["node-196", "node-197"] {
        assert_eq!(added.started_keys(node), reran_alerts, "{node}");
    }

    // 3. Raise cilium_version (§3.5): `apply cilium` runs again on every node, and nothing outside the stage.
    t.edit_inventory(|inv| {
        if let Some(toml::Value::Table(vars)) = inv.get_mut("vars") {
            vars.insert("cilium_version".into(), toml::Value::String("1.18.5".into()));
        }
    });
    let before: Vec<usize> = ["node-194", "node-196", "node-197"]
        .iter()
        .map(|n| t.calls(n).len())
        .collect();
    let raised = t.apply(&[]);
    for (i, node) in ["node-194", "node-196", "node-197"].iter().enumerate() {
        let got = raised.started_keys(node);
        assert!(
            got.contains(&("cilium".to_string(), "cilium manifests".to_string()))
                && got.contains(&("cilium".to_string(), "apply cilium".to_string())),
            "{node}: {got:?}\n{}",
            raised.explain()
        );
        let outside: Vec<&Key> = got.iter().filter(|(stage, _)| stage != "cilium").collect();
        assert!(
            outside.is_empty(),
            "{node}: ran tasks outside the cilium stage: {outside:?}"
        );
        let cilium_applies = t.calls(node)[before[i]..]
            .iter()
            .filter(|c| applies(c, "ConfigMap", "cilium-chart-values"))
            .count();
        assert_eq!(cilium_applies, 1, "{node}: the Cilium chart was not applied again once");
        assert_eq!(
            raised.why(node, "apply cilium").as_deref(),
            Some("after changed: cilium manifests")
        );
    }

    // 4. Rotate a secret (§7.2): only the task using it runs, on the node that has it.
    let mut t = t;
    t.lab
        .set_secret("KUBEBOOT_GRAFANA_ADMIN_PASSWORD", "grafana-resume-test-2");
    let rotated = t.apply(&[]);
    assert_eq!(
        rotated.started_keys("node-194"),
        keys(&[("s3-secrets", "grafana admin secret")]),
        "{}",
        rotated.explain()
    );
    assert_eq!(
        rotated.why("node-194", "grafana admin secret").as_deref(),
        Some("input changed: secrets")
    );
    for node in ["node-196", "node-197"] {
        assert!(
            rotated.started_keys(node).is_empty(),
            "{node}: {:?}",
            rotated.started_keys(node)
        );
    }

    // 5. `--fresh` killed half-way, then a plain apply: what the fresh run did not reach runs, what it reached
    //    does not run again.
    let child = t
        .kubeboot(&["apply", "--yes", "--output", "json", "--fresh"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubeboot starts");
    let journal = t.lab.state.join("journal.jsonl");
    let fresh_run = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "the fresh run never got going");
            let records = common::journal_records(&t.lab.state);
            let fresh: Vec<&Value> = records.iter().filter(|r| r["record"] == "fresh").collect();
            if let Some(run) = fresh.first().map(|r| s(&r["run"])) {
                let done = records
                    .iter()
                    .filter(|r| r["record"] == "task" && r["run"] == run.as_str())
                    .count();
                // Part-way: well into the install, far from its end.
                if done >= 60 {
                    break run;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    common::signal(child.id(), libc::SIGKILL);
    let _ = common::wait_with_cap(child, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let records = common::journal_records(&t.lab.state);
    let reached: BTreeSet<(String, Key)> = records
        .iter()
        .filter(|r| r["record"] == "task" && r["run"] == fresh_run.as_str() && r["status"] != "failed")
        .filter(|r| r["reason"] != "condition")
        .map(|r| (s(&r["node"]), (s(&r["stage"]), s(&r["task"]))))
        .collect();
    let after = t.apply(&[]);
    let mut not_reached = 0;
    let mut fresh_generation = 0;
    for node in ["node-194", "node-196", "node-197"] {
        for e in after.finished(node) {
            let key = (node.to_string(), (s(&e["stage"]), s(&e["task"])));
            if e["reason"] == "condition" {
                continue;
            }
            let skipped_done = e["status"] == "skipped" && e["reason"] == "done";
            if reached.contains(&key) {
                assert!(skipped_done, "{key:?} was reached by the fresh run and ran again: {e}");
            } else {
                not_reached += 1;
                assert!(
                    !skipped_done,
                    "{key:?} was not reached by the fresh run but was skipped as done"
                );
            }
        }
        // Each task runs because the fresh run did not reach it, or because the kill cut it off in the middle.
        for e in after
            .events
            .iter()
            .filter(|e| e["event"] == "task_started" && e["node"] == node)
        {
            let why = e["why"].as_str().unwrap_or_default();
            assert!(why == "fresh generation" || why == "cut off before", "{node}: {e}");
            fresh_generation += usize::from(why == "fresh generation");
        }
    }
    assert!(fresh_generation > 0, "no task ran for the fresh generation");
    assert!(
        !reached.is_empty() && not_reached > 0,
        "the kill did not land part-way ({} reached)",
        reached.len()
    );
    assert!(journal.exists());

    // 6. No secret, and no plain sha256 of one, in kubeboot's state (journal, logs, key file aside).
    let mut values: Vec<String> = t.lab.secrets.iter().map(|(_, v)| v.clone()).collect();
    values.extend(["grafana-resume-test-1".to_string()]);
    let hashes: Vec<String> = values.iter().map(|v| common::sha256(v.as_bytes())).collect();
    for path in files_below(&t.lab.state) {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
        for (v, h) in values.iter().zip(&hashes) {
            assert!(!text.contains(v.as_str()), "a secret value is in {}", path.display());
            assert!(
                !text.contains(h.as_str()),
                "a plain sha256 of a secret is in {}",
                path.display()
            );
        }
    }
    for run in [&first, &removed, &added, &raised, &rotated, &after] {
        for v in &values {
            assert!(
                !run.stdout.contains(v.as_str()) && !run.stderr.contains(v.as_str()),
                "a secret in the output"
            );
        }
    }
}
