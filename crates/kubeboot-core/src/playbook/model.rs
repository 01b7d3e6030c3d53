//! Playbooks as kubeboot uses them after loading and validation.
//!
//! One file is one [`Stage`]; stages run in file-name order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A place in a playbook file, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

/// Which nodes a stage runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    /// Every node.
    All,
    /// Each entry: `central`, `edge`, a cluster name or a node name.
    Select(Vec<String>),
}

/// What a task does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionDef {
    /// A shell command (a template).
    Run(String),
    /// A file from `assets/` (or inline content) put on the node.
    Copy(CopyDef),
    /// Poll a command until it exits 0 (or the task's timeout passes).
    Wait(WaitDef),
    /// An HTTP GET that kubeboot sends itself, from the jump host.
    Http(HttpDef),
    /// S3 buckets that kubeboot makes sure exist, from the jump host.
    S3Buckets(S3BucketsDef),
    /// A file copied from the node to the jump host (the reverse of `copy`).
    Fetch(FetchDef),
}

impl ActionDef {
    /// True for the kinds kubeboot runs itself on the jump host, not over SSH on the node.
    pub fn runs_on_jump_host(&self) -> bool {
        matches!(self, ActionDef::Http(_) | ActionDef::S3Buckets(_))
    }
}

/// A `copy:` task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyDef {
    /// Path under the assets folder, a file or a folder (copied whole, `dest` is then a folder);
    /// exactly one of `src` and `content` is set.
    pub src: Option<String>,
    /// Inline content (a template).
    pub content: Option<String>,
    /// Destination path on the node (a template).
    pub dest: String,
    /// File mode, e.g. 0o644. Default 0o644.
    pub mode: u32,
    /// `user` or `user:group` (needs `become`).
    pub owner: Option<String>,
    /// Render `src` through the template engine. Default false for `src`, always for `content`.
    pub template: bool,
}

/// A `fetch:` task: one file read on the node (with `become`, as root) and written on the jump host, 0600.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchDef {
    /// Absolute path of the file on the node (a template).
    pub src: String,
    /// Where it goes on the jump host (a template): relative paths are under the state dir, absolute ones as written.
    pub dest: String,
    /// Replace a file already at `dest`. Default false: an existing file with other content is never overwritten
    /// (backups), the same content counts as done.
    pub overwrite: bool,
}

/// A `wait:` task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitDef {
    /// The command that must exit 0 (a template).
    pub until: String,
    /// Pause between tries. Default 5s.
    pub interval: Duration,
}

/// An `http:` task: a GET from the jump host. Every text is a template; secrets only in `user`/`password`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpDef {
    pub url: String,
    /// The name to ask for (ingress hostnames), when `url` holds an address.
    pub host: Option<String>,
    /// Statuses that count as success. Default [200].
    pub expect_status: Vec<u16>,
    /// Texts the body must contain, every one of them.
    pub contains: Vec<String>,
    /// Basic auth.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Accept any TLS certificate (self-signed lab certificates). Default false.
    pub insecure: bool,
}

/// An `s3_buckets:` task: HEAD each bucket, create the missing ones. Never deletes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3BucketsDef {
    /// `http(s)://host[:port]`, addressed path-style.
    pub endpoint: String,
    pub region: String,
    pub buckets: Vec<String>,
    /// Templates, normally `{{ secrets.NAME }}`.
    pub access_key: String,
    pub secret_key: String,
}

/// One task as written in a playbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDef {
    pub name: String,
    pub action: ActionDef,
    /// Skip when this command exits 0 (a template).
    pub unless: Option<String>,
    /// Run only when this expression is true (`{{ ... }}` or a bare expression).
    pub when: Option<String>,
    /// Extra attempts after a failure. Default 0.
    pub retries: u32,
    /// Pause between attempts. Default 5s.
    pub delay: Duration,
    /// Per-attempt limit; for `wait`, the limit of the whole wait. Default: none for run/copy, 5m for wait.
    pub timeout: Option<Duration>,
    /// Overrides the stage's `become`.
    pub become_: Option<bool>,
    /// Environment variables for the command (values are templates; secrets belong here, not in `run`).
    pub env: BTreeMap<String, String>,
    /// The earlier tasks whose `changed` makes this one run again (`name` in the same stage, `stage/name` in an
    /// earlier one). None: every earlier task of its stage (the stage rule); an empty list: none.
    pub after: Option<Vec<String>>,
    pub location: Location,
    /// Where each templated field's value starts (`run`, `unless`, `when`, `copy.dest`, `env.NAME`, ...),
    /// so template problems point at the field.
    pub fields: BTreeMap<String, Location>,
}

/// One playbook file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    pub hosts: Hosts,
    /// Run tasks via sudo. Default false.
    pub become_: bool,
    /// Stage-level variables.
    pub vars: BTreeMap<String, serde_json::Value>,
    pub tasks: Vec<TaskDef>,
    pub location: Location,
    /// Where the `hosts` value is, for unknown-selector messages.
    pub hosts_location: Location,
}

/// A task's identity in the playbooks: (stage, task).
pub type TaskKey = (String, String);

/// All stages of a playbook folder, in run order, with the assets folder they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Playbooks {
    pub dir: PathBuf,
    /// `assets/` next to the playbooks folder (or as configured).
    pub assets_dir: PathBuf,
    pub stages: Vec<Stage>,
}

impl Playbooks {
    /// What a name in the `after` list of task `task` of stage `stage` (indexes) means: an earlier task of the
    /// same stage by its name, or `stage/name` of an earlier stage. None when it names nothing earlier.
    pub fn resolve_after(&self, stage: usize, task: usize, name: &str) -> Option<TaskKey> {
        resolve_after(&self.stages, stage, task, name)
    }
}

/// [`Playbooks::resolve_after`] over a list of stages in run order.
pub fn resolve_after(stages: &[Stage], stage: usize, task: usize, name: &str) -> Option<TaskKey> {
    let own = stages.get(stage)?;
    if own.tasks[..task.min(own.tasks.len())].iter().any(|t| t.name == name) {
        return Some((own.name.clone(), name.to_string()));
    }
    // Stage names may not hold `/` in practice, task names may: the first `/` ends the stage.
    let (stage_name, task_name) = name.split_once('/')?;
    stages[..stage]
        .iter()
        .find(|s| s.name == stage_name.trim())
        .filter(|s| s.tasks.iter().any(|t| t.name == task_name.trim()))
        .map(|s| (s.name.clone(), task_name.trim().to_string()))
}
