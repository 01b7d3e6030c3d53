//! `[sources]`: where each kind of artifact the install downloads comes from (OS package
//! repositories, release binaries, Helm charts, container registries, a proxy), and the bundle
//! folder kubeboot serves to the nodes itself. Defaults are today's internet locations; with a
//! bundle they are the bundle's folders. The playbooks and assets read only these settings.
//!
//! Every text may hold template expressions (`{{ kubernetes_version }}`), rendered per node with
//! the node's variables and facts, so one setting serves clusters of different versions.
//!
//! One job (the `[sources]` table: its model, loading and checks), kept in one file past ~600 lines.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::load::{BUNDLE_PORT_HINT, Loader, resolve_path, table};
use super::model::SecretSource;
use crate::diag::closest;
use crate::spanned::{Node as Toml, Value};

/// Where kubeadm takes its own images from (kubeadm's default `imageRepository`).
// checked: kubernetes cmd/kubeadm/app/apis/kubeadm/v1beta4 defaults (DefaultImageRepository = "registry.k8s.io")
pub const DEFAULT_IMAGE_REPOSITORY: &str = "registry.k8s.io";

/// The port on each node's loopback a bundle is served on, unless `bundle_port` says otherwise.
pub const DEFAULT_BUNDLE_PORT: u16 = 18470;

const KEYS: &[&str] = &[
    "bundle",
    "bundle_port",
    "proxy",
    "no_proxy",
    "containerd",
    "image_repository",
    "apt",
    "dnf",
    "releases",
    "charts",
    "registries",
];
/// The package repositories of each family the shipped stages configure.
pub const REPOS: &[&str] = &["kubernetes", "containerd", "distro"];
const APT_KEYS: &[&str] = &["url", "suite", "components", "key"];
const DNF_KEYS: &[&str] = &["url", "key"];
const RELEASE_KEYS: &[&str] = &["url", "sha256"];
const CHART_KEYS: &[&str] = &["repo", "archive"];
const REGISTRY_KEYS: &[&str] = &[
    "mirror",
    "ca_file",
    "skip_verify",
    "username_env",
    "username_file",
    "password_env",
    "password_file",
];

/// Where containerd comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerdFrom {
    /// Docker's `containerd.io` package, from the `containerd` repository (Docker's or a mirror of it).
    #[default]
    Docker,
    /// The distribution's own `containerd` package (Debian, Ubuntu), from the `distro` repository.
    Distro,
}

impl ContainerdFrom {
    /// The word used in the inventory and the templates.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerdFrom::Docker => "docker",
            ContainerdFrom::Distro => "distro",
        }
    }
}

/// One OS package repository. An empty `url` means "not configured by kubeboot" (for `distro`:
/// the node keeps its own sources).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Repo {
    pub url: String,
    /// apt only: the suite (`/` for a flat repository; empty = the node's release code name).
    pub suite: String,
    /// apt only: the components (`stable`, `main`...), space separated.
    pub components: String,
    /// The signing key's URL; empty = the repository is trusted without one (a bundle: its
    /// files are checked by sha256 before they are carried in).
    pub key: String,
}

/// One release binary download. The sha256 is always required.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Release {
    pub url: String,
    pub sha256: String,
}

/// Where one Helm chart comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chart {
    /// The chart repository URL (an `index.yaml` below it).
    pub repo: String,
    /// A chart archive on the jump host (`NAME-VERSION.tgz`), put into the bundle's chart
    /// repository by `kubeboot bundle`.
    pub archive: Option<PathBuf>,
}

/// A mirror for one upstream container registry, written as containerd's
/// `/etc/containerd/certs.d/<registry>/hosts.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Registry {
    /// The mirror's URL (`https://mirror.example:5000`).
    pub mirror: String,
    /// A CA certificate file on the jump host for the mirror's TLS certificate; copied to the node.
    pub ca_file: Option<PathBuf>,
    /// That file's text (PEM), read when the inventory is loaded.
    pub ca_pem: String,
    /// Do not verify the mirror's TLS certificate.
    pub skip_verify: bool,
    pub username: Option<SecretSource>,
    pub password: Option<SecretSource>,
}

/// `[sources]` of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// A bundle folder (`kubeboot bundle --out`) to serve to every node over its SSH connection.
    pub bundle: Option<PathBuf>,
    /// The port on each node's 127.0.0.1 the bundle is served on.
    pub bundle_port: u16,
    /// An HTTP(S) proxy for the nodes' downloads (apt, dnf, curl, containerd); empty = none.
    pub proxy: String,
    /// Hosts and networks reached without the proxy.
    pub no_proxy: Vec<String>,
    pub containerd: ContainerdFrom,
    /// kubeadm's `imageRepository`: where the control plane's images (kube-apiserver, etcd,
    /// coredns, pause...) come from; a registry host with an optional path (`harbor.example/k8s`).
    pub image_repository: String,
    /// Debian/Ubuntu repositories by name (`kubernetes`, `containerd`, `distro`).
    pub apt: BTreeMap<String, Repo>,
    /// RHEL repositories by name.
    pub dnf: BTreeMap<String, Repo>,
    /// Release binaries by name (`helm`, `kustomize`, ...).
    pub releases: BTreeMap<String, Release>,
    /// Helm charts by chart name.
    pub charts: BTreeMap<String, Chart>,
    /// Registry mirrors by upstream registry host (`docker.io`, `registry.k8s.io`...).
    pub registries: BTreeMap<String, Registry>,
    /// Where `[sources]` starts (1-based line; 0 = not in the file), for messages.
    pub line: usize,
    /// The texts the operator wrote (`releases.helm.url` ...): only these must render for every
    /// node; a default that needs variables this inventory does not set is simply not offered.
    pub written: std::collections::BTreeSet<String>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            bundle: None,
            bundle_port: DEFAULT_BUNDLE_PORT,
            proxy: String::new(),
            no_proxy: Vec::new(),
            containerd: ContainerdFrom::Docker,
            image_repository: DEFAULT_IMAGE_REPOSITORY.into(),
            apt: internet_apt(),
            dnf: internet_dnf(),
            releases: internet_releases(),
            charts: internet_charts(),
            registries: BTreeMap::new(),
            line: 0,
            written: Default::default(),
        }
    }
}

const ARCH: &str = "{{ 'arm64' if arch == 'aarch64' else 'amd64' }}";
const DOCKER_RPM_OS: &str = "{{ 'rhel' if os_id == 'rhel' else 'centos' }}";

// checked: https://kubernetes.io/docs/setup/production-environment/tools/kubeadm/install-kubeadm/
// (pkgs.k8s.io/core:/stable:/vX.Y/deb/ with suite "/" and Release.key; rpm/ with repodata/repomd.xml.key)
// and https://docs.docker.com/engine/install/ubuntu/ (download.docker.com/linux/<os>, suite = code
// name, component stable, key /gpg); docker-ce.repo's [docker-ce-stable] baseurl and gpgkey.
fn internet_apt() -> BTreeMap<String, Repo> {
    let k8s = "https://pkgs.k8s.io/core:/stable:/v{{ kubernetes_version }}/deb/";
    BTreeMap::from([
        (
            "kubernetes".into(),
            Repo {
                url: k8s.into(),
                suite: "/".into(),
                components: String::new(),
                key: format!("{k8s}Release.key"),
            },
        ),
        (
            "containerd".into(),
            Repo {
                url: "https://download.docker.com/linux/{{ os_id }}".into(),
                suite: String::new(),
                components: "stable".into(),
                key: "https://download.docker.com/linux/{{ os_id }}/gpg".into(),
            },
        ),
        ("distro".into(), Repo::default()),
    ])
}

fn internet_dnf() -> BTreeMap<String, Repo> {
    let k8s = "https://pkgs.k8s.io/core:/stable:/v{{ kubernetes_version }}/rpm/";
    BTreeMap::from([
        (
            "kubernetes".into(),
            Repo {
                url: k8s.into(),
                key: format!("{k8s}repodata/repomd.xml.key"),
                ..Repo::default()
            },
        ),
        (
            "containerd".into(),
            Repo {
                url: format!("https://download.docker.com/linux/{DOCKER_RPM_OS}/$releasever/$basearch/stable"),
                key: format!("https://download.docker.com/linux/{DOCKER_RPM_OS}/gpg"),
                ..Repo::default()
            },
        ),
        ("distro".into(), Repo::default()),
    ])
}

// checked: helm.sh/docs/intro/install (get.helm.sh/helm-vX.Y.Z-linux-ARCH.tar.gz) and kustomize's
// GitHub release assets (kustomize%2FvX.Y.Z/kustomize_vX.Y.Z_linux_ARCH.tar.gz).
fn internet_releases() -> BTreeMap<String, Release> {
    BTreeMap::from([
        (
            "helm".into(),
            Release {
                url: format!("https://get.helm.sh/helm-v{{{{ helm_version }}}}-linux-{ARCH}.tar.gz"),
                sha256: "{{ helm_sha256_arm64 if arch == 'aarch64' else helm_sha256_amd64 }}".into(),
            },
        ),
        (
            "kustomize".into(),
            Release {
                url: format!(
                    "https://github.com/kubernetes-sigs/kustomize/releases/download/kustomize%2Fv{{{{ kustomize_version }}}}/kustomize_v{{{{ kustomize_version }}}}_linux_{ARCH}.tar.gz"
                ),
                sha256: "{{ kustomize_sha256_arm64 if arch == 'aarch64' else kustomize_sha256_amd64 }}".into(),
            },
        ),
    ])
}

// checked: each chart's documented repository (helm.cilium.io, charts.longhorn.io,
// prometheus-community.github.io/helm-charts, grafana.github.io/helm-charts,
// opensearch-project.github.io/helm-charts, fluent.github.io/helm-charts).
fn internet_charts() -> BTreeMap<String, Chart> {
    [
        ("cilium", "https://helm.cilium.io/"),
        ("longhorn", "https://charts.longhorn.io"),
        (
            "kube-prometheus-stack",
            "https://prometheus-community.github.io/helm-charts",
        ),
        ("grafana", "https://grafana.github.io/helm-charts"),
        ("opensearch", "https://opensearch-project.github.io/helm-charts/"),
        ("fluent-bit", "https://fluent.github.io/helm-charts"),
    ]
    .into_iter()
    .map(|(name, repo)| {
        (
            name.to_string(),
            Chart {
                repo: repo.into(),
                archive: None,
            },
        )
    })
    .collect()
}

/// The folders of a bundle (what `kubeboot bundle` writes), as URLs below the bundle's address.
pub mod layout {
    /// One flat apt repository per distribution release: every package any stage installs.
    pub const APT: &str = "{{ sources.bundle_url }}/apt/{{ os_id }}-{{ os_version }}/";
    /// One dnf repository per distribution major release.
    pub const DNF: &str = "{{ sources.bundle_url }}/dnf/{{ os_id }}-{{ os_version_major }}/";
    /// One Helm chart repository (an `index.yaml` and the archives).
    pub const CHARTS: &str = "{{ sources.bundle_url }}/charts/";
    /// Release binaries: `releases/<name>/<file name of the upstream URL>`.
    pub const RELEASES: &str = "{{ sources.bundle_url }}/releases/";
    /// Container images as OCI archives, imported into containerd.
    pub const IMAGES: &str = "{{ sources.bundle_url }}/images/";
}

/// The node-side address a bundle is forwarded to: only the node itself can reach it.
pub const BUNDLE_ADDRESS: &str = "127.0.0.1";

impl Sources {
    /// `http://127.0.0.1:PORT` for a node whose bundle is served on `port`, or "" without a bundle.
    pub fn bundle_url(&self, port: u16) -> String {
        match self.bundle {
            Some(_) => format!("http://{BUNDLE_ADDRESS}:{port}"),
            None => String::new(),
        }
    }
}

/// What the operator wrote for one entry, field by field, over the defaults.
fn text_field<'n>(
    r: &mut Loader<'_>,
    written: &mut std::collections::BTreeSet<String>,
    at: &str,
    t: &'n Toml,
    key: &str,
    into: &mut String,
) -> Option<&'n Toml> {
    let (value, span) = r.string_in(t, key)?;
    *into = value;
    written.insert(format!("{at}.{key}"));
    Some(span)
}

impl Loader<'_> {
    /// `[sources]`, over the internet defaults; with a bundle, unset sources are the bundle's.
    pub(super) fn sources(&mut self, doc: &Toml) -> Sources {
        let mut s = Sources::default();
        let Some(v) = doc.get("sources") else {
            return s;
        };
        let Some(t) = table(v) else {
            self.wrong_type("sources", v, "a table");
            return s;
        };
        s.line = v.line;
        self.check_keys(t, KEYS, &[], "[sources]");
        if let Some((raw, span)) = self.string_in(t, "bundle") {
            let dir = resolve_path(self.base, &raw);
            if !dir.is_dir() {
                self.error(
                    span,
                    format!("bundle folder {} does not exist", dir.display()),
                    "build one with `kubeboot bundle --out DIR`, or give the path of a copied bundle",
                );
            }
            s.bundle = Some(dir);
        }
        if let Some(port) = self.port_in(t, "bundle_port", BUNDLE_PORT_HINT) {
            s.bundle_port = port;
        }
        if s.bundle.is_some() {
            s.use_bundle_defaults();
        }
        if let Some((proxy, span)) = self.string_in(t, "proxy") {
            if !proxy.is_empty() && !proxy.starts_with("http://") && !proxy.starts_with("https://") {
                self.error(
                    span,
                    format!("proxy `{proxy}` is not an http:// or https:// URL"),
                    "write it like \"http://proxy.example:3128\"",
                );
            }
            s.proxy = proxy;
        }
        s.no_proxy = self.string_list(t, "no_proxy");
        if let Some((c, span)) = self.string_in(t, "containerd") {
            s.containerd = match c.as_str() {
                "docker" => ContainerdFrom::Docker,
                "distro" => ContainerdFrom::Distro,
                other => {
                    let hint = match closest(other, ["docker", "distro"]) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => "`containerd` is `docker` (Docker's containerd.io) or `distro` (the distribution's containerd)".into(),
                    };
                    self.error(span, format!("unknown containerd source `{other}`"), hint);
                    ContainerdFrom::Docker
                }
            };
        }
        if let Some((repo, span)) = self.string_in(t, "image_repository") {
            if repo.is_empty() || repo.contains("://") || repo.ends_with('/') || repo.contains(char::is_whitespace) {
                self.error(
                    span,
                    format!("image_repository `{repo}` is not a registry host with an optional path"),
                    "write it as kubeadm's imageRepository, like \"registry.k8s.io\" or \"harbor.example:5000/k8s\" (no http://)",
                );
            }
            s.image_repository = repo;
            s.written.insert("image_repository".into());
        }
        self.repos(t, "apt", APT_KEYS, &mut s.apt, &mut s.written);
        self.repos(t, "dnf", DNF_KEYS, &mut s.dnf, &mut s.written);
        self.releases(t, &mut s.releases, &mut s.written);
        self.charts(t, &mut s.charts, &mut s.written);
        if t.get("proxy").is_some() {
            s.written.insert("proxy".into());
        }
        for name in s.registries.keys() {
            s.written.insert(format!("registries.{name}.mirror"));
        }
        self.registries(t, &mut s.registries);
        s
    }

    fn string_list(&mut self, t: &Toml, key: &str) -> Vec<String> {
        let Some(v) = t.get(key) else {
            return Vec::new();
        };
        let Value::Seq(items) = &v.value else {
            self.wrong_type(key, v, "a list of strings");
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Value::Str(s) => out.push(s.clone()),
                _ => self.wrong_type(key, item, "a string"),
            }
        }
        out
    }

    /// The sub-tables of `[sources.<key>]`, each named; wrong shapes reported.
    fn named_tables<'n>(&mut self, t: &'n Toml, key: &str) -> Vec<(String, &'n Toml, &'n Toml)> {
        let Some(v) = t.get(key) else {
            return Vec::new();
        };
        let Some(inner) = table(v) else {
            self.wrong_type(key, v, "a table");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, k, v) in inner.entries() {
            match table(v) {
                Some(entry) => out.push((name, k, entry)),
                None => {
                    let kind = self.kind(v);
                    self.error(
                        v,
                        format!("[sources.{key}] `{name}` must be a table, not {kind}"),
                        format!("write it as `{name} = {{ url = \"...\" }}` or a [sources.{key}.{name}] section"),
                    );
                }
            }
        }
        out
    }

    fn repos(
        &mut self,
        t: &Toml,
        family: &str,
        keys: &[&str],
        into: &mut BTreeMap<String, Repo>,
        written: &mut std::collections::BTreeSet<String>,
    ) {
        for (name, span, entry) in self.named_tables(t, family) {
            let Some(repo) = into.get_mut(&name) else {
                let hint = match closest(&name, REPOS.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("the {family} repositories are {}", REPOS.join(", ")),
                };
                self.error(span, format!("unknown {family} repository `{name}`"), hint);
                continue;
            };
            self.check_keys(entry, keys, &[], &format!("[sources.{family}.{name}]"));
            let at = format!("{family}.{name}");
            text_field(self, written, &at, entry, "url", &mut repo.url);
            text_field(self, written, &at, entry, "key", &mut repo.key);
            if family == "apt" {
                text_field(self, written, &at, entry, "suite", &mut repo.suite);
                text_field(self, written, &at, entry, "components", &mut repo.components);
            }
        }
    }

    fn releases(
        &mut self,
        t: &Toml,
        into: &mut BTreeMap<String, Release>,
        written: &mut std::collections::BTreeSet<String>,
    ) {
        for (name, span, entry) in self.named_tables(t, "releases") {
            self.check_keys(entry, RELEASE_KEYS, &[], &format!("[sources.releases.{name}]"));
            let release = into.entry(name.clone()).or_default();
            let at = format!("releases.{name}");
            text_field(self, written, &at, entry, "url", &mut release.url);
            let sha_span = text_field(self, written, &at, entry, "sha256", &mut release.sha256);
            if release.url.is_empty() {
                self.error(
                    span,
                    format!("release `{name}` has no `url`"),
                    "add `url = \"https://...\"`",
                );
            }
            if release.sha256.is_empty() {
                self.error(
                    span,
                    format!("release `{name}` has no `sha256`"),
                    "every release download is checked: add `sha256 = \"<64 hex digits>\"`",
                );
            } else if let Some(sha_span) = sha_span
                && !release.sha256.contains("{{")
                && !(release.sha256.len() == 64 && release.sha256.chars().all(|c| c.is_ascii_hexdigit()))
            {
                self.error(
                    sha_span,
                    format!("sha256 of release `{name}` is not 64 hex digits"),
                    "copy it from the release's checksum file (sha256sum FILE)",
                );
            }
        }
    }

    fn charts(
        &mut self,
        t: &Toml,
        into: &mut BTreeMap<String, Chart>,
        written: &mut std::collections::BTreeSet<String>,
    ) {
        for (name, span, entry) in self.named_tables(t, "charts") {
            self.check_keys(entry, CHART_KEYS, &[], &format!("[sources.charts.{name}]"));
            let chart = into.entry(name.clone()).or_default();
            text_field(self, written, &format!("charts.{name}"), entry, "repo", &mut chart.repo);
            if let Some(path) = self.path(entry, "archive") {
                if !path.is_file() {
                    self.error(
                        span,
                        format!("chart archive {} does not exist", path.display()),
                        "give the path of a chart .tgz (helm pull or helm package makes one)",
                    );
                }
                chart.archive = Some(path);
            }
            if chart.repo.is_empty() && chart.archive.is_none() {
                self.error(
                    span,
                    format!("chart `{name}` has neither `repo` nor `archive`"),
                    "add `repo = \"https://...\"` or `archive = \"charts/NAME-VERSION.tgz\"`",
                );
            }
        }
    }

    fn registries(&mut self, t: &Toml, into: &mut BTreeMap<String, Registry>) {
        for (name, span, entry) in self.named_tables(t, "registries") {
            self.check_keys(
                entry,
                REGISTRY_KEYS,
                &["username", "password"],
                &format!("[sources.registries.\"{name}\"]"),
            );
            let mut reg = Registry::default();
            if let Some((mirror, mspan)) = self.string_in(entry, "mirror") {
                if !mirror.starts_with("http://") && !mirror.starts_with("https://") {
                    self.error(
                        mspan,
                        format!("mirror `{mirror}` of {name} is not an http:// or https:// URL"),
                        "write it like \"https://mirror.example:5000\"",
                    );
                }
                reg.mirror = mirror;
            } else {
                self.error(
                    span,
                    format!("registry `{name}` has no `mirror`"),
                    "add `mirror = \"https://...\"`",
                );
            }
            if let Some(path) = self.path(entry, "ca_file") {
                match std::fs::read_to_string(&path) {
                    Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => reg.ca_pem = pem,
                    Ok(_) => self.error(
                        span,
                        format!(
                            "ca_file {} of registry `{name}` holds no PEM certificate",
                            path.display()
                        ),
                        "give the mirror's CA certificate in PEM form (-----BEGIN CERTIFICATE-----)",
                    ),
                    Err(e) => self.error(
                        span,
                        format!("cannot read ca_file {} of registry `{name}`: {e}", path.display()),
                        "give the path of the mirror's CA certificate (PEM)",
                    ),
                }
                reg.ca_file = Some(path);
            }
            reg.skip_verify = self.boolean_in(entry, "skip_verify").unwrap_or(false);
            reg.username = self.secret_source(entry, "username");
            reg.password = self.secret_source(entry, "password");
            if reg.username.is_some() != reg.password.is_some() {
                self.error(
                    span,
                    format!("registry `{name}` has a username or a password, not both"),
                    "set both username_env/_file and password_env/_file, or neither",
                );
            }
            into.insert(name, reg);
        }
    }
}

impl Sources {
    /// Every package repository, release, chart and image from the bundle's folders.
    fn use_bundle_defaults(&mut self) {
        let flat = |url: &str| Repo {
            url: url.into(),
            suite: "./".into(),
            components: String::new(),
            key: String::new(),
        };
        // One repository holds every package, the distribution's included: kubernetes and
        // containerd need no entries of their own.
        for repos in [&mut self.apt, &mut self.dnf] {
            for name in ["kubernetes", "containerd"] {
                repos.insert(name.into(), Repo::default());
            }
        }
        self.apt.insert("distro".into(), flat(layout::APT));
        self.dnf.insert(
            "distro".into(),
            Repo {
                url: layout::DNF.into(),
                ..Repo::default()
            },
        );
        for (name, release) in self.releases.iter_mut() {
            // The same file name, below the bundle; the sha256 stays what it was.
            let file = release.url.rsplit('/').next().unwrap_or_default().to_string();
            release.url = format!("{}{name}/{file}", layout::RELEASES);
        }
        for chart in self.charts.values_mut() {
            chart.repo = layout::CHARTS.into();
        }
    }
}
