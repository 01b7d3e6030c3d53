#!/usr/bin/python3
"""Stand-in for kube-vip v1.0.4 (ARP mode, control-plane VIP) inside the VM lab's guests, run by the kubelet
stand-in for the static pod the shipped stage 40/45 writes (assets/kube-vip/kube-vip.yaml).

Real: the manifest it reads is the one kubeboot rendered and installed; the VIP is really added to the
interface the manifest names (`ip addr add VIP/32 dev IF`: NET_ADMIN), the guest's own kernel answers ARP
and ping for it on the lab's private switch, and the stand-in sends gratuitous ARP from it (a raw packet
socket: NET_RAW) when it takes the VIP and every vip_arpRate ms (default 3000) while it holds it, as
kube-vip's ARP manager does, so the other nodes' ARP caches move with it.

Checked against kube-vip v1.0.4 before anything runs (cmd/kube-vip.go, pkg/kubevip/config_envvar.go,
config_environment.go, config_generator.go, pkg/manager/manager.go): the `manager` command; every env name
is one kube-vip reads; vip_arp, cp_enable and vip_leaderelection true; address an IPv4 address; port a
port; vip_nodename from spec.nodeName; the lease timings as client-go's leader election requires them
(leaseduration > renewdeadline > 1.2 x retryperiod > 0); an empty vip_interface means the default route's
interface (the guests have no default route, so the inventory must name one); NET_ADMIN and NET_RAW added;
hostNetwork; the kubeconfig mounted at /etc/kubernetes/admin.conf from a file that exists; with cp_enable
and no cp_detect the API server is reached as `kubernetes:<port>`, so the pod needs that host alias.

Stood in: the leader election. kube-vip takes a Lease (vip_leasename) in the API server; the API servers of
the VM lab share no etcd, so the stand-ins elect among themselves over the switch instead: every
vip_retryperiod each one broadcasts who it is and whether it holds the lease (UDP on vip_interface); a
holder keeps it while it is heard; when no holder has been heard for vip_leaseduration the live candidate
with the lowest address takes it, and of two holders the higher address lets go. Like kube-vip, a
candidate campaigns only while its API server (kubernetes:<port>) answers /readyz.
"""

import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

# Every environment variable kube-vip v1.0.4 reads (pkg/kubevip/config_envvar.go).
KNOWN_ENV = set("""
vip_arp vip_arpRate vip_preserve_on_leadership_loss vip_leaderelection vip_leasename vip_leaseduration
vip_renewdeadline vip_retryperiod vip_leaseannotations vip_loglevel vip_interface vip_interfaceloglobal
vip_servicesinterface vip_subnet egress_podcidr egress_servicecidr egress_withnftables vip_address address port
annotation vip_ddns vip_nodename vip_singlenode vip_startleader bgp_enable bgp_routerid bgp_routerinterface bgp_as
bgp_peeraddress bgp_peers bgp_peeras bgp_peerpass bgp_multihop bgp_sourceif bgp_sourceip bgp_hold_time
bgp_keepalive_interval zebra_enable zebra_url zebra_version zebra_software_name mpbgp_nexthop mpbgp_ipv4
mpbgp_ipv6 vip_wireguard vip_routingtable vip_routingtableid vip_routingtabletype vip_routingprotocol
vip_cleanroutingtable cp_namespace cp_enable cp_detect kubernetes_addr svc_enable svc_namespace svc_election
svc_leasename lb_class_only lb_class_name lb_class_legacy_handling lb_enable lb_port lb_fwdmethod
enable_service_security enable_node_labeling prometheus_server vip_configmap k8s_config_file dns_mode dhcp_mode
dhcp_backoff_attempts disable_service_updates enable_endpoints mirror_dest_interface iptables_backend
backend_health_check_interval health_check_port enable_upnp egress_clean config_file
""".split())
ELECTION_PORT = 47946


def log(msg):
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


def fail(msg):
    log("kube-vip (stand-in): refused: " + msg)
    sys.exit(1)


def truthy(name):
    v = os.environ.get(name, "")
    if v.lower() not in ("true", "1", "false", "0", ""):
        fail(f"{name}={v!r} is not a bool (strconv.ParseBool)")
    return v.lower() in ("true", "1")


def default_route_interface():
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return fields[0]
    return None


def check(pod, argv):
    """What kube-vip v1.0.4 and the kubelet would refuse, or kube-vip would silently ignore."""
    spec = pod["spec"]
    container = spec["containers"][0]
    if argv != ["manager"]:
        fail(f"args {argv} (the static pod runs `kube-vip manager`)")
    names = [e["name"] for e in container.get("env") or []]
    unknown = [n for n in names if n not in KNOWN_ENV]
    if unknown:
        fail(f"kube-vip v1.0.4 reads no env {unknown}")
    if not truthy("vip_arp"):
        fail("vip_arp is not true: the stand-in (and kubeboot) use ARP mode only")
    if not truthy("cp_enable"):
        fail("cp_enable is not true: nothing is enabled for the control plane")
    if not truthy("vip_leaderelection"):
        fail("vip_leaderelection is not true: several control planes would all hold the VIP")
    try:
        vip = ipaddress.IPv4Address(os.environ.get("address") or os.environ.get("vip_address", ""))
    except ValueError:
        fail(f"address {os.environ.get('address')!r} is not an IPv4 address")
    port = os.environ.get("port", "6443")
    if not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"port {port!r}")
    node = os.environ.get("vip_nodename", "")
    env = {e["name"]: e for e in container.get("env") or []}
    if ((env.get("vip_nodename", {}).get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") != "spec.nodeName" or not node:
        fail("vip_nodename does not come from spec.nodeName")
    timings = {}
    for name in ("vip_leaseduration", "vip_renewdeadline", "vip_retryperiod"):
        v = os.environ.get(name, "")
        if not v.isdigit():
            fail(f"{name}={v!r} is not a whole number of seconds")
        timings[name] = int(v)
    lease, renew, retry = timings["vip_leaseduration"], timings["vip_renewdeadline"], timings["vip_retryperiod"]
    if not (retry > 0 and lease > renew and renew > 1.2 * retry):
        fail(f"lease timings {lease}/{renew}/{retry}: client-go needs leaseDuration > renewDeadline > 1.2 x retryPeriod > 0")
    interface = os.environ.get("vip_interface", "")
    if not interface:
        interface = default_route_interface()
        if not interface:
            fail("vip_interface is empty and there is no default route to detect it from (cmd/kube-vip.go)")
    if not os.path.exists(f"/sys/class/net/{interface}"):
        fail(f"vip_interface {interface}: no such interface")
    caps = set(((container.get("securityContext") or {}).get("capabilities") or {}).get("add") or [])
    if not {"NET_ADMIN", "NET_RAW"} <= caps:
        fail(f"capabilities.add {sorted(caps)} lacks NET_ADMIN/NET_RAW (the VIP and ARP need both)")
    if spec.get("hostNetwork") is not True:
        fail("hostNetwork is not true: the VIP would go on the pod's own network")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    if "/etc/kubernetes/admin.conf" not in mounts:
        fail("no kubeconfig mounted at /etc/kubernetes/admin.conf (pkg/manager/manager.go reads it there)")
    volume = next((v for v in spec.get("volumes") or [] if v.get("name") == mounts["/etc/kubernetes/admin.conf"]), None)
    host_path = ((volume or {}).get("hostPath") or {}).get("path")
    if not host_path or not os.path.isfile(host_path):
        fail(f"the kubeconfig volume's hostPath {host_path!r} is not a file on this node")
    api_host = "kubernetes"
    if not truthy("cp_detect") and not os.environ.get("kubernetes_addr"):
        aliases = {h: a["ip"] for a in spec.get("hostAliases") or [] for h in a.get("hostnames") or []}
        if "kubernetes" not in aliases:
            fail("cp_enable without cp_detect reaches the API server as kubernetes:<port>: no such hostAlias")
        api_host = aliases["kubernetes"]
    return {"vip": str(vip), "interface": interface, "node": node, "lease": lease, "retry": retry,
            "lease_name": os.environ.get("vip_leasename", "plndr-cp-lock"), "api": f"http://{api_host}:{port}",
            "arp_rate": int(os.environ.get("vip_arpRate") or 3000) / 1000.0}


def own_address(interface):
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", interface], capture_output=True, text=True).stdout
    for line in out.splitlines():
        cidr = line.split()[3]
        if not cidr.endswith("/32"):
            return cidr.split("/")[0]
    return None


def api_ready(url):
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def gratuitous_arp(interface, vip):
    """One gratuitous ARP request (sender = target = the VIP, broadcast) from the interface's MAC."""
    mac = bytes.fromhex(open(f"/sys/class/net/{interface}/address").read().strip().replace(":", ""))
    ip = socket.inet_aton(vip)
    frame = b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((interface, 0))
        s.send(frame)


def has_vip(cfg):
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", cfg["interface"]], capture_output=True, text=True).stdout
    return f" {cfg['vip']}/32 " in out


def take(cfg):
    if not has_vip(cfg):
        subprocess.run(["ip", "addr", "add", cfg["vip"] + "/32", "dev", cfg["interface"]], check=True)
    log(f"leader: {cfg['vip']}/32 added to {cfg['interface']}")
    gratuitous_arp(cfg["interface"], cfg["vip"])


def release(cfg):
    if has_vip(cfg):
        subprocess.run(["ip", "addr", "del", cfg["vip"] + "/32", "dev", cfg["interface"]], check=False)
        log(f"not leader: {cfg['vip']}/32 removed from {cfg['interface']}")


def main():
    pod = json.loads(os.environ["KUBEBOOT_STANDIN_POD"])
    cfg = check(pod, sys.argv[1:])
    me = own_address(cfg["interface"])
    if not me:
        fail(f"{cfg['interface']} has no address of its own")
    log(f"kube-vip (stand-in for v1.0.4): manifest accepted; node {cfg['node']} ({me}), vip {cfg['vip']} on "
        f"{cfg['interface']}, lease {cfg['lease_name']} {cfg['lease']}s, API at {cfg['api']}")
    lease_key = f"{cfg['lease_name']}/{cfg['vip']}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cfg["interface"].encode())
    sock.bind(("", ELECTION_PORT))
    sock.settimeout(0.2)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    peers = {}  # address -> (last heard, holding, campaigning)
    holding = False
    started = time.time()
    # Like client-go's holderIdentity: a restarted kube-vip on the node that held the lease (a changed manifest)
    # takes it back after one retry period instead of a whole lease duration.
    record = f"/run/kubeboot-standins/kube-vip-{cfg['vip']}.held"
    try:
        wait = cfg["retry"] * 1.5 if time.time() - os.path.getmtime(record) < cfg["lease"] else cfg["lease"]
    except OSError:
        wait = cfg["lease"]
    last_beat = last_arp = 0.0
    ready = False
    addr_key = lambda a: ipaddress.IPv4Address(a)
    while not stopping:
        now = time.time()
        if now - last_beat >= cfg["retry"]:
            ready = api_ready(cfg["api"])
            msg = json.dumps({"lease": lease_key, "node": cfg["node"], "address": me, "holding": holding, "campaigning": ready})
            try:
                sock.sendto(msg.encode(), ("255.255.255.255", ELECTION_PORT))
            except OSError as e:
                log(f"heartbeat not sent: {e}")
            last_beat = now
        try:
            data, _ = sock.recvfrom(4096)
            m = json.loads(data)
            if m.get("lease") == lease_key and m.get("address") != me:
                peers[m["address"]] = (time.time(), bool(m.get("holding")), bool(m.get("campaigning")))
        except (socket.timeout, ValueError):
            pass
        now = time.time()
        live = {a: p for a, p in peers.items() if now - p[0] < cfg["lease"]}
        holders = [a for a, p in live.items() if p[1]]
        if holding:
            if not ready or any(addr_key(a) < addr_key(me) for a in holders):
                holding = False
                release(cfg)
            elif now - last_arp >= cfg["arp_rate"]:
                gratuitous_arp(cfg["interface"], cfg["vip"])
                last_arp = now
        elif ready and not holders and now - started >= wait:
            candidates = [a for a, p in live.items() if p[2]] + [me]
            if min(candidates, key=addr_key) == me:
                holding = True
                take(cfg)
                last_arp = time.time()
    if holding:
        os.makedirs(os.path.dirname(record), exist_ok=True)
        open(record, "w").close()
        release(cfg)


if __name__ == "__main__":
    main()
