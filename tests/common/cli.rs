//! kubeboot run as a plain command, with no lab: the suites of `kubeboot bundle` (and anything else that only
//! reads files and talks to local servers).

use std::process::{Command, Output};

/// `kubeboot <args>`, run to the end.
pub fn kubeboot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubeboot"))
        .args(args)
        .output()
        .expect("kubeboot runs")
}

/// A finished command's exit code, stdout and stderr, for a failure message.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
