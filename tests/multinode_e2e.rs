//! Nodes that depend on each other, end to end against real OpenSSH nodes on loopback: an output registered on
//! one node and used on others (a secret one never seen in events, journal or logs), `wait_for` and `serial`
//! ordering, a failed dependency blocking only its waiters, and a resume that makes a secret output again.
//!
//! The lab's four nodes become one cluster of three (`node-1`, `node-2` control planes, `node-3` a worker) and
//! `node-4` alone in a second cluster.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The lab's inventory with node-1..3 in cluster `lab-01` (a vip, roles) and node-4 alone in `lab-04`.
fn cluster_inventory(t: &TestLab) -> PathBuf {
    let text = fs::read_to_string(t.inventory()).expect("the lab inventory");
    let mut out = String::new();
    for block in text.split("\n[[") {
        let block = if out.is_empty() {
            block.to_string()
        } else {
            format!("[[{block}")
        };
        if block.starts_with("[[clusters]]") && (block.contains("\"lab-02\"") || block.contains("\"lab-03\"")) {
            continue;
        }
        let mut block = block.replace("cluster = \"lab-02\"", "cluster = \"lab-01\"");
        block = block.replace("cluster = \"lab-03\"", "cluster = \"lab-01\"");
        if block.starts_with("[[clusters]]") && block.contains("\"lab-01\"") {
            block = block.replacen("lb_ip =", "vip = \"10.255.1.1\"\nlb_ip =", 1);
        }
        if block.starts_with("[[nodes]]") {
            let role = if block.contains("\"node-3\"") {
                "worker"
            } else {
                "control-plane"
            };
            block = block.replacen(
                "cluster = \"lab-01\"",
                &format!("cluster = \"lab-01\"\nrole = \"{role}\""),
                1,
            );
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&block);
    }
    let path = t.work().join("cluster-inventory.toml");
    fs::write(&path, out).expect("write the inventory");
    path
}

fn apply(t: &TestLab, inventory: &Path) -> Run {
    run(t.kubeboot_with(inventory, &["apply", "--yes", "--output", "json"]))
}

/// The first control plane makes a (random) token and a hash; the others join with them, one at a time.
fn join_playbooks(t: &TestLab, join_gate: &str) {
    t.write_playbook(
        "00-init.yaml",
        r#"name: init
hosts: node-1
tasks:
  - name: init
    run: sleep 1; echo init >> {{ lab_root }}/log
  - name: make token
    run: |
      set -e
      token="tok-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
      printf '%s\n' "$token" >> {{ lab_root }}/tokens
      echo "make token" >> {{ lab_root }}/log
      echo "[token] here it is:"
      echo "$token"
    register: { name: token, secret: true, line: -1 }
  - name: ca hash
    run: echo "ca hash" >> {{ lab_root }}/log; echo sha256:0123abcd
    register: ca_hash
"#,
    );
    t.write_playbook(
        "10-join.yaml",
        &format!(
            r#"name: join
hosts: [node-2, node-3]
serial: true
tasks:
  - name: join
    env:
      TOKEN: "{{{{ nodes[cluster.first_control_plane].outputs.token }}}}"
    run: |
      set -e
      {join_gate}
      printf '%s %s\n' "$TOKEN" '{{{{ nodes["node-1"].outputs.ca_hash }}}}' > {{{{ lab_root }}}}/joined
      sleep 1
      echo join >> {{{{ lab_root }}}}/log
"#
        ),
    );
    t.write_playbook(
        "20-after.yaml",
        r#"name: after
hosts: all
tasks:
  - name: everyone joined
    run: echo after >> {{ lab_root }}/log
    wait_for: { node: cluster, task: join/join }
    when: "{{ node.name == 'node-1' }}"
  - name: solo
    run: echo solo >> {{ lab_root }}/log
"#,
    );
}

fn node_events<'a>(events: &'a [Value], node: &str, kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind && e["node"] == node)
        .collect()
}

fn at(events: &[Value], node: &str, kind: &str, task: &str) -> f64 {
    let e = events
        .iter()
        .find(|e| e["event"] == kind && e["node"] == node && e["task"] == task)
        .unwrap_or_else(|| panic!("no {kind} of {node}/{task}"));
    ts(e)
}

/// Everything kubeboot wrote that an operator or a log collector could read.
fn everything_written(t: &TestLab, run: &Run) -> String {
    let mut text = run.all_output();
    for (path, bytes) in files_under(&t.state_dir()) {
        text.push_str(&format!("\n== {}\n", path.display()));
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    text
}

#[test]
fn an_output_passes_between_nodes_in_order_and_a_secret_one_is_never_written() {
    let t = start_lab(4);
    let inventory = cluster_inventory(&t);
    join_playbooks(&t, "true");

    let plan = run(t.kubeboot_with(&inventory, &["plan"]));
    plan.assert_code(0);
    for expected in [
        "registers output `token` (secret: masked, kept in memory only)",
        "waits for node-1: init/make token (for output `token`)",
        "waits for node-1: init/ca hash (for output `ca_hash`)",
        "stage join (one node of lab-01 at a time)",
        "waits for node-2: join/join",
        "waits for node-3: join/join",
    ] {
        assert!(
            plan.stdout.contains(expected),
            "plan lacks `{expected}`:\n{}",
            plan.stdout
        );
    }

    let run = apply(&t, &inventory);
    run.assert_code(0);
    let events = run.events();

    let token = fs::read_to_string(t.root("node-1").join("tokens")).expect("node-1 made a token");
    let token = token.trim();
    assert!(token.starts_with("tok-") && token.len() > 20, "{token}");
    for node in ["node-2", "node-3"] {
        let joined = fs::read_to_string(t.root(node).join("joined")).expect("the node joined");
        assert_eq!(
            joined.trim(),
            format!("{token} sha256:0123abcd"),
            "{node} got the outputs"
        );
        // Order: the join waited for the token, and showed that it waited (never as running).
        assert!(at(&events, node, "task_started", "join") > at(&events, "node-1", "task_finished", "make token"));
        let waiting = node_events(&events, node, "task_waiting");
        assert!(
            waiting.iter().any(|w| w["task"] == "join"),
            "{node} reported no wait\n{run}"
        );
    }
    // serial: the two joins did not overlap.
    let span = |n: &str| {
        (
            at(&events, n, "task_started", "join"),
            at(&events, n, "task_finished", "join"),
        )
    };
    let (a, b) = (span("node-2"), span("node-3"));
    assert!(a.1 <= b.0 || b.1 <= a.0, "joins overlapped: {a:?} {b:?}");
    // node-1's last stage waited for both joins.
    assert!(at(&events, "node-1", "task_started", "everyone joined") >= a.1.max(b.1));
    // node-4 never waited for anybody.
    assert!(node_events(&events, "node-4", "task_waiting").is_empty());

    // The secret value: nowhere in the events, the journal or the logs; the plain output is journaled.
    let written = everything_written(&t, &run);
    assert!(!written.contains(token), "the secret output leaked:\n{written}");
    assert!(!written.contains(&token[4..]), "a part of the secret output leaked");
    let registered: Vec<&Value> = events.iter().filter(|e| e["event"] == "output_registered").collect();
    assert_eq!(registered.len(), 2, "{registered:?}");
    let journal = t.journal();
    assert!(
        journal
            .iter()
            .any(|r| r["record"] == "output" && r["name"] == "ca_hash" && r["value"] == "sha256:0123abcd")
    );
    assert!(!journal.iter().any(|r| r["record"] == "output" && r["name"] == "token"));
    // The line before the token is still shown.
    assert!(run.stdout.contains("[token] here it is:"), "{run}");
}

#[test]
fn a_failed_dependency_blocks_only_its_waiters_and_a_resume_makes_the_secret_again() {
    let t = start_lab(4);
    let inventory = cluster_inventory(&t);
    // node-2's join fails until the test allows it.
    join_playbooks(&t, "test -e {{ lab_root }}/allow");
    t.write_playbook(
        "15-worker.yaml",
        r#"name: worker
hosts: node-3
tasks:
  - name: after node-2
    run: echo "after node-2" >> {{ lab_root }}/log
    wait_for: { node: node-2, task: join/join }
"#,
    );
    fs::write(t.root("node-3").join("allow"), "").expect("node-3 may join");

    let first = apply(&t, &inventory);
    first.assert_code(1);
    let events = first.events();
    let end = |n: &str| node_events(&events, n, "node_finished")[0].clone();
    assert_eq!(end("node-2")["status"], "failed", "{first}");
    assert_eq!(end("node-3")["status"], "blocked", "{first}");
    assert_eq!(end("node-3")["blocked_by"], "node-2", "{first}");
    // node-1's last stage waits for node-2's join too: blocked, after finishing what did not depend on it.
    assert_eq!(end("node-1")["status"], "blocked", "{first}");
    assert_eq!(
        end("node-4")["status"],
        "ok",
        "the other cluster is not affected\n{first}"
    );
    // node-3 joined (it did not depend on node-2 for that) before it blocked.
    assert!(t.root("node-3").join("joined").exists());
    let summary = first.events_of("run_finished").pop().expect("run_finished");
    assert_eq!(summary["nodes_blocked"], 2, "{first}");

    let status = run(t.kubeboot_with(&inventory, &["status"]));
    assert!(
        status.stdout.contains("BLOCKED by node-2"),
        "status names the blocker:\n{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("its failure blocked: node-1, node-3"),
        "status says whom it blocked:\n{}",
        status.stdout
    );

    // Resume: the secret token was never kept, so the task that makes it runs again for node-2's join; the plain
    // ca hash comes from the journal and its task does not run again.
    fs::write(t.root("node-2").join("allow"), "").expect("node-2 may join");
    let plan = run(t.kubeboot_with(&inventory, &["plan"]));
    assert!(
        plan.stdout
            .contains("again: output `token` is needed by node-2: join/join"),
        "{}",
        plan.stdout
    );
    let second = apply(&t, &inventory);
    second.assert_code(0);
    let runs = t.runs("node-1");
    assert_eq!(runs.get("make token"), Some(&2), "{:?}", t.log_lines("node-1"));
    assert_eq!(runs.get("ca hash"), Some(&1), "{:?}", t.log_lines("node-1"));
    assert_eq!(runs.get("init"), Some(&1), "nothing is initialised twice");
    let tokens = fs::read_to_string(t.root("node-1").join("tokens")).expect("tokens");
    let newest = tokens.lines().last().expect("a token");
    let joined = fs::read_to_string(t.root("node-2").join("joined")).expect("node-2 joined");
    assert!(joined.starts_with(newest), "node-2 used the fresh token");
    assert_eq!(t.runs("node-3").get("join"), Some(&1), "node-3 did not join twice");
    for tok in tokens.lines() {
        assert!(!everything_written(&t, &second).contains(tok), "a token leaked");
    }
}
