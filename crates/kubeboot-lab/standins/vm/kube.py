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
  (`taints: []` is none), a worker none.
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
        return [_scalar(p) for p in text[1:-1].split(",") if p.strip()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1].replace('\\"', '"') if text[0] == '"' else text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


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
        if rest.strip() in ("|", ">"):
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
             "ca": open(K8S + "/pki/ca.crt").read()}
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
# The API server static pod


class ApiHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        if "/readyz" not in (fmt % args):
            out("apiserver: " + (fmt % args) + "\n")

    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def state(self):
        with open(APISERVER_STATE) as f:
            return json.load(f)

    def save(self, state):
        write(APISERVER_STATE, json.dumps(state))

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
        else:
            self.send(404, {"message": f"{self.path} not found"})

    def do_POST(self):
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
