//! The shipped inventory and playbooks: `kubeboot plan` reads like the install runbook, and
//! per-node rendering carries the values of TARGET.md. Pure planning: no nodes are contacted.

mod common;

use common::plans::{rhel, shipped_plans};
use common::repo;
use kubeboot::facts::Facts;
use kubeboot::journal::Progress;
use kubeboot::plan::{self, Action, Decision, NodePlan, Selection};
use kubeboot::task::{CopyFiles, Fetch, Run, Wait};
use kubeboot::{inventory, playbook};

/// Everything the node would run, as one text (commands, copied files, waits, env names).
fn script(plan: &NodePlan) -> String {
    let mut out = String::new();
    for t in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
        out.push_str(&format!("## {}/{}\n", t.stage, t.task));
        match &t.action {
            Action::Run(Run { command }) => out.push_str(command),
            Action::Wait(Wait { until, .. }) => out.push_str(until),
            // Sent by kubeboot itself from the jump host: nothing of it reaches the node.
            Action::Http(_) | Action::S3Buckets(_) => {}
            Action::Fetch(Fetch { src, .. }) => out.push_str(&format!(
                "# fetch {src}
"
            )),
            Action::Copy(CopyFiles { files, .. }) => {
                for f in files {
                    out.push_str(&format!("# file {}\n{}\n", f.dest, String::from_utf8_lossy(&f.content)));
                }
            }
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_shipped_plan_matches_its_golden_runbook() {
    let text = plan::render(&shipped_plans(&Facts::assumed()), false);
    let golden = repo().join("tests/golden/shipped-plan.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        text == expected,
        "the plan of the shipped install changed; review it and run UPDATE_GOLDEN=1 cargo test --test shipped_plan\n{text}"
    );
}

#[test]
fn every_node_gets_its_own_cluster_lb_ip_and_api_address_in_the_cilium_values() {
    for (plan, ip) in shipped_plans(&Facts::assumed())
        .iter()
        .zip(["210", "211", "212", "213"])
    {
        let s = script(plan);
        assert!(
            s.contains(&format!("192.168.101.{ip}")),
            "{}: LB IP .{ip} missing",
            plan.node
        );
        assert!(
            s.contains("kubeProxyReplacement: true"),
            "{}: no kubeProxyReplacement",
            plan.node
        );
        let address = plan.address.trim_end_matches(":22");
        assert!(
            s.contains(&format!("k8sServiceHost: {address}")) || s.contains(&format!("k8sServiceHost: \"{address}\"")),
            "{}: API host",
            plan.node
        );
        let pool = format!("- start: \"192.168.101.{ip}\"\n      stop: \"192.168.101.{ip}\"");
        assert!(s.contains(&pool), "{}: the IP pool must hold exactly .{ip}", plan.node);
        for other in ["210", "211", "212", "213"].iter().filter(|o| **o != ip) {
            assert!(
                !s.contains(&format!("start: \"192.168.101.{other}\"")),
                "{} got another cluster's pool",
                plan.node
            );
        }
    }
}

#[test]
fn kubeadm_config_skips_kube_proxy_and_has_no_taint() {
    for plan in shipped_plans(&Facts::assumed()) {
        let s = script(&plan);
        assert!(
            s.contains("addon/kube-proxy"),
            "{}: kube-proxy phase not skipped",
            plan.node
        );
        assert!(
            s.contains("taints: []"),
            "{}: control-plane taint not removed",
            plan.node
        );
        assert!(
            s.contains(&format!(
                "controlPlaneEndpoint: \"{}:6443\"",
                plan.address.trim_end_matches(":22")
            )),
            "{}: a single node is its own endpoint",
            plan.node
        );
    }
}

#[test]
fn thanos_query_is_only_on_the_central_cluster_with_all_four_sidecars() {
    for plan in shipped_plans(&Facts::assumed()) {
        let has_thanos = plan.tasks.iter().any(|t| t.stage == "thanos");
        assert_eq!(
            has_thanos,
            plan.cluster.as_deref() == Some("cluster-01"),
            "{}",
            plan.node
        );
        if has_thanos {
            let s = script(&plan);
            for ip in ["210", "211", "212", "213"] {
                assert!(
                    s.contains(&format!("192.168.101.{ip}:10901")),
                    "sidecar .{ip} missing from Query"
                );
            }
        }
    }
}

#[test]
fn ubuntu_and_rhel_nodes_take_their_own_package_branches() {
    let apt = |p: &NodePlan| {
        p.tasks
            .iter()
            .any(|t| t.task.contains("(apt)") && t.decision == Decision::Run)
    };
    let dnf = |p: &NodePlan| {
        p.tasks
            .iter()
            .any(|t| t.task.contains("(dnf)") && t.decision == Decision::Run)
    };
    for p in shipped_plans(&Facts::assumed()) {
        assert!(apt(&p) && !dnf(&p), "{}: ubuntu should use apt only", p.node);
    }
    for p in shipped_plans(&rhel()) {
        assert!(dnf(&p) && !apt(&p), "{}: rhel should use dnf only", p.node);
        assert!(
            script(&p).contains("setenforce 0"),
            "{}: selinux permissive missing",
            p.node
        );
    }
}

#[test]
fn no_secret_is_rendered_into_the_plan() {
    for p in shipped_plans(&Facts::assumed()) {
        for t in &p.tasks {
            if let Action::Run(Run { command }) = &t.action {
                assert!(
                    !command.contains("@@kubeboot-secret:"),
                    "{}/{}: secret on a command line",
                    t.stage,
                    t.task
                );
            }
        }
    }
}

/// examples/ha/inventory.toml with the shipped playbooks: every node's plan.
fn ha_plans() -> Vec<NodePlan> {
    let inv = inventory::load(&repo().join("examples/ha/inventory.toml")).unwrap_or_else(|d| panic!("{d}"));
    let books = playbook::load(&repo().join("playbooks"), &repo().join("assets")).unwrap_or_else(|d| panic!("{d}"));
    let sel = Selection::default();
    plan::check(&inv, &books, &Progress::empty(), &sel).unwrap_or_else(|d| panic!("{d}"));
    plan::plan_all(
        &inv,
        &books,
        &Progress::empty(),
        &kubeboot::secrets::Digests::none(),
        &sel,
    )
    .unwrap_or_else(|d| panic!("{d}"))
}

fn runs<'a>(p: &'a NodePlan, stage: &str, task: &str) -> Option<&'a plan::PlannedTask> {
    p.tasks
        .iter()
        .find(|t| t.stage == stage && t.task == task && t.decision == Decision::Run)
}

#[test]
fn the_ha_example_initialises_once_and_joins_the_others_through_secret_outputs() {
    let plans = ha_plans();
    let by = |n: &str| plans.iter().find(|p| p.node == n).unwrap_or_else(|| panic!("{n}"));
    let first = by("node-194");
    let init = runs(first, "kubeadm-init", "kubeadm init").expect("node-194 initialises");
    let Action::Run(run) = &init.action else { panic!() };
    let command = &run.command;
    assert!(command.contains("--upload-certs"), "{command}");
    assert!(command.contains("--skip-token-print"), "{command}");
    for t in [
        "join command",
        "certificate key",
        "kube-vip before init",
        "kube-vip after init",
    ] {
        assert!(runs(first, "kubeadm-init", t).is_some(), "node-194 runs {t}");
    }
    let s = script(first);
    assert!(
        s.contains("controlPlaneEndpoint: \"192.168.101.220:6443\""),
        "the vip is the endpoint"
    );
    assert!(
        s.contains("k8sServiceHost: \"192.168.101.220\""),
        "Cilium talks to the vip"
    );
    assert!(
        s.contains("defaultClassReplicaCount: 3"),
        "Longhorn: min(3, 4 nodes) replicas"
    );
    assert!(s.contains("numberOfReplicas: \"3\""));
    assert!(
        !s.contains("taints: []"),
        "with a worker the control planes keep their taint"
    );
    assert!(s.contains("value: \"192.168.101.220\""), "kube-vip announces the vip");
    assert!(s.contains("image: \"ghcr.io/kube-vip/kube-vip:v1.0.4\""));
    // The manifest stages run once, on the first control plane; monitoring per cluster as before.
    for other in ["node-196", "node-197", "node-198"] {
        let p = by(other);
        assert!(
            runs(p, "kubeadm-init", "kubeadm init").is_none(),
            "{other} never initialises"
        );
        assert!(
            !p.tasks.iter().any(|t| t.stage == "cilium" || t.stage == "monitoring"),
            "{other}"
        );
        let join = runs(p, "kubeadm-join", "kubeadm join").unwrap_or_else(|| panic!("{other} joins"));
        let Action::Run(run) = &join.action else { panic!() };
        let command = &run.command;
        assert!(!command.contains("@@kubeboot-secret:"), "no secret on the command line");
        assert!(command.contains("kubeadm join --config"), "{command}");
        let waits: Vec<String> = join.waits.iter().map(|w| w.describe()).collect();
        assert!(
            waits.contains(&"node-194: kubeadm-init/join command".to_string()),
            "{waits:?}"
        );
        let env: Vec<&str> = join.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(env, ["CERTIFICATE_KEY", "JOIN_COMMAND"]);
        let cert = join.env[0]
            .1
            .contains("@@kubeboot-secret:out:node-194/certificate_key@@");
        assert_eq!(
            cert,
            other != "node-198",
            "{other}: the certificate key goes to control planes only"
        );
        assert_eq!(command.contains("controlPlane:"), other != "node-198");
    }
    assert!(by("node-194").tasks.iter().any(|t| t.stage == "monitoring"));
    let verify = first.tasks.iter().find(|t| t.stage == "verify").expect("verify");
    assert_eq!(verify.waits.len(), 3, "verify waits for the three joins");
    let text = plan::render(&plans, false);
    assert!(
        text.contains("stage kubeadm-join (one node of cluster-01 at a time)"),
        "{text}"
    );
    assert!(text.contains("waits for node-194: kubeadm-init/join command (for output `join_command`)"));
}
