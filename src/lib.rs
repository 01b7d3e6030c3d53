//! kubeboot bootstraps Kubernetes clusters over SSH from `inventory.toml` and YAML
//! playbooks: every node in parallel, live progress, and resume after a failure.
//!
//! Flow: [`inventory`] + [`playbook`] → [`plan`] → [`engine`] (over [`ssh`], or from the jump host via [`jump`]) →
//! [`event`]s → [`journal`], log files and the frontends in [`ui`].

pub mod app;
pub mod cli;
pub mod diag;
pub mod engine;
pub mod event;
pub mod facts;
pub mod fanout;
pub mod inventory;
pub mod journal;
pub mod jump;
pub mod lab;
pub mod plan;
pub mod playbook;
pub mod secrets;
pub mod ssh;
pub mod ui;
