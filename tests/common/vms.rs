//! The VM lab's test harness (vm_lab, vm_ha): `kubeboot lab up --vm`, OpenSSH to the guests, and `kubeboot
//! apply` on the lab's inventory with its events kept.
//!
//! The lab claims its own loopback range (`lab::net`), so the SSH addresses are read from the inventory it
//! writes: two VM suites at once never collide.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kubeboot::lab::vm;
use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubeboot"))
}

/// Stands in for a hung run: far beyond what the stages take under TCG.
const APPLY_CAP: Duration = Duration::from_secs(2700);

/// A started VM lab; `lab down` when dropped, so a failed assertion leaves no qemu behind.
pub struct Vms {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub password: String,
    /// Where each guest's sshd is forwarded, from the lab's inventory.
    ssh: BTreeMap<String, SocketAddr>,
    /// Names the folder under target/tmp that keeps every apply's events.
    suite: &'static str,
    secrets: Vec<(&'static str, String)>,
}

impl Drop for Vms {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["lab", "down", "--dir"])
            .arg(&self.dir)
            .status();
    }
}

impl Vms {
    /// `kubeboot lab up --vm --like MODEL` with `extra` arguments; panics (loudly, also under CI) when the lab
    /// does not start.
    pub fn start(suite: &'static str, model: &Path, extra: &[&str], secrets: Vec<(&'static str, String)>) -> Vms {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let dir = tmp.path().join("lab");
        let started = Instant::now();
        let out = Command::new(bin())
            .args(["lab", "up", "--vm", "--like"])
            .arg(model)
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("kubeboot lab up runs");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut vms = Vms {
            password: std::fs::read_to_string(dir.join("sudo_password"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            dir,
            _tmp: tmp,
            ssh: BTreeMap::new(),
            suite,
            secrets,
        };
        // Loud: a VM lab that cannot start under CI is a failure, not a skip.
        assert!(out.status.success(), "lab up --vm failed:\n{text}");
        eprintln!(
            "lab up --vm took {:.0?}:\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout)
        );
        let inv = vms.inventory_toml();
        for n in inv["nodes"].as_array().expect("nodes") {
            let name = n["name"].as_str().expect("a node name").to_string();
            let ip = n["ssh_address"]
                .as_str()
                .expect("ssh_address")
                .parse()
                .expect("an address");
            let port = n["port"].as_integer().expect("port") as u16;
            vms.ssh.insert(name, SocketAddr::new(ip, port));
        }
        vms
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.toml")
    }

    /// The lab's inventory as TOML.
    pub fn inventory_toml(&self) -> toml::Table {
        std::fs::read_to_string(self.inventory())
            .expect("the lab's inventory")
            .parse()
            .expect("the lab's inventory is TOML")
    }

    /// Where `node`'s sshd is reached.
    pub fn ssh_address(&self, node: &str) -> SocketAddr {
        *self.ssh.get(node).unwrap_or_else(|| panic!("{node} is not a lab node"))
    }

    /// Runs `command` on `node` as the login user with OpenSSH's client (host key checked against the lab's
    /// known_hosts); `stdin` is fed to it.
    pub fn ssh(&self, node: &str, command: &str, stdin: &str) -> Output {
        let addr = self.ssh_address(node);
        let mut child = Command::new("ssh")
            .arg("-i")
            .arg(self.dir.join("id_ed25519"))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.dir.join("known_hosts").display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
            ])
            .arg("-p")
            .arg(addr.port().to_string())
            .arg(format!("{}@{}", vm::GUEST_USER, addr.ip()))
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh runs");
        if let Some(mut pipe) = child.stdin.take() {
            use std::io::Write;
            let _ = pipe.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("ssh finishes")
    }

    /// `command` as root through sudo with the lab's password (on stdin); stdout, panicking on failure.
    pub fn root(&self, node: &str, command: &str) -> String {
        let out = self.sudo(node, command);
        assert!(
            out.status.success(),
            "{node}: `{command}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn sudo(&self, node: &str, command: &str) -> Output {
        let quoted = command.replace('\'', r"'\''");
        self.ssh(
            node,
            &format!("sudo -S -p '' sh -c '{quoted}'"),
            &format!("{}\n", self.password),
        )
    }

    pub fn pids(&self) -> Vec<i32> {
        vm::running_pids(&self.dir).collect()
    }

    pub fn kubeboot(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("-i")
            .arg(self.inventory())
            .arg("-p")
            .arg(repo().join("playbooks"))
            .arg("--assets")
            .arg(repo().join("assets"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.secrets {
            c.env(k, v);
        }
        c
    }

    pub fn apply(&self, extra: &[&str]) -> Apply {
        self.apply_watching(extra, |_| {})
    }

    /// Runs apply, calling `watch` with every JSON event as it arrives (to inject a fault at a chosen task).
    pub fn apply_watching(&self, extra: &[&str], mut watch: impl FnMut(&Value)) -> Apply {
        use std::io::BufRead;
        let mut args = vec!["apply", "--yes", "--output", "json"];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let mut child = self.kubeboot(&args).spawn().expect("kubeboot apply starts");
        let stderr = child.stderr.take().expect("stderr");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut s);
            s
        });
        let pid = child.id() as i32;
        let watchdog = std::thread::spawn(move || {
            let deadline = Instant::now() + APPLY_CAP;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return;
                }
            }
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let mut stdout = String::new();
        for line in std::io::BufReader::new(child.stdout.take().expect("stdout")).lines() {
            let Ok(line) = line else { break };
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                watch(&event);
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let status = child.wait().expect("kubeboot apply ends");
        let _ = watchdog.join();
        keep_events(self.suite, &args, &stdout);
        Apply {
            code: status.code(),
            stdout,
            stderr: err_reader.join().unwrap_or_default(),
            took: started.elapsed(),
        }
    }
}

/// One `kubeboot apply --yes --output json` on the lab's inventory and the shipped playbooks.
pub struct Apply {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Apply {
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn finished(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "task_finished")
            .collect()
    }

    pub fn output_of(&self, node: &str) -> String {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "output" && e["node"] == node)
            .map(|e| format!("{}\n", e["line"].as_str().unwrap_or_default()))
            .collect()
    }
}

impl std::fmt::Display for Apply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
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

/// Every apply's events are kept in the target folder (`target/tmp/SUITE/NN-ARGS.json`), where the lab's
/// temporary folder would lose them: what a failed or slow run did, task by task, after the VMs are gone.
fn keep_events(suite: &str, args: &[&str], stdout: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(suite);
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let name: String = args[4..]
        .join("_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    if n == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{n:02}-{name}.json")), stdout);
}

/// Says `line` on the real stderr, past the test harness's capture (which keeps a passing test's `eprintln!`
/// to itself): what a run left out must show in CI's log.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A VM test's switch: `1` on, `0` off on purpose, unset `None`; anything else is refused.
pub fn switch(test: &str, name: &str) -> Option<bool> {
    match std::env::var(name).as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        Ok(other) => panic!("{test}: {name}={other:?}: say 1 (run) or 0 (leave out)"),
        Err(_) => None,
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `lab down` stops exactly what the lab started and deletes the overlays.
pub fn down_and_check(vms: &Vms, nodes: &[&str]) {
    let pids = vms.pids();
    let down = Command::new(bin())
        .args(["lab", "down", "--dir"])
        .arg(&vms.dir)
        .output()
        .expect("lab down runs");
    assert!(down.status.success(), "lab down: {}", text(&down));
    for pid in pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
        assert!(!running, "process {pid} still runs after lab down: {state}");
    }
    for node in nodes {
        assert!(
            !vms.dir.join("nodes").join(node).join("overlay.qcow2").exists(),
            "{node}'s overlay is left"
        );
    }
}
