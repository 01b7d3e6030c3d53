//! A local lab of real OpenSSH nodes on loopback addresses, for tests, demos and benchmarks.
//!
//! Each node is its own `sshd -D` process with its own host key, config, PID file, log and
//! `root` folder (owned by the lab user, for side effects tests can look at). With
//! [`LabOptions::private_tmp`] each node also has a /tmp of its own, for the login user and root alike. All nodes share
//! one login user (`kblab`, created once per machine) whose sudo rule requires a password, so
//! `become` is exercised the way it runs on real machines.
//!
//! An isolated lab ([`LabOptions::isolated`]) gives every node a private view of /etc, /var/lib, /usr/local, /opt,
//! /root and /home and puts recording stand-ins for the privileged commands first on its PATH, so the shipped
//! playbooks can run end to end on this machine without changing it (see `isolate`).

mod inventory;
mod isolate;
mod like;
pub mod net;
pub mod vm;

pub use isolate::{ContainerdLayout, ISOLATED_DIRS, NodeKind, NodeOs};

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use inventory::{InventoryOptions, write_inventory};
use kubeboot_core::inventory::SshSettings;
use kubeboot_core::secrets::{NodeSecrets, Secret, SecretSource};
use kubeboot_core::ssh::Target;

/// The login user every lab node accepts.
pub const USER: &str = "kblab";

/// Where the per-machine state of the lab user lives (its password, the setup lock).
const STATE_DIR: &str = "/var/lib/kubeboot-lab";
const SUDOERS_FILE: &str = "/etc/sudoers.d/kubeboot-lab";
const INSTALL_HINT: &str = "install it with `apt-get install -y openssh-server sudo`";
/// How long one sshd may take to accept connections before `up` gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What lab to start.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The lab's folder (keys, configs, logs, node roots, inventory).
    pub dir: PathBuf,
    /// How many nodes.
    pub nodes: usize,
    /// Node i listens on `first_address + i`.
    pub first_address: Ipv4Addr,
    /// Node i listens on port `first_port + i`.
    pub first_port: u16,
    /// Each node gets a private file system view and recording stand-ins (see the module docs).
    pub isolated: bool,
    /// Node i looks like `kinds[i]` (isolated labs only); nodes past the end are Ubuntu with containerd 2.
    pub kinds: Vec<NodeKind>,
    /// Model the inventory on this one: its node names and count, clusters, vars and secrets.
    pub like: Option<PathBuf>,
    /// Each node sees its own /tmp (`<lab>/nodes/<name>/tmp`, see [`Lab::node_tmp`]) instead of this
    /// machine's, so what sessions leave there can be told apart by node. The lab's folder must
    /// then not be under /tmp.
    pub private_tmp: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            dir: PathBuf::from(".kubeboot-lab"),
            nodes: 4,
            first_address: Ipv4Addr::new(127, 0, 100, 1),
            first_port: 22200,
            isolated: false,
            kinds: Vec::new(),
            like: None,
            private_tmp: false,
        }
    }
}

/// One running lab node.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// `node-1`, `node-2`, ...
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// A folder owned by the lab user, for side effects tests can check.
    pub root: PathBuf,
    /// What the node looks like, when it is isolated.
    pub kind: Option<NodeKind>,
}

/// A started lab.
#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: PathBuf,
    /// The generated `inventory.toml` (key auth, the lab's own known_hosts).
    pub inventory: PathBuf,
    /// The login user.
    pub user: String,
    pub nodes: Vec<LabNode>,
}

/// Why the lab could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (it creates the user `{USER}` and runs sshd); run the tests as root")]
    NotRoot,
    #[error("`{0}` was not found; {INSTALL_HINT}")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("a lab is already running in {0} (run lab down on it first)")]
    AlreadyRunning(PathBuf),
    #[error("sshd of {node} did not start: {reason}; its log ends with:\n{log_tail}")]
    SshdStart {
        node: String,
        reason: String,
        log_tail: String,
    },
    #[error("sshd of {node} (pid {pid}) did not stop within {STOP_TIMEOUT:?}")]
    StopTimeout { node: String, pid: i32 },
    #[error("VM {node} did not start: {reason}")]
    VmStart { node: String, reason: String },
    #[error("the lab in {dir} has no node {node}")]
    UnknownNode { dir: PathBuf, node: String },
    #[error("no loopback range for a lab: {0}")]
    NoFreeNet(String),
    #[error(
        "the loopback range {range} is held by {holder}: another lab uses it (`kubeboot lab down` that lab, or leave out --first-address to get a free range)"
    )]
    NetHeld { range: String, holder: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Starts the lab's nodes and writes its keys, known_hosts and inventory.
pub fn up(opts: &LabOptions) -> Result<Lab, LabError> {
    let tools = Tools::find()?;
    let password = ensure_user()?;
    fs::create_dir_all("/run/sshd").map_err(io("cannot create /run/sshd"))?;

    let dir = opts.dir.clone();
    if opts.isolated {
        isolate::check(&dir)?;
    }
    if opts.private_tmp {
        check_private_tmp(&dir)?;
    }
    let model = opts.like.as_deref().map(like::read).transpose()?;
    let model_nodes = model.as_ref().map(like::nodes);
    let count = model_nodes.as_ref().map_or(opts.nodes, Vec::len);
    if running_nodes(&dir).next().is_some() {
        return Err(LabError::AlreadyRunning(dir));
    }
    fs::create_dir_all(dir.join("nodes")).map_err(io(format!("cannot create {}", dir.display())))?;
    // The lab user must reach its node roots and sshd (as that user) must read authorized_keys.
    set_mode(&dir, 0o711)?;
    set_mode(&dir.join("nodes"), 0o711)?;
    write_private(
        &dir.join("sudo_password"),
        format!("{}\n", password.expose()).as_bytes(),
    )?;

    let key = dir.join("id_ed25519");
    if !key.exists() {
        keygen(&tools, &key, "kubeboot-lab client")?;
    }
    let public = fs::read_to_string(key.with_extension("pub")).map_err(io("cannot read the lab's client key"))?;
    let authorized = dir.join("authorized_keys");
    fs::write(&authorized, public).map_err(io("cannot write authorized_keys"))?;
    set_mode(&authorized, 0o644)?;

    let mut nodes = Vec::with_capacity(count);
    let mut known_hosts = String::new();
    for i in 0..count {
        let model_node = model_nodes.as_ref().and_then(|m| m.get(i));
        let name = model_node.map_or_else(|| format!("node-{}", i + 1), |m| m.name.clone());
        let node = LabNode {
            address: Ipv4Addr::from(u32::from(opts.first_address) + i as u32),
            port: opts.first_port + i as u16,
            root: dir.join("nodes").join(&name).join("root"),
            kind: opts.isolated.then(|| opts.kinds.get(i).copied().unwrap_or_default()),
            name,
        };
        let host_key = prepare_node(&tools, &dir, &node, opts.private_tmp)?;
        if let Some(kind) = node.kind {
            let info = isolate::NodeInfo {
                name: &node.name,
                address: node.address,
                kind,
                domain: model_node.and_then(|m| m.domain.clone()),
            };
            isolate::prepare(&node_dir(&dir, &node.name), &info)?;
        } else {
            // A node that was isolated in an earlier lab in this folder is not any more.
            let _ = fs::remove_file(node_dir(&dir, &node.name).join("isolate.sh"));
        }
        known_hosts.push_str(&format!("[{}]:{} {}\n", node.address, node.port, host_key));
        nodes.push(node);
    }
    fs::write(dir.join("known_hosts"), known_hosts).map_err(io("cannot write known_hosts"))?;

    let lab = Lab {
        inventory: dir.join("inventory.toml"),
        dir,
        user: USER.to_string(),
        nodes,
    };
    match &model {
        Some(model) => like::write(&lab, model)?,
        None => {
            write_inventory(&lab, &InventoryOptions::for_lab(&lab))?;
        }
    }
    for node in &lab.nodes {
        if let Err(e) = start_node(&lab.dir, &node.name) {
            let _ = down(&lab.dir);
            return Err(e);
        }
    }
    Ok(lab)
}

/// Stops every sshd of the lab in `dir` (and the sessions they serve).
pub fn down(dir: &Path) -> Result<(), LabError> {
    if vm::is_vm_lab(dir) {
        return vm::down(dir);
    }
    let mut first_error = None;
    for name in node_names(dir) {
        if let Err(e) = stop_node(dir, &name) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Stops one node (SIGTERM to its sshd and every session under it) and waits until it is gone.
pub fn stop_node(dir: &Path, name: &str) -> Result<(), LabError> {
    let Some(pid) = node_pid(dir, name)? else {
        return Ok(());
    };
    signal_tree(pid, libc::SIGCONT);
    signal_tree(pid, libc::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) {
        if Instant::now() > deadline {
            return Err(LabError::StopTimeout {
                node: name.to_string(),
                pid,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_file(node_dir(dir, name).join("sshd.pid"));
    Ok(())
}

/// Kills one node at once (SIGKILL to its sshd and every session under it), like a power cut.
pub fn kill_node(dir: &Path, name: &str) -> Result<(), LabError> {
    if let Some(pid) = node_pid(dir, name)? {
        // Freeze first so no process escapes by forking while the tree is walked; a killed
        // parent's children would be handed to init and no longer be found under it.
        for p in freeze_tree(pid) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_file(node_dir(dir, name).join("sshd.pid"));
    }
    Ok(())
}

/// Freezes one node (SIGSTOP to its sshd and every session): it stops answering without closing anything.
pub fn pause_node(dir: &Path, name: &str) -> Result<(), LabError> {
    if let Some(pid) = node_pid(dir, name)? {
        freeze_tree(pid);
    }
    Ok(())
}

/// SIGSTOPs `pid` and its descendants until no new one turns up: a session process may be
/// forking while the tree is walked (sshd starts the post-login child right after
/// authentication). Returns every process stopped.
fn freeze_tree(pid: i32) -> Vec<i32> {
    let mut stopped = signal_tree(pid, libc::SIGSTOP);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(25));
        let again = signal_tree(pid, libc::SIGSTOP);
        let settled = again.iter().all(|p| stopped.contains(p));
        stopped = again;
        if settled {
            break;
        }
    }
    stopped
}

/// Thaws a node frozen by [`pause_node`].
pub fn resume_node(dir: &Path, name: &str) -> Result<(), LabError> {
    if let Some(pid) = node_pid(dir, name)? {
        signal_tree(pid, libc::SIGCONT);
    }
    Ok(())
}

/// The names the nodes of a lab started with `opts` get: the model inventory's, or node-1, node-2, ...
pub fn planned_node_names(opts: &LabOptions) -> Result<Vec<String>, LabError> {
    Ok(match &opts.like {
        Some(path) => like::nodes(&like::read(path)?).into_iter().map(|n| n.name).collect(),
        None => (1..=opts.nodes).map(|i| format!("node-{i}")).collect(),
    })
}

/// Starts (or restarts) one node's sshd and waits until it answers on its address with its own host key.
pub fn start_node(dir: &Path, name: &str) -> Result<(), LabError> {
    let tools = Tools::find()?;
    let ndir = node_dir(dir, name);
    let config = ndir.join("sshd_config");
    if !config.exists() {
        return Err(LabError::UnknownNode {
            dir: dir.to_path_buf(),
            node: name.to_string(),
        });
    }
    if node_pid(dir, name)?.is_some() {
        return Ok(());
    }
    let addr = listen_address(&config)?;
    let own_key = public_host_key(&ndir)?;
    let log_path = ndir.join("sshd.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("cannot open {}", log_path.display())))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log2 = log.try_clone().map_err(io("cannot share the sshd log file"))?;
    // Scripts that set up the node's own mounts, each ending in `exec "$@"`, in one mount namespace.
    let scripts: Vec<PathBuf> = [PRIVATE_TMP_SCRIPT, "isolate.sh"]
        .iter()
        .map(|s| ndir.join(s))
        .filter(|p| p.exists())
        .collect();
    let mut command = if scripts.is_empty() {
        Command::new(&tools.sshd)
    } else {
        // unshare and sh all exec, so the PID is sshd's own once it runs.
        let unshare = which("unshare").ok_or(LabError::Missing("unshare"))?;
        let mut c = Command::new(unshare);
        c.args(["--mount", "--propagation", "private", "--"]);
        for script in &scripts {
            c.arg("/bin/sh").arg(script);
        }
        c.arg(&tools.sshd);
        c
    };
    let mut child = command
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C in the terminal running the tests must not take the lab down half-way.
        .process_group(0)
        .spawn()
        .map_err(io(format!("cannot start {}", tools.sshd.display())))?;
    let pid = child.id() as i32;
    write_file(&ndir.join("sshd.pid"), format!("{pid}\n").as_bytes())?;

    let deadline = Instant::now() + START_TIMEOUT;
    // A bare TCP connect is not enough: another lab's sshd on the same address answers it too, and the
    // tests would then meet a host key that is not in this lab's known_hosts.
    let mut stranger = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(ndir.join("sshd.pid"));
            return Err(LabError::SshdStart {
                node: name.to_string(),
                reason: format!("it exited ({status})"),
                log_tail: log_tail(&log_path, log_start),
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            match answering_host_key(&tools, addr) {
                Some(key) if key == own_key => break,
                Some(key) => stranger = Some(key),
                None => {}
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(ndir.join("sshd.pid"));
            let reason = match stranger {
                Some(key) => format!(
                    "another sshd answers on {addr} (host key {key}, not this lab's): is another lab using these addresses?"
                ),
                None => format!("nothing answered SSH on {addr} within {START_TIMEOUT:?}"),
            };
            return Err(LabError::SshdStart {
                node: name.to_string(),
                reason,
                log_tail: log_tail(&log_path, log_start),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reap it when it ends, so a stopped node does not linger as a zombie that still looks alive.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// The file holding the lab user's sudo (and login) password.
pub fn password_file(dir: &Path) -> PathBuf {
    dir.join("sudo_password")
}

/// The lab user's sudo (and login) password.
pub fn password(dir: &Path) -> Result<Secret, LabError> {
    let path = password_file(dir);
    let text = fs::read_to_string(&path).map_err(io(format!("cannot read {}", path.display())))?;
    Ok(Secret::new(text.trim_end()))
}

impl Lab {
    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node's sshd log (OpenSSH's own lines: logins, disconnects).
    pub fn sshd_log(&self, name: &str) -> PathBuf {
        node_dir(&self.dir, name).join("sshd.log")
    }

    /// Where a file the node wrote (at `path` in its own view) can be read from here: for an isolated node
    /// the overlay's upper folder (only what the node changed), else `path` itself.
    pub fn node_file(&self, name: &str, path: &str) -> PathBuf {
        let isolated = self.node(name).is_some_and(|n| n.kind.is_some());
        let hit = ISOLATED_DIRS
            .iter()
            .filter(|d| Path::new(path).starts_with(d))
            .max_by_key(|d| d.len());
        match hit {
            Some(dir) if isolated => {
                let rest = Path::new(path).strip_prefix(dir).unwrap_or(Path::new(""));
                isolate::upper(&node_dir(&self.dir, name), dir).join(rest)
            }
            _ => PathBuf::from(path),
        }
    }

    /// Where a node with a private /tmp ([`LabOptions::private_tmp`]) has it, seen from here.
    pub fn node_tmp(&self, name: &str) -> PathBuf {
        node_tmp(&self.dir, name)
    }

    /// The host folder holding an isolated node's stand-in record (`record.jsonl`), state and `fail/` flags.
    pub fn standin_dir(&self, name: &str) -> PathBuf {
        isolate::standin_dir(&node_dir(&self.dir, name))
    }

    /// An SSH target for one node: key auth, the lab's known_hosts, the sudo password.
    pub fn target(&self, name: &str) -> Result<Target, LabError> {
        let node = self.node(name).ok_or_else(|| LabError::UnknownNode {
            dir: self.dir.clone(),
            node: name.to_string(),
        })?;
        let settings = SshSettings {
            user: self.user.clone(),
            port: node.port,
            key: Some(self.dir.join("id_ed25519")),
            agent: false,
            password: None,
            sudo_password: Some(SecretSource::File(password_file(&self.dir))),
            known_hosts: self.dir.join("known_hosts"),
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
            persistent_shell: true,
            node_helper: true,
        };
        let secrets = NodeSecrets {
            password: None,
            sudo_password: Some(password(&self.dir)?),
        };
        Ok(settings.target(&node.name, &node.address.to_string(), secrets, false))
    }
}

/// Stops the lab when dropped (handy in tests: the lab goes away even when an assertion fails).
pub struct LabGuard(pub Lab);

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = down(&self.0.dir);
    }
}

/// The programs the lab runs, found once.
struct Tools {
    sshd: PathBuf,
    keygen: PathBuf,
    keyscan: PathBuf,
}

impl Tools {
    fn find() -> Result<Self, LabError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LabError::NotRoot);
        }
        let sshd = which("sshd").ok_or(LabError::Missing("sshd"))?;
        let keygen = which("ssh-keygen").ok_or(LabError::Missing("ssh-keygen"))?;
        let keyscan = which("ssh-keyscan").ok_or(LabError::Missing("ssh-keyscan"))?;
        which("sudo").ok_or(LabError::Missing("sudo"))?;
        Ok(Tools { sshd, keygen, keyscan })
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    // sshd lives in /usr/sbin, which a non-login PATH may lack.
    path.split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn run(program: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<String, LabError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("cannot run {command}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .map_err(io(format!("cannot write to {command}")))?;
    }
    let out = child.wait_with_output().map_err(io(format!("cannot run {command}")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn keygen(tools: &Tools, path: &Path, comment: &str) -> Result<(), LabError> {
    let p = path.display().to_string();
    run(
        &tools.keygen,
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", &p],
        None,
    )
    .map(|_| ())
}

/// Creates the lab user, its password and its sudo rule once per machine; returns the password.
/// Several labs may start at once (parallel tests), so all of it happens under one file lock.
fn ensure_user() -> Result<Secret, LabError> {
    fs::create_dir_all(STATE_DIR).map_err(io(format!("cannot create {STATE_DIR}")))?;
    set_mode(Path::new(STATE_DIR), 0o700)?;
    let lock_path = Path::new(STATE_DIR).join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("cannot open {}", lock_path.display())))?;
    // Released when `lock` is closed, at the end of this function or of the process.
    lock.lock()
        .map_err(io(format!("cannot lock {}", lock_path.display())))?;

    let id = which("id").ok_or(LabError::Missing("id"))?;
    let created = run(&id, &["-u", USER], None).is_err();
    if created {
        let useradd = which("useradd").ok_or(LabError::Missing("useradd"))?;
        run(&useradd, &["-m", "-s", "/bin/bash", USER], None)?;
    }
    let password_path = Path::new(STATE_DIR).join("password");
    let (password, fresh) = match fs::read_to_string(&password_path) {
        Ok(text) if !text.trim().is_empty() => (Secret::new(text.trim_end()), false),
        _ => (Secret::new(random_password()), true),
    };
    if created || fresh {
        let chpasswd = which("chpasswd").ok_or(LabError::Missing("chpasswd"))?;
        // On stdin: a password on chpasswd's command line would show in `ps`.
        run(
            &chpasswd,
            &[],
            Some(format!("{USER}:{}\n", password.expose()).as_bytes()),
        )?;
        write_private(&password_path, format!("{}\n", password.expose()).as_bytes())?;
    }
    let rule =
        format!("# Written by kubeboot's local lab: sudo with a password, as on real nodes.\n{USER} ALL=(ALL) ALL\n");
    if fs::read_to_string(SUDOERS_FILE).ok().as_deref() != Some(rule.as_str()) {
        let tmp = PathBuf::from(format!("{SUDOERS_FILE}.tmp"));
        fs::write(&tmp, &rule).map_err(io(format!("cannot write {}", tmp.display())))?;
        set_mode(&tmp, 0o440)?;
        fs::rename(&tmp, SUDOERS_FILE).map_err(io(format!("cannot write {SUDOERS_FILE}")))?;
    }
    Ok(password)
}

fn random_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The script a node with a private /tmp starts under (see [`LabOptions::private_tmp`]).
const PRIVATE_TMP_SCRIPT: &str = "private_tmp.sh";

fn check_private_tmp(lab_dir: &Path) -> Result<(), LabError> {
    which("unshare").ok_or(LabError::Missing("unshare"))?;
    let abs = std::path::absolute(lab_dir).map_err(io("cannot resolve the lab folder"))?;
    if abs.starts_with("/tmp") {
        return Err(LabError::Io {
            what: format!(
                "the lab folder {} is under /tmp, which nodes with a private /tmp do not see; put it elsewhere (e.g. /var/tmp)",
                abs.display()
            ),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    Ok(())
}

/// Writes one node's host key, sshd_config and root folder (and its /tmp, when private); returns
/// its public host key (`ssh-ed25519 AAAA...`).
fn prepare_node(tools: &Tools, dir: &Path, node: &LabNode, private_tmp: bool) -> Result<String, LabError> {
    let ndir = node_dir(dir, &node.name);
    fs::create_dir_all(&node.root).map_err(io(format!("cannot create {}", node.root.display())))?;
    set_mode(&ndir, 0o711)?;
    let script = ndir.join(PRIVATE_TMP_SCRIPT);
    if private_tmp {
        let tmp = node_tmp(dir, &node.name);
        fs::create_dir_all(&tmp).map_err(io(format!("cannot create {}", tmp.display())))?;
        set_mode(&tmp, 0o1777)?;
        let text = format!(
            "#!/bin/sh\n# Written by kubeboot's local lab: this node's own /tmp, then the next step.\nset -eu\n\
             mount --bind {} /tmp\nexec \"$@\"\n",
            tmp.display()
        );
        fs::write(&script, text).map_err(io(format!("cannot write {}", script.display())))?;
    } else {
        // A node that had a private /tmp in an earlier lab in this folder does not any more.
        let _ = fs::remove_file(&script);
    }
    let chown = which("chown").ok_or(LabError::Missing("chown"))?;
    run(
        &chown,
        &[&format!("{USER}:{USER}"), &node.root.display().to_string()],
        None,
    )?;

    let host_key = ndir.join("ssh_host_ed25519_key");
    if !host_key.exists() {
        keygen(tools, &host_key, &node.name)?;
    }
    let public = fs::read_to_string(host_key.with_extension("pub")).map_err(io("cannot read a lab host key"))?;
    let public: Vec<&str> = public.split_whitespace().take(2).collect();

    let config = format!(
        "# Written by kubeboot's local lab.\n\
         ListenAddress {addr}\n\
         Port {port}\n\
         HostKey {host_key}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PasswordAuthentication yes\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin no\n\
         AllowUsers {USER}\n\
         MaxSessions 10\n\
         AllowTcpForwarding yes\n\
         LogLevel INFO\n\
         Subsystem sftp internal-sftp\n",
        addr = node.address,
        port = node.port,
        host_key = host_key.display(),
        pid = ndir.join("sshd.pid").display(),
        dir = dir.display(),
    );
    fs::write(ndir.join("sshd_config"), config).map_err(io("cannot write a lab sshd_config"))?;
    Ok(public.join(" "))
}

fn node_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("nodes").join(name)
}

fn node_tmp(dir: &Path, name: &str) -> PathBuf {
    node_dir(dir, name).join("tmp")
}

fn node_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("sshd_config").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn running_nodes(dir: &Path) -> impl Iterator<Item = String> + '_ {
    node_names(dir)
        .into_iter()
        .filter(move |n| matches!(node_pid(dir, n), Ok(Some(_))))
}

/// The PID of the node's sshd when it is running.
fn node_pid(dir: &Path, name: &str) -> Result<Option<i32>, LabError> {
    let ndir = node_dir(dir, name);
    if !ndir.join("sshd_config").exists() {
        return Err(LabError::UnknownNode {
            dir: dir.to_path_buf(),
            node: name.to_string(),
        });
    }
    let pid = fs::read_to_string(ndir.join("sshd.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|&pid| pid > 0 && alive(pid) && is_sshd(pid));
    Ok(pid)
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); it is dead for our purposes.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_field(&stat, 0).is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Guards against signalling an unrelated process that reused a stale PID.
fn is_sshd(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with("sshd"))
}

/// Field `n` after the `(comm)` part of /proc/PID/stat (0 = state, 1 = ppid).
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n)
}

/// Sends `signal` to `pid` and every process below it (the sessions it serves and their commands).
/// Sends `signal` to `pid` and all its descendants; returns the processes signalled.
fn signal_tree(pid: i32, signal: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat"))
            && let Some(ppid) = stat_field(&stat, 1).and_then(|p| p.parse::<i32>().ok())
        {
            parents.push((child, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(c, _)| *c));
        i += 1;
    }
    for &p in &tree {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(p, signal) };
    }
    tree
}

fn listen_address(config: &Path) -> Result<SocketAddr, LabError> {
    let text = fs::read_to_string(config).map_err(io(format!("cannot read {}", config.display())))?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let addr: Ipv4Addr = value("ListenAddress ").parse().map_err(|_| LabError::Io {
        what: format!("{} has no valid ListenAddress", config.display()),
        source: std::io::ErrorKind::InvalidData.into(),
    })?;
    let port: u16 = value("Port ").parse().map_err(|_| LabError::Io {
        what: format!("{} has no valid Port", config.display()),
        source: std::io::ErrorKind::InvalidData.into(),
    })?;
    Ok(SocketAddr::from((addr, port)))
}

/// The node's own public host key, `ssh-ed25519 AAAA...` (what its known_hosts line holds after the address).
fn public_host_key(ndir: &Path) -> Result<String, LabError> {
    let path = ndir.join("ssh_host_ed25519_key.pub");
    let text = fs::read_to_string(&path).map_err(io(format!("cannot read {}", path.display())))?;
    Ok(text.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
}

/// The ed25519 host key the sshd on `addr` presents, `ssh-ed25519 AAAA...`; None while nothing answers SSH there.
fn answering_host_key(tools: &Tools, addr: SocketAddr) -> Option<String> {
    let out = Command::new(&tools.keyscan)
        .args(["-T", "2", "-t", "ed25519", "-p", &addr.port().to_string()])
        .arg(addr.ip().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    // `[127.0.204.1]:23000 ssh-ed25519 AAAA...`; comment lines start with `#`.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() >= 3).then(|| format!("{} {}", fields[1], fields[2]))
        })
}

fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LabError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(format!("cannot chmod {}", path.display())))
}

fn write_file(path: &Path, content: &[u8]) -> Result<(), LabError> {
    fs::write(path, content).map_err(io(format!("cannot write {}", path.display())))
}

/// Writes a file only its owner can read, without a moment where others could.
fn write_private(path: &Path, content: &[u8]) -> Result<(), LabError> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot write {}", path.display())))?;
    set_mode(path, 0o600)?;
    f.write_all(content)
        .map_err(io(format!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "42 (sshd: a (b)) S 7 42 42 0";
        assert_eq!(stat_field(stat, 0), Some("S"));
        assert_eq!(stat_field(stat, 1), Some("7"));
    }
}
