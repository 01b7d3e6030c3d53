//! Shared helpers for the end-to-end tests: start a lab of real sshd nodes, write playbooks,
//! run the kubeboot binary, read its JSON events, its journal and the side effects on the nodes.
//!
//! Each lab gets a loopback range of its own from `lab::net` (a lock file per range), so tests, test binaries and
//! worktrees run in parallel without sharing addresses.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod cli;
pub mod http;
pub mod isolated;
pub mod plans;
pub mod shipped;
pub mod tmux;

use std::collections::HashMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kubeboot::lab::{self, LabGuard, LabOptions};
use serde_json::Value;

/// The kubeboot binary cargo built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubeboot"))
}

/// The repository's folder (where `inventory.toml`, `playbooks/`, `assets/` and `examples/` are).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running lab plus a work folder (playbooks, state dir) that both go away when the test ends.
pub struct TestLab {
    /// Stops sshd when dropped; declared first so it drops before the folders are removed.
    pub lab: LabGuard,
    /// The lab's loopback range, held until the lab is down.
    pub net: lab::net::Net,
    _lab_dir: tempfile::TempDir,
    work: tempfile::TempDir,
}

/// Starts `nodes` lab nodes on a loopback range of their own; panics (never skips) when it cannot.
pub fn start_lab(nodes: usize) -> TestLab {
    start_lab_with(nodes, false, None)
}

/// Like [`start_lab`], each node with a /tmp of its own ([`LabOptions::private_tmp`]; the lab's
/// folder is then under /var/tmp).
pub fn start_private_tmp_lab(nodes: usize) -> TestLab {
    start_lab_with(nodes, true, None)
}

/// Like [`start_lab`] with the inventory modelled on `model` ([`LabOptions::like`]: its node names, clusters,
/// vars and secrets), which has `nodes` nodes. The nodes are not isolated (see `isolated` for that).
pub fn start_lab_like(model: &Path, nodes: usize) -> TestLab {
    start_lab_with(nodes, false, Some(model.to_path_buf()))
}

/// A loopback range for a lab of `nodes` nodes started by hand ([`LabOptions`]); hold it while the lab runs.
pub fn claim_net(nodes: usize) -> lab::net::Net {
    lab::net::claim(nodes).unwrap_or_else(|e| panic!("{e}"))
}

fn start_lab_with(nodes: usize, private_tmp: bool, like: Option<PathBuf>) -> TestLab {
    let lab_dir = if private_tmp {
        tempfile::tempdir_in("/var/tmp")
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary folder");
    let work = tempfile::tempdir().expect("a temporary folder");
    let net = claim_net(nodes);
    let opts = LabOptions {
        dir: lab_dir.path().to_path_buf(),
        nodes,
        first_address: net.first_address,
        first_port: net.first_port,
        private_tmp,
        like,
        ..LabOptions::default()
    };
    // Fails loudly when sshd or sudo is missing or we are not root: a skipped e2e test proves nothing.
    let lab = lab::up(&opts).unwrap_or_else(|e| panic!("the local lab did not start: {e}"));
    fs::create_dir_all(work.path().join("playbooks")).expect("a playbooks folder");
    TestLab {
        lab: LabGuard(lab),
        net,
        _lab_dir: lab_dir,
        work,
    }
}

impl TestLab {
    /// The work folder (playbooks, state dir, extra inventories).
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// The lab's own inventory (key auth, its known_hosts, its sudo password).
    pub fn inventory(&self) -> PathBuf {
        self.lab.inventory.clone()
    }

    pub fn playbooks(&self) -> PathBuf {
        self.work().join("playbooks")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.work().join("state")
    }

    /// Writes (or replaces) one playbook file.
    pub fn write_playbook(&self, file: &str, yaml: &str) {
        fs::write(self.playbooks().join(file), yaml).expect("write a playbook");
    }

    /// A node's lab root (owned by the lab user; tasks leave side effects there).
    pub fn root(&self, node: &str) -> PathBuf {
        self.lab.node(node).expect("a lab node").root.clone()
    }

    /// Lines of `{{ lab_root }}/log` on a node: one per task that ran (see [`logging_task`]).
    pub fn log_lines(&self, node: &str) -> Vec<String> {
        fs::read_to_string(self.root(node).join("log"))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// How often each task ran on a node, by side effect.
    pub fn runs(&self, node: &str) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for l in self.log_lines(node) {
            *m.entry(l).or_insert(0) += 1;
        }
        m
    }

    /// `kubeboot -i INV -p PLAYBOOKS --state-dir STATE <args>` (not yet started).
    pub fn kubeboot(&self, args: &[&str]) -> Command {
        self.kubeboot_with(&self.inventory(), args)
    }

    /// Like [`TestLab::kubeboot`] with another inventory.
    pub fn kubeboot_with(&self, inventory: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("-i")
            .arg(inventory)
            .arg("-p")
            .arg(self.playbooks())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `apply --yes --output json <extra>`, run to the end.
    pub fn apply(&self, extra: &[&str]) -> Run {
        let mut args = vec!["apply", "--yes", "--output", "json"];
        args.extend_from_slice(extra);
        run(self.kubeboot(&args))
    }

    /// Starts `apply --yes --output json` in the background.
    pub fn spawn_apply(&self) -> Child {
        self.spawn_apply_with(&self.inventory())
    }

    /// Like [`TestLab::spawn_apply`] with another inventory.
    pub fn spawn_apply_with(&self, inventory: &Path) -> Child {
        self.kubeboot_with(inventory, &["apply", "--yes", "--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubeboot starts")
    }

    /// The lab's inventory with keepalives every `every` (`"1s"`), written to the work folder.
    pub fn keepalive_inventory(&self, every: &str) -> PathBuf {
        let inv = self.work().join("inventory.toml");
        let text = fs::read_to_string(self.inventory())
            .expect("read the inventory")
            .replace("[ssh]\n", &format!("[ssh]\nkeepalive = \"{every}\"\n"));
        fs::write(&inv, text).expect("write the inventory");
        inv
    }

    /// How many logins the node's sshd accepted so far.
    pub fn logins(&self, node: &str) -> usize {
        fs::read_to_string(self.lab.sshd_log(node))
            .unwrap_or_default()
            .matches("Accepted ")
            .count()
    }

    /// The journal's records; panics when a full line is not JSON (a torn last line is allowed).
    pub fn journal(&self) -> Vec<Value> {
        journal_records(&self.state_dir())
    }
}

/// A finished kubeboot run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs a command to the end, with a generous cap so a hang fails the test instead of stalling CI.
pub fn run(cmd: Command) -> Run {
    run_for(cmd, Duration::from_secs(90))
}

/// Like [`run`] with another cap (a whole shipped install takes minutes).
pub fn run_for(mut cmd: Command, cap: Duration) -> Run {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubeboot starts");
    let out = wait_with_cap(child, cap);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// Waits for a child; kills it (and fails) after `cap`.
pub fn wait_with_cap(child: Child, cap: Duration) -> Output {
    let pid = child.id() as i32;
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + cap;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return false;
            }
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().expect("wait for kubeboot");
    let _ = watchdog;
    out
}

impl Run {
    /// A run that [`wait_with_cap`] waited for (its duration unknown).
    pub fn from_output(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: Duration::ZERO,
        }
    }

    /// The JSON events on stdout; panics on a line that is not JSON.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}\n{self}")))
            .collect()
    }

    /// Events of one kind.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == kind).collect()
    }

    /// The `task_finished` event of one node's task.
    pub fn finished(&self, node: &str, task: &str) -> Option<Value> {
        self.events_of("task_finished")
            .into_iter()
            .find(|e| e["node"] == node && e["task"] == task)
    }

    /// stdout and stderr together, for searching messages.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "unexpected exit code\n{self}");
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.code,
            self.took,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

/// The journal's records; panics when a complete line is not JSON. Only a torn last line
/// (no newline after it, from a kill -9 mid-write) may be unreadable.
pub fn journal_records(state_dir: &Path) -> Vec<Value> {
    let text = match fs::read(state_dir.join("journal.jsonl")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => return Vec::new(),
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journal line is not JSON ({e}): {l}")))
        .collect()
}

/// (node, task) of every task the journal records as finished successfully (not failed).
pub fn journal_done(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r["record"] == "task" && r["status"] != "failed" && r["reason"].is_null())
        .map(|r| (str_of(&r["node"]), str_of(&r["task"])))
        .collect()
}

pub fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The strings of a JSON array (an argv, a list of tokens); empty when it is not one.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// A task that appends its own name to `{{ lab_root }}/log` after `run` succeeds (the side effect tests count).
pub fn logging_task(name: &str, run: &str) -> String {
    format!(
        "  - name: {name}\n    run: |\n      set -e\n      {run}\n      echo '{name}' >> {{{{ lab_root }}}}/log\n",
        run = run.replace('\n', "\n      ")
    )
}

/// A stage (`hosts: all`) of logging tasks.
pub fn stage(name: &str, tasks: &[String]) -> String {
    format!("name: {name}\nhosts: all\ntasks:\n{}", tasks.concat())
}

/// Seconds since the epoch of an event's RFC 3339 `ts` (`2026-01-02T03:04:05.123456789Z`).
pub fn ts(event: &Value) -> f64 {
    let s = event["ts"].as_str().unwrap_or_else(|| panic!("no ts in {event}"));
    parse_ts(s).unwrap_or_else(|| panic!("bad ts {s}"))
}

fn parse_ts(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days as f64 * 86400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// Every process's command line on this machine (the lab nodes share it).
pub fn process_list() -> String {
    let out = Command::new("ps").args(["-eo", "args"]).output().expect("ps runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `cond` holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

/// The permission bits of a file or folder (`0o600`); panics when it is not there.
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under a folder, with its bytes.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

/// Unmounts a test's mount when dropped (so a failed assertion leaves no mount behind).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).stderr(Stdio::null()).status();
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn timestamps_parse_to_epoch_seconds() {
    assert_eq!(parse_ts("1970-01-02T00:00:01Z"), Some(86401.0));
    let a = parse_ts("2026-03-01T00:00:00.5Z").unwrap_or_default();
    let b = parse_ts("2026-02-28T23:59:59.5Z").unwrap_or_default();
    assert!((a - b - 1.0).abs() < 1e-6);
}

/// Whether `needle` occurs anywhere in `hay` (a secret's bytes in a log, an archive entry).
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The SHA-256 of `bytes` in lowercase hex (how bundle manifests, repositories and registries name digests).
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// A free TCP port on 127.0.0.1 (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// moto's S3 server (from PyPI) on a free loopback port, accepting any keys; killed when dropped.
pub struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto and waits until it listens; returns it with its endpoint URL.
pub fn start_moto() -> (Moto, String) {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto's S3 server did not start: install it with `pip install 'moto[server]'` (scripts/test.sh does)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (moto, format!("http://127.0.0.1:{port}"))
}
