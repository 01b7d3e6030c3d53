//! What an operator following the guide runs into (issue 17), end to end against real sshd lab
//! nodes (tests/common): the keepalive timing the guide promises, the sudo password fallback.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use kubeboot::lab;

#[test]
fn a_frozen_node_is_lost_after_three_keepalive_intervals_as_the_guide_says() {
    let t = start_lab(1);
    let inv = t.keepalive_inventory("3s");
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
    let child = t.spawn_apply_with(&inv);
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
    // 3 intervals of 3 s after the node's last line (4 before the fix: 12 s), with room for a busy machine.
    assert!(
        took >= Duration::from_millis(7500) && took < Duration::from_millis(11000),
        "the node was declared lost {took:?} after it froze; the guide says 3 × keepalive (9s)"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nothing from it for 9s: keepalives every 3s went unanswered"),
        "{stdout}"
    );
}

#[test]
fn sudo_uses_the_login_password_when_the_named_variable_is_unset_and_says_so() {
    let t = start_lab(1);
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
    let net = claim_net(4);
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("scripts/demo.sh")
        .current_dir(repo)
        .env("KUBEBOOT_BIN", bin())
        .env("KUBEBOOT_DEMO_PLAYBOOKS", "examples/playbooks")
        .env("KUBEBOOT_DEMO_ARGS", "--yes --output json")
        .env("KUBEBOOT_DEMO_LAB", work.path().join("lab"))
        .env("KUBEBOOT_DEMO_STATE", work.path().join("state"))
        .env("KUBEBOOT_DEMO_FIRST_ADDRESS", net.first_address.to_string())
        .env("KUBEBOOT_DEMO_FIRST_PORT", net.first_port.to_string())
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

/// The state letter of the node's sshd (`S` running, `T` stopped by a signal), or None when it is gone.
fn sshd_state(t: &TestLab, node: &str) -> Option<char> {
    let pid = fs::read_to_string(t.lab.dir.join("nodes").join(node).join("sshd.pid")).ok()?;
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next().filter(|c| *c != 'Z')
}

#[test]
fn lab_stop_freeze_and_start_act_on_one_node() {
    let t = start_lab(2);
    let lab_cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(bin());
        c.arg("lab").args(args).arg("--dir").arg(&t.lab.dir);
        run(c)
    };
    lab_cmd(&["freeze", "node-1"]).assert_code(0);
    assert_eq!(sshd_state(&t, "node-1"), Some('T'));
    assert_eq!(sshd_state(&t, "node-2"), Some('S'), "the other node is untouched");
    lab_cmd(&["start", "node-1"]).assert_code(0);
    // Thawed: sleeping again, or still running for a moment after SIGCONT on a loaded machine; never stopped.
    assert!(
        matches!(sshd_state(&t, "node-1"), Some('S' | 'R')),
        "start thaws a frozen node: {:?}",
        sshd_state(&t, "node-1")
    );

    lab_cmd(&["stop", "node-1"]).assert_code(0);
    assert_eq!(sshd_state(&t, "node-1"), None);
    let addr = |n: usize| {
        let node = &t.lab.nodes[n - 1];
        std::net::SocketAddr::from((node.address, node.port))
    };
    assert!(
        std::net::TcpStream::connect(addr(1)).is_err(),
        "node-1 still accepts connections"
    );
    assert!(std::net::TcpStream::connect(addr(2)).is_ok(), "node-2 was stopped too");
    lab_cmd(&["start", "node-1"]).assert_code(0);
    assert!(
        std::net::TcpStream::connect(addr(1)).is_ok(),
        "node-1 did not come back"
    );

    // And a run works against it again.
    t.write_playbook("00-s.yaml", &stage("s", &[logging_task("one", "true")]));
    t.apply(&[]).assert_code(0);

    let unknown = lab_cmd(&["stop", "node-9"]);
    assert_ne!(unknown.code, Some(0));
    assert!(unknown.stderr.contains("no node node-9"), "{}", unknown.stderr);
}

/// An ssh-agent of this test's own, on a socket in `dir`; killed when dropped.
struct Agent {
    child: std::process::Child,
    sock: std::path::PathBuf,
}

impl Agent {
    fn start(dir: &std::path::Path) -> Agent {
        let sock = dir.join("agent.sock");
        let child = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent must be installed (openssh-client)");
        assert!(
            wait_until(Duration::from_secs(10), || sock.exists()),
            "ssh-agent did not start"
        );
        Agent { child, sock }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_encrypted_key_file_whose_key_is_in_the_agent_logs_in_through_the_agent() {
    let t = start_lab(1);
    let agent = Agent::start(t.work());
    let key = t.lab.dir.join("id_ed25519");
    let added = std::process::Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &agent.sock)
        .output()
        .expect("ssh-add runs");
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    // The same key, encrypted with a passphrase kubeboot does not know.
    let encrypted = t.work().join("id_encrypted");
    fs::copy(&key, &encrypted).expect("copy the key");
    let changed = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "a passphrase", "-f"])
        .arg(&encrypted)
        .output()
        .expect("ssh-keygen runs");
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    let inv = t.work().join("inventory.toml");
    let text = fs::read_to_string(t.inventory())
        .expect("read")
        .replace(
            &format!("key = \"{}\"", key.display()),
            &format!("key = \"{}\"", encrypted.display()),
        )
        .replace("agent = false", "agent = true");
    assert!(text.contains("id_encrypted") && text.contains("agent = true"), "{text}");
    fs::write(&inv, text).expect("write");
    t.write_playbook("00-s.yaml", &stage("s", &[logging_task("one", "true")]));

    let mut cmd = t.kubeboot_with(&inv, &["apply", "--yes", "--output", "json"]);
    cmd.env("SSH_AUTH_SOCK", &agent.sock);
    let run1 = run(cmd);
    run1.assert_code(0);
    assert_eq!(t.log_lines("node-1"), ["one"]);

    // Without the key in the agent, the error still says what to do about the encrypted file.
    let removed = std::process::Command::new("ssh-add")
        .arg("-D")
        .env("SSH_AUTH_SOCK", &agent.sock)
        .output()
        .expect("ssh-add runs");
    assert!(removed.status.success());
    let mut cmd = t.kubeboot_with(&inv, &["apply", "--yes", "--output", "json", "--fresh"]);
    cmd.env("SSH_AUTH_SOCK", &agent.sock);
    let run2 = run(cmd);
    run2.assert_code(1);
    assert!(
        run2.stdout
            .contains("encrypted with a passphrase, and none of ssh-agent's keys was accepted"),
        "{}",
        run2.stdout
    );
}

#[test]
fn status_shows_the_run_holding_the_lock_before_it_finished_a_task() {
    let t = start_lab(1);
    t.write_playbook("00-s.yaml", &stage("s", &[logging_task("one", "true")]));
    t.apply(&[]).assert_code(0);
    let first_run = t
        .journal()
        .iter()
        .find(|r| r["record"] == "run")
        .map(|r| str_of(&r["run"]))
        .expect("the first run's record");

    let sleeper = "sleep 5.186";
    t.write_playbook("00-s.yaml", &stage("s", &[logging_task("one", sleeper)]));
    let child = t.spawn_apply();
    assert!(
        wait_until(Duration::from_secs(20), || process_list().contains(sleeper)),
        "the second run did not start its task"
    );
    let status = run(t.kubeboot(&["status", "--output", "json"]));
    let text = run(t.kubeboot(&["status"]));
    let _ = wait_with_cap(child, Duration::from_secs(30));
    status.assert_code(0);
    let row: serde_json::Value = serde_json::from_str(status.stdout.lines().next().expect("a row")).expect("JSON");
    assert!(row["status"].is_null(), "not the previous run's result: {row}");
    assert_ne!(
        str_of(&row["run"]),
        first_run,
        "the run shown is the one under way: {row}"
    );
    assert!(text.stdout.contains("running (process "), "{}", text.stdout);
}
