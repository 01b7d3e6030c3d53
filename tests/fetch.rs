//! `fetch:` tasks against real sshd lab nodes: a file on the node (root-only, binary) ends up on the jump host
//! 0600 with exactly its bytes, under the state dir or at an absolute path; an existing file with other content
//! is never overwritten; a missing file fails the task with the node's word for it.

mod common;

use std::fs;

use common::{TestLab, file_mode, start_lab};

fn write_playbooks(t: &TestLab, abs: &std::path::Path) {
    t.write_playbook(
        "10-fetch.yaml",
        &format!(
            r#"name: fetch
hosts: all
become: true
tasks:
  - name: a root-only binary file
    run: |
      set -e
      head -c 5000 /dev/urandom > {{{{ lab_root }}}}/blob.bin
      printf '\000\377 end' >> {{{{ lab_root }}}}/blob.bin
      chown root:root {{{{ lab_root }}}}/blob.bin
      chmod 0600 {{{{ lab_root }}}}/blob.bin
  - name: fetch it under the state dir
    fetch:
      src: "{{{{ lab_root }}}}/blob.bin"
      dest: "fetched/{{{{ node.name }}}}/blob.bin"
  - name: fetch it to a named path
    become: true
    fetch:
      src: "{{{{ lab_root }}}}/blob.bin"
      dest: "{abs}/{{{{ node.name }}}}.bin"
      overwrite: true
"#,
            abs = abs.display()
        ),
    );
}

#[test]
fn fetch_copies_node_files_to_the_jump_host_privately_and_never_overwrites_an_older_one() {
    let t = start_lab(2);
    let abs = t.work().join("named");
    write_playbooks(&t, &abs);

    let plan = common::run(t.kubeboot(&["plan", "--commands"]));
    plan.assert_code(0);
    assert!(
        plan.stdout.contains("fetch ")
            && plan
                .stdout
                .contains("-> <state dir>/fetched/node-1/blob.bin on the jump host (mode 0600)")
            && plan.stdout.contains("never overwritten"),
        "{}",
        plan.stdout
    );

    let first = t.apply(&[]);
    first.assert_code(0);
    for node in ["node-1", "node-2"] {
        let on_node = fs::read(t.root(node).join("blob.bin")).expect("the node's file");
        assert!(on_node.len() > 5000);
        let fetched = t.state_dir().join(format!("fetched/{node}/blob.bin"));
        assert_eq!(
            fs::read(&fetched).expect("fetched"),
            on_node,
            "{node}: the bytes arrive unchanged"
        );
        assert_eq!(file_mode(&fetched), 0o600);
        assert_eq!(file_mode(fetched.parent().unwrap()), 0o700);
        let named = abs.join(format!("{node}.bin"));
        assert_eq!(fs::read(&named).expect("fetched to the named path"), on_node);
        assert_eq!(file_mode(&named), 0o600);
        let task = first.finished(node, "fetch it under the state dir").expect("reported");
        assert_eq!(task["status"], "changed", "{task}");
    }
    // The content never shows as output: only the line saying where it went.
    assert!(!first.stdout.contains("base64"), "{first}");
    assert!(first.stdout.contains("fetched "), "{first}");

    // A new file on the node, fetched again (--fresh) to the same name: refused, the old one stays.
    let kept = fs::read(t.state_dir().join("fetched/node-1/blob.bin")).unwrap();
    let again = t.apply(&["--fresh"]);
    again.assert_code(1);
    let task = again
        .finished("node-1", "fetch it under the state dir")
        .expect("reported");
    assert_eq!(task["status"], "failed");
    assert!(
        task["error"].as_str().unwrap_or_default().contains("never overwritten"),
        "{task}"
    );
    assert_eq!(fs::read(t.state_dir().join("fetched/node-1/blob.bin")).unwrap(), kept);

    // A missing file: the node says so, nothing is written.
    t.write_playbook(
        "10-fetch.yaml",
        "name: fetch\nhosts: all\ntasks:\n  - name: missing\n    fetch: { src: /nonexistent/kubeboot-file, dest: missing.bin }\n",
    );
    let missing = t.apply(&[]);
    missing.assert_code(1);
    let task = missing.finished("node-2", "missing").expect("reported");
    assert!(
        task["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no such file on the node: /nonexistent/kubeboot-file"),
        "{task}"
    );
    assert!(!t.state_dir().join("missing.bin").exists());
}

#[test]
fn fetch_paths_are_checked_before_anything_runs() {
    let t = start_lab(1);
    t.write_playbook(
        "10-fetch.yaml",
        "name: fetch\nhosts: all\ntasks:\n  - name: relative src\n    fetch: { src: etc/x, dest: ../x }\n",
    );
    let r = t.apply(&[]);
    r.assert_code(2);
    assert!(
        r.stderr
            .contains("10-fetch.yaml:5:19: error: `fetch.src` must be an absolute path"),
        "{r}"
    );
    assert!(
        r.stderr
            .contains("`fetch.dest` must name a file on the jump host without `..`"),
        "{r}"
    );
}
