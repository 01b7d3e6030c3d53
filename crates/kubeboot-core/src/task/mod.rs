//! Task kinds: what one task does (`run`, `copy`, `wait`, `http`, `s3_buckets`, `fetch`), one file each.
//!
//! A kind is a type that implements [`Kind`]: it reads its own playbook key, renders itself for one
//! node, feeds its fingerprint (resume), describes itself for `kubeboot plan`, and runs. Everything
//! around a task that is the same for every kind (name, `when`, `unless`, `env`, `become`, retries,
//! timeouts, resume, events) lives in the playbook loader, the plan and the engine, not here.
//!
//! # Adding a kind
//!
//! 1. Write `task/<kind>.rs`: the rendered type the plan holds (its fields are what the task does on
//!    one node), its playbook form (`Kind::Def`, templates not yet rendered) and `impl Kind`.
//!    `run.rs` is the smallest example, `http.rs` one that kubeboot runs itself on the jump host.
//! 2. Add one line to the [`kinds!`] list at the bottom of this file: the variant name and the type.
//!    The playbook loader then accepts the key, the plan renders and fingerprints it, `kubeboot plan`
//!    shows it and the engine runs it.
//! 3. Describe its keys in README.md and 운영가이드.md (the playbook format), and test it.
//!
//! Rendering goes through [`Render`] (the plan's template engine for this node), running through
//! [`RunCx`] (the node's SSH session, the vault, events, cancellation): a kind sees neither the
//! inventory loader nor the engine's scheduling.

pub mod copy;
pub mod fetch;
pub mod http;
pub mod run;
pub mod s3_buckets;
pub mod wait;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::diag::Diagnostic;
use crate::event::{Event, EventSink, Stream, TaskStatus};
use crate::inventory::Inventory;
use crate::secrets::Vault;
use crate::spanned::{Fields, Node, Reader};
use crate::ssh::{Command, Exit, Session, SshError};

pub use copy::{CopyDef, CopyFiles, FileCopy};
pub use fetch::{Fetch, FetchDef};
pub use http::{HttpCheck, HttpDef};
pub use run::Run;
pub use s3_buckets::{S3Buckets, S3BucketsDef};
pub use wait::{Wait, WaitDef};

/// Output lines kept per command to explain a failure.
const TAIL_LINES: usize = 20;

/// Indentation of a task's details under its line in `kubeboot plan --commands`.
pub const PAD: &str = "           ";

/// One kind of task: how it is written, rendered, shown and run. See the module header for how to add one.
pub trait Kind: Sized {
    /// Its key in a playbook task (`run:`, `copy:`, ...); also the first word of its fingerprint.
    const KEY: &'static str;
    /// True when kubeboot does it itself on the jump host (no SSH, so no `unless`/`env`/`become`).
    const ON_JUMP_HOST: bool = false;
    /// True when the engine can keep what the task printed (`register:`): only a script has a stdout to keep.
    const REGISTERS: bool = false;
    /// The task as written in the playbook, templates not yet rendered.
    type Def: std::fmt::Debug + Clone + PartialEq + Eq;

    /// Reads the value of the task's key; records where each templated field starts in `fields`
    /// (`<key>.<field>`), reports problems to the reader and returns None when the task cannot be used.
    fn parse(r: &mut Reader, v: &Node, fields: &mut Fields) -> Option<Self::Def>;

    /// The limit of one attempt when the task sets no `timeout`; None: no limit.
    fn default_timeout() -> Option<Duration> {
        None
    }

    /// The task's `interval:`, for a kind that takes one (`wait`).
    fn interval(_def: &mut Self::Def) -> Option<&mut Duration> {
        None
    }

    /// The task rendered for one node.
    fn render(def: &Self::Def, r: &mut dyn Render) -> Self;

    /// Feeds everything that decides what the task does into its fingerprint (after [`Kind::KEY`]).
    fn fingerprint(&self, put: &mut dyn FnMut(&[u8]));

    /// The lines under the task in `kubeboot plan --commands`, each starting with [`PAD`].
    fn describe(&self, out: &mut String);

    /// `(field, text)` that end up on the node's command line: a secret there is refused.
    fn command_line(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    /// `(field, text)` that end up in output, logs and the journal: a secret there is refused.
    fn shown(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    /// What is wrong with the rendered task, found at plan time (a task that will not run is not checked).
    fn problems(&self) -> Vec<Problem> {
        Vec::new()
    }

    /// Texts that secrets are filled into when the task is sent (credentials, file contents): the secrets
    /// they name must be read before the run.
    fn filled(&self) -> Vec<Cow<'_, str>> {
        Vec::new()
    }

    /// Does the task once; its status, or why this attempt failed.
    fn run(&self, cx: &RunCx<'_>) -> impl Future<Output = Result<TaskStatus, Failure>> + Send;
}

/// A problem with a rendered task, at the place of one of its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field (`http.url`, `fetch.dest`, ...) whose place the message points at.
    pub field: &'static str,
    pub message: String,
    pub hint: &'static str,
}

/// The plan's template engine for one node, as a kind renders itself through it.
pub trait Render {
    /// A template text of field `field` rendered; on a problem, the raw text (the problem is recorded).
    fn text(&mut self, raw: &str, field: &str) -> String;
    /// An asset file's text rendered as a template; None when it failed (recorded).
    fn asset(&mut self, text: &str, file: &Path) -> Option<String>;
    /// Where `copy.src` paths resolve.
    fn assets_dir(&self) -> &Path;
    /// A problem that is not in a template (an unreadable asset).
    fn problem(&mut self, d: Diagnostic);
}

/// What a kind may use while it runs on one node.
pub struct RunCx<'a> {
    pub node: &'a str,
    pub session: &'a Session,
    /// The task's environment, rendered (secrets still placeholders).
    pub env: &'a [(String, String)],
    pub become_: bool,
    /// The task's per-attempt limit (`timeout`).
    pub timeout: Option<Duration>,
    pub vault: &'a Vault,
    pub inventory: &'a Inventory,
    /// Where `fetch` tasks with a relative `dest` write (the state dir).
    pub fetch_root: &'a Path,
    pub cancel: &'a CancellationToken,
    pub events: &'a EventSink,
}

impl RunCx<'_> {
    /// One line of the task's output, shown like a command's stdout.
    pub fn output(&self, line: String) {
        // A frontend that went away must not stop the run.
        let _ = self.events.send(Event::Output {
            node: self.node.to_string(),
            stream: Stream::Stdout,
            line,
        });
    }

    /// A file's bytes with secrets filled in (text only; binary files are sent as they are).
    pub fn fill_bytes(&self, content: &[u8]) -> Vec<u8> {
        match std::str::from_utf8(content) {
            Ok(text) => self.vault.fill(text).into_bytes(),
            Err(_) => content.to_vec(),
        }
    }

    /// Runs a script of this task on the node; streams its output as events when `show` is set. Returns the
    /// exit and what explains a failure: the last error line, apart from the last output lines.
    pub async fn exec(&self, script: &str, show: bool, limit: Option<Duration>) -> Result<(Exit, Lines), Failure> {
        let command = Command {
            script: script.to_string(),
            env: self.env.iter().map(|(k, v)| (k.clone(), self.vault.fill(v))).collect(),
            become_: self.become_,
        };
        let tail = Mutex::new(VecDeque::with_capacity(TAIL_LINES));
        let last_error = Mutex::new(None);
        let output = |stream: Stream, line: String| {
            if stream == Stream::Stderr && !line.trim().is_empty() {
                *lock(&last_error) = Some(line.clone());
            }
            {
                let mut tail = lock(&tail);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
            }
            if show {
                let _ = self.events.send(Event::Output {
                    node: self.node.to_string(),
                    stream,
                    line,
                });
            }
        };
        let run = self.session.exec(&command, &output, self.cancel);
        let exit = match limit {
            // Dropping the exec future on timeout kills the remote command.
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .map_err(|_| Failure::Timeout(limit))??,
            None => run.await?,
        };
        let tail: Vec<String> = lock(&tail).drain(..).collect();
        // The two streams may arrive in any order (stdout comes in batches), so the error line is kept on its
        // own rather than looked for at the end of the output.
        let last_error = lock(&last_error).take();
        Ok((exit, Lines { tail, last_error }))
    }

    /// Runs a script of this task and keeps all of its stdout, not shown (it may be a file's content).
    /// Returns the exit, the stdout lines and the first stderr lines.
    pub async fn capture(&self, script: &str, limit: Option<Duration>) -> Result<(Exit, Vec<String>, Lines), Failure> {
        let command = Command {
            script: script.to_string(),
            // The task's `env` (a `run` that registers its output may need secrets there).
            env: self.env.iter().map(|(k, v)| (k.clone(), self.vault.fill(v))).collect(),
            become_: self.become_,
        };
        let stdout = Mutex::new(Vec::new());
        let stderr = Mutex::new(Vec::new());
        let output = |stream: Stream, line: String| match stream {
            Stream::Stdout => lock(&stdout).push(line),
            _ => {
                let mut e = lock(&stderr);
                if e.len() < TAIL_LINES {
                    e.push(line);
                }
            }
        };
        let run = self.session.exec(&command, &output, self.cancel);
        let exit = match limit {
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .map_err(|_| Failure::Timeout(limit))??,
            None => run.await?,
        };
        let out = std::mem::take(&mut *lock(&stdout));
        let tail: Vec<String> = std::mem::take(&mut *lock(&stderr));
        let last_error = tail.iter().rev().find(|l| !l.trim().is_empty()).cloned();
        Ok((exit, out, Lines { tail, last_error }))
    }

    /// Work kubeboot does itself on the jump host, within the task's limit (or `default`) and cancellation.
    pub async fn on_jump_host<E: std::fmt::Display>(
        &self,
        default: Duration,
        work: impl Future<Output = Result<TaskStatus, E>>,
    ) -> Result<TaskStatus, Failure> {
        let limit = self.timeout.unwrap_or(default);
        tokio::select! {
            result = tokio::time::timeout(limit, work) => match result {
                Ok(Ok(status)) => Ok(status),
                Ok(Err(e)) => Err(Failure::Other(e.to_string())),
                Err(_) => Err(Failure::Timeout(limit)),
            },
            _ = self.cancel.cancelled() => Err(Failure::Cancelled),
        }
    }
}

/// What a command left to explain a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    /// Its last lines, both streams, in arrival order.
    pub tail: Vec<String>,
    /// Its last non-empty stderr line: the reason a failure gives.
    pub last_error: Option<String>,
}

/// Why one attempt of a task failed.
#[derive(Debug)]
pub enum Failure {
    /// The command ended with this code; `error` is its last stderr line (never a line of its output).
    Exit {
        code: i32,
        error: Option<String>,
    },
    Signal(String),
    Timeout(Duration),
    Lost(String),
    Cancelled,
    Other(String),
}

impl Failure {
    /// One line for the operator: the exit code with the last error line, the signal, the limit...
    pub fn message(&self) -> String {
        match self {
            Failure::Exit { code, error } => match error {
                Some(line) => format!("exit code {code}: {}", line.trim()),
                None => format!("exit code {code} (nothing on stderr; the output is in the node's log)"),
            },
            Failure::Signal(sig) => format!("killed by signal {sig}"),
            Failure::Timeout(after) => format!(
                "timed out after {} (the command was stopped)",
                humantime::format_duration(*after)
            ),
            Failure::Lost(why) => why.clone(),
            Failure::Cancelled => "cancelled".into(),
            Failure::Other(why) => why.clone(),
        }
    }

    /// The command's exit code, when it ended with one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Failure::Exit { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<SshError> for Failure {
    fn from(e: SshError) -> Self {
        match e {
            SshError::Cancelled => Failure::Cancelled,
            SshError::ConnectionLost(_) => Failure::Lost(ssh_error_text(&e)),
            other => Failure::Other(ssh_error_text(&other)),
        }
    }
}

/// An SSH error as the operator reads it: what the SSH layer says happened, then what to change
/// where kubeboot got it from (the inventory key, the command-line flag, running again), which the
/// SSH layer does not know about.
pub fn ssh_error_text(e: &SshError) -> String {
    use crate::ssh::SudoError;
    let advice = match e {
        SshError::ConnectTimeout { .. } => ", or raise connect_timeout in the inventory",
        SshError::HostKeyChanged { .. } => {
            " and accept the new key explicitly (--accept-new-host-keys, or on the confirmation screen)"
        }
        SshError::HostKeyUnknown { .. } => {
            " or run with --accept-new-host-keys (or accept_new_host_keys = true in the inventory)"
        }
        SshError::Auth { .. } => " — check the user, key, agent or password in the inventory",
        SshError::KeyFile { encrypted: false, .. } => " — check the `key` path in the inventory",
        SshError::KeyFile {
            encrypted: true,
            agent_tried: false,
            ..
        } => " and set agent = true in the inventory",
        SshError::Sudo(SudoError::NoPassword { .. }) => {
            " — set sudo_password_env or sudo_password_file in the inventory"
        }
        SshError::Sudo(SudoError::Refused { .. }) => " — check sudo_password_env / sudo_password_file in the inventory",
        SshError::ConnectionLost(_) => " — check the node is up, then run again (finished tasks are skipped)",
        _ => "",
    };
    format!("{e}{advice}")
}

/// Ok for exit code 0, else the failure with the command's last error line.
pub fn check_exit(exit: Exit, lines: Lines) -> Result<(), Failure> {
    match exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(code) => Err(Failure::Exit {
            code,
            error: lines.last_error,
        }),
        Exit::Signal(sig) => Err(Failure::Signal(sig)),
    }
}

/// A multi-line text under a task: `first` before its first line, the others indented under it.
pub(crate) fn block(out: &mut String, first: &str, text: &str) {
    for (i, line) in text.lines().enumerate() {
        let lead = if i == 0 { first } else { "  " };
        out.push_str(&format!("{PAD}{lead}{line}\n"));
    }
}

/// A credential as the plan shows it: the secret it comes from, never a value written in the playbook.
pub(crate) fn credential(text: &str) -> String {
    match crate::secrets::referenced(text).as_slice() {
        [] => "****".into(),
        names => names
            .iter()
            .map(|n| format!("secrets.{n}"))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

/// A user name as the plan shows it: as written, with secret placeholders named.
pub(crate) fn user_name(text: &str) -> String {
    let mut out = text.to_string();
    for name in crate::secrets::referenced(text) {
        out = out.replace(&crate::secrets::placeholder(&name), &format!("secrets.{name}"));
    }
    out
}

/// A URL kubeboot requests itself must be an absolute http(s) URL; found at plan time rather than in the
/// middle of a run.
pub(crate) fn url_problems(field: &'static str, text: &str) -> Vec<Problem> {
    let message = match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => return Vec::new(),
        Ok(u) => format!("`{field}` must be an http:// or https:// URL, not {}://", u.scheme()),
        Err(e) => format!("`{field}` is not a URL ({e}): `{text}`"),
    };
    vec![Problem {
        field,
        message,
        hint: "write it whole, e.g. http://192.168.101.210/ or https://s3.example.lab",
    }]
}

/// Locks a mutex even if a panicking holder poisoned it (the data is still consistent here).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The registration: one line per kind makes [`ActionDef`] (as written) and [`Action`] (as rendered) and
/// dispatches every [`Kind`] method over them. The order is the order kinds are listed in messages.
macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident($kind:ty)),* $(,)?) => {
        /// What a task does, as written in a playbook (templates not yet rendered).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum ActionDef {
            $($(#[$doc])* $variant(<$kind as Kind>::Def),)*
        }

        /// What a planned task does, fully rendered for one node.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Action {
            $($(#[$doc])* $variant($kind),)*
        }

        /// Every kind's playbook key, in registration order.
        pub const KEYS: &[&str] = &[$(<$kind as Kind>::KEY),*];

        /// True when the kind with this key runs on the jump host.
        pub fn key_runs_on_jump_host(key: &str) -> bool {
            $(if key == <$kind as Kind>::KEY { return <$kind as Kind>::ON_JUMP_HOST; })*
            false
        }

        /// True when a task of the kind with this key can `register` what it printed.
        pub fn key_registers(key: &str) -> bool {
            $(if key == <$kind as Kind>::KEY { return <$kind as Kind>::REGISTERS; })*
            false
        }

        impl ActionDef {
            /// Reads the value of the task key `key` (one of [`KEYS`]).
            pub(crate) fn parse(key: &str, r: &mut Reader, v: &Node, fields: &mut Fields) -> Option<ActionDef> {
                $(if key == <$kind as Kind>::KEY {
                    return <$kind as Kind>::parse(r, v, fields).map(ActionDef::$variant);
                })*
                None
            }

            /// The playbook key.
            pub fn key(&self) -> &'static str {
                match self { $(ActionDef::$variant(_) => <$kind as Kind>::KEY,)* }
            }

            /// True for the kinds kubeboot runs itself on the jump host, not over SSH on the node.
            pub fn runs_on_jump_host(&self) -> bool {
                match self { $(ActionDef::$variant(_) => <$kind as Kind>::ON_JUMP_HOST,)* }
            }

            /// The limit of one attempt when the task sets no `timeout`.
            pub fn default_timeout(&self) -> Option<Duration> {
                match self { $(ActionDef::$variant(_) => <$kind as Kind>::default_timeout(),)* }
            }

            /// The task's `interval:`, for a kind that takes one.
            pub fn interval(&mut self) -> Option<&mut Duration> {
                match self { $(ActionDef::$variant(d) => <$kind as Kind>::interval(d),)* }
            }

            /// Rendered for one node.
            pub fn render(&self, r: &mut dyn Render) -> Action {
                match self { $(ActionDef::$variant(d) => Action::$variant(<$kind as Kind>::render(d, r)),)* }
            }
        }

        impl Action {
            /// The playbook key.
            pub fn key(&self) -> &'static str {
                match self { $(Action::$variant(_) => <$kind as Kind>::KEY,)* }
            }

            /// True when kubeboot does it itself on the jump host instead of on the node.
            pub fn runs_on_jump_host(&self) -> bool {
                match self { $(Action::$variant(_) => <$kind as Kind>::ON_JUMP_HOST,)* }
            }

            /// Feeds the kind's key and everything that decides what it does into a fingerprint.
            pub fn fingerprint(&self, put: &mut dyn FnMut(&[u8])) {
                put(self.key().as_bytes());
                match self { $(Action::$variant(k) => k.fingerprint(put),)* }
            }

            /// The lines under the task in `kubeboot plan --commands`.
            pub fn describe(&self, out: &mut String) {
                match self { $(Action::$variant(k) => k.describe(out),)* }
            }

            /// `(field, text)` that end up on the node's command line.
            pub fn command_line(&self) -> Vec<(&'static str, &str)> {
                match self { $(Action::$variant(k) => k.command_line(),)* }
            }

            /// `(field, text)` that end up in output, logs and the journal.
            pub fn shown(&self) -> Vec<(&'static str, &str)> {
                match self { $(Action::$variant(k) => k.shown(),)* }
            }

            /// What is wrong with the rendered task, found at plan time.
            pub fn problems(&self) -> Vec<Problem> {
                match self { $(Action::$variant(k) => k.problems(),)* }
            }

            /// Texts that secrets are filled into when the task is sent.
            pub fn filled(&self) -> Vec<Cow<'_, str>> {
                match self { $(Action::$variant(k) => k.filled(),)* }
            }

            /// Does the task once.
            pub async fn run(&self, cx: &RunCx<'_>) -> Result<TaskStatus, Failure> {
                match self { $(Action::$variant(k) => k.run(cx).await,)* }
            }
        }
    };
}

kinds! {
    /// Run a shell script on the node.
    Run(run::Run),
    /// Put files on the node.
    Copy(copy::CopyFiles),
    /// Run a command every `interval` until it exits 0.
    Wait(wait::Wait),
    /// A GET kubeboot sends itself, from the jump host.
    Http(http::HttpCheck),
    /// S3 buckets kubeboot makes sure exist, from the jump host.
    S3Buckets(s3_buckets::S3Buckets),
    /// A file copied from the node to the jump host (the reverse of `copy`).
    Fetch(fetch::Fetch),
}

#[cfg(test)]
mod ssh_error_tests {
    use super::ssh_error_text;
    use crate::ssh::{SshError, SudoError};

    #[test]
    fn the_ssh_layer_says_what_happened_and_the_advice_naming_settings_is_added_here() {
        let (node, user) = ("node-1".to_string(), "ops".to_string());
        let cases = [
            (
                SshError::ConnectTimeout {
                    host: "10.0.0.1".into(),
                    port: 22,
                    after: std::time::Duration::from_secs(15),
                },
                "connect_timeout",
            ),
            (
                SshError::HostKeyUnknown {
                    host: "10.0.0.1".into(),
                    fingerprint: "SHA256:x".into(),
                    known_hosts: "/k".into(),
                },
                "--accept-new-host-keys",
            ),
            (
                SshError::Auth {
                    user: user.clone(),
                    host: "10.0.0.1".into(),
                    tried: vec!["publickey"],
                },
                "in the inventory",
            ),
            (
                SshError::KeyFile {
                    path: "/k".into(),
                    reason: "no such file".into(),
                    encrypted: false,
                    agent_tried: false,
                },
                "the `key` path in the inventory",
            ),
            (
                SshError::KeyFile {
                    path: "/k".into(),
                    reason: "it is encrypted with a passphrase — load it into ssh-agent (ssh-add)".into(),
                    encrypted: true,
                    agent_tried: false,
                },
                "set agent = true",
            ),
            (
                SshError::Sudo(SudoError::NoPassword {
                    node: node.clone(),
                    user: user.clone(),
                }),
                "sudo_password_env or sudo_password_file",
            ),
            (
                SshError::Sudo(SudoError::Refused {
                    node: node.clone(),
                    user: user.clone(),
                }),
                "sudo_password_env / sudo_password_file",
            ),
            (
                SshError::ConnectionLost("connection to node-1 (10.0.0.1) was lost while a command ran".into()),
                "run again (finished tasks are skipped)",
            ),
        ];
        for (e, advice) in cases {
            let plain = e.to_string();
            assert!(!plain.contains(advice), "the SSH layer's own message: {plain}");
            let text = ssh_error_text(&e);
            assert!(text.starts_with(&plain) && text.contains(advice), "{text}");
        }
    }
}
