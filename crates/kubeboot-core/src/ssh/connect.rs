//! Opening a session: connect, check the host key, log in; and the error for a connection that
//! did not get that far.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, Semaphore};

use super::host_key::{Client, Verdict};
use super::{Inner, MAX_CHANNELS, Session, SshError, Target, auth, forward};

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
                no_helper: AtomicBool::new(false),
            }),
        })
    }
}

pub(super) fn connect_error(target: &Target, e: russh::Error, seen: Option<(Verdict, String)>) -> SshError {
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
