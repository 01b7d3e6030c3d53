//! The real binary's TUI in a real terminal: kubeboot runs inside tmux against a local lab of sshd nodes, the test
//! presses keys with `tmux send-keys` and reads the screen with `tmux capture-pane`, as an operator would.
//! Needs root, sshd, sudo and tmux; a missing one fails the test (never skips it).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::tmux::Tmux;
use common::{TestLab, start_lab};
use kubeboot::lab;

/// How long one screen may take to appear.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Checks the failing node: 40 lines of output, then it fails on node-2 until its flag file exists.
const CHECK_STAGE: &str = r#"name: check
hosts: all
tasks:
  - name: need flag
    run: |
      for i in $(seq 1 40); do echo "check line $i"; done
      if [ "{{ node.name }}" = "node-2" ] && [ ! -e "{{ lab_root }}/ok" ]; then
        echo "flag file missing on {{ node.name }}" >&2
        exit 3
      fi
      echo "flag fine"
"#;

/// Slow on nodes without the flag, so the run is still going while the operator looks at the failure.
const WORK_STAGE: &str = r#"name: work
hosts: all
tasks:
  - name: slow work
    run: |
      if [ -e "{{ lab_root }}/ok" ]; then n=1; else n=SECONDS; fi
      for i in $(seq 1 $n); do echo "working $i"; sleep 1; done
"#;

/// A 4-node lab, a playbook set and a wrapper script that runs `kubeboot apply` and records its exit code.
struct Setup {
    /// The lab; its work folder holds the playbooks, the state folder and the wrapper script.
    t: TestLab,
}

impl Setup {
    fn new(work_seconds: u32) -> Setup {
        let setup = Setup { t: start_lab(4) };
        let playbooks = setup.path("playbooks");
        std::fs::create_dir_all(&playbooks).expect("playbooks folder");
        std::fs::create_dir_all(setup.path("assets")).expect("assets folder");
        std::fs::write(playbooks.join("10-check.yaml"), CHECK_STAGE).expect("write a playbook");
        let work = WORK_STAGE.replace("SECONDS", &work_seconds.to_string());
        std::fs::write(playbooks.join("20-work.yaml"), work).expect("write a playbook");
        let script = format!(
            r#"cd {dir}
before=$(stty -g)
{bin} --inventory {inventory} --playbooks playbooks --assets assets --state-dir state apply
code=$?
echo $code > exit-code.tmp && mv exit-code.tmp exit-code
[ "$(stty -g)" = "$before" ] && echo "terminal modes restored"
echo "== kubeboot exited with $code =="
exec sleep 600
"#,
            dir = setup.t.work().display(),
            bin = env!("CARGO_BIN_EXE_kubeboot"),
            inventory = setup.t.lab.inventory.display(),
        );
        std::fs::write(setup.path("run.sh"), script).expect("write the wrapper script");
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.work().join(name)
    }

    fn start(&self) -> Tmux {
        Tmux::start(self.t.work(), &self.path("run.sh"), SCREEN_TIMEOUT)
    }

    /// Waits for kubeboot to exit; returns its exit code.
    fn exit_code(&self, tmux: &Tmux) -> i32 {
        tmux.exit_code(&self.path("exit-code"))
    }
}

/// Everything `node` printed in the run (its log file under the state folder).
fn node_log(state: &Path, node: &str) -> String {
    let runs = std::fs::read_dir(state.join("logs")).expect("the run's log folder");
    runs.flatten()
        .filter_map(|run| std::fs::read_to_string(run.path().join(format!("{node}.log"))).ok())
        .collect()
}

/// The number of the first `check line N` visible in the scrolling part of the output pane.
fn first_output_line(screen: &str) -> Option<u32> {
    screen
        .lines()
        .filter_map(|l| l.strip_prefix("│check line "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next()
}

/// The row of the node list naming `node` (the running screen's list starts each row with a state symbol).
fn node_row<'a>(screen: &'a str, node: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.contains(&format!(" {node} ")) && l.contains('│'))
}

#[test]
fn an_operator_confirms_watches_a_failure_fixes_it_retries_and_leaves_with_exit_0() {
    let started = Instant::now();
    let setup = Setup::new(6);
    let tmux = setup.start();

    // The confirmation screen: nodes, stages and task counts, and nothing runs yet.
    let screen = tmux.wait_for("the confirmation screen", |s| s.contains("y/Enter"));
    assert!(tmux.alternate_on(), "the TUI uses the alternate screen:\n{screen}");
    assert!(
        screen.contains("4 nodes in 4 clusters · 2 stages · 8 tasks"),
        "{screen}"
    );
    for node in ["node-1", "node-2", "node-3", "node-4"] {
        assert!(screen.contains(node), "{node} is listed:\n{screen}");
    }
    assert!(
        screen.lines().any(|l| l.contains("check") && l.contains(" 4 ")),
        "stage rows with node and task counts:\n{screen}"
    );
    assert!(!screen.contains("host keys"), "the lab's keys are all known:\n{screen}");

    // Start: the running screen with the node list, the stage matrix and the output pane.
    tmux.keys(&["y"]);
    // node-1 may still be connecting when node-2 fails (under load): wait for both, node-2 failed and node-1 at work.
    let screen = tmux.wait_for("node-2 to fail while node-1 works", |s| {
        node_row(s, "node-2").is_some_and(|r| r.contains('✗')) && node_row(s, "node-1").is_some_and(|r| r.contains('▶'))
    });
    assert!(screen.contains(" stages "), "the stage matrix is shown:\n{screen}");
    assert!(
        screen.contains("node-1 ·"),
        "the output pane shows the selected node:\n{screen}"
    );
    assert!(
        node_row(&screen, "node-1").is_some_and(|r| r.contains('▶')),
        "node-1 still works while node-2 has failed:\n{screen}"
    );

    // Select node-2: its failed task and error are on top of its output.
    tmux.keys(&["j"]);
    let screen = tmux.wait_for("node-2's output", |s| s.contains("node-2 ·"));
    assert!(
        screen.contains("check / need flag"),
        "the failed task is named:\n{screen}"
    );
    assert!(screen.contains("exit 3"), "the exit code is shown:\n{screen}");
    assert!(
        screen.contains("flag file missing on node-2"),
        "the error output is shown:\n{screen}"
    );

    // Scroll back to earlier output, then to the end again.
    let newest = first_output_line(&screen).unwrap_or_else(|| panic!("output lines are shown:\n{screen}"));
    tmux.keys(&["PPage"]);
    tmux.wait_for("older output after PgUp", |s| {
        s.contains("paused") && first_output_line(s).is_some_and(|n| n < newest)
    });
    tmux.keys(&["End"]);
    tmux.wait_for("the newest output after End", |s| {
        !s.contains("paused") && first_output_line(s) == Some(newest)
    });

    // Fix the node, retry: it runs again from the failed task and finishes.
    let root = setup.t.root("node-2");
    std::fs::write(root.join("ok"), "").expect("create the flag file");
    tmux.keys(&["r"]);
    let screen = tmux.wait_for("the summary screen", |s| {
        s.contains("q/Enter") && s.contains(" result ")
    });
    for node in ["node-1", "node-2", "node-3", "node-4"] {
        assert!(
            screen
                .lines()
                .any(|l| l.contains(&format!("{node} ")) && l.contains(" ok ")),
            "{node} finished:\n{screen}"
        );
    }
    let log = node_log(&setup.path("state"), "node-2");
    let failed_at = log.find("flag file missing on node-2");
    let fixed_at = log.find("flag fine");
    assert!(
        matches!((failed_at, fixed_at), (Some(a), Some(b)) if a < b) && log.contains("working 1"),
        "node-2 failed, then ran `need flag` again and went on:\n{log}"
    );

    // Leave: the summary is printed on the normal screen, the terminal is restored and the exit code is 0.
    tmux.keys(&["q"]);
    let code = setup.exit_code(&tmux);
    let history = tmux.wait_for("the shell again", |s| s.contains("== kubeboot exited"));
    let history = format!("{history}\n{}", tmux.history());
    assert_eq!(code, 0, "exit code; the terminal showed:\n{history}");
    assert!(!tmux.alternate_on(), "the alternate screen was left:\n{history}");
    assert!(
        history.contains("terminal modes restored"),
        "raw mode was undone:\n{history}"
    );
    assert!(
        history.contains("node-2"),
        "the summary is printed after exit:\n{history}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn quitting_mid_run_cancels_restores_the_terminal_and_exits_130() {
    let setup = Setup::new(30);
    let tmux = setup.start();
    tmux.wait_for("the confirmation screen", |s| s.contains("y/Enter"));
    tmux.keys(&["y"]);
    tmux.wait_for("the slow stage running", |s| s.contains("working 1"));

    tmux.keys(&["q"]);
    let screen = tmux.wait_for("the quit question", |s| s.contains("saved"));
    assert!(tmux.alternate_on(), "still in the TUI while asking:\n{screen}");
    tmux.keys(&["y"]);

    let code = setup.exit_code(&tmux);
    let history = tmux.wait_for("the shell again", |s| s.contains("== kubeboot exited"));
    let history = format!("{history}\n{}", tmux.history());
    assert_eq!(code, 130, "exit code; the terminal showed:\n{history}");
    assert!(!tmux.alternate_on(), "the alternate screen was left:\n{history}");
    assert!(
        history.contains("terminal modes restored"),
        "raw mode was undone:\n{history}"
    );
}

#[test]
fn unknown_host_keys_are_accepted_or_refused_per_node_on_the_confirmation_screen() {
    let setup = Setup::new(1);
    let node2 = setup.t.lab.node("node-2").expect("node-2 exists");
    std::fs::write(node2.root.join("ok"), "").expect("create the flag file");
    // known_hosts forgets node-3 and node-4.
    let known_hosts = setup.t.lab.dir.join("known_hosts");
    let all = std::fs::read_to_string(&known_hosts).expect("the lab's known_hosts");
    let kept: String = all.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&known_hosts, kept).expect("rewrite known_hosts");

    let tmux = setup.start();
    let screen = tmux.wait_for("the host key box", |s| s.contains("host keys") && s.contains("y/Enter"));
    for node in ["node-3", "node-4"] {
        assert!(
            screen
                .lines()
                .any(|l| l.contains("? undecided") && l.contains(node) && l.contains("SHA256:")),
            "{node}'s key waits with its fingerprint:\n{screen}"
        );
    }
    assert!(
        !screen
            .lines()
            .any(|l| l.contains("? undecided") && l.contains("node-1")),
        "known keys are not asked about:\n{screen}"
    );
    tmux.keys(&["a"]);
    tmux.keys(&["j"]);
    tmux.keys(&["x"]);
    let screen = tmux.wait_for("both decisions", |s| s.contains("✓ accept") && s.contains("✗ refuse"));
    assert!(
        screen.lines().any(|l| l.contains("✓ accept") && l.contains("node-3")),
        "{screen}"
    );
    tmux.keys(&["y"]);
    let screen = tmux.wait_for("the summary screen", |s| {
        s.contains("q/Enter") && s.contains(" result ")
    });
    assert!(
        screen.lines().any(|l| l.contains("node-3 ") && l.contains(" ok ")),
        "the accepted node ran:\n{screen}"
    );
    assert!(
        screen.lines().any(|l| l.contains("node-4 ") && l.contains("failed")),
        "the refused node failed:\n{screen}"
    );
    assert!(screen.contains("unknown"), "with the unknown-host error:\n{screen}");
    let recorded = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    let node3 = setup.t.lab.node("node-3").expect("node-3 exists");
    let node4 = setup.t.lab.node("node-4").expect("node-4 exists");
    assert!(
        recorded.contains(&format!("[{}]:{} ", node3.address, node3.port)),
        "{recorded}"
    );
    assert!(
        !recorded.contains(&format!("[{}]:{} ", node4.address, node4.port)),
        "{recorded}"
    );

    tmux.keys(&["q"]);
    assert_eq!(
        setup.exit_code(&tmux),
        1,
        "a refused node is a failed node:\n{}",
        tmux.history()
    );
}

#[test]
fn the_first_screen_shows_the_host_key_check_at_once_with_each_answer() {
    let setup = Setup::new(1);
    // A frozen node takes the connection but never says a word: its look lasts the full 3 s.
    lab::pause_node(&setup.t.lab.dir, "node-4").expect("freeze node-4");
    let started = Instant::now();
    let tmux = setup.start();
    let screen = tmux.wait_for("the host key check", |s| {
        s.contains("checking host keys of 4 nodes") && s.contains("3/4 answered")
    });
    let shown = started.elapsed();
    assert!(
        shown < Duration::from_secs(3),
        "the screen showed the check only after {shown:?}:\n{screen}"
    );
    for node in ["node-1", "node-2", "node-3"] {
        assert!(
            screen.lines().any(|l| l.contains(node) && l.contains("✓ known")),
            "{node} answered:\n{screen}"
        );
    }
    assert!(
        screen.lines().any(|l| l.contains("node-4") && l.contains("… asking")),
        "node-4 is still asked:\n{screen}"
    );
    // `y` starts nothing while the look runs; once node-4 gives up, the usual screen is back.
    tmux.keys(&["y"]);
    let screen = tmux.wait_for("the look to end", |s| {
        !s.contains("checking host keys") && s.contains("y/Enter")
    });
    assert!(
        screen.contains("kubeboot apply · run"),
        "still the confirmation screen, nothing started:\n{screen}"
    );
    tmux.keys(&["n"]);
    assert_eq!(setup.exit_code(&tmux), 0, "{}", tmux.history());
    assert!(
        !setup.path("state/journal.jsonl").exists()
            || !std::fs::read_to_string(setup.path("state/journal.jsonl"))
                .unwrap_or_default()
                .contains("task_started"),
        "nothing ran"
    );
    lab::resume_node(&setup.t.lab.dir, "node-4").expect("thaw node-4");
}

#[test]
fn answering_no_on_the_confirmation_screen_leaves_the_logs_of_the_last_run_alone() {
    let setup = Setup::new(1);
    // What an earlier run left: its log folder, and `latest` pointing at it.
    let logs = setup.path("state/logs");
    std::fs::create_dir_all(logs.join("20260101-000000-abcd")).expect("a log folder");
    std::fs::write(logs.join("20260101-000000-abcd/kubeboot.log"), "an earlier run\n").expect("a log");
    std::os::unix::fs::symlink("20260101-000000-abcd", logs.join("latest")).expect("latest");
    let tmux = setup.start();
    tmux.wait_for("the confirmation screen", |s| s.contains("y/Enter"));
    tmux.keys(&["n"]);
    assert_eq!(setup.exit_code(&tmux), 0);
    assert_eq!(
        std::fs::read_link(logs.join("latest")).expect("latest is still a link"),
        PathBuf::from("20260101-000000-abcd")
    );
    let mut folders: Vec<String> = std::fs::read_dir(&logs)
        .expect("logs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(
        folders,
        ["20260101-000000-abcd", "latest"],
        "no empty log folder of the declined run"
    );
}
