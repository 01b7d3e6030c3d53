//! A bundle folder served to the nodes over their own SSH connections: a remote port forward on
//! each node's 127.0.0.1 to kubeboot's read-only file server. Real lab sshd nodes; the node's own
//! `curl` fetches through the forward. Each lab has a loopback range of its own (tests/common).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{TestLab, free_port, run, start_lab};

const HELLO: &str = "hello from the bundle\n";
const SECRET: &str = "a file next to the bundle, never served";

/// The lab's inventory with `[sources] bundle` and, since lab nodes share this machine's loopback,
/// a `bundle_port` of their own for each node.
fn bundle_inventory(t: &TestLab, bundle: Option<&Path>) -> (PathBuf, Vec<u16>) {
    let mut text = fs::read_to_string(t.inventory()).expect("the lab inventory");
    let mut ports = Vec::new();
    for i in 1..=t.lab.nodes.len() {
        let port = free_port();
        ports.push(port);
        let cluster = format!("\ncluster = \"lab-{i:02}\"\n");
        text = text.replacen(&cluster, &format!("\nbundle_port = {port}{cluster}"), 1);
    }
    if let Some(dir) = bundle {
        text.push_str(&format!("\n[sources]\nbundle = \"{}\"\n", dir.display()));
    }
    let path = t.work().join("bundle-inventory.toml");
    fs::write(&path, text).expect("write the inventory");
    (path, ports)
}

fn make_bundle(t: &TestLab) -> PathBuf {
    let dir = t.work().join("bundle");
    fs::create_dir_all(dir.join("pool/main")).expect("a bundle folder");
    fs::write(dir.join("pool/main/hello.txt"), HELLO).expect("a bundle file");
    fs::write(t.work().join("secret.txt"), SECRET).expect("a file outside");
    dir
}

/// Output lines of one task on one node (the lines between its `task_started` and `task_finished`).
fn lines_of(run: &common::Run, node: &str, task: &str) -> Vec<String> {
    let mut inside = false;
    let mut lines = Vec::new();
    for e in run.events().into_iter().filter(|e| e["node"] == node) {
        match e["event"].as_str() {
            Some("task_started") => inside = e["task"] == task,
            Some("task_finished") => inside = false,
            Some("output") if inside => lines.push(common::str_of(&e["line"])),
            _ => {}
        }
    }
    lines
}

#[test]
fn nodes_fetch_bundle_files_over_their_ssh_connection_and_nothing_outside_it() {
    let t = start_lab(2);
    let bundle = make_bundle(&t);
    let (inventory, ports) = bundle_inventory(&t, Some(&bundle));
    t.write_playbook(
        "10-fetch.yaml",
        r#"
name: fetch
hosts: all
tasks:
  - name: url
    run: echo "url={{ sources.bundle_url }}"
  - name: fetch a file
    run: curl -fsS "{{ sources.bundle_url }}/pool/main/hello.txt"
  - name: a range of it
    run: curl -fsS -r 6-9 "{{ sources.bundle_url }}/pool/main/hello.txt"; echo
  - name: escape
    run: |
      curl -sS --path-as-is -o body -w 'dotdot=%{http_code}\n' "{{ sources.bundle_url }}/../secret.txt"
      cat body; echo
      curl -sS -o body -w 'encoded=%{http_code}\n' "{{ sources.bundle_url }}/pool/%2e%2e/%2e%2e/secret.txt"
      cat body; echo
      curl -sS -o /dev/null -w 'missing=%{http_code}\n' "{{ sources.bundle_url }}/pool/none.deb"
      curl -sS -o /dev/null -X POST -w 'post=%{http_code}\n' "{{ sources.bundle_url }}/pool/main/hello.txt"
"#,
    );
    let r = run(t.kubeboot_with(&inventory, &["apply", "--yes", "--output", "json"]));
    r.assert_code(0);
    for (i, node) in ["node-1", "node-2"].iter().enumerate() {
        assert_eq!(
            lines_of(&r, node, "url"),
            [format!("url=http://127.0.0.1:{}", ports[i])],
            "{r}"
        );
        assert_eq!(lines_of(&r, node, "fetch a file"), [HELLO.trim_end()], "{r}");
        assert_eq!(lines_of(&r, node, "a range of it"), ["from"], "{r}");
        let escape = lines_of(&r, node, "escape").join("\n");
        assert!(escape.contains("dotdot=403"), "{escape}");
        assert!(escape.contains("encoded=403"), "{escape}");
        assert!(escape.contains("missing=404"), "{escape}");
        assert!(escape.contains("post=405"), "{escape}");
        assert!(
            !escape.contains(SECRET),
            "a file outside the bundle was served: {escape}"
        );
    }
}

#[test]
fn bundle_flag_overrides_and_a_missing_bundle_is_bad_input() {
    let t = start_lab(1);
    let bundle = make_bundle(&t);
    t.write_playbook(
        "10-fetch.yaml",
        "name: fetch\nhosts: all\ntasks:\n  - name: fetch\n    run: curl -fsS \"{{ sources.bundle_url }}/pool/main/hello.txt\"\n",
    );

    // In the inventory, a folder that does not exist: exit 2 at its line, nothing runs.
    let (inventory, _) = bundle_inventory(&t, Some(&t.work().join("no-such-bundle")));
    let r = run(t.kubeboot_with(&inventory, &["apply", "--yes", "--output", "json"]));
    r.assert_code(2);
    assert!(r.all_output().contains("bundle folder"), "{r}");
    assert!(r.all_output().contains("bundle-inventory.toml:"), "{r}");

    // On the command line: the same, then a real folder overrides the inventory's.
    let (inventory, _) = bundle_inventory(&t, None);
    let missing = t.work().join("nope").display().to_string();
    let r = run(t.kubeboot_with(&inventory, &["apply", "--yes", "--bundle", &missing]));
    r.assert_code(2);
    assert!(r.all_output().contains("--bundle"), "{r}");
    assert_eq!(t.logins("node-1"), 0, "nothing may run on bad input");

    let r = run(t.kubeboot_with(
        &inventory,
        &[
            "apply",
            "--yes",
            "--output",
            "json",
            "--bundle",
            &bundle.display().to_string(),
        ],
    ));
    r.assert_code(0);
    assert_eq!(lines_of(&r, "node-1", "fetch"), [HELLO.trim_end()], "{r}");
}

#[test]
fn a_refused_forward_fails_the_node_with_what_to_check() {
    let t = start_lab(1);
    let bundle = make_bundle(&t);
    let (inventory, ports) = bundle_inventory(&t, Some(&bundle));
    // Something else already listens on the node's bundle port.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", ports[0])).expect("take the port");
    t.write_playbook(
        "10-x.yaml",
        "name: x\nhosts: all\ntasks:\n  - name: x\n    run: 'true'\n",
    );
    let r = run(t.kubeboot_with(&inventory, &["apply", "--yes", "--output", "json"]));
    r.assert_code(1);
    let finished = r.events_of("node_finished");
    let error = common::str_of(&finished[0]["error"]);
    assert!(error.contains("AllowTcpForwarding"), "{error}");
    assert!(error.contains(&ports[0].to_string()), "{error}");
}
