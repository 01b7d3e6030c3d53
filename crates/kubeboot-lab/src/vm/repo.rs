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

/// Where a bundle keeps the Debian 12 repository (flat: `Packages`, `Release` and the .debs side by side),
/// as `kubeboot bundle` lays it out (`apt/<os_id>-<os_version>/`).
pub const APT_DIR: &str = "apt/debian-12";

/// Builds the repository unless the cache has it; returns the bundle folder holding it in [`APT_DIR`].
pub fn ensure(cache: &Path) -> Result<PathBuf, LabError> {
    let tools = HostTools::ensure(cache)?;
    let mut h = Sha256::new();
    h.update(STAGE_PACKAGES.join(",").as_bytes());
    h.update(APT_DIR.as_bytes());
    let (debian, security) = host::mirror();
    h.update(debian.as_bytes());
    h.update(security.as_bytes());
    let key = format!("bookworm-{}", &hex::encode(h.finalize())[..16]);
    let dir = cache.join("repos").join(&key);
    let _lock = lock_cache(cache)?;
    if dir.join(APT_DIR).join("Release").exists() {
        no_images(&dir)?;
        return Ok(dir);
    }
    let started = Instant::now();
    eprintln!("lab: building the guests' package repository {key}");
    let work = cache.join("repos").join(format!("{key}.build"));
    let _ = fs::remove_dir_all(&work);
    let pool = work.join(APT_DIR);
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
    index(&tools, &pool)?;
    no_images(&work)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&work, &dir).map_err(io(format!("cannot move the repository to {}", dir.display())))?;
    eprintln!("lab: package repository built in {:.0?}", started.elapsed());
    Ok(dir)
}

/// The lab's bundle holds no container images (the node stages pull none): an empty `images/index.txt`, as
/// `kubeboot bundle` writes it, so containerd's "images from the bundle" finds nothing to import.
fn no_images(bundle: &Path) -> Result<(), LabError> {
    let index = bundle.join("images").join("index.txt");
    if index.exists() {
        return Ok(());
    }
    fs::create_dir_all(bundle.join("images")).map_err(io("cannot create the bundle's images folder"))?;
    fs::write(&index, "").map_err(io(format!("cannot write {}", index.display())))
}

/// Writes `Packages` and `Release` for the .debs in `dir` (a flat repository: `deb [trusted=yes] URL ./`).
pub(crate) fn index(tools: &HostTools, dir: &Path) -> Result<(), LabError> {
    let packages = ftparchive(tools, dir, &["packages", "."])?;
    fs::write(dir.join("Packages"), &packages).map_err(io("cannot write Packages"))?;
    let release = ftparchive(
        tools,
        dir,
        &["-o", "APT::FTPArchive::Release::Origin=kubeboot-lab", "release", "."],
    )?;
    fs::write(dir.join("Release"), &release).map_err(io("cannot write Release"))
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
