//! The golden runbooks of the day-two commands: `kubeboot <command> --dry-run` on the shipped inventory and
//! playbooks (connects to nothing), in tests/golden/day2-<command>.txt. The time stamp in backup names is
//! replaced by `<stamp>`. `UPDATE_GOLDEN=1` rewrites them after a deliberate change.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::repo;

/// Every run id (`YYYYMMDD-HHMMSS-xxxx`) as `<stamp>`.
fn without_stamps(text: &str) -> String {
    let b = text.as_bytes();
    let is_stamp = |at: usize| {
        b.len() >= at + 20
            && b[at..at + 8].iter().all(u8::is_ascii_digit)
            && b[at + 8] == b'-'
            && b[at + 9..at + 15].iter().all(u8::is_ascii_digit)
            && b[at + 15] == b'-'
            && b[at + 16..at + 20].iter().all(u8::is_ascii_hexdigit)
    };
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        if is_stamp(i) && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            out.push_str("<stamp>");
            i += 20;
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn dry_run(inventory: &Path, args: &[&str]) -> String {
    let state = tempfile::tempdir().expect("a state dir");
    let out = Command::new(env!("CARGO_BIN_EXE_kubeboot"))
        .current_dir(repo())
        .arg("-i")
        .arg(inventory)
        .args(["-p", "playbooks", "--state-dir"])
        .arg(state.path())
        .args(args)
        .arg("--dry-run")
        .stdin(Stdio::null())
        .output()
        .expect("kubeboot runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    without_stamps(&stdout)
}

#[test]
fn every_day_two_command_has_a_golden_runbook() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let shipped = repo().join("inventory.toml");
    let dir = tempfile::tempdir().expect("a folder");
    let raised = dir.path().join("inventory.toml");
    let text = std::fs::read_to_string(&shipped).expect("the shipped inventory");
    std::fs::write(
        &raised,
        text.replace("kubernetes_version = \"1.34\"", "kubernetes_version = \"1.35\""),
    )
    .expect("write");
    let cases: [(&str, &Path, &[&str]); 5] = [
        ("kubeconfig", &shipped, &["kubeconfig"]),
        ("backup", &shipped, &["backup"]),
        ("reset", &shipped, &["reset", "--limit", "cluster-03"]),
        ("upgrade", &raised, &["upgrade", "--limit", "cluster-01,cluster-02"]),
        ("renew-certs", &shipped, &["renew-certs", "--limit", "cluster-01"]),
    ];
    let mut failures = Vec::new();
    for (name, inventory, args) in cases {
        let text = dry_run(inventory, args);
        assert!(text.contains("dry run: nothing was run."), "{name}: {text}");
        let golden = repo().join(format!("tests/golden/day2-{name}.txt"));
        if update {
            std::fs::write(&golden, &text).expect("write the golden file");
            continue;
        }
        if std::fs::read_to_string(&golden).unwrap_or_default() != text {
            failures.push(format!(
                "{name}: differs from {} (UPDATE_GOLDEN=1 to accept)\n{text}",
                golden.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn stamps_are_replaced_and_other_text_kept() {
    assert_eq!(
        without_stamps("etcd-cluster-01-20261201-215500-ab12.db in 2026, # Snapshot 20261201-215500-ab12: é"),
        "etcd-cluster-01-<stamp>.db in 2026, # Snapshot <stamp>: é"
    );
}
