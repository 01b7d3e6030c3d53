//! Host key checking against a known_hosts file, inside russh's handshake.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate, known_hosts};

use super::forward::Forwards;

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
