#!/usr/bin/python3
"""Recording stand-ins for the privileged commands kubeboot's shipped playbooks call.

One script, many names: it is linked as apt-get, dpkg-query, systemctl, kubeadm, kubectl, ... in an isolated lab
node's /usr/local/sbin and acts by the name it was called with. Every call appends one JSON line (time, name, argv)
to the node's record file and keeps just enough state that the playbooks' guards behave as on a real node: after
`apt-get install X`, `dpkg-query -W X` reports it installed; after `kubeadm init`, admin.conf exists and the API
server answers; and so on.

It never records the environment or stdin (secrets travel there), only argv, so a test can prove that no secret
ever reached a command line. The node's settings come from /usr/local/lib/kubeboot-standins/node.json, written by
the lab: its name, address, OS, containerd layout and the host folder holding the record and the state.

A file `<state dir>/fail/<name>-<first argument>` (or `<state dir>/fail/<name>`) makes that command fail while it
exists, so a test can inject a failure in the middle of a run; one in `<state dir>/hold/` holds the command until
it is removed (see `held`).
"""

import fcntl
import hashlib
import hmac
import json
import os
import re
import subprocess
import shutil
import sys
import tarfile
import io
import time

HOME = "/usr/local/lib/kubeboot-standins"
SELF = HOME + "/standin.py"
# First on PATH for the login user and for sudo's secure_path alike.
BIN = "/usr/local/bin"

# What each package puts on PATH, and the services it brings.
PACKAGE_COMMANDS = {
    "containerd.io": ["containerd", "ctr"],
    "kubeadm": ["kubeadm", "crictl"],
    "kubectl": ["kubectl"],
    "kubelet": ["kubelet"],
    "open-iscsi": ["iscsiadm", "iscsi-iname"],
    "iscsi-initiator-utils": ["iscsiadm", "iscsi-iname"],
    "nfs-common": ["mount.nfs4"],
    "nfs-utils": ["mount.nfs4"],
    "jq": ["jq"],
    "socat": ["socat"],
    "conntrack": ["conntrack"],
    "conntrack-tools": ["conntrack"],
    "ipset": ["ipset"],
}
PACKAGE_UNITS = {
    "containerd.io": ["containerd"],
    "kubelet": ["kubelet"],
    "open-iscsi": ["iscsid"],
    "iscsi-initiator-utils": ["iscsid"],
}


INITIATOR = "/etc/iscsi/initiatorname.iscsi"


def load_node():
    with open(HOME + "/node.json") as f:
        return json.load(f)


NODE = load_node()
STATE_DIR = NODE["state_dir"]


def shared_open(path, flags):
    """Opens a file root and the login user both write (stand-ins run with and without sudo)."""
    fd = os.open(path, flags | os.O_CREAT, 0o666)
    if os.fstat(fd).st_uid == os.geteuid():
        os.fchmod(fd, 0o666)
    return fd


def record(name, argv, **extra):
    line = {"t": round(time.time(), 6), "cmd": name, "argv": argv}
    line.update(extra)
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    fd = shared_open(os.path.join(STATE_DIR, "record.jsonl"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class _State:
    """The node's state (packages, units, cluster) in one JSON file, changed under a lock."""

    def __init__(self):
        self.path = os.path.join(STATE_DIR, "state.json")
        self.lock = os.fdopen(shared_open(os.path.join(STATE_DIR, "state.lock"), os.O_WRONLY | os.O_APPEND), "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            with open(self.path) as f:
                self.data = json.load(f)
        except FileNotFoundError:
            self.data = initial_state()

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o666)
        os.replace(tmp, self.path)

    def __getitem__(self, key):
        return self.data[key]


_STATE = None


def State():
    """The one state object of this process (the lock is taken once, on first use)."""
    global _STATE
    if _STATE is None:
        _STATE = _State()
    return _STATE


def initial_state():
    rhel = NODE["os"] == "rhel"
    units = {"multipathd": {"enabled": True, "active": True}}
    if rhel:
        units["firewalld"] = {"enabled": True, "active": True}
    return {
        "packages": {},
        "held": [],
        "units": units,
        "selinux": "Enforcing" if rhel else "Disabled",
        "ufw": "active",
        "modules": [],
        "cluster": None,
        "applied": [],
        "downloads": {},
        "buckets": [],
    }


def out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def err(text):
    sys.stderr.write(text)
    sys.stderr.flush()


def failing(name, argv):
    names = [name] + ([name + "-" + argv[0]] if argv else [])
    return any(os.path.exists(os.path.join(STATE_DIR, "fail", n)) for n in names)


def held(name, argv):
    """A file `<state dir>/hold/<name>-<first argument>` (or `hold/<name>`) holds the call (recorded already) while
    it exists, so a test can stop kubeboot in the middle of it; once the file is gone the held call fails without
    doing anything, as a command whose jump host vanished would. Returns True when the call was held."""
    names = [name] + ([name + "-" + argv[0]] if argv else [])
    paths = [os.path.join(STATE_DIR, "hold", n) for n in names]
    if not any(os.path.exists(p) for p in paths):
        return False
    while any(os.path.exists(p) for p in paths):
        time.sleep(0.1)
    err(f"{name}: held by a test and let go: nothing done\n")
    return True


def kube_minor():
    """The Kubernetes minor the node's package repository points at (1.34 unless a repository file says)."""
    for path in ("/etc/apt/sources.list.d/kubernetes.list", "/etc/yum.repos.d/kubernetes.repo"):
        try:
            m = re.search(r"stable:/v(\d+\.\d+)/", open(path).read())
            if m:
                return m.group(1)
        except OSError:
            pass
    return "1.34"


def package_versions(pkg):
    if pkg in ("kubeadm", "kubelet", "kubectl", "cri-tools", "kubernetes-cni"):
        minor = kube_minor()
        suffix = "-1.1" if NODE["os"] == "ubuntu" else "-150500.1.1"
        return [f"{minor}.{p}{suffix}" for p in (2, 1, 0)]
    if pkg == "containerd.io":
        return ["2.1.5-1" if NODE["containerd"] == "v3" else "1.7.28-1"]
    return ["1.0-1"]


def install_packages(state, specs):
    for spec in specs:
        if spec.startswith("-"):
            continue
        name, version = spec, None
        if "=" in spec:
            name, version = spec.split("=", 1)
        else:
            m = re.match(r"^(kubelet|kubeadm|kubectl)-(\d.*)$", spec)
            if m:
                name, version = m.group(1), m.group(2)
        versions = package_versions(name)
        if version is None or "*" in version:
            prefix = (version or "").rstrip("*")
            version = next((v for v in versions if v.startswith(prefix)), versions[0])
        state["packages"][name] = version
        for cmd in PACKAGE_COMMANDS.get(name, []):
            link = os.path.join(BIN, cmd)
            if not os.path.lexists(link):
                os.symlink(SELF, link)
        if name == "open-iscsi" and not os.path.exists(INITIATOR):
            # Debian's postinst generates the node's initiator name; RHEL's package leaves it to the admin.
            os.makedirs("/etc/iscsi", exist_ok=True)
            with open(INITIATOR, "w") as f:
                f.write("InitiatorName=" + initiator_name() + "\n")
        for unit in PACKAGE_UNITS.get(name, []):
            state["units"].setdefault(unit, {"enabled": False, "active": False})


# ---------------------------------------------------------------------------------------------------------------------
# Package managers


def apt_get(argv):
    words = [a for a in argv if not a.startswith("-")]
    # `-o DPkg::Lock::Timeout=300` takes a value.
    skip = set()
    for i, a in enumerate(argv):
        if a == "-o" and i + 1 < len(argv):
            skip.add(argv[i + 1])
    words = [w for w in words if w not in skip]
    if not words:
        err("E: no operation\n")
        return 100
    if words[0] == "update":
        out("Hit:1 http://archive.ubuntu.com/ubuntu noble InRelease\nReading package lists... Done\n")
        return 0
    if words[0] == "install":
        state = State()
        held = [w.split("=", 1)[0] for w in words[1:] if w.split("=", 1)[0] in state["held"]]
        if held and "--allow-change-held-packages" not in argv:
            err(f"E: Held packages were changed and -y was used without --allow-change-held-packages: {' '.join(held)}\n")
            return 100
        install_packages(state, words[1:])
        state.save()
        out(f"Setting up {' '.join(words[1:])} ...\n")
        return 0
    if words[0] in ("purge", "remove"):
        state = State()
        remove_packages(state, words[1:])
        state.save()
        out(f"Removing {' '.join(words[1:])} ...\n")
        return 0
    return 0


def remove_packages(state, names):
    for name in names:
        state["packages"].pop(name, None)
        if name in state["held"]:
            state["held"].remove(name)
        for cmd in PACKAGE_COMMANDS.get(name, []):
            link = os.path.join(BIN, cmd)
            if os.path.islink(link):
                os.unlink(link)


def apt_cache(argv):
    if argv[:1] == ["madison"] and len(argv) > 1:
        pkg = argv[1]
        for v in package_versions(pkg):
            out(f"{pkg:>10} | {v} | https://pkgs.k8s.io/core:/stable:/v{kube_minor()}/deb  Packages\n")
        return 0
    return 0


def apt_mark(argv):
    state = State()
    if argv[:1] == ["hold"]:
        for p in argv[1:]:
            if p not in state["held"]:
                state["held"].append(p)
            out(f"{p} set on hold.\n")
        state.save()
    elif argv[:1] == ["unhold"]:
        for p in argv[1:]:
            if p in state["held"]:
                state["held"].remove(p)
            out(f"Canceled hold on {p}.\n")
        state.save()
    elif argv[:1] == ["showhold"]:
        for p in state["held"]:
            out(p + "\n")
    return 0


def dpkg(argv):
    if "--print-architecture" in argv:
        out("amd64\n")
        return 0
    if argv[:1] in (["-s"], ["--status"]):
        state = State()
        ok = True
        for p in argv[1:]:
            if p in state["packages"]:
                out(f"Package: {p}\nStatus: install ok installed\nVersion: {state['packages'][p]}\n\n")
            else:
                err(f"dpkg-query: package '{p}' is not installed\n")
                ok = False
        return 0 if ok else 1
    return 0


def dpkg_query(argv):
    fmt = "${Package}\t${Version}\n"
    pkgs = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-f=") or a.startswith("--showformat="):
            fmt = a.split("=", 1)[1]
        elif a in ("-f", "--showformat") and i + 1 < len(argv):
            i += 1
            fmt = argv[i]
        elif a in ("-s", "--status"):
            return dpkg(["-s"] + argv[i + 1:])
        elif not a.startswith("-"):
            pkgs.append(a)
        i += 1
    state = State()
    ok = True
    for p in pkgs:
        if p not in state["packages"]:
            err(f"dpkg-query: no packages found matching {p}\n")
            ok = False
            continue
        abbrev = ("hi " if p in state["held"] else "ii ")
        text = fmt.replace("${db:Status-Abbrev}", abbrev).replace("${Version}", state["packages"][p])
        text = text.replace("${Package}", p).replace("${Status}", "install ok installed").replace("\\n", "\n")
        out(text)
    return 0 if ok else 1


def dnf(argv):
    words = [a for a in argv if not a.startswith("-")]
    if words[:1] == ["install"]:
        state = State()
        install_packages(state, words[1:])
        state.save()
        out("Complete!\n")
    if words[:1] == ["remove"]:
        state = State()
        remove_packages(state, words[1:])
        state.save()
        out("Complete!\n")
    return 0


def rpm(argv):
    if "-q" not in argv and "--query" not in argv:
        return 0
    fmt = None
    pkgs = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--qf" or a == "--queryformat":
            i += 1
            fmt = argv[i]
        elif not a.startswith("-"):
            pkgs.append(a)
        i += 1
    state = State()
    ok = True
    for p in pkgs:
        v = state["packages"].get(p)
        if v is None:
            out(f"package {p} is not installed\n")
            ok = False
        elif fmt:
            ver, _, rel = v.partition("-")
            out(fmt.replace("%{VERSION}", ver).replace("%{RELEASE}", rel).replace("%{NAME}", p).replace("\\n", "\n"))
        else:
            out(f"{p}-{v}.x86_64\n")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------------------------------
# Services, kernel, firewall


def systemctl(argv):
    flags = [a for a in argv if a.startswith("-")]
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return 0
    verb, units = words[0], [u.removesuffix(".service") for u in words[1:]]
    quiet = "--quiet" in flags or "-q" in flags
    state = State()
    known = state["units"]
    if verb == "daemon-reload":
        return 0
    missing = [u for u in units if u not in known]
    if verb in ("is-enabled", "is-active"):
        key = "enabled" if verb == "is-enabled" else "active"
        ok = all(u in known and known[u][key] for u in units)
        if not quiet:
            for u in units:
                on = u in known and known[u][key]
                out((("enabled" if on else "disabled") if key == "enabled" else ("active" if on else "inactive")) + "\n")
        return 0 if ok else (1 if verb == "is-enabled" else 3)
    if missing:
        err(f"Failed to {verb} unit: Unit {missing[0]}.service not found.\n")
        return 1 if verb != "status" else 4
    if verb == "cat":
        for u in units:
            out(f"# /usr/lib/systemd/system/{u}.service\n[Service]\nExecStart=/usr/bin/{u}\n")
        return 0
    if verb == "status":
        for u in units:
            out(f"{u}.service - {u}\n   Active: {'active (running)' if known[u]['active'] else 'inactive (dead)'}\n")
        return 0 if all(known[u]["active"] for u in units) else 3
    for u in units:
        if verb == "enable":
            known[u]["enabled"] = True
            if "--now" in flags:
                known[u]["active"] = True
        elif verb == "disable":
            known[u]["enabled"] = False
            if "--now" in flags:
                known[u]["active"] = False
        elif verb in ("start", "restart", "reload"):
            known[u]["active"] = True
        elif verb == "stop":
            known[u]["active"] = False
    state.save()
    return 0


def modprobe(argv):
    # The node's /proc/modules is this file (bind-mounted by the lab), so guards reading it see the module.
    path = os.path.join(STATE_DIR, "proc_modules")
    loaded = {line.split(" ", 1)[0] for line in open(path)}
    state = State()
    with open(path, "a") as f:
        for m in argv:
            if m.startswith("-"):
                continue
            if m not in state["modules"]:
                state["modules"].append(m)
            if m not in loaded:
                f.write(f"{m} 16384 0 - Live 0x0000000000000000\n")
    state.save()
    return 0


def lsmod(argv):
    out("Module                  Size  Used by\n")
    for m in State()["modules"]:
        out(f"{m:<24}16384  0\n")
    return 0


def sysctl(argv):
    if "--system" in argv:
        out("* Applying /etc/sysctl.d/99-kubernetes.conf ...\n")
    return 0


def getenforce(argv):
    out(State()["selinux"] + "\n")
    return 0


def setenforce(argv):
    state = State()
    if state["selinux"] == "Disabled":
        err("setenforce: SELinux is disabled\n")
        return 1
    state.data["selinux"] = "Permissive" if argv[:1] == ["0"] else "Enforcing"
    state.save()
    return 0


def ufw(argv):
    state = State()
    if argv[:1] == ["status"]:
        out(f"Status: {state['ufw']}\n")
    elif argv[:1] == ["disable"]:
        state.data["ufw"] = "inactive"
        state.save()
        out("Firewall stopped and disabled on system startup\n")
    return 0


def timedatectl(argv):
    if "NTPSynchronized" in argv:
        out("yes\n")
    return 0


def getent(argv):
    if argv[:1] != ["hosts"]:
        os.execv("/usr/bin/getent", ["getent"] + argv)
    ok = True
    for name in argv[1:]:
        addr = NODE["address"] if name in (NODE["name"], os.uname().nodename) else None
        for suffix, ip in NODE.get("domains", {}).items():
            if name.endswith("." + suffix):
                addr = ip
        if addr is None and re.match(r"^[A-Za-z0-9.-]+\.[A-Za-z]+$", name):
            # Any other public-looking name resolves, as on a node with working DNS.
            addr = "198.51.100." + str(1 + int(hashlib.sha256(name.encode()).hexdigest(), 16) % 250)
        if addr is None:
            ok = False
        else:
            out(f"{addr}        {name}\n")
    return 0 if ok else 2


def ip(argv):
    words = [a for a in argv if not a.startswith("-")]
    if words[:1] == ["link"]:
        # Never the host's links: the node's network is the stand-in's list (Cilium adds its links when applied).
        state = State()
        links = state.data.setdefault("links", ["lo", "eth0"])
        if words[1:2] in ([], ["show"], ["list"]):
            for i, name in enumerate(links, 1):
                out(f"{i}: {name}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP\n")
            return 0
        if words[1:2] in (["delete"], ["del"]) and len(words) > 2:
            name = words[3] if words[2] == "dev" and len(words) > 3 else words[2]
            if name not in links:
                err(f'Cannot find device "{name}"\n')
                return 1
            links.remove(name)
            state.save()
            return 0
        return 0
    if argv[:1] == ["-o"] and argv[1:2] in (["addr"], ["a"], ["address"]):
        out("1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n")
        out(f"2: eth0    inet {NODE['address']}/24 brd + scope global eth0\\       valid_lft forever preferred_lft forever\n")
        return 0
    os.execv("/usr/sbin/ip", ["ip"] + argv)


# ---------------------------------------------------------------------------------------------------------------------
# Downloads


def fake_tool_script(tool, version):
    return f"#!/bin/sh\nKUBEBOOT_STANDIN_VERSION='{version}' exec {SELF} {tool} \"$@\"\n".encode()


def tarball(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def download_body(url):
    m = re.search(r"kustomize_v([0-9.]+)_linux_(\w+)\.tar\.gz$", url)
    if m:
        return tarball([("kustomize", fake_tool_script("kustomize", m.group(1)))])
    m = re.search(r"helm-v([0-9.]+)-(linux-\w+)\.tar\.gz$", url)
    if m:
        return tarball([(m.group(2) + "/helm", fake_tool_script("helm", m.group(1)))])
    if url.endswith(".repo"):
        return b"[docker-ce-stable]\nname=Docker CE Stable\nbaseurl=https://download.docker.com/linux/rhel/$releasever/$basearch/stable\nenabled=1\ngpgcheck=1\n"
    return b"-----BEGIN PGP PUBLIC KEY BLOCK-----\nstand-in key for " + url.encode() + b"\n-----END PGP PUBLIC KEY BLOCK-----\n"


def curl(argv):
    output = None
    write_out = None
    url = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-o", "--output"):
            i += 1
            output = argv[i]
        elif a in ("-w", "--write-out"):
            i += 1
            write_out = argv[i]
        elif a in ("-X", "-H", "-m", "--retry", "-K", "--config", "-d", "--data", "--data-binary", "--max-time",
                   "--aws-sigv4"):
            i += 1
        elif not a.startswith("-"):
            url = a
        i += 1
    if "-K" in argv or "--config" in argv:
        # The credentials come on stdin: read them so the pipe closes cleanly, never keep them.
        sys.stdin.read()
    if url is None:
        err("curl: no URL specified\n")
        return 2
    code = 200
    if ":9200/" in url:
        body = opensearch_answer(url, argv)
    elif "--aws-sigv4" in argv:
        code, body = s3_answer(url, argv)
        if code >= 400 and ("-f" in argv or "--fail" in argv):
            err(f"curl: (22) The requested URL returned error: {code}\n")
            return 22
    else:
        body = download_body(url)
    if output and output != "/dev/null":
        with open(output, "wb") as f:
            f.write(body)
        state = State()
        state["downloads"][os.path.realpath(output)] = hashlib.sha256(body).hexdigest()
        state.save()
    elif not output:
        sys.stdout.buffer.write(body if isinstance(body, bytes) else body.encode())
    if write_out:
        out(write_out.replace("%{http_code}", str(code)))
    return 0


def s3_answer(url, argv):
    """MinIO, path-style: a bucket is there once a PUT created it."""
    bucket = url.rstrip("/").rsplit("/", 1)[-1]
    method = argv[argv.index("-X") + 1] if "-X" in argv else ("HEAD" if "-I" in argv else "GET")
    state = State()
    if method == "PUT":
        if bucket not in state["buckets"]:
            state["buckets"].append(bucket)
            state.save()
        return 200, b""
    return (200 if bucket in state["buckets"] else 404), b""


def opensearch_answer(url, argv):
    if "/_cluster/health" in url:
        return b'{"cluster_name":"opensearch","status":"green"}'
    if "/_count" in url:
        return b'{"count":42,"_shards":{"total":1,"successful":1}}'
    method = argv[argv.index("-X") + 1] if "-X" in argv else "GET"
    if method == "GET" and "/_plugins/" in url:
        return b'{"error":{"type":"status_exception"},"status":404}'
    return b'{"acknowledged":true}'


def sha256sum(argv):
    if "-c" not in argv and "--check" not in argv:
        os.execv("/usr/bin/sha256sum", ["sha256sum"] + argv)
    status = "--status" in argv
    argv = [a for a in argv if a != "--status"]
    lines = sys.stdin.read().splitlines() if "-" in argv or len(argv) == 1 else []
    for a in argv:
        if a not in ("-c", "--check", "-"):
            try:
                lines += open(a).read().splitlines()
            except OSError:
                err(f"sha256sum: {a}: No such file or directory\n")
                return 1
    if status:
        res = subprocess.run(["/usr/bin/sha256sum", "-c", "--status", "-"], input="\n".join(lines).encode() + b"\n")
        return res.returncode
    downloads = State()["downloads"]
    ok = True
    for line in lines:
        if not line.strip():
            continue
        _, _, path = line.partition("  ")
        real = os.path.realpath(path)
        try:
            actual = hashlib.sha256(open(path, "rb").read()).hexdigest()
        except OSError:
            out(f"sha256sum: {path}: No such file or directory\n{path}: FAILED open or read\n")
            ok = False
            continue
        # A file the curl stand-in produced stands for the real download, whose checksum the playbook knows.
        if downloads.get(real) == actual:
            out(f"{path}: OK\n")
            continue
        res = subprocess.run(["/usr/bin/sha256sum", "-c", "-"], input=line.encode())
        ok = ok and res.returncode == 0
    return 0 if ok else 1


def gpg(argv):
    if "--dearmor" in argv:
        output = argv[argv.index("-o") + 1] if "-o" in argv else None
        source = [a for a in argv if not a.startswith("-") and a != output]
        data = open(source[-1], "rb").read() if source else sys.stdin.buffer.read()
        if output:
            with open(output, "wb") as f:
                f.write(b"\x99stand-in keyring\n" + hashlib.sha256(data).digest())
    return 0


def swapoff(argv):
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# containerd, kubeadm, kubectl, kustomize, helm


CONTAINERD_V2 = """disabled_plugins = []
imports = []
oom_score = 0
root = "/var/lib/containerd"
state = "/run/containerd"
version = 2

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]

  [plugins."io.containerd.grpc.v1.cri"]
    enable_selinux = false
    max_container_log_line_size = 16384
    sandbox_image = "registry.k8s.io/pause:3.8"

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/opt/cni/bin"
      conf_dir = "/etc/cni/net.d"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      snapshotter = "overlayfs"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"

          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            BinaryName = ""
            Root = ""
            SystemdCgroup = false

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""
"""

CONTAINERD_V3 = """version = 3
root = '/var/lib/containerd'
state = '/run/containerd'
disabled_plugins = []
required_plugins = []
oom_score = 0

[grpc]
  address = '/run/containerd/containerd.sock'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    disable_snapshot_annotations = true

    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:3.10'

    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = ''

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    max_container_log_line_size = 16384

    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
          runtime_type = 'io.containerd.runc.v2'

          [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
            BinaryName = ''
            SystemdCgroup = false

    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dir = '/opt/cni/bin'
      conf_dir = '/etc/cni/net.d'
"""


def containerd(argv):
    if argv[:2] == ["config", "default"]:
        out(CONTAINERD_V3 if NODE["containerd"] == "v3" else CONTAINERD_V2)
        return 0
    if argv[:1] in (["--version"], ["-v"]):
        out("containerd containerd.io " + package_versions("containerd.io")[0] + "\n")
    return 0


def kubeadm_version():
    v = State()["packages"].get("kubeadm")
    return "v" + (v or package_versions("kubeadm")[0]).split("-")[0]


def kubeadm(argv):
    if argv[:1] == ["version"]:
        out(kubeadm_version() + "\n" if "short" in argv else f'kubeadm version: &version.Info{{GitVersion:"{kubeadm_version()}"}}\n')
        return 0
    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    if argv[:2] == ["config", "validate"]:
        text = open(config).read()
        if "kind: InitConfiguration" not in text or "kind: ClusterConfiguration" not in text:
            err("invalid configuration: no InitConfiguration/ClusterConfiguration\n")
            return 1
        out("ok\n")
        return 0
    if argv[:3] == ["config", "images", "pull"]:
        for image in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
            out(f"[config/images] Pulled registry.k8s.io/{image}:{kubeadm_version()}\n")
        return 0
    if argv[:3] == ["init", "phase", "upload-certs"]:
        return kubeadm_upload_certs(argv)
    if argv[:1] == ["init"]:
        text = open(config).read() if config else ""
        if os.path.exists("/etc/kubernetes/admin.conf"):
            err("[preflight] Some fatal errors occurred: /etc/kubernetes/manifests/kube-apiserver.yaml already exists\n")
            return 1
        kube_proxy = not re.search(r"skipPhases:\s*\n\s*-\s*addon/kube-proxy", text)
        tainted = not re.search(r"^\s*taints:\s*\[\]\s*$", text, re.M)
        address = re.search(r'advertiseAddress:\s*"?([0-9.]+)', text)
        os.makedirs("/etc/kubernetes/pki", exist_ok=True)
        with open("/etc/kubernetes/admin.conf", "w") as f:
            # Laid out as kubeadm writes it: cluster `kubernetes`, user `kubernetes-admin`, their context current.
            f.write("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: c3RhbmQtaW4tY2E=\n"
                    + "    server: https://" + (address.group(1) if address else NODE["address"]) + ":6443\n"
                    + "  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n"
                    + "  name: kubernetes-admin@kubernetes\ncurrent-context: kubernetes-admin@kubernetes\nkind: Config\n"
                    + "preferences: {}\nusers:\n- name: kubernetes-admin\n  user:\n"
                    + "    client-certificate-data: c3RhbmQtaW4=\n    client-key-data: c3RhbmQtaW4ta2V5\n")
        os.chmod("/etc/kubernetes/admin.conf", 0o600)
        state = State()
        state.data["cluster"] = {"kube_proxy": kube_proxy, "taints": ["node-role.kubernetes.io/control-plane"] if tainted else []}
        write_control_plane(kubeadm_version())
        os.makedirs("/etc/kubernetes/pki/etcd", exist_ok=True)
        for name in ("ca.crt", "ca.key", "healthcheck-client.crt", "healthcheck-client.key", "server.crt", "server.key"):
            with open("/etc/kubernetes/pki/etcd/" + name, "w") as f:
                f.write(f"stand-in {name}\n")
        for name in ("kubelet.conf", "controller-manager.conf", "scheduler.conf", "super-admin.conf"):
            with open("/etc/kubernetes/" + name, "w") as f:
                f.write("apiVersion: v1\nkind: Config\n")
        os.makedirs("/var/lib/etcd/member/snap", exist_ok=True)
        with open("/var/lib/etcd/member/snap/db", "wb") as f:
            f.write(b"etcd data of " + NODE["name"].encode() + b" " + os.urandom(64))
        os.makedirs("/var/lib/kubelet", exist_ok=True)
        with open("/var/lib/kubelet/config.yaml", "w") as f:
            f.write("kind: KubeletConfiguration\n")
        state.data["certs_renewed"] = time.time()
        # As kubeadm does: a bootstrap token for the join command it prints (unless --skip-token-print), and
        # with --upload-certs a certificate key it prints (unless --skip-certificate-key-print).
        token = new_token(state)
        key = new_certificate_key(state) if "--upload-certs" in argv else None
        state.save()
        out("Your Kubernetes control-plane has initialized successfully!\n")
        if key and "--skip-certificate-key-print" not in argv:
            out(f"  kubeadm join {control_plane_endpoint()} --control-plane --certificate-key {key}\n")
        if "--skip-token-print" not in argv:
            out(f"  kubeadm join {control_plane_endpoint()} --token {token} --discovery-token-ca-cert-hash {ca_cert_hash()}\n")
        return 0
    if argv[:2] == ["token", "create"]:
        return kubeadm_token_create(argv)
    if argv[:1] == ["join"]:
        return kubeadm_join(config)
    if argv[:1] == ["reset"]:
        return kubeadm_reset(argv)
    if argv[:1] == ["upgrade"]:
        return kubeadm_upgrade(argv[1:])
    if argv[:1] == ["certs"]:
        return kubeadm_certs(argv[1:])
    return 0


def random_text(alphabet, n):
    return "".join(alphabet[b % len(alphabet)] for b in os.urandom(n))


def control_plane_endpoint():
    try:
        m = re.search(r'controlPlaneEndpoint:\s*"?([^"\s]+)', open("/etc/kubernetes/kubeadm-config.yaml").read())
        return m.group(1) if m else NODE["address"] + ":6443"
    except OSError:
        return NODE["address"] + ":6443"


def ca_cert_hash():
    """The sha256 a real kubeadm takes of the CA's public key; here of this node's stand-in CA."""
    return "sha256:" + hashlib.sha256(b"stand-in ca of " + NODE["name"].encode()).hexdigest()


def new_token(state):
    """A bootstrap token the cluster now accepts (the state's `tokens`; a test removes one to let it expire)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    token = random_text(alphabet, 6) + "." + random_text(alphabet, 16)
    state.data.setdefault("tokens", []).append(token)
    return token


def new_certificate_key(state):
    key = random_text("0123456789abcdef", 64)
    state.data.setdefault("certificate_keys", []).append(key)
    return key


def kubeadm_token_create(argv):
    """`kubeadm token create [--ttl D] --print-join-command`: a bootstrap token, remembered in the node's state
    (the test compares it with what the joining nodes got; it is never recorded with the call)."""
    if not os.path.exists("/etc/kubernetes/admin.conf"):
        err("failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory\n")
        return 1
    state = State()
    token = new_token(state)
    state.save()
    if "--print-join-command" in argv:
        out(f"kubeadm join {control_plane_endpoint()} --token {token} --discovery-token-ca-cert-hash {ca_cert_hash()} \n")
    else:
        out(token + "\n")
    return 0


def kubeadm_upload_certs(argv):
    """`kubeadm init phase upload-certs --upload-certs`: a new certificate key, printed last as kubeadm does."""
    if not os.path.exists("/etc/kubernetes/admin.conf"):
        err("failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory\n")
        return 1
    state = State()
    key = new_certificate_key(state)
    state.save()
    out('[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace\n'
        "[upload-certs] Using certificate key:\n" + key + "\n")
    return 0


def lab_states():
    """(node name, state) of every node of the lab: the API server a real join talks to is another node, so the
    stand-in reads the other nodes' state folders (host folders next to this node's) instead."""
    nodes = os.path.dirname(os.path.dirname(STATE_DIR))
    for name in sorted(os.listdir(nodes)):
        try:
            with open(os.path.join(nodes, name, "standins", "state.json")) as f:
                yield name, json.load(f)
        except (OSError, ValueError):
            continue


def cluster_problems(token, ca_hash, key):
    """What the cluster's first control plane would refuse: a token it does not (or no longer) know, another
    cluster's CA hash, a certificate key it did not upload."""
    issuer = next(((name, st) for name, st in lab_states() if token in st.get("tokens", [])), None)
    if issuer is None:
        return ["couldn't validate the identity of the API Server: the bootstrap token is unknown or expired"]
    name, st = issuer
    problems = []
    if ca_hash != "sha256:" + hashlib.sha256(b"stand-in ca of " + name.encode()).hexdigest():
        problems.append(f"the CA hash is not the one of {name}, whose token this is")
    if key is not None and key not in st.get("certificate_keys", []):
        problems.append("the certificate key does not decrypt the kubeadm-certs Secret (unknown or expired)")
    return problems


def kubeadm_join(config):
    """`kubeadm join --config F`: checks the JoinConfiguration like kubeadm's decoding would (token, CA hash, the
    certificate key of a control plane) and leaves a joined node's files; what it joined with goes to the state."""
    if not config:
        err("this stand-in only joins with --config (the token must not be on the command line)\n")
        return 1
    if os.path.exists("/etc/kubernetes/kubelet.conf"):
        err("[preflight] Some fatal errors occurred: /etc/kubernetes/kubelet.conf already exists\n")
        return 1
    text = open(config).read()
    field = lambda name: (re.search(name + r':\s*"?([^"\s]+)"?', text) or [None, None])[1]
    token, endpoint = field("token"), field("apiServerEndpoint")
    hashes = re.search(r'caCertHashes:\s*\n\s*-\s*"?([^"\s]+)', text)
    control_plane = re.search(r"^controlPlane:", text, re.M) is not None
    key = field("certificateKey")
    problems = []
    if "kind: JoinConfiguration" not in text:
        problems.append("no JoinConfiguration")
    if not token or not re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token):
        problems.append("the bootstrap token is not of the form [a-z0-9]{6}.[a-z0-9]{16}")
    if not hashes or not re.fullmatch(r"sha256:[0-9a-f]{64}", hashes.group(1)):
        problems.append("caCertHashes needs one sha256:<64 hex>")
    if control_plane and (not key or not re.fullmatch(r"[0-9a-f]{64}", key)):
        problems.append("a control plane needs certificateKey (64 hex)")
    if not problems:
        problems.extend(cluster_problems(token, hashes.group(1), key if control_plane else None))
    if problems:
        err("error execution phase preflight: " + "; ".join(problems) + "\n")
        return 1
    os.makedirs("/etc/kubernetes/pki", exist_ok=True)
    with open("/etc/kubernetes/kubelet.conf", "w") as f:
        f.write("apiVersion: v1\nkind: Config\n# server: https://" + endpoint + "\n")
    tainted = not re.search(r"^\s*taints:\s*\[\]\s*$", text, re.M)
    if control_plane:
        with open("/etc/kubernetes/admin.conf", "w") as f:
            f.write("apiVersion: v1\nclusters:\n- cluster:\n    server: https://" + endpoint + "\n  name: kubernetes\n"
                    "kind: Config\n")
        os.chmod("/etc/kubernetes/admin.conf", 0o600)
        write_control_plane(kubeadm_version())
        os.makedirs("/var/lib/etcd/member/snap", exist_ok=True)
    state = State()
    state.data["joined"] = {
        "endpoint": endpoint,
        "token": token,
        "ca_hash": hashes.group(1),
        "certificate_key": key if control_plane else None,
        "control_plane": control_plane,
        "tainted": tainted,
    }
    state.save()
    out("This node has joined the cluster" + (" and a new control plane instance was created" if control_plane else "") + ".\n")
    return 0


CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")


def write_control_plane(version):
    """The static pod manifests, with the images a real kubeadm writes (etcd keeps its own version)."""
    os.makedirs("/etc/kubernetes/manifests", exist_ok=True)
    for name in CONTROL_PLANE:
        image = "registry.k8s.io/etcd:3.6.5-0" if name == "etcd" else f"registry.k8s.io/{name}:{version}"
        with open(f"/etc/kubernetes/manifests/{name}.yaml", "w") as f:
            f.write(f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\n"
                    f"spec:\n  containers:\n  - name: {name}\n    image: {image}\n")


def control_plane_version():
    try:
        m = re.search(r"kube-apiserver:(v[0-9.]+)", open("/etc/kubernetes/manifests/kube-apiserver.yaml").read())
        return m.group(1) if m else None
    except OSError:
        return None


def kubeadm_reset(argv):
    if "-f" not in argv and "--force" not in argv:
        err("[reset] Are you sure you want to proceed? [y/N]: aborted (no terminal)\n")
        return 1
    import shutil
    for path in ("/etc/kubernetes/manifests", "/etc/kubernetes/pki", "/var/lib/kubelet", "/etc/kubernetes/tmp"):
        shutil.rmtree(path, ignore_errors=True)
    for name in ("admin.conf", "super-admin.conf", "kubelet.conf", "bootstrap-kubelet.conf", "controller-manager.conf",
                 "scheduler.conf"):
        try:
            os.remove("/etc/kubernetes/" + name)
        except FileNotFoundError:
            pass
    if os.path.isdir("/var/lib/etcd"):
        for entry in os.listdir("/var/lib/etcd"):
            shutil.rmtree(os.path.join("/var/lib/etcd", entry), ignore_errors=True)
    state = State()
    state.data["cluster"] = None
    state["units"].get("kubelet", {})["active"] = False
    state.save()
    out("[reset] Deleted contents of the etcd data directory: /var/lib/etcd\n"
        "The reset process does not clean CNI configuration. To do so, you must remove /etc/cni/net.d\n"
        "The reset process does not reset or clean up iptables rules or IPVS tables.\n"
        "The reset process does not clean your kubeconfig files and you must remove them manually.\n")
    return 0


def kubeadm_upgrade(argv):
    state = State()
    have = control_plane_version()
    mine = kubeadm_version()
    if argv[:1] == ["plan"]:
        if state["cluster"] is None or have is None:
            err("[upgrade/config] FATAL: no control plane on this node (missing /etc/kubernetes/admin.conf)\n")
            return 1
        out(f"[upgrade/versions] Cluster version: {have}\n[upgrade/versions] kubeadm version: {mine}\n"
            f"You can now apply the upgrade by executing the following command:\n\n\tkubeadm upgrade apply {mine}\n")
        return 0
    if argv[:1] == ["apply"]:
        wanted = next((a for a in argv[1:] if a.startswith("v")), None)
        if state["cluster"] is None or have is None:
            err("[upgrade] FATAL: no control plane on this node\n")
            return 1
        if wanted != mine:
            err(f"[upgrade/version] FATAL: the specified version to upgrade to {wanted} is higher than the kubeadm version {mine}\n")
            return 1
        hm, wm = [tuple(int(x) for x in v.lstrip("v").split(".")[:2]) for v in (have, wanted)]
        if wm[1] > hm[1] + 1:
            err(f"[upgrade/version] FATAL: the cluster version {have} cannot be upgraded to {wanted}: skipping a minor\n")
            return 1
        write_control_plane(wanted)
        out(f'[upgrade/successful] SUCCESS! Your cluster was upgraded to "{wanted}". Enjoy!\n')
        return 0
    if argv[:1] == ["node"]:
        if os.path.exists("/etc/kubernetes/manifests/kube-apiserver.yaml"):
            write_control_plane(mine)
        out("[upgrade] The configuration for this node was successfully upgraded!\n")
        return 0
    return 0


def kubeadm_certs(argv):
    state = State()
    if state["cluster"] is None:
        err("[check-expiration] Error reading configuration from the Cluster: no cluster on this node\n")
        return 1
    if argv[:1] == ["renew"]:
        state.data["certs_renewed"] = time.time()
        state.data["certs_renewed_after_aging"] = True
        state.save()
        out("[renew] certificates renewed: admin.conf apiserver apiserver-etcd-client apiserver-kubelet-client "
            "controller-manager.conf etcd-healthcheck-client etcd-peer etcd-server front-proxy-client scheduler.conf "
            "super-admin.conf\n\nDone renewing certificates. You must restart the kube-apiserver, kube-controller-manager, "
            "kube-scheduler and etcd, so that they can use the new certificates.\n")
        return 0
    if argv[:1] == ["check-expiration"]:
        # A test may age the certificates: <state dir>/cert_days_left holds the days left.
        try:
            days = int(open(os.path.join(STATE_DIR, "cert_days_left")).read().strip())
        except (OSError, ValueError):
            days = 364
        if state.data.get("certs_renewed_after_aging"):
            days = 364
        out("CERTIFICATE                EXPIRES                  RESIDUAL TIME   CERTIFICATE AUTHORITY   EXTERNALLY MANAGED\n")
        for name, ca in (("admin.conf", "ca"), ("apiserver", "ca"), ("apiserver-etcd-client", "etcd-ca"),
                         ("apiserver-kubelet-client", "ca"), ("controller-manager.conf", "ca"),
                         ("etcd-healthcheck-client", "etcd-ca"), ("etcd-peer", "etcd-ca"), ("etcd-server", "etcd-ca"),
                         ("front-proxy-client", "front-proxy-ca"), ("scheduler.conf", "ca"), ("super-admin.conf", "ca")):
            out(f"{name:<26} Dec 01, 2027 21:00 UTC   {days}d{'':<12} {ca:<23} no\n")
        out("\nCERTIFICATE AUTHORITY   EXPIRES                  RESIDUAL TIME   EXTERNALLY MANAGED\n")
        for ca in ("ca", "etcd-ca", "front-proxy-ca"):
            out(f"{ca:<23} Nov 29, 2036 21:00 UTC   9y              no\n")
        return 0
    return 0


def crictl(argv):
    state = State()
    if argv[:1] == ["ps"]:
        name = argv[argv.index("--name") + 1].strip("^$") if "--name" in argv else None
        running = [n for n in CONTROL_PLANE if os.path.exists(f"/etc/kubernetes/manifests/{n}.yaml")]
        if state["cluster"] is None:
            running = []
        for n in running:
            if name is None or n == name:
                cid = hashlib.sha256((NODE["name"] + n).encode()).hexdigest()[:13]
                out(cid + "\n" if "-q" in argv else f"{cid}   {n}   Running\n")
        return 0
    if argv[:1] == ["exec"] and len(argv) > 2:
        rest = [a for a in argv[1:] if a not in ("-i", "-t", "-it")]
        if rest[1:2] == ["etcdctl"]:
            record("etcdctl", rest[2:])
            return etcdctl(rest[2:])
        err(f"crictl exec: no stand-in for {rest[1:2]}\n")
        return 1
    return 0


def etcdctl(argv):
    """etcdctl inside the etcd pod: the pod sees the node's /var/lib/etcd and /etc/kubernetes/pki/etcd."""
    state = State()
    for flag in ("--cacert", "--cert", "--key"):
        value = next((a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")), None)
        if value is None or not os.path.exists(value):
            err(f"Error: open {value}: no such file or directory ({flag})\n")
            return 1
    words = [a for a in argv if not a.startswith("-")]
    if words[:2] == ["snapshot", "save"] and len(words) > 2:
        if state["cluster"] is None:
            err("Error: context deadline exceeded\n")
            return 1
        data = open("/var/lib/etcd/member/snap/db", "rb").read()
        with open(words[2], "wb") as f:
            f.write(b"etcd snapshot (stand-in) of " + NODE["name"].encode() + b" at "
                    + (control_plane_version() or "?").encode() + b"\n" + data)
        out(f"Snapshot saved at {words[2]}\n")
        return 0
    return 0


def iptables_save(argv):
    state = State()
    rules = state.data.get("iptables", [])
    out("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
    for r in rules:
        out(r + "\n")
    out("COMMIT\n")
    return 0


def iptables_restore(argv):
    # Read the whole input before taking the state lock: the iptables-save feeding the pipe needs it too.
    lines = sys.stdin.read().splitlines()
    state = State()
    state.data["iptables"] = [l for l in lines if l and not l.startswith(("*", ":INPUT", ":FORWARD", ":OUTPUT", "COMMIT", "#"))]
    state.save()
    return 0


def ipvsadm(argv):
    state = State()
    if "--clear" in argv or "-C" in argv:
        state.data["ipvs"] = []
        state.save()
    return 0


def split_yaml_docs(text):
    return [d for d in re.split(r"(?m)^---\s*$", text) if d.strip()]


def describe_doc(doc):
    kind = re.search(r"(?m)^kind:\s*(\S+)", doc)
    meta = re.search(r"(?m)^metadata:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", doc)
    name = ns = None
    if meta:
        block = meta.group(1)
        n = re.search(r"(?m)^  name:\s*(\S+)", block)
        s = re.search(r"(?m)^  namespace:\s*(\S+)", block)
        name = n.group(1).strip("\"'") if n else None
        ns = s.group(1).strip("\"'") if s else None
    return {"kind": kind.group(1) if kind else None, "name": name, "namespace": ns}


class Kubectl:
    VALUE_FLAGS = {"-n", "--namespace", "-o", "--output", "-f", "--filename", "-c", "--container", "--for",
                   "--timeout", "--field-selector", "--field-manager", "--kubeconfig", "--raw", "-l", "--selector"}

    def __init__(self, argv):
        self.flags = {}
        self.words = []
        self.after = []
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
        self.output = self.flags.get("-o") or self.flags.get("--output")

    def input(self):
        """The documents of `-f FILE` or `-f -` (stdin)."""
        source = self.flags.get("-f") or self.flags.get("--filename")
        return sys.stdin.read() if source in (None, True, "-") else open(source).read()


def applied_text():
    try:
        return open(os.path.join(STATE_DIR, "applied.yaml")).read()
    except FileNotFoundError:
        return ""


def lb_ip():
    # The pool applied last wins, as an apply of the same pool with a new range does in the cluster.
    starts = re.findall(r"kind: CiliumLoadBalancerIPPool[\s\S]*?start:\s*\"?([0-9.]+)", applied_text())
    return starts[-1] if starts else ""


def kubectl(argv):
    k = Kubectl(argv)
    kubeconfig = k.flags.get("--kubeconfig") or os.environ.get("KUBECONFIG") or "/root/.kube/config"
    verb = k.words[0] if k.words else ""
    if verb == "version" and "--client" in k.flags:
        out("Client Version: " + kubeadm_version() + "\n")
        return 0
    if verb == "diff":
        diff_text = k.input()  # read before the state lock: the kustomize build feeding the pipe may need it
    state = State()
    if not os.path.exists(kubeconfig) or state["cluster"] is None:
        err("The connection to the server localhost:8080 was refused - did you specify the right host or port?\n")
        return 1
    cluster = state["cluster"]
    if verb == "diff":
        return kubectl_diff(state, diff_text)
    if verb == "apply":
        docs = split_yaml_docs(k.input())
        objects = [describe_doc(d) for d in docs]
        keep = "".join("---\n" + d.strip("\n") + "\n" for d, o in zip(docs, objects) if o["kind"] != "Secret")
        # Comments carry the patches the kustomize stand-in did not apply; they are part of what was applied.
        with open(os.path.join(STATE_DIR, "applied.yaml"), "a") as f:
            f.write(keep)
        state["applied"].extend(objects)
        digests = state.data.setdefault("digests", {})
        for d, o in zip(docs, objects):
            digests[doc_id(o, d, state)] = doc_digest(state, d)
        if any(o["name"] == "cilium-chart-values" for o in objects):
            # What a Cilium agent leaves on a node: its links and its iptables chains (kube's chains come with it,
            # as a kube-proxy would have written them), next to a rule of the operator's own.
            links = state.data.setdefault("links", ["lo", "eth0"])
            for l in ("cilium_host", "cilium_net", "cilium_vxlan", "lxc_health"):
                if l not in links:
                    links.append(l)
            state.data["iptables"] = [":CILIUM_INPUT - [0:0]", ":KUBE-FIREWALL - [0:0]", "-A INPUT -j CILIUM_INPUT",
                                      "-A INPUT -j KUBE-FIREWALL", "-A INPUT -s 10.1.2.0/24 -j ACCEPT"]
            state.data["ipvs"] = ["TCP 10.96.0.1:443 rr"]
        state.save()
        record("kubectl", argv, objects=objects)
        for o in objects:
            out(f"{(o['kind'] or 'object').lower()}/{o['name']} serverside-applied\n")
        return 0
    if verb == "get":
        return kubectl_get(k, state, cluster)
    if verb == "taint":
        cluster["taints"] = [t for t in cluster["taints"] if not any(w.startswith(t) for w in k.words)]
        state.save()
        out("node/" + NODE["name"] + " untainted\n")
        return 0
    if verb == "exec":
        if "cilium-dbg" in k.after and "status" in k.after:
            if "kubeProxyReplacement: true" not in applied_text():
                err('error: unable to upgrade connection: container not found ("cilium-agent")\n')
                return 1
            out("KVStore:                 Disabled\nKubernetes:              Ok   1.34 (v1.34.2) [linux/amd64]\n"
                "KubeProxyReplacement:    True   [eth0   " + NODE["address"] + " (Direct Routing)]\n")
        return 0
    if verb == "rollout":
        for target in k.words[2:]:
            out(f'{target} successfully rolled out\n')
        return 0
    if verb == "wait":
        out("condition met\n")
        return 0
    if verb == "delete":
        return 0
    return 0


def doc_digest(state, doc):
    """A keyed digest of one applied document: what `kubectl diff` compares with. Keyed with the node's own random
    key, so a Secret's digest in the state file tells nothing about its values."""
    key = state.data.setdefault("digest_key", os.urandom(16).hex())
    return hmac.new(key.encode(), doc.strip("\n").encode(), "sha256").hexdigest()


def doc_id(obj, doc, state):
    if obj["kind"] is None:
        return "#" + doc_digest(state, doc)  # a comment document (the kustomize stand-in's patches)
    return f"{obj['kind']}/{obj['namespace'] or ''}/{obj['name']}"


def kubectl_diff(state, text):
    """As kubectl diff: exit 0 when every object is as the input says, 1 when one differs or is missing, 2 on an
    error (no objects)."""
    docs = split_yaml_docs(text)
    if not docs:
        err("error: no objects passed to diff\n")
        return 2
    digests = state.data.get("digests", {})
    differ = False
    for d in docs:
        o = describe_doc(d)
        if digests.get(doc_id(o, d, state)) != doc_digest(state, d):
            out(f"diff -u -N live/{o['kind']}.{o['name']} merged/{o['kind']}.{o['name']}\n")
            differ = True
    state.save()  # the digest key, made on first use
    return 1 if differ else 0


def kubectl_get(k, state, cluster):
    raw = k.flags.get("--raw")
    if raw:
        if raw in ("/readyz", "/livez", "/healthz"):
            out("ok")
            return 0
        if raw.endswith("/api/v1/stores"):
            eps = sorted(set(re.findall(r"--endpoint=([0-9.]+:\d+)", applied_text())))
            stores = {"sidecar": [{"name": e, "lastError": None} for e in eps],
                      "store": [{"name": "thanos-store:10901"}], "rule": [{"name": "thanos-rule:10901"}]}
            out(json.dumps({"status": "success", "data": stores}, separators=(",", ":")))
            return 0
        err(f'Error from server (NotFound): the server could not find the requested resource ("{raw}")\n')
        return 1
    kind = k.words[1].split("/")[0].lower() if len(k.words) > 1 else ""
    name = k.words[2] if len(k.words) > 2 else (k.words[1].split("/")[1] if len(k.words) > 1 and "/" in k.words[1] else None)
    jsonpath = k.output[len("jsonpath="):] if k.output and k.output.startswith("jsonpath=") else None
    if kind in ("nodes", "node", "no"):
        if jsonpath and "taints" in jsonpath:
            out(" ".join(cluster["taints"]))
        else:
            kubelet = "v" + (state["packages"].get("kubelet") or "0").split("-")[0]
            if jsonpath and "kubeletVersion" in jsonpath:
                out(kubelet)
            else:
                out(f"NAME   STATUS   ROLES           AGE   VERSION\n{NODE['name']}   Ready    control-plane   1m    {kubelet}\n")
        return 0
    if kind in ("ds", "daemonset", "daemonsets") and name == "kube-proxy":
        if cluster["kube_proxy"]:
            out("NAME         DESIRED   CURRENT   READY\nkube-proxy   1         1         1\n")
            return 0
        err('Error from server (NotFound): daemonsets.apps "kube-proxy" not found\n')
        return 1
    if kind in ("svc", "service", "services"):
        if jsonpath and "loadBalancer" in jsonpath:
            out(lb_ip())
        elif jsonpath and "clusterIP" in jsonpath:
            out("10.96.42." + str(1 + int(hashlib.sha256((name or "").encode()).hexdigest(), 16) % 250))
        else:
            out(f"NAME   TYPE   CLUSTER-IP\n{name}   ClusterIP   10.96.0.10\n")
        return 0
    if name:
        singular = kind.rstrip("s")
        for o in state["applied"]:
            if (o["kind"] or "").lower() in (kind, singular) and o["name"] == name:
                out(f"NAME   AGE\n{name}   1m\n")
                return 0
        err(f'Error from server (NotFound): {kind} "{name}" not found\n')
        return 1
    return 0


def kustomize(argv):
    if argv[:1] == ["version"]:
        out("v" + os.environ.get("KUBEBOOT_STANDIN_VERSION", "5.8.1") + "\n")
        return 0
    if argv[:1] != ["build"]:
        return 0
    # Flags of `kustomize build` (v5.8.1) that take a value; the rest of the words are the directory.
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
    if helm and not (shutil.which(helm_command) if "/" not in helm_command else os.access(helm_command, os.X_OK)):
        # What the real kustomize reports when it cannot start helm (it looks a bare name up on PATH).
        err(f"Error: unable to run: '{helm_command} pull ...' (is '{helm_command}' installed?): "
            f'exec: "{helm_command}": executable file not found in $PATH\n')
        return 1
    out(kustomize_build(dirs[0] if dirs else ".", helm))
    return 0


def yaml_block(text, key):
    """The lines of a top-level key's block (without the key line)."""
    m = re.search(rf"(?m)^{key}:[^\n]*\n((?:(?:[ \t-].*)?\n)*)", text)
    return m.group(1) if m else ""


def kustomize_build(path, helm):
    kfile = os.path.join(path, "kustomization.yaml")
    text = open(kfile).read()
    parts = []
    for item in re.findall(r"(?m)^\s*-\s*(\S+)\s*$", yaml_block(text, "resources")):
        target = os.path.join(path, item.strip("\"'"))
        if os.path.isdir(target):
            parts.append(kustomize_build(target, helm))
        else:
            parts.append(open(target).read())
    charts = yaml_block(text, "helmCharts")
    if charts and not helm:
        raise SystemExit("Error: trouble configuring builtin HelmChartInflationGenerator: must specify --enable-helm")
    for chart in re.split(r"(?m)^\s*-\s+(?=name:)", charts)[1:]:
        name = re.search(r"^name:\s*(\S+)", chart).group(1)
        ns = re.search(r"(?m)^\s*namespace:\s*(\S+)", chart)
        values_file = re.search(r"(?m)^\s*valuesFile:\s*(\S+)", chart)
        version = re.search(r"(?m)^\s*version:\s*(\S+)", chart)
        values = open(os.path.join(path, values_file.group(1))).read() if values_file else ""
        body = "".join("    " + line + "\n" for line in values.splitlines())
        # The chart's version is in what it renders (its labels), as a real chart's is: a new version differs.
        parts.append(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-chart-values\n"
                     f"  namespace: {ns.group(1) if ns else 'default'}\n"
                     f"data:\n  chart: {name}\n  version: {version.group(1) if version else ''}\n"
                     f"  values.yaml: |\n{body}")
    for gen in re.findall(r"(?m)^\s*-\s*name:\s*(\S+)", yaml_block(text, "configMapGenerator")):
        parts.append(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {gen}\n")
    patches = yaml_block(text, "patches")
    if patches:
        parts.append("# patches (not applied by the stand-in):\n" + "".join("# " + l + "\n" for l in patches.splitlines()))
    return "".join("---\n" + p.strip("\n") + "\n" for p in parts if p.strip())


def helm(argv):
    if argv[:1] == ["version"]:
        out("v" + os.environ.get("KUBEBOOT_STANDIN_VERSION", "3.19.0") + "+g3d8990f\n")
    return 0


def initiator_name():
    return "iqn.2004-10.com.ubuntu:01:" + hashlib.sha256(NODE["name"].encode()).hexdigest()[:12]


def iscsi_iname(argv):
    out(initiator_name() + "\n")
    return 0


def quiet_ok(argv):
    return 0


COMMANDS = {
    "apt-get": apt_get, "apt-cache": apt_cache, "apt-mark": apt_mark, "dpkg": dpkg, "dpkg-query": dpkg_query,
    "dnf": dnf, "yum": dnf, "rpm": rpm,
    "systemctl": systemctl, "modprobe": modprobe, "lsmod": lsmod, "sysctl": sysctl,
    "swapoff": swapoff, "swapon": quiet_ok, "setenforce": setenforce, "getenforce": getenforce,
    "firewall-cmd": quiet_ok, "ufw": ufw, "timedatectl": timedatectl, "getent": getent, "ip": ip,
    "curl": curl, "sha256sum": sha256sum, "gpg": gpg,
    "containerd": containerd, "ctr": quiet_ok, "crictl": crictl, "kubelet": quiet_ok,
    "iptables-save": iptables_save, "ip6tables-save": iptables_save, "iptables-restore": iptables_restore,
    "ip6tables-restore": iptables_restore, "iptables": quiet_ok, "ip6tables": quiet_ok, "ipvsadm": ipvsadm,
    "kubeadm": kubeadm, "kubectl": kubectl, "kustomize": kustomize, "helm": helm,
    "iscsiadm": quiet_ok, "iscsi-iname": iscsi_iname, "multipath": quiet_ok, "mount.nfs4": quiet_ok,
    "jq": quiet_ok, "socat": quiet_ok, "conntrack": quiet_ok, "ipset": quiet_ok,
}


def main():
    name = os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    if name == "standin.py" and argv:
        name, argv = argv[0], argv[1:]
    handler = COMMANDS.get(name)
    if handler is None:
        err(f"{name}: no stand-in for this command\n")
        return 127
    # kubectl apply records itself, with the objects it read. A bare `sha256sum` (hashing its stdin) is
    # kubeboot checking a file it put on the node (its node helper at every shell start, an upload),
    # not a task's call: the tests that count calls would count shells instead.
    if not (name == "kubectl" and "apply" in argv) and not (name == "sha256sum" and not argv):
        record(name, argv)
    if failing(name, argv):
        err(f"{name}: failing on purpose (a test's fail flag is set)\n")
        return 1
    if held(name, argv):
        return 1
    return handler(argv) or 0


if __name__ == "__main__":
    sys.exit(main())
