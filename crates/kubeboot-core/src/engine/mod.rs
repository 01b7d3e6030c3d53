//! The engine: runs each node's plan over its own SSH connection and publishes events.
//!
//! It is the only part of kubeboot that talks to nodes. Every node runs on its own async
//! task; `--forks` is a sliding limit (a node starts as soon as another one ends), and a
//! failing node never stops the others. The engine knows nothing about screens: it only
//! sends [`Event`]s and listens for [`Control`] requests.

pub mod drift;
mod node;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::{Counts, Event, NodeStatus};
use crate::inventory::Inventory;
use crate::journal::Progress;
use crate::outputs;
use crate::plan::Selection;
use crate::playbook::Playbooks;
pub use crate::secrets::NodeSecrets;
use crate::secrets::{Digests, Vault};

pub use crate::event::EventSink;
use crate::event::{Control, NodeOutline};

/// Everything one run needs, decided before it starts.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub run_id: String,
    pub inventory: Arc<Inventory>,
    pub playbooks: Arc<Playbooks>,
    /// What earlier runs finished (the journal), updated in memory as this run goes.
    pub progress: Progress,
    pub selection: Selection,
    /// The nodes to run, in inventory order.
    pub nodes: Vec<String>,
    /// Their plans before connecting (facts assumed), announced in `run_started`.
    pub outlines: Vec<NodeOutline>,
    /// At most this many nodes at once; None = all.
    pub forks: Option<usize>,
    /// Named secrets, filled into env values and copied files only when sending.
    pub vault: Arc<Vault>,
    /// Keyed digests of the named secrets, so a task whose secrets changed runs again.
    pub secret_digests: Digests,
    /// What of this run's `task_started` events is on disk (from the fan-out); None: nothing to wait for.
    pub durable: Option<crate::fanout::Durable>,
    pub secrets: HashMap<String, NodeSecrets>,
    /// `--accept-new-host-keys`: record unknown host keys instead of refusing them.
    pub accept_new_host_keys: bool,
    /// Nodes whose unknown host key the operator accepted on the confirmation screen: recorded, for these only.
    pub accept_host_keys_for: HashSet<String>,
    /// Where `fetch` tasks with a relative `dest` write (the state dir).
    pub fetch_root: std::path::PathBuf,
    /// Keep running after all nodes ended, so a frontend can ask for retries, until `control` closes.
    pub interactive: bool,
    /// Tasks done before that run again because a task of this run needs their secret output
    /// ([`crate::plan::depends::again`]): (node, stage, task) → why.
    pub again: BTreeMap<(String, String, String), String>,
}

/// How the run ended, for the exit code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunResult {
    pub nodes_ok: usize,
    pub nodes_failed: usize,
    pub nodes_cancelled: usize,
    /// Nodes that stopped because a node they wait for failed.
    pub nodes_blocked: usize,
    pub interrupted: bool,
}

/// Shared by every node task of a run.
pub(crate) struct Shared {
    pub spec: RunSpec,
    pub progress: Mutex<Progress>,
    pub events: EventSink,
    pub cancel: CancellationToken,
    pub forks: Semaphore,
    /// What each node finished in this run, for the nodes that wait for it.
    pub board: Mutex<Board>,
    /// Bumped whenever the board changes; waiting nodes look again.
    pub board_changed: watch::Sender<u64>,
    /// Outputs registered so far (and the non-secret ones an earlier run kept).
    pub outputs: Mutex<outputs::Store>,
    /// One lock per (serial stage, cluster): the node holding it runs that stage.
    pub serial: Mutex<HashMap<(String, String), SerialSlot>>,
    /// `task_started` events emitted per node, to know when one of them is durable.
    pub started: Mutex<HashMap<String, u64>>,
}

impl Shared {
    /// The state one run shares between its nodes: outputs an earlier run kept (unless `--fresh`), no
    /// finished task yet, at most `forks` nodes at once.
    pub(crate) fn new(spec: RunSpec, events: EventSink, forks: usize) -> Self {
        let mut store = outputs::Store::default();
        if !spec.selection.fresh {
            for ((node, name), value) in spec.progress.outputs() {
                store.insert(node, name, value.clone());
            }
        }
        Shared {
            progress: Mutex::new(spec.progress.clone()),
            spec,
            events,
            cancel: CancellationToken::new(),
            forks: Semaphore::new(forks),
            board: Mutex::new(Board::default()),
            board_changed: watch::channel(0).0,
            outputs: Mutex::new(store),
            serial: Mutex::new(HashMap::new()),
            started: Mutex::new(HashMap::new()),
        }
    }
}

/// The turn in a serial stage of one cluster.
pub(crate) type SerialSlot = Arc<tokio::sync::Mutex<()>>;

/// What the nodes of this run finished, as the waiting nodes see it.
#[derive(Debug, Default)]
pub(crate) struct Board {
    /// (node, stage, task) that ended ok, changed or skipped in this run.
    pub finished: HashSet<(String, String, String)>,
    /// Nodes that ended (and how), or failed a task and are ending.
    pub ended: HashMap<String, NodeStatus>,
}

impl Shared {
    pub(crate) fn emit(&self, event: Event) {
        // Secret outputs are masked by the fan-out (`output_registered` carries the value only that far).
        // A frontend that went away must not stop the run: the journal still gets everything.
        let _ = self.events.send(event);
    }

    /// Changes the board and wakes every waiting node.
    pub(crate) fn on_board(&self, change: impl FnOnce(&mut Board)) {
        change(&mut node::lock(&self.board));
        self.board_changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What one node's task returned.
pub(crate) struct NodeEnd {
    pub node: String,
    pub status: NodeStatus,
    pub counts: Counts,
}

/// Runs every selected node; returns when all ended (and, when interactive, the frontend let go).
pub async fn run(spec: RunSpec, events: EventSink, mut control: mpsc::UnboundedReceiver<Control>) -> RunResult {
    let started = Instant::now();
    let forks = spec.forks.unwrap_or(spec.nodes.len()).clamp(1, Semaphore::MAX_PERMITS);
    let interactive = spec.interactive;
    let shared = Arc::new(Shared::new(spec, events, forks));
    // The engine alone tells the run's lifecycle: run_started here, run_finished in `finish`.
    shared.emit(Event::RunStarted {
        run_id: shared.spec.run_id.clone(),
        stages: shared.spec.playbooks.stages.iter().map(|s| s.name.clone()).collect(),
        nodes: shared.spec.outlines.clone(),
        dry_run: false,
    });

    let mut tasks = JoinSet::new();
    let mut ends: BTreeMap<String, NodeEnd> = BTreeMap::new();
    for name in shared.spec.nodes.clone() {
        tasks.spawn(node::run(shared.clone(), name));
    }

    let mut control_open = true;
    let mut result = RunResult::default();
    loop {
        tokio::select! {
            joined = tasks.join_next(), if !tasks.is_empty() => {
                if let Some(Ok(end)) = joined {
                    ends.insert(end.node.clone(), end);
                }
                if tasks.is_empty() {
                    result = finish(&shared, &ends, started);
                    if !interactive || !control_open || shared.cancel.is_cancelled() {
                        break;
                    }
                }
            }
            request = control.recv(), if control_open => match request {
                Some(Control::Cancel) => shared.cancel.cancel(),
                Some(Control::Retry { node }) => {
                    let failed = ends.get(&node).is_some_and(|e| e.status == NodeStatus::Failed);
                    if failed && !shared.cancel.is_cancelled() {
                        ends.remove(&node);
                        shared.on_board(|b| {
                            b.ended.remove(&node);
                        });
                        tasks.spawn(node::run(shared.clone(), node));
                    }
                }
                None => {
                    control_open = false;
                    if tasks.is_empty() {
                        break;
                    }
                }
            },
            else => break,
        }
    }
    result
}

fn finish(shared: &Shared, ends: &BTreeMap<String, NodeEnd>, started: Instant) -> RunResult {
    let mut counts = Counts::default();
    let mut result = RunResult {
        interrupted: shared.cancel.is_cancelled(),
        ..RunResult::default()
    };
    for end in ends.values() {
        counts.ok += end.counts.ok;
        counts.changed += end.counts.changed;
        counts.skipped += end.counts.skipped;
        counts.failed += end.counts.failed;
        match end.status {
            NodeStatus::Ok => result.nodes_ok += 1,
            NodeStatus::Failed => result.nodes_failed += 1,
            NodeStatus::Cancelled => result.nodes_cancelled += 1,
            NodeStatus::Blocked => result.nodes_blocked += 1,
        }
    }
    shared.emit(Event::RunFinished {
        nodes_ok: result.nodes_ok,
        nodes_failed: result.nodes_failed,
        nodes_cancelled: result.nodes_cancelled,
        nodes_blocked: result.nodes_blocked,
        counts,
        duration_ms: started.elapsed().as_millis() as u64,
        interrupted: result.interrupted,
    });
    result
}
