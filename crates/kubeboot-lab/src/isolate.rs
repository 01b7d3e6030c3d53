//! Isolated lab nodes: each sshd runs in its own mount namespace where /etc, /var/lib, /usr/local, /opt, /root
//! and /home are overlays (lower = this machine's folder, upper = the node's own folder), so whatever the
//! playbooks write lands in `<lab>/nodes/<name>/fs/<dir>/upper` and never on this machine. Recording stand-ins
//! for the privileged commands sit first on PATH in the node's /usr/local/bin (on the login PATH and sudo's secure_path alike).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::{LabError, io, set_mode, which};

/// The stand-in script, compiled in so `kubeboot lab up` works without the source tree.
const STANDIN: &str = include_str!("../standins/standin.py");

/// The folders each isolated node sees privately.
pub const ISOLATED_DIRS: &[&str] = &["/etc", "/var/lib", "/usr/local", "/opt", "/root", "/home"];

/// Where the stand-ins live inside a node.
const STANDIN_HOME: &str = "lib/kubeboot-standins";

/// Commands every isolated node has as stand-ins from the start.
const COMMON: &[&str] = &[
    "systemctl",
    "modprobe",
    "lsmod",
    "sysctl",
    "swapoff",
    "swapon",
    "curl",
    "sha256sum",
    "gpg",
    "getent",
    "timedatectl",
    "ip",
    "multipath",
    // Reset clears these; on a lab node they must never reach the host's tables.
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "ipvsadm",
];
const UBUNTU: &[&str] = &["apt-get", "apt-cache", "apt-mark", "dpkg", "dpkg-query", "ufw"];
const RHEL: &[&str] = &["dnf", "yum", "rpm", "setenforce", "getenforce", "firewall-cmd"];

/// The operating system an isolated node presents (its /etc/os-release and package manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeOs {
    /// Ubuntu 24.04: apt, ufw.
    #[default]
    Ubuntu,
    /// RHEL 9.4: dnf, SELinux enforcing, firewalld running.
    Rhel,
}

/// Which `containerd config default` layout the node's containerd prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerdLayout {
    /// containerd 1.7 (`version = 2`).
    V2,
    /// containerd 2.x (`version = 3`).
    #[default]
    V3,
}

/// What one isolated node looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeKind {
    pub os: NodeOs,
    pub containerd: ContainerdLayout,
}

impl std::fmt::Display for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let os = match self.os {
            NodeOs::Ubuntu => "Ubuntu 24.04",
            NodeOs::Rhel => "RHEL 9.4",
        };
        let containerd = match self.containerd {
            ContainerdLayout::V2 => "containerd 1.7",
            ContainerdLayout::V3 => "containerd 2",
        };
        write!(f, "{os}, {containerd}")
    }
}

/// What the stand-ins need to know about their node.
pub(super) struct NodeInfo<'a> {
    pub name: &'a str,
    pub address: std::net::Ipv4Addr,
    pub kind: NodeKind,
    /// The node's cluster domain and LB IP, so `getent hosts grafana.<domain>` answers like the LAN DNS.
    pub domain: Option<(String, String)>,
}

/// The node's upper folder for one isolated folder, e.g. `fs/var_lib/upper`.
pub(super) fn upper(node_dir: &Path, dir: &str) -> PathBuf {
    node_dir.join("fs").join(key(dir)).join("upper")
}

/// Where the stand-ins write their record and state (a host folder the node also sees, not overlaid).
pub(super) fn standin_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("standins")
}

fn key(dir: &str) -> String {
    dir.trim_start_matches('/').replace('/', "_")
}

/// Checks what isolation needs before anything is started.
pub(super) fn check(lab_dir: &Path) -> Result<(), LabError> {
    which("unshare").ok_or(LabError::Missing("unshare"))?;
    if !Path::new("/usr/bin/python3").is_file() {
        return Err(LabError::Missing("/usr/bin/python3"));
    }
    let abs = std::path::absolute(lab_dir).map_err(io("cannot resolve the lab folder"))?;
    if let Some(d) = ISOLATED_DIRS.iter().find(|d| abs.starts_with(d)) {
        return Err(LabError::Io {
            what: format!(
                "the lab folder {} is under {d}, which isolated nodes see privately; put it elsewhere (e.g. /tmp)",
                abs.display()
            ),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    Ok(())
}

/// Writes a node's fresh overlay folders, its stand-ins and its mount script `isolate.sh`.
pub(super) fn prepare(node_dir: &Path, info: &NodeInfo<'_>) -> Result<(), LabError> {
    let fs_dir = node_dir.join("fs");
    if fs_dir.exists() {
        // A new lab starts from this machine's files, not from what an earlier lab wrote.
        fs::remove_dir_all(&fs_dir).map_err(io(format!("cannot clear {}", fs_dir.display())))?;
    }
    let mut mounts = String::from(
        "#!/bin/sh\n# Written by kubeboot's local lab: private overlays, then the node's sshd.\nset -eu\n",
    );
    for dir in ISOLATED_DIRS {
        fs::create_dir_all(dir).map_err(io(format!("cannot create {dir}")))?;
        let base = fs_dir.join(key(dir));
        for sub in ["upper", "work"] {
            fs::create_dir_all(base.join(sub)).map_err(io(format!("cannot create {}", base.display())))?;
        }
        // The upper folder's root replaces the lower one's mode: keep /root private and the rest traversable.
        let mode = fs::metadata(dir).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
        set_mode(&base.join("upper"), mode.unwrap_or(0o755))?;
        mounts.push_str(&format!(
            "mount -t overlay overlay -o lowerdir={dir},upperdir={u},workdir={w} {dir}\n",
            u = base.join("upper").display(),
            w = base.join("work").display(),
        ));
    }
    mounts.push_str("exec \"$@\"\n");
    fs::write(node_dir.join("isolate.sh"), mounts).map_err(io("cannot write a node's isolate.sh"))?;

    let state = standin_dir(node_dir);
    if state.exists() {
        fs::remove_dir_all(&state).map_err(io(format!("cannot clear {}", state.display())))?;
    }
    fs::create_dir_all(state.join("fail")).map_err(io("cannot create a node's stand-in folder"))?;
    fs::create_dir_all(state.join("hold")).map_err(io("cannot create a node's stand-in folder"))?;
    // Stand-ins the login user runs (without sudo) record too.
    set_mode(&state, 0o777)?;
    let modules = fs::read_to_string("/proc/modules").unwrap_or_default();
    fs::write(state.join("proc_modules"), modules).map_err(io("cannot write a node's /proc/modules"))?;

    let local = upper(node_dir, "/usr/local");
    let home = local.join(STANDIN_HOME);
    fs::create_dir_all(&home).map_err(io("cannot create the stand-ins' folder"))?;
    fs::create_dir_all(local.join("sbin")).map_err(io("cannot create the node's /usr/local/sbin"))?;
    fs::create_dir_all(local.join("bin")).map_err(io("cannot create the node's /usr/local/bin"))?;
    let script = home.join("standin.py");
    fs::write(&script, STANDIN).map_err(io("cannot write the stand-in script"))?;
    set_mode(&script, 0o755)?;
    fs::write(home.join("node.json"), node_json(info, &state)).map_err(io("cannot write node.json"))?;
    let os_commands = match info.kind.os {
        NodeOs::Ubuntu => UBUNTU,
        NodeOs::Rhel => RHEL,
    };
    let target = Path::new("/usr/local").join(STANDIN_HOME).join("standin.py");
    for cmd in COMMON.iter().chain(os_commands) {
        symlink(&target, local.join("bin").join(cmd)).map_err(io(format!("cannot link the stand-in {cmd}")))?;
    }

    // modprobe cannot load modules here (a container may not even have /proc/modules), so the stand-in appends
    // to the node's own list, and a grep wrapper reads that list wherever a guard names /proc/modules.
    let grep = which("grep").ok_or(LabError::Missing("grep"))?;
    let wrapper = format!(
        "#!/bin/sh\n# Written by kubeboot's local lab: /proc/modules of this node is the stand-ins' list.\n\
         n=$#; i=0\nwhile [ \"$i\" -lt \"$n\" ]; do\n  a=$1; shift\n  [ \"$a\" = /proc/modules ] && a='{list}'\n\
         set -- \"$@\" \"$a\"; i=$((i + 1))\ndone\nexec {grep} \"$@\"\n",
        list = state.join("proc_modules").display(),
        grep = grep.display(),
    );
    fs::write(local.join("bin/grep"), wrapper).map_err(io("cannot write the grep wrapper"))?;
    set_mode(&local.join("bin/grep"), 0o755)?;

    let etc = upper(node_dir, "/etc");
    fs::write(etc.join("os-release"), os_release(info.kind.os)).map_err(io("cannot write a node's os-release"))?;
    // A swap line, as on a fresh install: the os-prep stage must turn swap off and comment it out.
    let fstab = fs::read_to_string("/etc/fstab").unwrap_or_default();
    fs::write(etc.join("fstab"), format!("{fstab}/swap.img\tnone\tswap\tsw\t0\t0\n"))
        .map_err(io("cannot write a node's fstab"))?;
    if info.kind.os == NodeOs::Rhel {
        fs::create_dir_all(etc.join("selinux")).map_err(io("cannot create a node's /etc/selinux"))?;
        // Present on every RHEL install; the playbooks drop their repository files there.
        fs::create_dir_all(etc.join("yum.repos.d")).map_err(io("cannot create a node's /etc/yum.repos.d"))?;
        fs::write(etc.join("selinux/config"), "SELINUX=enforcing\nSELINUXTYPE=targeted\n")
            .map_err(io("cannot write a node's selinux config"))?;
    }
    Ok(())
}

fn node_json(info: &NodeInfo<'_>, state: &Path) -> String {
    let mut domains = serde_json::Map::new();
    if let Some((domain, ip)) = &info.domain {
        domains.insert(domain.clone(), serde_json::Value::String(ip.clone()));
    }
    serde_json::json!({
        "name": info.name,
        "address": info.address.to_string(),
        "os": match info.kind.os { NodeOs::Ubuntu => "ubuntu", NodeOs::Rhel => "rhel" },
        "containerd": match info.kind.containerd { ContainerdLayout::V2 => "v2", ContainerdLayout::V3 => "v3" },
        "state_dir": state.display().to_string(),
        "domains": domains,
    })
    .to_string()
}

fn os_release(os: NodeOs) -> &'static str {
    match os {
        NodeOs::Ubuntu => {
            "PRETTY_NAME=\"Ubuntu 24.04.3 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\n\
             VERSION=\"24.04.3 LTS (Noble Numbat)\"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n\
             UBUNTU_CODENAME=noble\n"
        }
        NodeOs::Rhel => {
            "NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"9.4 (Plow)\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\n\
             VERSION_ID=\"9.4\"\nPLATFORM_ID=\"platform:el9\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 9.4 (Plow)\"\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_keys_have_no_slashes() {
        assert_eq!(key("/var/lib"), "var_lib");
        assert_eq!(key("/etc"), "etc");
    }
}
