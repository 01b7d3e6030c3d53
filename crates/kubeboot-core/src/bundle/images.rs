//! Container images for a bundle: the list is read from the objects of the plan's rendered files
//! (manifests, kustomizations' renames) and of its charts as `helm template` renders them (see
//! [`super::charts`]), each image is pulled over the OCI distribution API (from the
//! inventory's registry mirror when `[sources.registries]` names one) and stored as an OCI image
//! layout archive that `ctr -n k8s.io images import` reads. Interrupted blob downloads continue.
//!
//! One job (a bundle's images, from the list to the archives), kept in one file past ~600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::collect::{BundleError, BundleEvent, Item, sha256_file};
use crate::inventory::Inventory;
use crate::plan::{Action, Decision, NodePlan};

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
