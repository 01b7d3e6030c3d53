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
