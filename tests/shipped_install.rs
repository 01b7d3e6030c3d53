//! The SHIPPED playbooks and assets, end to end, on an isolated local lab modelled on the shipped inventory.toml.
//!
//! Four real OpenSSH nodes on loopback (one RHEL-like, three Ubuntu-like), each with a private view of /etc,
//! /var/lib, /usr/local, /opt, /root and /home and with recording stand-ins for the privileged commands
//! (crates/kubeboot-lab/standins/standin.py). The real `kubeboot apply --yes --output json` runs against them; the test then
//! reads what each node wrote and the order in which the stand-ins were called.
//!
//! Needs root, sshd, sudo, unshare and /usr/bin/python3: a missing one fails the test, it never skips.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::isolated::{IsolatedLab, LabRun, rhel, start_isolated_lab, ubuntu};
use common::shipped::{files_below, secrets};
use common::{repo, strings};
use kubeboot::lab::{self, ContainerdLayout};
use serde_json::Value;

const NODES: [&str; 4] = ["node-194", "node-196", "node-197", "node-198"];
const RHEL_NODE: &str = "node-196";
/// The node whose `kubeadm init` is made to fail in the first run.
const FAILING_NODE: &str = "node-197";

fn start_lab() -> IsolatedLab {
    // node-196 is the RHEL-like one; the Ubuntu ones cover both containerd config layouts.
    let kinds = vec![
        ubuntu(ContainerdLayout::V3),
        rhel(),
        ubuntu(ContainerdLayout::V2),
        ubuntu(ContainerdLayout::V3),
    ];
    start_isolated_lab(&repo().join("inventory.toml"), &NODES, kinds, secrets())
}

fn apply(t: &IsolatedLab) -> LabRun {
    t.run(&["apply", "--yes", "--output", "json"])
}

/// One stand-in call as recorded on a node.
#[derive(Debug, Clone)]
struct Call {
    cmd: String,
    argv: Vec<String>,
    objects: Vec<(String, String)>,
}

impl Call {
    fn is(&self, cmd: &str, first: &str) -> bool {
        self.cmd == cmd && self.argv.first().is_some_and(|a| a == first)
    }

    fn applies(&self, kind: &str, name: &str) -> bool {
        self.objects.iter().any(|(k, n)| k == kind && n == name)
    }

    fn line(&self) -> String {
        format!("{} {}", self.cmd, self.argv.join(" "))
    }
}

fn calls(t: &IsolatedLab, node: &str) -> Vec<Call> {
    let path = t.lab.standin_dir(node).join("record.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record line {l:?}: {e}"));
            let objects = v["objects"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| {
                            (
                                o["kind"].as_str().unwrap_or_default().to_string(),
                                o["name"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Call {
                cmd: v["cmd"].as_str().unwrap_or_default().to_string(),
                argv: strings(&v["argv"]),
                objects,
            }
        })
        .collect()
}

/// Index of the first call matching `pred`, with a readable failure.
fn first(calls: &[Call], node: &str, what: &str, pred: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("{node}: no stand-in call for {what}; calls:\n{}", dump(calls)))
}

fn dump(calls: &[Call]) -> String {
    calls.iter().map(Call::line).collect::<Vec<_>>().join("\n")
}

fn lab_address(t: &IsolatedLab, node: &str) -> String {
    t.lab.node(node).expect("node exists").address.to_string()
}

fn assert_no_secret_in(t: &IsolatedLab, what: &str, bytes: &[u8]) {
    for (env, value) in &t.secrets {
        assert!(
            !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
            "the value of {env} leaked into {what}"
        );
    }
}

/// What each node must look like after a complete install.
fn check_installed_node(t: &IsolatedLab, node: &str, index: usize) {
    let calls = calls(t, node);
    let address = lab_address(t, node);
    let lb_ip = format!("192.168.101.{}", 210 + index);

    // Order: swap off and containerd before kubeadm init; init before Cilium; Cilium before the manifest stages.
    let swapoff = first(&calls, node, "swapoff", |c| c.cmd == "swapoff");
    let containerd = first(&calls, node, "installing containerd.io", |c| {
        (c.cmd == "apt-get" || c.cmd == "dnf") && c.argv.iter().any(|a| a == "containerd.io")
    });
    let kubeadm_pkg = first(&calls, node, "installing kubeadm", |c| {
        (c.cmd == "apt-get" || c.cmd == "dnf") && c.argv.iter().any(|a| a.starts_with("kubeadm"))
    });
    let init = first(&calls, node, "kubeadm init", |c| c.is("kubeadm", "init"));
    let cilium = first(&calls, node, "applying the Cilium chart", |c| {
        c.applies("ConfigMap", "cilium-chart-values")
    });
    let pool = first(&calls, node, "applying the LB IP pool", |c| {
        c.applies("CiliumLoadBalancerIPPool", &format!("cluster-0{}", index + 1))
    });
    let longhorn = first(&calls, node, "applying Longhorn", |c| {
        c.applies("ConfigMap", "longhorn-chart-values")
    });
    let monitoring = first(&calls, node, "applying kube-prometheus-stack", |c| {
        c.applies("ConfigMap", "kube-prometheus-stack-chart-values")
    });
    let fluent_bit = first(&calls, node, "applying Fluent Bit", |c| {
        c.applies("ConfigMap", "fluent-bit-chart-values")
    });
    let order = [
        ("swapoff", swapoff),
        ("containerd.io installed", containerd),
        ("kubeadm installed", kubeadm_pkg),
        ("kubeadm init", init),
        ("cilium applied", cilium),
        ("LB IP pool applied", pool),
        ("longhorn applied", longhorn),
        ("monitoring applied", monitoring),
        ("fluent bit applied", fluent_bit),
    ];
    for pair in order.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "{node}: {} (call {}) must come before {} (call {}); calls:\n{}",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1,
            dump(&calls)
        );
    }
    // Once, plus the attempt that failed on purpose on the failing node.
    let inits = if node == FAILING_NODE { 2 } else { 1 };
    assert_eq!(
        calls.iter().filter(|c| c.is("kubeadm", "init")).count(),
        inits,
        "{node}: kubeadm init ran again on an initialised node"
    );

    // Swap is off for good: the fstab line the lab planted is commented out.
    let fstab = t.node_text(node, "/etc/fstab");
    assert!(
        fstab.contains("#/swap.img"),
        "{node}: swap line not commented out:\n{fstab}"
    );

    // kubeadm: no kube-proxy, no taint, this node's address.
    let kubeadm = t.node_text(node, "/etc/kubernetes/kubeadm-config.yaml");
    assert!(
        kubeadm.contains("skipPhases:\n  - addon/kube-proxy"),
        "{node}: kube-proxy not skipped:\n{kubeadm}"
    );
    assert!(
        kubeadm.contains("  taints: []"),
        "{node}: taint not removed:\n{kubeadm}"
    );
    assert!(
        kubeadm.contains(&format!("advertiseAddress: \"{address}\"")),
        "{node}: wrong address:\n{kubeadm}"
    );
    assert!(
        kubeadm.contains("kubernetesVersion: \"v1.34."),
        "{node}: version:\n{kubeadm}"
    );

    // containerd: systemd cgroups and the inventory's sandbox image, in the layout this node's containerd uses.
    let config = t.node_text(node, "/etc/containerd/config.toml");
    assert!(config.contains("SystemdCgroup = true"), "{node}: {config}");
    assert!(config.contains("\"registry.k8s.io/pause:3.10.1\""), "{node}: {config}");

    // Cilium: kube-proxy replacement, the node's API address, the cluster's one LB IP.
    let values = t.node_text(node, "/var/lib/kubeboot/cilium/chart/values.yaml");
    assert!(values.contains("kubeProxyReplacement: true"), "{node}: {values}");
    assert!(
        values.contains(&format!("k8sServiceHost: \"{address}\"")),
        "{node}: {values}"
    );
    let pool = t.node_text(node, "/var/lib/kubeboot/cilium/lb-ipam/ip-pool.yaml");
    assert!(pool.contains(&format!("start: \"{lb_ip}\"")), "{node}: {pool}");
    assert!(pool.contains(&format!("stop: \"{lb_ip}\"")), "{node}: {pool}");

    // The secrets reached the cluster as Secrets (on stdin), by name only in the record.
    for secret in ["thanos-objstore", "longhorn-s3-secret", "fluent-bit-opensearch"] {
        first(&calls, node, secret, |c| c.applies("Secret", secret));
    }

    // Thanos Query only on the central cluster, fanning out to all four sidecars.
    let thanos = calls.iter().any(|c| c.applies("Deployment", "thanos-query"));
    let grafana_secret = calls.iter().any(|c| c.applies("Secret", "grafana-admin"));
    if node == "node-194" {
        assert!(thanos, "{node}: Thanos Query not applied on the central cluster");
        assert!(grafana_secret, "{node}: no grafana-admin Secret on the central cluster");
        let overlay = t.node_text(node, "/var/lib/kubeboot/manifests/thanos/overlay/kustomization.yaml");
        for i in 210..=213 {
            let endpoint = format!("--endpoint=192.168.101.{i}:10901");
            assert!(
                overlay.contains(&endpoint),
                "{node}: Thanos Query lacks {endpoint}:\n{overlay}"
            );
        }
    } else {
        assert!(!thanos, "{node}: Thanos Query applied on an edge cluster");
        assert!(!grafana_secret, "{node}: grafana-admin applied on an edge cluster");
    }

    // The OS branch: dnf, SELinux and firewalld on RHEL; apt and ufw on Ubuntu.
    let used = |cmd: &str| calls.iter().any(|c| c.cmd == cmd);
    if node == RHEL_NODE {
        assert!(
            used("dnf") && !used("apt-get"),
            "{node}: not the dnf branch:\n{}",
            dump(&calls)
        );
        first(&calls, node, "setenforce 0", |c| {
            c.cmd == "setenforce" && c.argv == ["0"]
        });
        first(&calls, node, "firewalld disabled", |c| {
            c.cmd == "systemctl" && c.argv == ["disable", "--now", "firewalld"]
        });
        let selinux = t.node_text(node, "/etc/selinux/config");
        assert!(selinux.contains("SELINUX=permissive"), "{node}: {selinux}");
        assert!(
            t.node_text(node, "/etc/yum.repos.d/kubernetes.repo")
                .contains("/v1.34/rpm/")
        );
    } else {
        assert!(
            used("apt-get") && !used("dnf"),
            "{node}: not the apt branch:\n{}",
            dump(&calls)
        );
        first(&calls, node, "ufw disable", |c| c.is("ufw", "disable"));
        first(&calls, node, "apt-mark hold", |c| c.is("apt-mark", "hold"));
        assert!(!used("setenforce"), "{node}: SELinux touched on Ubuntu");
    }
}

#[test]
fn shipped_playbooks_install_four_clusters_resume_after_a_failure_and_then_have_nothing_left_to_do() {
    let t = start_lab();
    let fail_flag = t.lab.standin_dir(FAILING_NODE).join("fail/kubeadm-init");
    std::fs::write(&fail_flag, "").expect("the fail flag can be written");

    // 1. kubeadm init fails on one node: exit 1, the other three finish.
    let first_run = apply(&t);
    assert_eq!(
        first_run.code,
        Some(1),
        "a failed node must exit 1\n{}",
        first_run.explain()
    );
    let failed: Vec<String> = first_run
        .finished(FAILING_NODE)
        .iter()
        .filter(|e| e["status"] == "failed")
        .map(|e| e["task"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        failed,
        ["kubeadm init"],
        "only kubeadm init fails\n{}",
        first_run.explain()
    );
    for node in NODES.iter().filter(|n| **n != FAILING_NODE) {
        first_run.assert_all_succeeded(node);
    }
    // The read-only checks (`changed_when: false`) change nothing and say so: `ok`, never `changed`.
    for node in NODES {
        let checks: Vec<&Value> = first_run
            .finished(node)
            .into_iter()
            .filter(|e| {
                ["preflight", "verify"].contains(&e["stage"].as_str().unwrap_or("")) && e["status"] != "skipped"
            })
            .collect();
        assert!(
            checks.len() >= 6,
            "{node}: the preflight checks ran\n{}",
            first_run.explain()
        );
        for e in checks {
            assert_eq!(
                e["status"], "ok",
                "{node}: a preflight check ended {}: {e}",
                e["status"]
            );
        }
    }
    let before_resume = calls(&t, FAILING_NODE);

    // 2. The flag is gone: the same apply resumes at kubeadm init and nothing before it runs again.
    std::fs::remove_file(&fail_flag).expect("the fail flag can be removed");
    let second_run = apply(&t);
    assert_eq!(
        second_run.code,
        Some(0),
        "the resumed run must succeed\n{}",
        second_run.explain()
    );
    let resumed_first = second_run
        .started(FAILING_NODE)
        .first()
        .map(|e| e["task"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        resumed_first.as_deref(),
        Some("kubeadm init"),
        "{}",
        second_run.explain()
    );
    let after_resume = calls(&t, FAILING_NODE);
    assert!(
        after_resume.len() > before_resume.len(),
        "the resumed node called no stand-in"
    );
    let new_calls = &after_resume[before_resume.len()..];
    assert!(
        new_calls.first().is_some_and(|c| c.is("kubeadm", "init")),
        "the resumed node's first stand-in call must be kubeadm init, got:\n{}",
        dump(new_calls)
    );
    // Nothing the stages before kubeadm init do happens again (later stages call apt-get/curl for their own
    // packages and downloads, so those count only with the earlier stages' arguments).
    let earlier = |c: &Call| {
        matches!(
            c.cmd.as_str(),
            "swapoff" | "containerd" | "gpg" | "ufw" | "apt-mark" | "apt-cache" | "setenforce"
        ) || ((c.cmd == "apt-get" || c.cmd == "dnf")
            && c.argv.iter().any(|a| {
                a == "containerd.io" || a == "ca-certificates" || a.starts_with("kubeadm") || a.starts_with("kubelet")
            }))
    };
    let again: Vec<String> = new_calls.iter().filter(|c| earlier(c)).map(Call::line).collect();
    assert!(
        again.is_empty(),
        "{FAILING_NODE}: earlier stages ran again after the resume: {again:?}"
    );
    let not_resumed: Vec<String> = second_run
        .started(FAILING_NODE)
        .iter()
        .filter(|e| ["preflight", "os-prep", "containerd", "kubernetes"].contains(&e["stage"].as_str().unwrap_or("")))
        .map(|e| e.to_string())
        .collect();
    assert!(
        not_resumed.is_empty(),
        "{FAILING_NODE}: earlier tasks started again: {not_resumed:?}"
    );
    let config_writes = |calls: &[Call]| calls.iter().filter(|c| c.is("kubeadm", "config")).count();
    assert_eq!(
        config_writes(new_calls),
        0,
        "{FAILING_NODE}: the kubeadm config task before kubeadm init ran again"
    );
    for node in NODES {
        second_run.assert_all_succeeded(node);
    }
    for (i, node) in NODES.iter().enumerate() {
        check_installed_node(&t, node, i);
    }

    // 3. A third apply has nothing to do: every task skipped as done (or by its condition), no stand-in called.
    let counts: BTreeMap<&str, usize> = NODES.iter().map(|n| (*n, calls(&t, n).len())).collect();
    let third_run = apply(&t);
    assert_eq!(third_run.code, Some(0), "{}", third_run.explain());
    for node in NODES {
        let finished = third_run.finished(node);
        assert!(
            !finished.is_empty(),
            "{node}: no task reported\n{}",
            third_run.explain()
        );
        for e in finished {
            assert!(
                // `when: false` tasks (the other OS's branch) stay skipped by their condition.
                e["status"] == "skipped" && (e["reason"] == "done" || e["reason"] == "condition"),
                "{node}: {} / {} was not skipped as done: {e}",
                e["stage"],
                e["task"]
            );
        }
        assert_eq!(
            calls(&t, node).len(),
            counts[node],
            "{node}: the third run called stand-ins"
        );
    }
    assert!(
        third_run.took < Duration::from_secs(30),
        "a run with nothing to do took {:?}",
        third_run.took
    );

    // 3b. `apply --fresh` of the kubeadm-init stage on the finished nodes changes nothing: the kubeadm config's
    // files are already there (`ok`), its guard (`write-config.sh --check`: the file is already what it would
    // write) skips the task, and nothing in the stage reports `changed` or asks kubeadm to validate or init.
    let counts: BTreeMap<&str, usize> = NODES.iter().map(|n| (*n, calls(&t, n).len())).collect();
    let fresh_run = t.run(&[
        "apply",
        "--yes",
        "--output",
        "json",
        "--fresh",
        "--only",
        "kubeadm-init",
    ]);
    assert_eq!(fresh_run.code, Some(0), "{}", fresh_run.explain());
    for node in NODES {
        let finished = fresh_run.finished(node);
        let of = |task: &str| {
            finished
                .iter()
                .find(|e| e["task"] == task)
                .map(|e| (e["status"].clone(), e["reason"].clone()))
        };
        assert_eq!(
            of("kubeadm config files").map(|s| s.0),
            Some("ok".into()),
            "{}",
            fresh_run.explain()
        );
        assert_eq!(
            of("kubeadm config"),
            Some(("skipped".into(), "guard".into())),
            "{node}: {}",
            fresh_run.explain()
        );
        let changed: Vec<String> = finished
            .iter()
            .filter(|e| e["status"] == "changed")
            .map(|e| e["task"].to_string())
            .collect();
        assert!(changed.is_empty(), "{node}: apply --fresh changed {changed:?}");
        let new = &calls(&t, node)[counts[node]..];
        assert!(
            !new.iter().any(|c| c.is("kubeadm", "config") || c.is("kubeadm", "init")),
            "{node}: kubeadm was asked to change something: {new:?}"
        );
    }

    // 3c. `apply --fresh` of the manifest stages (50-cilium onward) changes nothing either: every apply's guard holds
    // (`kubectl diff` of what it would apply; the Secrets' `secret.sh NAME --check`, OpenSearch's `configure.sh
    // --check`, the buckets' HEAD), so no task is `changed` and no node is sent a `kubectl apply`. Without the
    // guards each apply task would run and report `changed`.
    let counts: BTreeMap<&str, usize> = NODES.iter().map(|n| (*n, calls(&t, n).len())).collect();
    let manifest_run = t.run(&["apply", "--yes", "--output", "json", "--fresh", "--from", "cilium"]);
    assert_eq!(manifest_run.code, Some(0), "{}", manifest_run.explain());
    for node in NODES {
        let finished = manifest_run.finished(node);
        let changed: Vec<String> = finished
            .iter()
            .filter(|e| e["status"] == "changed")
            .map(|e| format!("{} / {}", e["stage"], e["task"]))
            .collect();
        assert!(
            changed.is_empty(),
            "{node}: apply --fresh of the manifest stages changed {changed:?}"
        );
        let new = &calls(&t, node)[counts[node]..];
        assert!(
            !new.iter().any(|c| c.is("kubectl", "apply")),
            "{node}: a manifest was applied again: {:?}",
            new.iter()
                .filter(|c| c.is("kubectl", "apply"))
                .map(Call::line)
                .collect::<Vec<_>>()
        );
        let guarded = finished.iter().filter(|e| e["reason"] == "guard").count();
        assert!(
            guarded > 0,
            "{node}: no task was skipped by its guard: {}",
            manifest_run.explain()
        );
    }
    let central_guarded: Vec<String> = manifest_run
        .finished("node-194")
        .iter()
        .filter(|e| e["reason"] == "guard")
        .map(|e| e["task"].as_str().unwrap_or_default().to_string())
        .collect();
    for task in [
        "apply cilium",
        "apply namespaces",
        "grafana admin secret",
        "apply opensearch",
        "configure snapshots and lifecycle",
    ] {
        assert!(
            central_guarded.iter().any(|t| t == task),
            "node-194 (central): {task} not skipped by its guard: {central_guarded:?}"
        );
    }

    // 4. No secret value anywhere it must not be: argv, kubeboot's state, its output, the nodes' files.
    for run in [&first_run, &second_run, &third_run, &fresh_run, &manifest_run] {
        assert_no_secret_in(&t, "kubeboot's stdout", run.stdout.as_bytes());
        assert_no_secret_in(&t, "kubeboot's stderr", run.stderr.as_bytes());
    }
    for node in NODES {
        for call in calls(&t, node) {
            assert_no_secret_in(&t, &format!("{node}'s argv `{}`", call.line()), call.line().as_bytes());
        }
    }
    let mut stored = files_below(&t.state);
    for node in NODES {
        stored.extend(files_below(&t.lab.standin_dir(node)));
        for dir in lab::ISOLATED_DIRS {
            stored.extend(files_below(&t.lab.node_file(node, dir)));
        }
    }
    assert!(stored.iter().any(|p| p.starts_with(&t.state)), "kubeboot kept no state");
    for path in stored {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert_no_secret_in(&t, &path.display().to_string(), &bytes);
    }
}
