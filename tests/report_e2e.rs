//! `kubeboot report` end to end: an apply on the lab (real sshd nodes) with known secret values, then the
//! report archive unpacked: the files a ticket needs are there, and no secret byte string is anywhere in it,
//! not even one planted in a log and a playbook after the run (the report's own masking is the second guard).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use common::*;
use kubeboot::lab::{self, InventoryOptions};
use serde_json::Value;

const S3_ENV: &str = "KB_REPORT_S3_KEY";
const S3_VALUE: &str = "S3-env-value-7c1e9a0b-never-in-a-report";
const TOKEN_VALUE: &str = "file-token-4d2f88-never-in-a-report";
const FETCHED: &str = "FETCHED-CONTENT-not-for-the-report";

/// The archive's entries: path below the top folder → (entry type, bytes).
fn unpack(path: &std::path::Path) -> (String, BTreeMap<String, (tar::EntryType, Vec<u8>)>) {
    let file = fs::File::open(path).expect("the archive exists");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut top = String::new();
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("a tar.gz") {
        let mut entry = entry.expect("a readable entry");
        let name = entry.path().expect("a path").to_string_lossy().into_owned();
        let (first, rest) = name.split_once('/').expect("every entry is in one top folder");
        top = first.to_string();
        let kind = entry.header().entry_type();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read an entry");
        out.insert(rest.to_string(), (kind, bytes));
    }
    (top, out)
}

#[test]
fn the_report_holds_what_a_ticket_needs_and_no_secret_value() {
    let t = start_lab(2);
    let password = lab::password(&t.lab.dir)
        .expect("the lab password")
        .expose()
        .to_string();
    let token_file = t.work().join("token");
    fs::write(&token_file, format!("{TOKEN_VALUE}\n")).expect("write");
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    // Log in and sudo by password (from a file), a secret from the environment and one from a file.
    let opts = InventoryOptions {
        path: t.work().join("inventory.toml"),
        key: false,
        password_file: Some(lab::password_file(&t.lab.dir)),
        ..InventoryOptions::for_lab(&t.lab)
    };
    let inv = lab::write_inventory(&t.lab, &opts).expect("write the inventory");
    let mut text = fs::read_to_string(&inv).expect("read");
    text.push_str(&format!(
        "\n[secrets]\ns3_key = {{ env = \"{S3_ENV}\" }}\ntoken = {{ file = \"{}\" }}\n",
        token_file.display()
    ));
    fs::write(&inv, text).expect("write");
    // The fetched content is put together on the node, so the playbook does not hold it.
    let (head, tail) = FETCHED.split_at(8);
    t.write_playbook(
        "00-work.yaml",
        &format!(
            "name: work\nhosts: all\nbecome: true\ntasks:\n\
             \x20 - name: check\n    changed_when: false\n    run: id -un\n\
             \x20 - name: use the secrets\n    env: {{ S3: \"{{{{ secrets.s3_key }}}}\", TOKEN: \"{{{{ secrets.token }}}}\" }}\n    run: echo \"s3=$S3 token=$TOKEN\"\n\
             \x20 - name: a file to fetch\n    run: echo \"{head}\"\"{tail}\" > {{{{ lab_root }}}}/fetch-me\n\
             \x20 - name: fetch it\n    fetch: {{ src: \"{{{{ lab_root }}}}/fetch-me\", dest: \"fetched/{{{{ node.name }}}}.txt\" }}\n"
        ),
    );
    t.write_playbook(
        "10-fails.yaml",
        "name: fails\nhosts: node-2\ntasks:\n  - name: broken\n    run: echo 'no such thing' >&2; exit 3\n",
    );
    let mut apply = t.kubeboot_with(&inv, &["apply", "--yes", "--output", "json"]);
    apply.env(S3_ENV, S3_VALUE);
    let run = run(apply);
    run.assert_code(1);
    let state = t.state_dir();
    assert!(
        state.join("fingerprint.key").exists(),
        "the run made a digest key\n{run}"
    );
    let fetched = fs::read_to_string(state.join("fetched/node-1.txt")).unwrap_or_default();
    assert_eq!(
        fetched.trim(),
        FETCHED,
        "the fetch task wrote into the state dir\n{run}"
    );
    // What the report must leave out, next to what it takes: a kubeconfig, a backup, the fetched files.
    fs::write(state.join("kubeconfig.yaml"), FETCHED).expect("write");
    fs::create_dir_all(state.join("backups/cluster-1")).expect("mkdir");
    fs::write(state.join("backups/cluster-1/etcd.db"), FETCHED).expect("write");
    // The second guard: secret values in a log and a playbook after the run (masked when written, normally).
    let latest = fs::read_link(state.join("logs/latest")).expect("logs/latest is a link");
    let log = state.join("logs").join(&latest).join("node-1.log");
    let mut planted = fs::read(&log).expect("node-1 has a log");
    planted.extend_from_slice(format!("planted s3={S3_VALUE} pw={password} token={TOKEN_VALUE}\n").as_bytes());
    fs::write(&log, planted).expect("write");
    let book = t.playbooks().join("10-fails.yaml");
    let mut yaml = fs::read_to_string(&book).expect("read");
    yaml.push_str(&format!("# pasted by hand: {password}\n"));
    fs::write(&book, yaml).expect("write");

    let out = t.work().join("ticket.tar.gz");
    let mut report = t.kubeboot_with(&inv, &["report", "--out", out.to_str().expect("utf-8")]);
    report.env(S3_ENV, S3_VALUE);
    let made = common::run(report);
    made.assert_code(0);
    assert!(made.stdout.contains("ticket.tar.gz"), "{made}");
    assert!(made.stdout.contains("3 value(s) known"), "{made}");
    let (top, files) = unpack(&out);
    assert!(top.starts_with("kubeboot-report-"), "{top}");

    // Nothing secret, and nothing it must leave out.
    for (name, (kind, bytes)) in &files {
        assert_eq!(*kind, tar::EntryType::Regular, "{name} is not a plain file");
        for secret in [S3_VALUE, password.as_str(), TOKEN_VALUE, FETCHED] {
            assert!(
                !contains_bytes(bytes, secret.as_bytes()),
                "{name} holds a value it must not"
            );
        }
        assert!(
            !["fingerprint.key", "kubeconfig", "backups", "fetched"]
                .iter()
                .any(|x| name.contains(x)),
            "{name} must not be in a report"
        );
    }
    // What a ticket needs.
    for want in [
        "README.txt",
        "version.txt",
        "status.txt",
        "status.json",
        "journal.jsonl",
        "logs/latest/node-1.log",
        "logs/latest/node-2.log",
        "logs/latest/kubeboot.log",
        "inventory/inventory.toml",
        "playbooks/00-work.yaml",
        "playbooks/10-fails.yaml",
    ] {
        assert!(files.contains_key(want), "{want} is missing: {:?}", files.keys());
    }
    let text = |name: &str| String::from_utf8_lossy(&files[name].1).into_owned();
    assert!(text("logs/latest/node-1.log").contains("planted s3=**** pw=**** token=****"));
    assert!(text("logs/latest/node-1.log").contains("s3=**** token=****"));
    assert!(text("playbooks/10-fails.yaml").contains("# pasted by hand: ****"));
    assert_eq!(text("version.txt"), format!("kubeboot {}\n", env!("CARGO_PKG_VERSION")));
    let status = text("status.txt");
    assert!(
        status.contains("FAILED: fails / broken: exit code 3: no such thing"),
        "{status}"
    );
    let rows: Vec<Value> = text("status.json")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(text("README.txt").contains("left out on purpose: fingerprint.key"));
    assert!(
        text("inventory/inventory.toml").contains(S3_ENV),
        "the inventory as it is"
    );

    // A second report never replaces the first; a state dir that is not there is bad input. Both exit 2.
    let again = common::run(t.kubeboot_with(&inv, &["report", "--out", out.to_str().expect("utf-8")]));
    again.assert_code(2);
    assert!(again.stderr.contains("already exists"), "{again}");
    let mut nowhere = std::process::Command::new(bin());
    nowhere
        .arg("-i")
        .arg(&inv)
        .arg("--state-dir")
        .arg(t.work().join("no-such-state"))
        .arg("report");
    let nowhere = common::run(nowhere);
    nowhere.assert_code(2);
    assert!(nowhere.stderr.contains("no state dir"), "{nowhere}");
}
