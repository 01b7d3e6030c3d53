//! Helm charts for a bundle: the charts the plan's rendered kustomizations inflate (`helmCharts:`
//! name, repo, version), each looked up in its repository's `index.yaml`, downloaded (resumed,
//! checked against the index's sha256 `digest`) into `charts/`, which becomes the bundle's own chart
//! repository with an `index.yaml` of its own. A `[sources.charts.<name>] archive` on the jump host
//! is copied in instead. The charts' images are read from what `helm template` makes of each entry,
//! run with the bundle's own helm and exactly the arguments kustomize v5.8.1 gives it on the node
//! (the values files as the plan copies them), in the work folder `.helm/`.
//!
//! This file has the list (the charts the plans' kustomizations inflate, each way they are
//! rendered); downloading them into the bundle's repository is `charts/fetch.rs`, rendering them
//! with helm to read their images `charts/helm.rs`.

mod fetch;
mod helm;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::images::Found;
use crate::plan::{Action, Decision, NodePlan};

pub use fetch::collect;

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
