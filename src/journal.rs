//! The run journal: an append-only record of what finished, the only source of
//! "what already finished" for resume. Also the state-dir lock.

use std::collections::HashMap;

use crate::facts::Facts;

/// What earlier runs finished, as read from the journal.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// (node, stage, task) → fingerprint of the last successful finish.
    done: HashMap<(String, String, String), String>,
    facts: HashMap<String, Facts>,
}

impl Progress {
    /// No remembered progress (a first run, or `--fresh`).
    pub fn empty() -> Progress {
        Progress::default()
    }

    /// True when this task finished successfully before with exactly this rendered content.
    pub fn is_done(&self, node: &str, stage: &str, task: &str, fingerprint: &str) -> bool {
        self.done
            .get(&(node.to_string(), stage.to_string(), task.to_string()))
            .is_some_and(|f| f == fingerprint)
    }

    /// The facts gathered from the node in the latest run that reached it.
    pub fn facts(&self, node: &str) -> Option<&Facts> {
        self.facts.get(node)
    }

    /// Records a successful finish (used while reading the journal, and by tests).
    pub fn mark_done(&mut self, node: &str, stage: &str, task: &str, fingerprint: &str) {
        self.done.insert(
            (node.to_string(), stage.to_string(), task.to_string()),
            fingerprint.to_string(),
        );
    }

    /// Records gathered facts.
    pub fn set_facts(&mut self, node: &str, facts: Facts) {
        self.facts.insert(node.to_string(), facts);
    }
}
