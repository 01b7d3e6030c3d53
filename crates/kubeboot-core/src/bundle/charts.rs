//! Helm charts for a bundle: the charts the plan's rendered kustomizations inflate (`helmCharts:`
//! name, repo, version), each looked up in its repository's `index.yaml`, downloaded (resumed,
//! checked against the index's sha256 `digest`) into `charts/`, which becomes the bundle's own chart
//! repository with an `index.yaml` of its own. A `[sources.charts.<name>] archive` on the jump host
//! is copied in instead. The charts' images are read from what `helm template` makes of each entry,
//! run with the bundle's own helm and exactly the arguments kustomize v5.8.1 gives it on the node
//! (the values files as the plan copies them), in the work folder `.helm/`.
//!
//! One job (a bundle's charts, from the list to the repository), kept in one file past ~600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::collect::{BundleError, BundleEvent, Item, Wanted, download, sha256_file};
use super::images::{Found, WantedImage};
use crate::inventory::Inventory;
use crate::plan::{Action, Decision, NodePlan};

/// The bundle's chart repository folder.
pub const DIR: &str = "charts";
/// The bundle's work folder for rendering the charts (helm, the unpacked charts, each render's
/// values and output): not needed on site.
pub const WORK: &str = ".helm";

/// One chart the plan inflates, with the clusters that need it and each way it is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedChart {
    pub name: String,
    pub repo: String,
    pub version: String,
    pub clusters: BTreeSet<String>,
    /// Each distinct `helm template` of it (clusters with the same values share one).
    pub renders: Vec<(Render, BTreeSet<String>)>,
}

/// What one `helmCharts` entry gives `helm template`, as kustomize reads it, with its values files'
/// text as the plan copies them to the node.
// checked: kustomize v5.8.1 (api v0.21.1) api/types/helmchartargs.go (HelmChart fields, AsHelmArgs)
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Render {
    pub release_name: String,
    pub namespace: String,
    pub name_template: String,
    /// `valuesFile`'s text; None: the chart's own `values.yaml` (kustomize's default).
    pub values: Option<Vec<u8>>,
    /// `additionalValuesFiles`: each path as written (relative to the kustomization) and its text.
    pub additional: Vec<(String, Vec<u8>)>,
    pub api_versions: Vec<String>,
    pub kube_version: String,
    pub include_crds: bool,
    pub skip_tests: bool,
    pub skip_hooks: bool,
    pub debug: bool,
    pub devel: bool,
    /// The kustomization's `images:` renames (name → reference): they apply to the chart's objects too.
    pub renames: BTreeMap<String, String>,
}

/// A `helmCharts` entry `bundle` cannot render as kustomize would: the kustomization as the node gets
/// it, the line of the entry, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub stage: String,
    pub task: String,
    /// The kustomization's path on the node.
    pub dest: String,
    /// 1-based line of the offending key in that file (0: unknown).
    pub line: usize,
    pub key: String,
    pub chart: String,
    pub reason: String,
}

/// Every file the plan copies to the node, by its path there (a later copy of the same path wins).
fn copied_files(plan: &NodePlan) -> BTreeMap<String, (&str, &str, &[u8])> {
    let mut out = BTreeMap::new();
    for task in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
        let Action::Copy(copy) = &task.action else { continue };
        for f in &copy.files {
            out.insert(
                f.dest.clone(),
                (task.stage.as_str(), task.task.as_str(), f.content.as_slice()),
            );
        }
    }
    out
}

/// `rel` (a path written in a kustomization) against the kustomization's folder, `.` and `..` resolved.
fn join_clean(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = if rel.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn kustomization_dir(dest: &str) -> &str {
    dest.rsplit_once('/').map_or("", |(d, _)| d)
}

/// The `helmCharts` entries of one rendered kustomization (none when it is no YAML mapping).
fn helm_charts(text: &str) -> Vec<Value> {
    serde_saphyr::from_str::<Value>(text)
        .ok()
        .and_then(|d| d.get("helmCharts").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

/// The paths on the node of every chart values file the plan's kustomizations name: helm's input,
/// not objects of their own.
pub fn values_files(plan: &NodePlan) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (dest, (_, _, content)) in copied_files(plan) {
        if !dest.ends_with("kustomization.yaml") {
            continue;
        }
        for chart in helm_charts(&String::from_utf8_lossy(content)) {
            let dir = kustomization_dir(&dest);
            let mut files: Vec<&str> = chart.get("valuesFile").and_then(Value::as_str).into_iter().collect();
            files.extend(
                chart
                    .get("additionalValuesFiles")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
            out.extend(files.into_iter().map(|f| join_clean(dir, f)));
        }
    }
    out
}

/// The 1-based line of the first `key:` in `text` at or after line `from`, or 0.
fn line_of(text: &str, key: &str, from: usize) -> usize {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| {
            let l = l.trim_start().trim_start_matches("- ");
            l.starts_with(&format!("{key}:"))
        })
        .map_or(0, |(i, _)| i + 1)
}

/// Every chart named by a rendered kustomization's `helmCharts:` in the plans, each once, with each
/// distinct render; and the entries that cannot be rendered as kustomize would.
// checked: kustomize v5.8.1 api/types/helmchartargs.go (HelmChart: name, repo, version...)
pub fn in_plans(plans: &[NodePlan]) -> (Vec<WantedChart>, Vec<Refused>) {
    type Key = (String, String, String);
    type Renders = BTreeMap<Render, BTreeSet<String>>;
    let mut out: BTreeMap<Key, (BTreeSet<String>, Renders)> = BTreeMap::new();
    let mut refused = Vec::new();
    for plan in plans {
        let cluster = plan.cluster.clone().unwrap_or_else(|| plan.node.clone());
        let files = copied_files(plan);
        for (dest, (stage, task, content)) in &files {
            if !dest.ends_with("kustomization.yaml") {
                continue;
            }
            let text = String::from_utf8_lossy(content).into_owned();
            let dir = kustomization_dir(dest);
            for chart in helm_charts(&text) {
                let str_of = |k: &str| chart.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let flag = |k: &str| chart.get(k).and_then(Value::as_bool).unwrap_or(false);
                let list = |k: &str| -> Vec<String> {
                    chart
                        .get(k)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                };
                let (name, repo, version) = (str_of("name"), str_of("repo"), str_of("version"));
                if name.is_empty() {
                    continue;
                }
                let entry_line = line_of(&text, "name", line_of(&text, "helmCharts", 1));
                let mut refuse = |key: &str, reason: String| {
                    refused.push(Refused {
                        stage: stage.to_string(),
                        task: task.to_string(),
                        dest: dest.clone(),
                        line: line_of(&text, key, entry_line).max(entry_line),
                        key: key.to_string(),
                        chart: name.clone(),
                        reason,
                    })
                };
                // kustomize merges valuesInline into the values file with kyaml's merge2 (override/merge)
                // or replaces it; bundle does not imitate that merge, so the images could differ.
                if chart.get("valuesInline").is_some_and(|v| !v.is_null()) {
                    refuse(
                        "valuesInline",
                        "valuesInline is not supported by kubeboot bundle: put these values into the chart's valuesFile (or an additionalValuesFiles entry) so that the bundle renders the chart with exactly what kustomize gives helm".into(),
                    );
                    continue;
                }
                let merge = str_of("valuesMerge");
                if !merge.is_empty() && !["merge", "override", "replace"].contains(&merge.as_str()) {
                    refuse(
                        "valuesMerge",
                        format!("valuesMerge `{merge}` is not merge, override or replace (kustomize refuses it too)"),
                    );
                    continue;
                }
                let mut read = |key: &str, file: &str| -> Option<Vec<u8>> {
                    let path = join_clean(dir, file);
                    match files.get(&path) {
                        Some((_, _, content)) => Some(content.to_vec()),
                        None => {
                            refuse(
                                key,
                                format!(
                                    "{key} `{file}` is not among the files the plan copies to the node ({path}): kustomize could not read it either"
                                ),
                            );
                            None
                        }
                    }
                };
                let values_file = str_of("valuesFile");
                let values = if values_file.is_empty() {
                    None
                } else {
                    match read("valuesFile", &values_file) {
                        Some(v) => Some(v),
                        None => continue,
                    }
                };
                let mut additional = Vec::new();
                let mut missing = false;
                for file in list("additionalValuesFiles") {
                    match read("additionalValuesFiles", &file) {
                        Some(v) => additional.push((file, v)),
                        None => missing = true,
                    }
                }
                if missing {
                    continue;
                }
                let render = Render {
                    release_name: str_of("releaseName"),
                    namespace: str_of("namespace"),
                    name_template: str_of("nameTemplate"),
                    values,
                    additional,
                    api_versions: list("apiVersions"),
                    kube_version: str_of("kubeVersion"),
                    include_crds: flag("includeCRDs"),
                    skip_tests: flag("skipTests"),
                    skip_hooks: flag("skipHooks"),
                    debug: flag("debug"),
                    devel: flag("devel"),
                    renames: Found::renames_in(&text),
                };
                let entry = out.entry((name, repo, version)).or_default();
                entry.0.insert(cluster.clone());
                entry.1.entry(render).or_default().insert(cluster.clone());
            }
        }
    }
    let charts = out
        .into_iter()
        .map(|((name, repo, version), (clusters, renders))| WantedChart {
            name,
            repo,
            version,
            clusters,
            renders: renders.into_iter().collect(),
        })
        .collect();
    (charts, refused)
}

impl Render {
    /// The arguments kustomize gives `helm template` for this entry: `chart` is the unpacked chart
    /// (`<chartHome>/<name>-<version>/<name>`), `values` the copy of the values file kustomize makes
    /// (`<tmp>/<name>-kustomize-values.yaml`), `root` the kustomization's folder.
    // checked: kustomize v5.8.1 api/types/helmchartargs.go AsHelmArgs (this order), and
    // api/internal/builtins/HelmChartInflationGenerator.go: validateArgs (valuesFile defaults to the
    // chart's values.yaml, additionalValuesFiles joined to the kustomization root), copyValuesFile
    // (the values file copied to <tmp>/<name>-kustomize-values.yaml, always passed as `-f`).
    pub fn helm_args(&self, chart: &Path, values: &Path, root: &Path) -> Vec<String> {
        let mut args = vec!["template".to_string()];
        if self.release_name.is_empty() {
            args.push("--generate-name".into());
        } else {
            args.push(self.release_name.clone());
        }
        args.push(chart.display().to_string());
        if !self.namespace.is_empty() {
            args.extend(["--namespace".into(), self.namespace.clone()]);
        }
        if !self.name_template.is_empty() {
            args.extend(["--name-template".into(), self.name_template.clone()]);
        }
        args.extend(["-f".into(), values.display().to_string()]);
        for (file, _) in &self.additional {
            args.extend(["-f".into(), root.join(file).display().to_string()]);
        }
        for v in &self.api_versions {
            args.extend(["--api-versions".into(), v.clone()]);
        }
        if !self.kube_version.is_empty() {
            args.extend(["--kube-version".into(), self.kube_version.clone()]);
        }
        for (on, flag) in [
            (self.include_crds, "--include-crds"),
            (self.skip_tests, "--skip-tests"),
            (self.skip_hooks, "--no-hooks"),
            (self.debug, "--debug"),
            (self.devel, "--devel"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        args
    }
}

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

/// The helm the nodes run (the bundle's `helm` release archive), unpacked into `.helm/bin/`, and
/// checked to be helm 3 or 4 as kustomize checks (`helm version --short`).
fn helm_binary(out: &Path, releases: &[Item]) -> Result<PathBuf, String> {
    let release = releases
        .iter()
        .find(|i| i.kind == "release" && i.name == "helm")
        .ok_or_else(|| {
            "the bundle has no helm release to render the charts with (the images are read from what \
             `helm template` makes of each chart): set helm_version and helm_sha256_amd64 in [vars], or \
             [sources.releases.helm] url and sha256"
                .to_string()
        })?;
    let dir = absolute(
        &out.join(WORK)
            .join("bin")
            .join(&release.sha256[..16.min(release.sha256.len())]),
    )?;
    let binary = dir.join("helm");
    if !binary.is_file() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let archive = out.join(&release.path);
        let open = std::fs::File::open(&archive).map_err(|e| format!("cannot read {}: {e}", archive.display()))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(open));
        let mut found = false;
        for entry in tar.entries().map_err(|e| format!("{}: {e}", release.path))? {
            let mut entry = entry.map_err(|e| format!("{}: {e}", release.path))?;
            let is_helm = entry
                .path()
                .ok()
                .is_some_and(|p| p.file_name().is_some_and(|n| n == "helm"));
            if is_helm && entry.header().entry_type().is_file() {
                let part = dir.join("helm.part");
                entry
                    .unpack(&part)
                    .map_err(|e| format!("cannot unpack helm from {}: {e}", release.path))?;
                set_executable(&part)?;
                std::fs::rename(&part, &binary).map_err(|e| format!("cannot move helm into place: {e}"))?;
                found = true;
                break;
            }
        }
        if !found {
            return Err(format!("{} holds no `helm` program", release.path));
        }
    }
    let run = Command::new(&binary)
        .args(["version", "--short"])
        .envs(helm_env(&dir.join("home")))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let said = String::from_utf8_lossy(&run.stdout);
    // checked: kustomize v5.8.1 HelmChartInflationGenerator.go checkHelmVersion (helm 3 or 4)
    let major = said.trim().trim_start_matches('v').split('.').next().unwrap_or("");
    if !run.status.success() || !(major == "3" || major == "4") {
        return Err(format!(
            "{} version --short said `{}`{}: kustomize needs helm 3 or 4",
            binary.display(),
            said.trim(),
            String::from_utf8_lossy(&run.stderr).trim()
        ));
    }
    Ok(binary)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> Result<(), String> {
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The environment kustomize gives helm: its own config, cache and data folders.
// checked: kustomize v5.8.1 HelmChartInflationGenerator.go runHelmCommand (HELM_CONFIG_HOME,
// HELM_CACHE_HOME={ConfigHome}/.cache, HELM_DATA_HOME={ConfigHome}/.data, on top of its own environment)
fn helm_env(home: &Path) -> Vec<(String, String)> {
    let home = home.display().to_string();
    vec![
        ("HELM_CONFIG_HOME".into(), home.clone()),
        ("HELM_CACHE_HOME".into(), format!("{home}/.cache")),
        ("HELM_DATA_HOME".into(), format!("{home}/.data")),
    ]
}

/// Renders `chart` (its archive unpacked below `.helm/charts/<name>-<version>/`) as kustomize would
/// on the node and returns the images of the objects helm printed. The render's folder
/// `.helm/render/<name>-<version>-<n>/` keeps its values and `rendered.yaml` for inspection.
fn render_images(
    helm: &Path,
    out: &Path,
    archive: &Path,
    chart: &WantedChart,
    n: usize,
    render: &Render,
) -> Result<Vec<String>, String> {
    let work = absolute(&out.join(WORK))?;
    let home = work.join("charts").join(format!("{}-{}", chart.name, chart.version));
    if !home.join(&chart.name).join("Chart.yaml").is_file() {
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        let open = std::fs::File::open(archive).map_err(|e| format!("cannot read {}: {e}", archive.display()))?;
        tar::Archive::new(flate2::read::GzDecoder::new(open))
            .unpack(&home)
            .map_err(|e| format!("cannot unpack {}: {e}", archive.display()))?;
    }
    let chart_dir = home.join(&chart.name);
    if !chart_dir.join("Chart.yaml").is_file() {
        return Err(format!(
            "{} has no {}/Chart.yaml (helm pull --untar would put the chart there)",
            archive.display(),
            chart.name
        ));
    }
    let dir = work
        .join("render")
        .join(format!("{}-{}-{n}", chart.name, chart.version));
    let _ = std::fs::remove_dir_all(&dir);
    let (tmp, root) = (dir.join("tmp"), dir.join("root"));
    for d in [&tmp, &root] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let values = match &render.values {
        Some(v) => v.clone(),
        None => std::fs::read(chart_dir.join("values.yaml"))
            .map_err(|e| format!("no valuesFile, and the chart's values.yaml cannot be read: {e}"))?,
    };
    let values_path = tmp.join(format!("{}-kustomize-values.yaml", chart.name));
    std::fs::write(&values_path, values).map_err(|e| format!("cannot write {}: {e}", values_path.display()))?;
    for (file, text) in &render.additional {
        let path = PathBuf::from(join_clean(&root.display().to_string(), file));
        if !path.starts_with(&root) {
            return Err(format!("additionalValuesFiles `{file}` is outside the kustomization"));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let args = render.helm_args(&chart_dir, &values_path, &root);
    let run = Command::new(helm)
        .args(&args)
        .envs(helm_env(&dir.join("helm")))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", helm.display()))?;
    if !run.status.success() {
        return Err(format!(
            "`helm {}` failed ({}): {}",
            args.join(" "),
            run.status,
            String::from_utf8_lossy(&run.stderr).trim()
        ));
    }
    let _ = std::fs::write(dir.join("rendered.yaml"), &run.stdout);
    let text = String::from_utf8_lossy(&run.stdout);
    // kustomize drops what helm printed before the first `---` when the whole is not YAML.
    let objects = if serde_saphyr::from_multiple::<Value>(&text).is_ok() {
        text.to_string()
    } else {
        match text.find("\n---") {
            Some(i) if serde_saphyr::from_multiple::<Value>(&text[i + 1..]).is_ok() => text[i + 1..].to_string(),
            _ => return Err(format!("`helm {}` printed no YAML objects", args.join(" "))),
        }
    };
    let mut found = Found::with_renames(render.renames.clone());
    found.scan(&objects);
    Ok(found.images())
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
    let pull = super::images::pull_for(inv, &reference)?;
    let fail = |reason: String| BundleError::Download {
        name: chart.name.clone(),
        url: pull.source.clone(),
        reason,
    };
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(super::images::http_hosts(inv)),
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
        let blob = super::images::fetch_blob(&client, &pull, &layer, &cache, progress).await?;
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
    let version = meta
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
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
