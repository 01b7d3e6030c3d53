//! `kubeboot apply` end to end: the real binary against a lab of real OpenSSH nodes on loopback
//! (needs root, sshd and sudo; a missing sshd fails the test). Side effects on the nodes, not
//! kubeboot's own report, prove what ran. Each lab has a loopback range of its own (tests/common).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use kubeboot::lab::{self, InventoryOptions};
use serde_json::Value;

/// Three stages whose every task leaves one line in the node's log.
fn three_stages(t: &TestLab) {
    t.write_playbook(
        "00-first.yaml",
        &stage("first", &[logging_task("one", "true"), logging_task("two", "sleep 1")]),
    );
    t.write_playbook(
        "10-second.yaml",
        &stage(
            "second",
            &[
                logging_task("slow output", "echo tick 1; sleep 0.8; echo tick 2; sleep 0.4"),
                logging_task("three", "true"),
            ],
        ),
    );
    t.write_playbook("20-third.yaml", &stage("third", &[logging_task("four", "true")]));
}

fn assert_each_task_ran_once(t: &TestLab, node: &str, tasks: &[&str]) {
    let runs = t.runs(node);
    for task in tasks {
        assert_eq!(
            runs.get(*task).copied().unwrap_or(0),
            1,
            "{node}: task `{task}` should have run exactly once; log: {:?}",
            t.log_lines(node)
        );
    }
    assert_eq!(runs.len(), tasks.len(), "{node}: unexpected tasks ran: {runs:?}");
}

#[test]
fn four_nodes_run_in_parallel_stream_output_live_and_count_right() {
    let t = start_lab(4);
    three_stages(&t);
    let run = t.apply(&[]);
    run.assert_code(0);

    // Parallel: every node's one-second task had started before any of them finished.
    let sleeps: Vec<Value> = run.events().into_iter().filter(|e| e["task"] == "two").collect();
    let starts: Vec<f64> = sleeps.iter().filter(|e| e["event"] == "task_started").map(ts).collect();
    let ends: Vec<f64> = sleeps
        .iter()
        .filter(|e| e["event"] == "task_finished")
        .map(ts)
        .collect();
    assert_eq!((starts.len(), ends.len()), (4, 4), "{run}");
    let last_start = starts.iter().cloned().fold(f64::MIN, f64::max);
    let first_end = ends.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "the nodes ran one after another, not in parallel\n{run}"
    );

    // Live: the first line of the slow task arrives well before the task ends.
    for node in ["node-1", "node-2", "node-3", "node-4"] {
        let events = run.events();
        let pos = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred);
        let started = pos(&|e| e["event"] == "task_started" && e["node"] == node && e["task"] == "slow output")
            .unwrap_or_else(|| panic!("{node}: no task_started\n{run}"));
        let first_line = events[started..]
            .iter()
            .find(|e| e["event"] == "output" && e["node"] == node)
            .unwrap_or_else(|| panic!("{node}: no output\n{run}"));
        assert_eq!(first_line["line"], "tick 1");
        assert_eq!(first_line["stream"], "stdout");
        let finished = run.finished(node, "slow output").expect("task_finished");
        let ahead = ts(&finished) - ts(first_line);
        assert!(
            ahead > 0.6,
            "{node}: output arrived only {ahead:.2}s before the task ended\n{run}"
        );
    }

    // The counts in run_finished match the task_finished events.
    let finished = run.events_of("task_finished");
    assert_eq!(finished.len(), 4 * 5);
    let count = |s: &str| finished.iter().filter(|e| e["status"] == s).count() as u64;
    let summary = run.events_of("run_finished").pop().expect("run_finished");
    for s in ["ok", "changed", "skipped", "failed"] {
        assert_eq!(summary["counts"][s].as_u64(), Some(count(s)), "count of {s}\n{run}");
    }
    assert_eq!(summary["nodes_ok"], 4);
    for node in ["node-1", "node-2", "node-3", "node-4"] {
        assert_each_task_ran_once(&t, node, &["one", "two", "slow output", "three", "four"]);
    }
}

#[test]
fn a_failed_node_resumes_at_the_failed_task_and_repeats_nothing_that_finished() {
    let t = start_lab(4);
    t.write_playbook(
        "00-first.yaml",
        &stage("first", &[logging_task("one", "true"), logging_task("two", "true")]),
    );
    t.write_playbook(
        "10-second.yaml",
        &stage(
            "second",
            &[
                logging_task("three", "true"),
                logging_task(
                    "allowed",
                    "test -e {{ lab_root }}/allow || { echo 'no allow file' >&2; echo 'PASS is the last output line'; exit 1; }",
                ),
                logging_task("five", "true"),
            ],
        ),
    );
    t.write_playbook("20-third.yaml", &stage("third", &[logging_task("six", "true")]));
    for node in ["node-1", "node-3", "node-4"] {
        fs::write(t.root(node).join("allow"), "").expect("write allow");
    }

    let run = t.apply(&[]);
    run.assert_code(1);
    let all = ["one", "two", "three", "allowed", "five", "six"];
    for node in ["node-1", "node-3", "node-4"] {
        assert_each_task_ran_once(&t, node, &all);
    }
    assert_eq!(t.log_lines("node-2"), ["one", "two", "three"]);
    let failed = run.finished("node-2", "allowed").expect("the failing task finished");
    assert_eq!(failed["status"], "failed");
    // The reason is the exit code and the last stderr line, never a line of the task's output.
    assert_eq!(str_of(&failed["error"]), "exit code 1: no allow file", "{failed}");
    let ended = run
        .events_of("node_finished")
        .into_iter()
        .find(|e| e["node"] == "node-2")
        .expect("node-2 finished");
    assert_eq!(ended["counts"]["failed"], 1, "the failed task counts: {ended}");
    assert!(
        str_of(&ended["error"]).ends_with("failed: exit code 1: no allow file"),
        "{ended}"
    );
    let summary = run
        .stderr
        .lines()
        .find(|l| l.starts_with("node-2 "))
        .unwrap_or_else(|| panic!("no node-2 row in the summary\n{run}"));
    let columns: Vec<&str> = summary.split_whitespace().collect();
    assert_eq!(columns[1], "FAILED", "{summary}");
    assert_eq!(columns[5], "1", "the FAILED column counts the failed task: {summary}");

    let status = run_cmd(t.kubeboot(&["status"]));
    status.assert_code(0);
    let text = status.stdout.clone();
    let node2 = &text[text
        .find("node-2")
        .unwrap_or_else(|| panic!("status does not name node-2:\n{text}"))..];
    assert!(
        node2.contains("second / allowed"),
        "status names the failed task:\n{text}"
    );
    assert!(node2.contains("exit"), "status gives the error:\n{text}");
    let json = run_cmd(t.kubeboot(&["status", "--output", "json"]));
    let row: Value = json
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["node"] == "node-2")
        .unwrap_or_else(|| panic!("no node-2 in status json\n{json}"));
    assert_eq!(row["status"], "failed", "{row}");
    assert!(row["failed"].to_string().contains("allowed"), "{row}");

    // Fix the cause; the re-run continues node-2 at the failed task and runs nothing twice anywhere.
    fs::write(t.root("node-2").join("allow"), "").expect("write allow");
    let again = t.apply(&[]);
    again.assert_code(0);
    for node in ["node-1", "node-2", "node-3", "node-4"] {
        assert_each_task_ran_once(&t, node, &all);
    }
    let started: Vec<String> = again
        .events_of("task_started")
        .iter()
        .map(|e| format!("{}/{}", str_of(&e["node"]), str_of(&e["task"])))
        .collect();
    assert_eq!(started, ["node-2/allowed", "node-2/five", "node-2/six"]);
}

fn run_cmd(c: Command) -> Run {
    run(c)
}

#[test]
fn a_second_apply_exits_3_naming_the_state_dir_and_pid_and_a_killed_runs_lock_does_not_block() {
    let t = start_lab(1);
    t.write_playbook("00-slow.yaml", &stage("slow", &[logging_task("wait", "sleep 3")]));
    let mut first = t.spawn_apply();
    assert!(
        wait_until(Duration::from_secs(15), || t.log_lines("node-1").is_empty()
            && fs::read_to_string(t.state_dir().join("journal.jsonl"))
                .is_ok_and(|j| j.contains("\"facts\""))),
        "the first run did not get going"
    );
    let second = t.apply(&[]);
    second.assert_code(3);
    let state = t.state_dir().display().to_string();
    assert!(second.stderr.contains(&state), "names the state dir\n{second}");
    assert!(
        second.stderr.contains(&first.id().to_string()),
        "names the PID {}\n{second}",
        first.id()
    );

    // `status` during the run reads the journal without the lock and says the run is still going.
    let status = run(t.kubeboot(&["status"]));
    status.assert_code(0);
    assert!(status.stdout.contains("running"), "status during a run\n{status}");
    assert!(!status.stdout.contains("interrupted"), "status during a run\n{status}");

    // kill -9 the holder: its lock must not block the next run.
    signal(first.id(), libc::SIGKILL);
    let _ = first.wait();
    let third = t.apply(&[]);
    third.assert_code(0);
    assert_eq!(t.log_lines("node-1").last().map(String::as_str), Some("wait"));
}

/// A second, unrelated host key (what a reinstalled or impostor machine would show).
fn other_host_key(dir: &Path) -> String {
    let key = dir.join("impostor");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = fs::read_to_string(key.with_extension("pub")).expect("read the key");
    public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[test]
fn host_keys_changed_are_refused_unknown_need_accepting_and_accepted_ones_are_recorded() {
    let t = start_lab(2);
    t.write_playbook("00-hello.yaml", &stage("hello", &[logging_task("hi", "true")]));
    let (n1, n2) = (t.lab.nodes[0].clone(), t.lab.nodes[1].clone());
    // node-1's recorded key is some other key; node-2 was never seen.
    let known = t.work().join("known_hosts");
    fs::write(
        &known,
        format!("[{}]:{} {}\n", n1.address, n1.port, other_host_key(t.work())),
    )
    .expect("write known_hosts");
    let opts = InventoryOptions {
        path: t.work().join("inventory.toml"),
        known_hosts: known.clone(),
        ..InventoryOptions::for_lab(&t.lab)
    };
    let inv = lab::write_inventory(&t.lab, &opts).expect("write the inventory");

    let run = run(t.kubeboot_with(&inv, &["apply", "--yes", "--output", "json"]));
    run.assert_code(1);
    let errors: Vec<Value> = run.events_of("node_finished");
    let error_of = |node: &str| {
        errors
            .iter()
            .find(|e| e["node"] == node)
            .map(|e| str_of(&e["error"]))
            .unwrap_or_else(|| panic!("no node_finished for {node}\n{run}"))
    };
    let e1 = error_of("node-1");
    assert!(e1.to_lowercase().contains("changed"), "node-1: {e1}");
    let e2 = error_of("node-2");
    assert!(e2.contains("SHA256:"), "the unknown key's fingerprint is shown: {e2}");
    assert!(e2.contains("--accept-new-host-keys"), "says how to accept: {e2}");
    assert!(t.log_lines("node-1").is_empty() && t.log_lines("node-2").is_empty());
    assert!(run.events_of("task_started").is_empty(), "nothing ran\n{run}");

    let run = run_accepting(&t, &inv);
    run.assert_code(1);
    assert!(t.log_lines("node-1").is_empty(), "a changed key stays refused");
    assert_eq!(t.log_lines("node-2"), ["hi"]);
    let recorded = fs::read_to_string(&known).expect("read known_hosts");
    assert!(
        recorded.contains(&format!("[{}]:{}", n2.address, n2.port)),
        "recorded:\n{recorded}"
    );

    // Once recorded, the key is known: no flag needed any more.
    let again = common::run(t.kubeboot_with(&inv, &["apply", "--yes", "--output", "json", "--limit", "node-2"]));
    again.assert_code(0);
    assert_eq!(t.log_lines("node-2"), ["hi"]);
}

#[test]
fn dry_run_connects_to_nothing_and_limit_runs_only_the_named_nodes() {
    let t = start_lab(2);
    t.write_playbook(
        "00-hello.yaml",
        &stage("hello", &[logging_task("hi", "echo dry-run-marker")]),
    );
    let before = (t.logins("node-1"), t.logins("node-2"));
    let dry = run(t.kubeboot(&["apply", "--yes", "--dry-run"]));
    dry.assert_code(0);
    assert!(dry.stdout.contains("echo dry-run-marker"), "shows the command\n{dry}");
    assert_eq!((t.logins("node-1"), t.logins("node-2")), before, "a dry run logged in");
    assert!(t.log_lines("node-1").is_empty() && t.log_lines("node-2").is_empty());

    t.apply(&["--limit", "node-2"]).assert_code(0);
    assert!(t.log_lines("node-1").is_empty(), "node-1 was not selected");
    assert_eq!(t.log_lines("node-2"), ["hi"]);
    assert_eq!(t.logins("node-1"), before.0, "node-1 was contacted");
}

fn run_accepting(t: &TestLab, inv: &Path) -> Run {
    run(t.kubeboot_with(inv, &["apply", "--yes", "--output", "json", "--accept-new-host-keys"]))
}

#[test]
fn a_wrong_password_is_a_clear_authentication_error_within_seconds() {
    let t = start_lab(1);
    t.write_playbook("00-hello.yaml", &stage("hello", &[logging_task("hi", "true")]));
    let wrong = t.work().join("wrong_password");
    fs::write(&wrong, "not-the-password\n").expect("write");
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).expect("chmod");
    let opts = InventoryOptions {
        path: t.work().join("inventory.toml"),
        key: false,
        password_file: Some(wrong),
        ..InventoryOptions::for_lab(&t.lab)
    };
    let inv = lab::write_inventory(&t.lab, &opts).expect("write the inventory");
    let run = run(t.kubeboot_with(&inv, &["apply", "--yes"]));
    run.assert_code(1);
    assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    let out = run.all_output().to_lowercase();
    assert!(
        out.contains("node-1") && (out.contains("cannot log in") || out.contains("authentic")),
        "{run}"
    );
    assert!(t.log_lines("node-1").is_empty());
}

#[test]
fn secrets_appear_nowhere_in_output_state_or_the_process_list() {
    let t = start_lab(2);
    let password = lab::password(&t.lab.dir).expect("the lab password");
    let password = password.expose().to_string();
    let s3 = "S3KEY-9f8e7d6c5b4a-not-for-eyes";
    let s3_file = t.work().join("s3_key");
    fs::write(&s3_file, format!("{s3}\n")).expect("write");
    fs::set_permissions(&s3_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    // Log in by password (no key), sudo by password, and a named secret.
    let opts = InventoryOptions {
        path: t.work().join("inventory.toml"),
        key: false,
        password_file: Some(lab::password_file(&t.lab.dir)),
        ..InventoryOptions::for_lab(&t.lab)
    };
    let inv = lab::write_inventory(&t.lab, &opts).expect("write the inventory");
    let mut text = fs::read_to_string(&inv).expect("read");
    text.push_str(&format!(
        "\n[secrets]\ns3_key = {{ file = \"{}\" }}\n",
        s3_file.display()
    ));
    fs::write(&inv, text).expect("write");
    t.write_playbook(
        "00-root.yaml",
        "name: root\nhosts: all\nbecome: true\ntasks:\n  - name: who\n    run: id -un\n  - name: slow\n    run: sleep 2\n",
    );
    t.write_playbook(
        "10-secret.yaml",
        "name: secret\nhosts: all\ntasks:\n  - name: echo the key\n    env: { S3_KEY: \"{{ secrets.s3_key }}\" }\n    run: echo \"key=$S3_KEY\"; sleep 1\n",
    );

    let child = t
        .kubeboot_with(&inv, &["apply", "--yes", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubeboot starts");
    let pid = child.id();
    let mut seen = Vec::new();
    while Path::new(&format!("/proc/{pid}")).exists() && seen.len() < 2000 {
        let ps = process_list();
        if ps.contains(&password) || ps.contains(s3) {
            seen.push(ps);
        }
        std::thread::sleep(Duration::from_millis(20));
        if fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
            break;
        }
    }
    let out = wait_with_cap(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(seen.is_empty(), "a secret showed in the process list:\n{}", seen[0]);
    assert!(stdout.contains("\"line\":\"root\""), "become worked:\n{stdout}");
    assert!(stdout.contains("key=****"), "the echoed key is masked:\n{stdout}");
    for (what, bytes) in [("stdout", stdout.as_bytes()), ("stderr", stderr.as_bytes())] {
        for secret in [password.as_str(), s3] {
            assert!(!contains_bytes(bytes, secret.as_bytes()), "a secret is in {what}");
        }
    }
    let files = files_under(&t.state_dir());
    assert!(files.len() >= 2, "the state dir has a journal and logs: {files:?}");
    for (path, bytes) in files {
        for secret in [password.as_str(), s3] {
            assert!(
                !contains_bytes(&bytes, secret.as_bytes()),
                "a secret is in {}",
                path.display()
            );
        }
    }
}

#[test]
fn bad_input_exits_2_with_a_location_and_connects_to_nothing() {
    let t = start_lab(1);
    t.write_playbook("00-hello.yaml", &stage("hello", &[logging_task("hi", "true")]));
    let good_inv = t.inventory();
    let bad_inv = t.work().join("bad-inventory.toml");
    let text = fs::read_to_string(&good_inv)
        .expect("read")
        .replace("[ssh]\n", "[ssh]\nportt = 22\n");
    fs::write(&bad_inv, text).expect("write");
    let bad_pb = t.work().join("bad-playbooks");
    fs::create_dir_all(&bad_pb).expect("mkdir");
    fs::write(
        bad_pb.join("00-bad.yaml"),
        "name: bad\nhosts: all\ntasks:\n  - name: x\n    rn: true\n",
    )
    .expect("w");
    let locked_parent = t.work().join("readonly");
    fs::create_dir_all(&locked_parent).expect("mkdir");
    // Root ignores permissions, so a read-only mount makes the state dir truly unwritable.
    let ro = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
        .arg(&locked_parent)
        .status()
        .expect("mount runs");
    assert!(ro.success(), "mount a read-only tmpfs");
    let _unmount = Unmount(locked_parent.clone());

    let pb = t.playbooks();
    let state = t.state_dir();
    let ro_state = locked_parent.join("state");
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "unknown inventory key",
            args(&bad_inv, &pb, &state, &[]),
            "bad-inventory.toml:3:1",
        ),
        (
            "unknown task key",
            args(&good_inv, &bad_pb, &state, &[]),
            "00-bad.yaml:5:",
        ),
        (
            "unknown --only stage",
            args(&good_inv, &pb, &state, &["--only", "helo"]),
            "hello",
        ),
        (
            "--only with --from",
            args(&good_inv, &pb, &state, &["--only", "hello", "--from", "hello"]),
            "--from",
        ),
        (
            "unwritable state dir",
            args(&good_inv, &pb, &ro_state, &[]),
            "state dir",
        ),
    ];
    let logins = t.logins("node-1");
    for (what, argv, needle) in cases {
        let mut c = Command::new(bin());
        c.args(&argv);
        let r = run(c);
        assert_eq!(r.code, Some(2), "{what}: exit\n{r}");
        assert!(
            r.stderr.contains(needle),
            "{what}: stderr should contain `{needle}`\n{r}"
        );
        assert_eq!(t.logins("node-1"), logins, "{what}: connected to a node");
        assert!(t.log_lines("node-1").is_empty(), "{what}: ran something");
    }
    assert!(
        !state.join("journal.jsonl").exists(),
        "no journal was written for bad input"
    );
}

fn args(inv: &Path, pb: &Path, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["-i", &inv.display().to_string(), "-p", &pb.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(["--state-dir".to_string(), state.display().to_string()]);
    v.extend(["apply", "--yes"].iter().map(|s| s.to_string()));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// A stage whose first task is a read-only check (`changed_when: false`) with this command.
fn check_then_work(t: &TestLab, check: &str) {
    let checked = format!(
        "  - name: check\n    changed_when: false\n    run: |\n      {check}\n      echo check >> {{{{ lab_root }}}}/log\n"
    );
    t.write_playbook(
        "00-checks.yaml",
        &stage("checks", &[checked, logging_task("work", "true")]),
    );
}

#[test]
fn a_read_only_task_ends_ok_everywhere_and_its_rerun_reruns_nothing_after_it() {
    let t = start_lab(2);
    check_then_work(&t, "echo 'PASS all good'");
    let run = t.apply(&[]);
    run.assert_code(0);
    for node in ["node-1", "node-2"] {
        let check = run.finished(node, "check").expect("check finished");
        assert_eq!(
            check["status"], "ok",
            "a read-only task is ok, not changed: {check}\n{run}"
        );
        let work = run.finished(node, "work").expect("work finished");
        assert_eq!(work["status"], "changed", "{work}");
        let ended = run
            .events_of("node_finished")
            .into_iter()
            .find(|e| e["node"] == node)
            .expect("node finished");
        assert_eq!(
            (&ended["counts"]["ok"], &ended["counts"]["changed"]),
            (&1.into(), &1.into()),
            "{ended}"
        );
        // The summary table: NODE RESULT CHANGED OK SKIPPED FAILED TIME.
        let row: Vec<&str> = run
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no {node} row in the summary\n{run}"))
            .split_whitespace()
            .collect();
        assert_eq!((row[2], row[3]), ("1", "1"), "{row:?}");
    }
    let journal = t.journal();
    let statuses: Vec<(String, String, String)> = journal
        .iter()
        .filter(|r| r["record"] == "task")
        .map(|r| (str_of(&r["node"]), str_of(&r["task"]), str_of(&r["status"])))
        .collect();
    for node in ["node-1", "node-2"] {
        assert!(
            statuses.contains(&(node.into(), "check".into(), "ok".into())),
            "the journal records the check ok: {statuses:?}"
        );
    }

    // The check's command changes: it runs again (its input changed) and, being ok, re-runs nothing after it.
    check_then_work(&t, "echo 'PASS all good, checked twice'");
    let again = t.apply(&[]);
    again.assert_code(0);
    let mut started: Vec<String> = again
        .events_of("task_started")
        .iter()
        .map(|e| format!("{}/{}", str_of(&e["node"]), str_of(&e["task"])))
        .collect();
    started.sort();
    assert_eq!(
        started,
        ["node-1/check", "node-2/check"],
        "only the checks run again\n{again}"
    );
    for node in ["node-1", "node-2"] {
        let work = again.finished(node, "work").expect("work reported");
        assert_eq!(
            (&work["status"], &work["reason"]),
            (&"skipped".into(), &"done".into()),
            "{work}\n{again}"
        );
        assert_eq!(t.log_lines(node), ["check", "work", "check"]);
    }
}
