//! A session's persistent shells (see [`executor`]): the login user's and root's, started when
//! first needed and again if one ends, and the folder for uploads in transit.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::sudo::{Become, RootShell};
use super::{Session, SshError, executor};

impl Session {
    /// The persistent shell for the login user or root, started when needed; None when the node
    /// cannot host one (then every command gets its own channel).
    pub(super) async fn executor(
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
        let helper = self.inner.target.node_helper && !self.inner.no_helper.load(Ordering::SeqCst);
        let options = executor::ShellOptions {
            beat: self.inner.target.keepalive,
            need_setsid: true,
            sudo_prompt,
            helper,
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
                if helper && !shell.runs_helper() {
                    self.inner.no_helper.store(true, Ordering::SeqCst);
                    tracing::info!(
                        node = %self.inner.target.node,
                        "kubeboot-node does not run there (another architecture, an older C library, or a cache \
                         folder it cannot write or run from): the shell runs the jobs"
                    );
                }
                tracing::debug!(node = %self.inner.target.node, root = become_, helper = shell.runs_helper(), "persistent shell started");
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
    pub(super) async fn files_dir(&self, cancel: &CancellationToken) -> Result<String, SshError> {
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
            helper: false,
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
}
