//! `kubeboot bundle --out DIR`: downloads what the inventory's `[sources]` name into a bundle folder
//! with a manifest, resuming interrupted downloads and checking every file by sha256; and
//! `--check DIR`: verifies a copied bundle against its manifest. Progress leaves as events only.
//!
//! Collected: the release binaries (`releases/<name>/<file>`, sha256 from `[sources]`) here, and
//! the container images the plan's rendered files name (`images/`, see [`super::images`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::facts::Facts;
use crate::inventory::Inventory;
use crate::playbook::template::Context;

/// The manifest's file name in a bundle folder.
pub const MANIFEST: &str = "manifest.json";

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// `release`, `image`, `chart`...
    #[serde(default = "release")]
    pub kind: String,
    /// What it is (`helm`, `kustomize`, an image reference...).
    pub name: String,
    /// Its version, when the file name tells it.
    pub version: String,
    /// Where it was downloaded from.
    pub source: String,
    /// Its place below the bundle folder.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// An image's manifest digest (what the registry served), to know it unchanged on the next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

fn release() -> String {
    "release".into()
}

/// `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub items: Vec<Item>,
}

/// What `collect` reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleEvent {
    /// A download starts (at `from` bytes when resumed); `total` when the server says.
    Started {
        name: String,
        from: u64,
        total: Option<u64>,
    },
    /// Bytes so far of the current download.
    Progress { name: String, done: u64 },
    /// The file is in the bundle, checked.
    Finished { name: String, size: u64 },
    /// Already in the bundle with the right sha256: not downloaded again.
    Present { name: String },
}

/// Why a bundle could not be made or is not intact.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{name}: cannot download {url}: {reason}")]
    Download { name: String, url: String, reason: String },
    #[error(
        "{name}: {url} has sha256 {got}, expected {want} ([sources], the chart repository's index or the dnf repository's metadata) — the download is not the file named (removed; check the URL and the sha256)"
    )]
    Checksum {
        name: String,
        url: String,
        got: String,
        want: String,
    },
    #[error("{0}")]
    Io(String),
}

/// One download the inventory's sources ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub url: String,
    pub sha256: String,
    /// Below the bundle folder.
    pub path: String,
}

/// Every release binary the nodes of `inv` need (rendered per node with `facts`; the same file once).
pub fn wanted(inv: &Inventory, facts: &Facts) -> Vec<Wanted> {
    let mut out: BTreeMap<String, Wanted> = BTreeMap::new();
    for node in &inv.nodes {
        let ctx = Context::for_node(inv, node, facts);
        let Some(releases) = ctx.get("sources").and_then(|s| s.get_attr("releases").ok()) else {
            continue;
        };
        let Ok(names) = releases.try_iter() else { continue };
        for name in names {
            let Some(name) = name.as_str().map(str::to_string) else {
                continue;
            };
            let Ok(r) = releases.get_attr(&name) else { continue };
            let text = |k: &str| {
                r.get_attr(k)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            let (url, sha256) = (text("url"), text("sha256"));
            if url.is_empty() || sha256.is_empty() {
                continue;
            }
            let file = url.rsplit('/').next().unwrap_or("download").to_string();
            let path = format!("releases/{name}/{file}");
            out.entry(path.clone()).or_insert(Wanted {
                name,
                url,
                sha256,
                path,
            });
        }
    }
    out.into_values().collect()
}

/// Downloads every `wanted` file into `out` and writes the manifest. A file already there with the
/// right sha256 is kept; an interrupted download (`<file>.part`) continues where it stopped.
pub async fn collect(
    wanted: &[Wanted],
    out: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> Result<Manifest, BundleError> {
    let io = |what: String| move |e: std::io::Error| BundleError::Io(format!("{what}: {e}"));
    std::fs::create_dir_all(out).map_err(io(format!("cannot create {}", out.display())))?;
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        .build()
        .map_err(|e| BundleError::Io(format!("cannot start an HTTP client: {e}")))?;
    let mut manifest = Manifest::default();
    for w in wanted {
        let dest = out.join(&w.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
        }
        if dest.is_file() && sha256_file(&dest).ok().as_deref() == Some(w.sha256.as_str()) {
            progress(BundleEvent::Present { name: w.name.clone() });
        } else {
            download(&client, w, &dest, progress).await?;
        }
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        progress(BundleEvent::Finished {
            name: w.name.clone(),
            size,
        });
        manifest.items.push(Item {
            kind: release(),
            name: w.name.clone(),
            version: version_in(&w.path),
            source: w.url.clone(),
            path: w.path.clone(),
            sha256: w.sha256.clone(),
            size,
            digest: None,
        });
    }
    Ok(manifest)
}

/// Writes `manifest.json` (through a temporary file: an interrupted write leaves the old one).
pub fn write_manifest(out: &Path, manifest: &Manifest) -> Result<(), BundleError> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| BundleError::Io(e.to_string()))?;
    let tmp = out.join(format!("{MANIFEST}.part"));
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, out.join(MANIFEST)))
        .map_err(|e| BundleError::Io(format!("cannot write {MANIFEST}: {e}")))
}

/// The manifest an earlier run left in `out` (none, or unreadable: empty).
pub fn previous(out: &Path) -> Manifest {
    std::fs::read_to_string(out.join(MANIFEST))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub(crate) async fn download(
    client: &reqwest::Client,
    w: &Wanted,
    dest: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> Result<(), BundleError> {
    let fail = |reason: String| BundleError::Download {
        name: w.name.clone(),
        url: w.url.clone(),
        reason,
    };
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = client.get(&w.url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request.send().await.map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    let resumed = have > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT;
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    let from = if resumed { have } else { 0 };
    progress(BundleEvent::Started {
        name: w.name.clone(),
        from,
        total: response.content_length().map(|l| l + from),
    });
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .await
        .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
    let mut done = from;
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        file.write_all(&chunk)
            .await
            .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
        done += chunk.len() as u64;
        progress(BundleEvent::Progress {
            name: w.name.clone(),
            done,
        });
    }
    file.flush().await.map_err(|e| fail(e.to_string()))?;
    drop(file);
    let got = sha256_file(&part).map_err(|e| fail(e.to_string()))?;
    if got != w.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(BundleError::Checksum {
            name: w.name.clone(),
            url: w.url.clone(),
            got,
            want: w.sha256.clone(),
        });
    }
    std::fs::rename(&part, dest).map_err(|e| fail(format!("cannot move it into place: {e}")))
}

/// A problem `check` found with one file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    pub path: String,
    pub reason: String,
}

/// Verifies every file of the bundle in `dir` against its manifest (size and sha256).
pub fn check(dir: &Path) -> Result<(Manifest, Vec<Damaged>), BundleError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BundleError::Io(format!("{}: {e} — is this a bundle folder?", path.display())))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| BundleError::Io(format!("{}: not a bundle manifest: {e}", path.display())))?;
    let mut damaged = Vec::new();
    for item in &manifest.items {
        let file = dir.join(&item.path);
        let reason = match std::fs::metadata(&file) {
            Err(_) => Some("missing".to_string()),
            Ok(m) if m.len() != item.size => Some(format!("{} bytes, the manifest says {}", m.len(), item.size)),
            Ok(_) => match sha256_file(&file) {
                Ok(sum) if sum == item.sha256 => None,
                Ok(sum) => Some(format!("sha256 {sum}, the manifest says {}", item.sha256)),
                Err(e) => Some(format!("cannot read it: {e}")),
            },
        };
        if let Some(reason) = reason {
            damaged.push(Damaged {
                path: item.path.clone(),
                reason,
            });
        }
    }
    Ok((manifest, damaged))
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `1.2.3` from a file name like `helm-v1.2.3-linux-amd64.tar.gz`, or "".
fn version_in(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let bytes: Vec<char> = file.chars().collect();
    for start in 0..bytes.len() {
        if !bytes[start].is_ascii_digit() || (start > 0 && bytes[start - 1].is_ascii_digit()) {
            continue;
        }
        let rest: String = bytes[start..].iter().collect();
        let candidate: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let candidate = candidate.trim_end_matches('.');
        if candidate.matches('.').count() >= 2 {
            return candidate.to_string();
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_file_names() {
        assert_eq!(version_in("releases/helm/helm-v3.19.0-linux-amd64.tar.gz"), "3.19.0");
        assert_eq!(
            version_in("releases/kustomize/kustomize_v5.8.1_linux_amd64.tar.gz"),
            "5.8.1"
        );
        assert_eq!(version_in("releases/x/tool.tar.gz"), "");
    }
}
