//! kubeboot bootstraps Kubernetes clusters over SSH from `inventory.toml` and YAML
//! playbooks: every node in parallel, live progress, and resume after a failure.
//!
//! This crate is the command line and the frontends ([`cli`], [`cmd`], [`ui`]). The work itself
//! lives in `kubeboot-core` (re-exported here under the same module names) and the local lab in
//! `kubeboot-lab` ([`lab`]).

pub mod cli;
pub mod cmd;
pub mod ui;

pub use kubeboot_core::{
    bundle, diag, engine, event, facts, fanout, inventory, journal, kubeconfig, plan, playbook, run_model, secrets,
    spanned, ssh, task,
};
pub use kubeboot_lab as lab;
