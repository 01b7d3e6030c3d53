//! Downloading a bundle's charts into its chart repository `charts/`: from a helm repository's
//! `index.yaml` (resumed, checked against its sha256 `digest`), from an `oci://` registry, or copied
//! from a `[sources.charts.<name>] archive`; then each is rendered (see `helm.rs`) for its images.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::helm::{helm_binary, render_images};
use super::{DIR, WantedChart};
use crate::bundle::collect::{BundleError, BundleEvent, Item, Wanted, download, sha256_file};
use crate::bundle::images::WantedImage;
use crate::inventory::Inventory;

/// Downloads every chart into `out/charts/` and writes its `index.yaml`, then renders each chart
/// with the helm the bundle collected (`releases`: this run's release items) and reads the images of
/// the objects it makes; returns the manifest items and those images. Failures are returned per chart.
pub async fn collect(
    inv: &Inventory,
    charts: &[WantedChart],
    releases: &[Item],
    out: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> (Vec<Item>, Vec<WantedImage>, Vec<BundleError>) {
    let (mut items, mut images, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    if charts.is_empty() {
        return (items, images, errors);
    }
    let dir = out.join(DIR);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        errors.push(BundleError::Io(format!("cannot create {}: {e}", dir.display())));
        return (items, images, errors);
    }
    let client = match reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            errors.push(BundleError::Io(format!("cannot start an HTTP client: {e}")));
            return (items, images, errors);
        }
    };
    let helm = helm_binary(out, releases);
    let mut entries: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for chart in charts {
        let got = match inv.sources.charts.get(&chart.name).and_then(|c| c.archive.as_deref()) {
            Some(archive) => from_archive(chart, archive, &dir),
            None if chart.repo.starts_with("oci://") => from_oci(inv, chart, &dir, progress).await,
            None => from_repo(&client, chart, &dir, progress).await,
        };
        match got {
            Ok((item, entry)) => {
                progress(BundleEvent::Finished {
                    name: item.name.clone(),
                    size: item.size,
                });
                match &helm {
                    Ok(helm) => {
                        for (n, (render, clusters)) in chart.renders.iter().enumerate() {
                            match render_images(helm, out, &out.join(&item.path), chart, n + 1, render) {
                                Ok(found) => images.extend(found.into_iter().map(|reference| WantedImage {
                                    reference,
                                    clusters: clusters.clone(),
                                    control_plane: false,
                                })),
                                Err(reason) => errors.push(BundleError::Download {
                                    name: format!("{} {}", chart.name, item.version),
                                    url: format!("helm template {}", render.release_name),
                                    reason,
                                }),
                            }
                        }
                    }
                    Err(reason) => errors.push(BundleError::Io(format!(
                        "{}: its images cannot be read: {reason}",
                        chart.name
                    ))),
                }
                entries.entry(chart.name.clone()).or_default().push(entry);
                items.push(item);
            }
            Err(e) => errors.push(e),
        }
    }
    // checked: helm pkg/repo/index.go at main (IndexFile: apiVersion v1 required, entries: name → chart
    // versions = chart metadata + urls + digest, generated). It unmarshals strictly, so each entry is
    // the upstream index's own, with only `urls` changed (relative: resolved against the repository URL).
    let index = serde_json::json!({
        "apiVersion": "v1",
        "entries": entries,
        "generated": "1970-01-01T00:00:00Z",
    });
    if let Err(e) = serde_saphyr::to_string(&index)
        .map_err(|e| e.to_string())
        .and_then(|t| std::fs::write(dir.join("index.yaml"), t).map_err(|e| e.to_string()))
    {
        errors.push(BundleError::Io(format!("cannot write {DIR}/index.yaml: {e}")));
    }
    (items, images, errors)
}

async fn from_repo(
    client: &reqwest::Client,
    chart: &WantedChart,
    dir: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> Result<(Item, Value), BundleError> {
    let base = if chart.repo.ends_with('/') {
        chart.repo.clone()
    } else {
        format!("{}/", chart.repo)
    };
    let index_url = format!("{base}index.yaml");
    let fail = |reason: String| BundleError::Download {
        name: chart.name.clone(),
        url: index_url.clone(),
        reason,
    };
    let response = client.get(&index_url).send().await.map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    let text = response.text().await.map_err(|e| fail(e.to_string()))?;
    let index: Value = serde_saphyr::from_str(&text).map_err(|e| fail(format!("not a chart index: {e}")))?;
    let versions = index
        .pointer(&format!("/entries/{}", chart.name))
        .and_then(Value::as_array)
        .ok_or_else(|| fail(format!("the index has no chart `{}`", chart.name)))?;
    let entry = versions
        .iter()
        .find(|v| chart.version.is_empty() || v.get("version").and_then(Value::as_str) == Some(chart.version.as_str()))
        .ok_or_else(|| {
            fail(format!(
                "the index has no version {} of `{}`",
                chart.version, chart.name
            ))
        })?;
    let version = entry
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let url = entry
        .pointer("/urls/0")
        .and_then(Value::as_str)
        .ok_or_else(|| fail("the index names no URL for it".into()))?;
    let url = url::Url::parse(&base)
        .and_then(|b| b.join(url))
        .map_err(|e| fail(format!("chart URL `{url}`: {e}")))?
        .to_string();
    let sha256 = entry
        .get("digest")
        .and_then(Value::as_str)
        .filter(|d| d.len() == 64)
        .ok_or_else(|| fail("the index gives no sha256 digest for it: it cannot be checked".into()))?
        .to_string();
    let file = format!("{}-{version}.tgz", chart.name);
    let wanted = Wanted {
        name: chart.name.clone(),
        url: url.clone(),
        sha256: sha256.clone(),
        path: format!("{DIR}/{file}"),
    };
    let dest = dir.join(&file);
    if sha256_file(&dest).ok().as_deref() == Some(sha256.as_str()) {
        progress(BundleEvent::Present {
            name: chart.name.clone(),
        });
    } else {
        download(client, &wanted, &dest, progress).await?;
    }
    let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    let mut entry = entry.clone();
    if let Some(m) = entry.as_object_mut() {
        m.insert("urls".into(), Value::from(vec![file]));
    }
    Ok((
        Item {
            kind: "chart".into(),
            name: chart.name.clone(),
            version,
            source: url,
            path: wanted.path,
            sha256,
            size,
            digest: None,
        },
        entry,
    ))
}

/// The media type of a Helm chart's archive in an OCI registry (helm push).
// checked: helm pkg/registry/constants.go (ChartLayerMediaType, ConfigMediaType) and helm's oci://
// naming: oci://HOST/PATH + /NAME, the version as the tag with `+` written `_`.
const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A chart from an OCI registry (`oci://HOST/PATH`): its manifest, then its chart layer by digest
/// (resumed from `charts/.blobs/<hex>.part`, checked against the digest), through the inventory's
/// `[sources.registries."HOST"]` mirror and credentials when it names one.
async fn from_oci(
    inv: &Inventory,
    chart: &WantedChart,
    dir: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> Result<(Item, Value), BundleError> {
    use oci_client::client::{ClientConfig, ClientProtocol};
    let base = chart.repo.trim_start_matches("oci://").trim_end_matches('/');
    let tag = if chart.version.is_empty() {
        "latest".to_string()
    } else {
        chart.version.replace('+', "_")
    };
    let reference = format!("{base}/{}:{tag}", chart.name);
    let pull = crate::bundle::images::pull_for(inv, &reference)?;
    let fail = |reason: String| BundleError::Download {
        name: chart.name.clone(),
        url: pull.source.clone(),
        reason,
    };
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(crate::bundle::images::http_hosts(inv)),
        connect_timeout: Some(std::time::Duration::from_secs(20)),
        ..ClientConfig::default()
    });
    let (body, _digest) = client
        .pull_manifest_raw(&pull.from, &pull.auth, &[OCI_MANIFEST])
        .await
        .map_err(|e| fail(pull.error(e)))?;
    let manifest: Value = serde_json::from_slice(&body).map_err(|e| fail(format!("the manifest is not JSON: {e}")))?;
    let layer = manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|l| l.get("mediaType").and_then(Value::as_str) == Some(HELM_CHART_LAYER))
        .ok_or_else(|| {
            fail(format!(
                "the manifest has no {HELM_CHART_LAYER} layer: is it a Helm chart?"
            ))
        })?;
    let layer: oci_client::manifest::OciDescriptor =
        serde_json::from_value(layer.clone()).map_err(|e| fail(format!("its chart layer: {e}")))?;
    let hex = layer.digest.strip_prefix("sha256:").unwrap_or("").to_string();
    let file = format!("{}-{}.tgz", chart.name, chart.version);
    let dest = dir.join(&file);
    if !hex.is_empty() && sha256_file(&dest).ok().as_deref() == Some(hex.as_str()) {
        progress(BundleEvent::Present {
            name: chart.name.clone(),
        });
    } else {
        let cache = dir.join(".blobs");
        std::fs::create_dir_all(&cache).map_err(|e| fail(format!("cannot create {}: {e}", cache.display())))?;
        let blob = crate::bundle::images::fetch_blob(&client, &pull, &layer, &cache, progress).await?;
        std::fs::rename(&blob, &dest).map_err(|e| fail(format!("cannot move it into place: {e}")))?;
        let _ = std::fs::remove_dir(&cache);
    }
    let (mut item, entry) = indexed(chart, &dest, &file).map_err(fail)?;
    item.source = pull.source.clone();
    Ok((item, entry))
}

/// The manifest item and the index entry (its `Chart.yaml`, `urls`, `digest`) of a chart archive
/// already in `charts/`.
fn indexed(chart: &WantedChart, dest: &Path, file: &str) -> Result<(Item, Value), String> {
    let meta = read_chart_file(dest, "Chart.yaml")
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no Chart.yaml in the archive".to_string())?;
    let meta: Value = serde_saphyr::from_str(&meta).map_err(|e| format!("Chart.yaml: {e}"))?;
    entry_for(chart, dest, file, meta)
}

/// [`indexed`] with the archive's `Chart.yaml` already read.
fn entry_for(chart: &WantedChart, dest: &Path, file: &str, meta: Value) -> Result<(Item, Value), String> {
    let version = chart_version(&meta);
    let sha256 = sha256_file(dest).map_err(|e| e.to_string())?;
    let size = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    let mut entry = meta;
    if let Some(m) = entry.as_object_mut() {
        m.insert("urls".into(), Value::from(vec![file.to_string()]));
        m.insert("digest".into(), Value::from(sha256.as_str()));
    }
    Ok((
        Item {
            kind: "chart".into(),
            name: chart.name.clone(),
            version,
            source: String::new(),
            path: format!("{DIR}/{file}"),
            sha256,
            size,
            digest: None,
        },
        entry,
    ))
}

/// The `version` of a parsed `Chart.yaml` (empty when it has none).
fn chart_version(meta: &Value) -> String {
    meta.get("version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A chart archive from the jump host, copied in; its index entry made from its `Chart.yaml`.
fn from_archive(chart: &WantedChart, archive: &Path, dir: &Path) -> Result<(Item, Value), BundleError> {
    let fail = |reason: String| BundleError::Download {
        name: chart.name.clone(),
        url: archive.display().to_string(),
        reason,
    };
    let meta = read_chart_file(archive, "Chart.yaml")
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("no Chart.yaml in the archive".into()))?;
    let meta: Value = serde_saphyr::from_str(&meta).map_err(|e| fail(format!("Chart.yaml: {e}")))?;
    let file = format!("{}-{}.tgz", chart.name, chart_version(&meta));
    let dest = dir.join(&file);
    std::fs::copy(archive, &dest).map_err(|e| fail(format!("cannot copy it into {}: {e}", dest.display())))?;
    let (mut item, entry) = entry_for(chart, &dest, &file, meta).map_err(fail)?;
    item.source = archive.display().to_string();
    Ok((item, entry))
}

/// The text of `<chart>/<name>` in a chart archive (`.tgz`), the top chart's only.
fn read_chart_file(archive: &Path, name: &str) -> std::io::Result<Option<String>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(archive)?));
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path.split('/').count() == 2 && path.ends_with(&format!("/{name}")) {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            return Ok(Some(text));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chart archive from the jump host (`[sources.charts] NAME = { archive = ... }`) is copied in under
    /// `NAME-VERSION.tgz` (the version from its Chart.yaml) and indexed with its sha256.
    #[test]
    fn an_archive_from_the_jump_host_is_copied_and_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("mine.tgz");
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&archive).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let meta = b"apiVersion: v2\nname: tiny\nversion: 0.2.0\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(meta.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "tiny/Chart.yaml", &meta[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let out = dir.path().join("charts");
        std::fs::create_dir(&out).unwrap();
        let chart = WantedChart {
            name: "tiny".into(),
            repo: "https://charts.example.test".into(),
            version: "0.2.0".into(),
            clusters: Default::default(),
            renders: Vec::new(),
        };
        let (item, entry) = from_archive(&chart, &archive, &out).unwrap();
        let copied = out.join("tiny-0.2.0.tgz");
        assert_eq!(std::fs::read(&copied).unwrap(), std::fs::read(&archive).unwrap());
        assert_eq!(item.version, "0.2.0");
        assert_eq!(item.path, format!("{DIR}/tiny-0.2.0.tgz"));
        assert_eq!(item.source, archive.display().to_string());
        assert_eq!(item.sha256, sha256_file(&copied).unwrap());
        assert_eq!(entry["urls"][0], "tiny-0.2.0.tgz");
        assert_eq!(entry["digest"], item.sha256.as_str());
        assert_eq!(entry["name"], "tiny");
        // An archive without Chart.yaml is refused, naming the file.
        let empty = dir.path().join("empty.tgz");
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&empty).unwrap(), flate2::Compression::fast());
        tar::Builder::new(gz).into_inner().unwrap().finish().unwrap();
        let err = from_archive(&chart, &empty, &out).unwrap_err().to_string();
        assert!(
            err.contains("no Chart.yaml in the archive") && err.contains("empty.tgz"),
            "{err}"
        );
    }
}
