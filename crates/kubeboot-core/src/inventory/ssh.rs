//! `[ssh]` and a node's own SSH keys: how kubeboot connects, with the built-in defaults under both, and
//! secrets (passwords) that are only ever named, never written in the inventory.

use std::path::PathBuf;
use std::time::Duration;

use super::load::{Loader, home, resolve_path};
use super::model::{SecretSource, SshSettings};
use crate::spanned::Node;

/// The SSH keys of `[ssh]`, which a `[[nodes]]` entry may also set for itself.
pub(super) const SSH_KEYS: &[&str] = &[
    "user",
    "port",
    "key",
    "agent",
    "password_env",
    "password_file",
    "sudo_password_env",
    "sudo_password_file",
    "known_hosts",
    "accept_new_host_keys",
    "connect_timeout",
    "keepalive",
    "persistent_shell",
    "node_helper",
];
/// Keys refused with a message of their own (a secret written in the file), not as unknown keys.
pub(super) const SECRET_KEYS: &[&str] = &["password", "sudo_password"];
const SECRET_HINT: &str = "keep secrets out of the inventory: use `password_env = \"VAR\"` (an environment variable) \
                           or `password_file = \"path\"` (a file readable only by you)";

/// SSH settings as written in `[ssh]` or a node, before defaults apply.
#[derive(Default, Clone)]
pub(super) struct SshPartial {
    user: Option<String>,
    port: Option<u16>,
    key: Option<PathBuf>,
    agent: Option<bool>,
    password: Option<SecretSource>,
    sudo_password: Option<SecretSource>,
    known_hosts: Option<PathBuf>,
    accept_new_host_keys: Option<bool>,
    connect_timeout: Option<Duration>,
    keepalive: Option<Duration>,
    persistent_shell: Option<bool>,
    node_helper: Option<bool>,
}

impl SshPartial {
    /// `self` (a node's settings) over `defaults` (`[ssh]`), then the built-in defaults.
    pub(super) fn merged(&self, defaults: &SshPartial) -> SshSettings {
        let home = home();
        SshSettings {
            user: self
                .user
                .clone()
                .or_else(|| defaults.user.clone())
                .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "root".into())),
            port: self.port.or(defaults.port).unwrap_or(22),
            key: self.key.clone().or_else(|| defaults.key.clone()),
            agent: self.agent.or(defaults.agent).unwrap_or(true),
            password: self.password.clone().or_else(|| defaults.password.clone()),
            sudo_password: self.sudo_password.clone().or_else(|| defaults.sudo_password.clone()),
            known_hosts: self
                .known_hosts
                .clone()
                .or_else(|| defaults.known_hosts.clone())
                .unwrap_or_else(|| home.join(".ssh/known_hosts")),
            accept_new_host_keys: self
                .accept_new_host_keys
                .or(defaults.accept_new_host_keys)
                .unwrap_or(false),
            connect_timeout: self
                .connect_timeout
                .or(defaults.connect_timeout)
                .unwrap_or(Duration::from_secs(15)),
            keepalive: self.keepalive.or(defaults.keepalive).unwrap_or(Duration::from_secs(10)),
            persistent_shell: self.persistent_shell.or(defaults.persistent_shell).unwrap_or(true),
            node_helper: self.node_helper.or(defaults.node_helper).unwrap_or(true),
        }
    }
}

impl Loader<'_> {
    /// The SSH keys of a table (`[ssh]` or a node entry); the table's other keys are checked by the caller.
    pub(super) fn ssh(&mut self, table: &Node) -> SshPartial {
        let user = self.string_in(table, "user").map(|(u, _)| u);
        SshPartial {
            user,
            port: self.port_in(table, "port", "the SSH port is usually 22"),
            key: self.path(table, "key"),
            agent: self.boolean_in(table, "agent"),
            password: self.secret_source(table, "password"),
            sudo_password: self.secret_source(table, "sudo_password"),
            known_hosts: self.path(table, "known_hosts"),
            accept_new_host_keys: self.boolean_in(table, "accept_new_host_keys"),
            connect_timeout: self.duration_in(table, "connect_timeout"),
            keepalive: self.duration_in(table, "keepalive"),
            persistent_shell: self.boolean_in(table, "persistent_shell"),
            node_helper: self.boolean_in(table, "node_helper"),
        }
    }

    /// A secret given as `<prefix>_env` or `<prefix>_file`; a plain `<prefix>` is refused.
    pub(super) fn secret_source(&mut self, table: &Node, prefix: &str) -> Option<SecretSource> {
        if let Some((k, _)) = table.entry(prefix) {
            self.error(
                k,
                format!("`{prefix}` would put a secret in the inventory file; it is refused"),
                SECRET_HINT.replace("password", prefix),
            );
        }
        let env_key = format!("{prefix}_env");
        let file_key = format!("{prefix}_file");
        let env = self.string_in(table, &env_key);
        let file = self.string_in(table, &file_key);
        match (env, file) {
            (Some((_, at)), Some(_)) => {
                self.error(
                    at,
                    format!("both `{env_key}` and `{file_key}` are set"),
                    "keep only one of them",
                );
                None
            }
            (Some((var, at)), None) => {
                if var.is_empty() {
                    self.error(at, format!("`{env_key}` is empty"), "name an environment variable");
                }
                Some(SecretSource::Env(var))
            }
            (None, Some((path, _))) => Some(SecretSource::File(resolve_path(self.base, &path))),
            (None, None) => None,
        }
    }
}
