//! The guests' package repository: the Debian packages the shipped stages install, with every dependency,
//! downloaded once on this machine (which can reach Debian's mirror) and indexed as a flat apt repository.
//! The guests have no network; kubeboot serves this folder to them over their SSH connections.
//!
//! This is the lab's own small builder; `kubeboot bundle` (the air-gap work) gathers the same for any
//! inventory, and can take its place.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::super::{LabError, io};
use super::host::{self, HostTools};
use super::lock_cache;

/// What the shipped node stages install on Debian (10-os-prep, 20-containerd with containerd from the
/// distribution, 60-longhorn-prereqs).
pub const STAGE_PACKAGES: &[&str] = &[
    "ca-certificates",
    "curl",
    "gpg",
    "tar",
    "socat",
    "conntrack",
    "ipset",
    "jq",
    "containerd",
    "open-iscsi",
    "nfs-common",
];

/// The suite and component the repository answers as (`deb [trusted=yes] URL/debian bookworm main`).
pub const SUITE: &str = "bookworm";
pub const COMPONENT: &str = "main";

/// Builds the repository unless the cache has it; returns the bundle folder holding it under `debian/`
/// (`dists/bookworm/main/binary-amd64/Packages`, `dists/bookworm/Release`, `pool/*.deb`).
pub fn ensure(cache: &Path) -> Result<PathBuf, LabError> {
    let tools = HostTools::ensure(cache)?;
    let mut h = Sha256::new();
    h.update(STAGE_PACKAGES.join(",").as_bytes());
    h.update(b"layout 2: debian/dists/bookworm/main");
    let (debian, security) = host::mirror();
    h.update(debian.as_bytes());
    h.update(security.as_bytes());
    let key = format!("bookworm-{}", &hex::encode(h.finalize())[..16]);
    let dir = cache.join("repos").join(&key);
    let _lock = lock_cache(cache)?;
    if dir.join("debian/dists").join(SUITE).join("Release").exists() {
        return Ok(dir);
    }
    let started = Instant::now();
    eprintln!("lab: building the guests' package repository {key}");
    let work = cache.join("repos").join(format!("{key}.build"));
    let _ = fs::remove_dir_all(&work);
    let pool = work.join("debian/pool");
    fs::create_dir_all(&pool).map_err(io(format!("cannot create {}", pool.display())))?;
    // An empty dpkg status: apt then downloads every dependency, as for a machine that has nothing.
    let status = cache.join("apt").join("empty-status");
    fs::create_dir_all(cache.join("apt")).map_err(io("cannot create the lab's apt folder"))?;
    fs::write(&status, "").map_err(io("cannot write an empty dpkg status"))?;
    let config = host::apt_config(cache, "repo", Some(&status))?;
    host::apt_get(&config, &["-q", "update"])?;
    let mut args = vec!["-q", "-y", "--download-only", "install"];
    args.extend(STAGE_PACKAGES);
    host::apt_get(&config, &args)?;
    let archives = cache.join("apt").join("repo").join("archives");
    for e in fs::read_dir(&archives)
        .map_err(io("cannot read the downloaded packages"))?
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") {
            let to = pool.join(e.file_name());
            if fs::hard_link(&p, &to).is_err() {
                fs::copy(&p, &to).map_err(io(format!("cannot copy {}", p.display())))?;
            }
        }
    }
    index(&tools, &work.join("debian"))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&work, &dir).map_err(io(format!("cannot move the repository to {}", dir.display())))?;
    eprintln!("lab: package repository built in {:.0?}", started.elapsed());
    Ok(dir)
}

/// Writes `dists/SUITE/COMPONENT/binary-amd64/Packages(.gz)` and `dists/SUITE/Release` for `pool/` in `root`.
pub(crate) fn index(tools: &HostTools, root: &Path) -> Result<(), LabError> {
    let bin = root.join("dists").join(SUITE).join(COMPONENT).join("binary-amd64");
    fs::create_dir_all(&bin).map_err(io(format!("cannot create {}", bin.display())))?;
    let packages = ftparchive(tools, root, &["packages", "pool"])?;
    fs::write(bin.join("Packages"), &packages).map_err(io("cannot write Packages"))?;
    let release = ftparchive(
        tools,
        root,
        &[
            "-o",
            "APT::FTPArchive::Release::Origin=kubeboot-lab",
            "-o",
            &format!("APT::FTPArchive::Release::Suite={SUITE}"),
            "-o",
            &format!("APT::FTPArchive::Release::Codename={SUITE}"),
            "-o",
            &format!("APT::FTPArchive::Release::Components={COMPONENT}"),
            "-o",
            "APT::FTPArchive::Release::Architectures=amd64",
            "release",
            &format!("dists/{SUITE}"),
        ],
    )?;
    fs::write(root.join("dists").join(SUITE).join("Release"), &release).map_err(io("cannot write Release"))
}

fn ftparchive(tools: &HostTools, root: &Path, args: &[&str]) -> Result<Vec<u8>, LabError> {
    let out = Command::new(&tools.ftparchive)
        .args(args)
        .current_dir(root)
        .output()
        .map_err(io("cannot run apt-ftparchive"))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("apt-ftparchive {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}
