#!/usr/bin/python3
"""Stand-ins for kubeadm, kubelet and kubectl inside the VM lab's guests (Kubernetes @VERSION@).

What is real around them: the guest's kernel, systemd, apt and dpkg (these files arrive as real .debs named
kubeadm, kubelet and kubectl from the lab's package repository, installed and held by the shipped stage
30-kubernetes), containerd and the settings the earlier stages made, the guests' private switch, and the
kernel that answers ARP and ping for an address on an interface.

What is stood in, because none of it can be had on this machine (no Kubernetes packages, no registry):
- kubeadm: `version`, `config validate`, `config images list|pull` (nothing to pull), `init` (preflight
  checks of the real node state: ip_forward, the containerd socket, swap; the files kubeadm writes:
  kubeconfigs, a stand-in CA, static pod manifests, the kubelet's config; then starts the kubelet and waits
  for the API server), `init phase upload-certs`, `token create --print-join-command` and `join --config`
  (discovery of cluster-info at apiServerEndpoint, the CA pinned by caCertHashes, the bootstrap token and
  the certificate key checked by the API server that answers there). Tokens and keys are sent and kept as
  SHA-256 hashes only.
- kubelet: a systemd service that fails like the real one without /var/lib/kubelet/config.yaml or with
  swap on, and runs the static pods of /etc/kubernetes/manifests it knows as processes: the API server
  below and kube-vip (the kube-vip stand-in, /usr/lib/kubeboot-standins/kube-vip), each with its
  container's env and args. etcd, the controller manager and the scheduler are accepted and not run.
  There are no containers: containerd is not asked to run anything.
- the API server (`kube-apiserver` static pod): plain HTTP (no TLS) on :6443 with /readyz, /livez,
  cluster-info, the node list, and the token, key and join requests kubeadm makes. Its "etcd" is a JSON
  file on its own node: nothing is replicated between control planes.
- kubectl: `get --raw PATH`, `get nodes` (also `-o jsonpath='{.items[*].spec.taints[*].key}'`), `taint nodes
  --all KEY-`, `version`, against the server of the kubeconfig given. Nodes carry the taints kubeadm gives them:
  a control plane `node-role.kubernetes.io/control-plane` unless its nodeRegistration.taints says otherwise
  (`taints: []` is none), a worker none. For the manifest stages: `apply -f FILE|-` (the API server keeps the
  objects in its state file; of a Secret only the SHA-256 of each value, the values stay in its memory), `diff -f FILE|-`
  (exit 0 when every object is as applied, 1 when one differs or is missing: the stages' guards), `get
  KIND NAME` (a Service's `-o jsonpath` LB IP or ClusterIP), `delete`, `rollout status`, `wait` (nodes, pods of
  a namespace that exists, CRDs: Cilium's once its operator is there) and `exec ds/cilium -- cilium-dbg status`
  (KubeProxyReplacement as cilium-config says). Objects the charts make come from the kustomize stand-in's
  model of each chart (standins/vm/kustomize.py).
- the controllers the stages look at, in the API server process (class Runtime): Cilium LB-IPAM with its
  sharing rules (a sharing key, across namespaces only when both Services allow it) and L2 announcements (the
  allocated address put on the switch interface, so the other VMs reach it, and its ports served: the ingress
  on 80, the Thanos sidecar's gRPC port accepting connections), Thanos Query's store list (a real connection to
  each `--endpoint` over the switch), OpenSearch on its Service's ClusterIP (health, snapshot repository, ISM and
  SM policies, _bulk, _count; basic auth against the admin Secret's hash) and behind the ingress for
  `opensearch.<domain>`, and Fluent Bit, which sends a record every few seconds to its [OUTPUT] Host:Port with
  the password from its Secret (after a reboot, when the values are no longer in memory, with the SHA-256 the
  state file keeps of it: the API server never writes a Secret value to disk).
"""

import hashlib
import http.server
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

VERSION = "v@VERSION@"
HOME = "/usr/lib/kubeboot-standins"
K8S = "/etc/kubernetes"
MANIFESTS = K8S + "/manifests"
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
# The API server's state: where a real control plane keeps it (etcd's data folder), as one JSON file.
APISERVER_STATE = "/var/lib/etcd/standin-apiserver.json"
SEARCH_STATE = "/var/lib/etcd/standin-opensearch.json"
# How the stand-in Fluent Bit logs in once a reboot took the Secret values out of memory: user and the SHA-256 of
# the password its Secret holds (a real agent would read the Secret again; here only its hash is on disk).
STANDIN_HASH_AUTH = "KubebootStandinHash"
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane"
# The one jsonpath the shipped stages ask for.
TAINT_KEYS = "jsonpath={.items[*].spec.taints[*].key}"


def out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def err(text):
    sys.stderr.write(text)
    sys.stderr.flush()


def sha256(text):
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# A small YAML reader: block mappings and sequences, plain and quoted scalars, [] and {} (what Kubernetes
# manifests and kubeadm configurations are written in). The guests have python3 but no PyYAML.


def _strip_comment(line):
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text):
    text = text.strip()
    if text in ("[]", "{}"):
        return [] if text == "[]" else {}
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(p) for p in _flow_items(text[1:-1])]
    if text.startswith("{") and text.endswith("}"):
        out = {}
        for item in _flow_items(text[1:-1]):
            k, _, v = item.partition(":")
            out[_scalar(k)] = _scalar(v)
        return out
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1].replace('\\"', '"') if text[0] == '"' else text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


def _flow_items(text):
    """The comma-separated items of a flow collection's inside (no nesting: what manifests write inline)."""
    items, cur, quote = [], "", None
    for c in text:
        if quote:
            quote = None if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == ",":
            items.append(cur)
            cur = ""
            continue
        cur += c
    items.append(cur)
    return [i for i in items if i.strip()]


_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[^\s:"'#-][^:#]*?|-[^\s:][^:#]*?)\s*:(\s+|$)(.*)$""")


def yaml_documents(text):
    docs, cur = [], []
    for raw in text.splitlines():
        if raw.strip() == "---":
            docs.append(cur)
            cur = []
            continue
        line = _strip_comment(raw)
        if line.strip():
            cur.append([len(line) - len(line.lstrip(" ")), line.strip()])
    docs.append(cur)
    return [_block(d, 0, d[0][0])[0] for d in docs if d]


def _block(lines, i, indent):
    if lines[i][1] == "-" or lines[i][1].startswith("- "):
        return _seq(lines, i, indent)
    return _map(lines, i, indent)


def _map(lines, i, indent):
    out = {}
    while i < len(lines) and lines[i][0] == indent and not (lines[i][1] == "-" or lines[i][1].startswith("- ")):
        m = _KEY.match(lines[i][1])
        if not m:
            raise ValueError(f"not a mapping entry: {lines[i][1]!r}")
        key, rest = _scalar(m.group(1)), m.group(3)
        i += 1
        if re.fullmatch(r"[|>][-+]?", rest.strip()):
            body = []
            while i < len(lines) and lines[i][0] > indent:
                body.append(lines[i][1])
                i += 1
            out[key] = "\n".join(body) + "\n"
        elif rest.strip():
            out[key] = _scalar(rest)
        elif i < len(lines) and (lines[i][0] > indent or (lines[i][0] == indent and lines[i][1].startswith("-"))):
            out[key], i = _block(lines, i, lines[i][0])
        else:
            out[key] = None
    return out, i


def _seq(lines, i, indent):
    out = []
    while i < len(lines) and lines[i][0] == indent and (lines[i][1] == "-" or lines[i][1].startswith("- ")):
        text = lines[i][1]
        rest = text[1:].lstrip()
        if not rest:
            i += 1
            item, i = _block(lines, i, lines[i][0])
        elif _KEY.match(rest):
            sub = indent + len(text) - len(rest)
            lines[i] = [sub, rest]
            item, i = _map(lines, i, sub)
        else:
            item = _scalar(rest)
            i += 1
        out.append(item)
    return out, i


def split_documents(text):
    """The documents of a multi-document YAML text, as text."""
    return [d for d in re.split(r"(?m)^---[ \t]*$", text) if d.strip()]


def top_level_block(text, key):
    """The lines of a top-level key's block, without the key line."""
    m = re.search(rf"(?m)^{key}:[^\n]*\n((?:(?:[ \t-].*)?\n)*)", text)
    return m.group(1) if m else ""


def load_yaml(path):
    with open(path) as f:
        return yaml_documents(f.read())


# ---------------------------------------------------------------------------------------------------------------
# Files kubeadm writes.


def kubeconfig(server, user):
    return (
        "apiVersion: v1\nclusters:\n- cluster:\n"
        f"    certificate-authority-data: {sha256(open(K8S + '/pki/ca.crt').read())}\n"
        f"    server: https://{server}\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n"
        f"    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\nkind: Config\n"
        f"preferences: {{}}\nusers:\n- name: {user}\n  user:\n"
        f"    client-certificate-data: {sha256(os.urandom(32))}\n    client-key-data: {sha256(os.urandom(32))}\n"
    )


def write(path, text, mode=0o600):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def static_pod(name, image, command):
    args = "".join(f"    - {a}\n" for a in command)
    return (
        f"# Written by the kubeadm stand-in of kubeboot's VM lab.\napiVersion: v1\nkind: Pod\nmetadata:\n"
        f"  name: {name}\n  namespace: kube-system\n  labels:\n    component: {name}\n    tier: control-plane\n"
        f"spec:\n  hostNetwork: true\n  containers:\n  - name: {name}\n    image: {image}\n    command:\n{args}"
    )


def write_control_plane(address, repository):
    write(MANIFESTS + "/etcd.yaml", static_pod("etcd", f"{repository}/etcd:3.6.4-0",
                                               ["etcd", f"--advertise-client-urls=https://{address}:2379"]))
    write(MANIFESTS + "/kube-apiserver.yaml", static_pod("kube-apiserver", f"{repository}/kube-apiserver:{VERSION}",
                                                         ["kube-apiserver", f"--advertise-address={address}",
                                                          "--secure-port=6443"]))
    for name in ("kube-controller-manager", "kube-scheduler"):
        write(MANIFESTS + f"/{name}.yaml", static_pod(name, f"{repository}/{name}:{VERSION}", [name]))


def write_kubelet_config(kubelet_doc, node_ip):
    cgroup = (kubelet_doc or {}).get("cgroupDriver", "systemd")
    write(KUBELET_CONFIG, "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                          f"cgroupDriver: {cgroup}\nstaticPodPath: {MANIFESTS}\n", 0o644)
    write("/var/lib/kubelet/kubeadm-flags.env",
          f'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip={node_ip}"\n',
          0o644)


def preflight(kind):
    """The checks of kubeadm's preflight whose subject the earlier stages really set on the node."""
    errors = []
    try:
        if open("/proc/sys/net/ipv4/ip_forward").read().strip() != "1":
            errors.append("[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: /proc/sys/net/ipv4/ip_forward contents are not set to 1")
    except OSError as e:
        errors.append(f"[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: {e}")
    if not os.path.exists("/run/containerd/containerd.sock"):
        errors.append("[ERROR CRI]: container runtime is not running: /run/containerd/containerd.sock does not exist")
    if subprocess.run(["systemctl", "is-active", "--quiet", "containerd"]).returncode != 0:
        errors.append("[ERROR CRI]: containerd.service is not active")
    if len(open("/proc/swaps").read().strip().splitlines()) > 1:
        err("[WARNING Swap]: swap is supported for cgroup v2 only; the kubelet must be properly configured to use swap\n")
    if kind == "init" and os.path.exists(MANIFESTS + "/kube-apiserver.yaml"):
        errors.append(f"[ERROR FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml]: {MANIFESTS}/kube-apiserver.yaml already exists")
    if os.path.exists(K8S + "/kubelet.conf"):
        errors.append(f"[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: {K8S}/kubelet.conf already exists")
    if errors:
        err("error execution phase preflight: [preflight] Some fatal errors occurred:\n\t" + "\n\t".join(errors) + "\n")
        sys.exit(1)
    out("[preflight] Running pre-flight checks\n")


def config_docs(path):
    docs = load_yaml(path)
    by_kind = {d.get("kind"): d for d in docs if isinstance(d, dict)}
    for d in docs:
        api = d.get("apiVersion", "")
        if d.get("kind") in ("InitConfiguration", "ClusterConfiguration", "JoinConfiguration") and api != "kubeadm.k8s.io/v1beta4":
            raise ValueError(f"{d.get('kind')}: apiVersion {api!r} is not kubeadm.k8s.io/v1beta4")
    return by_kind


def restart_kubelet():
    out("[kubelet-start] Starting the kubelet\n")
    subprocess.run(["systemctl", "daemon-reload"], check=False)
    subprocess.run(["systemctl", "restart", "kubelet"], check=True)


def wait_api(url, what, timeout=240):
    out(f"[wait-control-plane] Waiting for {what} at {url}\n")
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=3) as r:
                if r.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(1)
    err(f"{what} at {url} did not become ready within {timeout}s\n")
    return False


def kubeconfig_server(path):
    m = re.search(r"server:\s*https?://(\S+)", open(path).read())
    if not m:
        raise ValueError(f"{path} names no server")
    return "http://" + m.group(1)


def api(server, method, path, body=None, token=None, patience=30):
    """One request to the API server; a connection that fails is tried again for `patience` seconds (the VIP
    may be moving), an HTTP error answer is returned as it is."""
    deadline = time.time() + patience
    while True:
        req = urllib.request.Request(server + path, method=method, data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def new_token():
    a = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(a) for _ in range(6)) + "." + "".join(secrets.choice(a) for _ in range(16))


def ca_hash():
    return "sha256:" + sha256(open(K8S + "/pki/ca.crt").read())


def taints_of(registration, control_plane):
    """The taint keys kubeadm registers a node with (kubeadm v1beta4 nodeRegistration.taints: left out means the
    default, the control-plane taint on a control plane; `[]` means none)."""
    registration = registration or {}
    if "taints" in registration:
        return [t.get("key") for t in registration.get("taints") or [] if isinstance(t, dict)]
    return [CONTROL_PLANE_TAINT] if control_plane else []


def kubeadm_objects(init, cluster):
    """The objects kubeadm init makes that later stages ask about: the namespaces, and the kube-proxy
    DaemonSet unless its addon phase is skipped or the proxy disabled (kubeadm v1beta4 skipPhases,
    ClusterConfiguration proxy.disabled)."""
    objects = {}
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        objects[object_key("Namespace", None, ns)] = {"kind": "Namespace", "name": ns, "namespace": None,
                                                     "annotations": {}, "created": time.time()}
    skipped = "addon/kube-proxy" in (init.get("skipPhases") or []) or "addon" in (init.get("skipPhases") or [])
    if not skipped and not (cluster.get("proxy") or {}).get("disabled"):
        objects[object_key("DaemonSet", "kube-system", "kube-proxy")] = {
            "kind": "DaemonSet", "name": "kube-proxy", "namespace": "kube-system", "annotations": {}, "created": time.time()}
    return objects


def kubeadm_init(argv):
    cfg = argv[argv.index("--config") + 1]
    docs = config_docs(cfg)
    init, cluster = docs.get("InitConfiguration") or {}, docs.get("ClusterConfiguration") or {}
    if cluster.get("kubernetesVersion") != VERSION:
        err(f"this version of kubeadm only supports deploying clusters with kubernetesVersion {VERSION}, not {cluster.get('kubernetesVersion')}\n")
        return 1
    preflight("init")
    address = (init.get("localAPIEndpoint") or {}).get("advertiseAddress")
    endpoint = cluster.get("controlPlaneEndpoint") or f"{address}:6443"
    repository = cluster.get("imageRepository") or "registry.k8s.io"
    out("[certs] Generating \"ca\" certificate and key (stand-in)\n")
    write(K8S + "/pki/ca.crt", "-----BEGIN CERTIFICATE-----\n" + sha256(os.urandom(32)) + "\n-----END CERTIFICATE-----\n", 0o644)
    write(K8S + "/pki/ca.key", sha256(os.urandom(32)) + "\n")
    for name in ("apiserver", "apiserver-kubelet-client", "front-proxy-ca", "sa", "etcd/ca"):
        write(K8S + f"/pki/{name}.crt", "stand-in\n", 0o644)
    out("[kubeconfig] Writing admin.conf, super-admin.conf, kubelet.conf, controller-manager.conf, scheduler.conf\n")
    write(K8S + "/admin.conf", kubeconfig(endpoint, "kubernetes-admin"))
    write(K8S + "/super-admin.conf", kubeconfig(endpoint, "kubernetes-super-admin"))
    write(K8S + "/kubelet.conf", kubeconfig(endpoint, "system:node:" + socket.gethostname()))
    for name in ("controller-manager", "scheduler"):
        write(K8S + f"/{name}.conf", kubeconfig(f"{address}:6443", "system:kube-" + name))
    os.makedirs("/var/lib/etcd", mode=0o700, exist_ok=True)
    state = {"cluster": cluster.get("clusterName"), "tokens": {}, "certificate_keys": {},
             "nodes": {socket.gethostname(): {"role": "control-plane", "address": address, "via": "init",
                                              "taints": taints_of(init.get("nodeRegistration"), True)}},
             "ca": open(K8S + "/pki/ca.crt").read(),
             "service_cidr": (cluster.get("networking") or {}).get("serviceSubnet") or "10.96.0.0/12",
             "objects": kubeadm_objects(init, cluster)}
    write(APISERVER_STATE, json.dumps(state))
    write_control_plane(address, repository)
    write_kubelet_config(docs.get("KubeletConfiguration"), address)
    restart_kubelet()
    if not wait_api(f"http://127.0.0.1:6443", "the API server (static pod)"):
        return 1
    server = "http://127.0.0.1:6443"
    token = new_token()
    api(server, "POST", "/standin/tokens", {"hash": sha256(token), "ttl": 86400})
    key = None
    if "--upload-certs" in argv:
        key = secrets.token_hex(32)
        api(server, "POST", "/standin/certificate-keys", {"hash": sha256(key), "ttl": 7200})
        out('[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace\n')
    out("\nYour Kubernetes control-plane has initialized successfully!\n\n")
    if key and "--skip-certificate-key-print" not in argv:
        out(f"  kubeadm join {endpoint} --control-plane --certificate-key {key}\n")
    if "--skip-token-print" not in argv:
        out(f"  kubeadm join {endpoint} --token {token} --discovery-token-ca-cert-hash {ca_hash()}\n")
    return 0


def admin_server():
    if not os.path.exists(K8S + "/admin.conf"):
        err(f"failed to load admin kubeconfig: open {K8S}/admin.conf: no such file or directory\n")
        sys.exit(1)
    return kubeconfig_server(K8S + "/admin.conf")


def kubeadm_token_create(argv):
    server = admin_server()
    token = new_token()
    ttl = 86400
    if "--ttl" in argv:
        t = argv[argv.index("--ttl") + 1]
        ttl = int(t[:-1]) * {"h": 3600, "m": 60, "s": 1}[t[-1]]
    status, body = api(server, "POST", "/standin/tokens", {"hash": sha256(token), "ttl": ttl})
    if status != 200:
        err(f"failed to create bootstrap token: {body}\n")
        return 1
    endpoint = server.split("//", 1)[1]
    if "--print-join-command" in argv:
        out(f"kubeadm join {endpoint} --token {token} --discovery-token-ca-cert-hash {ca_hash()} \n")
    else:
        out(token + "\n")
    return 0


def kubeadm_upload_certs(argv):
    server = admin_server()
    key = secrets.token_hex(32)
    status, body = api(server, "POST", "/standin/certificate-keys", {"hash": sha256(key), "ttl": 7200})
    if status != 200:
        err(f"error uploading certs: {body}\n")
        return 1
    out('[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace\n'
        "[upload-certs] Using certificate key:\n" + key + "\n")
    return 0


def kubeadm_join(argv):
    if "--config" not in argv:
        err("this stand-in only joins with --config (the token must not be on a command line)\n")
        return 1
    docs = config_docs(argv[argv.index("--config") + 1])
    join = docs.get("JoinConfiguration")
    if not join:
        err("no JoinConfiguration in the config\n")
        return 1
    boot = (join.get("discovery") or {}).get("bootstrapToken") or {}
    endpoint, token, hashes = boot.get("apiServerEndpoint"), boot.get("token") or "", boot.get("caCertHashes") or []
    control = join.get("controlPlane")
    problems = []
    if not endpoint:
        problems.append("discovery.bootstrapToken.apiServerEndpoint is empty")
    if not TOKEN_RE.match(token):
        problems.append("the bootstrap token is not of the form [a-z0-9]{6}.[a-z0-9]{16}")
    if not hashes or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes):
        problems.append("caCertHashes needs sha256:<64 hex>")
    key = (control or {}).get("certificateKey") if control is not None else None
    if control is not None and not re.fullmatch(r"[0-9a-f]{64}", key or ""):
        problems.append("controlPlane.certificateKey must be 64 hex characters")
    if problems:
        err("error execution phase preflight: " + "; ".join(problems) + "\n")
        return 1
    preflight("join")
    server = "http://" + endpoint
    out(f"[discovery] Trying to connect to API Server {endpoint!r}\n")
    try:
        status, info = api(server, "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    except OSError as e:
        err(f"error execution phase preflight: couldn't validate the identity of the API Server: {e}\n")
        return 1
    ca = (info.get("data") or {}).get("ca.crt", "")
    if "sha256:" + sha256(ca) not in hashes:
        err(f"error execution phase preflight: cluster CA found in cluster-info ConfigMap is invalid: none of the public keys {hashes} are pinned\n")
        return 1
    name = socket.gethostname()
    node_ip = next((a.get("value") for a in (join.get("nodeRegistration") or {}).get("kubeletExtraArgs") or []
                    if a.get("name") == "node-ip"), None)
    request = {"node": name, "address": node_ip, "control_plane": control is not None,
               "certificate_key_hash": sha256(key) if key else None,
               "taints": taints_of(join.get("nodeRegistration"), control is not None)}
    status, answer = api(server, "POST", "/standin/join", request, token=token)
    if status != 200:
        err(f"error execution phase kubelet-start: {answer.get('message', answer)}\n")
        return 1
    out(f"[discovery] Cluster info signature and contents are valid and the API Server is {endpoint!r}\n")
    write(K8S + "/pki/ca.crt", ca, 0o644)
    write(K8S + "/kubelet.conf", kubeconfig(endpoint, "system:node:" + name))
    write_kubelet_config(None, node_ip)
    if control is not None:
        address = (control.get("localAPIEndpoint") or {}).get("advertiseAddress") or node_ip
        write(K8S + "/pki/ca.key", answer["ca_key"] + "\n")
        write(K8S + "/admin.conf", kubeconfig(endpoint, "kubernetes-admin"))
        for name_ in ("controller-manager", "scheduler"):
            write(K8S + f"/{name_}.conf", kubeconfig(f"{address}:6443", "system:kube-" + name_))
        os.makedirs("/var/lib/etcd", mode=0o700, exist_ok=True)
        write(APISERVER_STATE, json.dumps({"cluster": answer.get("cluster"), "tokens": {}, "certificate_keys": {},
                                           "nodes": answer.get("nodes", {}), "ca": ca}))
        write_control_plane(address, answer.get("image_repository", "registry.k8s.io"))
    restart_kubelet()
    if control is not None and not wait_api("http://127.0.0.1:6443", "this node's API server (static pod)"):
        return 1
    out("\nThis node has joined the cluster" + (" and a new control plane instance was created" if control is not None else "") + ".\n")
    return 0


def kubeadm(argv):
    if argv[:1] == ["version"]:
        out(VERSION + "\n" if "short" in argv else f'kubeadm version: &version.Info{{GitVersion:"{VERSION}"}}\n')
        return 0
    try:
        if argv[:2] == ["config", "validate"]:
            docs = config_docs(argv[argv.index("--config") + 1])
            if "InitConfiguration" not in docs and "JoinConfiguration" not in docs:
                err("no InitConfiguration or JoinConfiguration\n")
                return 1
            out("ok\n")
            return 0
        if argv[:2] == ["config", "images"]:
            out("[config/images] the VM lab has no registry: nothing pulled (stand-in)\n")
            return 0
        if argv[:3] == ["init", "phase", "upload-certs"]:
            return kubeadm_upload_certs(argv)
        if argv[:1] == ["init"]:
            return kubeadm_init(argv)
        if argv[:2] == ["token", "create"]:
            return kubeadm_token_create(argv)
        if argv[:1] == ["join"]:
            return kubeadm_join(argv)
    except (OSError, ValueError, KeyError) as e:
        err(f"kubeadm (stand-in): {e}\n")
        return 1
    err(f"kubeadm (stand-in): {' '.join(argv)} is not stood in\n")
    return 1


# ---------------------------------------------------------------------------------------------------------------
# Objects: what `kubectl apply` hands the API server, kept in its state file, and the few controllers whose
# effects the shipped stages look at (Cilium LB-IPAM and L2 announcements, the Thanos stores, OpenSearch and
# Fluent Bit), run inside the API server process. The chart objects come from the kustomize stand-in's model.

KINDS = {
    "svc": "Service", "service": "Service", "services": "Service",
    "ds": "DaemonSet", "daemonset": "DaemonSet", "daemonsets": "DaemonSet",
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "sts": "StatefulSet", "statefulset": "StatefulSet", "statefulsets": "StatefulSet",
    "job": "Job", "jobs": "Job", "cm": "ConfigMap", "configmap": "ConfigMap", "configmaps": "ConfigMap",
    "secret": "Secret", "secrets": "Secret", "ns": "Namespace", "namespace": "Namespace",
    "namespaces": "Namespace", "prometheusrule": "PrometheusRule", "prometheusrules": "PrometheusRule",
    "ingress": "Ingress", "ingresses": "Ingress", "crd": "CustomResourceDefinition",
    "customresourcedefinition": "CustomResourceDefinition",
}
# Where kubectl names a kind in its NotFound message (resource.group).
RESOURCES = {"DaemonSet": "daemonsets.apps", "Deployment": "deployments.apps", "StatefulSet": "statefulsets.apps",
             "Service": "services", "Job": "jobs.batch", "ConfigMap": "configmaps", "Secret": "secrets",
             "Namespace": "namespaces", "PrometheusRule": "prometheusrules.monitoring.coreos.com"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                  "CiliumLoadBalancerIPPool", "CiliumL2AnnouncementPolicy", "PriorityClass",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
SHARING_KEY = "lbipam.cilium.io/sharing-key"
SHARING_CROSS_NS = "lbipam.cilium.io/sharing-cross-namespace"
REQUESTED_IPS = "lbipam.cilium.io/ips"
STORES_PATH = "/api/v1/namespaces/monitoring/services/http:thanos-query:http/proxy/api/v1/stores"


def object_key(kind, ns, name):
    return f"{kind}/{'' if kind in CLUSTER_SCOPED else ns or 'default'}/{name}"


def describe(doc_text):
    """What the API server keeps of one applied document: kind, name, namespace, annotations and the few spec
    fields the controllers read; for a Secret the SHA-256 of each value only (the values stay in memory)."""
    try:
        docs = yaml_documents(doc_text)
    except (ValueError, IndexError) as e:
        raise ValueError(f"cannot read a document: {e}") from e
    if not docs or not isinstance(docs[0], dict):
        return None, {}
    d = docs[0]
    kind, md = d.get("kind"), d.get("metadata") or {}
    if not kind or not md.get("name"):
        return None, {}
    obj = {"kind": kind, "name": md["name"], "namespace": None if kind in CLUSTER_SCOPED else md.get("namespace") or "default",
           "annotations": md.get("annotations") or {}}
    spec = d.get("spec") or {}
    values = {}
    if kind == "Service":
        obj["type"] = spec.get("type") or "ClusterIP"
        obj["ports"] = [p.get("port") for p in spec.get("ports") or [] if isinstance(p, dict)]
    elif kind == "CiliumLoadBalancerIPPool":
        obj["blocks"] = spec.get("blocks") or []
    elif kind == "CiliumL2AnnouncementPolicy":
        obj["loadBalancerIPs"] = bool(spec.get("loadBalancerIPs"))
    elif kind in ("Secret", "ConfigMap"):
        data = d.get("data") or {}
        if kind == "Secret":
            import base64
            for k, v in data.items():
                values[k] = base64.b64decode(str(v)).decode(errors="replace")
            obj["hashes"] = {k: sha256(v) for k, v in values.items()}
        else:
            obj["data"] = {k: str(v) for k, v in data.items()}
    if kind != "Secret":
        obj["text"] = doc_text
    return obj, values


class Kubectl:
    VALUE_FLAGS = {"-n", "--namespace", "-o", "--output", "-f", "--filename", "-c", "--container", "--for",
                   "--timeout", "--field-selector", "--field-manager", "--raw", "-l", "--selector"}

    def __init__(self, argv):
        self.flags, self.words, self.after = {}, [], []
        i = 0
        while i < len(argv):
            a = argv[i]
            if a == "--":
                self.after = argv[i + 1:]
                break
            if a.startswith("-") and "=" in a and a.split("=", 1)[0] in self.VALUE_FLAGS:
                k, v = a.split("=", 1)
                self.flags[k] = v
            elif a in self.VALUE_FLAGS and i + 1 < len(argv):
                self.flags[a] = argv[i + 1]
                i += 1
            elif a.startswith("-"):
                self.flags[a] = True
            else:
                self.words.append(a)
            i += 1
        self.ns = self.flags.get("-n") or self.flags.get("--namespace") or "default"
        self.output = self.flags.get("-o") or self.flags.get("--output") or ""

    def input(self):
        """The documents of `-f FILE` or `-f -` (stdin)."""
        source = self.flags.get("-f") or self.flags.get("--filename")
        return sys.stdin.read() if source in (None, True, "-") else open(source).read()

    def targets(self, first):
        """KIND NAME..., KIND/NAME... from word `first` on, as (Kind, name) pairs."""
        words, out = self.words[first:], []
        if words and "/" not in words[0] and len(words) > 1:
            kind = KINDS.get(words[0].lower(), words[0])
            return [(kind, w) for w in words[1:]]
        for w in words:
            kind, _, name = w.partition("/")
            out.append((KINDS.get(kind.lower(), kind), name))
        return out


def not_found(kind, name):
    err(f'Error from server (NotFound): {RESOURCES.get(kind, kind.lower() + "s")} "{name}" not found\n')
    return 1


def kubectl_objects(server, argv):
    """The verbs the manifest stages use: apply, get, delete, rollout status, wait, exec cilium-dbg status."""
    k = Kubectl(argv)
    verb = k.words[0] if k.words else ""
    if verb == "apply":
        status, body = api(server, "POST", "/standin/apply", {"text": k.input()})
        if status != 200:
            err(f"error: {body.get('message', body)}\n")
            return 1
        for line in body["applied"]:
            out(line + " serverside-applied\n")
        return 0
    if verb == "diff":
        # As kubectl diff: exit 0 when the objects are as the input says, 1 when one differs, above 1 on an error.
        status, body = api(server, "POST", "/standin/diff", {"text": k.input()})
        if status != 200:
            err(f"error: {body.get('message', body)}\n")
            return 2
        for line in body["differ"]:
            out(f"diff -u -N live/{line} merged/{line}\n")
        return 1 if body["differ"] else 0
    if verb == "get" and ("--raw" in k.flags or k.targets(1)[:1] in ([("nodes", "")], [("node", "")])):
        return None
    if verb not in ("get", "delete", "rollout", "wait", "exec"):
        return None
    # As kubectl, a server that does not answer is an error at once (a few seconds for a moving VIP).
    status, body = api(server, "GET", "/standin/objects", patience=5)
    objects = body.get("objects", {})
    if verb == "get":
        targets = k.targets(1)
        if not targets:
            return 0
        kind, name = targets[0]
        obj = objects.get(object_key(kind, k.ns, name))
        if obj is None:
            return not_found(kind, name)
        if k.output.startswith("jsonpath="):
            path = k.output[len("jsonpath="):].strip("'")
            if path == "{.status.loadBalancer.ingress[0].ip}":
                out(obj.get("lb_ip") or "")
            elif path == "{.spec.clusterIP}":
                out(obj.get("cluster_ip") or "")
            else:
                err(f"kubectl (stand-in): -o {k.output} is not stood in\n")
                return 1
            return 0
        out(f"NAME   AGE\n{name}   1m\n")
        return 0
    if verb == "delete":
        for kind, name in k.targets(1):
            status, body = api(server, "POST", "/standin/delete", {"key": object_key(kind, k.ns, name)})
            if not body.get("deleted"):
                if "--ignore-not-found" not in k.flags:
                    return not_found(kind, name)
                continue
            out(f"{kind.lower()}.{RESOURCES.get(kind, '').partition('.')[2] or 'v1'} \"{name}\" deleted\n")
        return 0
    if verb == "rollout" and k.words[1:2] == ["status"]:
        for kind, name in k.targets(2):
            if object_key(kind, k.ns, name) not in objects:
                return not_found(kind, name)
            out(f'{kind.lower()} "{name}" successfully rolled out\n')
        return 0
    if verb == "wait":
        cond = str(k.flags.get("--for", "")).lower()
        targets = k.targets(1)
        if cond == "condition=established":
            # The CRDs of Cilium are made by its operator when it starts; the rest come with their manifests.
            operator = object_key("Deployment", "kube-system", "cilium-operator") in objects
            for kind, name in targets:
                if name and name.endswith(".cilium.io") and not operator:
                    err(f'Error from server (NotFound): customresourcedefinitions.apiextensions.k8s.io "{name}" not found\n')
                    return 1
            out("condition met\n")
            return 0
        if cond == "condition=ready":
            kind = targets[0][0] if targets else ""
            if kind in ("pods", "pod", "po") and k.ns != "kube-system" and object_key("Namespace", None, k.ns) not in objects:
                err(f'error: no matching resources found\n')
                return 1
            out("condition met\n")
            return 0
        err(f"kubectl (stand-in): wait --for={cond} is not stood in\n")
        return 1
    if verb == "exec":
        if "cilium-dbg" in k.after and "status" in k.after:
            config = objects.get(object_key("ConfigMap", "kube-system", "cilium-config")) or {}
            if object_key("DaemonSet", "kube-system", "cilium") not in objects:
                return not_found("DaemonSet", "cilium")
            kpr = (config.get("data") or {}).get("kube-proxy-replacement") == "true"
            out("KVStore:                 Disabled\nKubernetes:              Ok   1.34 (" + VERSION + ") [linux/amd64]\n"
                f"KubeProxyReplacement:    {'True' if kpr else 'False'}   [{switch_interface()}]\n")
            return 0
        err(f"kubectl (stand-in): exec {' '.join(k.after)} is not stood in\n")
        return 1
    return None


def switch_interface():
    """The interface that holds this node's own address (the lab's switch)."""
    r = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    for line in r.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[1] != "lo" and not parts[3].startswith("10.0.2."):
            return parts[1]
    return "eth1"


# ---------------------------------------------------------------------------------------------------------------
# kubectl


def kubectl(argv):
    conf = os.environ.get("KUBECONFIG", os.path.expanduser("~/.kube/config"))
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--kubeconfig="):
            conf = a.split("=", 1)[1]
        elif a == "--kubeconfig":
            conf = argv[i + 1]
            i += 1
        else:
            rest.append(a)
        i += 1
    if rest[:1] == ["version"]:
        out(f"Client Version: {VERSION}\n")
        return 0
    try:
        server = kubeconfig_server(conf)
    except OSError as e:
        err(f"error: {e}\n")
        return 1
    try:
        done = kubectl_objects(server, rest)
    except (OSError, urllib.error.URLError) as e:
        err(f"The connection to the server {server} was refused - did you specify the right host or port? ({e})\n")
        return 1
    if done is not None:
        return done
    raw = next((a.split("=", 1)[1] for a in rest if a.startswith("--raw=")), None)
    if raw is None and "--raw" in rest:
        raw = rest[rest.index("--raw") + 1]
    try:
        if rest[:1] == ["get"] and raw:
            with urllib.request.urlopen(server + raw, timeout=10) as r:
                out(r.read().decode())
            return 0
        output = rest[rest.index("-o") + 1] if "-o" in rest[:-1] else ""
        if rest[:2] == ["get", "nodes"] and output.startswith("jsonpath"):
            if output != TAINT_KEYS:
                err(f"kubectl (stand-in): get nodes -o {output} is not stood in\n")
                return 1
            status, body = api(server, "GET", "/api/v1/nodes")
            out(" ".join(k for _, n in sorted(body.get("nodes", {}).items()) for k in n.get("taints") or []))
            return 0
        if rest[:2] == ["get", "nodes"]:
            status, body = api(server, "GET", "/api/v1/nodes")
            wide = "wide" in rest
            out("NAME ROLE ADDRESS" + (" JOINED-FROM" if wide else "") + "\n")
            for name, n in sorted(body.get("nodes", {}).items()):
                out(f"{name} {n.get('role')} {n.get('address')}" + (f" {n.get('via')}" if wide else "") + "\n")
            return 0
        if rest[:3] == ["taint", "nodes", "--all"] and len(rest) == 4 and rest[3].endswith("-"):
            key = rest[3][:-1]
            status, body = api(server, "POST", "/standin/untaint", {"key": key})
            if not body.get("untainted"):
                # What kubectl says when no node has the taint.
                err(f'error: taint "{key}" not found\n')
                return 1
            for name in body["untainted"]:
                out(f"node/{name} untainted\n")
            return 0
    except (OSError, urllib.error.URLError) as e:
        err(f"The connection to the server {server} was refused - did you specify the right host or port? ({e})\n")
        return 1
    err(f"kubectl (stand-in): {' '.join(argv)} is not stood in\n")
    return 1


# ---------------------------------------------------------------------------------------------------------------
# The cluster's controllers, in the API server process: what the shipped stages and checks observe of them.


class Runtime:
    """LB-IPAM and L2 announcements (Cilium), the Thanos sidecar's gRPC port, OpenSearch behind its ClusterIP and
    the ingress, and Fluent Bit shipping to it. Addresses go on real interfaces and are served on real sockets:
    the other VMs reach them over the lab's switch."""

    def __init__(self):
        self.lock = __import__("threading").RLock()
        self.secrets = {}        # Secret values, in memory only (the state file keeps their SHA-256)
        self.listeners = {}      # (ip, port) -> server
        self.search = {"docs": [], "policies": {}, "repositories": {}, "seq": 0}
        try:
            with open(SEARCH_STATE) as f:
                self.search.update(json.load(f))  # its repositories and policies live in its indices: kept on disk
        except (OSError, ValueError):
            pass

    def save_search(self):
        kept = {k: self.search[k] for k in ("policies", "repositories", "seq")}
        write(SEARCH_STATE + ".tmp", json.dumps(kept))
        os.replace(SEARCH_STATE + ".tmp", SEARCH_STATE)

    # --- LB-IPAM (checked: cilium operator/pkg/lbipam, v1.18 line: a Service asks for `lbipam.cilium.io/ips`
    # from a pool; Services share an address only with the same sharing key, and across namespaces only when
    # each one's sharing-cross-namespace names the other's namespace or "*").
    @staticmethod
    def pool_addresses(objects):
        ips = []
        for o in objects.values():
            if o["kind"] != "CiliumLoadBalancerIPPool":
                continue
            for b in o.get("blocks") or []:
                if isinstance(b, dict) and b.get("start"):
                    start, stop = b["start"], b.get("stop") or b["start"]
                    a, z = ip_int(start), ip_int(stop)
                    ips.extend(int_ip(i) for i in range(a, z + 1))
                elif isinstance(b, dict) and b.get("cidr"):
                    net, bits = b["cidr"].split("/")
                    base, n = ip_int(net), 2 ** (32 - int(bits))
                    ips.extend(int_ip(base + i) for i in range(n))
        return ips

    @staticmethod
    def may_share(a, b):
        key_a, key_b = a["annotations"].get(SHARING_KEY), b["annotations"].get(SHARING_KEY)
        if not key_a or key_a != key_b:
            return False
        if a["namespace"] != b["namespace"]:
            allow = lambda o, ns: ns in str(o["annotations"].get(SHARING_CROSS_NS, "")).split(",") or \
                str(o["annotations"].get(SHARING_CROSS_NS, "")) == "*"
            if not (allow(a, b["namespace"]) and allow(b, a["namespace"])):
                return False
        return not set(a.get("ports") or []) & set(b.get("ports") or [])

    def allocate(self, objects):
        pool = self.pool_addresses(objects)
        owners = {}
        for key in sorted(objects, key=lambda k: objects[k].get("created", 0)):
            svc = objects[key]
            if svc["kind"] != "Service" or svc.get("type") != "LoadBalancer":
                continue
            svc["lb_ip"] = None
            wanted = [w for w in str(svc["annotations"].get(REQUESTED_IPS, "")).split(",") if w] or pool
            for ip in wanted:
                if ip not in pool:
                    continue
                if all(self.may_share(svc, other) for other in owners.get(ip, [])):
                    owners.setdefault(ip, []).append(svc)
                    svc["lb_ip"] = ip
                    break
        return owners

    def announce(self, objects, owners):
        """Cilium L2 announcements: the agent answers ARP for an allocated address on the node's interface
        (the stand-in puts the address on it, and the kernel answers); its ports are served."""
        if not any(o["kind"] == "CiliumL2AnnouncementPolicy" and o.get("loadBalancerIPs") for o in objects.values()):
            return
        config = objects.get(object_key("ConfigMap", "kube-system", "cilium-config")) or {}
        if (config.get("data") or {}).get("enable-l2-announcements") != "true":
            return
        iface = switch_interface()
        for ip, services in owners.items():
            add_address(ip, iface)
            for svc in services:
                for port in svc.get("ports") or []:
                    self.listen(ip, port, IngressHandler if port == 80 else None)

    def cluster_ips(self, objects, service_cidr):
        base, bits = service_cidr.split("/")
        size = 2 ** (32 - int(bits))
        for key, o in objects.items():
            if o["kind"] == "Service" and not o.get("cluster_ip"):
                o["cluster_ip"] = int_ip(ip_int(base) + 10 + int(sha256(key), 16) % (size - 20))
            admin = o["annotations"].get("kubeboot.io/standin-admin-secret") if o["kind"] == "Service" else None
            if admin and object_key("StatefulSet", o["namespace"], o["name"]) in objects:
                # OpenSearch: its Service's ClusterIP, which kube-proxy's replacement would route on this node.
                add_address(o["cluster_ip"], "lo")
                self.listen(o["cluster_ip"], 9200, SearchHandler)

    def listen(self, ip, port, handler):
        if (ip, port) in self.listeners:
            return
        try:
            if handler is None:
                server = __import__("socketserver").ThreadingTCPServer((ip, port), AcceptHandler, bind_and_activate=False)
            else:
                server = http.server.ThreadingHTTPServer((ip, port), handler, bind_and_activate=False)
            server.allow_reuse_address = True
            server.daemon_threads = True
            server.server_bind()
            server.server_activate()
        except OSError as e:
            out(f"runtime: cannot listen on {ip}:{port}: {e}\n")
            return
        self.listeners[(ip, port)] = server
        __import__("threading").Thread(target=server.serve_forever, daemon=True).start()
        out(f"runtime: serving {ip}:{port}\n")

    # --- Fluent Bit: the DaemonSet's agent ships a record of this node every few seconds to its [OUTPUT].
    def ship_logs(self, objects):
        agent = next((o for o in objects.values() if o["kind"] == "DaemonSet" and o["name"] == "fluent-bit"), None)
        if agent is None:
            return
        config = (objects.get(object_key("ConfigMap", agent["namespace"], "fluent-bit")) or {}).get("data", {})
        settings = {}
        for line in config.get("fluent-bit.conf", "").splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2:
                settings[parts[0]] = parts[1]
        if not settings.get("Host"):
            return
        env, hashes = {}, {}
        for k, ref in agent["annotations"].items():
            if k.startswith("kubeboot.io/standin-secret-env."):
                name, _, key = str(ref).partition("/")
                secret = object_key("Secret", agent["namespace"], name)
                var = k.rsplit(".", 1)[1]
                if key in self.secrets.get(secret, {}):
                    env[var] = self.secrets[secret][key]
                hashes[var] = ((objects.get(secret) or {}).get("hashes") or {}).get(key)
        configured = settings.get("HTTP_Passwd", "")
        only = re.fullmatch(r"\$\{(\w+)\}", configured)
        if only and only.group(1) not in env and hashes.get(only.group(1)):
            # After a reboot the values are gone from memory (they are never on disk) while the Secret is still
            # there, as in etcd: the agent proves it holds the Secret's password by its SHA-256 (STANDIN_HASH_AUTH).
            auth = f"{STANDIN_HASH_AUTH} {settings.get('HTTP_User', '')}:{hashes[only.group(1)]}"
        else:
            password = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), configured)
            import base64
            auth = "Basic " + base64.b64encode(f"{settings.get('HTTP_User', '')}:{password}".encode()).decode()
        index = settings.get("Logstash_Prefix", "logs") + "-" + time.strftime("%Y.%m.%d", time.gmtime())
        record = {"@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "log": "kubeboot VM lab",
                  "kubernetes": {"host": socket.gethostname()}}
        body = json.dumps({"index": {"_index": index}}) + "\n" + json.dumps(record) + "\n"
        req = urllib.request.Request(f"http://{settings['Host']}:{settings.get('Port', '80')}/_bulk", data=body.encode(),
                                     method="POST", headers={"Content-Type": "application/x-ndjson"})
        req.add_header("Authorization", auth)
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except (OSError, urllib.error.URLError) as e:
            out(f"fluent-bit (stand-in): {settings['Host']}: {e}\n")

    def reconcile(self):
        with self.lock:
            state = read_state()
            before = json.dumps(state, sort_keys=True)
            objects = state.get("objects", {})
            owners = self.allocate(objects)
            self.cluster_ips(objects, state.get("service_cidr") or "10.96.0.0/12")
            if json.dumps(state, sort_keys=True) != before:
                write_state(state)
        self.announce(objects, owners)
        self.ship_logs(objects)

    def loop(self):
        while True:
            try:
                self.reconcile()
            except (OSError, ValueError, KeyError) as e:
                out(f"runtime: {e}\n")
            time.sleep(3)

    # --- the Thanos stores, as Thanos Query lists them through the API server's service proxy
    def stores(self, objects, text):
        sidecars = []
        for ep in sorted(set(re.findall(r"--endpoint=([0-9.]+:\d+)", text))):
            host, port = ep.rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
                error = None
            except OSError as e:
                error = f"rpc error: code = Unavailable desc = connection error: {e}"
            sidecars.append({"name": ep, "lastError": error})
        data = {"sidecar": sidecars}
        for kind in ("store", "rule"):
            if object_key("StatefulSet", "monitoring", f"thanos-{kind}") in objects:
                data[kind] = [{"name": f"thanos-{kind}:10901", "lastError": None}]
        return {"status": "success", "data": data}


RUNTIME = Runtime()


def read_state():
    with open(APISERVER_STATE) as f:
        return json.load(f)


def write_state(state):
    write(APISERVER_STATE + ".tmp", json.dumps(state))
    os.replace(APISERVER_STATE + ".tmp", APISERVER_STATE)


def ip_int(ip):
    a, b, c, d = (int(x) for x in ip.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def int_ip(n):
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def add_address(ip, iface):
    have = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", iface], capture_output=True, text=True).stdout
    if f" {ip}/" not in have:
        subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", iface], check=False)


class AcceptHandler(__import__("socketserver").BaseRequestHandler):
    """A gRPC port that accepts connections (the Thanos sidecar's StoreAPI)."""

    def handle(self):
        self.request.close()


class JsonHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def send(self, status, body):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))


class SearchHandler(JsonHandler):
    """OpenSearch's REST API, for the calls stage 78 and the checks make: health, the snapshot repository and
    its verification, ISM and SM policies with optimistic concurrency, _bulk and _count. Basic auth against the
    admin Secret the chart's values name (compared by SHA-256)."""

    def authorized(self):
        import base64
        auth = self.headers.get("Authorization", "")
        if auth.startswith(STANDIN_HASH_AUTH + " "):
            user, _, digest = auth[len(STANDIN_HASH_AUTH) + 1:].partition(":")
        elif auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
            digest = sha256(password)
        else:
            return False
        objects = read_state().get("objects", {})
        for o in objects.values():
            ref = o["annotations"].get("kubeboot.io/standin-admin-secret") if o["kind"] == "Service" else None
            if ref:
                name, _, key = ref.partition("/")
                secret = objects.get(object_key("Secret", o["namespace"], name)) or {}
                return user == "admin" and (secret.get("hashes") or {}).get(key) == digest
        return False

    def handle_any(self, method):
        data = self.body()
        if not self.authorized():
            return self.send(401, {"error": "Unauthorized"})
        path, _, query = self.path.partition("?")
        s = RUNTIME.search
        if path == "/_cluster/health":
            return self.send(200, {"cluster_name": "opensearch-cluster", "status": "green"})
        m = re.fullmatch(r"/_snapshot/([^/]+)(/_verify)?", path)
        if m:
            if m.group(2):
                ok = m.group(1) in s["repositories"]
                return self.send(200 if ok else 404, {"nodes": {}} if ok else {"error": "repository_missing_exception"})
            if method == "PUT":
                s["repositories"][m.group(1)] = json.loads(data or b"{}")
                RUNTIME.save_search()
                return self.send(200, {"acknowledged": True})
            if m.group(1) not in s["repositories"]:
                return self.send(404, {"error": "repository_missing_exception", "status": 404})
            return self.send(200, {m.group(1): s["repositories"][m.group(1)]})
        m = re.fullmatch(r"/_plugins/_(ism|sm)/policies/([^/]+)", path)
        if m:
            key = m.group(1) + "/" + m.group(2)
            cur = s["policies"].get(key)
            if method == "GET":
                if cur is None:
                    return self.send(404, {"error": "not found"})
                return self.send(200, {"_id": m.group(2), "_seq_no": cur[0], "_primary_term": 1, "policy": cur[1]})
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            if cur is not None and params.get("if_seq_no") != str(cur[0]):
                return self.send(409, {"error": "version_conflict_engine_exception"})
            if cur is None and method == "PUT" and m.group(1) == "sm":
                return self.send(404, {"error": "SM policy not found: create it with POST"})
            s["seq"] += 1
            s["policies"][key] = (s["seq"], json.loads(data or b"{}"))
            RUNTIME.save_search()
            return self.send(200, {"_id": m.group(2), "_seq_no": s["seq"], "_primary_term": 1})
        if path == "/_bulk":
            lines = [json.loads(l) for l in data.decode().splitlines() if l.strip()]
            for action, doc in zip(lines[::2], lines[1::2]):
                s["docs"].append((action.get("index", {}).get("_index", ""), time.time()))
            return self.send(200, {"errors": False, "items": []})
        m = re.fullmatch(r"/([^/]+)/_count", path)
        if m:
            import fnmatch
            window = 30
            since = time.time() - window
            n = sum(1 for index, t in s["docs"] if fnmatch.fnmatch(index, m.group(1)) and t >= since)
            return self.send(200, {"count": n})
        return self.send(404, {"error": f"no handler found for uri [{path}]"})

    def do_GET(self):
        self.handle_any("GET")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_POST(self):
        self.handle_any("POST")


class IngressHandler(SearchHandler):
    """Cilium's shared ingress on the LB IP: OpenSearch for `opensearch.<domain>` when this cluster runs it
    (what Fluent Bit sends to), 404 for names it has no Ingress for."""

    def routed(self, method):
        host = (self.headers.get("Host") or "").split(":")[0]
        objects = read_state().get("objects", {})
        has_search = any(o["kind"] == "Service" and o["annotations"].get("kubeboot.io/standin-admin-secret")
                         for o in objects.values())
        if host.startswith("opensearch.") and has_search:
            return self.handle_any(method)
        self.body()
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self.routed("GET")

    def do_PUT(self):
        self.routed("PUT")

    def do_POST(self):
        self.routed("POST")


# ---------------------------------------------------------------------------------------------------------------
# The API server static pod


class ApiHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        if "/readyz" not in (fmt % args):
            out("apiserver: " + (fmt % args) + "\n")

    def send(self, status, body):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def state(self):
        with open(APISERVER_STATE) as f:
            return json.load(f)

    def save(self, state):
        write_state(state)

    def do_GET(self):
        if self.path in ("/readyz", "/livez", "/healthz"):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/api/v1/namespaces/kube-public/configmaps/cluster-info":
            self.send(200, {"kind": "ConfigMap", "data": {"ca.crt": self.state()["ca"]}})
        elif self.path == "/api/v1/nodes":
            self.send(200, {"nodes": self.state()["nodes"]})
        elif self.path == "/standin/objects":
            objects = self.state().get("objects", {})
            self.send(200, {"objects": {k: {f: v for f, v in o.items() if f != "text"} for k, o in objects.items()}})
        elif self.path == STORES_PATH:
            state = self.state()
            if object_key("Deployment", "monitoring", "thanos-query") not in state.get("objects", {}):
                return self.send(503, {"message": 'no endpoints available for service "thanos-query"'})
            self.send(200, RUNTIME.stores(state.get("objects", {}), state.get("applied_text", "")))
        else:
            self.send(404, {"message": f"{self.path} not found"})

    def do_POST(self):
        with RUNTIME.lock:
            self.post()

    def post(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        state = self.state()
        now = time.time()
        if self.path in ("/standin/tokens", "/standin/certificate-keys"):
            if self.client_address[0] not in ("127.0.0.1",) and not self.local(self.client_address[0]):
                return self.send(403, {"message": "only the control plane itself makes tokens and keys"})
            kind = "tokens" if self.path.endswith("tokens") else "certificate_keys"
            state[kind][body["hash"]] = now + int(body["ttl"])
            self.save(state)
            return self.send(200, {})
        if self.path == "/standin/apply":
            return self.apply(body.get("text", ""))
        if self.path == "/standin/diff":
            return self.diff(body.get("text", ""))
        if self.path == "/standin/delete":
            with RUNTIME.lock:
                state = self.state()
                gone = state.setdefault("objects", {}).pop(body.get("key"), None)
                RUNTIME.secrets.pop(body.get("key"), None)
                self.save(state)
            return self.send(200, {"deleted": gone is not None})
        if self.path == "/standin/untaint":
            untainted = []
            for name, n in sorted(state["nodes"].items()):
                if body.get("key") in (n.get("taints") or []):
                    n["taints"] = [k for k in n["taints"] if k != body.get("key")]
                    untainted.append(name)
            self.save(state)
            return self.send(200, {"untainted": untainted})
        if self.path == "/standin/join":
            auth = self.headers.get("Authorization", "")
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
            if state["tokens"].get(sha256(token), 0) < now:
                return self.send(401, {"message": "the bootstrap token is unknown or expired"})
            if body.get("control_plane"):
                if state["certificate_keys"].get(body.get("certificate_key_hash") or "", 0) < now:
                    return self.send(403, {"message": "the certificate key does not decrypt the kubeadm-certs Secret (unknown or expired)"})
            state["nodes"][body["node"]] = {"role": "control-plane" if body.get("control_plane") else "worker",
                                            "address": body.get("address"), "via": self.client_address[0],
                                            "taints": body.get("taints") or []}
            self.save(state)
            answer = {"cluster": state.get("cluster"), "nodes": state["nodes"]}
            if body.get("control_plane"):
                answer["ca_key"] = open(K8S + "/pki/ca.key").read().strip()
            return self.send(200, answer)
        self.send(404, {"message": f"{self.path} not found"})

    def apply(self, text):
        applied, kept = [], []
        try:
            described = [(doc, *describe(doc)) for doc in split_documents(text)]
        except ValueError as e:
            return self.send(400, {"message": str(e)})
        with RUNTIME.lock:
            state = self.state()
            objects = state.setdefault("objects", {})
            for doc, obj, values in described:
                if obj is None:
                    kept.append(doc)  # comments (the kustomize stand-in's patches) are part of what was applied
                    continue
                key = object_key(obj["kind"], obj["namespace"], obj["name"])
                old = objects.get(key) or {}
                obj["created"] = old.get("created") or time.time()
                for field in ("lb_ip", "cluster_ip"):
                    if old.get(field):
                        obj[field] = old[field]
                objects[key] = obj
                if obj["kind"] == "Secret":
                    RUNTIME.secrets[key] = values
                else:
                    kept.append(doc)
                applied.append(f"{obj['kind'].lower()}/{obj['name']}")
            state["applied_text"] = state.get("applied_text", "") + "".join("---\n" + d.strip("\n") + "\n" for d in kept)
            self.save(state)
        return self.send(200, {"applied": applied})

    def diff(self, text):
        """What `kubectl diff` tells: the documents whose object is missing or differs from what was applied (a
        Secret by its annotations and the SHA-256 of each value; a comment document by being in the applied
        text, since it carries the kustomize stand-in's patches)."""
        try:
            described = [(doc, *describe(doc)) for doc in split_documents(text)]
        except ValueError as e:
            return self.send(400, {"message": str(e)})
        if not described:
            return self.send(400, {"message": "no objects passed to diff"})
        state = self.state()
        objects, applied_text = state.get("objects", {}), state.get("applied_text", "")
        differ = []
        for doc, obj, _ in described:
            if obj is None:
                if "---\n" + doc.strip("\n") + "\n" not in applied_text:
                    differ.append("comment")
                continue
            key = object_key(obj["kind"], obj["namespace"], obj["name"])
            old = objects.get(key)
            fields = ("annotations", "hashes") if obj["kind"] == "Secret" else ("text",)
            if old is None or any(old.get(f) != obj.get(f) for f in fields):
                differ.append(key)
        return self.send(200, {"differ": differ})

    def local(self, address):
        r = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True)
        return f" {address}/" in r.stdout


def apiserver(args):
    port = 6443
    for a in args:
        if a.startswith("--secure-port="):
            port = int(a.split("=", 1)[1])
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), ApiHandler)
    __import__("threading").Thread(target=RUNTIME.loop, daemon=True).start()
    out(f"apiserver (stand-in): serving plain HTTP on 0.0.0.0:{port}\n")
    server.serve_forever()


# ---------------------------------------------------------------------------------------------------------------
# kubelet


def pod_env(container, node):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"]) if not isinstance(e["value"], bool) else ("true" if e["value"] else "false")
        elif ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "spec.nodeName":
            env[e["name"]] = node
        else:
            env[e["name"]] = ""
    return env


class Pod:
    def __init__(self, path):
        self.path = path
        self.digest = None
        self.proc = None
        self.restarts = 0
        self.next_start = 0.0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def run_pod(pod, node):
    """Starts the process that stands in for the pod's one container, when the stand-ins know its image."""
    text = open(pod.path).read()
    spec = yaml_documents(text)[0]
    name = spec["metadata"]["name"]
    container = spec["spec"]["containers"][0]
    image = container.get("image", "")
    env = pod_env(container, node)
    logdir = f"/var/log/pods/{spec['metadata'].get('namespace', 'default')}_{name}-{node}/{container['name']}"
    os.makedirs(logdir, exist_ok=True)
    log = open(f"{logdir}/0.log", "a")
    if "/kube-vip/kube-vip:" in image or image.startswith("kube-vip:"):
        env["KUBEBOOT_STANDIN_POD"] = json.dumps(spec)
        argv = [HOME + "/kube-vip"] + [str(a) for a in container.get("args") or []]
    elif "/kube-apiserver:" in image:
        argv = [sys.argv[0], "--standin-apiserver"] + [str(a) for a in (container.get("command") or [])[1:]]
    else:
        return None
    log.write(f"--- kubelet (stand-in): starting {name} ({image}) at {time.ctime()}\n")
    log.flush()
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def kubelet(argv):
    out(f"kubelet (stand-in) {VERSION}\n")
    if not os.path.exists(KUBELET_CONFIG):
        err(f'"command failed" err="failed to load kubelet config file, path: {KUBELET_CONFIG}, error: open {KUBELET_CONFIG}: no such file or directory"\n')
        return 1
    if len(open("/proc/swaps").read().strip().splitlines()) > 1:
        err('"command failed" err="failed to run Kubelet: running with swap on is not supported, please disable swap or set --fail-swap-on flag to false"\n')
        return 1
    if not os.path.exists("/run/containerd/containerd.sock"):
        err('"command failed" err="failed to run Kubelet: validate service connection: validate CRI v1 runtime API for endpoint \\"unix:///run/containerd/containerd.sock\\""\n')
        return 1
    node = socket.gethostname()
    pods = {}
    stopping = []

    def stop(*_):
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        seen = set()
        for f in sorted(os.listdir(MANIFESTS)) if os.path.isdir(MANIFESTS) else []:
            if not f.endswith((".yaml", ".yml", ".json")):
                continue
            path = os.path.join(MANIFESTS, f)
            seen.add(path)
            pod = pods.setdefault(path, Pod(path))
            try:
                digest = sha256(open(path).read())
            except OSError:
                continue
            if digest != pod.digest:
                pod.stop()
                pod.digest, pod.restarts, pod.next_start = digest, 0, 0.0
                out(f"static pod {f}: new manifest\n")
            if (pod.proc is None or pod.proc.poll() is not None) and time.time() >= pod.next_start:
                if pod.proc is not None:
                    pod.restarts += 1
                    out(f"static pod {f}: exited with {pod.proc.returncode}, restart {pod.restarts}\n")
                try:
                    pod.proc = run_pod(pod, node)
                except (OSError, ValueError, KeyError, IndexError) as e:
                    out(f"static pod {f}: {e}\n")
                    pod.proc = None
                # Back off as the kubelet does (here from 1 s up to 10 s).
                pod.next_start = time.time() + min(10, 2 ** pod.restarts)
                if pod.proc is None:
                    pod.next_start = float("inf") if pod.digest else pod.next_start
        for path in list(pods):
            if path not in seen:
                pods.pop(path).stop()
        time.sleep(1)
    for pod in pods.values():
        pod.stop()
    return 0


def main():
    name = os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    if argv[:1] == ["--standin-apiserver"]:
        return apiserver(argv[1:])
    if name == "kubeadm":
        return kubeadm(argv)
    if name == "kubectl":
        return kubectl(argv)
    if name == "kubelet":
        if argv[:1] == ["--version"]:
            out(f"Kubernetes {VERSION}\n")
            return 0
        return kubelet(argv)
    err(f"{name}: not a stand-in name\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
