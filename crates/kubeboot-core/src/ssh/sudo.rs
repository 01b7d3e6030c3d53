//! Becoming root on a node: whether the login user is root, needs no password for sudo or needs
//! one; the one place the sudo command is chosen; checking the password once per session.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::{Session, SshError, SudoError, script};
use crate::event::Stream;
use crate::secrets::Secret;

/// The root shell with a sudo password: sudo's prompt (on stderr, counted to see a refused
/// password) and the command, which says [`executor::SUDO_OK`](super::executor::SUDO_OK) once sudo let it run.
const SUDO_PROMPT: &str = "[kubeboot: sudo asks]";
const SUDO_SHELL: &str = "sudo -k -S -p '[kubeboot: sudo asks]' -- sh -c 'echo kubeboot-sudo-ok; exec sh -s'";

/// How to start a shell as root ([`Session::root_shell`]).
pub(super) struct RootShell {
    pub(super) command: &'static str,
    /// The password line to send: first thing on stdin, or (with `sudo_prompt`) when sudo asks.
    pub(super) password: Vec<u8>,
    /// sudo's prompt, when the password goes out only once sudo asks for it.
    pub(super) sudo_prompt: Option<&'static str>,
}

/// How `become` works on this node, found out once per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Become {
    /// The login user is root: no sudo.
    Root,
    /// sudo needs no password (NOPASSWD).
    NoPassword,
    /// sudo needs the password; it is sent when sudo prompts for it.
    Password,
}

impl Session {
    /// How to start a root `sh -s`: the one place the sudo command is chosen, for the persistent
    /// root shell that runs every become job (`persistent`) and for one command in a channel of
    /// its own. `mode` None (not found out yet) is only for the persistent shell, whose own sudo
    /// finds out (see [`executor::ShellOptions::sudo_prompt`](super::executor::ShellOptions::sudo_prompt)); there a missing password is no
    /// error until sudo asks for one.
    pub(super) fn root_shell(&self, mode: Option<Become>, persistent: bool) -> Result<RootShell, SshError> {
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

    pub(super) fn sudo_password(&self) -> Result<&Secret, SshError> {
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
    pub(super) async fn become_mode(&self, cancel: &CancellationToken) -> Result<Become, SshError> {
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
    pub(super) async fn check_sudo_password(&self, cancel: &CancellationToken) -> Result<(), SshError> {
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
    pub(super) fn sudo_refused(&self, errors: &str) -> SshError {
        let t = &self.inner.target;
        let (node, user) = (t.node.clone(), t.user.clone());
        if errors.contains("not in the sudoers") || errors.contains("not allowed") {
            return SshError::Sudo(SudoError::NotAllowed { node, user });
        }
        SshError::Sudo(SudoError::Refused { node, user })
    }
}

#[cfg(test)]
mod tests {
    use super::super::executor;
    use super::*;

    #[test]
    fn the_root_shell_command_uses_the_prompt_and_says_the_ok_line() {
        assert!(SUDO_SHELL.contains(&format!("-p '{SUDO_PROMPT}'")));
        assert!(SUDO_SHELL.contains(&format!("echo {}; exec sh -s", executor::SUDO_OK)));
    }
}
