//! The core of kubeboot: everything between the operator's input and the events a frontend shows.
//!
//! Flow: [`inventory`] + [`playbook`] → [`plan`] → [`engine`] (each [`task`] kind over [`ssh`], or
//! from the jump host) → [`event`]s → [`journal`] and the log files ([`fanout`]), and [`run_model`], the one fold of the events
//! every frontend reads. This crate has no
//! terminal code at all (no ratatui, crossterm or indicatif in its Cargo.toml): frontends live in
//! the `kubeboot` binary crate and see the core only through events and controls.

pub mod bundle;
pub mod diag;
pub mod engine;
pub mod event;
pub mod facts;
pub mod fanout;
pub mod inventory;
pub mod journal;
pub mod kubeconfig;
pub mod outputs;
pub mod plan;
pub mod playbook;
pub mod run_model;
pub mod secrets;
pub mod spanned;
pub mod ssh;
pub mod task;
