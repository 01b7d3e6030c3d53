//! The host side of the VM lab: the programs it runs (qemu, mmdebstrap, vde_switch, mkfs.ext4, ...), installed
//! from Debian when missing, and the choice between KVM and TCG.
//!
//! qemu-system-x86 comes from bookworm-backports: bookworm's own 7.2 conflicts with the qemu-utils 10.0 these
//! machines carry. Backports is not in the host's apt sources, so a private `APT_CONFIG` (its own source list,
//! index and archive folders under the lab's cache) reaches it without editing `/etc/apt`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::{LabError, io, which};

/// The programs the VM lab runs, each with the Debian package that brings it.
const PROGRAMS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("mmdebstrap", "mmdebstrap"),
    ("vde_switch", "vde-switch"),
    ("mkfs.ext4", "e2fsprogs"),
    ("apt-ftparchive", "apt-utils"),
    ("dpkg-deb", "dpkg"),
    ("openssl", "openssl"),
    ("ssh-keygen", "openssh-client"),
];
/// Installed from bookworm-backports, all at once (qemu-utils 10 is preinstalled there; 7.2 would conflict).
const BACKPORTS: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "qemu-utils",
];

/// The programs the VM lab runs, found (and installed when missing) once.
#[derive(Debug, Clone)]
pub(crate) struct HostTools {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub mmdebstrap: PathBuf,
    pub vde_switch: PathBuf,
    pub mkfs_ext4: PathBuf,
    pub ftparchive: PathBuf,
    pub dpkg_deb: PathBuf,
    pub openssl: PathBuf,
    pub keygen: PathBuf,
}

impl HostTools {
    /// Finds the programs, installing the Debian packages of the missing ones first.
    pub fn ensure(cache: &Path) -> Result<Self, LabError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LabError::NotRoot);
        }
        let missing: Vec<&str> = PROGRAMS
            .iter()
            .filter(|(program, _)| which(program).is_none())
            .map(|(_, package)| *package)
            .collect();
        if !missing.is_empty() {
            install(cache, &missing)?;
        }
        let find = |p: &'static str| which(p).ok_or(LabError::Missing(p));
        Ok(HostTools {
            qemu: find("qemu-system-x86_64")?,
            qemu_img: find("qemu-img")?,
            mmdebstrap: find("mmdebstrap")?,
            vde_switch: find("vde_switch")?,
            mkfs_ext4: find("mkfs.ext4")?,
            ftparchive: find("apt-ftparchive")?,
            dpkg_deb: find("dpkg-deb")?,
            openssl: find("openssl")?,
            keygen: find("ssh-keygen")?,
        })
    }
}

/// The Debian mirror the lab downloads from (the host's own unless `KUBEBOOT_LAB_DEBIAN_MIRROR` says).
pub(crate) fn mirror() -> (String, String) {
    let debian = std::env::var("KUBEBOOT_LAB_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let security = std::env::var("KUBEBOOT_LAB_DEBIAN_SECURITY_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian-security".into());
    (debian, security)
}

/// Writes the lab's private apt configuration (bookworm, its updates, security and backports) and returns its
/// path, for `APT_CONFIG`. `status` replaces dpkg's status file (an empty one makes apt fetch every dependency).
pub(crate) fn apt_config(cache: &Path, name: &str, status: Option<&Path>) -> Result<PathBuf, LabError> {
    let base = cache.join("apt").join(name);
    for d in ["sources", "lists/partial", "archives/partial", "cache", "preferences"] {
        fs::create_dir_all(base.join(d)).map_err(io(format!("cannot create {}", base.join(d).display())))?;
    }
    let (debian, security) = mirror();
    let sources = format!(
        "Types: deb\nURIs: {debian}\nSuites: bookworm bookworm-updates bookworm-backports\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
         Types: deb\nURIs: {security}\nSuites: bookworm-security\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
    fs::write(base.join("sources/debian.sources"), sources).map_err(io("cannot write the lab's apt sources"))?;
    let d = base.display();
    let mut conf = format!(
        "// Written by kubeboot's VM lab: apt for the lab only; /etc/apt is left alone.\n\
         Dir::Etc::SourceList \"/dev/null\";\n\
         Dir::Etc::SourceParts \"{d}/sources\";\n\
         Dir::Etc::PreferencesParts \"{d}/preferences\";\n\
         Dir::State::Lists \"{d}/lists\";\n\
         Dir::Cache \"{d}/cache\";\n\
         Dir::Cache::Archives \"{d}/archives\";\n\
         APT::Install-Recommends \"false\";\n"
    );
    if let Some(status) = status {
        conf.push_str(&format!("Dir::State::status \"{}\";\n", status.display()));
    }
    let path = base.join("apt.conf");
    fs::write(&path, conf).map_err(io("cannot write the lab's apt configuration"))?;
    Ok(path)
}

/// Runs apt-get with the lab's configuration; stdout and stderr go to the terminal (a long download shows).
pub(crate) fn apt_get(config: &Path, args: &[&str]) -> Result<(), LabError> {
    let status = Command::new("apt-get")
        .args(args)
        .env("APT_CONFIG", config)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(io("cannot run apt-get"))?;
    if !status.success() {
        return Err(LabError::Command {
            command: format!("APT_CONFIG={} apt-get {}", config.display(), args.join(" ")),
            status: status.to_string(),
            stderr: "see the output above".into(),
        });
    }
    Ok(())
}

/// Installs the packages of the missing programs (qemu from bookworm-backports).
fn install(cache: &Path, packages: &[&str]) -> Result<(), LabError> {
    eprintln!("lab: installing {} on this machine", packages.join(" "));
    let config = apt_config(cache, "host", None)?;
    apt_get(&config, &["-q", "update"])?;
    let mut args: Vec<String> = ["-q", "-y", "install"].iter().map(|s| s.to_string()).collect();
    for p in packages {
        if *p == "qemu-system-x86" || *p == "qemu-utils" {
            // `pkg/suite` takes only these from backports; their dependencies stay bookworm's where they can.
            args.extend(BACKPORTS.iter().map(|b| format!("{b}/bookworm-backports")));
        } else {
            args.push((*p).to_string());
        }
    }
    args.sort();
    args.dedup();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    apt_get(&config, &refs)
}

/// How qemu runs the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (only when kvm_intel or kvm_amd is loaded).
    Kvm,
    /// qemu's own translator: slow, works everywhere.
    Tcg,
}

impl Accel {
    /// KVM when the host has a real one, otherwise TCG; `KUBEBOOT_LAB_ACCEL=kvm|tcg` overrides.
    pub fn detect() -> Self {
        match std::env::var("KUBEBOOT_LAB_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        // /dev/kvm alone is not enough: a nested `kvm_pvm` never gets a stock kernel past its decompressor.
        let modules = fs::read_to_string("/proc/modules").unwrap_or_default();
        let real = modules
            .lines()
            .any(|l| l.starts_with("kvm_intel ") || l.starts_with("kvm_amd "));
        if real && Path::new("/dev/kvm").exists() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// qemu's arguments for it.
    pub fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            // A 256 MiB translation cache: boots about as fast as the default 1 GiB, with less memory.
            Accel::Tcg => ["-accel", "tcg,tb-size=256", "-cpu", "max"],
        }
    }
}
