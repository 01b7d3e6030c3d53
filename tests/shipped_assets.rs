//! The shipped assets as kubeboot renders them for each node, checked against what the upstream software
//! at the versions `inventory.toml` pins does with them. Each check states the upstream rule it models and
//! where it was read; the faults these checks were written for were invisible to the stand-in lab.
//! Pure planning: no node is contacted, no chart is downloaded.

mod common;

use common::plans::{rhel, shipped_plans};
use std::collections::BTreeMap;

use kubeboot::facts::Facts;
use kubeboot::plan::{Action, NodePlan};
use kubeboot::task::{CopyFiles, Run, Wait};
use serde_json::Value;

/// Every file the plan copies to the node, by destination, rendered.
fn files(plan: &NodePlan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in &plan.tasks {
        if let Action::Copy(CopyFiles { files, .. }) = &t.action {
            for f in files {
                out.insert(f.dest.clone(), String::from_utf8_lossy(&f.content).into_owned());
            }
        }
    }
    out
}

fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(text).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
}

fn yaml_doc(text: &str, what: &str) -> Value {
    yaml_docs(text, what).into_iter().next().unwrap_or(Value::Null)
}

/// The one copied file whose destination ends with `suffix`.
fn file<'a>(files: &'a BTreeMap<String, String>, suffix: &str, node: &str) -> &'a str {
    let hits: Vec<_> = files.iter().filter(|(dest, _)| dest.ends_with(suffix)).collect();
    assert_eq!(
        hits.len(),
        1,
        "{node}: expected one copied file ending in {suffix}, found {}",
        hits.len()
    );
    hits[0].1
}

// ---------------------------------------------------------------------------------------------------------
// Cilium LB-IPAM: every LoadBalancer Service sharing a key must be allowed to share with the others.
// ---------------------------------------------------------------------------------------------------------

const SHARING_KEY: &str = "lbipam.cilium.io/sharing-key";
const CROSS_NAMESPACE: &str = "lbipam.cilium.io/sharing-cross-namespace";
const IPS: &str = "lbipam.cilium.io/ips";

#[derive(Debug)]
struct LbService {
    what: String,
    namespace: String,
    annotations: BTreeMap<String, String>,
}

impl LbService {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// Cilium v1.18 operator/pkg/lbipam/lbipam.go getSVCSharingCrossNamespace: the value split on ","
    /// (no trimming), "*" allowing every namespace.
    fn allows(&self, namespace: &str) -> bool {
        self.annotation(CROSS_NAMESPACE)
            .map(|v| v.split(',').any(|n| n == namespace || n == "*"))
            .unwrap_or(false)
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The LoadBalancer Services a chart's values ask for: every mapping with `type: LoadBalancer` (and not
/// `enabled: false`) is a Service the chart creates in its release namespace with that mapping's
/// `annotations` (true of the two shipped ones: cilium 1.18 `ingressController.service`, kube-prometheus-stack
/// 79.7.1 `prometheus.thanosServiceExternal`).
fn lb_services_in_values(v: &Value, path: &str, namespace: &str, out: &mut Vec<LbService>) {
    let Some(map) = v.as_object() else { return };
    if map.get("type").and_then(Value::as_str) == Some("LoadBalancer")
        && map.get("enabled") != Some(&Value::Bool(false))
    {
        out.push(LbService {
            what: format!("chart value {path}"),
            namespace: namespace.to_string(),
            annotations: string_map(map.get("annotations")),
        });
    }
    for (k, child) in map {
        lb_services_in_values(child, &format!("{path}.{k}"), namespace, out);
    }
}

/// Every LoadBalancer Service the node's copied assets create: from chart values (the kustomization's
/// helmCharts entry names the namespace) and from plain Service manifests (their own namespace, else the
/// namespace of the kustomization in their folder).
fn lb_services(files: &BTreeMap<String, String>) -> Vec<LbService> {
    let mut out = Vec::new();
    for (dest, text) in files {
        let Some(dir) = dest.strip_suffix("/kustomization.yaml") else {
            continue;
        };
        let k = yaml_doc(text, dest);
        let k_namespace = k
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        for chart in k.get("helmCharts").and_then(Value::as_array).into_iter().flatten() {
            let Some(values_file) = chart.get("valuesFile").and_then(Value::as_str) else {
                continue;
            };
            let values_path = format!("{dir}/{values_file}");
            let values = files
                .get(&values_path)
                .unwrap_or_else(|| panic!("{dest}: valuesFile {values_file} not copied"));
            let namespace = chart.get("namespace").and_then(Value::as_str).unwrap_or(&k_namespace);
            let name = chart.get("name").and_then(Value::as_str).unwrap_or("?");
            lb_services_in_values(&yaml_doc(values, &values_path), name, namespace, &mut out);
        }
        for (other, body) in files {
            let in_dir = other.strip_prefix(dir).and_then(|rest| rest.strip_prefix('/'));
            if !in_dir.is_some_and(|rest| !rest.contains('/') && (rest.ends_with(".yaml") || rest.ends_with(".yml"))) {
                continue;
            }
            if other == dest || body.contains("helmCharts:") {
                continue;
            }
            for doc in yaml_docs(body, other) {
                if doc.get("kind").and_then(Value::as_str) == Some("Service")
                    && doc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
                {
                    let meta = doc.get("metadata");
                    out.push(LbService {
                        what: format!(
                            "{other} Service/{}",
                            meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("?")
                        ),
                        namespace: meta
                            .and_then(|m| m.get("namespace"))
                            .and_then(Value::as_str)
                            .unwrap_or(&k_namespace)
                            .to_string(),
                        annotations: string_map(meta.and_then(|m| m.get("annotations"))),
                    });
                }
            }
        }
    }
    out
}

#[test]
fn lb_services_sharing_the_cluster_ip_may_share_it_across_namespaces() {
    for plan in shipped_plans(&Facts::assumed()) {
        let services = lb_services(&files(&plan));
        assert!(
            services.len() >= 2,
            "{}: expected the ingress and the Thanos sidecar LoadBalancer Services, found {services:?}",
            plan.node
        );
        for a in &services {
            assert!(
                a.annotation(SHARING_KEY).is_some(),
                "{}: {} has no {SHARING_KEY}",
                plan.node,
                a.what
            );
            assert!(a.annotation(IPS).is_some(), "{}: {} has no {IPS}", plan.node, a.what);
            if let Some(v) = a.annotation(CROSS_NAMESPACE) {
                assert!(
                    !v.contains(' '),
                    "{}: {} {CROSS_NAMESPACE} {v:?}: Cilium does not trim the list",
                    plan.node,
                    a.what
                );
            }
            for b in &services {
                if std::ptr::eq(a, b) || a.annotation(SHARING_KEY) != b.annotation(SHARING_KEY) {
                    continue;
                }
                assert_eq!(
                    a.annotation(IPS),
                    b.annotation(IPS),
                    "{}: {} and {} share a key but ask for other IPs",
                    plan.node,
                    a.what,
                    b.what
                );
                // Cilium v1.18 operator/pkg/lbipam/service_store.go isCompatible: services in different
                // namespaces share only when each lists the other's namespace (or "*").
                if a.namespace != b.namespace {
                    assert!(
                        a.allows(&b.namespace),
                        "{}: {} (namespace {}) shares key {:?} with {} (namespace {}) but its {CROSS_NAMESPACE} {:?} does not allow {}: \
                         LB-IPAM would leave one of them without an IP",
                        plan.node,
                        a.what,
                        a.namespace,
                        a.annotation(SHARING_KEY).unwrap_or_default(),
                        b.what,
                        b.namespace,
                        a.annotation(CROSS_NAMESPACE).unwrap_or_default(),
                        b.namespace
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// kustomize and helm by absolute path: RHEL's sudo secure_path has no /usr/local/bin.
// ---------------------------------------------------------------------------------------------------------

/// The commands of a shell script: the first word of every simple command (after `!`, keywords and
/// variable assignments), split at `;`, `|`, `&`, `(`, `$(`, backquotes and newlines. Enough for the
/// shipped scripts; comment lines are skipped.
fn command_words(script: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in script.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for part in line.split([';', '|', '&', '(', '`', ')']) {
            let mut words = part
                .split_whitespace()
                .map(|w| w.trim_matches(|c| c == '\'' || c == '"' || c == '$'));
            let first = loop {
                match words.next() {
                    Some(
                        "!" | "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "exec" | "command" | "{",
                    ) => continue,
                    Some(w) if w.contains('=') && !w.starts_with('-') => continue,
                    other => break other,
                }
            };
            if let Some(first) = first {
                out.push((first.to_string(), part.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn every_stage_calls_kustomize_and_helm_by_absolute_path() {
    for facts in [Facts::assumed(), rhel()] {
        let mut builds = 0;
        for plan in shipped_plans(&facts) {
            for t in &plan.tasks {
                let scripts = match &t.action {
                    Action::Run(Run { command }) => vec![command.as_str()],
                    Action::Wait(Wait { until, .. }) => vec![until.as_str()],
                    _ => vec![],
                };
                for script in scripts.into_iter().chain(t.unless.as_deref()) {
                    for (word, part) in command_words(script) {
                        let base = word.rsplit('/').next().unwrap_or(&word);
                        if base != "kustomize" && base != "helm" {
                            continue;
                        }
                        assert!(
                            word.starts_with('/'),
                            "{} {}/{}: `{part}` runs {base} by PATH lookup; under sudo on RHEL (secure_path without \
                             /usr/local/bin) it is not found",
                            plan.node,
                            t.stage,
                            t.task
                        );
                        // kustomize v5.8.1 kustomize/commands/build/flagenablehelm.go: --helm-command
                        // defaults to "helm", which api/internal/builtins/HelmChartInflationGenerator.go
                        // runs with exec.Command, i.e. looked up on PATH.
                        if base == "kustomize" && part.contains("--enable-helm") {
                            builds += 1;
                            let helm = part.split_whitespace().skip_while(|w| *w != "--helm-command").nth(1);
                            assert!(
                                helm.is_some_and(|h| h.trim_matches('\'').starts_with('/')),
                                "{} {}/{}: `{part}` lets kustomize look helm up on PATH; pass --helm-command with its absolute path",
                                plan.node,
                                t.stage,
                                t.task
                            );
                        }
                    }
                }
            }
        }
        assert!(
            builds >= 4 * 3,
            "expected every node's helm-inflating stages to be checked, saw {builds} builds"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// OpenSearch 3.3.2: the image's demo-configuration installer must be left to do its job.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn opensearch_config_leaves_the_demo_installer_its_certificates_and_admin_password() {
    let plans = shipped_plans(&Facts::assumed());
    let mut checked = 0;
    for plan in &plans {
        let files = files(plan);
        if !files
            .keys()
            .any(|d| d.ends_with("manifests/opensearch/overlay/values.yaml"))
        {
            continue;
        }
        checked += 1;
        let values = yaml_doc(
            file(&files, "manifests/opensearch/overlay/values.yaml", &plan.node),
            "opensearch values",
        );
        let config_text = values
            .pointer("/config/opensearch.yml")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: opensearch values have no config.opensearch.yml", plan.node));
        let config = yaml_doc(config_text, "opensearch.yml");
        let config = config
            .as_object()
            .unwrap_or_else(|| panic!("{}: opensearch.yml is not a mapping", plan.node));
        // security 3.3.2.0 tools/democonfig/SecuritySettingsConfigurer.checkIfSecurityPluginIsAlreadyConfigured:
        // a flat `plugins.security*` key, or a `security*` key under `plugins:`, makes the installer quit
        // before it sets the admin password; it writes the demo certificates only when all six
        // ssl.{transport,http}.pem*_filepath settings name them (isSecurityPluginIsConfiguredWithDemoCerts).
        for key in config.keys() {
            assert!(
                !key.starts_with("plugins.security"),
                "{}: opensearch.yml sets {key}: the 3.x demo installer then writes neither certificates nor the admin password",
                plan.node
            );
        }
        if let Some(plugins) = config.get("plugins").and_then(Value::as_object) {
            for key in plugins.keys() {
                assert!(
                    !key.starts_with("security"),
                    "{}: opensearch.yml has a nested plugins: {key}: block: the 3.x demo installer then writes neither \
                     certificates (esnode.pem) nor the admin password",
                    plan.node
                );
            }
        }
        let envs: BTreeMap<String, &Value> = values
            .get("extraEnvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e.get("name")?.as_str()?.to_string(), e)))
            .collect();
        assert!(
            envs.get("OPENSEARCH_INITIAL_ADMIN_PASSWORD")
                .and_then(|e| e.pointer("/valueFrom/secretKeyRef/name"))
                .is_some(),
            "{}: the demo installer needs OPENSEARCH_INITIAL_ADMIN_PASSWORD from the admin Secret",
            plan.node
        );
        for off in ["DISABLE_INSTALL_DEMO_CONFIG", "DISABLE_SECURITY_PLUGIN"] {
            assert!(
                envs.get(off).and_then(|e| e.get("value")).and_then(Value::as_str) != Some("true"),
                "{}: {off}=true leaves the node without certificates or without authentication",
                plan.node
            );
        }
        // The demo installer turns HTTP TLS on; the shipped stack speaks plain HTTP to port 9200, so the
        // entrypoint's env-to-`-E` override must turn it off (command-line settings win over opensearch.yml).
        if values.get("protocol").and_then(Value::as_str) == Some("http") {
            assert_eq!(
                envs.get("plugins.security.ssl.http.enabled")
                    .and_then(|e| e.get("value"))
                    .and_then(Value::as_str),
                Some("false"),
                "{}: protocol http, but the demo configuration enables TLS on 9200 unless plugins.security.ssl.http.enabled=false is passed",
                plan.node
            );
        }
    }
    assert_eq!(
        checked, 1,
        "expected the OpenSearch overlay on exactly the central node"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Behaviour that depends on other objects (the audit of issue 11, section 3).
// ---------------------------------------------------------------------------------------------------------

/// Every copied kustomization with its folder, parsed.
fn kustomizations(files: &BTreeMap<String, String>) -> Vec<(String, Value)> {
    files
        .iter()
        .filter_map(|(dest, text)| {
            Some((
                dest.strip_suffix("/kustomization.yaml")?.to_string(),
                yaml_doc(text, dest),
            ))
        })
        .collect()
}

fn helm_charts(k: &Value) -> Vec<&Value> {
    k.get("helmCharts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect()
}

/// Charts that put objects into other namespaces than their release's on purpose, and where.
/// kube-prometheus-stack 79.7.1 templates/exporters/core-dns/service.yaml (and the kube-etcd, scheduler,
/// controller-manager, kube-proxy ones): `namespace: kube-system`.
const CHARTS_WITH_FOREIGN_NAMESPACES: &[(&str, &str)] = &[("kube-prometheus-stack", "kube-system")];

#[test]
fn no_kustomize_namespace_moves_objects_a_chart_places_in_another_namespace() {
    for plan in shipped_plans(&Facts::assumed()) {
        for (dir, k) in kustomizations(&files(&plan)) {
            let Some(ns) = k.get("namespace").and_then(Value::as_str) else {
                continue;
            };
            for chart in helm_charts(&k) {
                let name = chart.get("name").and_then(Value::as_str).unwrap_or_default();
                for (c, foreign) in CHARTS_WITH_FOREIGN_NAMESPACES {
                    assert!(
                        name != *c,
                        "{} {dir}: `namespace: {ns}` would move the {foreign} objects of chart {c} into {ns} \
                         (their ServiceMonitors then find nothing)",
                        plan.node
                    );
                }
            }
        }
    }
}

#[test]
fn helm_hooks_never_become_plain_objects() {
    for plan in shipped_plans(&Facts::assumed()) {
        let files = files(&plan);
        for (dir, k) in kustomizations(&files) {
            for chart in helm_charts(&k) {
                let name = chart.get("name").and_then(Value::as_str).unwrap_or_default();
                if name == "cilium" {
                    // Its hubble-generate-certs Job is a post-install hook the clusters need (the CronJob only
                    // runs on its schedule); stage 50 deletes the finished Job before each apply instead.
                    let apply = plan
                        .tasks
                        .iter()
                        .find(|t| t.stage == "cilium" && t.task == "apply cilium");
                    let Some(Action::Run(Run { command })) = apply.map(|t| &t.action) else {
                        panic!("{}: no `apply cilium` task", plan.node)
                    };
                    assert!(
                        command.contains("delete job hubble-generate-certs"),
                        "{}: the hubble hook Job is never reset",
                        plan.node
                    );
                    continue;
                }
                // kustomize v5.8.1 api/types/helmchartargs.go: skipHooks passes --no-hooks to helm template.
                assert_eq!(
                    chart.get("skipHooks"),
                    Some(&Value::Bool(true)),
                    "{} {dir}: chart {name} is inflated with its Helm hooks, which kustomize applies as plain objects \
                     (Longhorn's pre-delete uninstall Job would run on the first apply)",
                    plan.node
                );
            }
        }
    }
}

/// A Service a ServiceMonitor may select: namespace, labels, port names.
struct KnownService {
    what: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    ports: Vec<String>,
}

/// Services the charts create with the shipped values (read in the charts' templates at the pinned versions).
fn chart_services() -> Vec<KnownService> {
    let svc = |what: &str, ns: &str, labels: &[(&str, &str)], ports: &[&str]| KnownService {
        what: what.into(),
        namespace: ns.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ports: ports.iter().map(|p| p.to_string()).collect(),
    };
    vec![
        // fluent-bit 0.54.0 templates/service.yaml
        svc(
            "chart fluent-bit Service/fluent-bit",
            "logging",
            &[("app.kubernetes.io/name", "fluent-bit")],
            &["http"],
        ),
        // longhorn v1.10.1 chart/templates/daemonset-sa.yaml
        svc(
            "chart longhorn Service/longhorn-backend",
            "longhorn-system",
            &[("app", "longhorn-manager")],
            &["manager"],
        ),
        // Cilium creates cilium-agent / cilium-operator metrics Services only with its own ServiceMonitors,
        // which the shipped values leave off: none listed here on purpose.
    ]
}

#[test]
fn every_servicemonitor_selects_a_service_that_exists() {
    for plan in shipped_plans(&Facts::assumed()) {
        let files = files(&plan);
        let mut services = chart_services();
        let mut monitors = Vec::new();
        for (dir, k) in kustomizations(&files) {
            let k_ns = k.get("namespace").and_then(Value::as_str).map(str::to_string);
            for (dest, text) in &files {
                let Some(rest) = dest.strip_prefix(&format!("{dir}/")) else {
                    continue;
                };
                if rest.contains('/')
                    || !rest.ends_with(".yaml")
                    || rest == "kustomization.yaml"
                    || text.contains("helmCharts:")
                {
                    continue;
                }
                for doc in yaml_docs(text, dest) {
                    let meta = doc.get("metadata");
                    let ns = meta
                        .and_then(|m| m.get("namespace"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or(k_ns.clone())
                        .unwrap_or_else(|| "default".into());
                    let name = meta
                        .and_then(|m| m.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string();
                    match doc.get("kind").and_then(Value::as_str) {
                        Some("Service") => services.push(KnownService {
                            what: format!("{dest} Service/{name}"),
                            namespace: ns,
                            labels: string_map(meta.and_then(|m| m.get("labels"))),
                            ports: doc
                                .pointer("/spec/ports")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                                .filter_map(|p| p.get("name")?.as_str().map(str::to_string))
                                .collect(),
                        }),
                        Some("ServiceMonitor") => monitors.push((format!("{dest} ServiceMonitor/{name}"), ns, doc)),
                        _ => {}
                    }
                }
            }
        }
        assert!(
            monitors.len() >= 4,
            "{}: expected the shipped ServiceMonitors, found {}",
            plan.node,
            monitors.len()
        );
        for (what, ns, sm) in &monitors {
            let selector = string_map(sm.pointer("/spec/selector/matchLabels"));
            let namespaces: Vec<String> = sm
                .pointer("/spec/namespaceSelector/matchNames")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_else(|| vec![ns.clone()]);
            let ports: Vec<&str> = sm
                .pointer("/spec/endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("port")?.as_str())
                .collect();
            let matches: Vec<&KnownService> = services
                .iter()
                .filter(|s| {
                    namespaces.contains(&s.namespace) && selector.iter().all(|(k, v)| s.labels.get(k) == Some(v))
                })
                .collect();
            // Selectors by matchExpressions (the Thanos one) are checked by their own stage's tests.
            if sm.pointer("/spec/selector/matchExpressions").is_some() && selector.is_empty() {
                continue;
            }
            assert!(
                !matches.is_empty(),
                "{}: {what} selects {selector:?} in {namespaces:?}, but no Service there has those labels",
                plan.node
            );
            for port in ports {
                assert!(
                    matches.iter().any(|s| s.ports.iter().any(|p| p == port)),
                    "{}: {what} scrapes port {port:?}, which none of {:?} names",
                    plan.node,
                    matches.iter().map(|s| &s.what).collect::<Vec<_>>()
                );
            }
        }
    }
}

#[test]
fn opensearch_snapshot_expiry_covers_the_snapshots_ism_takes() {
    let plans = shipped_plans(&Facts::assumed());
    let plan = plans
        .iter()
        .find(|p| {
            files(p)
                .keys()
                .any(|d| d.ends_with("manifests/opensearch/api/sm-policy.json"))
        })
        .expect("the central node copies the OpenSearch API bodies");
    let files = files(plan);
    let ism: Value =
        serde_json::from_str(file(&files, "opensearch/api/ism-policy.json", &plan.node)).expect("ISM policy is JSON");
    let sm: Value =
        serde_json::from_str(file(&files, "opensearch/api/sm-policy.json", &plan.node)).expect("SM policy is JSON");
    let prefix = ism["policy"]["states"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["actions"].as_array().into_iter().flatten())
        .find_map(|a| a["snapshot"]["snapshot"].as_str())
        .expect("the ISM policy snapshots before it deletes");
    // index-management 3.3 AttemptSnapshotStep: the snapshot is named <snapshot>-<date>; SMUtils.getSnapshots
    // and DeletingState: deletion looks at SM's own snapshots plus deletion.snapshot_pattern (the policy's
    // own "<name>*" pattern is skipped for foreign snapshots).
    let pattern = sm["deletion"]["snapshot_pattern"].as_str().unwrap_or_default();
    let example = format!("{prefix}-2026.01.31-01:30:00.000");
    let covered = pattern
        .split(',')
        .map(str::trim)
        .any(|p| p != "logs-archive*" && p.strip_suffix('*').is_some_and(|stem| example.starts_with(stem)));
    assert!(
        covered,
        "SM deletion.snapshot_pattern {pattern:?} does not cover the ISM snapshots ({example}): they would never expire"
    );
}

#[test]
fn local_alert_texts_take_the_cluster_from_the_external_labels() {
    for plan in shipped_plans(&Facts::assumed()) {
        let files = files(&plan);
        let rules = file(&files, "alerts-policies/base/prometheusrule.yaml", &plan.node);
        // Prometheus evaluates these on its own series, which do not carry the external label `cluster`.
        assert!(
            !rules.contains("$labels.cluster"),
            "{}: a local alert text uses $labels.cluster, which is always empty there; use $externalLabels.cluster",
            plan.node
        );
    }
}
