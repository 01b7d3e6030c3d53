//! The confirmation screen's host key look: each node's answer as it comes, and what the operator decided.

use std::collections::HashSet;

use super::{App, HostKeyAnswer, HostKeyIssue, HostKeyPrompt, Screen};

/// What the operator decided about one host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyDecision {
    /// Not decided yet: treated like refused when the run starts.
    Undecided,
    /// Record the key in known_hosts when connecting.
    Accept,
    /// Do not record it: the node fails with the unknown-host error.
    Refuse,
}

/// A host key prompt with the operator's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyView {
    /// What was found.
    pub prompt: HostKeyPrompt,
    /// What the operator decided.
    pub decision: HostKeyDecision,
}

/// The host key look while it runs: the confirmation screen shows each node's answer as it comes and
/// starts nothing until every node has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyCheck {
    /// Each node looked at, in node order, with its answer once it came.
    pub nodes: Vec<(String, Option<HostKeyAnswer>)>,
}

impl HostKeyCheck {
    /// How many nodes have answered.
    pub fn answered(&self) -> usize {
        self.nodes.iter().filter(|(_, a)| a.is_some()).count()
    }
}

impl App {
    /// Shows these host keys on the confirmation screen, all undecided (changed ones stay refused).
    pub fn set_host_keys(&mut self, prompts: Vec<HostKeyPrompt>) {
        self.host_keys = prompts
            .into_iter()
            .map(|prompt| HostKeyView {
                decision: match prompt.issue {
                    HostKeyIssue::Unknown => HostKeyDecision::Undecided,
                    HostKeyIssue::Changed { .. } => HostKeyDecision::Refuse,
                },
                prompt,
            })
            .collect();
        self.host_key_selected = 0;
    }

    /// The confirmation screen says it is looking at these nodes' host keys; it starts nothing until each
    /// has answered ([`App::host_key_answered`]). No nodes: nothing to wait for.
    pub fn start_host_key_check(&mut self, nodes: Vec<String>) {
        self.host_key_check = (!nodes.is_empty()).then(|| HostKeyCheck {
            nodes: nodes.into_iter().map(|n| (n, None)).collect(),
        });
    }

    /// One node's answer; when it is the last, the keys to decide on are shown (in node order).
    pub fn host_key_answered(&mut self, node: &str, answer: HostKeyAnswer) {
        let Some(check) = &mut self.host_key_check else {
            return;
        };
        if let Some((_, slot)) = check.nodes.iter_mut().find(|(n, _)| n == node) {
            *slot = Some(answer);
        }
        if check.answered() == check.nodes.len() {
            self.finish_host_key_check();
        }
    }

    /// Ends the look: nodes that have not answered count as not answering (the run reports them).
    pub fn finish_host_key_check(&mut self) {
        let Some(check) = self.host_key_check.take() else {
            return;
        };
        let prompts = check
            .nodes
            .into_iter()
            .filter_map(|(_, answer)| match answer {
                Some(HostKeyAnswer::Found(prompt)) => Some(prompt),
                _ => None,
            })
            .collect();
        self.set_host_keys(prompts);
    }

    /// True while the host key look runs (the run cannot be started yet).
    pub fn checking_host_keys(&self) -> bool {
        self.host_key_check.is_some()
    }

    /// The nodes whose unknown host key the operator accepted.
    pub fn accepted_host_keys(&self) -> HashSet<String> {
        self.host_keys
            .iter()
            .filter(|k| k.decision == HostKeyDecision::Accept && k.prompt.issue == HostKeyIssue::Unknown)
            .map(|k| k.prompt.node.clone())
            .collect()
    }

    pub(super) fn decide_host_key(&mut self, decision: HostKeyDecision) {
        if self.screen != Screen::Confirm {
            return;
        }
        if let Some(key) = self.host_keys.get_mut(self.host_key_selected)
            && key.prompt.issue == HostKeyIssue::Unknown
        {
            key.decision = decision;
        }
    }
}
