//! The commands behind the command line, one file each: load and check the input, choose the frontend, run the
//! engine, and map the outcome to an exit code.
//!
//! - `input.rs`: the operator's input loaded and checked, the preliminary plans and the secrets they use: what
//!   every command that plans starts from;
//! - `run.rs`: the run wiring `apply`, `check` and `plan --check` share: the one place a [`RunSpec`] is built,
//!   the fan-out, the headless frontend with Ctrl-C, the run id and run log, the exit code of a run;
//! - `apply.rs` (and the day-two commands through it), `plan.rs` (`plan`, `plan --check`, `apply --dry-run`),
//!   `check.rs`, `status.rs`, `lab.rs`, `bundle.rs`, `report.rs`, `daytwo.rs` (`kubeconfig`, `backup`, `reset`,
//!   `upgrade`, `renew-certs`): one command each.
//!
//! [`RunSpec`]: crate::engine::RunSpec

mod apply;
mod bundle;
mod check;
mod daytwo;
mod input;
mod lab;
mod plan;
mod report;
mod run;
mod status;

use crate::cli::{Cli, Command};
use crate::diag::Diagnostics;
use crate::journal::StateError;

/// How kubeboot exits (the numbers are part of the contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// All selected nodes finished.
    Ok = 0,
    /// One or more nodes failed.
    NodesFailed = 1,
    /// Bad input: nothing was run.
    BadInput = 2,
    /// Another run holds the state lock.
    Locked = 3,
    /// Interrupted; progress is saved.
    Interrupted = 130,
}

/// Runs one command line.
pub async fn main(cli: Cli) -> Exit {
    let result = match &cli.command {
        Command::Apply(args) => apply::apply(&cli, args).await,
        Command::Plan(args) => plan::plan(&cli, args).await,
        Command::Status(args) => status::status(&cli, args),
        Command::Check(args) => check::check(&cli, args).await,
        Command::Lab(args) => lab::lab(args),
        Command::Bundle(args) => bundle::bundle(&cli, args).await,
        Command::Kubeconfig(args) => daytwo::kubeconfig(&cli, args).await,
        Command::Backup(args) => daytwo::backup(&cli, args).await,
        Command::Reset(args) => daytwo::reset(&cli, args).await,
        Command::Upgrade(args) => daytwo::upgrade(&cli, args).await,
        Command::RenewCerts(args) => daytwo::renew_certs(&cli, args).await,
        Command::Report(args) => report::report(&cli, args),
    };
    match result {
        Ok(exit) => exit,
        Err(Failure::BadInput(d)) => {
            eprintln!("{d}");
            eprintln!("nothing was run.");
            Exit::BadInput
        }
        Err(Failure::State(e @ StateError::Locked { .. })) => {
            eprintln!("error: {e}");
            Exit::Locked
        }
        Err(Failure::State(e)) => {
            eprintln!("error: {e}");
            Exit::BadInput
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e}");
            Exit::NodesFailed
        }
    }
}

/// Why a command stopped before or outside the engine.
pub(crate) enum Failure {
    BadInput(Diagnostics),
    State(StateError),
    Other(String),
}

impl From<Diagnostics> for Failure {
    fn from(d: Diagnostics) -> Self {
        Failure::BadInput(d)
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        Failure::State(e)
    }
}
