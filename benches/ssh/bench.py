#!/usr/bin/env python3
"""Side-by-side SSH orchestration benchmark: kubeboot vs ansible-playbook vs pyinfra vs plain OpenSSH floors.

Started by run.sh (which builds kubeboot and prepares the venv); see README.md in this folder.
Every host is a real sshd of kubeboot's local lab on a loopback address. Every tool runs the same
workload on the same hosts; variants are interleaved (the order rotates every run) so drift in the
machine's load hits all of them alike. Each run is timed (wall), its whole process tree's CPU is
counted (user+sys via wait4, plus ssh ControlPersist masters that detach from the tree), and its
memory is recorded (largest single process via wait4, and whole-tree peak sampled from /proc).
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# name -> (tasks per host, one task's shell command, become)
WORKLOADS = {
    "W1": (50, "true", False),
    "W2": (20, "echo line; sleep 0.05", False),
    "W3": (50, "true", True),
}
WORKLOAD_TEXT = {
    "W1": "50 × `true` per host",
    "W2": "20 × `echo line; sleep 0.05` per host",
    "W3": "50 × `true` per host with become (sudo with a password)",
}

BASELINE = "kubeboot (baseline binary)"

# Every variant: name, family (for --tools), whether it needs the venv.
VARIANTS = [
    ("kubeboot", "kubeboot", False),
    (BASELINE, "kubeboot", False),  # only with --baseline: another kubeboot binary, e.g. main before a change
    ("kubeboot (no persistent shell)", "kubeboot", False),
    ("kubeboot (no node helper)", "kubeboot", False),  # the persistent shell runs the jobs itself
    ("floor: one ssh, one shell", "floor", False),
    ("floor: ControlMaster, ssh per command", "floor", False),
    ("ansible command linear", "ansible", True),
    ("ansible command free", "ansible", True),
    ("ansible raw linear", "ansible", True),
    ("ansible raw free", "ansible", True),
    ("pyinfra", "pyinfra", True),
    ("pyinfra --no-wait", "pyinfra", True),
]
FLOOR = "floor: one ssh, one shell"

# sshd profiles. `lab`: the config `kubeboot lab up` writes (already `UsePAM no`). `lean`: the same plus every
# per-session extra OpenSSH can skip turned off, so the floor pays as little per connection and per command as an
# sshd can make it (the login shell stays kblab's /bin/bash: other tests share that user; sshd runs
# `bash -c 'sh -s'`, and bash execs `sh` at once, so that is one exec per session, not per task).
PROFILES = {
    "lab": "",
    "lean": ("UsePAM no\nPermitUserRC no\nPermitUserEnvironment no\nPrintMotd no\nPrintLastLog no\n"
             "X11Forwarding no\nPermitTTY no\nUseDNS no\nCompression no\nBanner none\nLogLevel ERROR\n"),
}

# Every process this script starts that may outlive a run is killed through here, by its PID.
LIVE = set()
# The run's deadline per workload (seconds): nothing may hang forever.
RUN_TIMEOUT = 900


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- lab


class Lab:
    """One kubeboot lab: N sshd on 127.0.X.1.. with ports P.. ."""

    def __init__(self, args, n, index, profile="lab"):
        self.n = n
        self.profile = profile
        self.dir = Path(args.workdir) / f"lab-{n}-{profile}"
        self.kubeboot = args.kubeboot
        # 127.<base+i>.0.1, ports 30000 + 1000 * (base + i - 100): away from the test suite's labs.
        self.first_octet = args.lab_base + index
        self.first_port = 30000 + 1000 * (self.first_octet - 100)
        self.up = False
        self.cgroup = None

    def start(self, max_startups):
        if self.dir.exists():
            self.stop()
            shutil.rmtree(self.dir, ignore_errors=True)
        first = f"127.{self.first_octet}.0.1"
        # kubeboot lab up waits until each address accepts TCP: a stranger already listening there would pass that
        # check while our sshd fails to bind. Refuse to share addresses.
        for i in range(self.n):
            addr = ".".join(map(str, _ip_add(first, i)))
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex((addr, self.first_port + i)) == 0:
                    raise RuntimeError(f"{addr}:{self.first_port + i} is already in use; pick another --lab-base")
        cmd = [self.kubeboot, "lab", "up", "--nodes", str(self.n), "--dir", str(self.dir),
               "--first-address", first, "--first-port", str(self.first_port)]
        log(f"  lab up: {self.n} nodes from {first}:{self.first_port}")
        self.up = True  # even half-started labs get torn down
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=300)
        self.nodes = []
        for i in range(self.n):
            addr = ".".join(map(str, _ip_add(first, i)))
            self.nodes.append((f"node-{i + 1}", addr, self.first_port + i))
        self.key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.password_file = self.dir / "sudo_password"
        self.tune(max_startups)
        self.account()

    def tune(self, max_startups):
        """Raises sshd's MaxStartups/MaxSessions in every node's config and reloads it (SIGHUP re-executes sshd)."""
        for name, _, _ in self.nodes:
            ndir = self.dir / "nodes" / name
            conf = ndir / "sshd_config"
            text = conf.read_text()
            extra = PROFILES[self.profile]
            keys = ["MaxStartups", "MaxSessions"] + [line.split()[0] for line in extra.splitlines()]
            text = re.sub(r"(?m)^(%s) .*\n" % "|".join(keys), "", text)
            text += f"MaxStartups {max_startups}\nMaxSessions 64\n{extra}"
            conf.write_text(text)
            try:
                pid = int((ndir / "sshd.pid").read_text().strip())
                os.kill(pid, signal.SIGHUP)
            except (OSError, ValueError) as e:
                raise RuntimeError(f"sshd of {name} is not running ({e}); see {ndir / 'sshd.log'}") from e
        # sshd re-executes itself on SIGHUP; wait until every node accepts connections again.
        deadline = time.time() + 30
        pending = list(self.nodes)
        while pending and time.time() < deadline:
            still = []
            for node in pending:
                if not _ssh_ok(self, node):
                    still.append(node)
            pending = still
            if pending:
                time.sleep(0.2)
        if pending:
            raise RuntimeError(f"nodes did not come back after reloading sshd: {[n[0] for n in pending]}")

    def stop(self):
        if self.up or self.dir.exists():
            subprocess.run([self.kubeboot, "lab", "down", "--dir", str(self.dir)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            self.up = False
        group = getattr(self, "cgroup", None)
        if group is not None:
            for _ in range(50):  # empty once the last session has gone
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
            self.cgroup = None

    def account(self):
        """Puts every node's sshd in a cpuacct cgroup of its own, so all node-side CPU is counted (even of processes
        whose parent never reaps them). Without cgroup v1 cpuacct, server_cpu() falls back to sshd's cutime."""
        self.cgroup = None
        group = Path(f"/sys/fs/cgroup/cpuacct/kubeboot-bench-{self.first_octet}")
        try:
            group.mkdir(exist_ok=True)
            for name, _, _ in self.nodes:
                pid = (self.dir / "nodes" / name / "sshd.pid").read_text().strip()
                (group / "cgroup.procs").write_text(pid)
            self.cgroup = group
        except OSError as e:
            log(f"  (no cpuacct cgroup: {e}; node CPU from sshd's reaped children only)")

    def server_cpu(self):
        """CPU seconds used so far by the nodes' sshd and every finished session below them (the remote side).

        sshd reaps its sessions, so their CPU lands in its cutime/cstime once they end."""
        if self.cgroup is not None:
            try:
                return int((self.cgroup / "cpuacct.usage").read_text()) / 1e9
            except (OSError, ValueError):
                pass
        total = 0
        for name, _, _ in self.nodes:
            try:
                pid = int((self.dir / "nodes" / name / "sshd.pid").read_text().strip())
                with open(f"/proc/{pid}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in rest[11:15])
            except (OSError, ValueError, IndexError):
                pass
        return total / CLK_TCK

    def throttle_lines(self):
        """sshd log lines that say it refused or throttled connections (MaxStartups, MaxSessions)."""
        hits = []
        for name, _, _ in self.nodes:
            log_path = self.dir / "nodes" / name / "sshd.log"
            try:
                for line in log_path.read_text(errors="replace").splitlines():
                    if re.search(r"MaxStartups|throttl|drop connection|no more sessions|Too many", line, re.I):
                        hits.append(f"{name}: {line.strip()}")
            except OSError:
                pass
        return hits


def _ip_add(first, i):
    parts = [int(p) for p in first.split(".")]
    value = (parts[0] << 24 | parts[1] << 16 | parts[2] << 8 | parts[3]) + i
    return [(value >> s) & 255 for s in (24, 16, 8, 0)]


def ssh_base(lab):
    return ["ssh", "-F", "/dev/null", "-i", str(lab.key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


def _ssh_ok(lab, node):
    _, addr, port = node
    r = subprocess.run(ssh_base(lab) + ["-p", str(port), f"kblab@{addr}", "true"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return r.returncode == 0


# ---------------------------------------------------------------- per-tool files


def prepare(lab, work, wl, variant, args):
    """Writes what `variant` needs for workload `wl` into `work`; returns (argv, env, checker, marker)."""
    tasks, command, become = WORKLOADS[wl]
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    n = lab.n
    marker = None
    if variant.startswith("kubeboot"):
        binary = args.baseline if variant == BASELINE else args.kubeboot
        pb = work / "playbooks"
        pb.mkdir(exist_ok=True)
        lines = [f"name: {wl.lower()}", "hosts: all", f"become: {'true' if become else 'false'}", "tasks:"]
        for i in range(tasks):
            lines += [f"  - name: t{i + 1}", f"    run: {json.dumps(command)}"]
        (pb / f"00-{wl.lower()}.yaml").write_text("\n".join(lines) + "\n")
        inventory = lab.dir / "inventory.toml"
        setting = ("persistent_shell = false" if "no persistent" in variant
                   else "node_helper = false" if "no node helper" in variant else None)
        if setting:
            # Inventory settings (older kubeboot read the environment switch KUBEBOOT_SSH_PERSISTENT_SHELL=0,
            # and before the node helper there was nothing to turn off).
            text = inventory.read_text()
            if "\n[ssh]\n" not in "\n" + text:
                sys.exit(f"{inventory} has no [ssh] table to put {setting} in")
            inventory = work / "inventory.toml"
            inventory.write_text(text.replace("[ssh]\n", f"[ssh]\n{setting}\n", 1))
        state = work / "state"  # fresh per run: run() removes it first
        argv = [binary, "-i", str(inventory), "-p", str(pb), "--state-dir", str(state),
                "apply", "--yes", "--output", "json", "--forks", str(n)]
        return argv, env, check_kubeboot(n, tasks), state
    if variant.startswith("floor"):
        script = work / "floor.sh"
        script.write_text(floor_script(lab, wl, variant == FLOOR, work))
        return ["bash", str(script)], env, check_floor(n, tasks, wl), None
    if variant.startswith("ansible"):
        module = "raw" if " raw " in variant else "command"
        strategy = "free" if variant.endswith("free") else "linear"
        inv = work / "hosts.ini"
        inv.write_text("[lab]\n" + "".join(
            f"{name} ansible_host={addr} ansible_port={port}\n" for name, addr, port in lab.nodes) +
            f"[lab:vars]\nansible_user=kblab\nansible_ssh_private_key_file={lab.key}\n"
            "ansible_python_interpreter=/usr/bin/python3\n")
        play = [f"- name: {wl}", "  hosts: all", "  gather_facts: false", f"  become: {str(become).lower()}",
                "  tasks:"]
        for i in range(tasks):
            play += [f"    - name: t{i + 1}", f"      {module}: {json.dumps(command)}"]
        if module == "command":
            # `command` runs no shell; W2's `;` needs one, as any real task would ask for the shell module.
            play = [p.replace(f"command: {json.dumps(command)}", f"shell: {json.dumps(command)}")
                    if ";" in command else p for p in play]
        (work / "play.yml").write_text("\n".join(play) + "\n")
        cp_dir = work / "cp"
        (work / "ansible.cfg").write_text(
            "[defaults]\n"
            f"inventory = {inv}\nforks = {n}\ngathering = explicit\nstrategy = {strategy}\n"
            "host_key_checking = True\nretry_files_enabled = False\ndeprecation_warnings = False\n"
            f"local_tmp = {work}/ansible-tmp\n"
            "[ssh_connection]\npipelining = True\n"
            f"control_path_dir = {cp_dir}\n"
            f"ssh_args = -F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile={lab.known_hosts} "
            "-o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=60s\n")
        env["ANSIBLE_CONFIG"] = str(work / "ansible.cfg")
        env["ANSIBLE_HOME"] = str(work / "ansible-home")
        env["ANSIBLE_NOCOLOR"] = "1"
        argv = [str(args.venv / "bin" / "ansible-playbook"), str(work / "play.yml")]
        if become:
            argv += ["--become-password-file", str(lab.password_file)]
        return argv, env, check_ansible(n), str(cp_dir)
    if variant.startswith("pyinfra"):
        hosts = ",\n".join(
            f"    ({name!r}, {{'ssh_hostname': {addr!r}, 'ssh_port': {port}}})" for name, addr, port in lab.nodes)
        (work / "inventory.py").write_text(f"lab = [\n{hosts},\n]\n")
        (work / "group_data").mkdir(exist_ok=True)
        (work / "group_data" / "all.py").write_text(
            f"ssh_user = 'kblab'\nssh_key = {str(lab.key)!r}\n"
            f"ssh_known_hosts_file = {str(lab.known_hosts)!r}\nssh_strict_host_key_checking = 'yes'\n"
            "ssh_allow_agent = False\nssh_look_for_keys = False\n")
        extra = ""
        if become:
            extra = ", _sudo=True, _sudo_password=PASSWORD"
        (work / "deploy.py").write_text(
            "from pyinfra.operations import server\n"
            f"PASSWORD = open({str(lab.password_file)!r}).read().strip()\n"
            f"for i in range({tasks}):\n"
            f"    server.shell(name=f't{{i + 1}}', commands=[{command!r}]{extra})\n")
        argv = [str(args.venv / "bin" / "pyinfra"), "-y", "--parallel", str(n)]
        if variant.endswith("--no-wait"):
            argv.append("--no-wait")
        argv += ["inventory.py", "deploy.py"]
        return argv, env, check_exit_only, None
    raise ValueError(variant)


def floor_script(lab, wl, single_shell, work):
    """A bash script that does the workload with plain OpenSSH on every host at once."""
    tasks, command, become = WORKLOADS[wl]
    ssh = " ".join(_q(a) for a in ssh_base(lab))
    pw = _q(str(lab.password_file))
    out = ["set -u", f"SSH=({ssh})", f"OUT={_q(str(work))}/out", 'mkdir -p "$OUT"', "fail=0"]
    if single_shell:
        body = "\n".join([command] * tasks) + "\n"
        (work / "remote.sh").write_text(body)
        remote = "sudo -k -S -p '' sh -s" if become else "sh -s"
        # The sudo password is the first stdin line (never on a command line); the script follows.
        feed = f"cat {pw} {_q(str(work / 'remote.sh'))}" if become else f"cat {_q(str(work / 'remote.sh'))}"
        out.append("host() {  # name addr port")
        out.append(f"  {feed} | \"${{SSH[@]}}\" -p \"$3\" \"kblab@$2\" {_q(remote)} >\"$OUT/$1\" 2>&1")
        out.append("}")
    else:
        one = f"sudo -k -S -p '' sh -c {_q(command)}" if become else command
        stdin = pw if become else "/dev/null"
        out.append("host() {  # name addr port")
        out.append('  local cp="$OUT/$1.sock" i rc=0')
        out.append('  "${SSH[@]}" -M -N -S "$cp" -o ControlPersist=no -p "$3" "kblab@$2" </dev/null &')
        out.append("  local master=$!")
        out.append('  for i in $(seq 1 200); do "${SSH[@]}" -S "$cp" -O check -p "$3" "kblab@$2" 2>/dev/null && break;'
                   ' sleep 0.05; done')
        out.append(f"  for i in $(seq 1 {tasks}); do")
        out.append(f"    \"${{SSH[@]}}\" -S \"$cp\" -p \"$3\" \"kblab@$2\" {_q(one)} <{stdin} >>\"$OUT/$1\" 2>&1 || rc=1")
        out.append("  done")
        out.append('  "${SSH[@]}" -S "$cp" -O exit -p "$3" "kblab@$2" 2>/dev/null')
        out.append('  wait "$master"')
        out.append("  return $rc")
        out.append("}")
    out.append("pids=()")
    for name, addr, port in lab.nodes:
        out.append(f"host {name} {addr} {port} & pids+=($!)")
    out.append('for p in "${pids[@]}"; do wait "$p" || fail=1; done')
    out.append("exit $fail")
    return "\n".join(out) + "\n"


def _q(s):
    return "'" + s.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------- checks: did the tool really do the work?


def check_exit_only(work, stdout_path):
    """pyinfra exits non-zero when any operation fails on any host; that is the check."""
    return None


def check_kubeboot(n, tasks):
    def check(work, stdout_path):
        finished = None
        ok = 0
        for line in stdout_path.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "task_finished" and ev.get("status") in ("ok", "changed"):
                ok += 1
            if ev.get("event") == "run_finished":
                finished = ev
        if finished is None:
            return "no run_finished event"
        if ok != n * tasks:
            return f"{ok} tasks finished ok, expected {n * tasks}"
        return None
    return check


def check_floor(n, tasks, wl):
    def check(work, stdout_path):
        files = list((work / "out").glob("node-*"))
        files = [f for f in files if not f.name.endswith(".sock")]
        if len(files) != n:
            return f"output of {len(files)} hosts, expected {n}"
        if wl == "W2":
            for f in files:
                lines = f.read_text().count("line\n")
                if lines != tasks:
                    return f"{f.name}: {lines} lines, expected {tasks}"
        return None
    return check


def check_ansible(n):
    def check(work, stdout_path):
        text = stdout_path.read_text(errors="replace")
        recap = re.findall(r"(?m)^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", text)
        if len(recap) != n:
            return f"recap for {len(recap)} hosts, expected {n}"
        bad = [h for h, _, _, u, f in recap if u != "0" or f != "0"]
        return f"failed/unreachable on {bad[:3]}" if bad else None
    return check


# ---------------------------------------------------------------- measuring


def proc_table():
    """pid -> (ppid, RSS bytes, CPU seconds) of every process now."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = (int(rest[1]), int(rest[21]) * PAGE, (int(rest[11]) + int(rest[12])) / CLK_TCK)
    return table


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def detached(marker):
    """Processes that left the run's tree but belong to it (ssh ControlPersist masters): their cmdline names `marker`."""
    if not marker:
        return []
    me = os.getpid()
    return [p for p in proc_table() if p != me and marker in cmdline(p)]


class Sampler(threading.Thread):
    """Samples the whole tree's RSS (plus detached helpers) every `interval` seconds."""

    def __init__(self, root, marker, interval):
        super().__init__(daemon=True)
        self.root, self.marker, self.interval = root, marker, interval
        self.peak = 0
        self.stop_event = threading.Event()
        self.extra_pids = set()

    def run(self):
        while not self.stop_event.wait(self.interval):
            table = proc_table()
            children = {}
            for pid, (ppid, _, _) in table.items():
                children.setdefault(ppid, []).append(pid)
            tree, todo = set(), [self.root]
            while todo:
                p = todo.pop()
                if p in tree:
                    continue
                tree.add(p)
                todo.extend(children.get(p, []))
            if self.marker:
                # Cheap enough: only ssh processes are looked at for the marker.
                for pid in table:
                    if pid not in tree and pid in self.extra_pids:
                        tree.add(pid)
                for pid in table:
                    if pid not in tree and pid not in self.extra_pids:
                        try:
                            with open(f"/proc/{pid}/comm") as f:
                                if f.read().strip() != "ssh":
                                    continue
                        except OSError:
                            continue
                        if self.marker in cmdline(pid):
                            self.extra_pids.add(pid)
                            tree.add(pid)
            rss = sum(table[p][1] for p in tree if p in table)
            self.peak = max(self.peak, rss)


def run_one(lab, wl, variant, args, run_index):
    work = Path(args.workdir) / f"n{lab.n}-{lab.profile}" / wl / re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-") / f"r{run_index}"
    if work.exists():
        shutil.rmtree(work)
    argv, env, check, marker = prepare(lab, work, wl, variant, args)
    if variant.startswith("kubeboot"):
        marker = None  # the state dir is not a process marker
    stdout_path, stderr_path = work / "stdout", work / "stderr"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        LIVE.add(proc.pid)
        sampler = Sampler(proc.pid, marker, args.sample_interval)
        sampler.start()
        timer = threading.Timer(args.run_timeout, lambda: _kill_group(proc.pid))
        timer.daemon = True  # an interrupted benchmark must not wait for it
        timer.start()
        server_before = lab.server_cpu()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        timer.cancel()
        LIVE.discard(proc.pid)
        sampler.stop_event.set()
        sampler.join()
    cpu = usage.ru_utime + usage.ru_stime
    rss_max = usage.ru_maxrss * 1024
    # ssh ControlPersist masters detached from the tree: add their CPU, then end them (by PID).
    helpers = detached(marker)
    if helpers:
        table = proc_table()
        for pid in helpers:
            if pid in table:
                cpu += table[pid][2]
                rss_max = max(rss_max, table[pid][1])
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    _kill_group(proc.pid)  # anything left in its session
    # The nodes' sshd count a session's CPU once they have reaped it: give them a moment.
    time.sleep(0.3)
    server = lab.server_cpu() - server_before
    code = os.waitstatus_to_exitcode(status)
    problem = f"exit code {code}" if code != 0 else check(work, stdout_path)
    if problem:
        tail = stderr_path.read_text(errors="replace")[-1500:] or stdout_path.read_text(errors="replace")[-1500:]
        problem = f"{problem}; output ends with:\n{tail}"
    return {"load1": float(open("/proc/loadavg").read().split()[0]), "n": lab.n, "profile": lab.profile,
            "workload": wl, "variant": variant, "run": run_index, "wall": wall, "cpu": cpu,
            "server_cpu": server, "rss_max": rss_max, "rss_tree": max(sampler.peak, rss_max), "ok": problem is None, "problem": problem}


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


# ---------------------------------------------------------------- report


def versions(args, families):
    v = {}
    try:
        v["kubeboot"] = subprocess.run([args.kubeboot, "--version"], capture_output=True, text=True,
                                       timeout=10).stdout.strip()
    except OSError:
        v["kubeboot"] = "?"
    git = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    v["kubeboot"] += f" (commit {git.stdout.strip() or '?'})"
    if getattr(args, "baseline", None):
        try:
            base = subprocess.run([args.baseline, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            base = "?"
        v["kubeboot (baseline binary)"] = f"{base} ({args.baseline})"
    v["OpenSSH"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    if args.venv and ("ansible" in families or "pyinfra" in families):
        pip = subprocess.run([str(args.venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                             capture_output=True, text=True)
        pkgs = {p["name"].lower(): p["version"] for p in json.loads(pip.stdout or "[]")}
        v["ansible-core"] = pkgs.get("ansible-core", "?")
        v["pyinfra"] = pkgs.get("pyinfra", "?")
        v["python (peers)"] = subprocess.run([str(args.venv / "bin" / "python"), "-V"], capture_output=True,
                                             text=True).stdout.strip()
    return v


def machine():
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {mem_kib / 1048576:.1f} GiB memory, Linux {platform.release()}"


def med(xs):
    xs = [x for x in xs if x == x]  # results of older versions lack some fields (nan)
    return statistics.median(xs) if xs else float("nan")


def report(results, args, families, notes):
    lines = []
    lines.append(f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}  ")
    lines.append(f"Machine: {machine()}  ")
    for k, v in versions(args, families).items():
        lines.append(f"{k}: {v}  ")
    lines.append(f"Load average when reported: {' '.join(open('/proc/loadavg').read().split()[:3])}  ")
    runs = "see the (runs) column" if args.from_json else str(args.runs)
    lines.append(f"Runs per cell: {runs} (median shown; variants interleaved, order rotated each run)  ")
    lines.append("")
    groups = {}
    for r in results:
        groups.setdefault((r["workload"], r["n"]), []).append(r)
    for (wl, n) in sorted(groups, key=lambda k: (k[0], k[1])):
        tasks = n * WORKLOADS[wl][0]
        lines.append(f"### {wl} — {WORKLOAD_TEXT[wl]}, N = {n} hosts ({tasks} tasks)")
        lines.append("")
        lines.append("| tool | sshd | wall s (median) | min–max (runs) | client CPU s | peak RSS largest process MiB | "
                     "peak RSS whole tree MiB | node-side CPU s | node CPU ms / task | wall ÷ floor | "
                     "node CPU ÷ floor | wall ÷ kubeboot |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        profiles = sorted({r.get("profile", "lab") for r in groups[(wl, n)]}, key=list(PROFILES).index)
        for profile in profiles:
            rows = [r for r in groups[(wl, n)] if r.get("profile", "lab") == profile]
            _report_rows(lines, rows, profile, tasks)
        lines.append("")
    if notes:
        lines.append("Notes from this run:")
        lines.append("")
        lines += [f"- {n}" for n in notes]
        lines.append("")
    return "\n".join(lines)


def _report_rows(lines, rows, profile, tasks):
    """One table row per variant measured on labs of `profile`; ratios are to that profile's floor and kubeboot."""
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    ok = {v: [r for r in rs if r["ok"]] for v, rs in by.items()}
    floor = med([r["wall"] for r in ok.get(FLOOR, [])])
    floor_node = med([r.get("server_cpu", float("nan")) for r in ok.get(FLOOR, [])])
    kb = med([r["wall"] for r in ok.get("kubeboot", [])])
    for variant, _, _ in VARIANTS:
        if variant not in by:
            continue
        rs = ok[variant]
        failed = len(by[variant]) - len(rs)
        if not rs:
            lines.append(f"| {variant} | {profile} | FAILED ({failed}/{len(by[variant])}) | | | | | | | | | |")
            continue
        w = [r["wall"] for r in rs]
        mw = med(w)
        node = med([r.get("server_cpu", float("nan")) for r in rs])
        fail_note = f" ({failed} failed)" if failed else ""
        ratio_floor = f"{mw / floor:.2f}×" if floor == floor and floor > 0 else "–"
        node_floor = f"{node / floor_node:.1f}×" if floor_node == floor_node and floor_node > 0 and node == node else "–"
        faster = f"{mw / kb:.1f}×" if kb == kb and kb > 0 and not variant.startswith("kubeboot") else "–"
        lines.append(
            f"| {variant}{fail_note} | {profile} | {mw:.2f} | {min(w):.2f}–{max(w):.2f} ({len(w)}) | "
            f"{med([r['cpu'] for r in rs]):.2f} | "
            f"{med([r['rss_max'] for r in rs]) / 1048576:.0f} | {med([r['rss_tree'] for r in rs]) / 1048576:.0f} | "
            f"{node:.2f} | {node * 1000 / tasks:.2f} | {ratio_floor} | {node_floor} | {faster} |")


def write_readme(table):
    readme = HERE / "README.md"
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    text = readme.read_text() if readme.exists() else f"# SSH orchestration benchmark\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    pre, rest = text.split(begin, 1)
    post = rest.split(end, 1)[1] if end in rest else ""
    readme.write_text(f"{pre}{begin}\n{table}\n{end}{post}")


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeboot", required=True)
    ap.add_argument("--baseline", default=None,
                    help="another kubeboot binary run beside it as 'kubeboot (baseline binary)' (before/after a change)")
    ap.add_argument("--profiles", default="lab", help="sshd profiles, comma list of: " + ", ".join(PROFILES))
    ap.add_argument("--venv", type=Path, default=None)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--sizes", default="4,32,128")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--tools", default="kubeboot,floor,ansible,pyinfra")
    ap.add_argument("--variants", default="", help="semicolon list of exact variant names to keep (default: all)")
    ap.add_argument("--run-timeout", type=float, default=RUN_TIMEOUT, help="kill a run after this many seconds")
    ap.add_argument("--lab-base", type=int, default=100, help="labs use 127.BASE.0.1, 127.BASE+1.0.1, ...")
    ap.add_argument("--max-startups", default="200:30:400")
    ap.add_argument("--sample-interval", type=float, default=0.2)
    ap.add_argument("--json", type=Path, help="also write raw results here")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--from-json", type=Path, nargs="*", default=[],
                    help="only report: merge the results of earlier --json files (no lab is started)")
    args = ap.parse_args()
    # Runs start in their own work folders, so a relative path given here must not stay relative.
    args.kubeboot = str(Path(args.kubeboot).resolve())
    if args.baseline:
        args.baseline = str(Path(args.baseline).resolve())
    if args.from_json:
        results = [r for f in args.from_json for r in json.loads(f.read_text())]
        args.runs = max((r["run"] + 1 for r in results), default=0)
        table = report(results, args, {"kubeboot", "ansible", "pyinfra", "floor"}, [])
        print(table)
        if args.write_readme:
            write_readme(table)
        return 0

    families = set(args.tools.split(","))
    wanted = set(v.strip() for v in args.variants.split(";") if v.strip())
    variants = [v for v, fam, _ in VARIANTS if fam in families and (not wanted or v in wanted)
                and (v != BASELINE or args.baseline)]
    profiles = args.profiles.split(",")
    for p in profiles:
        if p not in PROFILES:
            ap.error(f"unknown sshd profile {p!r}; known: {', '.join(PROFILES)}")
    workloads = args.workloads.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    Path(args.workdir).mkdir(parents=True, exist_ok=True)

    labs = []

    def teardown(*_):
        for pid in list(LIVE):
            _kill_group(pid)
        for lab in labs:
            try:
                lab.stop()
            except Exception as e:  # teardown must go on for the other labs
                log(f"lab down failed for {lab.dir}: {e}")
    signal.signal(signal.SIGTERM, lambda *_: (teardown(), sys.exit(143)))
    signal.signal(signal.SIGINT, lambda *_: (teardown(), sys.exit(130)))

    results, notes, failures = [], [], []
    try:
        for index, (n, profile) in enumerate((n, p) for n in sizes for p in profiles):
            lab = Lab(args, n, index, profile)
            labs.append(lab)
            lab.start(args.max_startups)
            for run in range(args.runs):
                for wl in workloads:
                    # Interleave: rotate the order every run so no tool always goes first (cold) or last.
                    shift = (run + workloads.index(wl)) % len(variants)
                    order = variants[shift:] + variants[:shift]
                    for variant in order:
                        r = run_one(lab, wl, variant, args, run)
                        results.append(r)
                        status = "ok" if r["ok"] else "FAILED"
                        log(f"  N={n:<3} {profile:<4} {wl} run {run + 1}/{args.runs} {variant:<40} {r['wall']:7.2f} s wall "
                            f"{r['cpu']:6.2f} s cpu {r['server_cpu']:6.2f} s node cpu {r['rss_max'] / 1048576:5.0f} MiB  {status}")
                        if not r["ok"]:
                            failures.append(r)
                            log(r["problem"])
            hits = lab.throttle_lines()
            if hits:
                notes.append(f"N={n} ({profile}): sshd logged {len(hits)} throttling/refusal lines, e.g. `{hits[0]}`")
            else:
                notes.append(f"N={n} ({profile}): no sshd throttling or refused connections logged "
                             f"(MaxStartups {args.max_startups}, MaxSessions 64 on every node)")
            lab.stop()
    finally:
        teardown()
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    if not args.no_report:
        table = report(results, args, families, notes)
        print(table)
        if args.write_readme:
            write_readme(table)
    if failures:
        log(f"{len(failures)} run(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
