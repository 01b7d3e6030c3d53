//! A lab of real Linux VMs (`kubeboot lab up --vm`): Debian 12 guests under qemu, each with its own kernel,
//! systemd and sshd, a login user with password sudo, and no outbound network at all.
//!
//! - SSH reaches a guest only through qemu's user-mode NIC (`restrict=on`: no route out, no DNS, not even the
//!   host's own services), forwarded from one loopback address and port of the host. The lab claims that
//!   loopback range through [`crate::net`] and hands the claim to its switch, so the range stays held until
//!   `down` and two VM labs never share one.
//! - The guests reach each other on a second NIC plugged into a `vde_switch`, a userspace switch whose traffic
//!   never leaves the qemu processes (nothing changes in the host's network).
//! - Every guest boots the one cached base image (see `image`) through its own copy-on-write overlay, with
//!   direct kernel boot; its host key, hostname, addresses and login password come from its own seed disk.
//! - `down` stops exactly the processes `up` started, by the PIDs it recorded, and deletes the overlays.
//!
//! Everything kept between labs (the image, the .debs, the guests' package repository) lives in one cache
//! folder, `/var/cache/kubeboot-lab` unless `KUBEBOOT_LAB_CACHE` says otherwise.

mod host;
mod image;
mod qmp;
mod releases;
pub mod repo;

pub use host::Accel;

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use toml::{Table, Value};

use super::{LabError, io, like, set_mode, write_private};
use host::HostTools;

/// The login user of every guest (password sudo through Debian's `%sudo` rule).
pub const GUEST_USER: &str = "kblab";
/// The guests' addresses on the lab switch: guest i is `10.77.0.(11 + i)/24`.
const SWITCH_NET: [u8; 3] = [10, 77, 0];
const SWITCH_FIRST: u8 = 11;
/// The guests' NIC on the lab switch (the second virtio NIC: PCI slot 4, systemd's predictable name). kube-vip
/// announces a cluster's VIP there, so the lab inventory names it as `vip_interface`.
pub const SWITCH_INTERFACE: &str = "ens4";
/// A multi-node cluster's VIP on the lab switch: cluster i (in model order) gets `10.77.0.(220 + i)`.
const SWITCH_VIP_FIRST: u8 = 220;
/// Where the guest sits on its user-mode NIC (qemu's default network); static, no DHCP wait, no gateway.
const USER_NET_GUEST: &str = "10.0.2.15/24";
/// How long the guests may take until every sshd answers (TCG, 4 guests on 2 cores: about 75 s measured).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// RHEL 8/9's sudoers `secure_path` (no /usr/local/bin), which the RHEL-like guest keeps.
pub const RHEL_SECURE_PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";
/// A cluster's LoadBalancer IP on the lab switch: cluster i (in model order) gets `10.77.0.(200 + i)`, which the
/// Cilium stand-in announces there as L2 announcements would on the LAN.
const SWITCH_LB_FIRST: u8 = 200;
/// The site's S3 service on the lab switch: the stand-in (`standins/vm/s3.py`) on the lab's last VM answers
/// there, and every guest's /etc/hosts gives the model's `s3_host` this address.
const S3_STAND_IN: &str = "10.77.0.250";
/// The ingress names of each cluster the site's DNS would resolve to its LB IP (`<name>.<domain>`): Fluent Bit
/// sends to `opensearch.<central domain>`.
const INGRESS_NAMES: &[&str] = &["grafana", "prometheus", "alertmanager", "thanos", "opensearch"];
/// The range asked for when only one of `--first-address` / `--first-port` is given.
const DEFAULT_FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 1);
const DEFAULT_FIRST_PORT: u16 = 2222;
/// The file in a lab folder that marks it as a VM lab.
const MARKER: &str = "vm-lab.json";

/// What VM lab to start.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The lab's folder (keys, seed disks, overlays, logs, inventory).
    pub dir: PathBuf,
    /// How many VMs (ignored with `like`).
    pub nodes: usize,
    /// Model the inventory on this one: its node names, clusters, vars and secrets.
    pub like: Option<PathBuf>,
    /// Guest i's SSH is forwarded from `first_address + i`, port `first_port + i`. Unset: a free range from
    /// [`crate::net::claim`]; set (either), that range, which must not be held by another lab.
    pub first_address: Option<Ipv4Addr>,
    pub first_port: Option<u16>,
    /// These guests keep RHEL's sudo rules (see [`RHEL_SECURE_PATH`]).
    pub rhel_like: Vec<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The cache folder (image, .debs, package repository).
    pub cache: PathBuf,
    pub accel: Accel,
}

impl VmOptions {
    /// Four VMs of 1536 MiB and one vCPU in `dir`, the default cache, KVM only where it really works.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VmOptions {
            dir: dir.into(),
            nodes: 4,
            like: None,
            first_address: None,
            first_port: None,
            rhel_like: Vec::new(),
            memory_mib: 1536,
            cpus: 1,
            cache: default_cache(),
            accel: Accel::detect(),
        }
    }
}

/// The lab's cache folder.
pub fn default_cache() -> PathBuf {
    std::env::var_os("KUBEBOOT_LAB_CACHE").map_or_else(|| PathBuf::from("/var/cache/kubeboot-lab"), PathBuf::from)
}

/// One guest.
#[derive(Debug, Clone)]
pub struct VmNode {
    pub name: String,
    /// Where the host reaches its sshd (a loopback address and port forwarded by qemu).
    pub ssh: SocketAddr,
    /// Its own address on the lab switch (the inventory's `address`).
    pub address: Ipv4Addr,
    /// Keeps RHEL's sudo `secure_path`.
    pub rhel_like: bool,
}

/// A started VM lab.
#[derive(Debug, Clone)]
pub struct VmLab {
    pub dir: PathBuf,
    /// The generated `inventory.toml`.
    pub inventory: PathBuf,
    pub user: String,
    pub nodes: Vec<VmNode>,
    /// How long the image took (zero when it came from the cache) and the boot of all guests.
    pub image_time: Duration,
    pub boot_time: Duration,
}

impl VmLab {
    /// The guest called `name`.
    pub fn node(&self, name: &str) -> Option<&VmNode> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Is `dir` a VM lab's folder?
pub fn is_vm_lab(dir: &Path) -> bool {
    dir.join(MARKER).exists()
}

/// Builds (or reuses) the image, starts the switch and the guests, waits until every sshd answers and writes
/// the lab's inventory.
pub fn up(opts: &VmOptions) -> Result<VmLab, LabError> {
    let tools = HostTools::ensure(&opts.cache)?;
    let dir = opts.dir.clone();
    if running_pids(&dir).next().is_some() {
        return Err(LabError::AlreadyRunning(dir));
    }
    let model = on_the_switch(match &opts.like {
        Some(path) => like::read(path)?,
        None => plain_model(opts.nodes),
    });
    let names: Vec<String> = like::nodes(&model).into_iter().map(|n| n.name).collect();
    for asked in &opts.rhel_like {
        if !names.contains(asked) {
            return Err(LabError::UnknownNode {
                dir: dir.clone(),
                node: asked.clone(),
            });
        }
    }
    let net = match (opts.first_address, opts.first_port) {
        (None, None) => crate::net::claim(names.len())?,
        (address, port) => crate::net::claim_at(
            address.unwrap_or(DEFAULT_FIRST_ADDRESS),
            port.unwrap_or(DEFAULT_FIRST_PORT),
            names.len(),
        )?,
    };
    fs::create_dir_all(dir.join("nodes")).map_err(io(format!("cannot create {}", dir.display())))?;
    set_mode(&dir, 0o700)?;

    let started = Instant::now();
    let base = image::ensure(&tools, &opts.cache)?;
    let image_time = started.elapsed();
    let bundle = repo::ensure(&opts.cache)?;
    let releases = {
        let vars = model.get("vars");
        let version = |k: &str| vars.and_then(|v| v.get(k)).and_then(Value::as_str).map(str::to_string);
        match (version("kustomize_version"), version("helm_version")) {
            (Some(kustomize), Some(helm)) => {
                let _lock = lock_cache(&opts.cache)?;
                Some(releases::write(&bundle, &kustomize, &helm)?)
            }
            _ => None,
        }
    };

    let password = super::random_password();
    write_private(&dir.join("sudo_password"), format!("{password}\n").as_bytes())?;
    let hash = password_hash(&tools, &password)?;
    let key = dir.join("id_ed25519");
    if !key.exists() {
        keygen(&tools, &key, "kubeboot-vm-lab client")?;
    }
    let client_public =
        fs::read_to_string(key.with_extension("pub")).map_err(io("cannot read the lab's client key"))?;

    let nodes: Vec<VmNode> = names
        .iter()
        .enumerate()
        .map(|(i, name)| VmNode {
            name: name.clone(),
            ssh: SocketAddr::from((
                Ipv4Addr::from(u32::from(net.first_address) + i as u32),
                net.first_port + i as u16,
            )),
            address: Ipv4Addr::new(SWITCH_NET[0], SWITCH_NET[1], SWITCH_NET[2], SWITCH_FIRST + i as u8),
            rhel_like: opts.rhel_like.contains(name),
        })
        .collect();
    let marker = serde_json::json!({
        "nodes": nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        "cache": opts.cache,
    });
    fs::write(dir.join(MARKER), marker.to_string()).map_err(io("cannot write the lab's marker"))?;

    // The site's DNS would resolve its S3 endpoint and the clusters' ingress names; the lab's guests resolve
    // nothing, so their /etc/hosts names them.
    let site = Site {
        hosts: site_hosts(&model),
        s3_on: nodes.len().saturating_sub(1),
    };
    let mut known_hosts = String::new();
    for (i, node) in nodes.iter().enumerate() {
        let host_key = seed(&tools, &dir, node, i, &hash, &client_public, &site)?;
        known_hosts.push_str(&format!("[{}]:{} {}\n", node.ssh.ip(), node.ssh.port(), host_key));
        let ndir = node_dir(&dir, &node.name);
        let overlay = ndir.join("overlay.qcow2");
        let _ = fs::remove_file(&overlay);
        let mut img = Command::new(&tools.qemu_img);
        img.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base.rootfs)
            .arg(&overlay);
        image::checked(img, "qemu-img create")?;
        let args = qemu_args(opts, &dir, node, i, &base);
        fs::write(
            ndir.join("qemu.args.json"),
            serde_json::to_string(&args).unwrap_or_default(),
        )
        .map_err(io("cannot write the VM's qemu arguments"))?;
    }
    fs::write(dir.join("known_hosts"), known_hosts).map_err(io("cannot write known_hosts"))?;

    let lab = VmLab {
        inventory: dir.join("inventory.toml"),
        dir: dir.clone(),
        user: GUEST_USER.to_string(),
        nodes,
        image_time,
        boot_time: Duration::ZERO,
    };
    write_inventory(&lab, &model, &bundle, releases.as_ref())?;

    let boot = Instant::now();
    let result = start_switch(&tools, &dir, &net).and_then(|()| {
        for node in &lab.nodes {
            start_vm_with(&tools.qemu, &dir, &node.name)?;
        }
        for node in &lab.nodes {
            wait_ssh(&dir, &node.name, node.ssh, BOOT_TIMEOUT)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        let _ = down(&dir);
        return Err(e);
    }
    Ok(VmLab {
        boot_time: boot.elapsed(),
        ..lab
    })
}

/// Stops every qemu and the switch of the VM lab in `dir` (by the PIDs `up` recorded) and deletes the overlays
/// and seed disks.
pub fn down(dir: &Path) -> Result<(), LabError> {
    let mut first_error = None;
    for name in node_names(dir) {
        if let Err(e) = stop_vm(dir, &name) {
            first_error.get_or_insert(e);
        }
        let ndir = node_dir(dir, &name);
        for f in ["overlay.qcow2", "seed.img", "qmp.sock"] {
            let _ = fs::remove_file(ndir.join(f));
        }
        let _ = fs::remove_dir_all(ndir.join("seed"));
    }
    if let Some(pid) = recorded_pid(&dir.join("switch.pid"), "vde_switch")
        && let Err(e) = terminate(pid, "the lab switch")
    {
        first_error.get_or_insert(e);
    }
    let _ = fs::remove_file(dir.join("switch.pid"));
    let _ = fs::remove_dir_all(dir.join("switch"));
    first_error.map_or(Ok(()), Err)
}

/// Presses the guest's reset button (QMP `system_reset`): the guest reboots at once, without shutting down.
pub fn reset(dir: &Path, name: &str) -> Result<(), LabError> {
    qmp::command(&node_dir(dir, name).join("qmp.sock"), "system_reset")
        .map_err(|e| io(format!("cannot reset {name} through its QMP socket"))(e))
}

/// Pulls the guest's plug: SIGKILL to its qemu (its overlay keeps whatever reached it).
pub fn kill(dir: &Path, name: &str) -> Result<(), LabError> {
    if let Some(pid) = recorded_pid(&node_dir(dir, name).join("qemu.pid"), "qemu-system") {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = fs::remove_file(node_dir(dir, name).join("qemu.pid"));
    Ok(())
}

/// Boots a stopped guest again (same overlay, same arguments) and waits until its sshd answers.
pub fn boot(dir: &Path, name: &str) -> Result<(), LabError> {
    start_vm(dir, name)?;
    let addr = ssh_address(dir, name)?;
    wait_ssh(dir, name, addr, BOOT_TIMEOUT)
}

/// Waits until the guest's sshd answers again (after a reboot or reset), up to `timeout`.
pub fn wait_until_up(dir: &Path, name: &str, timeout: Duration) -> Result<(), LabError> {
    let addr = ssh_address(dir, name)?;
    wait_ssh(dir, name, addr, timeout)
}

/// The PIDs of the lab's running processes (qemu per guest, the switch).
pub fn running_pids(dir: &Path) -> impl Iterator<Item = i32> + '_ {
    node_names(dir)
        .into_iter()
        .filter_map(move |n| recorded_pid(&node_dir(dir, &n).join("qemu.pid"), "qemu-system"))
        .chain(recorded_pid(&dir.join("switch.pid"), "vde_switch"))
}

fn node_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("nodes").join(name)
}

fn node_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("qemu.args.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An inventory model for `--nodes N`: one cluster per node, the first central.
fn plain_model(count: usize) -> Table {
    let mut clusters = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..count {
        let mut c = Table::new();
        c.insert("name".into(), Value::String(format!("lab-{:02}", i + 1)));
        c.insert(
            "role".into(),
            Value::String(if i == 0 { "central" } else { "edge" }.into()),
        );
        c.insert("lb_ip".into(), Value::String(format!("10.77.0.{}", 200 + i)));
        clusters.push(Value::Table(c));
        let mut n = Table::new();
        n.insert("name".into(), Value::String(format!("node-{}", i + 1)));
        n.insert("address".into(), Value::String("0.0.0.0".into()));
        n.insert("cluster".into(), Value::String(format!("lab-{:02}", i + 1)));
        nodes.push(Value::Table(n));
    }
    let mut t = Table::new();
    t.insert("clusters".into(), Value::Array(clusters));
    t.insert("nodes".into(), Value::Array(nodes));
    t
}

const S3_SCRIPT: &str = include_str!("../../standins/vm/s3.py");

/// The model with its addresses on the lab switch: a cluster's VIP and LB IP must be free addresses on the
/// nodes' own network.
fn on_the_switch(mut model: Table) -> Table {
    let at = |first: u8, i: usize| Ipv4Addr::new(SWITCH_NET[0], SWITCH_NET[1], SWITCH_NET[2], first + i as u8);
    if let Some(Value::Array(clusters)) = model.get_mut("clusters") {
        for (i, c) in clusters.iter_mut().filter_map(Value::as_table_mut).enumerate() {
            if c.contains_key("vip") {
                c.insert("vip".into(), Value::String(at(SWITCH_VIP_FIRST, i).to_string()));
            }
            c.insert("lb_ip".into(), Value::String(at(SWITCH_LB_FIRST, i).to_string()));
        }
    }
    model
}

/// What the lab stands in for of the site around the nodes: its DNS (`hosts`, /etc/hosts lines for every guest)
/// and its S3 service, on the guest `s3_on` (an index into the lab's nodes: the last one).
struct Site {
    hosts: String,
    s3_on: usize,
}

/// The names the site's DNS would resolve, as /etc/hosts lines: the S3 host and every cluster's ingress names.
fn site_hosts(model: &Table) -> String {
    let mut lines = String::new();
    if let Some(host) = model.get("vars").and_then(|v| v.get("s3_host")).and_then(Value::as_str) {
        lines.push_str(&format!("{S3_STAND_IN}\t{host}\n"));
    }
    for c in model.get("clusters").and_then(Value::as_array).into_iter().flatten() {
        let (Some(domain), Some(ip)) = (
            c.get("domain").and_then(Value::as_str),
            c.get("lb_ip").and_then(Value::as_str),
        ) else {
            continue;
        };
        let names: Vec<String> = INGRESS_NAMES.iter().map(|n| format!("{n}.{domain}")).collect();
        lines.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    lines
}

/// Writes the lab's inventory: the model with the lab's SSH settings, each node's switch address as `address`
/// and its loopback forward as `ssh_address`/`port`.
fn write_inventory(
    lab: &VmLab,
    model: &Table,
    bundle: &Path,
    releases: Option<&releases::Releases>,
) -> Result<(), LabError> {
    // The guests' packages: the lab's repository, served by kubeboot itself over each VM's SSH connection.
    let mut model = model.clone();
    let sources = model.entry("sources").or_insert_with(|| Value::Table(Table::new()));
    if let Some(sources) = sources.as_table_mut() {
        sources.insert("bundle".into(), Value::String(bundle.display().to_string()));
        // Debian's own containerd package: Docker's repository is out of reach of an air-gapped guest.
        sources.insert("containerd".into(), Value::String("distro".into()));
    }
    let nodes: Vec<like::LabAddress> = lab
        .nodes
        .iter()
        .map(|n| like::LabAddress {
            name: n.name.clone(),
            address: n.address.to_string(),
            ssh_address: Some(n.ssh.ip().to_string()),
            port: n.ssh.port(),
            lab_root: None,
        })
        .collect();
    let settings = like::LabSsh {
        user: lab.user.clone(),
        key: lab.dir.join("id_ed25519"),
        sudo_password_file: lab.dir.join("sudo_password"),
        known_hosts: lab.dir.join("known_hosts"),
    };
    let mut extra = Table::new();
    // The guests resolve no name at all (no network): preflight must not require any.
    extra.insert("preflight_dns_names".into(), Value::Array(Vec::new()));
    // The guests have no default route, so kube-vip could not find its interface on its own.
    extra.insert("vip_interface".into(), Value::String(SWITCH_INTERFACE.into()));
    if let Some(r) = releases {
        // The stand-in release archives in the lab's bundle (see `releases`), checked like the real ones.
        extra.insert(
            "kustomize_sha256_amd64".into(),
            Value::String(r.kustomize_sha256.clone()),
        );
        extra.insert("helm_sha256_amd64".into(), Value::String(r.helm_sha256.clone()));
    }
    let header = "# Written by kubeboot's VM lab: every node is a Debian 12 VM under qemu, reached on a loopback\n\
                  # forward (ssh_address/port); `address` is its own address on the lab's private switch.\n";
    like::write_model(&lab.inventory, &model, &settings, &nodes, &extra, header)
}

/// Writes one guest's seed disk (host key, hostname, addresses, sudo rules, login) and returns its public host
/// key for known_hosts.
fn seed(
    tools: &HostTools,
    dir: &Path,
    node: &VmNode,
    index: usize,
    hash: &str,
    client_public: &str,
    site: &Site,
) -> Result<String, LabError> {
    let s3 = index == site.s3_on;
    let ndir = node_dir(dir, &node.name);
    let sdir = ndir.join("seed");
    let _ = fs::remove_dir_all(&sdir);
    let files = sdir.join("files");
    for d in ["etc/ssh", "etc/systemd/network", "etc/sudoers.d"] {
        fs::create_dir_all(files.join(d)).map_err(io(format!("cannot create {}", files.join(d).display())))?;
    }
    set_mode(&ndir, 0o700)?;
    set_mode(&sdir, 0o700)?;
    // Generated on the host before the first boot, so the lab's known_hosts holds the key from the start.
    let host_key = files.join("etc/ssh/ssh_host_ed25519_key");
    keygen(tools, &host_key, &node.name)?;
    let public = fs::read_to_string(host_key.with_extension("pub")).map_err(io("cannot read a VM host key"))?;
    let public: Vec<&str> = public.split_whitespace().take(2).collect();

    let write = |rel: &str, text: &str, mode: u32| -> Result<(), LabError> {
        let p = files.join(rel);
        fs::write(&p, text).map_err(io(format!("cannot write {}", p.display())))?;
        set_mode(&p, mode)
    };
    write("etc/hostname", &format!("{}\n", node.name), 0o644)?;
    write(
        "etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n{}\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n{}",
            node.address, node.name, site.hosts,
        ),
        0o644,
    )?;
    write(
        "etc/systemd/network/10-lab-ssh.network",
        &format!(
            "# kubeboot VM lab: qemu's user-mode NIC, only for the host's SSH forward (no gateway: no way out).\n\
             [Match]\nMACAddress={}\n\n[Network]\nAddress={USER_NET_GUEST}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
            mac(index, 1)
        ),
        0o644,
    )?;
    write(
        "etc/systemd/network/20-lab-switch.network",
        &format!(
            "# kubeboot VM lab: the private switch between the lab's VMs.\n\
             [Match]\nMACAddress={}\n\n[Network]\nAddress={}/24\n{}LinkLocalAddressing=no\nIPv6AcceptRA=no\n",
            mac(index, 2),
            node.address,
            if s3 {
                format!("Address={S3_STAND_IN}/24\n")
            } else {
                String::new()
            },
        ),
        0o644,
    )?;
    if s3 {
        // The site's S3 service (see S3_STAND_IN), started at every boot.
        for d in ["usr/lib/kubeboot-lab", "etc/systemd/system/multi-user.target.wants"] {
            fs::create_dir_all(files.join(d)).map_err(io(format!("cannot create {}", files.join(d).display())))?;
        }
        write("usr/lib/kubeboot-lab/s3", S3_SCRIPT, 0o755)?;
        write(
            "etc/systemd/system/kubeboot-lab-s3.service",
            &format!(
                "[Unit]\nDescription=kubeboot VM lab: the site's S3 service (stand-in)\nAfter=systemd-networkd.service\n\
                 StartLimitIntervalSec=0\n\n\
                 [Service]\nExecStart=/usr/lib/kubeboot-lab/s3 {S3_STAND_IN}\nRestart=always\nRestartSec=2\n\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
            0o644,
        )?;
        std::os::unix::fs::symlink(
            "/etc/systemd/system/kubeboot-lab-s3.service",
            files.join("etc/systemd/system/multi-user.target.wants/kubeboot-lab-s3.service"),
        )
        .map_err(io("cannot enable the S3 stand-in"))?;
        fs::write(sdir.join("start-units"), "kubeboot-lab-s3.service\n")
            .map_err(io("cannot write the seed's start-units"))?;
    }
    if node.rhel_like {
        write(
            "etc/sudoers.d/kubeboot-rhel-like",
            &format!(
                "# kubeboot VM lab: RHEL 8/9's sudoers secure_path (no /usr/local/bin, unlike Debian's).\n\
                 Defaults secure_path = {RHEL_SECURE_PATH}\n"
            ),
            0o440,
        )?;
    }
    write_private(&sdir.join("password.hash"), format!("{hash}\n").as_bytes())?;
    fs::write(sdir.join("authorized_keys"), client_public).map_err(io("cannot write authorized_keys"))?;

    let img = ndir.join("seed.img");
    let _ = fs::remove_file(&img);
    let mut mkfs = Command::new(&tools.mkfs_ext4);
    mkfs.args(["-q", "-F", "-L", "kbseed", "-d"])
        .arg(&sdir)
        .arg(&img)
        .arg("8M");
    image::checked(mkfs, "mkfs.ext4 (seed disk)")?;
    set_mode(&img, 0o600)?;
    Ok(public.join(" "))
}

fn mac(index: usize, nic: u8) -> String {
    format!("52:54:00:4b:{:02x}:{nic:02x}", index + 1)
}

fn qemu_args(opts: &VmOptions, dir: &Path, node: &VmNode, index: usize, base: &image::BaseImage) -> Vec<String> {
    let ndir = node_dir(dir, &node.name);
    let p = |f: &str| ndir.join(f).display().to_string();
    let mut a: Vec<String> = vec!["-name".into(), node.name.clone()];
    a.extend(opts.accel.args().iter().map(|s| s.to_string()));
    a.extend([
        "-smp".into(),
        opts.cpus.to_string(),
        "-m".into(),
        opts.memory_mib.to_string(),
        "-kernel".into(),
        base.kernel.display().to_string(),
        "-initrd".into(),
        base.initrd.display().to_string(),
        "-append".into(),
        format!("root=/dev/vda rw console=ttyS0 systemd.hostname={}", node.name),
        // cache=unsafe: the guest's flushes (dpkg syncs every file it unpacks) stop at the host's page cache
        // instead of the shared disk, which under TCG on a busy host made each package take seconds. What the
        // guest has written still survives a guest reset or a killed qemu (the host kernel holds it); only a
        // crash of the host would lose it, and the overlays are thrown away with the lab anyway.
        // checked: qemu-system-x86_64(1) -drive cache= (unsafe: "cache.writeback=on,cache.no-flush=on").
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2,cache=unsafe", p("overlay.qcow2")),
        "-drive".into(),
        format!("file={},if=virtio,format=raw,readonly=on", p("seed.img")),
        "-nic".into(),
        format!(
            "user,restrict=on,model=virtio-net-pci,mac={},hostfwd=tcp:{}:{}-:22",
            mac(index, 1),
            node.ssh.ip(),
            node.ssh.port()
        ),
        "-nic".into(),
        format!(
            "vde,sock={},model=virtio-net-pci,mac={}",
            dir.join("switch").display(),
            mac(index, 2)
        ),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", p("console.log")),
        "-monitor".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p("qmp.sock")),
        "-daemonize".into(),
        "-pidfile".into(),
        p("qemu.pid"),
    ]);
    a
}

/// Starts the lab's switch, which from then on holds the lab's loopback range (`net`) until it stops.
fn start_switch(tools: &HostTools, dir: &Path, net: &crate::net::Net) -> Result<(), LabError> {
    if recorded_pid(&dir.join("switch.pid"), "vde_switch").is_some() {
        return Ok(());
    }
    let _ = fs::remove_dir_all(dir.join("switch"));
    let mut cmd = Command::new(&tools.vde_switch);
    cmd.arg("--sock")
        .arg(dir.join("switch"))
        .args(["--mode", "0600", "--dirmode", "0700", "--daemon", "--pidfile"])
        .arg(dir.join("switch.pid"))
        .stdin(Stdio::null());
    net.hand_over(&mut cmd);
    image::checked(cmd, "vde_switch")?;
    // The daemon writes its PID file after its parent has returned.
    let deadline = Instant::now() + STOP_TIMEOUT;
    let pid = loop {
        if let Some(pid) = recorded_pid(&dir.join("switch.pid"), "vde_switch") {
            break pid;
        }
        if Instant::now() > deadline {
            return Err(LabError::VmStart {
                node: "the lab switch".into(),
                reason: format!(
                    "vde_switch wrote no running PID to {}",
                    dir.join("switch.pid").display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    net.record_holder(pid)
}

fn start_vm(dir: &Path, name: &str) -> Result<(), LabError> {
    start_vm_with(
        &super::which("qemu-system-x86_64").ok_or(LabError::Missing("qemu-system-x86_64"))?,
        dir,
        name,
    )
}

fn start_vm_with(qemu: &Path, dir: &Path, name: &str) -> Result<(), LabError> {
    let ndir = node_dir(dir, name);
    if recorded_pid(&ndir.join("qemu.pid"), "qemu-system").is_some() {
        return Ok(());
    }
    let text = fs::read_to_string(ndir.join("qemu.args.json")).map_err(|_| LabError::UnknownNode {
        dir: dir.to_path_buf(),
        node: name.to_string(),
    })?;
    let args: Vec<String> = serde_json::from_str(&text).map_err(|e| LabError::Io {
        what: format!("{}: {e}", ndir.join("qemu.args.json").display()),
        source: std::io::ErrorKind::InvalidData.into(),
    })?;
    let _ = fs::remove_file(ndir.join("qemu.pid"));
    let out = Command::new(qemu)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(io("cannot run qemu-system-x86_64"))?;
    // With -daemonize, qemu returns once the guest runs; an error (bad disk, port taken) comes before.
    if !out.status.success() {
        return Err(LabError::VmStart {
            node: name.to_string(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn stop_vm(dir: &Path, name: &str) -> Result<(), LabError> {
    let pidfile = node_dir(dir, name).join("qemu.pid");
    if let Some(pid) = recorded_pid(&pidfile, "qemu-system") {
        terminate(pid, name)?;
    }
    let _ = fs::remove_file(pidfile);
    Ok(())
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; a zombie counts as stopped.
fn terminate(pid: i32, what: &str) -> Result<(), LabError> {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(500));
            if alive(pid) {
                return Err(LabError::StopTimeout {
                    node: what.to_string(),
                    pid,
                });
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The PID in `pidfile` when that process runs and is `comm` (a stale PID reused by another program is not).
fn recorded_pid(pidfile: &Path, comm: &str) -> Option<i32> {
    let pid = fs::read_to_string(pidfile).ok()?.trim().parse::<i32>().ok()?;
    let is_it = fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with(comm));
    (pid > 0 && is_it && alive(pid)).then_some(pid)
}

fn alive(pid: i32) -> bool {
    super::alive(pid)
}

fn ssh_address(dir: &Path, name: &str) -> Result<SocketAddr, LabError> {
    let text = fs::read_to_string(node_dir(dir, name).join("qemu.args.json")).map_err(|_| LabError::UnknownNode {
        dir: dir.to_path_buf(),
        node: name.to_string(),
    })?;
    let fwd = text
        .split("hostfwd=tcp:")
        .nth(1)
        .and_then(|rest| rest.split("-:22").next())
        .and_then(|hp| hp.parse::<SocketAddr>().ok());
    fwd.ok_or_else(|| LabError::Io {
        what: format!(
            "{}: no SSH forward in the qemu arguments",
            node_dir(dir, name).display()
        ),
        source: std::io::ErrorKind::InvalidData.into(),
    })
}

/// Waits until the guest's sshd sends its banner. qemu's forward accepts a TCP connection even before the
/// guest listens, so only the `SSH-` banner means sshd is up.
fn wait_ssh(dir: &Path, name: &str, addr: SocketAddr, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let pidfile = node_dir(dir, name).join("qemu.pid");
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf[..4]).is_ok() && &buf[..4] == b"SSH-" {
                return Ok(());
            }
        }
        if recorded_pid(&pidfile, "qemu-system").is_none() {
            return Err(LabError::VmStart {
                node: name.to_string(),
                reason: format!(
                    "qemu exited; the console log is {}",
                    node_dir(dir, name).join("console.log").display()
                ),
            });
        }
        if Instant::now() > deadline {
            return Err(LabError::VmStart {
                node: name.to_string(),
                reason: format!(
                    "sshd did not answer on {addr} within {timeout:?}; the console log is {}",
                    node_dir(dir, name).join("console.log").display()
                ),
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The guest's password hash (SHA-512 crypt) for /etc/shadow; the password goes to openssl on stdin.
fn password_hash(tools: &HostTools, password: &str) -> Result<String, LabError> {
    let out = super::run(
        &tools.openssl,
        &["passwd", "-6", "-stdin"],
        Some(format!("{password}\n").as_bytes()),
    )?;
    Ok(out.trim().to_string())
}

fn keygen(tools: &HostTools, path: &Path, comment: &str) -> Result<(), LabError> {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    let p = path.display().to_string();
    super::run(
        &tools.keygen,
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", &p],
        None,
    )
    .map(|_| ())
}

/// An exclusive lock on the cache while the image or the repository is built (several labs may start at once).
pub(crate) fn lock_cache(cache: &Path) -> Result<CacheLock, LabError> {
    use std::os::fd::AsRawFd;
    fs::create_dir_all(cache).map_err(io(format!("cannot create {}", cache.display())))?;
    let path = cache.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("cannot open {}", path.display())))?;
    // SAFETY: the descriptor is valid while `file` lives; the lock goes with it.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(format!("cannot lock {}", path.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(CacheLock(file))
}

/// Held while it lives (closing the file releases the flock).
pub(crate) struct CacheLock(#[allow(dead_code)] fs::File);
