//! The offline checks of the shipped playbooks and assets, over the real plan: every node's plan of the shipped
//! inventory, rendered by kubeboot's own templating (the install with Ubuntu and RHEL facts, and each day-two
//! folder), then
//! - every command, `unless` guard, `wait` condition and copied `.sh` script through `dash -n` and
//!   `shellcheck -s sh -S warning`;
//! - the kubeadm config each first control plane receives is the three documents kubeadm reads;
//! - every copied `.yaml`/`.json` parses; every kustomization a node receives builds with `kubectl kustomize`
//!   (one with `helmCharts` is built with the charts stripped, after each entry and its values file are checked
//!   against the value paths the chart takes); every built object has apiVersion, kind and metadata.name, alerts
//!   wait at least 1m and carry a severity, dashboards have a `cluster` variable, and no Secret with data ships
//!   as a file;
//! - each node's Cilium LB IPAM pool and L2 policy are its own cluster's.
//!
//! Needs shellcheck, dash and kubectl (only `kubectl kustomize`, offline); a missing one fails, never skips.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::plans::{rhel, shipped_day_two_plans, shipped_plans};
use common::repo;
use kubeboot::facts::Facts;
use kubeboot::plan::{Action, Decision, NodePlan};
use kubeboot::task::{CopyFiles, Run, Wait};
use serde_json::Value;

/// The day-two folders of the shipped playbooks (one `kubeboot <command>` each).
const DAY_TWO: [&str; 6] = ["kubeconfig", "backup", "reset", "upgrade", "renew-certs", "check"];

/// Every plan the checks cover: the install and each day-two folder, for Ubuntu and RHEL nodes.
fn all_plans() -> Vec<(String, NodePlan)> {
    let mut out = Vec::new();
    for (os, facts) in [("ubuntu", Facts::assumed()), ("rhel", rhel())] {
        for p in shipped_plans(&facts) {
            out.push((format!("{os} install"), p));
        }
        for folder in DAY_TWO {
            for p in shipped_day_two_plans(folder, &facts) {
                out.push((format!("{os} {folder}"), p));
            }
        }
    }
    out
}

/// Runs a program; panics (never skips) when it is not installed.
fn tool(program: &str, args: &[&str], extra: &[PathBuf]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install it: apt-get install shellcheck dash; kubectl): {e}"))
}

#[test]
fn every_rendered_script_parses_as_posix_sh_and_passes_shellcheck() {
    // The same script goes to many nodes: each distinct text is checked once, and named by every place it runs.
    let mut scripts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (what, plan) in all_plans() {
        for t in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
            let at = |part: &str| format!("{what} {}: {}/{} {part}", plan.node, t.stage, t.task);
            let mut add = |text: &str, part: &str| scripts.entry(text.to_string()).or_default().push(at(part));
            match &t.action {
                Action::Run(Run { command }) => add(command, "run"),
                Action::Wait(Wait { until, .. }) => add(until, "wait"),
                // A script put on the node to be run by `sh` (kube-vip's install.sh, kubeadm's write-config.sh).
                Action::Copy(CopyFiles { files, .. }) => {
                    for f in files.iter().filter(|f| f.dest.ends_with(".sh")) {
                        add(&String::from_utf8_lossy(&f.content), &format!("copy {}", f.dest));
                    }
                }
                _ => {}
            }
            if let Some(unless) = &t.unless {
                add(unless, "unless");
            }
        }
    }
    assert!(
        scripts.len() > 100,
        "only {} scripts: is the plan empty?",
        scripts.len()
    );
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for (i, (text, wheres)) in scripts.iter().enumerate() {
        let path = dir.path().join(format!("{i}.sh"));
        fs::write(&path, text).expect("write a script");
        let out = tool("dash", &["-n"], std::slice::from_ref(&path));
        if !out.status.success() {
            failures.push(format!(
                "{}: dash -n: {}",
                wheres[0],
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        files.push(path);
    }
    // One shellcheck for all of them (it starts slowly); gcc format names the file of each finding.
    let out = tool("shellcheck", &["-s", "sh", "-S", "warning", "-f", "gcc"], &files);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let index = Path::new(line.split(':').next().unwrap_or_default())
            .file_stem()
            .and_then(|s| s.to_str()?.parse::<usize>().ok());
        let (text, wheres) = index
            .and_then(|i| scripts.iter().nth(i))
            .unwrap_or_else(|| panic!("a shellcheck line names no script: {line}"));
        failures.push(format!(
            "{} (and {} more places): shellcheck {}\n{text}",
            wheres[0],
            wheres.len() - 1,
            line.split_once(": ").map_or(line, |(_, rest)| rest)
        ));
    }
    assert!(
        out.status.success() || !failures.is_empty(),
        "shellcheck failed without findings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn yaml_docs(text: &str, what: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(text).map_err(|e| format!("{what}: not YAML: {e}"))
}

#[test]
fn the_kubeadm_config_is_the_three_documents_kubeadm_reads() {
    let mut checked = 0;
    for plan in shipped_plans(&Facts::assumed()) {
        let Some(Action::Copy(CopyFiles { files, .. })) = plan
            .tasks
            .iter()
            .find(|t| t.task == "kubeadm config files" && t.decision == Decision::Run)
            .map(|t| &t.action)
        else {
            continue;
        };
        let file = files
            .iter()
            .find(|f| f.dest == "/etc/kubernetes/kubeboot/kubeadm-config.yaml")
            .unwrap_or_else(|| panic!("{}: no kubeadm-config.yaml in the kubeadm config files", plan.node));
        // write-config.sh puts the installed kubeadm's exact version in.
        let text = String::from_utf8_lossy(&file.content);
        assert!(
            text.contains("kubernetesVersion: \"@KUBERNETES_VERSION@\""),
            "{}: {text}",
            plan.node
        );
        let body = text.replace("@KUBERNETES_VERSION@", "v1.34.2");
        let docs = yaml_docs(&body, &plan.node).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"],
            "{}",
            plan.node
        );
        assert_eq!(
            docs[0]["nodeRegistration"]["taints"],
            serde_json::json!([]),
            "{}",
            plan.node
        );
        assert_eq!(
            docs[0]["skipPhases"],
            serde_json::json!(["addon/kube-proxy"]),
            "{}",
            plan.node
        );
        assert_eq!(docs[1]["proxy"], serde_json::json!({"disabled": true}), "{}", plan.node);
        let address = plan.address.rsplit_once(':').map_or(plan.address.as_str(), |(a, _)| a);
        assert_eq!(
            docs[1]["controlPlaneEndpoint"],
            format!("{address}:6443"),
            "{}",
            plan.node
        );
        checked += 1;
    }
    assert_eq!(checked, 4, "one kubeadm config per single-node cluster");
}

/// The value paths each chart takes, read from the chart's values.yaml at the version the inventory pins
/// (longhorn 1.10.1, kube-prometheus-stack 79.7.1, opensearch 3.3.2, fluent-bit 0.54.0, grafana 10.1.5):
/// every top-level key our values file sets, and the paths it must set. `\.` is a dot inside a key.
const CHART_KEYS: &[(&str, &[&str], &[&str])] = &[
    (
        "longhorn",
        &[
            "persistence",
            "defaultSettings",
            "defaultBackupStore",
            "preUpgradeChecker",
            "csi",
            "longhornUI",
            "metrics",
            "longhornManager",
            "longhornDriver",
            "ingress",
            "image",
            "service",
            "privateRegistry",
            "networkPolicies",
            "namespaceOverride",
            "global",
            "enablePSP",
            "annotations",
            "serviceAccount",
        ],
        &[
            "persistence.defaultClassReplicaCount",
            "defaultSettings.defaultReplicaCount",
            "defaultBackupStore.backupTarget",
            "defaultBackupStore.backupTargetCredentialSecret",
            "preUpgradeChecker.jobEnabled",
        ],
    ),
    (
        "kube-prometheus-stack",
        &[
            "crds",
            "grafana",
            "defaultRules",
            "kubeProxy",
            "kubeEtcd",
            "kubeScheduler",
            "kubeControllerManager",
            "prometheusOperator",
            "alertmanager",
            "prometheus",
            "nodeExporter",
            "kubeStateMetrics",
            "kube-state-metrics",
            "prometheus-node-exporter",
            "coreDns",
            "kubeDns",
            "kubelet",
            "kubeApiServer",
            "global",
            "fullnameOverride",
            "nameOverride",
            "namespaceOverride",
            "commonLabels",
            "thanosRuler",
            "windowsMonitoring",
            "cleanPrometheusOperatorObjectNames",
            "additionalPrometheusRulesMap",
        ],
        &[
            "prometheus.prometheusSpec.scrapeInterval",
            "prometheus.prometheusSpec.retention",
            "prometheus.prometheusSpec.externalLabels.cluster",
            "prometheus.prometheusSpec.externalLabels.region",
            "prometheus.prometheusSpec.thanos.objectStorageConfig.existingSecret.name",
            "prometheus.prometheusSpec.thanos.objectStorageConfig.existingSecret.key",
            "prometheus.thanosServiceExternal.enabled",
            "prometheus.thanosServiceExternal.type",
            "prometheus.thanosServiceExternal.annotations",
            "grafana.enabled",
            "kubeProxy.enabled",
            "prometheusOperator.admissionWebhooks.enabled",
        ],
    ),
    (
        "opensearch",
        &[
            "clusterName",
            "nodeGroup",
            "singleNode",
            "replicas",
            "roles",
            "protocol",
            "httpPort",
            "opensearchJavaOpts",
            "resources",
            "persistence",
            "sysctlInit",
            "extraEnvs",
            "keystore",
            "plugins",
            "config",
            "service",
            "securityConfig",
            "image",
            "ingress",
            "masterService",
            "extraInitContainers",
        ],
        &[
            "singleNode",
            "keystore",
            "plugins.enabled",
            "plugins.installList",
            "config.opensearch\\.yml",
            "extraEnvs",
            "persistence.storageClass",
        ],
    ),
    (
        "fluent-bit",
        &[
            "kind",
            "metricsPort",
            "serviceMonitor",
            "testFramework",
            "tolerations",
            "env",
            "config",
            "image",
            "resources",
            "daemonSetVolumes",
            "daemonSetVolumeMounts",
            "service",
            "rbac",
            "podAnnotations",
        ],
        &[
            "kind",
            "metricsPort",
            "config.service",
            "config.inputs",
            "config.filters",
            "config.outputs",
            "env",
        ],
    ),
    (
        "grafana",
        &[
            "admin",
            "persistence",
            "rbac",
            "testFramework",
            "grafana.ini",
            "sidecar",
            "datasources",
            "dashboardProviders",
            "dashboards",
            "ingress",
            "service",
            "image",
            "plugins",
            "resources",
        ],
        &[
            "admin.existingSecret",
            "admin.userKey",
            "admin.passwordKey",
            "sidecar.dashboards.enabled",
            "sidecar.dashboards.label",
            "datasources.datasources\\.yaml",
        ],
    ),
];

/// Whether `doc` has the dotted `path` (`\.` is a dot inside a key).
fn has_path(doc: &Value, path: &str) -> bool {
    let keys = path.replace("\\.", "\u{0}");
    keys.split('.')
        .try_fold(doc, |cur, key| cur.get(key.replace('\u{0}', ".")))
        .is_some()
}

/// What the node needs of Cilium (TARGET.md): kube-proxy replaced, pointed at its own API server, LB IPs
/// announced on L2, one shared ingress on the cluster's LB IP (shared with the Thanos sidecar's Service in
/// `monitoring`, see tests/shipped_assets.rs). Checked against cilium's values.yaml at the pinned version.
fn check_cilium_values(
    values: &Value,
    node_address: &str,
    cluster: &str,
    lb_ip: &str,
    at: &str,
    failures: &mut Vec<String>,
) {
    let expect = |path: &str, got: &Value, want: Value, failures: &mut Vec<String>| {
        if *got != want {
            failures.push(format!("{at}: cilium {path} is {got}, not {want}"));
        }
    };
    expect(
        "kubeProxyReplacement",
        &values["kubeProxyReplacement"],
        Value::Bool(true),
        failures,
    );
    expect(
        "k8sServiceHost",
        &values["k8sServiceHost"],
        node_address.into(),
        failures,
    );
    expect("k8sServicePort", &values["k8sServicePort"], 6443.into(), failures);
    expect("ipam.mode", &values["ipam"]["mode"], "kubernetes".into(), failures);
    expect(
        "l2announcements.enabled",
        &values["l2announcements"]["enabled"],
        Value::Bool(true),
        failures,
    );
    let ingress = &values["ingressController"];
    expect(
        "ingressController.loadbalancerMode",
        &ingress["loadbalancerMode"],
        "shared".into(),
        failures,
    );
    expect(
        "ingressController.service.annotations",
        &ingress["service"]["annotations"],
        serde_json::json!({
            "lbipam.cilium.io/sharing-key": cluster,
            "lbipam.cilium.io/ips": lb_ip,
            "lbipam.cilium.io/sharing-cross-namespace": "monitoring",
        }),
        failures,
    );
    expect(
        "hubble.tls.auto.method",
        &values["hubble"]["tls"]["auto"]["method"],
        "cronJob".into(),
        failures,
    );
    expect("operator.replicas", &values["operator"]["replicas"], 1.into(), failures);
}

fn check_values(chart: &str, values: &Value, at: &str, failures: &mut Vec<String>) {
    let Some((_, top, required)) = CHART_KEYS.iter().find(|(name, ..)| *name == chart) else {
        failures.push(format!("{at}: no value paths written down for chart {chart}"));
        return;
    };
    let Some(map) = values.as_object() else {
        failures.push(format!("{at}: the values file is not a mapping"));
        return;
    };
    for key in map.keys().filter(|k| !top.contains(&k.as_str())) {
        failures.push(format!("{at}: {chart} has no top-level value '{key}'"));
    }
    for path in required.iter().filter(|p| !has_path(values, p)) {
        failures.push(format!("{at}: {chart} values miss '{path}'"));
    }
    if chart == "opensearch"
        && let Some(text) = values["config"]["opensearch.yml"].as_str()
        && let Err(e) = yaml_docs(text, "config.opensearch.yml")
    {
        failures.push(format!("{at}: {e}"));
    }
}

/// Seconds of a Prometheus duration (`5m`, `1h`); None when it is not one.
fn seconds(text: &str) -> Option<u64> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = text[..digits].parse().ok()?;
    let unit = match &text[digits..] {
        "ms" => return Some(0),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 604_800,
        "y" => 31_536_000,
        _ => return None,
    };
    Some(n * unit)
}

fn check_objects(objects: &[Value], at: &str, failures: &mut Vec<String>) {
    for doc in objects.iter().filter(|d| !d.is_null()) {
        let (kind, name) = (doc["kind"].as_str(), doc["metadata"]["name"].as_str());
        let (Some(kind), Some(name), true) = (kind, name, doc["apiVersion"].is_string()) else {
            failures.push(format!("{at}: an object without apiVersion/kind/metadata.name: {doc}"));
            continue;
        };
        let id = format!("{at}: {kind}/{name}");
        if kind == "PrometheusRule" {
            let groups = doc["spec"]["groups"].as_array().cloned().unwrap_or_default();
            for rule in groups
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            {
                let Some(alert) = rule["alert"].as_str() else { continue };
                if seconds(rule["for"].as_str().unwrap_or("0s")).is_none_or(|s| s < 60) {
                    failures.push(format!("{id}: alert {alert} needs `for` >= 1m"));
                }
                if rule["labels"]["severity"].is_null() {
                    failures.push(format!("{id}: alert {alert} has no severity label"));
                }
            }
        }
        if kind == "ConfigMap" && doc["metadata"]["labels"]["grafana_dashboard"] == "1" {
            for (key, body) in doc["data"].as_object().cloned().unwrap_or_default() {
                match serde_json::from_str::<Value>(body.as_str().unwrap_or_default()) {
                    Ok(dash) => {
                        let vars = dash["templating"]["list"].as_array().cloned().unwrap_or_default();
                        if !vars.iter().any(|v| v["name"] == "cluster") {
                            failures.push(format!("{id}: dashboard {key} has no `cluster` variable"));
                        }
                    }
                    Err(e) => failures.push(format!("{id}: {key} is not JSON: {e}")),
                }
            }
        }
        if kind == "Secret" && (!doc["data"].is_null() || !doc["stringData"].is_null()) {
            failures.push(format!(
                "{id}: a Secret with data must not be a file in assets/ (it comes from kubeboot's secrets)"
            ));
        }
    }
}

fn kustomize(dir: &Path, at: &str, failures: &mut Vec<String>) -> Option<Vec<Value>> {
    let out = tool("kubectl", &["kustomize"], &[dir.to_path_buf()]);
    if !out.status.success() {
        failures.push(format!(
            "{at}: kubectl kustomize failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    yaml_docs(&String::from_utf8_lossy(&out.stdout), at)
        .map_err(|e| failures.push(e))
        .ok()
}

/// Every folder under `root` holding a kustomization.yaml.
fn kustomization_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.join("kustomization.yaml").is_file() {
            out.push(d.clone());
        }
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create a folder");
    for e in fs::read_dir(from).expect("read a folder").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).expect("copy a file");
        }
    }
}

#[test]
fn every_manifest_a_node_receives_parses_and_builds_with_kustomize() {
    let inv = kubeboot::inventory::load(&repo().join("inventory.toml")).unwrap_or_else(|d| panic!("{d}"));
    let l2_interfaces = inv.vars["cilium_l2_interfaces"].clone();
    let work = tempfile::tempdir().expect("a temporary folder");
    let mut failures = Vec::new();
    let (mut kustomizations, mut objects) = (0, 0);
    for plan in shipped_plans(&Facts::assumed()) {
        // What the node's disk holds after the copy tasks, under a folder of its own.
        let root = work.path().join(&plan.node);
        for t in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
            let Action::Copy(CopyFiles { files, .. }) = &t.action else {
                continue;
            };
            for f in files {
                let at = format!("{}: {}/{} {}", plan.node, t.stage, t.task, f.dest);
                let path = root.join(f.dest.trim_start_matches('/'));
                fs::create_dir_all(path.parent().expect("a file has a folder")).expect("create a folder");
                fs::write(&path, &f.content).expect("write a copied file");
                let text = String::from_utf8_lossy(&f.content);
                if f.dest.ends_with(".yaml") || f.dest.ends_with(".yml") {
                    if let Err(e) = yaml_docs(&text, &at) {
                        failures.push(e);
                    }
                } else if f.dest.ends_with(".json")
                    && let Err(e) = serde_json::from_str::<Value>(&text)
                {
                    failures.push(format!("{at}: not JSON: {e}"));
                }
            }
        }
        let lb_ip = inv
            .clusters
            .iter()
            .find(|c| Some(&c.name) == plan.cluster.as_ref())
            .and_then(|c| c.lb_ip)
            .map(|ip| ip.to_string());
        for dir in kustomization_dirs(&root) {
            kustomizations += 1;
            let at = format!("{} {}", plan.node, dir.strip_prefix(&root).unwrap_or(&dir).display());
            let text = fs::read_to_string(dir.join("kustomization.yaml")).expect("read the kustomization");
            let Some(mut kustomization) = yaml_docs(&text, &at)
                .map_err(|e| failures.push(e))
                .ok()
                .and_then(|d| d.into_iter().next())
            else {
                continue;
            };
            let built = match kustomization.as_object_mut().and_then(|k| k.remove("helmCharts")) {
                Some(charts) => {
                    for chart in charts.as_array().cloned().unwrap_or_default() {
                        let name = chart["name"].as_str().unwrap_or_default();
                        for field in ["name", "repo", "version", "releaseName", "valuesFile"] {
                            if chart[field].as_str().is_none_or(str::is_empty) {
                                failures.push(format!("{at}: a helmCharts entry without {field}"));
                            }
                        }
                        if name == "cilium" && chart["version"] != inv.vars["cilium_version"] {
                            failures.push(format!(
                                "{at}: cilium {} is not the pinned cilium_version",
                                chart["version"]
                            ));
                        }
                        let Some(file) = chart["valuesFile"].as_str() else {
                            continue;
                        };
                        let values = fs::read_to_string(dir.join(file)).unwrap_or_default();
                        let values = match yaml_docs(&values, &at) {
                            Ok(docs) => docs.into_iter().next().unwrap_or_default(),
                            Err(e) => {
                                failures.push(e);
                                continue;
                            }
                        };
                        let at = format!("{at} {name}");
                        if name == "cilium" {
                            let address = plan.address.rsplit_once(':').map_or(plan.address.as_str(), |(a, _)| a);
                            let cluster = plan.cluster.clone().unwrap_or_default();
                            let lb_ip = lb_ip.clone().unwrap_or_default();
                            check_cilium_values(&values, address, &cluster, &lb_ip, &at, &mut failures);
                        } else {
                            check_values(name, &values, &at, &mut failures);
                        }
                    }
                    if kustomization
                        .as_object()
                        .is_some_and(|k| k.keys().all(|k| k == "apiVersion" || k == "kind"))
                    {
                        // Nothing but the charts: nothing left to build here.
                        continue;
                    }
                    // The rest without the charts (no helm here): patches aimed at chart objects match nothing,
                    // everything else is still built. JSON is YAML, so the stripped file is written as JSON.
                    let stripped = dir.with_extension("nohelm");
                    copy_dir(&dir, &stripped);
                    fs::write(stripped.join("kustomization.yaml"), kustomization.to_string())
                        .expect("write the stripped kustomization");
                    let built = kustomize(&stripped, &format!("{at} (charts stripped)"), &mut failures);
                    let _ = fs::remove_dir_all(&stripped);
                    built
                }
                None => kustomize(&dir, &at, &mut failures),
            };
            let Some(built) = built else { continue };
            objects += built.len();
            check_objects(&built, &at, &mut failures);
            if dir.ends_with("lb-ipam") {
                let of = |kind: &str| built.iter().find(|o| o["kind"] == kind).cloned().unwrap_or_default();
                let pool = of("CiliumLoadBalancerIPPool");
                let block = serde_json::json!([{ "start": lb_ip, "stop": lb_ip }]);
                if pool["apiVersion"] != "cilium.io/v2" || pool["spec"]["blocks"] != block {
                    failures.push(format!(
                        "{at}: the LB IPAM pool is not this cluster's {lb_ip:?}: {pool}"
                    ));
                }
                let policy = of("CiliumL2AnnouncementPolicy");
                if policy["spec"]["interfaces"] != l2_interfaces || policy["spec"]["loadBalancerIPs"] != true {
                    failures.push(format!(
                        "{at}: the L2 policy does not announce LB IPs on {l2_interfaces}: {policy}"
                    ));
                }
            }
        }
    }
    assert!(
        kustomizations >= 20,
        "only {kustomizations} kustomizations: did the copy tasks change?"
    );
    assert!(objects > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
