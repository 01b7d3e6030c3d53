//! SSH: connect, authenticate, verify host keys, run commands with streamed output, sudo, upload.
//!
//! One [`Session`] is one SSH connection to one node, reused for every task on it. Commands run
//! as `sh -s` with the script on stdin (see [`script`]), so neither scripts nor secrets ever show
//! up in the node's process list.

mod auth;
mod executor;
mod follow;
mod forward;
mod host_key;
mod script;
mod upload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::Handle;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::event::Stream;
use crate::secrets::Secret;
use follow::{Followed, Step};
pub use forward::{ForwardService, ForwardedStream};
pub(crate) use host_key::Client;
pub use host_key::NewHostKeys;
use host_key::Verdict;
use script::LineBuffer;
pub(crate) use script::quote;

/// How many channels one connection opens at once; OpenSSH refuses more than `MaxSessions` (10).
const MAX_CHANNELS: usize = 8;
/// How long to keep reading after the exit status, for output still in flight. A background
/// process that keeps stdout open must not hold the task forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Where and how to log in to one node.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node's name (for messages).
    pub node: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private key file to try first.
    pub key: Option<PathBuf>,
    /// Try the keys of a running ssh-agent (`SSH_AUTH_SOCK`).
    pub agent: bool,
    /// Login password, tried last.
    pub password: Option<Secret>,
    /// Password for `sudo` when a command runs with become.
    pub sudo_password: Option<Secret>,
    pub known_hosts: PathBuf,
    pub new_host_keys: NewHostKeys,
    /// Limit for connecting and authenticating.
    pub connect_timeout: Duration,
    /// Keepalive interval; a node that sends nothing for 3 intervals (keepalives unanswered) is lost.
    pub keepalive: Duration,
    /// Run commands through one persistent shell per user (see [`executor`]): one channel and one
    /// sudo per node instead of one per command. Off: every command opens its own channel (and for
    /// become, runs its own sudo). A node that cannot host the shell (no `setsid`, no `mktemp`)
    /// falls back to that on its own.
    pub persistent_shell: bool,
}

impl Target {
    /// `host` for port 22, `[host]:port` otherwise, as known_hosts and ssh-keygen write it.
    pub fn host_port(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// A command to run on a node.
#[derive(Debug, Clone, Default)]
pub struct Command {
    /// Shell script (POSIX sh).
    pub script: String,
    /// Environment variables for the script; values may hold secrets (they travel on stdin).
    pub env: Vec<(String, String)>,
    /// Run as root through sudo.
    pub become_: bool,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by this signal (name without `SIG`).
    Signal(String),
}

impl Exit {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

/// Why an SSH operation failed. Each message says what happened, and what to do about it as far as
/// SSH goes; it names no inventory key and no command-line flag: the caller, who knows where the
/// settings came from, adds that (`task::ssh_error_text`).
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {host}:{port}: {source} — check the address and port, and that sshd runs there")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("connecting to {host}:{port} took longer than {after:?} — check the node is up and reachable")]
    ConnectTimeout { host: String, port: u16, after: Duration },
    #[error(
        "host key for {host} has CHANGED (known_hosts line {line} of {path}), now {fingerprint} — if the node was reinstalled, remove that line (`ssh-keygen -R '{host}' -f {path}`)"
    )]
    HostKeyChanged {
        host: String,
        path: String,
        line: usize,
        fingerprint: String,
    },
    #[error("host key for {host} is unknown ({fingerprint}) — check it, then add it to {known_hosts}")]
    HostKeyUnknown {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("cannot log in as {user} on {host} (tried: {})", tried_list(tried))]
    Auth {
        user: String,
        host: String,
        tried: Vec<&'static str>,
    },
    #[error("cannot use the private key {path}: {reason}")]
    KeyFile {
        path: String,
        reason: String,
        /// It is encrypted with a passphrase (and the agent, if tried, did not hold it).
        encrypted: bool,
        /// The agent's keys were tried.
        agent_tried: bool,
    },
    #[error("{0}")]
    Sudo(SudoError),
    #[error("{0}")]
    ConnectionLost(String),
    #[error("cancelled")]
    Cancelled,
    #[error("cannot upload {dest}: {reason}")]
    Upload { dest: String, reason: String },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Forward(String),
}

/// Why sudo did not let a command run as root.
#[derive(Debug, thiserror::Error)]
pub enum SudoError {
    #[error("sudo on {node} needs a password for {user} but none is set")]
    NoPassword { node: String, user: String },
    #[error("{user} may not use sudo on {node} — add a sudoers rule for it, or log in as a user that may")]
    NotAllowed { node: String, user: String },
    #[error("sudo refused the password for {user} on {node}")]
    Refused { node: String, user: String },
}

fn tried_list(tried: &[&'static str]) -> String {
    if tried.is_empty() {
        "nothing: no key, agent or password is set".into()
    } else {
        tried.join(", ")
    }
}

/// A node's host key compared with known_hosts, as [`probe_host_key`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyState {
    /// known_hosts has this key for the node.
    Known,
    /// known_hosts has no key for the node; `fingerprint` is the server's (`SHA256:...`).
    Unknown { fingerprint: String },
    /// known_hosts has another key for the node (line `line` of `path`): never to be accepted silently.
    Changed {
        line: usize,
        path: String,
        fingerprint: String,
    },
}

/// Connects just far enough to see the server's host key and checks it against the target's known_hosts, within
/// `target.connect_timeout`. Never logs in and never records anything, whatever `target.new_host_keys` says.
pub async fn probe_host_key(target: &Target) -> Result<HostKeyState, SshError> {
    let after = target.connect_timeout;
    let timed_out = || SshError::ConnectTimeout {
        host: target.host.clone(),
        port: target.port,
        after,
    };
    tokio::time::timeout(after, probe_inner(target))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

async fn probe_inner(target: &Target) -> Result<HostKeyState, SshError> {
    let config = Arc::new(russh::client::Config {
        nodelay: true,
        inactivity_timeout: Some(target.connect_timeout),
        ..Default::default()
    });
    let seen = Arc::new(Mutex::new(None));
    let client = Client {
        host: target.host.clone(),
        port: target.port,
        known_hosts: target.known_hosts.clone(),
        policy: NewHostKeys::Refuse,
        seen: seen.clone(),
        keepalive_timed_out: Arc::new(AtomicBool::new(false)),
        probe_only: true,
        forwards: forward::Forwards::default(),
    };
    let connected = russh::client::connect(config, (target.host.as_str(), target.port), client).await;
    let seen = seen.lock().ok().and_then(|s| s.clone());
    match (seen, connected) {
        (Some((Verdict::Known | Verdict::Learned, _)), _) => Ok(HostKeyState::Known),
        (Some((Verdict::Unknown, fingerprint)), _) => Ok(HostKeyState::Unknown { fingerprint }),
        (Some((Verdict::Changed { line }, fingerprint)), _) => Ok(HostKeyState::Changed {
            line,
            path: target.known_hosts.display().to_string(),
            fingerprint,
        }),
        (seen, Err(e)) => Err(connect_error(target, e, seen)),
        (seen, Ok(_)) => Err(SshError::Protocol(format!(
            "{} finished the handshake without showing a host key we could check ({seen:?})",
            target.host_port()
        ))),
    }
}

/// The root shell with a sudo password: sudo's prompt (on stderr, counted to see a refused
/// password) and the command, which says [`executor::SUDO_OK`] once sudo let it run.
const SUDO_PROMPT: &str = "[kubeboot: sudo asks]";
const SUDO_SHELL: &str = "sudo -k -S -p '[kubeboot: sudo asks]' -- sh -c 'echo kubeboot-sudo-ok; exec sh -s'";

/// How to start a shell as root ([`Session::root_shell`]).
struct RootShell {
    command: &'static str,
    /// The password line to send: first thing on stdin, or (with `sudo_prompt`) when sudo asks.
    password: Vec<u8>,
    /// sudo's prompt, when the password goes out only once sudo asks for it.
    sudo_prompt: Option<&'static str>,
}

/// How `become` works on this node, found out once per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Become {
    /// The login user is root: no sudo.
    Root,
    /// sudo needs no password (NOPASSWD).
    NoPassword,
    /// sudo needs the password; it is sent when sudo prompts for it.
    Password,
}

/// One authenticated SSH connection to a node; cheap to clone, shared by every task on the node.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    handle: Handle<Client>,
    fingerprint: String,
    /// Set by the russh handler when the node stopped answering keepalives.
    keepalive_timed_out: Arc<AtomicBool>,
    /// Services of the ports forwarded back from the node ([`Session::forward_remote`]).
    forwards: forward::Forwards,
    channels: Arc<Semaphore>,
    /// Run commands through a persistent remote shell (see [`executor`]) instead of a channel each.
    persistent: AtomicBool,
    /// The persistent shells: `[login user, root]`, started on first use and again if one ends.
    executors: [tokio::sync::Mutex<Option<Arc<executor::Executor>>>; 2],
    /// A shell that only holds a folder for uploads in transit, when the node runs no persistent shell.
    files_shell: tokio::sync::Mutex<Option<Arc<executor::Executor>>>,
    become_mode: OnceCell<Become>,
    /// Set once sudo has taken the password on this node (by a root shell's start, or a check).
    sudo_checked: OnceCell<()>,
    sftp: OnceCell<russh_sftp::client::SftpSession>,
}

impl Session {
    /// Connects, checks the host key and logs in, all within `target.connect_timeout`.
    pub async fn connect(target: Target) -> Result<Session, SshError> {
        let after = target.connect_timeout;
        match tokio::time::timeout(after, Self::connect_inner(target.clone())).await {
            Ok(result) => result,
            Err(_) => Err(SshError::ConnectTimeout {
                host: target.host,
                port: target.port,
                after,
            }),
        }
    }

    async fn connect_inner(target: Target) -> Result<Session, SshError> {
        let config = Arc::new(russh::client::Config {
            // Without it every small packet waits for Nagle: ~45 ms more per command.
            nodelay: true,
            keepalive_interval: Some(target.keepalive),
            // russh sends a keepalive after each `keepalive_interval` of silence and gives up at the
            // first timer past `keepalive_max` unanswered ones: with 2, a node is lost after 3
            // intervals with nothing from it (30 s by default, as the guide says), not 4.
            // Checked against russh 0.65.1 client/mod.rs (`alive_timeouts > keepalive_max`).
            keepalive_max: 2,
            inactivity_timeout: None,
            ..Default::default()
        });
        let seen = Arc::new(Mutex::new(None));
        let keepalive_timed_out = Arc::new(AtomicBool::new(false));
        let forwards = forward::Forwards::default();
        let client = Client {
            host: target.host.clone(),
            port: target.port,
            known_hosts: target.known_hosts.clone(),
            policy: target.new_host_keys,
            seen: seen.clone(),
            keepalive_timed_out: keepalive_timed_out.clone(),
            probe_only: false,
            forwards: forwards.clone(),
        };
        let connected = russh::client::connect(config, (target.host.as_str(), target.port), client).await;
        let seen = seen.lock().ok().and_then(|s| s.clone());
        let mut handle = match connected {
            Ok(handle) => handle,
            Err(e) => return Err(connect_error(&target, e, seen)),
        };
        let fingerprint = seen.map(|(_, f)| f).unwrap_or_default();
        auth::authenticate(&mut handle, &target).await?;
        let persistent = AtomicBool::new(target.persistent_shell);
        Ok(Session {
            inner: Arc::new(Inner {
                target,
                handle,
                fingerprint,
                keepalive_timed_out,
                forwards,
                channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
                persistent,
                executors: Default::default(),
                files_shell: Default::default(),
                become_mode: OnceCell::new(),
                sudo_checked: OnceCell::new(),
                sftp: OnceCell::new(),
            }),
        })
    }

    /// The node's host key fingerprint, `SHA256:...` as ssh-keygen shows it.
    pub fn host_key_fingerprint(&self) -> String {
        self.inner.fingerprint.clone()
    }

    /// The target this session was opened for.
    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Runs `cmd`; every complete line of stdout/stderr goes to `output` as soon as it arrives (a final
    /// partial line too, `\r` trimmed, very long lines split at 64 KiB). Cancelling `cancel` or dropping
    /// the future ends it promptly and kills the remote command.
    pub async fn exec(
        &self,
        cmd: &Command,
        output: &(dyn Fn(Stream, String) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<Exit, SshError> {
        if let Some((name, _)) = cmd.env.iter().find(|(name, _)| !script::is_env_name(name)) {
            return Err(SshError::Protocol(format!(
                "`{name}` is not a valid environment variable name (use letters, digits and _)"
            )));
        }
        if self.inner.persistent.load(Ordering::SeqCst)
            && let Some(shell) = self.executor(cmd.become_, cancel).await?
        {
            return shell.run(cmd, output, cancel, |what| self.lost(what)).await;
        }
        let (command, mut stdin) = if cmd.become_ {
            let mode = self.become_mode(cancel).await?;
            if mode == Become::Password {
                self.check_sudo_password(cancel).await?;
            }
            let root = self.root_shell(Some(mode), false)?;
            (root.command, root.password)
        } else {
            ("sh -s", Vec::new())
        };
        stdin.extend_from_slice(script::wrap(&cmd.script, &cmd.env).as_bytes());
        self.run(command, stdin, false, output, cancel).await
    }

    /// How to start a root `sh -s`: the one place the sudo command is chosen, for the persistent
    /// root shell that runs every become job (`persistent`) and for one command in a channel of
    /// its own. `mode` None (not found out yet) is only for the persistent shell, whose own sudo
    /// finds out (see [`executor::ShellOptions::sudo_prompt`]); there a missing password is no
    /// error until sudo asks for one.
    fn root_shell(&self, mode: Option<Become>, persistent: bool) -> Result<RootShell, SshError> {
        let line = |password: &Secret| {
            let mut line = password.expose().as_bytes().to_vec();
            line.push(b'\n');
            line
        };
        let plain = |command| RootShell {
            command,
            password: Vec::new(),
            sudo_prompt: None,
        };
        Ok(match mode {
            Some(Become::Root) => plain("sh -s"),
            Some(Become::NoPassword) => plain("sudo -n -- sh -s"),
            Some(Become::Password) | None if persistent => RootShell {
                command: SUDO_SHELL,
                password: match self.sudo_password() {
                    Ok(password) => line(password),
                    Err(none) if mode.is_some() => return Err(none),
                    Err(_) => Vec::new(),
                },
                sudo_prompt: Some(SUDO_PROMPT),
            },
            // -k: sudo always asks, so the first line is always taken as the password (never run).
            Some(Become::Password) | None => RootShell {
                command: "sudo -k -S -p '' -- sh -s",
                password: line(self.sudo_password()?),
                sudo_prompt: None,
            },
        })
    }

    /// Asks the node's sshd to listen on `address:port` on the node (e.g. `127.0.0.1`) and to send
    /// every connection there back over this connection to `service` (like `ssh -R`). Connections
    /// stay possible until the session closes. The node's sshd must allow it (`AllowTcpForwarding`
    /// `yes` or `remote`, its default) and the port must be free on the node.
    pub async fn forward_remote(&self, address: &str, port: u16, service: ForwardService) -> Result<(), SshError> {
        let t = &self.inner.target;
        self.inner.forwards.insert(u32::from(port), service);
        match self.inner.handle.tcpip_forward(address, u32::from(port)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.inner.forwards.remove(u32::from(port));
                Err(match e {
                    russh::Error::RequestDenied => SshError::Forward(format!(
                        "{} refused to forward {address}:{port} back to kubeboot — check that its sshd_config allows it \
                         (AllowTcpForwarding yes or remote; DisableForwarding no) and that nothing else listens on port {port} there",
                        t.node
                    )),
                    _ => self.lost("while asking for a port forward"),
                })
            }
        }
    }

    /// Closes the connection. Each shell on the node is told to end first and given a moment to
    /// remove its folder (it would on its own once the connection is gone; this makes it certain
    /// before kubeboot exits).
    pub async fn close(&self) {
        let mut shells = Vec::new();
        for slot in self.inner.executors.iter().chain([&self.inner.files_shell]) {
            if let Some(shell) = slot.lock().await.take() {
                shells.push(shell);
            }
        }
        futures::future::join_all(shells.iter().map(|s| s.close(Duration::from_secs(3)))).await;
        drop(shells);
        let _ = self
            .inner
            .handle
            .disconnect(russh::Disconnect::ByApplication, "kubeboot is done", "en")
            .await;
    }

    /// The persistent shell for the login user or root, started when needed; None when the node
    /// cannot host one (then every command gets its own channel).
    async fn executor(
        &self,
        become_: bool,
        cancel: &CancellationToken,
    ) -> Result<Option<Arc<executor::Executor>>, SshError> {
        let mut slot = self.inner.executors[usize::from(become_)].lock().await;
        if let Some(shell) = slot.as_ref()
            && shell.is_alive()
        {
            return Ok(Some(shell.clone()));
        }
        // The first time, no probe: the root shell's own sudo finds out whether it needs the password
        // (it prompts; see `ShellOptions::sudo_prompt`) and checks it. Only a sudo that fails without
        // asking (none on the node, say) sends this to the probe, and then the way it says.
        let probed = self.inner.become_mode.get().copied();
        let RootShell {
            command,
            password: prefix,
            sudo_prompt,
        } = if become_ {
            self.root_shell(probed, true)?
        } else {
            RootShell {
                command: "sh -s",
                password: Vec::new(),
                sudo_prompt: None,
            }
        };
        let permit = tokio::select! {
            p = self.inner.channels.clone().acquire_owned() => p.map_err(|_| self.lost("(session closed)"))?,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        let options = executor::ShellOptions {
            beat: self.inner.target.keepalive,
            need_setsid: true,
            sudo_prompt,
        };
        let start = executor::Executor::start(&self.inner.handle, permit, command, prefix, options, |w| self.lost(w));
        let started = tokio::select! {
            r = tokio::time::timeout(self.inner.target.connect_timeout, start) => r,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        // A shell that does not come up in time is treated like one the node cannot host.
        let started = started.unwrap_or(Err(executor::StartError::Unsupported));
        match started {
            Ok(shell) => {
                if sudo_prompt.is_some() {
                    let asked = shell.sudo_asked();
                    let _ = self
                        .inner
                        .become_mode
                        .set(if asked { Become::Password } else { Become::NoPassword });
                    if asked {
                        let _ = self.inner.sudo_checked.set(());
                    }
                }
                let shell = Arc::new(shell);
                *slot = Some(shell.clone());
                Ok(Some(shell))
            }
            Err(executor::StartError::Unsupported) => {
                self.inner.persistent.store(false, Ordering::SeqCst);
                Ok(None)
            }
            Err(executor::StartError::SudoRefused { asked: true, .. }) if self.sudo_password().is_err() => {
                self.sudo_password().map(|_| None) // asked for a password there is none of: that error
            }
            Err(executor::StartError::SudoRefused { asked: false, .. }) if probed.is_none() => {
                drop(slot);
                self.become_mode(cancel).await?;
                Box::pin(self.executor(become_, cancel)).await
            }
            Err(executor::StartError::SudoRefused { errors, .. }) => Err(self.sudo_refused(&errors)),
            Err(executor::StartError::Ssh(e)) => Err(e),
        }
    }

    /// A folder private to the login user for uploads in transit: the login shell's own folder, or
    /// when the node runs no persistent shell, that of a shell started only to hold one. Either way
    /// it goes away with its shell, however the session ends.
    async fn files_dir(&self, cancel: &CancellationToken) -> Result<String, SshError> {
        if self.inner.persistent.load(Ordering::SeqCst)
            && let Some(shell) = self.executor(false, cancel).await?
        {
            return Ok(shell.dir().to_string());
        }
        let mut slot = self.inner.files_shell.lock().await;
        if let Some(shell) = slot.as_ref()
            && shell.is_alive()
        {
            return Ok(shell.dir().to_string());
        }
        let permit = tokio::select! {
            p = self.inner.channels.clone().acquire_owned() => p.map_err(|_| self.lost("(session closed)"))?,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        let options = executor::ShellOptions {
            beat: self.inner.target.keepalive,
            need_setsid: false,
            sudo_prompt: None,
        };
        let start = executor::Executor::start(&self.inner.handle, permit, "sh -s", Vec::new(), options, |w| {
            self.lost(w)
        });
        let started = tokio::select! {
            r = tokio::time::timeout(self.inner.target.connect_timeout, start) => r,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        match started {
            Ok(Ok(shell)) => {
                let dir = shell.dir().to_string();
                *slot = Some(Arc::new(shell));
                Ok(dir)
            }
            Ok(Err(executor::StartError::Ssh(e))) => Err(e),
            Ok(Err(executor::StartError::Unsupported | executor::StartError::SudoRefused { .. })) | Err(_) => {
                Err(SshError::Upload {
                    dest: String::new(),
                    reason: format!(
                        "cannot make a temporary folder on {} — check /tmp (or $TMPDIR) is writable and not full, and that mktemp is installed",
                        self.inner.target.node
                    ),
                })
            }
        }
    }

    fn sudo_password(&self) -> Result<&Secret, SshError> {
        let t = &self.inner.target;
        t.sudo_password.as_ref().or(t.password.as_ref()).ok_or_else(|| {
            SshError::Sudo(SudoError::NoPassword {
                node: t.node.clone(),
                user: t.user.clone(),
            })
        })
    }

    /// Finds out once how to become root: already root, sudo without password, or sudo with one.
    /// The password itself is checked by the first sudo that uses it: the root shell's start, or
    /// [`Self::check_sudo_password`] before a command in its own channel.
    async fn become_mode(&self, cancel: &CancellationToken) -> Result<Become, SshError> {
        self.inner
            .become_mode
            .get_or_try_init(|| async {
                let probe = script::wrap(
                    "id -u; if sudo -k -n true >/dev/null 2>&1; then echo nopasswd; else echo password; fi",
                    &[],
                );
                let lines = Mutex::new(Vec::new());
                let collect = |s: Stream, l: String| {
                    if s == Stream::Stdout
                        && let Ok(mut v) = lines.lock()
                    {
                        v.push(l);
                    }
                };
                self.run("sh -s", probe.into_bytes(), false, &collect, cancel).await?;
                let lines = lines.into_inner().unwrap_or_default();
                if lines.first().map(String::as_str) == Some("0") {
                    return Ok(Become::Root);
                }
                if lines.get(1).map(String::as_str) == Some("nopasswd") {
                    return Ok(Become::NoPassword);
                }
                self.sudo_password()?;
                Ok(Become::Password)
            })
            .await
            .copied()
    }

    /// Checks the sudo password once, so a wrong one is one clear error instead of a failure in
    /// every task.
    async fn check_sudo_password(&self, cancel: &CancellationToken) -> Result<(), SshError> {
        self.inner
            .sudo_checked
            .get_or_try_init(|| async {
                let mut stdin = self.sudo_password()?.expose().as_bytes().to_vec();
                stdin.push(b'\n');
                let errors = Mutex::new(Vec::new());
                let collect = |s: Stream, l: String| {
                    if s == Stream::Stderr
                        && let Ok(mut v) = errors.lock()
                    {
                        v.push(l);
                    }
                };
                let exit = self.run("sudo -k -S -p '' true", stdin, true, &collect, cancel).await?;
                if exit.success() {
                    return Ok(());
                }
                Err(self.sudo_refused(&errors.into_inner().unwrap_or_default().join(" ")))
            })
            .await
            .copied()
    }

    /// The error for a sudo that did not take the password, from what it wrote to stderr.
    fn sudo_refused(&self, errors: &str) -> SshError {
        let t = &self.inner.target;
        let (node, user) = (t.node.clone(), t.user.clone());
        if errors.contains("not in the sudoers") || errors.contains("not allowed") {
            return SshError::Sudo(SudoError::NotAllowed { node, user });
        }
        SshError::Sudo(SudoError::Refused { node, user })
    }

    fn lost(&self, what: &str) -> SshError {
        let t = &self.inner.target;
        let why = if self.inner.keepalive_timed_out.load(Ordering::SeqCst) {
            format!(
                ": the node stopped answering (nothing from it for {}: keepalives every {} went unanswered)",
                humantime::format_duration(t.keepalive * 3),
                humantime::format_duration(t.keepalive)
            )
        } else {
            String::new()
        };
        SshError::ConnectionLost(format!(
            "connection to {} ({}) was lost {what}{why}",
            t.node,
            t.host_port()
        ))
    }

    /// Runs `command` on a new channel with `stdin`, streaming its output. `eof` closes stdin after it;
    /// commands run through [`script::wrap`] must keep it open, their watchdog kills them on EOF.
    async fn run(
        &self,
        command: &str,
        stdin: Vec<u8>,
        eof: bool,
        output: &(dyn Fn(Stream, String) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<Exit, SshError> {
        let _permit = tokio::select! {
            permit = self.inner.channels.acquire() => permit.map_err(|_| self.lost("(session closed)"))?,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        if self.inner.handle.is_closed() {
            return Err(self.lost("before the command could start"));
        }
        let channel = tokio::select! {
            c = self.inner.handle.channel_open_session() => c.map_err(|_| self.lost("while opening a channel"))?,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        let (read, write) = channel.split();
        let mut guard = CloseOnDrop(Some(write));
        let Some(write) = guard.0.as_ref() else {
            return Err(SshError::Protocol("channel already closed".into()));
        };
        write
            .exec(true, command)
            .await
            .map_err(|_| self.lost("while starting a command"))?;
        write
            .data_bytes(stdin)
            .await
            .map_err(|_| self.lost("while sending a command"))?;
        if eof {
            write.eof().await.map_err(|_| self.lost("while sending a command"))?;
        }

        let mut out = LineBuffer::default();
        let mut err = LineBuffer::default();
        let messages = futures::stream::unfold(read, |mut r| async move { r.wait().await.map(|m| (m, r)) });
        let followed = follow::follow(messages, cancel, |msg| match msg {
            ChannelMsg::Data { data } => {
                out.push(&data, &mut |l| output(Stream::Stdout, l));
                Step::More
            }
            ChannelMsg::ExtendedData { data, .. } => {
                err.push(&data, &mut |l| output(Stream::Stderr, l));
                Step::More
            }
            ChannelMsg::ExitStatus { exit_status } => Step::Exit(Exit::Code(exit_status as i32)),
            ChannelMsg::ExitSignal { signal_name, .. } => Step::Exit(Exit::Signal(signal_name_of(&signal_name))),
            ChannelMsg::Failure => Step::Fail(SshError::Protocol(format!(
                "{} refused to run a command (exec request failed) — check its sshd allows sessions for {}",
                self.inner.target.node, self.inner.target.user
            ))),
            ChannelMsg::Close => Step::Closed,
            _ => Step::More,
        })
        .await;
        let exit = match followed {
            Followed::Cancelled => {
                // Dropping the guard sends EOF and closes the channel: the watchdog kills the command.
                drop(guard);
                return Err(SshError::Cancelled);
            }
            Followed::Failed(e) => return Err(e),
            Followed::Ended { exit, closed } => {
                if closed {
                    guard.0 = None;
                }
                exit
            }
        };
        out.finish(&mut |l| output(Stream::Stdout, l));
        err.finish(&mut |l| output(Stream::Stderr, l));
        exit.ok_or_else(|| self.lost("while a command ran"))
    }
}

/// Sends EOF and closes the channel when dropped, unless disarmed: dropping the future of a running
/// command must still kill it (the remote watchdog acts on EOF).
struct CloseOnDrop(Option<russh::ChannelWriteHalf<russh::client::Msg>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(write) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = write.eof().await;
                let _ = write.close().await;
            });
        }
    }
}

fn signal_name_of(sig: &russh::Sig) -> String {
    let debug = format!("{sig:?}");
    match debug.strip_prefix("Custom(\"").and_then(|s| s.strip_suffix("\")")) {
        Some(name) => name.to_string(),
        None => debug,
    }
}

fn connect_error(target: &Target, e: russh::Error, seen: Option<(Verdict, String)>) -> SshError {
    let host = target.host_port();
    let known_hosts = target.known_hosts.display().to_string();
    match seen {
        Some((Verdict::Changed { line }, fingerprint)) => SshError::HostKeyChanged {
            host,
            path: known_hosts,
            line,
            fingerprint,
        },
        Some((Verdict::Unknown, fingerprint)) => SshError::HostKeyUnknown {
            host,
            fingerprint,
            known_hosts,
        },
        Some((Verdict::Broken(reason), _)) => {
            SshError::Protocol(format!("cannot check the host key of {host}: {reason}"))
        }
        Some((Verdict::Certificate, _)) => SshError::Protocol(format!(
            "{host} presented a host certificate; kubeboot checks plain host keys only — configure a plain host key"
        )),
        _ => match e {
            russh::Error::IO(source) => SshError::Connect {
                host: target.host.clone(),
                port: target.port,
                source,
            },
            other => SshError::Protocol(format!(
                "SSH handshake with {host} failed: {other} — check that an SSH server listens there"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_shell_command_uses_the_prompt_and_says_the_ok_line() {
        assert!(SUDO_SHELL.contains(&format!("-p '{SUDO_PROMPT}'")));
        assert!(SUDO_SHELL.contains(&format!("echo {}; exec sh -s", executor::SUDO_OK)));
    }
}
