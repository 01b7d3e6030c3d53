//! The release binaries the shipped stage 50-cilium downloads, kustomize and helm, for the guests: stand-ins
//! (`standins/vm/kustomize.py`, one script answering to both names) packed as the upstream release archives
//! are (`kustomize` at the top of kustomize's, `linux-amd64/helm` in helm's) and laid out in the lab's bundle
//! as `kubeboot bundle` lays out releases (`releases/<name>/<upstream file name>`). The guest's real curl,
//! sha256sum, tar and install then do what they do on a real node, against the SHA-256 the lab's inventory
//! gives for these archives.

use std::fs;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::super::{LabError, io};

const STANDIN: &str = include_str!("../../standins/vm/kustomize.py");

/// The SHA-256 of the two archives, for the inventory's `kustomize_sha256_amd64` and `helm_sha256_amd64`.
pub struct Releases {
    pub kustomize_sha256: String,
    pub helm_sha256: String,
}

/// Writes the archives for these versions into `bundle` (unless the same ones are there) and returns their
/// SHA-256.
pub fn write(bundle: &Path, kustomize: &str, helm: &str) -> Result<Releases, LabError> {
    let script = STANDIN
        .replace("@KUSTOMIZE_VERSION@", kustomize)
        .replace("@HELM_VERSION@", helm);
    let kustomize_sha256 = archive(
        &bundle.join(format!("releases/kustomize/kustomize_v{kustomize}_linux_amd64.tar.gz")),
        "kustomize",
        &script,
    )?;
    let helm_sha256 = archive(
        &bundle.join(format!("releases/helm/helm-v{helm}-linux-amd64.tar.gz")),
        "linux-amd64/helm",
        &script,
    )?;
    Ok(Releases {
        kustomize_sha256,
        helm_sha256,
    })
}

/// One gzipped tar holding `member` (mode 0755, owner root, time 0: the same bytes for the same script).
fn archive(path: &Path, member: &str, script: &str) -> Result<String, LabError> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, member, script.as_bytes())
        .map_err(io(format!("cannot pack {member}")))?;
    let tar = tar.into_inner().map_err(io(format!("cannot pack {member}")))?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).map_err(io("cannot compress a release archive"))?;
    let bytes = gz.finish().map_err(io("cannot compress a release archive"))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if fs::read(path).is_ok_and(|have| have == bytes) {
        return Ok(digest);
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
    let part = path.with_extension("part");
    fs::write(&part, &bytes).map_err(io(format!("cannot write {}", part.display())))?;
    fs::rename(&part, path).map_err(io(format!("cannot write {}", path.display())))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_the_same_bytes_each_time_and_hold_the_versions() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), "5.8.1", "3.19.0").unwrap();
        let again = write(dir.path(), "5.8.1", "3.19.0").unwrap();
        assert_eq!(first.kustomize_sha256, again.kustomize_sha256);
        assert_eq!(first.helm_sha256, again.helm_sha256);
        assert_ne!(first.kustomize_sha256, first.helm_sha256);
        let helm = dir.path().join("releases/helm/helm-v3.19.0-linux-amd64.tar.gz");
        let mut entries = tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(&helm).unwrap()));
        let mut entry = entries.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("linux-amd64/helm"));
        assert_eq!(entry.header().mode().unwrap(), 0o755);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
        assert!(text.contains("HELM_VERSION = \"3.19.0\"") && text.contains("KUSTOMIZE_VERSION = \"5.8.1\""));
        let other = write(dir.path(), "5.8.0", "3.19.0").unwrap();
        assert_ne!(other.kustomize_sha256, first.kustomize_sha256);
        assert!(
            dir.path()
                .join("releases/kustomize/kustomize_v5.8.0_linux_amd64.tar.gz")
                .exists()
        );
    }
}
