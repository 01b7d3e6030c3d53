//! Facts gathered from a node when kubeboot connects: what the playbooks may branch on.

use serde::{Deserialize, Serialize};

/// What kubeboot learned about a node by reading it (never by changing it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// `debian` (Ubuntu, Debian) or `redhat` (RHEL, Rocky, Alma, CentOS, Fedora), else the raw `ID`.
    pub os_family: String,
    /// `ID` from /etc/os-release, e.g. `ubuntu`, `rhel`.
    pub os_id: String,
    /// `VERSION_ID` from /etc/os-release, e.g. `22.04`, `9.4`.
    pub os_version: String,
    /// The major part of `os_version`, e.g. 22 or 9.
    pub os_version_major: u32,
    /// `uname -m`, e.g. `x86_64`.
    pub arch: String,
    /// The node's host name.
    pub hostname: String,
    /// Online CPUs.
    pub cpus: u32,
    /// Total memory in MiB.
    pub memory_mb: u64,
    /// Size of the root file system in GiB.
    pub disk_gb: u64,
    /// The login user on the node.
    pub user: String,
    /// The control plane's Kubernetes version (the kube-apiserver image tag in its static pod manifest, e.g.
    /// `v1.34.2`); empty on a node without a control plane. Read for `kubeboot upgrade`'s version check, not
    /// given to templates (a plan must not change with it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubernetes: String,
    /// The kernel's id of this boot (`/proc/sys/kernel/random/boot_id`); empty where it cannot be read. Resume
    /// compares it with the boot a task finished in: a node that restarted before its disk had what the task wrote
    /// (a hard reset, a power cut) cannot be trusted to still have it. Not given to templates.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
}

impl Facts {
    /// Stand-in facts used to check and show the plan before any node was reached.
    ///
    /// Shown to the operator as assumed; the real facts replace them once connected.
    pub fn assumed() -> Facts {
        Facts {
            os_family: "debian".into(),
            os_id: "ubuntu".into(),
            os_version: "24.04".into(),
            os_version_major: 24,
            arch: "x86_64".into(),
            hostname: "unknown".into(),
            cpus: 4,
            memory_mb: 16384,
            disk_gb: 100,
            user: "unknown".into(),
            kubernetes: String::new(),
            boot_id: String::new(),
        }
    }

    /// The shell command that prints what [`Facts::parse`] reads. Read-only, POSIX sh.
    pub const GATHER_SCRIPT: &'static str = r#"
echo "arch=$(uname -m)"
echo "hostname=$(hostname 2>/dev/null || uname -n)"
echo "cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo 0)"
echo "memory_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
echo "disk_kb=$(df -Pk / 2>/dev/null | awk 'NR==2 {print $2}')"
echo "user=$(id -un)"
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-unknown}"
echo "os_like=${ID_LIKE:-}"
echo "os_version=${VERSION_ID:-0}"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
echo "kubernetes=$(sed -n 's/.*image: *[^ ]*kube-apiserver:\(v[0-9][0-9.]*\).*/\1/p' /etc/kubernetes/manifests/kube-apiserver.yaml 2>/dev/null | head -n 1)"
"#;

    /// Reads the `key=value` lines printed by [`Facts::GATHER_SCRIPT`].
    pub fn parse(output: &str) -> Facts {
        let mut f = Facts {
            os_family: String::new(),
            os_id: "unknown".into(),
            os_version: "0".into(),
            os_version_major: 0,
            arch: String::new(),
            hostname: String::new(),
            cpus: 0,
            memory_mb: 0,
            disk_gb: 0,
            user: String::new(),
            kubernetes: String::new(),
            boot_id: String::new(),
        };
        let mut like = String::new();
        for line in output.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_string();
            match key.trim() {
                "arch" => f.arch = value,
                "hostname" => f.hostname = value,
                "cpus" => f.cpus = value.parse().unwrap_or(0),
                "memory_kb" => f.memory_mb = value.parse::<u64>().unwrap_or(0) / 1024,
                "disk_kb" => f.disk_gb = value.parse::<u64>().unwrap_or(0) / (1024 * 1024),
                "user" => f.user = value,
                "os_id" => f.os_id = value,
                "os_like" => like = value,
                "os_version" => f.os_version = value,
                "kubernetes" => f.kubernetes = value,
                "boot_id" => f.boot_id = value,
                _ => {}
            }
        }
        f.os_version_major = f.os_version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
        f.os_family = family(&f.os_id, &like);
        f
    }
}

fn family(id: &str, like: &str) -> String {
    let words: Vec<&str> = std::iter::once(id).chain(like.split_whitespace()).collect();
    if words.iter().any(|w| matches!(*w, "debian" | "ubuntu")) {
        "debian".into()
    } else if words
        .iter()
        .any(|w| matches!(*w, "rhel" | "fedora" | "centos" | "rocky" | "almalinux"))
    {
        "redhat".into()
    } else {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_an_ubuntu_node() {
        let f = Facts::parse(
            "arch=x86_64\nhostname=node-194\ncpus=8\nmemory_kb=16384000\ndisk_kb=104857600\nuser=bsh\nos_id=ubuntu\nos_like=debian\nos_version=22.04\n",
        );
        assert_eq!(f.os_family, "debian");
        assert_eq!(f.os_version_major, 22);
        assert_eq!(f.cpus, 8);
        assert_eq!(f.memory_mb, 16000);
        assert_eq!(f.disk_gb, 100);
    }

    #[test]
    fn parse_maps_rocky_to_the_redhat_family() {
        let f = Facts::parse("os_id=rocky\nos_like=\"rhel centos fedora\"\nos_version=\"9.4\"\n");
        assert_eq!(f.os_family, "redhat");
        assert_eq!(f.os_version, "9.4");
        assert_eq!(f.os_version_major, 9);
    }
}
