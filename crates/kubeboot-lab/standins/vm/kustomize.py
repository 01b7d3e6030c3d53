#!/usr/bin/python3
"""Stand-ins for the kustomize @KUSTOMIZE_VERSION@ and helm @HELM_VERSION@ release binaries in the VM lab's guests.

They arrive as the shipped stage 50-cilium downloads them: release archives (kustomize_vX_linux_amd64.tar.gz,
helm-vX-linux-amd64.tar.gz) in the lab's bundle, fetched by the guest's real curl through kubeboot's bundle
forward, checked by the real sha256sum against the inventory's sha256, unpacked by the real tar and installed
into tools_dir by the real install. What is stood in is only what the binaries do, since neither they nor the
charts can be had on this machine:

- `kustomize version`, and `kustomize build [--enable-helm --helm-command PATH] DIR`: follows `resources`
  (folders and files), moves namespaced objects into the kustomization's `namespace`, turns each
  `configMapGenerator` into a ConfigMap and each `helmCharts` entry into what the chart at the pinned version
  makes of the values file, for the objects later stages and checks ask about (CHARTS below; names read off
  the charts' templates at the inventory's pinned versions), plus a ConfigMap `<chart>-chart-values` holding
  the values. `patches` are not applied: they are passed on as comments. With helmCharts and no
  `--enable-helm` it fails as kustomize does; with `--helm-command` naming no program it fails as kustomize
  does when it cannot start helm (this is what RHEL's sudo secure_path does to a bare `helm`).
- `helm version [--short]`.

The YAML reader is the kubectl stand-in's (installed by the lab's kubectl package as /usr/bin/kubectl).
"""

import importlib.machinery
import importlib.util
import os
import shutil
import sys

KUSTOMIZE_VERSION = "@KUSTOMIZE_VERSION@"
HELM_VERSION = "@HELM_VERSION@"


def kube():
    loader = importlib.machinery.SourceFileLoader("kube_standin", "/usr/bin/kubectl")
    spec = importlib.util.spec_from_loader("kube_standin", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def get(d, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def meta(kind, name, namespace, api="apps/v1", annotations=None):
    text = f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n"
    if namespace:
        text += f"  namespace: {namespace}\n"
    if annotations:
        text += "  annotations:\n" + "".join(f"    {k}: {quote(v)}\n" for k, v in annotations.items())
    return text


def quote(v):
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def service(name, ns, kind_of, ports, annotations=None):
    text = meta("Service", name, ns, "v1", annotations) + f"spec:\n  type: {kind_of}\n  ports:\n"
    return text + "".join(f"  - name: {n}\n    port: {p}\n" for n, p in ports)


def cilium(ns, v):
    parts = [meta("DaemonSet", "cilium", ns), meta("Deployment", "cilium-operator", ns),
             meta("ConfigMap", "cilium-config", ns, "v1")
             + f"data:\n  kube-proxy-replacement: {quote(str(v.get('kubeProxyReplacement')).lower())}\n"
             + f"  enable-l2-announcements: {quote(str(get(v, 'l2announcements', 'enabled', default=False)).lower())}\n"]
    if get(v, "hubble", "tls", "auto", "method") == "cronJob":
        parts.append(meta("Job", "hubble-generate-certs", ns, "batch/v1"))
    if get(v, "ingressController", "enabled") and get(v, "ingressController", "loadbalancerMode") == "shared":
        svc = get(v, "ingressController", "service", default={}) or {}
        parts.append(service("cilium-ingress", ns, svc.get("type") or "LoadBalancer", [("http", 80), ("https", 443)],
                             svc.get("annotations") or {}))
    return parts


def longhorn(ns, v):
    # longhorn-csi-plugin is made by longhorn-driver-deployer when it runs; the stand-in lists it with the chart.
    return [meta("DaemonSet", "longhorn-manager", ns), meta("Deployment", "longhorn-driver-deployer", ns),
            meta("DaemonSet", "longhorn-csi-plugin", ns)]


def kube_prometheus_stack(ns, v):
    # The two StatefulSets are made by the operator from the Prometheus and Alertmanager objects.
    parts = [meta("Deployment", "kube-prometheus-stack-operator", ns),
             meta("StatefulSet", "prometheus-kube-prometheus-stack-prometheus", ns),
             meta("StatefulSet", "alertmanager-kube-prometheus-stack-alertmanager", ns),
             meta("DaemonSet", "kube-prometheus-stack-prometheus-node-exporter", ns),
             meta("Deployment", "kube-prometheus-stack-kube-state-metrics", ns)]
    ext = get(v, "prometheus", "thanosServiceExternal", default={}) or {}
    if ext.get("enabled"):
        # checked: kube-prometheus-stack templates/prometheus/serviceThanosSidecarExternal.yaml (name
        # <fullname>-thanos-external, type, annotations, one port: portName/port, values.yaml grpc/10901)
        parts.append(service("kube-prometheus-stack-thanos-external", ns, ext.get("type") or "LoadBalancer",
                             [(ext.get("portName") or "grpc", ext.get("port") or 10901)], ext.get("annotations") or {}))
    return parts


def opensearch(ns, v):
    name = f"{v.get('clusterName') or 'opensearch-cluster'}-{v.get('nodeGroup') or 'master'}"
    secret = next((get(e, "valueFrom", "secretKeyRef") for e in v.get("extraEnvs") or []
                   if isinstance(e, dict) and e.get("name") == "OPENSEARCH_INITIAL_ADMIN_PASSWORD"), None) or {}
    annotations = {"kubeboot.io/standin-admin-secret": f"{secret.get('name', '')}/{secret.get('key', '')}"}
    return [meta("StatefulSet", name, ns), service(name, ns, "ClusterIP", [("http", 9200)], annotations)]


def fluent_bit(ns, v):
    outputs = get(v, "config", "outputs", default="") or ""
    body = "".join("    " + line + "\n" for line in outputs.splitlines())
    # The pods' variables from Secrets, by name (the agent's OpenSearch password).
    env = {f"kubeboot.io/standin-secret-env.{e['name']}": "{}/{}".format(ref.get("name"), ref.get("key"))
           for e in v.get("env") or [] if isinstance(e, dict)
           for ref in [get(e, "valueFrom", "secretKeyRef")] if isinstance(ref, dict)}
    return [meta("DaemonSet", "fluent-bit", ns, annotations=env), meta("ConfigMap", "fluent-bit", ns, "v1")
            + f"data:\n  fluent-bit.conf: |\n{body}"]


def grafana(ns, v):
    return [meta("Deployment", "grafana", ns)]


CHARTS = {"cilium": cilium, "longhorn": longhorn, "kube-prometheus-stack": kube_prometheus_stack,
          "opensearch": opensearch, "fluent-bit": fluent_bit, "grafana": grafana}


def with_namespace(doc, ns):
    """Moves a namespaced object into `ns`, as kustomize's `namespace:` does (cluster-scoped kinds stay)."""
    if not ns or not doc.strip():
        return doc
    lines = doc.splitlines()
    kind = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("kind:")), "")
    if kind in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                "CiliumLoadBalancerIPPool", "CiliumL2AnnouncementPolicy", "PriorityClass"):
        return doc
    out, in_meta, done = [], False, False
    for l in lines:
        if in_meta and l.startswith("  namespace:"):
            out.append(f"  namespace: {ns}")
            done = True
            continue
        if in_meta and not l.startswith(" ") and not done:
            out.append(f"  namespace: {ns}")
            done = True
        out.append(l)
        if l.startswith("metadata:"):
            in_meta = True
        elif in_meta and not l.startswith(" "):
            in_meta = False
    if in_meta and not done:
        out.append(f"  namespace: {ns}")
    return "\n".join(out) + "\n"


def build(path, helm, k):
    text = open(os.path.join(path, "kustomization.yaml")).read()
    spec = k.yaml_documents(text)[0] or {}
    ns = spec.get("namespace")
    parts = []
    for item in spec.get("resources") or []:
        target = os.path.join(path, str(item))
        if os.path.isdir(target):
            parts.extend(build(target, helm, k))
        else:
            parts.extend(d for d in k.split_documents(open(target).read()))
    charts = spec.get("helmCharts") or []
    if charts and not helm:
        raise SystemExit("Error: trouble configuring builtin HelmChartInflationGenerator with config: `...`: "
                         "must specify --enable-helm")
    for chart in charts:
        name = chart.get("name")
        chart_ns = chart.get("namespace") or ns or "default"
        values_text = open(os.path.join(path, chart["valuesFile"])).read() if chart.get("valuesFile") else ""
        values = (k.yaml_documents(values_text) or [{}])[0] or {}
        if name not in CHARTS:
            raise SystemExit(f"Error: the VM lab's helm stand-in does not know chart {name!r}")
        parts.extend(CHARTS[name](chart_ns, values))
        body = "".join("    " + line + "\n" for line in values_text.splitlines())
        parts.append(meta("ConfigMap", f"{name}-chart-values", chart_ns, "v1")
                     + f"data:\n  chart: {name}\n  version: {quote(chart.get('version'))}\n  values.yaml: |\n{body}")
    for gen in spec.get("configMapGenerator") or []:
        parts.append(meta("ConfigMap", gen.get("name"), gen.get("namespace") or ns, "v1"))
    patches = spec.get("patches") or []
    out = [with_namespace(p, ns) for p in parts]
    if patches:
        raw = k.top_level_block(text, "patches")
        out.append("# patches (not applied by the stand-in):\n" + "".join("# " + l + "\n" for l in raw.splitlines()))
    return out


def kustomize(argv):
    if argv[:1] == ["version"]:
        print("v" + KUSTOMIZE_VERSION)
        return 0
    if argv[:1] != ["build"]:
        print(f"kustomize (stand-in): {' '.join(argv)} is not stood in", file=sys.stderr)
        return 1
    with_value = {"--helm-command", "--helm-kube-version", "--helm-api-versions", "-o", "--output",
                  "--load-restrictor", "--reorder", "--env", "-e", "--mount"}
    dirs, helm_command, args = [], "helm", iter(argv[1:])
    for a in args:
        if a in with_value:
            v = next(args, "")
            if a == "--helm-command":
                helm_command = v
        elif a.startswith("--helm-command="):
            helm_command = a.split("=", 1)[1]
        elif not a.startswith("-"):
            dirs.append(a)
    helm = "--enable-helm" in argv
    if helm and not (os.access(helm_command, os.X_OK) if "/" in helm_command else shutil.which(helm_command)):
        print(f"Error: unable to run: '{helm_command} pull ...' (is '{helm_command}' installed?): "
              f'exec: "{helm_command}": executable file not found in $PATH', file=sys.stderr)
        return 1
    k = kube()
    docs = build(dirs[0] if dirs else ".", helm, k)
    sys.stdout.write("".join("---\n" + d.strip("\n") + "\n" for d in docs if d.strip()))
    return 0


def helm(argv):
    if argv[:1] == ["version"]:
        print(f"v{HELM_VERSION}" + ("" if "--short" in argv else "+gstandin"))
        return 0
    print(f"helm (stand-in): {' '.join(argv)} is not stood in", file=sys.stderr)
    return 1


if __name__ == "__main__":
    name = os.path.basename(sys.argv[0])
    sys.exit(helm(sys.argv[1:]) if name == "helm" else kustomize(sys.argv[1:]))
