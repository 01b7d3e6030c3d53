//! Host key checking against a known_hosts file, inside russh's handshake.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate, known_hosts};

use super::connect::connect_error;
use super::forward::{self, Forwards};
use super::{SshError, Target};

/// What the SSH layer does with a host key it has never seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NewHostKeys {
    /// Refuse the node and show the key's fingerprint (the default).
    #[default]
    Refuse,
    /// Accept it and record it in `known_hosts`. A *changed* key is refused whatever this says.
    Accept,
}

/// What the check found, kept so `connect` can turn russh's bare "key rejected" into a useful error.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Known,
    Learned,
    Changed {
        line: usize,
    },
    Unknown,
    /// The file could not be read or written.
    Broken(String),
    Certificate,
}

/// The russh client handler: checks the server's key and remembers what it saw.
pub(crate) struct Client {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) known_hosts: PathBuf,
    pub(crate) policy: NewHostKeys,
    /// `(verdict, SHA256 fingerprint)` once the server's key was seen.
    pub(crate) seen: Arc<Mutex<Option<(Verdict, String)>>>,
    /// Set when russh gave up on the connection because keepalives went unanswered, so the
    /// "connection lost" error can say the node stopped answering rather than just "lost".
    pub(crate) keepalive_timed_out: Arc<AtomicBool>,
    /// Only look at the key: end the handshake right after it, whatever the verdict.
    pub(crate) probe_only: bool,
    /// The services of the ports this connection asked the node to forward back (see [`super::forward`]).
    pub(crate) forwards: Forwards,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let (verdict, fingerprint) = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => (self.verdict(key), fingerprint(key)),
            PublicKeyOrCertificate::Certificate(cert) => (
                Verdict::Certificate,
                cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
            ),
        };
        let accept = !self.probe_only && matches!(verdict, Verdict::Known | Verdict::Learned);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((verdict, fingerprint));
        }
        Ok(accept)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<russh::client::Msg>,
        _connected_address: &str,
        connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        self.forwards.open(channel, connected_port, reply).await;
        Ok(())
    }

    async fn disconnected(&mut self, reason: russh::client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        // As russh's default, plus remembering a keepalive timeout.
        match reason {
            russh::client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            russh::client::DisconnectReason::Error(e) => {
                if matches!(e, russh::Error::KeepaliveTimeout) {
                    self.keepalive_timed_out.store(true, Ordering::SeqCst);
                }
                Err(e)
            }
        }
    }
}

impl Client {
    fn verdict(&self, key: &PublicKey) -> Verdict {
        match known_hosts::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Verdict::Known,
            Err(russh::keys::Error::KeyChanged { line }) => Verdict::Changed { line },
            Err(e) => Verdict::Broken(format!("cannot read {}: {e}", self.known_hosts.display())),
            Ok(false) => match self.policy {
                NewHostKeys::Refuse => Verdict::Unknown,
                NewHostKeys::Accept => match self.learn(key) {
                    Ok(()) => Verdict::Learned,
                    Err(e) => Verdict::Broken(format!("cannot record the key in {}: {e}", self.known_hosts.display())),
                },
            },
        }
    }

    /// Records the key. russh's helper starts an empty file with a blank line, so a new file is written here.
    fn learn(&self, key: &PublicKey) -> Result<(), Box<dyn std::error::Error>> {
        let empty = std::fs::metadata(&self.known_hosts)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        if !empty {
            return Ok(known_hosts::learn_known_hosts_path(
                &self.host,
                self.port,
                key,
                &self.known_hosts,
            )?);
        }
        if let Some(parent) = self.known_hosts.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let host = if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        };
        // Appended, not written whole: nodes accepted together learn their keys at the same time.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.known_hosts)?;
        std::io::Write::write_all(&mut file, format!("{host} {}\n", key.to_openssh()?).as_bytes())?;
        Ok(())
    }
}

/// `SHA256:...`, as `ssh-keygen -l` shows it.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
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
