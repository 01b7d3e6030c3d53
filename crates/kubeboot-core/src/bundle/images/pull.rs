//! Pulling a bundle's images: where each is pulled from (its registry or the inventory's mirror,
//! with the credentials of its `[sources.registries]` entry), the OCI distribution API calls, blob
//! downloads that continue where they stopped, and the OCI image layout archive of each image.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{BLOBS, DIR, INDEX, NODES, WantedImage, archive_name, node_lists};
use crate::bundle::collect::{BundleError, BundleEvent, Item, sha256_file};
use crate::inventory::Inventory;

/// Where one image is pulled from: its registry, or the inventory's mirror of it.
pub(crate) struct Pull {
    /// What the nodes call it (containerd's name).
    pub(crate) name: String,
    /// What is asked of the registry (the mirror's host in place of the upstream's).
    pub(crate) from: Reference,
    pub(crate) auth: RegistryAuth,
    /// For the manifest: `http://mirror:5000/repo:tag`.
    pub(crate) source: String,
    /// The upstream registry (`quay.io`): the `[sources.registries."..."]` entry it is pulled through.
    pub(crate) upstream: String,
}

impl Pull {
    /// A registry's error as the operator reads it: a refused or missing login names the registry,
    /// the upstream it mirrors and the inventory entry its credentials come from (never the secret).
    pub(crate) fn error(&self, e: oci_client::errors::OciDistributionError) -> String {
        use oci_client::errors::OciDistributionError as E;
        if !matches!(e, E::UnauthorizedError { .. } | E::AuthenticationFailure(_)) {
            return e.to_string();
        }
        let host = self.from.registry();
        let upstream = &self.upstream;
        let via = if host == upstream {
            String::new()
        } else {
            format!(" (the mirror of {upstream})")
        };
        match self.auth {
            RegistryAuth::Basic(..) => format!(
                "the registry {host}{via} refused the credentials of [sources.registries.\"{upstream}\"] \
                 (username_env/_file, password_env/_file): check them ({e})"
            ),
            _ => format!(
                "the registry {host}{via} asks for credentials: set username_env/_file and password_env/_file \
                 in [sources.registries.\"{upstream}\"] ({e})"
            ),
        }
    }
}

pub(crate) fn pull_for(inv: &Inventory, reference: &str) -> Result<Pull, BundleError> {
    let bad = |reason: String| BundleError::Download {
        name: reference.to_string(),
        url: reference.to_string(),
        reason,
    };
    let parsed: Reference = reference
        .parse()
        .map_err(|e| bad(format!("not an image reference: {e}")))?;
    let name = parsed.whole();
    let upstream = parsed.registry().to_string();
    let mirror = inv
        .sources
        .registries
        .get(&upstream)
        .filter(|r| !r.mirror.is_empty() && !r.mirror.contains("{{"));
    let (host, scheme, auth) = match mirror {
        Some(r) => {
            let url = url::Url::parse(&r.mirror).map_err(|e| {
                bad(format!(
                    "[sources.registries.\"{upstream}\"] mirror `{}`: {e}",
                    r.mirror
                ))
            })?;
            let host = match (url.host_str(), url.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => return Err(bad(format!("mirror `{}` names no host", r.mirror))),
            };
            let auth = match (&r.username, &r.password) {
                (Some(u), Some(p)) => {
                    let read = |s| crate::secrets::read(s).map_err(|e| bad(e.to_string()));
                    RegistryAuth::Basic(read(u)?.expose().to_string(), read(p)?.expose().to_string())
                }
                _ => RegistryAuth::Anonymous,
            };
            (host, url.scheme().to_string(), auth)
        }
        None => (
            parsed.resolve_registry().to_string(),
            "https".to_string(),
            RegistryAuth::Anonymous,
        ),
    };
    let repo = parsed.repository().to_string();
    let from = match (parsed.digest(), parsed.tag()) {
        (Some(d), _) => Reference::with_digest(host.clone(), repo.clone(), d.to_string()),
        (None, tag) => Reference::with_tag(host.clone(), repo.clone(), tag.unwrap_or("latest").to_string()),
    };
    let at = from.digest().or(from.tag()).unwrap_or("latest");
    let sep = if from.digest().is_some() { "@" } else { ":" };
    Ok(Pull {
        name,
        source: format!("{scheme}://{host}/{repo}{sep}{at}"),
        from,
        auth,
        upstream,
    })
}

/// The registries reached over plain HTTP (mirrors written `http://...`).
pub(crate) fn http_hosts(inv: &Inventory) -> Vec<String> {
    inv.sources
        .registries
        .values()
        .filter_map(|r| url::Url::parse(&r.mirror).ok())
        .filter(|u| u.scheme() == "http")
        .filter_map(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        })
        .collect()
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Pulls every image into `out/images/` (one archive each) and writes `images/index.txt`. An
/// archive already made from the same manifest (per `previous`) is kept. Failures are returned
/// per image; the others are still collected.
pub async fn collect(
    inv: &Inventory,
    images: &[WantedImage],
    out: &Path,
    previous: &[Item],
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> (Vec<Item>, Vec<BundleError>) {
    let dir = out.join(DIR);
    let mut items = Vec::new();
    let mut errors = Vec::new();
    if images.is_empty() {
        return (items, errors);
    }
    if let Err(e) = std::fs::create_dir_all(dir.join(BLOBS)) {
        errors.push(BundleError::Io(format!("cannot create {}: {e}", dir.display())));
        return (items, errors);
    }
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(http_hosts(inv)),
        connect_timeout: Some(std::time::Duration::from_secs(20)),
        ..ClientConfig::default()
    });
    let mut index = String::new();
    let mut collected = Vec::new();
    for image in images {
        match one(&client, inv, &image.reference, &dir, previous, progress).await {
            Ok(item) => {
                index.push_str(&format!("{}\t{}\n", item.name, archive_name(&item.name)));
                collected.push((image.clone(), item.name.clone()));
                items.push(item);
            }
            Err(e) => errors.push(e),
        }
    }
    let nodes = dir.join(NODES);
    let _ = std::fs::remove_dir_all(&nodes);
    if let Err(e) = std::fs::create_dir_all(&nodes) {
        errors.push(BundleError::Io(format!("cannot create {}: {e}", nodes.display())));
    }
    for (node, list) in node_lists(inv, &collected) {
        if let Err(e) = std::fs::write(nodes.join(format!("{node}.txt")), list) {
            errors.push(BundleError::Io(format!("cannot write {DIR}/{NODES}/{node}.txt: {e}")));
        }
    }
    if errors.is_empty() {
        let _ = std::fs::remove_dir_all(dir.join(BLOBS));
    }
    if let Err(e) = std::fs::write(dir.join(INDEX), index) {
        errors.push(BundleError::Io(format!("cannot write {DIR}/{INDEX}: {e}")));
    }
    (items, errors)
}

async fn one(
    client: &Client,
    inv: &Inventory,
    reference: &str,
    dir: &Path,
    previous: &[Item],
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> Result<Item, BundleError> {
    let pull = pull_for(inv, reference)?;
    let fail = |reason: String| BundleError::Download {
        name: pull.name.clone(),
        url: pull.source.clone(),
        reason,
    };
    let (mut body, mut digest) = client
        .pull_manifest_raw(&pull.from, &pull.auth, MANIFEST_TYPES)
        .await
        .map_err(|e| fail(pull.error(e)))?;
    let mut manifest: Value =
        serde_json::from_slice(&body).map_err(|e| fail(format!("the manifest is not JSON: {e}")))?;
    if let Some(list) = manifest.get("manifests").and_then(Value::as_array) {
        // An index of platforms: the nodes' (linux/amd64, as the bundle assumes).
        let chosen = list
            .iter()
            .find(|m| {
                m.pointer("/platform/os").and_then(Value::as_str) == Some("linux")
                    && m.pointer("/platform/architecture").and_then(Value::as_str) == Some("amd64")
            })
            .and_then(|m| m.get("digest").and_then(Value::as_str))
            .ok_or_else(|| fail("the image has no linux/amd64 variant".into()))?;
        let by_digest = pull.from.clone_with_digest(chosen.to_string());
        (body, digest) = client
            .pull_manifest_raw(&by_digest, &pull.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| fail(pull.error(e)))?;
        manifest = serde_json::from_slice(&body).map_err(|e| fail(format!("the manifest is not JSON: {e}")))?;
    }
    let file = archive_name(&pull.name);
    let path = format!("{DIR}/{file}");
    let archive = dir.join(&file);
    let version = pull.from.tag().unwrap_or("").to_string();
    let item = |sha256: String, size: u64| Item {
        kind: "image".into(),
        name: pull.name.clone(),
        version: version.clone(),
        source: pull.source.clone(),
        path: path.clone(),
        sha256,
        size,
        digest: Some(digest.clone()),
    };
    if let Some(before) = previous
        .iter()
        .find(|i| i.path == path && i.digest.as_deref() == Some(digest.as_str()))
        && sha256_file(&archive).ok().as_deref() == Some(before.sha256.as_str())
    {
        progress(BundleEvent::Present {
            name: pull.name.clone(),
        });
        return Ok(item(before.sha256.clone(), before.size));
    }
    let config = manifest.get("config").cloned().unwrap_or(Value::Null);
    let mut blobs: Vec<OciDescriptor> =
        vec![serde_json::from_value(config).map_err(|e| fail(format!("its config: {e}")))?];
    for layer in manifest.get("layers").and_then(Value::as_array).into_iter().flatten() {
        blobs.push(serde_json::from_value(layer.clone()).map_err(|e| fail(format!("a layer: {e}")))?);
    }
    let mut files = Vec::new();
    for blob in &blobs {
        files.push(fetch_blob(client, &pull, blob, &dir.join(BLOBS), progress).await?);
    }
    let media_type = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    write_archive(
        &archive,
        &pull.name,
        &version,
        &media_type,
        &digest,
        &body,
        &blobs,
        &files,
    )
    .map_err(|e| fail(format!("cannot write {}: {e}", archive.display())))?;
    let sha256 = sha256_file(&archive).map_err(|e| fail(e.to_string()))?;
    let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    progress(BundleEvent::Finished {
        name: pull.name.clone(),
        size,
    });
    Ok(item(sha256, size))
}

/// One blob into the blob cache (continuing a `.part`), checked against its digest.
pub(crate) async fn fetch_blob(
    client: &Client,
    pull: &Pull,
    blob: &OciDescriptor,
    cache: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> Result<PathBuf, BundleError> {
    let fail = |reason: String| BundleError::Download {
        name: pull.name.clone(),
        url: format!("{} blob {}", pull.source, blob.digest),
        reason,
    };
    let Some(hex) = blob.digest.strip_prefix("sha256:").filter(|h| h.len() == 64) else {
        return Err(fail("only sha256 digests are supported".into()));
    };
    let dest = cache.join(hex);
    if sha256_file(&dest).ok().as_deref() == Some(hex) {
        return Ok(dest);
    }
    let part = cache.join(format!("{hex}.part"));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let response = client
        .pull_blob_stream_partial(&pull.from, blob, have, None)
        .await
        .map_err(|e| fail(pull.error(e)))?;
    let (mut stream, from) = match response {
        BlobResponse::Partial(s) if have > 0 => (s, have),
        BlobResponse::Partial(s) | BlobResponse::Full(s) => (s, 0),
    };
    progress(BundleEvent::Started {
        name: pull.name.clone(),
        from,
        total: Some(blob.size.max(0) as u64),
    });
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(from > 0)
        .truncate(from == 0)
        .open(&part)
        .await
        .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
    let mut done = from;
    while let Some(chunk) = stream.stream.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
        done += chunk.len() as u64;
        progress(BundleEvent::Progress {
            name: pull.name.clone(),
            done,
        });
    }
    file.flush().await.map_err(|e| fail(e.to_string()))?;
    drop(file);
    let got = sha256_file(&part).map_err(|e| fail(e.to_string()))?;
    if got != hex {
        let _ = std::fs::remove_file(&part);
        return Err(BundleError::Checksum {
            name: pull.name.clone(),
            url: format!("{} blob", pull.source),
            got,
            want: hex.to_string(),
        });
    }
    std::fs::rename(&part, &dest).map_err(|e| fail(format!("cannot move it into place: {e}")))?;
    Ok(dest)
}

/// An OCI image layout as one tar: `oci-layout`, `index.json` naming the image, `blobs/sha256/*`.
/// Written to `<archive>.part` and moved into place; the same image always gives the same bytes.
// checked: image-spec v1.1.1 image-layout.md (oci-layout, index.json, blobs/<alg>/<hex>) and
// annotations.md (org.opencontainers.image.ref.name); containerd v2 core/images/archive/importer.go
// takes a tar with `oci-layout` as an OCI layout and its index.json as the index, and its import
// names each image by the io.containerd.image.name annotation (what `ctr images export` writes).
#[allow(clippy::too_many_arguments)]
fn write_archive(
    archive: &Path,
    name: &str,
    tag: &str,
    media_type: &str,
    digest: &str,
    manifest: &[u8],
    blobs: &[OciDescriptor],
    files: &[PathBuf],
) -> std::io::Result<()> {
    let part = PathBuf::from(format!("{}.part", archive.display()));
    let mut tar = tar::Builder::new(std::fs::File::create(&part)?);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut add = |path: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut annotations = serde_json::Map::new();
    annotations.insert("io.containerd.image.name".into(), Value::from(name));
    if !tag.is_empty() {
        annotations.insert("org.opencontainers.image.ref.name".into(), Value::from(tag));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": manifest.len(),
            "annotations": annotations,
        }],
    });
    add("index.json", index.to_string().as_bytes())?;
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    add(&format!("blobs/sha256/{}", hex(digest)), manifest)?;
    let mut seen = BTreeSet::new();
    for (blob, file) in blobs.iter().zip(files) {
        if !seen.insert(blob.digest.clone()) {
            continue;
        }
        let bytes = std::fs::read(file)?;
        add(&format!("blobs/sha256/{}", hex(&blob.digest)), &bytes)?;
    }
    tar.into_inner()?.sync_all()?;
    std::fs::rename(&part, archive)
}
