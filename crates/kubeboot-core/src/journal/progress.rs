//! What earlier runs finished, folded from the journal's records: the last successful finish of every task, the
//! failed and cut-off ones, each (node, stage)'s generation, the facts and outputs kept. Reading tolerates a torn
//! last line (a crash while appending).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read};

use serde::Serialize;

use super::Record;
use crate::event::{NodeStatus, SkipReason, TaskStatus};
use crate::facts::Facts;

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
    /// The node's boot then (its facts' `boot_id`; empty when not known).
    pub boot: String,
}

type Key = (String, String, String);

fn key(node: &str, stage: &str, task: &str) -> Key {
    (node.to_string(), stage.to_string(), task.to_string())
}

/// What earlier runs finished, as read from the journal.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// (node, stage, task) → its last successful finish.
    pub(super) done: HashMap<Key, Done>,
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
    /// node → where in the journal the node last had everything on its disk (a `synced` record).
    synced: HashMap<String, u64>,
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

    /// True when the task's last finish may be lost on the node: it finished in another boot than `boot` (the
    /// node's now) and the node was never synced after it, so a hard reset or a power cut may have taken what it
    /// wrote (found on the VM lab: an apt source written just before a reset came back empty). Unknown boots
    /// (journals of older kubeboot versions, a node without `/proc`) count as the same boot.
    pub fn lost_in_restart(&self, node: &str, done: &Done, boot: &str) -> bool {
        !done.boot.is_empty()
            && !boot.is_empty()
            && done.boot != boot
            && self.synced.get(node).is_none_or(|synced| *synced < done.seq)
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
            Record::Synced { node, .. } => {
                self.synced.insert(node.clone(), seq);
            }
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
                let boot = self.facts.get(node).map(|f| f.boot_id.clone()).unwrap_or_default();
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
                                boot,
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
