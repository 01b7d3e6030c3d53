//! The SSH layer against real OpenSSH servers from the local lab (needs root, sshd, sudo).
//! Each test's lab has a loopback range of its own (`lab::net`), so they run in parallel.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{TestLab, start_lab};
use kubeboot::engine::NodeSecrets;
use kubeboot::event::Stream;
use kubeboot::lab::{self, LabOptions};
use kubeboot::secrets::Secret;
use kubeboot::ssh::{Command, Exit, HostKeyState, NewHostKeys, Session, SshError, Target, probe_host_key};
use kubeboot::task::ssh_error_text;
use tokio_util::sync::CancellationToken;

fn target(t: &TestLab) -> Target {
    t.lab.target("node-1").expect("node-1 exists")
}

async fn connect(t: &TestLab) -> Session {
    Session::connect(target(t))
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}"))
}

/// Connects to node-1 with jobs run by the node helper (`helper`) or by the persistent shell's own
/// job text, and checks that they are: the parent of a job's `sh` is `kubeboot-node` (its cached
/// copy, `kubeboot-node-SHA`) only with the helper, for the login user's shell and root's.
async fn connect_runner(t: &TestLab, helper: bool) -> Session {
    let mut target = target(t);
    target.node_helper = helper;
    let s = Session::connect(target)
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}"));
    for become_ in [false, true] {
        let (exit, lines) = run(
            &s,
            &Command {
                become_,
                ..cmd("ps -o comm= -p $PPID")
            },
        )
        .await;
        assert_eq!(exit.unwrap(), Exit::Code(0), "{lines:?}");
        assert_eq!(
            stdout(&lines).first().is_some_and(|c| c.starts_with("kubeboot-node")),
            helper,
            "node helper {helper}, become {become_}: the job's parent is {lines:?}"
        );
    }
    s
}

/// A test of what the executor guarantees, once with each way a node runs jobs: the node helper
/// (`kubeboot-node`), and the persistent shell's own job text (used where the helper cannot run).
macro_rules! with_each_job_runner {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn node_helper() {
                super::$name(true).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn shell() {
                super::$name(false).await
            }
        }
    };
}

fn cmd(script: &str) -> Command {
    Command {
        script: script.to_string(),
        ..Default::default()
    }
}

/// Runs a command and returns its exit and every output line.
async fn run(s: &Session, c: &Command) -> (Result<Exit, SshError>, Vec<(Stream, String)>) {
    let lines = Mutex::new(Vec::new());
    let exit = s
        .exec(
            c,
            &|stream, line| lines.lock().unwrap().push((stream, line)),
            &CancellationToken::new(),
        )
        .await;
    (exit, lines.into_inner().unwrap())
}

fn stdout(lines: &[(Stream, String)]) -> Vec<&str> {
    lines
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect()
}

/// Whether any process on this machine has `needle` in its command line.
fn process_running(needle: &str) -> bool {
    common::process_list()
        .lines()
        .any(|l| l.contains(needle) && !l.contains("ps -eo"))
}

async fn wait_until_gone(needle: &str) -> bool {
    for _ in 0..100 {
        if !process_running(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

with_each_job_runner!(exec_streams_lines_as_they_are_printed);
async fn exec_streams_lines_as_they_are_printed(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    let start = Instant::now();
    let seen = Mutex::new(Vec::new());
    let exit = s
        .exec(
            &cmd("echo a; sleep 1; echo b >&2; printf 'no newline'"),
            &|stream, line| seen.lock().unwrap().push((stream, line, start.elapsed())),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let end = start.elapsed();
    let seen = seen.into_inner().unwrap();
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!((seen[0].0, seen[0].1.as_str()), (Stream::Stdout, "a"));
    assert_eq!((seen[1].0, seen[1].1.as_str()), (Stream::Stderr, "b"));
    assert_eq!(seen[2].1, "no newline");
    assert!(
        end - seen[0].2 >= Duration::from_millis(800),
        "first line came late: {seen:?}, end {end:?}"
    );
}

with_each_job_runner!(exit_codes_and_env_values_with_quotes_and_newlines_arrive_intact);
async fn exit_codes_and_env_values_with_quotes_and_newlines_arrive_intact(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    assert_eq!(run(&s, &cmd("exit 7")).await.0.unwrap(), Exit::Code(7));
    assert_eq!(run(&s, &cmd("true")).await.0.unwrap(), Exit::Code(0));

    let value = "it's \"quoted\" $HOME `id`\nsecond line \\ end";
    let c = Command {
        script: "printf '%s\\n' \"$V\"".into(),
        env: vec![("V".into(), value.into())],
        become_: false,
    };
    let (exit, lines) = run(&s, &c).await;
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(stdout(&lines), value.lines().collect::<Vec<_>>());

    let bad = Command {
        env: vec![("A-B".into(), "x".into())],
        ..cmd("true")
    };
    assert!(matches!(run(&s, &bad).await.0, Err(SshError::Protocol(_))));
}

with_each_job_runner!(stdin_of_the_user_command_is_empty);
async fn stdin_of_the_user_command_is_empty(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    let (exit, lines) = run(
        &s,
        &cmd("if read -r x; then echo \"got $x\"; else echo empty; fi; cat; echo end"),
    )
    .await;
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(stdout(&lines), ["empty", "end"]);
}

with_each_job_runner!(become_runs_as_root_and_ps_never_shows_the_password);
async fn become_runs_as_root_and_ps_never_shows_the_password(helper: bool) {
    let t = start_lab(1);
    let password = lab::password(&t.lab.dir).unwrap();
    let s = connect_runner(&t, helper).await;
    let become_ = Command {
        become_: true,
        ..cmd("id -u; echo ready; sleep 2.34")
    };
    let watcher = tokio::spawn({
        let password = password.expose().to_string();
        async move {
            let mut saw_sleep = false;
            for _ in 0..40 {
                let out = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(!text.contains(&password), "the sudo password shows in ps");
                saw_sleep |= text.contains("sleep 2.34");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            saw_sleep
        }
    });
    let (exit, lines) = run(&s, &become_).await;
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(stdout(&lines), ["0", "ready"]);
    assert!(
        watcher.await.unwrap(),
        "ps never showed the command, so the check proved nothing"
    );
    let all: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(!all.iter().any(|l| l.contains(password.expose())));

    // A second become in the same session works too (the password is sent each time, sudo is asked with -k).
    let (exit, lines) = run(
        &s,
        &Command {
            become_: true,
            ..cmd("whoami")
        },
    )
    .await;
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(stdout(&lines), ["root"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_sudo_password_is_a_clear_error() {
    let t = start_lab(1);
    let mut target = target(&t);
    target.sudo_password = Some(Secret::new("not-the-password"));
    let s = Session::connect(target).await.unwrap();
    let started = Instant::now();
    let err = run(
        &s,
        &Command {
            become_: true,
            ..cmd("touch /tmp/kubeboot-should-not-exist")
        },
    )
    .await
    .0
    .unwrap_err();
    assert!(matches!(err, SshError::Sudo(_)), "{err:?}");
    assert_eq!(
        err.to_string().split(" — ").next().unwrap(),
        "sudo refused the password for kblab on node-1"
    );
    assert!(!err.to_string().contains("sudo_password_env"), "{err}");
    assert!(ssh_error_text(&err).contains("sudo_password_env"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Runs `script` (which prints `started` once it runs) and, as soon as that line arrives, either
/// cancels it (`cancel`) or drops the exec future as a task's `timeout` does. Returns the result
/// (None when the future was dropped) and how long the exec took to end after that.
async fn stop_once_started(s: &Session, c: &Command, cancel: bool) -> (Option<Result<Exit, SshError>>, Duration) {
    let token = CancellationToken::new();
    let started = tokio::sync::Notify::new();
    let at = Mutex::new(None);
    let output = |_: Stream, line: String| {
        if line == "started" {
            *at.lock().unwrap() = Some(Instant::now());
            if cancel {
                token.cancel();
            }
            started.notify_one();
        }
    };
    let result = tokio::select! {
        r = s.exec(c, &output, &token) => Some(r),
        _ = started.notified(), if !cancel => None,
    };
    let at = at
        .lock()
        .unwrap()
        .unwrap_or_else(|| panic!("`{}` never printed `started`: {result:?}", c.script));
    (result, at.elapsed())
}

with_each_job_runner!(cancel_kills_the_remote_process);
async fn cancel_kills_the_remote_process(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    // The job says when it runs (no fixed wait: at load 45 a become job once took over a second to start).
    for (needle, become_) in [("sleep 317", false), ("sleep 318", true)] {
        let c = Command {
            become_,
            ..cmd(&format!("echo started; {needle}"))
        };
        let (result, after) = stop_once_started(&s, &c, true).await;
        assert!(matches!(result, Some(Err(SshError::Cancelled))), "{result:?}");
        assert!(
            after < Duration::from_secs(10),
            "exec took {after:?} to end after cancel"
        );
        assert!(
            wait_until_gone(needle).await,
            "{needle} (become {become_}) still runs after cancel"
        );
    }
}

with_each_job_runner!(a_timed_out_or_cancelled_command_dies_with_everything_it_started);
/// A task's timeout drops the exec future: the command must die with everything it started, also
/// what left its process group for a session of its own (as apt does with dpkg, which kept running
/// on the VMs after a timed-out install).
async fn a_timed_out_or_cancelled_command_dies_with_everything_it_started(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    for (n, (become_, cancel)) in [(false, false), (true, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let [own, group, orphan] = [1, 2, 3].map(|i| format!("sleep 37{n}.{i}"));
        let c = Command {
            become_,
            ..cmd(&format!(
                "setsid {own} &\n{group} &\n( {orphan} & )\nsh -c 'echo started; exec sleep 379'"
            ))
        };
        let (result, _) = stop_once_started(&s, &c, cancel).await;
        assert!(
            if cancel {
                matches!(result, Some(Err(SshError::Cancelled)))
            } else {
                result.is_none()
            },
            "{result:?}"
        );
        for needle in [&own, &group, &orphan] {
            assert!(
                wait_until_gone(needle).await,
                "`{needle}` (become {become_}, cancel {cancel}) outlived its command"
            );
        }
        assert!(wait_until_gone("sleep 379").await);
    }
    // The session is still usable.
    assert_eq!(run(&s, &cmd("true")).await.0.unwrap(), Exit::Code(0));
}

with_each_job_runner!(dropping_the_exec_future_kills_the_remote_process);
async fn dropping_the_exec_future_kills_the_remote_process(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    let c = cmd("sleep 327");
    let result = tokio::time::timeout(
        Duration::from_secs(1),
        s.exec(&c, &|_, _| {}, &CancellationToken::new()),
    )
    .await;
    assert!(result.is_err(), "the command should still have been running");
    assert!(
        wait_until_gone("sleep 327").await,
        "the remote command outlived its dropped future"
    );
    // The session is still usable.
    assert_eq!(run(&s, &cmd("true")).await.0.unwrap(), Exit::Code(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_sets_mode_and_owner_and_reports_an_unchanged_file() {
    let t = start_lab(1);
    let s = connect(&t).await;
    let root = &t.lab.node("node-1").unwrap().root;
    let none = CancellationToken::new();

    let plain = root.join("plain.conf");
    let dest = plain.to_str().unwrap();
    assert!(s.upload(dest, b"a=1\n", 0o640, None, false, &none).await.unwrap());
    assert_eq!(std::fs::read(&plain).unwrap(), b"a=1\n");
    assert_eq!(std::fs::metadata(&plain).unwrap().mode() & 0o7777, 0o640);
    assert!(
        !s.upload(dest, b"a=1\n", 0o640, None, false, &none).await.unwrap(),
        "same file: unchanged"
    );
    assert!(
        s.upload(dest, b"a=1\n", 0o600, None, false, &none).await.unwrap(),
        "mode differs: changed"
    );
    assert!(
        s.upload(dest, b"a=2\n", 0o600, None, false, &none).await.unwrap(),
        "content differs: changed"
    );

    let owned = root.join("root-owned.conf");
    let dest = owned.to_str().unwrap();
    assert!(
        s.upload(dest, b"x\n", 0o644, Some("root:root"), true, &none)
            .await
            .unwrap()
    );
    let meta = std::fs::metadata(&owned).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, 0, 0o644));
    assert!(
        !s.upload(dest, b"x\n", 0o644, Some("root:root"), true, &none)
            .await
            .unwrap()
    );
    assert!(
        s.upload(dest, b"x\n", 0o644, Some("kblab"), true, &none).await.unwrap(),
        "owner differs: changed"
    );
    assert_eq!(std::fs::read(&owned).unwrap(), b"x\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_into_a_missing_folder_is_a_clear_error() {
    let t = start_lab(1);
    let s = connect(&t).await;
    let dest = t.lab.node("node-1").unwrap().root.join("no/such/dir/f");
    let err = s
        .upload(
            dest.to_str().unwrap(),
            b"x",
            0o644,
            None,
            false,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Upload { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = s
        .upload("/proc/kubeboot-x", b"x", 0o644, None, false, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Upload { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_host_key_is_refused_naming_the_known_hosts_line() {
    let t = start_lab(2);
    let good = std::fs::read_to_string(t.lab.dir.join("known_hosts")).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    // Line 2 claims node-1 has node-2's key.
    let node2_key = lines[1].split_once(' ').unwrap().1;
    let node1 = t.lab.node("node-1").unwrap();
    let forged = format!("{}\n[{}]:{} {node2_key}\n", lines[1], node1.address, node1.port);
    let path = t.lab.dir.join("forged_known_hosts");
    std::fs::write(&path, forged).unwrap();
    for policy in [NewHostKeys::Refuse, NewHostKeys::Accept] {
        let mut target = target(&t);
        target.known_hosts = path.clone();
        target.new_host_keys = policy;
        let err = Session::connect(target)
            .await
            .err()
            .expect("a changed key must be refused");
        match &err {
            SshError::HostKeyChanged { line, .. } => assert_eq!(*line, 2),
            other => panic!("expected HostKeyChanged, got {other:?}"),
        }
        assert!(err.to_string().contains("ssh-keygen -R"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_host_key_shows_its_fingerprint_and_is_recorded_when_accepted() {
    let t = start_lab(1);
    let host_pub = t.lab.dir.join("nodes/node-1/ssh_host_ed25519_key.pub");
    let keygen = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&host_pub)
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&keygen.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(expected.starts_with("SHA256:"));

    let path = t.lab.dir.join("empty_known_hosts");
    let mut target = target(&t);
    target.known_hosts = path.clone();
    let err = Session::connect(target.clone())
        .await
        .err()
        .expect("an unknown key must be refused");
    match &err {
        SshError::HostKeyUnknown { fingerprint, .. } => assert_eq!(fingerprint, &expected),
        other => panic!("expected HostKeyUnknown, got {other:?}"),
    }
    // The SSH layer names no command-line flag; the layer above adds how to accept the key.
    assert!(!err.to_string().contains("--accept-new-host-keys"), "{err}");
    assert!(ssh_error_text(&err).contains("--accept-new-host-keys"), "{err}");

    target.new_host_keys = NewHostKeys::Accept;
    let s = Session::connect(target.clone()).await.unwrap();
    assert_eq!(s.host_key_fingerprint(), expected);
    let node = t.lab.node("node-1").unwrap();
    let recorded = std::fs::read_to_string(&path).unwrap();
    assert!(
        recorded.starts_with(&format!("[{}]:{} ssh-ed25519 ", node.address, node.port)),
        "{recorded}"
    );

    target.new_host_keys = NewHostKeys::Refuse;
    Session::connect(target).await.expect("the recorded key is now known");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_and_password_logins_both_work_and_a_wrong_password_fails_fast() {
    let t = start_lab(1);
    let password = lab::password(&t.lab.dir).unwrap();
    connect(&t).await;

    let mut by_password = target(&t);
    by_password.key = None;
    by_password.password = Some(password);
    let s = Session::connect(by_password.clone()).await.unwrap();
    assert_eq!(run(&s, &cmd("whoami")).await.1[0].1, "kblab");

    by_password.password = Some(Secret::new("wrong-password"));
    let started = Instant::now();
    let err = Session::connect(by_password)
        .await
        .err()
        .expect("a wrong password must fail");
    assert!(started.elapsed() < Duration::from_secs(10));
    match &err {
        SshError::Auth { user, tried, .. } => {
            assert_eq!((user.as_str(), tried.as_slice()), ("kblab", &["password"][..]))
        }
        other => panic!("expected Auth, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_key_file_is_a_clear_error() {
    let t = start_lab(1);
    let key = t.lab.dir.join("encrypted_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret-passphrase", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let mut target = target(&t);
    target.key = Some(key);
    let err = Session::connect(target)
        .await
        .err()
        .expect("an encrypted key cannot be used");
    assert!(matches!(err, SshError::KeyFile { .. }), "{err:?}");
    assert!(err.to_string().contains("ssh-add"), "{err}");
}

with_each_job_runner!(twenty_commands_share_one_connection);
async fn twenty_commands_share_one_connection(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    for i in 0..20 {
        let (exit, lines) = run(&s, &cmd(&format!("echo {i}"))).await;
        assert_eq!(exit.unwrap(), Exit::Code(0));
        assert_eq!(stdout(&lines), [i.to_string()]);
    }
    // Ten at once, more than MaxSessions would allow without the channel limit.
    let mut all = Vec::new();
    for _ in 0..12 {
        let s = s.clone();
        all.push(tokio::spawn(async move {
            run(&s, &cmd("sleep 0.3; echo ok")).await.0.unwrap()
        }));
    }
    for h in all {
        assert_eq!(h.await.unwrap(), Exit::Code(0));
    }
    let log = std::fs::read_to_string(t.lab.sshd_log("node-1")).unwrap();
    assert_eq!(log.matches("Accepted publickey").count(), 1, "{log}");

    // The 32 finished jobs do not linger as zombies of the long-lived shell or the node helper:
    // the helper is this job's parent, the shell the outermost `sh` above it (the ones between are
    // its wrapper subshells). The shell reaps
    // what has ended when it starts a job; a job reports its end just before its last processes
    // exit, so the jobs that ended together a moment ago may still be on their way out when the
    // first check starts (each check reaps them): a few checks, a moment apart. Were finished jobs
    // never reaped, all 32 would stay.
    let count = cmd(concat!(
        "p=$$; while pp=$(ps -o ppid= -p \"$p\" | tr -d ' ') && c=$(ps -o comm= -p \"$pp\") && [ \"$c\" = sh ]; do p=$pp; done\n",
        "case $c in kubeboot-node*) p=$pp ;; esac\n",
        "ps -o stat= --ppid \"$p\" | grep -c Z || true",
    ));
    let mut zombies = usize::MAX;
    for _ in 0..5 {
        let (exit, lines) = run(&s, &count).await;
        assert_eq!(exit.unwrap(), Exit::Code(0));
        zombies = stdout(&lines)[0].trim().parse().unwrap();
        if zombies <= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(zombies <= 1, "{zombies} finished jobs were never reaped");
}

with_each_job_runner!(losing_the_node_while_a_command_runs_is_reported_not_hung);
async fn losing_the_node_while_a_command_runs_is_reported_not_hung(helper: bool) {
    let t = start_lab(2);
    let s = connect_runner(&t, helper).await;
    let dir = t.lab.dir.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        lab::kill_node(&dir, "node-1").unwrap();
    });
    let started = Instant::now();
    let err = run(&s, &cmd("sleep 30")).await.0.unwrap_err();
    assert!(matches!(err, SshError::ConnectionLost(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        run(&s, &cmd("true")).await.0,
        Err(SshError::ConnectionLost(_))
    ));

    // A frozen node (SIGSTOP) is found dead by the keepalives.
    let mut target = t.lab.target("node-2").unwrap();
    target.node_helper = helper;
    target.keepalive = Duration::from_millis(500);
    let s = Session::connect(target).await.unwrap();
    // The session is fully set up (its shell runs) before the node freezes.
    assert_eq!(run(&s, &cmd("true")).await.0.unwrap(), Exit::Code(0));
    lab::pause_node(&t.lab.dir, "node-2").unwrap();
    let started = Instant::now();
    let err = run(&s, &cmd("true")).await.0.unwrap_err();
    lab::resume_node(&t.lab.dir, "node-2").unwrap();
    assert!(matches!(err, SshError::ConnectionLost(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lab_writes_an_inventory_and_restarts_stopped_nodes() {
    let t = start_lab(2);
    let text = std::fs::read_to_string(&t.lab.inventory).unwrap();
    assert!(text.contains("user = \"kblab\""));
    assert!(text.contains("role = \"central\""));
    assert!(text.contains(&format!("port = {}", t.net.first_port + 1)));
    assert!(text.contains("lab_root = "));
    let again = LabOptions {
        dir: t.lab.dir.clone(),
        nodes: 1,
        first_address: t.net.first_address,
        first_port: t.net.first_port,
        ..Default::default()
    };
    assert!(matches!(lab::up(&again), Err(lab::LabError::AlreadyRunning(_))));

    lab::stop_node(&t.lab.dir, "node-1").unwrap();
    assert!(matches!(
        Session::connect(target(&t)).await,
        Err(SshError::Connect { .. })
    ));
    lab::start_node(&t.lab.dir, "node-1").unwrap();
    connect(&t).await;
}

with_each_job_runner!(fifty_small_commands_on_one_node_run_quickly);
async fn fifty_small_commands_on_one_node_run_quickly(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    for become_ in [false, true] {
        let c = Command { become_, ..cmd("true") };
        run(&s, &c).await.0.unwrap();
        let started = Instant::now();
        for _ in 0..50 {
            assert_eq!(run(&s, &c).await.0.unwrap(), Exit::Code(0));
        }
        let took = started.elapsed();
        println!("50 x true (become {become_}): {took:?}");
        assert!(
            took < Duration::from_secs(20),
            "50 x true (become {become_}) took {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probing_a_host_key_tells_known_unknown_and_changed_apart_without_logging_in_or_recording() {
    let t = start_lab(2);
    let known = target(&t);
    assert_eq!(probe_host_key(&known).await.unwrap(), HostKeyState::Known);

    let empty = t.lab.dir.join("probe_empty_known_hosts");
    let mut unknown = target(&t);
    unknown.known_hosts = empty.clone();
    // Even an accepting policy only looks: nothing is recorded by a probe.
    unknown.new_host_keys = NewHostKeys::Accept;
    let fingerprint = match probe_host_key(&unknown).await.unwrap() {
        HostKeyState::Unknown { fingerprint } => fingerprint,
        other => panic!("expected Unknown, got {other:?}"),
    };
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    assert!(!empty.exists() || std::fs::read_to_string(&empty).unwrap().trim().is_empty());

    let good = std::fs::read_to_string(t.lab.dir.join("known_hosts")).unwrap();
    let node2_key = good.lines().nth(1).unwrap().split_once(' ').unwrap().1.to_string();
    let node1 = t.lab.node("node-1").unwrap();
    let forged = t.lab.dir.join("probe_forged_known_hosts");
    std::fs::write(&forged, format!("[{}]:{} {node2_key}\n", node1.address, node1.port)).unwrap();
    let mut changed = target(&t);
    changed.known_hosts = forged;
    match probe_host_key(&changed).await.unwrap() {
        HostKeyState::Changed {
            line, fingerprint: f, ..
        } => {
            assert_eq!(line, 1);
            assert_eq!(f, fingerprint);
        }
        other => panic!("expected Changed, got {other:?}"),
    }

    let mut closed = target(&t);
    closed.port = 1;
    closed.connect_timeout = Duration::from_secs(2);
    assert!(probe_host_key(&closed).await.is_err());
}

with_each_job_runner!(each_job_has_its_own_process_group_and_environment_and_cancel_kills_only_it);
async fn each_job_has_its_own_process_group_and_environment_and_cancel_kills_only_it(helper: bool) {
    let t = start_lab(1);
    let s = connect_runner(&t, helper).await;
    // The job's shell leads its own session and process group.
    let c = Command {
        env: vec![("KB_ONE".into(), "1".into())],
        ..cmd("echo \"$$ $(ps -o pgid= -p $$) $(ps -o sid= -p $$)\"; echo \"${KB_ONE-unset}\"; export KB_TWO=2")
    };
    let (exit, lines) = run(&s, &c).await;
    assert_eq!(exit.unwrap(), Exit::Code(0));
    let out = stdout(&lines);
    let ids: Vec<&str> = out[0].split_whitespace().collect();
    assert_eq!(ids.len(), 3, "{out:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "pid, pgid and sid differ: {out:?}");
    assert_eq!(out[1], "1");
    // Nothing of an earlier job's environment, nor of the long-lived shell's own variables.
    let (exit, lines) = run(
        &s,
        &cmd("echo \"${KB_ONE-unset} ${KB_TWO-unset} ${__kb_d-unset} ${__KB_D-unset}\""),
    )
    .await;
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(stdout(&lines), ["unset unset unset unset"]);
    // `exec` keeps the exit status; a syntax error anywhere means nothing of the script runs.
    assert_eq!(run(&s, &cmd("exec sh -c 'exit 5'")).await.0.unwrap(), Exit::Code(5));
    let (exit, lines) = run(&s, &cmd("echo ran\nif\n")).await;
    assert_ne!(exit.unwrap(), Exit::Code(0));
    assert!(stdout(&lines).is_empty(), "{lines:?}");

    // Cancelling one job leaves another one of the same shell running.
    let other = tokio::spawn({
        let s = s.clone();
        async move { run(&s, &cmd("sleep 1.5; echo survived")).await }
    });
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.cancel();
    });
    let result = s.exec(&cmd("sleep 349"), &|_, _| {}, &cancel).await;
    assert!(matches!(result, Err(SshError::Cancelled)), "{result:?}");
    assert!(wait_until_gone("sleep 349").await, "the cancelled job still runs");
    let (exit, lines) = other.await.unwrap();
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(stdout(&lines), ["survived"]);
}

/// `persistent_shell` in the inventory (`[ssh]`, a node overriding it) reaches the SSH layer, and both
/// modes run plain and become commands: with it on, a command runs as a job of the node's persistent
/// shell (its PID is in a job file in the shell's `kubeboot-jobs.*` folder); off, in a channel of its own.
#[tokio::test(flavor = "multi_thread")]
async fn both_shell_modes_run_commands_and_the_inventory_chooses_the_mode() {
    let t = start_lab(1);
    let lab_inventory = std::fs::read_to_string(t.inventory()).unwrap();
    let path = t.work().join("inventory.toml");
    let secrets = || NodeSecrets {
        password: None,
        sudo_password: target(&t).sudo_password,
    };
    // [ssh] setting, the node's own (if any), the mode the node gets.
    let cases = [
        (Some(false), None, false),
        (None, None, true),
        (Some(false), Some(true), true),
        (Some(true), Some(false), false),
    ];
    let probe =
        "echo \"user $(id -u)\"; cat \"${TMPDIR:-/tmp}\"/kubeboot-jobs.*/*.pid 2>/dev/null | grep -cx \"$$\" || true";
    for (ssh, node, persistent) in cases {
        let mut text = lab_inventory.clone();
        if let Some(on) = ssh {
            text = text.replacen("[ssh]\n", &format!("[ssh]\npersistent_shell = {on}\n"), 1);
        }
        if let Some(on) = node {
            text = text.replacen("[nodes.vars]\n", &format!("persistent_shell = {on}\n[nodes.vars]\n"), 1);
        }
        std::fs::write(&path, &text).unwrap();
        let inv = kubeboot::inventory::load(&path).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(inv.nodes[0].ssh.persistent_shell, persistent, "{ssh:?} {node:?}");
        let target = inv.nodes[0].ssh_target(secrets(), false);
        assert_eq!(target.persistent_shell, persistent, "{ssh:?} {node:?}");
        let s = Session::connect(target)
            .await
            .unwrap_or_else(|e| panic!("connect failed: {e}"));
        for become_ in [false, true] {
            let c = Command { become_, ..cmd(probe) };
            let (exit, lines) = run(&s, &c).await;
            assert_eq!(exit.unwrap(), Exit::Code(0), "{lines:?}");
            let out = stdout(&lines);
            assert_eq!(out.len(), 2, "{out:?}");
            assert_eq!(out[0] == "user 0", become_, "{out:?}");
            let as_job = if persistent { "1" } else { "0" };
            assert_eq!(out[1], as_job, "persistent {persistent}, become {become_}: {out:?}");
        }
        s.close().await;
    }
}
