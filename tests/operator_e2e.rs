//! What an operator following the guide runs into (issue 17), end to end against real sshd lab
//! nodes (tests/common): the keepalive timing the guide promises, the sudo password fallback.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use kubeboot::lab;

#[test]
fn a_frozen_node_is_lost_after_three_keepalive_intervals_as_the_guide_says() {
    let t = start_lab(181, 1);
    let inv = t.work().join("inventory.toml");
    let text = fs::read_to_string(t.inventory())
        .expect("read")
        .replace("[ssh]\n", "[ssh]\nkeepalive = \"2s\"\n");
    fs::write(&inv, text).expect("write");
    let ready = t.root("node-1").join("ready");
    t.write_playbook(
        "00-s.yaml",
        &stage(
            "s",
            &[logging_task(
                "long",
                &format!("echo ready; touch {}; sleep 60", ready.display()),
            )],
        ),
    );
    let child = t
        .kubeboot_with(&inv, &["apply", "--yes", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubeboot starts");
    assert!(
        wait_until(Duration::from_secs(20), || ready.exists()),
        "the task did not start"
    );
    // The task's output line is the last thing the node sends before it freezes.
    std::thread::sleep(Duration::from_millis(100));
    lab::pause_node(&t.lab.dir, "node-1").expect("freeze node-1");
    let frozen = Instant::now();
    let out = wait_with_cap(child, Duration::from_secs(40));
    let took = frozen.elapsed();
    lab::resume_node(&t.lab.dir, "node-1").expect("thaw node-1");
    assert_eq!(out.status.code(), Some(1));
    // 3 intervals of 2 s after the node's last line (4 before the fix: 8 s), with room for a busy machine.
    assert!(
        took >= Duration::from_millis(5000) && took < Duration::from_millis(7500),
        "the node was declared lost {took:?} after it froze; the guide says 3 × keepalive (6s)"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nothing from it for 6s: keepalives every 2s went unanswered"),
        "{stdout}"
    );
}

#[test]
fn sudo_uses_the_login_password_when_the_named_variable_is_unset_and_says_so() {
    let t = start_lab(182, 1);
    let inv = t.work().join("inventory.toml");
    let password_file = lab::password_file(&t.lab.dir);
    let text = fs::read_to_string(t.inventory()).expect("read");
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("sudo_password_file") {
                format!(
                    "password_file = \"{}\"\nsudo_password_env = \"KB_TEST_SUDO_NOT_SET\"",
                    password_file.display()
                )
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&inv, text).expect("write");
    t.write_playbook(
        "00-s.yaml",
        &stage("s", &[logging_task("as root", "test \"$(id -u)\" = 0")])
            .replace("    run: |", "    become: true\n    run: |"),
    );
    let mut cmd = t.kubeboot_with(&inv, &["apply", "--yes", "--output", "json"]);
    cmd.env_remove("KB_TEST_SUDO_NOT_SET");
    let run = run(cmd);
    run.assert_code(0);
    assert_eq!(t.log_lines("node-1"), ["as root"]);
    let notes: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("KB_TEST_SUDO_NOT_SET"))
        .collect();
    assert_eq!(
        notes,
        ["note: KB_TEST_SUDO_NOT_SET is not set: sudo uses the SSH login password on node-1"],
        "{}",
        run.stderr
    );
}

#[test]
fn the_demo_with_json_output_keeps_stdout_pure_json() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().expect("a temporary folder");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("scripts/demo.sh")
        .current_dir(repo)
        .env("KUBEBOOT_BIN", bin())
        .env("KUBEBOOT_DEMO_PLAYBOOKS", "examples/playbooks")
        .env("KUBEBOOT_DEMO_ARGS", "--yes --output json")
        .env("KUBEBOOT_DEMO_LAB", work.path().join("lab"))
        .env("KUBEBOOT_DEMO_STATE", work.path().join("state"))
        .env("KUBEBOOT_DEMO_FIRST_ADDRESS", "127.0.183.1")
        .env("KUBEBOOT_DEMO_FIRST_PORT", "21830")
        .env_remove("KUBEBOOT_DEMO_KEEP")
        .stdin(std::process::Stdio::null());
    let run = run(cmd);
    run.assert_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(!lines.is_empty(), "no output: {}", run.stderr);
    for line in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON on stdout: {line:?}"
        );
    }
    assert!(
        run.stderr.contains("lab up"),
        "the lab's messages go to stderr: {}",
        run.stderr
    );
}
