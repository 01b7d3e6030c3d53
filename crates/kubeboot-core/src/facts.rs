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

    /// The shell command that prints what [`Facts::parse`] reads. Read-only, POSIX sh. It runs once
    /// per node and run, so it reads what it can with shell builtins (`read`, `.`) and runs three
    /// programs (`uname`, `getconf`, `df`; `sed` only where a kube-apiserver manifest is) instead of
    /// one per fact: each one is a fork and an exec on the node (~1 ms of CPU on the bench machine).
    pub const GATHER_SCRIPT: &'static str = r#"
set -- $(uname -n -m 2>/dev/null)
echo "arch=${2-}"
echo "hostname=${1-}"
echo "cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo 0)"
__kb_k= __kb_v=
read -r __kb_k __kb_v _ 2>/dev/null < /proc/meminfo
[ "$__kb_k" = MemTotal: ] || __kb_v=
echo "memory_kb=$__kb_v"
echo "disk_kb=$(df -Pk / 2>/dev/null | { read -r _; read -r _ __kb_v _; echo "${__kb_v-}"; })"
echo "user=${USER:-$(id -un)}"
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-unknown}"
echo "os_like=${ID_LIKE:-}"
echo "os_version=${VERSION_ID:-0}"
__kb_v=
read -r __kb_v 2>/dev/null < /proc/sys/kernel/random/boot_id
echo "boot_id=$__kb_v"
__kb_v=/etc/kubernetes/manifests/kube-apiserver.yaml
if [ -r "$__kb_v" ]; then
  echo "kubernetes=$(sed -n 's/.*image: *[^ ]*kube-apiserver:\(v[0-9][0-9.]*\).*/\1/p' "$__kb_v" | head -n 1)"
else
  echo "kubernetes="
fi
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

    /// The script gathers the same facts as the one-program-per-fact script it replaced, in dash
    /// and in bash as sh, on this machine.
    #[test]
    fn the_gather_script_reads_this_machine_in_dash_and_bash() {
        let old = r#"
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
"#;
        let run = |shell: &str, script: &str| {
            let out = std::process::Command::new(shell)
                .args(["-c", script])
                .env(
                    "USER",
                    String::from_utf8_lossy(&std::process::Command::new("id").arg("-un").output().unwrap().stdout)
                        .trim(),
                )
                .output()
                .unwrap_or_else(|e| panic!("{shell} must be installed (the CI installs dash): {e}"));
            assert!(
                out.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stderr.is_empty(),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Facts::parse(&String::from_utf8_lossy(&out.stdout))
        };
        let before = run("dash", old);
        assert!(before.memory_mb > 0 && before.cpus > 0 && !before.arch.is_empty() && !before.boot_id.is_empty());
        for shell in ["dash", "bash"] {
            let mut now = run(shell, Facts::GATHER_SCRIPT);
            assert_eq!(now.kubernetes, "");
            now.kubernetes = before.kubernetes.clone();
            // df's free space is the only fact that may move between the two runs; its size does not.
            assert_eq!(format!("{now:?}"), format!("{before:?}"), "{shell}");
        }
    }

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
