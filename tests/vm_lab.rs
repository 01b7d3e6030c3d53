//! The VM lab (`kubeboot lab up --vm`): real Debian 12 VMs under qemu, and the shipped install on them.
//!
//! One test boots four VMs modelled on the shipped inventory.toml (one with RHEL's sudo `secure_path`) and
//! runs everything that needs them in order, because booting is the expensive part (about 75-100 s for four
//! under TCG on two cores). Needs root and Debian's apt (the lab installs qemu, mmdebstrap and vde-switch
//! itself): when qemu cannot start the test fails, it never skips.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use kubeboot::lab::vm;

const NODES: [&str; 4] = ["node-194", "node-196", "node-197", "node-198"];
const RHEL_LIKE: &str = "node-198";
const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 78, 1);
const FIRST_PORT: u16 = 2310;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubeboot"))
}

/// A started VM lab; `lab down` when dropped, so a failed assertion leaves no qemu behind.
struct Vms {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    password: String,
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
    fn start() -> Vms {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let dir = tmp.path().join("lab");
        let started = Instant::now();
        let out = Command::new(bin())
            .args(["lab", "up", "--vm", "--like"])
            .arg(repo().join("inventory.toml"))
            .arg("--dir")
            .arg(&dir)
            .args(["--rhel", RHEL_LIKE, "--first-address", &FIRST_ADDRESS.to_string()])
            .args(["--first-port", &FIRST_PORT.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("kubeboot lab up runs");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let vms = Vms {
            password: std::fs::read_to_string(dir.join("sudo_password"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            dir,
            _tmp: tmp,
        };
        // Loud: a VM lab that cannot start under CI is a failure, not a skip.
        assert!(out.status.success(), "lab up --vm failed:\n{text}");
        eprintln!(
            "lab up --vm took {:.0?}:\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout)
        );
        vms
    }

    fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.toml")
    }

    fn port(&self, node: &str) -> u16 {
        FIRST_PORT + NODES.iter().position(|n| *n == node).expect("a lab node") as u16
    }

    fn ssh_address(&self, node: &str) -> Ipv4Addr {
        let i = NODES.iter().position(|n| *n == node).expect("a lab node");
        Ipv4Addr::from(u32::from(FIRST_ADDRESS) + i as u32)
    }

    /// Runs `command` on `node` as the login user with OpenSSH's client (host key checked against the lab's
    /// known_hosts); `stdin` is fed to it.
    fn ssh(&self, node: &str, command: &str, stdin: &str) -> Output {
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
            .arg(self.port(node).to_string())
            .arg(format!("{}@{}", vm::GUEST_USER, self.ssh_address(node)))
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
    fn root(&self, node: &str, command: &str) -> String {
        let out = self.sudo(node, command);
        assert!(
            out.status.success(),
            "{node}: `{command}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sudo(&self, node: &str, command: &str) -> Output {
        let quoted = command.replace('\'', r"'\''");
        self.ssh(
            node,
            &format!("sudo -S -p '' sh -c '{quoted}'"),
            &format!("{}\n", self.password),
        )
    }

    fn pids(&self) -> Vec<i32> {
        vm::running_pids(&self.dir).collect()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The lab's inventory as TOML.
fn inventory_toml(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .expect("the lab's inventory")
        .parse()
        .expect("the lab's inventory is TOML")
}

fn check_vm_lab_itself(vms: &Vms) {
    // The inventory keeps the model's names and clusters; address = the switch, ssh_address = the forward.
    let inv = inventory_toml(&vms.inventory());
    let nodes = inv["nodes"].as_array().expect("nodes");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, NODES);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["address"].as_str(), Some(format!("10.77.0.{}", 11 + i).as_str()));
        assert_eq!(
            n["ssh_address"].as_str(),
            Some(vms.ssh_address(NODES[i]).to_string().as_str())
        );
        assert_eq!(n["cluster"].as_str(), Some(format!("cluster-0{}", i + 1).as_str()));
    }
    let known = std::fs::read_to_string(vms.dir.join("known_hosts")).expect("known_hosts");
    assert_eq!(known.lines().count(), 4, "{known}");
    assert_eq!(vms.pids().len(), 5, "four qemu and one switch are running");

    for node in NODES {
        // StrictHostKeyChecking=yes with the lab's known_hosts: the key was recorded before the first boot.
        let facts = vms.ssh(
            node,
            ". /etc/os-release; echo \"$ID $VERSION_ID\"; ps -p 1 -o comm=; hostname; uname -r; \
             ip route show default | wc -l; getent hosts deb.debian.org >/dev/null && echo resolves || echo no-dns",
            "",
        );
        let facts = text(&facts);
        let lines: Vec<&str> = facts.lines().collect();
        assert_eq!(lines.first().copied(), Some("debian 12"), "{node}: {facts}");
        assert_eq!(lines.get(1).copied(), Some("systemd"), "{node}: {facts}");
        assert_eq!(lines.get(2).copied(), Some(node), "{node}: {facts}");
        assert_eq!(lines.get(4).copied(), Some("0"), "{node} has a default route: {facts}");
        assert_eq!(lines.get(5).copied(), Some("no-dns"), "{node} resolves names: {facts}");

        // Password sudo: without it refused, with a wrong one refused, with the right one root.
        let no_password = vms.ssh(node, "sudo -n true", "");
        assert!(!no_password.status.success(), "{node}: sudo without a password worked");
        let wrong = vms.ssh(node, "sudo -S -p '' true", "not-the-password\n");
        assert!(!wrong.status.success(), "{node}: a wrong sudo password worked");
        assert_eq!(vms.root(node, "id -u").trim(), "0");

        // RHEL's secure_path on the RHEL-like node only.
        let path = vms.root(node, "echo $PATH");
        if node == RHEL_LIKE {
            assert_eq!(path.trim(), vm::RHEL_SECURE_PATH, "{node}");
        } else {
            assert!(path.contains("/usr/local/bin"), "{node}: {path}");
        }
    }
    // The guests reach each other on the lab switch.
    let ping = vms.ssh("node-194", "ping -c 1 -W 5 10.77.0.14", "");
    assert!(
        ping.status.success(),
        "node-194 cannot reach node-198 on the switch: {}",
        text(&ping)
    );
}

#[test]
fn real_vms_boot_air_gapped_and_take_the_shipped_install() {
    let vms = Vms::start();
    check_vm_lab_itself(&vms);

    // lab down stops exactly what it started and deletes the overlays.
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
    for node in NODES {
        assert!(
            !vms.dir.join("nodes").join(node).join("overlay.qcow2").exists(),
            "{node}'s overlay is left"
        );
    }
}
