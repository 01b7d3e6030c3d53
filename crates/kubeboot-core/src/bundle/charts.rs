//! Helm charts for a bundle: the charts the plan's rendered kustomizations inflate (`helmCharts:`
//! name, repo, version), each looked up in its repository's `index.yaml`, downloaded (resumed,
//! checked against the index's sha256 `digest`) into `charts/`, which becomes the bundle's own chart
//! repository with an `index.yaml` of its own. A `[sources.charts.<name>] archive` on the jump host
//! is copied in instead. The images the charts' `values.yaml` files name are read from the archives.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::collect::{BundleError, BundleEvent, Item, Wanted, download, sha256_file};
use super::images::{Found, WantedImage};
use crate::inventory::Inventory;
use crate::plan::{Action, Decision, NodePlan};

/// The bundle's chart repository folder.
pub const DIR: &str = "charts";

/// One chart the plan inflates, with the clusters that need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedChart {
    pub name: String,
    pub repo: String,
    pub version: String,
    pub clusters: BTreeSet<String>,
}

/// Every chart named by a rendered kustomization's `helmCharts:` in the plans, each once.
// checked: kustomize v5.8.1 api/types/helmchartargs.go (HelmChart: name, repo, version)
pub fn in_plans(plans: &[NodePlan]) -> Vec<WantedChart> {
    let mut out: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for plan in plans {
        let cluster = plan.cluster.clone().unwrap_or_else(|| plan.node.clone());
        for task in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
            let Action::Copy(copy) = &task.action else { continue };
            for f in copy.files.iter().filter(|f| f.dest.ends_with("kustomization.yaml")) {
                let Ok(doc) = serde_saphyr::from_str::<Value>(&String::from_utf8_lossy(&f.content)) else {
                    continue;
                };
                for chart in doc.get("helmCharts").and_then(Value::as_array).into_iter().flatten() {
                    let text = |k: &str| chart.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    let (name, repo, version) = (text("name"), text("repo"), text("version"));
                    if name.is_empty() {
                        continue;
                    }
                    out.entry((name, repo, version)).or_default().insert(cluster.clone());
                }
            }
        }
    }
    out.into_iter()
        .map(|((name, repo, version), clusters)| WantedChart {
            name,
            repo,
            version,
            clusters,
        })
        .collect()
}

/// Downloads every chart into `out/charts/` and writes its `index.yaml`; returns the manifest
/// items and the images the charts' values name. Failures are returned per chart.
pub async fn collect(
    inv: &Inventory,
    charts: &[WantedChart],
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
    let mut entries: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for chart in charts {
        let got = match inv.sources.charts.get(&chart.name).and_then(|c| c.archive.as_deref()) {
            Some(archive) => from_archive(chart, archive, &dir),
            None => from_repo(&client, chart, &dir, progress).await,
        };
        match got {
            Ok((item, entry)) => {
                progress(BundleEvent::Finished {
                    name: item.name.clone(),
                    size: item.size,
                });
                match values_images(&out.join(&item.path)) {
                    Ok(found) => images.extend(found.into_iter().map(|reference| WantedImage {
                        reference,
                        clusters: chart.clusters.clone(),
                        control_plane: false,
                    })),
                    Err(e) => errors.push(BundleError::Io(format!(
                        "{}: cannot read {}: {e}",
                        chart.name, item.path
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
    if chart.repo.starts_with("oci://") {
        return Err(fail(
            "OCI chart repositories are not collected yet: give [sources.charts] an `archive`".into(),
        ));
    }
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
    let version = meta
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let file = format!("{}-{version}.tgz", chart.name);
    let dest = dir.join(&file);
    std::fs::copy(archive, &dest).map_err(|e| fail(format!("cannot copy it into {}: {e}", dest.display())))?;
    let sha256 = sha256_file(&dest).map_err(|e| fail(e.to_string()))?;
    let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    let mut entry = meta.clone();
    if let Some(m) = entry.as_object_mut() {
        m.insert("urls".into(), Value::from(vec![file.clone()]));
        m.insert("digest".into(), Value::from(sha256.as_str()));
    }
    Ok((
        Item {
            kind: "chart".into(),
            name: chart.name.clone(),
            version,
            source: archive.display().to_string(),
            path: format!("{DIR}/{file}"),
            sha256,
            size,
            digest: None,
        },
        entry,
    ))
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

/// The images every `values.yaml` in a chart archive names (the chart's and its subcharts').
fn values_images(archive: &Path) -> std::io::Result<Vec<String>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(archive)?));
    let mut found = Found::default();
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.file_name().is_some_and(|n| n == "values.yaml") {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            found.scan(&text);
        }
    }
    Ok(found.images())
}
