//! The `s3-buckets` stage against a real S3-compatible server (moto, from PyPI) on loopback:
//! the command kubeboot would send is rendered from the shipped playbook and run as it is.

mod common;

use std::path::Path;
use std::process::Command;

use common::{free_port, start_moto};
use kubeboot::facts::Facts;
use kubeboot::journal::Progress;
use kubeboot::plan::{self, Action, Selection};
use kubeboot::{inventory, playbook};

/// The rendered `s3-buckets` command for the central node, pointed at `endpoint`.
fn bucket_command(endpoint: &str) -> (String, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inv = inventory::load(&root.join("inventory.toml")).unwrap_or_else(|d| panic!("{d}"));
    inv.vars
        .insert("s3_endpoint".into(), serde_json::Value::String(endpoint.into()));
    let books = playbook::load(&root.join("playbooks"), &root.join("assets")).unwrap_or_else(|d| panic!("{d}"));
    let sel = Selection {
        only: vec!["s3-buckets".into()],
        ..Selection::default()
    };
    let plan = plan::plan_node(
        &inv,
        &books,
        "node-194",
        &Facts::assumed(),
        &Progress::empty(),
        &kubeboot::secrets::Digests::none(),
        &sel,
    )
    .unwrap_or_else(|d| panic!("{d}"));
    // The node-side variant (jump_checks = false); the jump-host one is tested in tests/jump_tasks.rs.
    let command = plan
        .tasks
        .iter()
        .find_map(|t| match &t.action {
            Action::Run(kubeboot::task::Run { command }) => Some(command),
            _ => None,
        })
        .expect("the s3-buckets stage has a curl task for jump_checks = false");
    let buckets = ["s3_bucket_thanos", "s3_bucket_opensearch", "s3_bucket_longhorn"]
        .iter()
        .map(|k| inv.vars[*k].as_str().unwrap_or_default().to_string())
        .collect();
    (command.clone(), buckets)
}

fn run(command: &str) -> (bool, String) {
    let out = Command::new("sh")
        .args(["-c", command])
        .env("AWS_ACCESS_KEY_ID", "testkey")
        .env("AWS_SECRET_ACCESS_KEY", "testsecret-do-not-print")
        .output()
        .expect("sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "testkey:testsecret-do-not-print",
        ])
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn missing_buckets_are_created_and_existing_data_is_never_touched() {
    let (_moto, endpoint) = start_moto();
    let (command, buckets) = bucket_command(&endpoint);
    assert_eq!(buckets, ["thanos-bucket", "opensearch-logs", "longhorn-backups"]);

    let (ok, text) = run(&command);
    assert!(ok, "first run failed:\n{text}");
    for b in &buckets {
        assert!(
            text.contains(&format!("bucket {b}: created")),
            "{b} not created:\n{text}"
        );
    }
    let listing = curl(&[&format!("{endpoint}/")]);
    for b in &buckets {
        assert!(
            listing.contains(&format!("<Name>{b}</Name>")),
            "{b} missing from ListBuckets:\n{listing}"
        );
    }

    // Data written by the clusters must survive any number of re-runs.
    let object = format!("{endpoint}/thanos-bucket/01HBLOCK/meta.json");
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        "block",
        &object,
    ]);
    assert_eq!(curl(&[&object]), "block", "the test object was not stored");
    let (ok, text) = run(&command);
    assert!(ok, "second run failed:\n{text}");
    for b in &buckets {
        assert!(
            text.contains(&format!("bucket {b}: exists")),
            "{b} should be reported as existing:\n{text}"
        );
    }
    assert_eq!(curl(&[&object]), "block", "a re-run touched existing data");
    assert!(
        !text.contains("testsecret-do-not-print"),
        "the secret key was printed:\n{text}"
    );
}

#[test]
fn an_unreachable_endpoint_fails_with_a_clear_message() {
    let port = free_port();
    let (command, _) = bucket_command(&format!("http://127.0.0.1:{port}"));
    let (ok, text) = run(&command);
    assert!(!ok, "must fail without an S3 server:\n{text}");
    assert!(text.contains("is not reachable"), "{text}");
}
