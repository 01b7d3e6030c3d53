//! `[sources]`: every download of the shipped install comes from these settings. The shipped
//! plan is rendered with every source pointed at a loopback mirror (and, separately, at a
//! bundle); no other host may appear in any rendered command or copied file. Pure planning.

mod common;

use common::plans::{plans_of, rhel};
use common::repo;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kubeboot::facts::Facts;
use kubeboot::inventory;
use kubeboot::plan::{Action, Decision, NodePlan};
use kubeboot::task::{CopyFiles, Run, Wait};

/// The shipped inventory with `extra` appended, written next to it in a temporary folder.
fn inventory_with(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("inventory.toml")).expect("the shipped inventory");
    let path = dir.join("inventory.toml");
    std::fs::write(&path, format!("{text}\n{extra}")).expect("write the inventory");
    path
}

/// Every text a node receives: commands, guards, copied files (jump-host tasks never reach it).
fn node_texts(plan: &NodePlan) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
        let at = format!("{}/{}/{}", plan.node, t.stage, t.task);
        match &t.action {
            Action::Run(Run { command }) => out.push((at.clone(), command.clone())),
            Action::Wait(Wait { until, .. }) => out.push((at.clone(), until.clone())),
            // Sent by kubeboot itself, from the jump host: nothing of it reaches the node.
            Action::Http(_) | Action::S3Buckets(_) | Action::Fetch(_) => {}
            Action::Copy(CopyFiles { files, .. }) => {
                for f in files {
                    out.push((
                        format!("{at} {}", f.dest),
                        String::from_utf8_lossy(&f.content).into_owned(),
                    ));
                }
            }
        }
        if let Some(unless) = &t.unless {
            out.push((format!("{at} (unless)"), unless.clone()));
        }
    }
    out
}

/// Hosts of every `scheme://host` URL in the texts, with where each was found.
fn url_hosts(texts: &[(String, String)]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (at, text) in texts {
        for line in text.lines() {
            let mut rest = line;
            while let Some(i) = rest.find("://") {
                let after = &rest[i + 3..];
                let end = after
                    .find(|c: char| {
                        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '{' | '}' | '$'))
                    })
                    .unwrap_or(after.len());
                let hostport = &after[..end];
                let host = hostport.rsplit_once(':').map_or(hostport, |(h, p)| {
                    if p.chars().all(|c| c.is_ascii_digit()) {
                        h
                    } else {
                        hostport
                    }
                });
                // s3:// names a bucket at the inventory's S3 endpoint, not a host.
                if !rest[..i].ends_with("s3") {
                    out.push((host.to_string(), at.clone(), line.trim().to_string()));
                }
                rest = after;
            }
        }
    }
    out
}

/// Hosts that are not download sources: the inventory's own services and the clusters' insides.
fn is_own(host: &str, inv: &inventory::Inventory) -> bool {
    let s3 = inv.vars.get("s3_host").and_then(|v| v.as_str()).unwrap_or_default();
    host.is_empty()
        || host == s3
        || host.starts_with('$')
        || host.starts_with("{{")
        || host == "localhost"
        || host == "127.0.0.1"
        || host.ends_with(".svc")
        || host.contains(".svc.")
        || inv.clusters.iter().any(|c| {
            c.lb_ip.is_some_and(|ip| ip.to_string() == host) || c.domain.as_deref().is_some_and(|d| host.ends_with(d))
        })
}

const ALL_AT_THE_MIRROR: &str = r#"
[sources.apt.kubernetes]
url = "http://127.0.0.9:8080/k8s/v{{ kubernetes_version }}/deb/"
key = "http://127.0.0.9:8080/k8s/v{{ kubernetes_version }}/deb/Release.key"
[sources.apt.containerd]
url = "http://127.0.0.9:8080/docker/{{ os_id }}"
key = "http://127.0.0.9:8080/docker/{{ os_id }}/gpg"
[sources.apt.distro]
url = "http://127.0.0.9:8080/{{ os_id }}"
suite = ""
components = "main"
key = "http://127.0.0.9:8080/{{ os_id }}/key.asc"
[sources.dnf.kubernetes]
url = "http://127.0.0.9:8080/k8s/rpm/"
key = "http://127.0.0.9:8080/k8s/rpm/repodata/repomd.xml.key"
[sources.dnf.containerd]
url = "http://127.0.0.9:8080/docker/rhel/$releasever/$basearch/stable"
key = "http://127.0.0.9:8080/docker/rhel/gpg"
[sources.dnf.distro]
url = "http://127.0.0.9:8080/rhel/$releasever/"
[sources.releases.helm]
url = "http://127.0.0.9:8080/helm/helm-v{{ helm_version }}-linux-amd64.tar.gz"
[sources.releases.kustomize]
url = "http://127.0.0.9:8080/kustomize/kustomize_v{{ kustomize_version }}_linux_amd64.tar.gz"
[sources.charts]
cilium = { repo = "http://127.0.0.9:8080/charts" }
longhorn = { repo = "http://127.0.0.9:8080/charts" }
kube-prometheus-stack = { repo = "http://127.0.0.9:8080/charts" }
grafana = { repo = "http://127.0.0.9:8080/charts" }
opensearch = { repo = "http://127.0.0.9:8080/charts" }
fluent-bit = { repo = "http://127.0.0.9:8080/charts" }
[sources.registries."docker.io"]
mirror = "http://127.0.0.9:8080"
[sources.registries."registry.k8s.io"]
mirror = "http://127.0.0.9:8080"
[sources.registries."quay.io"]
mirror = "http://127.0.0.9:8080"
[sources.registries."ghcr.io"]
mirror = "http://127.0.0.9:8080"
[sources.registries."cr.fluentbit.io"]
mirror = "http://127.0.0.9:8080"
"#;

fn foreign_hosts(inventory: &Path, allowed: &str) -> Vec<String> {
    let inv = inventory::load(inventory).unwrap_or_else(|d| panic!("{d}"));
    let mirrors: BTreeSet<&str> = inv.sources.registries.keys().map(String::as_str).collect();
    let mut foreign = Vec::new();
    for facts in [Facts::assumed(), rhel()] {
        for p in plans_of(inventory, &facts) {
            for (host, at, line) in url_hosts(&node_texts(&p)) {
                // hosts.toml names the upstream it mirrors (`server = "https://quay.io"`), written by the task and
                // compared by its guard: identity, not a download.
                let upstream = (line.starts_with("echo 'server = ") || line.starts_with("grep -qxF 'server = "))
                    && mirrors.iter().any(|m| line.contains(m))
                    || line.contains("registry-1.docker.io");
                if host != allowed && !is_own(&host, &inv) && !upstream {
                    foreign.push(format!("{host} in {at}: {line}"));
                }
            }
        }
    }
    foreign
}

#[test]
fn with_every_source_at_a_loopback_mirror_no_other_host_is_contacted() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let inventory = inventory_with(dir.path(), &format!("[sources]\n{}", ALL_AT_THE_MIRROR));
    let foreign = foreign_hosts(&inventory, "127.0.0.9");
    assert!(foreign.is_empty(), "hosts outside [sources]:\n{}", foreign.join("\n"));

    // And the defaults really are today's internet locations (so the check above can fail).
    let shipped = foreign_hosts(&repo().join("inventory.toml"), "127.0.0.9");
    for host in [
        "pkgs.k8s.io",
        "download.docker.com",
        "get.helm.sh",
        "github.com",
        "helm.cilium.io",
    ] {
        assert!(
            shipped.iter().any(|f| f.starts_with(host)),
            "{host} is not a default source"
        );
    }
}

#[test]
fn with_a_bundle_everything_comes_through_the_nodes_own_connection() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::create_dir_all(dir.path().join("bundle")).expect("a bundle folder");
    let inventory = inventory_with(dir.path(), "[sources]\nbundle = \"bundle\"\n");
    let foreign = foreign_hosts(&inventory, "127.0.0.1");
    assert!(
        foreign.is_empty(),
        "hosts other than the bundle:\n{}",
        foreign.join("\n")
    );
    let plans = plans_of(&inventory, &Facts::assumed());
    let all: String = node_texts(&plans[0]).into_iter().map(|(_, t)| t).collect();
    assert!(
        all.contains("http://127.0.0.1:18470/apt/ubuntu-"),
        "the bundle's apt repository"
    );
    assert!(
        all.contains("http://127.0.0.1:18470/releases/helm/helm-v"),
        "helm from the bundle"
    );
    assert!(all.contains("base='http://127.0.0.1:18470/images/'"), "images");

    // A RHEL node reads the bundle's dnf repository (no signature of its own: gpgcheck=0), and
    // with the distribution's key set, checks the packages' own signatures against it.
    let repo_task = |inventory: &Path| -> String {
        let plans = plans_of(inventory, &rhel());
        node_texts(&plans[0])
            .into_iter()
            .find(|(at, _)| at.ends_with("/distribution repository (dnf)"))
            .map(|(_, t)| t)
            .expect("the dnf repository task runs on a RHEL node")
    };
    let task = repo_task(&inventory);
    assert!(task.contains("url='http://127.0.0.1:18470/dnf/rhel-9/'"), "{task}");
    assert!(
        task.contains("echo 'gpgcheck=0'") && !task.contains("gpgcheck=1"),
        "{task}"
    );
    let keyed = inventory_with(
        dir.path(),
        "[sources]\nbundle = \"bundle\"\n[sources.dnf.distro]\nkey = \"file:///etc/pki/rpm-gpg/RPM-GPG-KEY-Rocky-9\"\n",
    );
    let task = repo_task(&keyed);
    assert!(task.contains("url='http://127.0.0.1:18470/dnf/rhel-9/'"), "{task}");
    assert!(
        task.contains("echo 'gpgcheck=1'")
            && task.contains("echo 'gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-Rocky-9'"),
        "{task}"
    );
}

#[test]
fn the_sources_urls_reach_the_preflight_check() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let inventory = inventory_with(dir.path(), &format!("[sources]\n{}", ALL_AT_THE_MIRROR));
    let plans = plans_of(&inventory, &Facts::assumed());
    let check = plans[0]
        .tasks
        .iter()
        .find(|t| t.task == "sources answer")
        .expect("preflight checks the sources");
    let Action::Run(Run { command }) = &check.action else {
        panic!("a run task")
    };
    assert!(
        command.contains("check 'apt kubernetes' 'http://127.0.0.9:8080/k8s/v1.34/deb/'"),
        "{command}"
    );
    assert!(
        command.contains("check 'registry mirror for quay.io' 'http://127.0.0.9:8080'"),
        "{command}"
    );
    assert!(command.contains("did not answer from node-194"), "{command}");

    // An OCI chart repository is asked at its registry's API base (any HTTP answer, 401 too, counts).
    let inventory = inventory_with(
        dir.path(),
        &format!("[sources]\n{}", ALL_AT_THE_MIRROR).replace(
            "cilium = { repo = \"http://127.0.0.9:8080/charts\" }",
            "cilium = { repo = \"oci://127.0.0.9:8443/charts\" }",
        ),
    );
    let plans = plans_of(&inventory, &Facts::assumed());
    let check = plans[0]
        .tasks
        .iter()
        .find(|t| t.task == "sources answer")
        .expect("preflight checks the sources");
    let Action::Run(Run { command }) = &check.action else {
        panic!("a run task")
    };
    assert!(
        command.contains("check 'chart cilium' 'https://127.0.0.9:8443/v2/'"),
        "{command}"
    );
    assert!(!command.contains("oci://"), "{command}");
}

fn problems(extra: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let inventory = inventory_with(dir.path(), extra);
    match inventory::load(&inventory) {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn bad_sources_are_located_errors_with_a_hint() {
    let lines = std::fs::read_to_string(repo().join("inventory.toml"))
        .expect("the shipped inventory")
        .lines()
        .count();
    let at = |n: usize| format!("inventory.toml:{}:", lines + 1 + n);

    let p = problems("[sources]\nbundel = \"b\"\n");
    assert!(
        p.contains("unknown key `bundel` in [sources]") && p.contains("did you mean `bundle`?"),
        "{p}"
    );
    assert!(p.contains(&at(2)), "{p}");

    let p = problems("[sources.releases.helm]\nsha256 = \"abc\"\n");
    assert!(p.contains("sha256 of release `helm` is not 64 hex digits"), "{p}");

    let p = problems("[sources.releases.k9s]\nurl = \"https://example.com/k9s.tar.gz\"\n");
    assert!(p.contains("release `k9s` has no `sha256`"), "{p}");

    let p = problems("[sources.apt.kubernets]\nurl = \"http://m/\"\n");
    assert!(
        p.contains("unknown apt repository `kubernets`") && p.contains("did you mean `kubernetes`?"),
        "{p}"
    );

    let p = problems("[sources]\ncontainerd = \"dokcer\"\n");
    assert!(
        p.contains("unknown containerd source `dokcer`") && p.contains("`docker`"),
        "{p}"
    );

    let p = problems("[sources.registries.\"quay.io\"]\nmirror = \"https://m\"\npassword = \"hunter2\"\n");
    assert!(p.contains("would put a secret in the inventory file"), "{p}");
    assert!(!p.contains("hunter2"), "{p}");
}
