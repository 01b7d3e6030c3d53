//! The SSH layer's errors: what happened, and what to do about it as far as SSH goes.

use std::time::Duration;

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
