//! Container images for a bundle: the list is read from the objects of the plan's rendered files
//! (manifests, kustomizations' renames) and of its charts as `helm template` renders them (see
//! [`super::charts`]), each image is pulled over the OCI distribution API (from the
//! inventory's registry mirror when `[sources.registries]` names one) and stored as an OCI image
//! layout archive that `ctr -n k8s.io images import` reads. Interrupted blob downloads continue.
//!
//! This file has the list (which images, the clusters and nodes that need them, their archives'
//! names); pulling them and writing the archives is `images/pull.rs`.

mod pull;

use std::collections::{BTreeMap, BTreeSet};

use oci_client::Reference;
use serde_json::Value;

use crate::inventory::Inventory;
use crate::plan::{Action, Decision, NodePlan};
pub use pull::collect;
pub(crate) use pull::{fetch_blob, http_hosts, pull_for};

/// The bundle's image folder, and the list the nodes read (`<reference><TAB><archive>` a line).
pub const DIR: &str = "images";
pub const INDEX: &str = "index.txt";
/// One list per node below `images/`: `nodes/<node>.txt`.
pub const NODES: &str = "nodes";
/// Blobs of images not finished yet (removed once every archive is written).
const BLOBS: &str = ".blobs";

/// One image the plan's rendered files name, with the clusters whose nodes need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedImage {
    pub reference: String,
    pub clusters: BTreeSet<String>,
    /// Only the cluster's control planes need it (kubeadm's own images); else every node of its clusters.
    pub control_plane: bool,
}

/// Every image named by the objects in the YAML files the plans copy to their nodes (see
/// [`Found`]), each once. A chart's values files (a kustomization's `helmCharts` `valuesFile` and
/// `additionalValuesFiles`) are not objects but helm's input: they are left to
/// [`super::charts`], which renders the chart with them and reads the objects helm makes.
pub fn in_plans(plans: &[NodePlan]) -> Vec<WantedImage> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for plan in plans {
        let cluster = plan.cluster.clone().unwrap_or_else(|| plan.node.clone());
        let values = super::charts::values_files(plan);
        for task in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
            let Action::Copy(copy) = &task.action else { continue };
            let mut found = Found::default();
            for f in &copy.files {
                if (f.dest.ends_with(".yaml") || f.dest.ends_with(".yml")) && !values.contains(&f.dest) {
                    found.scan(&String::from_utf8_lossy(&f.content));
                }
            }
            for image in found.images() {
                out.entry(image).or_default().insert(cluster.clone());
            }
        }
    }
    out.into_iter()
        .map(|(reference, clusters)| WantedImage {
            reference,
            clusters,
            control_plane: false,
        })
        .collect()
}

/// Image references in Kubernetes objects (a plain manifest, or what `helm template` printed): every
/// `image:` text (a container's, or a custom resource's such as a Prometheus' `spec.image`), and in each
/// container, init container and ephemeral container the `command`/`args` items and `env` values that
/// are image references (`--prometheus-config-reloader=REF`, `--instance-manager-image` `REF`,
/// `CSI_ATTACHER_IMAGE=REF`: the images an operator starts itself). A kustomization's `images:`
/// renames the images of the objects scanned with it. Every reference comes out normalised
/// (`busybox` → `docker.io/library/busybox:latest`), each once.
#[derive(Debug, Default)]
pub(crate) struct Found {
    images: BTreeSet<String>,
    /// kustomize `images:` entries: the name in the bases → the reference it becomes.
    renames: BTreeMap<String, String>,
    /// The prometheus-operator's `--{prometheus,alertmanager,thanos}-default-base-image=REF` by
    /// component: only a fallback, pulled for a custom resource that names no image of its own.
    defaults: BTreeMap<String, String>,
    /// The components whose default base image a scanned custom resource falls back to.
    needs_default: BTreeSet<String>,
}

/// The prometheus-operator flags that give a component's default base image.
// checked: prometheus-operator v0.86.2 (kube-prometheus-stack 79.7.1's) cmd/operator/main.go
// ("... default base image (path without tag/version)") and operator.BuildImagePath: the CR's own
// image wins (Prometheus/Alertmanager/ThanosRuler spec.image, the sidecar's spec.thanos.image in
// pkg/prometheus/server/statefulset.go); the default base image is used only without one.
const DEFAULT_BASE_IMAGE_FLAGS: &[(&str, &str)] = &[
    ("--prometheus-default-base-image", "prometheus"),
    ("--alertmanager-default-base-image", "alertmanager"),
    ("--thanos-default-base-image", "thanos"),
];

impl Found {
    pub(crate) fn scan(&mut self, text: &str) {
        // Not YAML after all (a template left for the node, a script): nothing to find.
        let Ok(docs) = serde_saphyr::from_multiple::<Value>(text) else {
            return;
        };
        for doc in &docs {
            if doc.get("kind").and_then(Value::as_str) == Some("Kustomization") {
                self.kustomize_images(doc);
                continue;
            }
            self.walk(doc);
            self.fallbacks(doc);
        }
    }

    /// The components whose default base image this object's pods fall back to: a Prometheus or
    /// PrometheusAgent without `spec.image` (prometheus), a Prometheus whose `spec.thanos` sidecar
    /// has no `image` (thanos), an Alertmanager or ThanosRuler without `spec.image`.
    fn fallbacks(&mut self, doc: &Value) {
        let Some(kind) = doc.get("kind").and_then(Value::as_str) else {
            return;
        };
        let spec = doc.get("spec");
        let named = |v: Option<&Value>| {
            v.and_then(|v| v.get("image"))
                .and_then(Value::as_str)
                .is_some_and(|i| !i.trim().is_empty())
        };
        let component = match kind {
            "Prometheus" | "PrometheusAgent" => "prometheus",
            "Alertmanager" => "alertmanager",
            "ThanosRuler" => "thanos",
            _ => return,
        };
        if !named(spec) {
            self.needs_default.insert(component.to_string());
        }
        if kind == "Prometheus"
            && let Some(thanos) = spec.and_then(|s| s.get("thanos")).filter(|t| t.is_object())
            && !named(Some(thanos))
        {
            self.needs_default.insert("thanos".to_string());
        }
    }

    /// The `images:` renames of a kustomization's text (for the objects of the charts it inflates).
    pub(crate) fn renames_in(kustomization: &str) -> BTreeMap<String, String> {
        let mut found = Found::default();
        if let Ok(doc) = serde_saphyr::from_str::<Value>(kustomization) {
            found.kustomize_images(&doc);
        }
        found.renames
    }

    pub(crate) fn with_renames(renames: BTreeMap<String, String>) -> Found {
        Found {
            renames,
            ..Found::default()
        }
    }

    // checked: kustomize v5.8.1 api/types/image.go (name, newName, newTag, digest)
    fn kustomize_images(&mut self, doc: &Value) {
        for entry in doc.get("images").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = entry.get("name").and_then(Value::as_str) else {
                continue;
            };
            let new_name = entry.get("newName").and_then(Value::as_str).unwrap_or(name);
            let mut reference = new_name.to_string();
            if let Some(digest) = entry.get("digest").and_then(Value::as_str) {
                reference = format!("{reference}@{digest}");
            } else if let Some(tag) = entry.get("newTag").and_then(scalar) {
                reference = format!("{reference}:{tag}");
            }
            self.renames.insert(name.to_string(), reference);
        }
    }

    fn walk(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                if let Some(image) = map.get("image").and_then(Value::as_str) {
                    self.images.insert(image.to_string());
                }
                for key in ["containers", "initContainers", "ephemeralContainers"] {
                    for c in map.get(key).and_then(Value::as_array).into_iter().flatten() {
                        self.container(c);
                    }
                }
                map.values().for_each(|v| self.walk(v));
            }
            Value::Array(items) => items.iter().for_each(|v| self.walk(v)),
            _ => {}
        }
    }

    /// The image references a container passes to its program.
    fn container(&mut self, c: &Value) {
        for key in ["command", "args"] {
            for item in c.get(key).and_then(Value::as_array).into_iter().flatten() {
                let Some(text) = item.as_str() else { continue };
                for word in text.split_whitespace() {
                    let value = match word.split_once('=') {
                        Some((flag, value)) if flag.starts_with('-') => {
                            if let Some((_, component)) = DEFAULT_BASE_IMAGE_FLAGS.iter().find(|(f, _)| *f == flag) {
                                self.defaults.insert(component.to_string(), value.to_string());
                                continue;
                            }
                            value
                        }
                        _ => word,
                    };
                    if looks_like_image(value) {
                        self.images.insert(value.to_string());
                    }
                }
            }
        }
        for env in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            if let Some(value) = env.get("value").and_then(Value::as_str).map(str::trim)
                && looks_like_image(value)
            {
                self.images.insert(value.to_string());
            }
        }
    }

    pub(crate) fn images(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for image in &self.images {
            let bare = image.split(['@', ':']).next().unwrap_or(image);
            let image = self.renames.get(bare).cloned().unwrap_or_else(|| image.clone());
            // A template expression that did not render, an empty value: not an image.
            if image.is_empty() || image.contains("{{") || image.contains(' ') {
                continue;
            }
            out.extend(normalise(&image));
        }
        out.extend(self.renames.values().filter_map(|r| normalise(r)));
        // A default base image only when an object here falls back to it, and only with a tag or
        // digest (a bare path gets the CR's version appended by the operator: not knowable here).
        for (component, image) in &self.defaults {
            if self.needs_default.contains(component) && looks_like_image(image) {
                out.extend(normalise(image));
            }
        }
        out.into_iter().collect()
    }
}

/// `reference` as containerd names it: registry, repository with `library/` for Docker Hub's own
/// images, and `:latest` when it has neither tag nor digest; None when it is not a reference.
// checked: oci-spec 0.10 distribution/reference.rs (split_domain: docker.io and library/ defaults,
// latest when untagged), the normalisation containerd and the kubelet apply.
pub fn normalise(reference: &str) -> Option<String> {
    reference.parse::<Reference>().ok().map(|r| r.whole())
}

/// Whether a word a container is given (an argument, a flag's value, an environment value) names an
/// image: a repository path with at least one `/` and a tag or digest, nothing else (no scheme, no
/// absolute path, no spaces, lower-case path components). A word without a `/` (`busybox:1.36`)
/// is not taken: too many flag values look like `name:port`. A word taken wrongly shows as an image
/// the registry does not have (named, exit 1); one missed would be missing on site.
fn looks_like_image(word: &str) -> bool {
    let word = word.trim_matches(['"', '\'']);
    if word.is_empty() || word.len() > 255 || word.starts_with(['/', '.', '-']) || word.contains("://") {
        return false;
    }
    let (name, digest) = match word.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (word, None),
    };
    if let Some(d) = digest
        && !(d.starts_with("sha256:") && d.len() == 71 && d[7..].chars().all(|c| c.is_ascii_hexdigit()))
    {
        return false;
    }
    let last_slash = match name.rfind('/') {
        Some(i) => i,
        None => return false,
    };
    let (path, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if tag.is_none() && digest.is_none() {
        return false;
    }
    if let Some(tag) = tag
        && (tag.is_empty()
            || tag.len() > 128
            || tag.starts_with(['.', '-'])
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return false;
    }
    let mut parts = path.split('/');
    let first = parts.next().unwrap_or("");
    let registry = first.contains(['.', ':']) || first == "localhost";
    let component = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !registry && !component(first) {
        return false;
    }
    if registry
        && !first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return false;
    }
    parts.all(component)
}

/// `a` and `b` as one list: each image once, with the clusters of both (for control planes only
/// when both say so).
pub fn merge(a: Vec<WantedImage>, b: Vec<WantedImage>) -> Vec<WantedImage> {
    let mut out: BTreeMap<String, (BTreeSet<String>, bool)> = BTreeMap::new();
    for image in a.into_iter().chain(b) {
        let entry = out
            .entry(image.reference)
            .or_insert_with(|| (BTreeSet::new(), image.control_plane));
        entry.0.extend(image.clusters);
        entry.1 &= image.control_plane;
    }
    out.into_iter()
        .map(|(reference, (clusters, control_plane))| WantedImage {
            reference,
            clusters,
            control_plane,
        })
        .collect()
}

/// The list of images one node imports, `images/nodes/<node>.txt` (same lines as `index.txt`): the
/// images of its cluster (a node in no cluster: its own), kubeadm's own only on a control plane. A node
/// the bundle does not know (added to the inventory later) reads `index.txt`, every image.
pub fn node_lists(inv: &Inventory, collected: &[(WantedImage, String)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for node in &inv.nodes {
        let cluster = node.cluster.clone().unwrap_or_else(|| node.name.clone());
        let control_plane = node.role == crate::inventory::NodeRole::ControlPlane;
        let mut list = String::new();
        for (image, name) in collected {
            if image.clusters.contains(&cluster) && (control_plane || !image.control_plane) {
                list.push_str(&format!("{name}\t{}\n", archive_name(name)));
            }
        }
        out.insert(node.name.clone(), list);
    }
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The archive's file name below `images/` (`quay.io/cilium/cilium:v1.18.4` → `quay.io_cilium_cilium_v1.18.4.tar`).
pub fn archive_name(reference: &str) -> String {
    let safe: String = reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.tar")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(texts: &[&str]) -> Vec<String> {
        let mut found = Found::default();
        texts.iter().for_each(|t| found.scan(t));
        found.images()
    }

    #[test]
    fn images_come_from_the_objects_their_flags_and_env_and_kustomize_renames() {
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      initContainers:\n        - name: wait\n          image: busybox\n          command: ['sh', '-c', 'until wget -q http://svc:9500/v1; do sleep 2; done']\n      containers:\n        - name: a\n          image: quay.io/x/exporter:v1.9.0\n          args:\n            - --kubelet-service=kube-system/kubelet\n            - --prometheus-config-reloader=quay.io/prometheus-operator/prometheus-config-reloader:v0.86.2\n            - --web.listen-address=0.0.0.0:9090\n            - --config-file=/etc/x/y:z\n        - name: b\n          image: thanos\n          command:\n            - longhorn-manager\n            - --instance-manager-image\n            - \"longhornio/longhorn-instance-manager:v1.10.1\"\n          env:\n            - name: CSI_ATTACHER_IMAGE\n              value: longhornio/csi-attacher:v4.9.0-20250826\n            - name: URL\n              value: http://a.b/c:1\n            - name: PATHISH\n              value: /var/lib/x:y\n---\nkind: Prometheus\nspec:\n  image: quay.io/prometheus/prometheus:v3.7.3\n";
        let kustomization =
            "kind: Kustomization\nimages:\n  - name: thanos\n    newName: quay.io/thanos/thanos\n    newTag: v0.39.2\n";
        assert_eq!(
            images(&[deployment, kustomization]),
            [
                "docker.io/library/busybox:latest",
                "docker.io/longhornio/csi-attacher:v4.9.0-20250826",
                "docker.io/longhornio/longhorn-instance-manager:v1.10.1",
                "quay.io/prometheus-operator/prometheus-config-reloader:v0.86.2",
                "quay.io/prometheus/prometheus:v3.7.3",
                "quay.io/thanos/thanos:v0.39.2",
                "quay.io/x/exporter:v1.9.0",
            ]
        );
        // The operator's default base images are fallbacks: not pulled while every custom resource
        // names its own image (the shipped Prometheus sets spec.image and spec.thanos.image).
        let operator = "kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n        - name: operator\n          image: quay.io/prometheus-operator/prometheus-operator:v0.86.2\n          args:\n            - --prometheus-default-base-image=quay.io/prometheus/prometheus\n            - --alertmanager-default-base-image=quay.io/prometheus/alertmanager:v0.29.0\n            - --thanos-default-base-image=quay.io/thanos/thanos:v0.40.1\n";
        let named = "kind: Prometheus\nspec:\n  image: quay.io/prometheus/prometheus:v3.7.3\n  thanos:\n    image: quay.io/thanos/thanos:v0.39.2\n---\nkind: Alertmanager\nspec:\n  image: quay.io/prometheus/alertmanager:v0.29.0\n";
        assert_eq!(
            images(&[operator, named]),
            [
                "quay.io/prometheus-operator/prometheus-operator:v0.86.2",
                "quay.io/prometheus/alertmanager:v0.29.0",
                "quay.io/prometheus/prometheus:v3.7.3",
                "quay.io/thanos/thanos:v0.39.2",
            ]
        );
        // A sidecar or a ThanosRuler without an image of its own is given the default: then it is pulled.
        let unnamed = "kind: Prometheus\nspec:\n  image: quay.io/prometheus/prometheus:v3.7.3\n  thanos:\n    objectStorageConfig: {}\n";
        assert!(images(&[operator, unnamed]).contains(&"quay.io/thanos/thanos:v0.40.1".to_string()));
        let ruler = "kind: ThanosRuler\nspec:\n  queryEndpoints: [a]\n";
        assert!(images(&[operator, ruler]).contains(&"quay.io/thanos/thanos:v0.40.1".to_string()));
        // Without a tag the operator appends the CR's version: no reference to collect.
        let agent = "kind: PrometheusAgent\nspec: {}\n";
        assert!(
            !images(&[operator, agent])
                .iter()
                .any(|i| i.starts_with("quay.io/prometheus/prometheus"))
        );
        // Values are not objects: a `{repository, tag}` map is no image of its own any more.
        let values = "operator:\n  image:\n    registry: docker.io\n    repository: longhornio/longhorn-manager\n    tag: v1.10.1\n";
        assert!(images(&[values]).is_empty());
        assert!(
            images(&["#!/bin/sh\necho image: x: y: {"]).is_empty(),
            "not YAML: nothing"
        );
    }

    #[test]
    fn image_words_are_told_from_paths_services_and_urls() {
        for yes in [
            "quay.io/a/b:v1",
            "longhornio/longhorn-engine:v1.10.1",
            "localhost:5000/a:1",
            "registry.k8s.io/pause@sha256:7c38f24774e3cbd906d2d33c38354ccf787635581c122965132c9bd309754d4a",
            "ghcr.io/a/b:2",
        ] {
            assert!(looks_like_image(yes), "{yes}");
        }
        for no in [
            "kube-system/kubelet",
            "thanos-store.monitoring.svc:10901",
            "/etc/a:b",
            "http://a/b:1",
            "0.0.0.0:9090",
            "busybox:1.36",
            "a/B:1",
            "a/b:",
            "a/b@sha256:12",
            "",
        ] {
            assert!(!looks_like_image(no), "{no}");
        }
        assert_eq!(
            normalise("busybox").as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(normalise("index.docker.io/a/b:1").as_deref(), Some("docker.io/a/b:1"));
    }

    #[test]
    fn each_node_lists_its_clusters_images_and_kubeadms_only_on_a_control_plane() {
        let inv = crate::inventory::parse(
            std::path::Path::new("inventory.toml"),
            "[[clusters]]\nname = \"c1\"\nrole = \"central\"\nlb_ip = \"10.0.0.10\"\ndomain = \"c1.test\"\nvip = \"10.0.0.9\"\n\n\
             [[clusters]]\nname = \"c2\"\nrole = \"edge\"\nlb_ip = \"10.0.0.20\"\ndomain = \"c2.test\"\n\n\
             [[nodes]]\nname = \"cp1\"\naddress = \"10.0.0.1\"\ncluster = \"c1\"\nrole = \"control-plane\"\n\n\
             [[nodes]]\nname = \"w1\"\naddress = \"10.0.0.2\"\ncluster = \"c1\"\nrole = \"worker\"\n\n\
             [[nodes]]\nname = \"cp2\"\naddress = \"10.0.0.3\"\ncluster = \"c2\"\n",
        )
        .expect("a valid inventory");
        let image = |r: &str, clusters: &[&str], control_plane: bool| {
            (
                WantedImage {
                    reference: r.into(),
                    clusters: clusters.iter().map(|c| c.to_string()).collect(),
                    control_plane,
                },
                r.to_string(),
            )
        };
        let lists = node_lists(
            &inv,
            &[
                image("registry.k8s.io/etcd:3.6.5-0", &["c1", "c2"], true),
                image("registry.k8s.io/pause:3.10.1", &["c1", "c2"], false),
                image("quay.io/thanos/thanos:v0.39.2", &["c1"], false),
            ],
        );
        let names = |node: &str| -> Vec<&str> { lists[node].lines().filter_map(|l| l.split('\t').next()).collect() };
        assert_eq!(
            names("cp1"),
            [
                "registry.k8s.io/etcd:3.6.5-0",
                "registry.k8s.io/pause:3.10.1",
                "quay.io/thanos/thanos:v0.39.2"
            ]
        );
        assert_eq!(
            names("w1"),
            ["registry.k8s.io/pause:3.10.1", "quay.io/thanos/thanos:v0.39.2"]
        );
        assert_eq!(
            names("cp2"),
            ["registry.k8s.io/etcd:3.6.5-0", "registry.k8s.io/pause:3.10.1"]
        );
        assert!(lists["w1"].contains("\tregistry.k8s.io_pause_3.10.1.tar\n"));
        // Merged, an image stays control-plane-only only when every source says so.
        let merged = merge(
            vec![image("a:1", &["c1"], true).0],
            vec![image("a:1", &["c2"], false).0, image("b:1", &["c1"], true).0],
        );
        assert!(!merged[0].control_plane && merged[1].control_plane);
        assert_eq!(merged[0].clusters.len(), 2);
    }

    #[test]
    fn archive_names_are_file_names() {
        assert_eq!(
            archive_name("quay.io/cilium/cilium:v1.18.4"),
            "quay.io_cilium_cilium_v1.18.4.tar"
        );
        assert_eq!(archive_name("a/b@sha256:ab"), "a_b_sha256_ab.tar");
    }
}
