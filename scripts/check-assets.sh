#!/usr/bin/env bash
# Offline checks of the manifest stages (playbooks 70-89 and assets/manifests).
#
# For every cluster of the inventory (inventory.toml at the repository root, or the four
# clusters of TARGET.md when it is missing) this script does what kubeboot does before it sends
# anything: it renders every task of playbooks 70-89 with strict undefined variables, copies the
# asset folders the `copy:` tasks name (rendered when `template: true`), and then checks:
#   - every run/wait/unless script parses as POSIX sh (`dash -n` / `sh -n`);
#   - secrets appear only in `env:` values, never in a command;
#   - `kubectl kustomize` builds every kustomization without helmCharts; overlays with
#     helmCharts are built with the charts stripped (patches, resources, generators still
#     checked), and their values files are checked against the key paths each chart expects;
#   - every rendered object has apiVersion, kind and metadata.name;
#   - every alert has `for` >= 1m and a severity label; every dashboard has a `cluster` variable.
#
# Needs: python3 with PyYAML and Jinja2, kubectl (for `kubectl kustomize`). No network.
# Usage: scripts/check-assets.sh [--keep]   (--keep leaves the rendered tree for inspection)
#        KUBEBOOT_INVENTORY=path/inventory.toml scripts/check-assets.sh   (another inventory)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
keep=0
[ "${1:-}" = "--keep" ] && keep=1
cleanup() { if [ "$keep" = 1 ]; then echo "rendered tree kept in $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT

command -v kubectl >/dev/null || { echo "check-assets: kubectl is needed (kubectl kustomize)" >&2; exit 2; }
python3 -c 'import yaml, jinja2' 2>/dev/null || { echo "check-assets: python3 with PyYAML and Jinja2 is needed" >&2; exit 2; }

exec python3 - "$root" "$work" <<'PY'
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import jinja2
import yaml

ROOT, WORK = sys.argv[1], sys.argv[2]
ASSETS = os.path.join(ROOT, "assets")
PLAYBOOKS = os.path.join(ROOT, "playbooks")
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL " + msg)


# ---------------------------------------------------------------------------------------------
# Inventory context (the same shape kubeboot gives templates)
# ---------------------------------------------------------------------------------------------
TARGET_VARS = {
    "kubernetes_version": "1.34", "kubernetes_package_version": "", "cilium_version": "1.18.4",
    "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12", "dns_server": "192.168.1.1",
    "s3_endpoint": "http://s3.minio.miribit.lab", "s3_host": "s3.minio.miribit.lab", "s3_region": "us-east-1",
    "s3_bucket_thanos": "thanos-bucket", "s3_bucket_opensearch": "opensearch-logs",
    "s3_bucket_longhorn": "longhorn-backups", "prometheus_retention": "2h", "scrape_interval": "30s",
    "log_retention_days": 14, "snapshot_retention_days": 180, "kustomize_version": "5.8.1",
    "helm_version": "3.19.0", "tools_dir": "/usr/local/bin", "jump_checks": True, "longhorn_chart_version": "1.10.1",
    "kube_prometheus_stack_chart_version": "79.7.1", "opensearch_chart_version": "3.3.2",
    "fluent_bit_chart_version": "0.54.0", "grafana_chart_version": "10.1.5",
    "thanos_image": "quay.io/thanos/thanos:v0.39.2",
}
TARGET_CLUSTERS = [
    ("cluster-01", "central", "192.168.101.210", "k8s-cluster-01.miribit.lab", "node-194", "192.168.101.194"),
    ("cluster-02", "edge", "192.168.101.211", "k8s-cluster-02.miribit.lab", "node-196", "192.168.101.196"),
    ("cluster-03", "edge", "192.168.101.212", "k8s-cluster-03.miribit.lab", "node-197", "192.168.101.197"),
    ("cluster-04", "edge", "192.168.101.213", "k8s-cluster-04.miribit.lab", "node-198", "192.168.101.198"),
]


def load_inventory():
    path = os.environ.get("KUBEBOOT_INVENTORY", os.path.join(ROOT, "inventory.toml"))
    if os.path.exists(path):
        import tomllib

        with open(path, "rb") as f:
            inv = tomllib.load(f)
        variables = inv.get("vars", {})
        clusters = []
        for c in inv.get("clusters", []):
            nodes = [n for n in inv.get("nodes", []) if n.get("cluster") == c["name"]]
            clusters.append(dict(c, nodes=[dict(n) for n in nodes]))
        print(f"inventory: {path}")
        return variables, clusters
    clusters = []
    for name, role, lb_ip, domain, node, address in TARGET_CLUSTERS:
        clusters.append({"name": name, "role": role, "lb_ip": lb_ip, "domain": domain,
                         "nodes": [{"name": node, "address": address, "cluster": name}]})
    print("inventory: built-in TARGET.md clusters (no inventory.toml)")
    return dict(TARGET_VARS), clusters


class Secrets:
    """`secrets.NAME` renders a placeholder, as kubeboot does until it sends a command."""

    def __getattr__(self, name):
        return f"<secret:{name}>"

    __getitem__ = __getattr__


def sample_sources():
    """`sources` as kubeboot renders it for an Ubuntu node with the internet defaults (a sample: kubeboot's
    own tests check the real rendering; here it only has to exercise every branch of the scripts)."""
    repo = lambda url, suite='', components='', key='': dict(url=url, suite=suite, components=components, key=key)
    k8s = 'https://pkgs.k8s.io/core:/stable:/v1.34/'
    return dict(
        bundle=False, bundle_url='', images_url='', proxy='http://proxy.example:3128', no_proxy='10.0.0.0/8,.lab',
        containerd='docker',
        apt=dict(kubernetes=repo(k8s + 'deb/', '/', '', k8s + 'deb/Release.key'),
                 containerd=repo('https://download.docker.com/linux/ubuntu', '', 'stable',
                                 'https://download.docker.com/linux/ubuntu/gpg'),
                 distro=repo('http://mirror.example/ubuntu', '', 'main universe', 'http://mirror.example/key.asc')),
        dnf=dict(kubernetes=repo(k8s + 'rpm/', key=k8s + 'rpm/repodata/repomd.xml.key'),
                 containerd=repo('https://download.docker.com/linux/rhel/$releasever/$basearch/stable',
                                 key='https://download.docker.com/linux/rhel/gpg'),
                 distro=repo('')),
        releases={n: dict(url=f'https://example.invalid/{n}.tar.gz', sha256='0' * 64) for n in ('helm', 'kustomize')},
        charts={n: dict(repo=f'https://charts.example/{n}') for n in
                ('cilium', 'longhorn', 'kube-prometheus-stack', 'grafana', 'opensearch', 'fluent-bit')},
        registries=[dict(name='docker.io', mirror='https://mirror.example:5000', skip_verify=False, ca=True,
                         ca_pem='-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----', auth=True,
                         username_secret='registry_docker_io_username', password_secret='registry_docker_io_password')],
        urls=[dict(name='apt kubernetes', url=k8s + 'deb/', host='pkgs.k8s.io')],
    )


def node_context(variables, clusters, cluster, node):
    central = next(c for c in clusters if c["role"] == "central")
    ctx = dict(variables)
    ctx.update(cluster.get("vars", {}))
    ctx.update({
        "node": {"name": node["name"], "address": node["address"], "port": 22, "user": "bsh", "cluster": cluster["name"]},
        "cluster": cluster, "clusters": clusters, "central": central, "secrets": Secrets(),
        "sources": sample_sources(),
        "os_family": "debian", "os_id": "ubuntu", "os_version": "22.04", "os_version_major": "22",
        "arch": "x86_64", "hostname": node["name"], "cpus": 4, "memory_mb": 16000, "disk_gb": 100, "user": "bsh",
    })
    return ctx


ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render(text, ctx, where):
    try:
        return ENV.from_string(text).render(ctx)
    except Exception as e:  # noqa: BLE001 - any template error is a finding
        fail(f"{where}: template error: {e}")
        return None


def truthy(rendered):
    return rendered is not None and rendered.strip().lower() not in ("", "false", "0", "none", "no")


def hosts_match(hosts, cluster, node):
    if hosts == "all":
        return True
    wanted = hosts if isinstance(hosts, list) else [hosts]
    return any(h in (cluster["role"], cluster["name"], node["name"]) for h in wanted)


# ---------------------------------------------------------------------------------------------
# Helm values: the key paths each chart expects (checked against the chart's values.yaml of the
# version in the inventory when it was written; update with the chart).
# ---------------------------------------------------------------------------------------------
CHART_KEYS = {
    "longhorn": {
        "top": {"persistence", "defaultSettings", "defaultBackupStore", "preUpgradeChecker", "csi", "longhornUI",
                "metrics", "longhornManager", "longhornDriver", "ingress", "image", "service", "privateRegistry",
                "networkPolicies", "namespaceOverride", "global", "enablePSP", "annotations", "serviceAccount"},
        "required": ["persistence.defaultClassReplicaCount", "defaultSettings.defaultReplicaCount",
                     "defaultBackupStore.backupTarget", "defaultBackupStore.backupTargetCredentialSecret",
                     "preUpgradeChecker.jobEnabled"],
    },
    "kube-prometheus-stack": {
        "top": {"crds", "grafana", "defaultRules", "kubeProxy", "kubeEtcd", "kubeScheduler", "kubeControllerManager",
                "prometheusOperator", "alertmanager", "prometheus", "nodeExporter", "kubeStateMetrics",
                "kube-state-metrics", "prometheus-node-exporter", "coreDns", "kubeDns", "kubelet", "kubeApiServer",
                "global", "fullnameOverride", "nameOverride", "namespaceOverride", "commonLabels", "thanosRuler",
                "windowsMonitoring", "cleanPrometheusOperatorObjectNames", "additionalPrometheusRulesMap"},
        "required": ["prometheus.prometheusSpec.scrapeInterval", "prometheus.prometheusSpec.retention",
                     "prometheus.prometheusSpec.externalLabels.cluster", "prometheus.prometheusSpec.externalLabels.region",
                     "prometheus.prometheusSpec.thanos.objectStorageConfig.existingSecret.name",
                     "prometheus.prometheusSpec.thanos.objectStorageConfig.existingSecret.key",
                     "prometheus.thanosServiceExternal.enabled", "prometheus.thanosServiceExternal.type",
                     "prometheus.thanosServiceExternal.annotations", "grafana.enabled", "kubeProxy.enabled",
                     "prometheusOperator.admissionWebhooks.enabled"],
    },
    "opensearch": {
        "top": {"clusterName", "nodeGroup", "singleNode", "replicas", "roles", "protocol", "httpPort",
                "opensearchJavaOpts", "resources", "persistence", "sysctlInit", "extraEnvs", "keystore", "plugins",
                "config", "service", "securityConfig", "image", "ingress", "masterService", "extraInitContainers"},
        "required": ["singleNode", "keystore", "plugins.enabled", "plugins.installList", "config.opensearch\\.yml",
                     "extraEnvs", "persistence.storageClass"],
    },
    "fluent-bit": {
        "top": {"kind", "metricsPort", "serviceMonitor", "testFramework", "tolerations", "env", "config", "image",
                "resources", "daemonSetVolumes", "daemonSetVolumeMounts", "service", "rbac", "podAnnotations"},
        "required": ["kind", "metricsPort", "config.service", "config.inputs", "config.filters", "config.outputs", "env"],
    },
    "grafana": {
        "top": {"admin", "persistence", "rbac", "testFramework", "grafana.ini", "sidecar", "datasources",
                "dashboardProviders", "dashboards", "ingress", "service", "image", "plugins", "resources"},
        "required": ["admin.existingSecret", "admin.userKey", "admin.passwordKey", "sidecar.dashboards.enabled",
                     "sidecar.dashboards.label", "datasources.datasources\\.yaml"],
    },
}


def has_path(doc, dotted):
    parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", dotted)]
    cur = doc
    for p in parts:
        if not isinstance(cur, dict) or p not in cur:
            return False
        cur = cur[p]
    return True


def check_values(chart, values_path, where):
    try:
        with open(values_path) as f:
            values = yaml.safe_load(f)
    except Exception as e:  # noqa: BLE001
        fail(f"{where}: values file is not YAML: {e}")
        return
    if not isinstance(values, dict):
        fail(f"{where}: values file is not a mapping")
        return
    spec = CHART_KEYS.get(chart)
    if spec is None:
        fail(f"{where}: no expected key paths written down for chart {chart}")
        return
    for key in values:
        if key not in spec["top"]:
            fail(f"{where}: {chart} has no top-level value '{key}'")
    for path in spec["required"]:
        if not has_path(values, path):
            fail(f"{where}: {chart} values miss '{path}'")
    # Embedded YAML documents (Fluent Bit config is INI, OpenSearch config is YAML).
    if chart == "opensearch":
        try:
            yaml.safe_load(values["config"]["opensearch.yml"])
        except Exception as e:  # noqa: BLE001
            fail(f"{where}: config.opensearch.yml is not YAML: {e}")


# ---------------------------------------------------------------------------------------------
# Object checks
# ---------------------------------------------------------------------------------------------
DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(text):
    m = DURATION.match(str(text))
    return int(m.group(1)) * UNIT_S[m.group(2)] if m else None


def check_objects(stream, where):
    count = 0
    try:
        docs = list(yaml.safe_load_all(stream))
    except Exception as e:  # noqa: BLE001
        fail(f"{where}: output is not YAML: {e}")
        return 0
    for doc in docs:
        if doc is None:
            continue
        count += 1
        name = (doc.get("metadata") or {}).get("name") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") or not name:
            fail(f"{where}: object without apiVersion/kind/metadata.name: {str(doc)[:120]}")
            continue
        ident = f"{where}: {doc['kind']}/{name}"
        if doc["kind"] == "PrometheusRule":
            for group in doc.get("spec", {}).get("groups", []):
                for rule in group.get("rules", []):
                    if "alert" not in rule:
                        continue
                    s = seconds(rule.get("for", "0s"))
                    if s is None or s < 60:
                        fail(f"{ident}: alert {rule['alert']} needs `for` >= 1m")
                    if "severity" not in (rule.get("labels") or {}):
                        fail(f"{ident}: alert {rule['alert']} has no severity label")
        if doc["kind"] == "ConfigMap" and (doc["metadata"].get("labels") or {}).get("grafana_dashboard") == "1":
            for key, body in (doc.get("data") or {}).items():
                try:
                    dash = json.loads(body)
                except ValueError as e:
                    fail(f"{ident}: {key} is not JSON: {e}")
                    continue
                names = [v.get("name") for v in dash.get("templating", {}).get("list", [])]
                if "cluster" not in names:
                    fail(f"{ident}: dashboard {key} has no `cluster` variable")
        if doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData")):
            fail(f"{ident}: Secrets with data must not be files in assets/ (they come from kubeboot secrets)")
    return count


def kustomize(dir_, where):
    p = subprocess.run(["kubectl", "kustomize", dir_], capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"{where}: kubectl kustomize failed: {p.stderr.strip()}")
        return None
    return p.stdout


# ---------------------------------------------------------------------------------------------
# Walk the playbooks per node
# ---------------------------------------------------------------------------------------------
SHELL = shutil.which("dash") or shutil.which("sh")
SECRET_IN_COMMAND = re.compile(r"secrets\.")


def sh_parses(script, where):
    p = subprocess.run([SHELL, "-n"], input=script, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"{where}: not valid POSIX sh: {p.stderr.strip()}")


def main():
    variables, clusters = load_inventory()
    files = sorted(f for f in os.listdir(PLAYBOOKS) if re.match(r"^(7\d|8\d)-.*\.ya?ml$", f))
    if not files:
        fail("no playbooks 70-89 found")
    kustomizations = 0
    objects = 0
    for cluster in clusters:
        for node in cluster["nodes"]:
            base_ctx = node_context(variables, clusters, cluster, node)
            node_root = os.path.join(WORK, node["name"])
            for fname in files:
                with open(os.path.join(PLAYBOOKS, fname)) as f:
                    stage = yaml.safe_load(f)
                if not hosts_match(stage.get("hosts", "all"), cluster, node):
                    continue
                ctx = dict(base_ctx)
                for k, v in (stage.get("vars") or {}).items():
                    ctx[k] = render(v, ctx, f"{fname} vars.{k}") if isinstance(v, str) else v
                names = set()
                for task in stage.get("tasks", []):
                    where = f"{node['name']} {fname} [{task.get('name')}]"
                    if task.get("name") in names:
                        fail(f"{where}: duplicate task name")
                    names.add(task.get("name"))
                    actions = [k for k in ("run", "copy", "wait", "http", "s3_buckets") if k in task]
                    if len(actions) != 1:
                        fail(f"{where}: needs exactly one of run/copy/wait/http/s3_buckets")
                        continue
                    if "when" in task and not truthy(render(task["when"], ctx, where + " when")):
                        continue
                    for key, value in (task.get("env") or {}).items():
                        render(value, ctx, f"{where} env.{key}")
                    for kind, credentials in (("http", ("user", "password")), ("s3_buckets", ("access_key", "secret_key"))):
                        for key, value in (task.get(kind) or {}).items():
                            for v in value if isinstance(value, list) else [value]:
                                if not isinstance(v, str):
                                    continue
                                if key not in credentials and SECRET_IN_COMMAND.search(v):
                                    fail(f"{where}: secrets belong in {'/'.join(credentials)}, not in {kind}.{key}")
                                render(v, ctx, f"{where} {kind}.{key}")
                    for key in ("run", "wait", "unless"):
                        if key not in task:
                            continue
                        if SECRET_IN_COMMAND.search(task[key]):
                            fail(f"{where}: secrets belong in env:, not in {key}:")
                        script = render(task[key], ctx, f"{where} {key}")
                        if script is not None:
                            sh_parses(script, f"{where} {key}")
                    if "copy" in task:
                        c = task["copy"]
                        dest = render(c["dest"], ctx, where + " dest")
                        src = os.path.join(ASSETS, c.get("src", ""))
                        if dest is None or not os.path.exists(src):
                            fail(f"{where}: copy source {c.get('src')} missing")
                            continue
                        target = os.path.join(node_root, dest.lstrip("/"))
                        copy_tree(src, target, ctx if c.get("template") else None, where)
            # Build every kustomization that landed on this node.
            for dirpath, _, filenames in sorted(os.walk(node_root)):
                if "kustomization.yaml" not in filenames:
                    continue
                where = f"{node['name']} {os.path.relpath(dirpath, node_root)}"
                kpath = os.path.join(dirpath, "kustomization.yaml")
                with open(kpath) as f:
                    kust = yaml.safe_load(f)
                kustomizations += 1
                charts = kust.pop("helmCharts", None)
                if charts:
                    for chart in charts:
                        for field in ("name", "repo", "version", "releaseName", "valuesFile"):
                            if not chart.get(field):
                                fail(f"{where}: helmCharts entry without {field}")
                        if chart.get("valuesFile"):
                            check_values(chart["name"], os.path.join(dirpath, chart["valuesFile"]),
                                         f"{where} {chart['name']}")
                    # Build the rest without the charts: patches that target chart objects match
                    # nothing and are skipped, everything else is checked.
                    stripped = dirpath + ".nohelm"
                    shutil.copytree(dirpath, stripped)
                    with open(os.path.join(stripped, "kustomization.yaml"), "w") as f:
                        yaml.safe_dump(kust, f)
                    out = kustomize(stripped, where + " (charts stripped)")
                    shutil.rmtree(stripped)
                else:
                    out = kustomize(dirpath, where)
                if out is not None:
                    objects += check_objects(out, where)
    print(f"checked {len(files)} playbooks, {kustomizations} kustomizations, {objects} objects "
          f"for {sum(len(c['nodes']) for c in clusters)} nodes")
    if failures:
        print(f"{len(failures)} problem(s)")
        sys.exit(1)
    print("ok")


def copy_tree(src, target, ctx, where):
    if os.path.isfile(src):
        items = [(src, target)]
    else:
        items = []
        for dirpath, _, filenames in os.walk(src):
            for fn in filenames:
                s = os.path.join(dirpath, fn)
                items.append((s, os.path.join(target, os.path.relpath(s, src))))
    for s, t in items:
        os.makedirs(os.path.dirname(t), exist_ok=True)
        with open(s) as f:
            text = f.read()
        if ctx is not None:
            text = render(text, ctx, f"{where} {os.path.relpath(s, ASSETS)}")
            if text is None:
                continue
        with open(t, "w") as f:
            f.write(text)
        if t.endswith((".yaml", ".yml")):
            try:
                list(yaml.safe_load_all(text))
            except Exception as e:  # noqa: BLE001
                fail(f"{where}: {os.path.relpath(s, ASSETS)} is not YAML after rendering: {e}")
        if t.endswith(".json"):
            try:
                json.loads(text)
            except ValueError as e:
                fail(f"{where}: {os.path.relpath(s, ASSETS)} is not JSON after rendering: {e}")


main()
PY
