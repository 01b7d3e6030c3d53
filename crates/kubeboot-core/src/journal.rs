//! The state directory: the run journal (append-only record of what finished, the only
//! source of "what already finished" for resume), the lock, and the log folders.
//!
//! The journal is JSON lines, one record per line, appended and flushed as events arrive
//! and synced to disk once per batch. A crash (even `kill -9`) at any byte leaves a
//! readable journal: a torn last line is ignored when reading.
//!
//! Resume reads three things from it: the last successful finish of every task (its fingerprint, the keyed
//! digest of the secrets it used, and where in the journal it finished), when each task last reported
//! `changed` (a task that finished before one of its dependencies changed is stale), and the generation of
//! every (node, stage): `--fresh` starts a new one, and only finishes of the current generation count as done.
//! Journals written before generations existed simply have none: every entry is generation 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::{Event, NodeStatus, SkipReason, TaskStatus};
use crate::facts::Facts;
use crate::secrets::DigestKey;

const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "lock";
/// The random key of the secrets' keyed digests (see [`crate::secrets::DigestKey`]).
const DIGEST_KEY: &str = "fingerprint.key";

/// Problems with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state dir {path}: {source} (choose a writable folder with --state-dir)")]
    Unusable { path: PathBuf, source: io::Error },
    #[error(
        "another kubeboot run holds the lock on {path}{holder} — wait for it to finish, or stop it; \
         a killed run releases the lock by itself"
    )]
    Locked { path: PathBuf, holder: String },
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// A run began.
    Run { run: String, ts: String, pid: u32 },
    /// The run really starts (after the confirmation screen) on these nodes: `status` shows them
    /// as in this run from now on, before any of them finished a task.
    Started {
        run: String,
        ts: String,
        nodes: Vec<String>,
    },
    /// Facts gathered from a node.
    Facts { run: String, node: String, facts: Facts },
    /// `--fresh` started a new generation of these stages on this node: what finished before is not done.
    Fresh {
        run: String,
        ts: String,
        node: String,
        stages: Vec<String>,
    },
    /// A task began (an attempt): until it ends, the node is not known to be in any state of that task, so an
    /// earlier finish of it no longer counts (a run cut off in the middle of it must run it again).
    TaskStarted {
        run: String,
        ts: String,
        node: String,
        stage: String,
        task: String,
    },
    /// A task ended.
    Task {
        run: String,
        ts: String,
        node: String,
        stage: String,
        task: String,
        fingerprint: String,
        /// Keyed digest (HMAC) of the secrets the task used; never a secret or a plain hash of one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secrets: Option<String>,
        /// Short digests of the task's parts (command, guard, env, each file), to say what changed.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        inputs: BTreeMap<String, String>,
        status: TaskStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<SkipReason>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A node ended.
    Node {
        run: String,
        ts: String,
        node: String,
        status: NodeStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The node whose failure blocked this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blocked_by: Option<String>,
    },
    /// A non-secret output a task registered (secret ones are never journaled: they are made again when needed).
    Output {
        run: String,
        node: String,
        stage: String,
        task: String,
        name: String,
        value: String,
    },
    /// A run ended.
    End { run: String, ts: String, interrupted: bool },
    /// A node was torn down (`kubeboot reset`): what it finished before no longer holds, except the tasks of
    /// `keep` (the stages of a reset still under way, so that a resumed reset continues where it stopped).
    Forget {
        run: String,
        ts: String,
        node: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keep: Vec<String>,
    },
}

impl Record {
    /// The journal record for an event, if the event is one the journal keeps.
    pub fn from_event(run: &str, ts: &str, event: &Event) -> Option<Record> {
        let run = run.to_string();
        let ts = ts.to_string();
        match event {
            Event::TaskStarted { node, stage, task, .. } => Some(Record::TaskStarted {
                run,
                ts,
                node: node.clone(),
                stage: stage.clone(),
                task: task.clone(),
            }),
            Event::NodeConnected { node, facts } => Some(Record::Facts {
                run,
                node: node.clone(),
                facts: facts.clone(),
            }),
            Event::TaskFinished {
                node,
                stage,
                task,
                status,
                reason,
                fingerprint,
                inputs,
                error,
                ..
            } => Some(Record::Task {
                run,
                ts,
                node: node.clone(),
                stage: stage.clone(),
                task: task.clone(),
                fingerprint: fingerprint.clone(),
                secrets: inputs.secrets.clone(),
                inputs: inputs.parts.clone(),
                status: *status,
                reason: *reason,
                error: error.clone(),
            }),
            Event::NodeFinished {
                node,
                status,
                error,
                blocked_by,
                ..
            } => Some(Record::Node {
                run,
                ts,
                node: node.clone(),
                status: *status,
                error: error.clone(),
                blocked_by: blocked_by.clone(),
            }),
            Event::OutputRegistered {
                node,
                stage,
                task,
                name,
                secret: false,
                value: Some(value),
                ..
            } => Some(Record::Output {
                run,
                node: node.clone(),
                stage: stage.clone(),
                task: task.clone(),
                name: name.clone(),
                value: value.clone(),
            }),
            Event::RunFinished { interrupted, .. } => Some(Record::End {
                run,
                ts,
                interrupted: *interrupted,
            }),
            Event::RunStarted {
                nodes, dry_run: false, ..
            } => Some(Record::Started {
                run,
                ts,
                nodes: nodes.iter().map(|n| n.node.clone()).collect(),
            }),
            _ => None,
        }
    }
}

/// What the journal says about one node's latest run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeProgress {
    /// The run that last touched the node.
    pub run: String,
    /// When it was last touched.
    pub ts: String,
    /// The last task that finished successfully: (stage, task).
    pub last_done: Option<(String, String)>,
    /// The task that failed and why, if the node's latest attempt failed: (stage, task, error).
    pub failed: Option<(String, String, String)>,
    /// How the node's latest run ended; None if it never ended (crash or still running).
    pub status: Option<NodeStatus>,
    /// The node whose failure blocked it, when it ended blocked.
    pub blocked_by: Option<String>,
}

/// A task's last successful finish, as the journal remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// sha256 of the task's rendered content then.
    pub fingerprint: String,
    /// Keyed digest of the secrets it used then (None: it used none, or an older kubeboot did not record it).
    pub secrets: Option<String>,
    /// Short digests of its parts then (empty in journals of older kubeboot versions).
    pub inputs: BTreeMap<String, String>,
    /// The generation of its (node, stage) when it finished.
    pub generation: u64,
    /// Where in the journal it finished: a dependency that reported `changed` later makes it stale.
    pub seq: u64,
}

type Key = (String, String, String);

fn key(node: &str, stage: &str, task: &str) -> Key {
    (node.to_string(), stage.to_string(), task.to_string())
}

/// What earlier runs finished, as read from the journal.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// (node, stage, task) → its last successful finish.
    done: HashMap<Key, Done>,
    /// Tasks whose latest attempt failed.
    failed: HashSet<Key>,
    /// Tasks that started and never ended (the run was cut off in the middle of them).
    cut_off: HashSet<Key>,
    /// (node, stage, task) → where it last reported `changed`.
    changed: HashMap<Key, u64>,
    /// (node, stage) → its generation (how many `--fresh` runs started it anew).
    generations: HashMap<(String, String), u64>,
    /// Records applied so far: the position of the next one.
    seq: u64,
    facts: HashMap<String, Facts>,
    nodes: HashMap<String, NodeProgress>,
    /// (node, output name) → value: the non-secret outputs registered, latest first.
    outputs: HashMap<(String, String), String>,
    /// The last run that began: its id and process.
    last_run: Option<(String, u32)>,
    /// The last run that really started: its id, when, and on which nodes.
    last_started: Option<(String, String, Vec<String>)>,
    /// Lines that could not be read (a torn last line after a crash, or damage).
    pub unreadable_lines: usize,
}

impl Progress {
    /// The run of process `pid` (the one holding the lock) when it has really started on `node`:
    /// its id and start time, for `status` to show before the node has finished anything in it.
    pub fn started_run_of(&self, pid: u32, node: &str) -> Option<(&str, &str)> {
        let (run, run_pid) = self.last_run.as_ref()?;
        let (started, ts, nodes) = self.last_started.as_ref()?;
        (*run_pid == pid && started == run && nodes.iter().any(|n| n == node)).then_some((run.as_str(), ts.as_str()))
    }

    /// No remembered progress (a first run).
    pub fn empty() -> Progress {
        Progress::default()
    }

    /// True when this task finished successfully in the current generation with exactly this rendered content.
    pub fn is_done(&self, node: &str, stage: &str, task: &str, fingerprint: &str) -> bool {
        self.done(node, stage, task)
            .is_some_and(|d| d.fingerprint == fingerprint && d.generation == self.generation(node, stage))
    }

    /// The task's last successful finish, of any generation.
    pub fn done(&self, node: &str, stage: &str, task: &str) -> Option<&Done> {
        self.done.get(&key(node, stage, task))
    }

    /// True when the task's latest attempt failed.
    pub fn failed_last(&self, node: &str, stage: &str, task: &str) -> bool {
        self.failed.contains(&key(node, stage, task))
    }

    /// True when the task's latest attempt started and never ended (kill -9, a lost jump host, Ctrl-C).
    pub fn cut_off(&self, node: &str, stage: &str, task: &str) -> bool {
        self.cut_off.contains(&key(node, stage, task))
    }

    /// Where in the journal the task last reported `changed`, if it ever did.
    pub fn changed_at(&self, node: &str, stage: &str, task: &str) -> Option<u64> {
        self.changed.get(&key(node, stage, task)).copied()
    }

    /// The current generation of a stage on a node (0 until a `--fresh` run starts one).
    pub fn generation(&self, node: &str, stage: &str) -> u64 {
        self.generations
            .get(&(node.to_string(), stage.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The facts gathered from the node in the latest run that reached it.
    pub fn facts(&self, node: &str) -> Option<&Facts> {
        self.facts.get(node)
    }

    /// What the journal says about a node's latest run.
    pub fn node(&self, node: &str) -> Option<&NodeProgress> {
        self.nodes.get(node)
    }

    /// A non-secret output registered in an earlier run (secret ones are never kept).
    pub fn output(&self, node: &str, name: &str) -> Option<&str> {
        self.outputs
            .get(&(node.to_string(), name.to_string()))
            .map(String::as_str)
    }

    /// Every remembered output: ((node, name), value).
    pub fn outputs(&self) -> impl Iterator<Item = (&(String, String), &String)> {
        self.outputs.iter()
    }

    /// True when the journal holds any finish of a task of this node.
    pub fn knows_node(&self, node: &str) -> bool {
        self.done
            .keys()
            .chain(self.failed.iter())
            .chain(self.cut_off.iter())
            .any(|(n, _, _)| n == node)
    }

    /// How many tasks of this node are recorded done (in their stage's current generation).
    pub fn done_count(&self, node: &str) -> usize {
        self.done
            .iter()
            .filter(|((n, s, _), d)| n == node && d.generation == self.generation(n, s))
            .count()
    }

    /// Records a successful finish (status `changed`).
    pub fn mark_done(&mut self, node: &str, stage: &str, task: &str, fingerprint: &str) {
        self.apply(&Record::Task {
            run: String::new(),
            ts: String::new(),
            node: node.to_string(),
            stage: stage.to_string(),
            task: task.to_string(),
            fingerprint: fingerprint.to_string(),
            secrets: None,
            inputs: BTreeMap::new(),
            status: TaskStatus::Changed,
            reason: None,
            error: None,
        });
    }

    /// Starts a new generation of these stages on this node (what `--fresh` does), in memory.
    pub fn start_generation(&mut self, node: &str, stages: &[String]) {
        self.apply(&Record::Fresh {
            run: String::new(),
            ts: String::new(),
            node: node.to_string(),
            stages: stages.to_vec(),
        });
    }

    /// Records gathered facts.
    pub fn set_facts(&mut self, node: &str, facts: Facts) {
        self.facts.insert(node.to_string(), facts);
    }

    /// Folds one record in; records are applied in journal order.
    pub fn apply(&mut self, record: &Record) {
        self.seq += 1;
        let seq = self.seq;
        match record {
            Record::Run { run, pid, .. } => self.last_run = Some((run.clone(), *pid)),
            Record::Started { run, ts, nodes } => self.last_started = Some((run.clone(), ts.clone(), nodes.clone())),
            Record::End { .. } => {}
            Record::Output { node, name, value, .. } => {
                self.outputs.insert((node.clone(), name.clone()), value.clone());
            }
            Record::Forget { node, keep, .. } => {
                self.done
                    .retain(|(n, stage, _), _| n != node || keep.iter().any(|k| k == stage));
            }
            Record::Facts { node, facts, .. } => self.set_facts(node, facts.clone()),
            Record::TaskStarted { node, stage, task, .. } => {
                let key = key(node, stage, task);
                self.done.remove(&key);
                self.cut_off.insert(key);
            }
            Record::Fresh { node, stages, .. } => {
                for stage in stages {
                    *self.generations.entry((node.clone(), stage.clone())).or_default() += 1;
                }
            }
            Record::Task {
                run,
                ts,
                node,
                stage,
                task,
                fingerprint,
                secrets,
                inputs,
                status,
                reason,
                error,
            } => {
                let key = (node.clone(), stage.clone(), task.clone());
                let generation = self.generation(node, stage);
                self.cut_off.remove(&key);
                let entry = self.nodes.entry(node.clone()).or_default();
                if entry.run != *run {
                    *entry = NodeProgress {
                        run: run.clone(),
                        ..NodeProgress::default()
                    };
                }
                entry.ts = ts.clone();
                match (status, reason) {
                    (TaskStatus::Failed, _) => {
                        // A failure means the node is no longer known to be in that task's state.
                        self.done.remove(&key);
                        self.failed.insert(key);
                        entry.failed = Some((stage.clone(), task.clone(), error.clone().unwrap_or_default()));
                    }
                    // A false `when` says nothing about the node's state: nothing to remember.
                    (TaskStatus::Skipped, Some(SkipReason::Condition)) => {}
                    // Skipped as done: the earlier finish still stands, from where it was (a later change of a
                    // dependency must still find it older).
                    (TaskStatus::Skipped, Some(SkipReason::Done)) if self.done.contains_key(&key) => {
                        entry.last_done = Some((stage.clone(), task.clone()));
                        entry.failed = None;
                    }
                    _ => {
                        if *status == TaskStatus::Changed {
                            self.changed.insert(key.clone(), seq);
                        }
                        self.failed.remove(&key);
                        self.done.insert(
                            key,
                            Done {
                                fingerprint: fingerprint.clone(),
                                secrets: secrets.clone(),
                                inputs: inputs.clone(),
                                generation,
                                seq,
                            },
                        );
                        entry.last_done = Some((stage.clone(), task.clone()));
                        entry.failed = None;
                    }
                }
            }
            Record::Node {
                run,
                ts,
                node,
                status,
                error,
                blocked_by,
            } => {
                let entry = self.nodes.entry(node.clone()).or_default();
                if entry.run != *run {
                    *entry = NodeProgress {
                        run: run.clone(),
                        ..NodeProgress::default()
                    };
                }
                entry.ts = ts.clone();
                entry.status = Some(*status);
                entry.blocked_by = blocked_by.clone();
                if matches!(status, NodeStatus::Failed | NodeStatus::Blocked) && entry.failed.is_none() {
                    entry.failed = Some((String::new(), String::new(), error.clone().unwrap_or_default()));
                }
            }
        }
    }

    /// Reads journal text; unreadable lines (a torn tail) are counted and skipped.
    pub fn read(reader: impl Read) -> io::Result<Progress> {
        let mut progress = Progress::default();
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(text) {
                Ok(record) => progress.apply(&record),
                Err(_) => progress.unreadable_lines += 1,
            }
        }
        Ok(progress)
    }
}

/// The state directory (`--state-dir`, default `.kubeboot/`).
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// Held while a run uses the state dir; the OS releases it when the process dies.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl StateDir {
    /// Opens (creating, private to the user) the state directory and checks it is writable.
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        let unusable = |source| StateError::Unusable {
            path: path.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(unusable)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path.join("logs"))
            .map_err(unusable)?;
        // Probe writability now, so a read-only state dir is bad input before anything runs.
        let probe = path.join(".write-test");
        File::create(&probe).map_err(unusable)?;
        let _ = fs::remove_file(&probe);
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing state dir for reading only (`status`, `plan`); a missing one reads as empty.
    pub fn existing(path: &Path) -> StateDir {
        StateDir {
            path: path.to_path_buf(),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal file.
    pub fn journal_path(&self) -> PathBuf {
        self.path.join(JOURNAL)
    }

    /// Takes the run lock, or says who holds it.
    pub fn lock(&self) -> Result<Lock, StateError> {
        let lock_path = self.path.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| StateError::Unusable {
                path: self.path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.set_len(0);
                let _ = file.rewind();
                let _ = writeln!(file, "{}", std::process::id());
                let _ = file.sync_data();
                Ok(Lock { _file: file })
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim() {
                    "" => String::new(),
                    pid => format!(" (process {pid})"),
                };
                Err(StateError::Locked {
                    path: self.path.clone(),
                    holder,
                })
            }
            Err(fs::TryLockError::Error(source)) => Err(StateError::Unusable {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The PID of a live kubeboot run holding the lock, read without taking it (so `status` never
    /// gets in the way of an `apply` starting). A killed run's PID is gone from /proc, so it reads as none.
    pub fn running_holder(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.path.join(LOCK)).ok()?.trim().parse().ok()?;
        let command = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (pid != std::process::id() && command.trim() == "kubeboot").then_some(pid)
    }

    /// Reads what earlier runs finished; a missing journal is an empty one.
    pub fn progress(&self) -> io::Result<Progress> {
        match File::open(self.journal_path()) {
            Ok(f) => Progress::read(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Progress::empty()),
            Err(e) => Err(e),
        }
    }

    /// The key of the secrets' keyed digests, made (random, 0600) on first use.
    pub fn digest_key(&self) -> io::Result<DigestKey> {
        if let Some(key) = self.existing_digest_key()? {
            return Ok(key);
        }
        let path = self.path.join(DIGEST_KEY);
        let key = DigestKey::random();
        // Written under a temporary name and renamed: a crash never leaves a short key behind.
        let part = self.path.join(format!("{DIGEST_KEY}.part"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)?;
        f.write_all(key.bytes())?;
        f.sync_all()?;
        fs::rename(&part, &path)?;
        File::open(&self.path)?.sync_all()?;
        Ok(key)
    }

    /// The key of the secrets' digests if one was made before (for read-only commands such as `plan`).
    pub fn existing_digest_key(&self) -> io::Result<Option<DigestKey>> {
        let path = self.path.join(DIGEST_KEY);
        match fs::read(&path) {
            Ok(bytes) => match DigestKey::from_bytes(&bytes) {
                Some(key) => Ok(Some(key)),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged (not 32 bytes); remove it and the tasks that use secrets run once more",
                        path.display()
                    ),
                )),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the journal for appending.
    pub fn writer(&self) -> io::Result<JournalWriter> {
        let path = self.journal_path();
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        // An older file may have other permissions; the journal stays private.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let torn = ends_without_newline(&path)?;
        Ok(JournalWriter {
            file,
            start_with_newline: torn,
        })
    }

    /// The folder for this run's log files (created, private). `logs/latest` moves to it only
    /// once the run really starts ([`StateDir::mark_latest`]).
    pub fn run_logs(&self, run_id: &str) -> io::Result<PathBuf> {
        let dir = self.path.join("logs").join(run_id);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(dir)
    }

    /// Points `logs/latest` at this run's log folder.
    pub fn mark_latest(&self, run_id: &str) {
        let latest = self.path.join("logs").join("latest");
        let _ = fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(run_id, &latest);
    }
}

fn ends_without_newline(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(io::SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Appends records; each record is one `write` of one whole line.
#[derive(Debug)]
pub struct JournalWriter {
    file: File,
    /// A crash left a torn last line: start on a fresh line so the next record stays readable.
    start_with_newline: bool,
}

impl JournalWriter {
    /// Appends one record (written at once, not yet synced).
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = if std::mem::take(&mut self.start_with_newline) {
            b"\n".to_vec()
        } else {
            Vec::new()
        };
        serde_json::to_writer(&mut line, record)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }

    /// Appends records and makes them durable at once (records written outside a run, e.g. by `reset`).
    pub fn append_all(&mut self, records: &[Record]) -> io::Result<()> {
        for r in records {
            self.append(r)?;
        }
        self.sync()
    }

    /// Makes everything appended so far durable (one sync per batch of records).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(run: &str, node: &str, name: &str, fp: &str, status: TaskStatus) -> Record {
        Record::Task {
            run: run.into(),
            ts: "t".into(),
            node: node.into(),
            stage: "s".into(),
            task: name.into(),
            fingerprint: fp.into(),
            secrets: None,
            inputs: BTreeMap::new(),
            status,
            reason: None,
            error: (status == TaskStatus::Failed).then(|| "exit 1".to_string()),
        }
    }

    #[test]
    fn forget_drops_a_nodes_progress_except_the_stages_it_keeps() {
        let mut p = Progress::empty();
        for r in [
            task("r1", "n1", "a", "f", TaskStatus::Changed),
            task("r1", "n2", "a", "f", TaskStatus::Changed),
        ] {
            p.apply(&r);
        }
        p.mark_done("n1", "reset", "kubeadm reset", "g");
        p.apply(&Record::Forget {
            run: "r2".into(),
            ts: "t".into(),
            node: "n1".into(),
            keep: vec!["reset".into()],
        });
        assert!(!p.is_done("n1", "s", "a", "f"), "the install is forgotten");
        assert!(
            p.is_done("n1", "reset", "kubeadm reset", "g"),
            "the reset's own progress stays"
        );
        assert!(p.is_done("n2", "s", "a", "f"), "other nodes are untouched");
        let line = serde_json::to_string(&Record::Forget {
            run: "r".into(),
            ts: "t".into(),
            node: "n1".into(),
            keep: Vec::new(),
        })
        .unwrap();
        assert_eq!(line, r#"{"record":"forget","run":"r","ts":"t","node":"n1"}"#);
    }

    fn journal_text(records: &[Record]) -> String {
        records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn resume_knows_tasks_finished_before_by_fingerprint() {
        let text = journal_text(&[
            task("r1", "n1", "a", "f1", TaskStatus::Changed),
            task("r1", "n1", "b", "f2", TaskStatus::Ok),
        ]);
        let p = Progress::read(text.as_bytes()).unwrap();
        assert!(p.is_done("n1", "s", "a", "f1"));
        assert!(p.is_done("n1", "s", "b", "f2"));
        assert!(!p.is_done("n1", "s", "a", "changed-content"));
        assert!(!p.is_done("n2", "s", "a", "f1"));
    }

    #[test]
    fn a_later_failure_forgets_the_earlier_success() {
        let text = journal_text(&[
            task("r1", "n1", "a", "f1", TaskStatus::Changed),
            task("r2", "n1", "a", "f1", TaskStatus::Failed),
        ]);
        let p = Progress::read(text.as_bytes()).unwrap();
        assert!(!p.is_done("n1", "s", "a", "f1"));
        assert_eq!(p.node("n1").unwrap().failed.as_ref().unwrap().1, "a");
    }

    #[test]
    fn a_fresh_generation_forgets_what_finished_before_it_for_its_stages_only() {
        let mut records = vec![
            task("r1", "n1", "a", "f1", TaskStatus::Changed),
            task("r1", "n2", "a", "f1", TaskStatus::Changed),
        ];
        records.push(Record::Fresh {
            run: "r2".into(),
            ts: "t".into(),
            node: "n1".into(),
            stages: vec!["s".into()],
        });
        let p = Progress::read(journal_text(&records).as_bytes()).unwrap();
        assert!(!p.is_done("n1", "s", "a", "f1"), "n1's stage s started anew");
        assert!(p.is_done("n2", "s", "a", "f1"), "n2 was not part of the fresh run");
        assert_eq!(p.done("n1", "s", "a").map(|d| d.generation), Some(0));
        records.push(task("r2", "n1", "a", "f1", TaskStatus::Ok));
        let p = Progress::read(journal_text(&records).as_bytes()).unwrap();
        assert!(p.is_done("n1", "s", "a", "f1"), "done again in the new generation");
    }

    #[test]
    fn a_task_that_started_and_never_ended_is_not_done() {
        let started = Record::TaskStarted {
            run: "r2".into(),
            ts: "t".into(),
            node: "n1".into(),
            stage: "s".into(),
            task: "a".into(),
        };
        let text = journal_text(&[task("r1", "n1", "a", "f1", TaskStatus::Changed), started]);
        let p = Progress::read(text.as_bytes()).unwrap();
        assert!(
            !p.is_done("n1", "s", "a", "f1"),
            "cut off in the middle: its earlier finish no longer holds"
        );
        assert!(p.cut_off("n1", "s", "a"));
    }

    #[test]
    fn a_journal_of_an_older_kubeboot_reads_as_generation_zero() {
        // Written before generations, secret digests and input digests existed.
        let text = concat!(
            r#"{"record":"run","run":"r0","ts":"t","pid":1}"#,
            "\n",
            r#"{"record":"task","run":"r0","ts":"t","node":"n1","stage":"s","task":"a","fingerprint":"f1","status":"changed"}"#,
            "\n",
            r#"{"record":"task","run":"r0","ts":"t","node":"n1","stage":"s","task":"b","fingerprint":"f2","status":"skipped","reason":"guard"}"#,
            "\n",
        );
        let p = Progress::read(text.as_bytes()).unwrap();
        assert_eq!(p.unreadable_lines, 0);
        assert!(p.is_done("n1", "s", "a", "f1"));
        assert!(p.is_done("n1", "s", "b", "f2"));
        let d = p.done("n1", "s", "a").unwrap();
        assert_eq!((d.generation, d.secrets.as_deref(), d.inputs.len()), (0, None, 0));
    }

    #[test]
    fn a_skip_as_done_keeps_where_the_task_really_finished() {
        let mut skipped = task("r2", "n1", "b", "f2", TaskStatus::Skipped);
        if let Record::Task { reason, .. } = &mut skipped {
            *reason = Some(SkipReason::Done);
        }
        let text = journal_text(&[
            task("r1", "n1", "b", "f2", TaskStatus::Ok),
            task("r1", "n1", "a", "f1", TaskStatus::Changed),
            skipped,
        ]);
        let p = Progress::read(text.as_bytes()).unwrap();
        let b = p.done("n1", "s", "b").unwrap();
        assert!(
            b.seq < p.changed_at("n1", "s", "a").unwrap(),
            "b still finished before a changed"
        );
    }

    #[test]
    fn the_digest_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(state.existing_digest_key().unwrap().is_none());
        let key = state.digest_key().unwrap();
        let again = state.digest_key().unwrap();
        assert_eq!(key.bytes(), again.bytes());
        let mode = fs::metadata(dir.path().join(DIGEST_KEY)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(dir.path().join(DIGEST_KEY), b"short").unwrap();
        assert!(state.existing_digest_key().is_err());
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_counted() {
        let mut text = journal_text(&[task("r1", "n1", "a", "f1", TaskStatus::Changed)]);
        text.push_str("{\"record\":\"task\",\"run\":\"r1\",\"no");
        let p = Progress::read(text.as_bytes()).unwrap();
        assert!(p.is_done("n1", "s", "a", "f1"));
        assert_eq!(p.unreadable_lines, 1);
    }

    #[test]
    fn writer_after_a_torn_line_keeps_new_records_readable() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut w = state.writer().unwrap();
        w.append(&task("r1", "n1", "a", "f1", TaskStatus::Changed)).unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(state.journal_path()).unwrap();
        f.write_all(b"{\"record\":\"ta").unwrap();
        drop(f);
        let mut w = state.writer().unwrap();
        w.append(&task("r2", "n1", "b", "f2", TaskStatus::Changed)).unwrap();
        w.sync().unwrap();
        let p = state.progress().unwrap();
        assert!(p.is_done("n1", "s", "a", "f1"));
        assert!(p.is_done("n1", "s", "b", "f2"));
        assert_eq!(p.unreadable_lines, 1);
    }

    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let _held = state.lock().unwrap();
        let err = StateDir::open(dir.path()).unwrap().lock().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
    }

    #[test]
    fn state_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let state = StateDir::open(&root).unwrap();
        state.writer().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&state.journal_path()), 0o600);
    }

    proptest::proptest! {
        /// A crash can cut the journal at any byte: every prefix loads, and it never claims
        /// more done than the whole journal says.
        #[test]
        fn any_prefix_of_a_journal_loads_and_claims_no_extra_done(cut in 0usize..2000) {
            let records: Vec<Record> = (0..20)
                .map(|i| task("r1", &format!("n{}", i % 3), &format!("t{i}"), &format!("f{i}"), TaskStatus::Changed))
                .collect();
            let text = journal_text(&records);
            let cut = cut.min(text.len());
            let prefix = Progress::read(&text.as_bytes()[..cut]).unwrap();
            let full = Progress::read(text.as_bytes()).unwrap();
            for ((node, stage, t), d) in &prefix.done {
                proptest::prop_assert!(full.is_done(node, stage, t, &d.fingerprint));
            }
        }
    }
}
