//! SSH: connect, authenticate, verify host keys, run commands with streamed output, sudo, upload.
//!
//! One [`Session`] is one SSH connection to one node, reused for every task on it. Commands run
//! as `sh -s` with the script on stdin (see [`script`]), so neither scripts nor secrets ever show
//! up in the node's process list.
//!
//! This file has what a session is and runs a command with; each other job has its file:
//! opening a session (`connect.rs`), host keys (`host_key.rs`), login (`auth.rs`), becoming root
//! (`sudo.rs`), the persistent shells (`shells.rs`, `executor.rs`), a command in a channel of its
//! own (`channel.rs`), following a running command (`follow.rs`), uploads (`upload.rs`), port
//! forwards (`forward.rs`), the errors (`error.rs`).

mod auth;
mod channel;
mod connect;
mod error;
mod executor;
mod follow;
mod forward;
mod host_key;
mod node_helper;
mod script;
mod shells;
mod sudo;
mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use russh::client::Handle;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::event::Stream;
use crate::secrets::Secret;
pub use error::{SshError, SudoError};
pub use forward::{ForwardService, ForwardedStream};
pub(crate) use host_key::Client;
pub use host_key::{HostKeyState, NewHostKeys, probe_host_key};
pub(crate) use script::quote;
use sudo::Become;

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
    /// The persistent shell hands its jobs to the node helper (see [`node_helper`]), copied to the
    /// node once, where it can run: one fork and one exec per job instead of the shell's job
    /// wrapper. Off, or where it cannot run: the shell runs them.
    pub node_helper: bool,
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
    /// Set once the node helper turned out not to run on this node: later shells do not try.
    no_helper: AtomicBool,
}

impl Session {
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
        if let Some((name, _)) = cmd.env.iter().find(|(_, value)| value.contains('\0')) {
            return Err(SshError::Protocol(format!(
                "the value of `{name}` holds a NUL byte, which no environment variable can hold"
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
}
