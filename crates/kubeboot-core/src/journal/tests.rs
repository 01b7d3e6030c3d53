//! The journal read back: progress, generations, forgetting, torn lines, the lock.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::event::{SkipReason, TaskStatus};

use super::state_dir::DIGEST_KEY;
use super::*;

fn task(run: &str, node: &str, name: &str, fp: &str, status: TaskStatus) -> Record {
    Record::Task {
        run: run.into(),
        ts: "t".into(),
        node: node.into(),
        stage: "s".into(),
        task: name.into(),
        fingerprint: fp.into(),
        secrets: None,
        inputs: BTreeMap::new(),
        status,
        reason: None,
        error: (status == TaskStatus::Failed).then(|| "exit 1".to_string()),
    }
}

#[test]
fn forget_drops_a_nodes_progress_except_the_stages_it_keeps() {
    let mut p = Progress::empty();
    for r in [
        task("r1", "n1", "a", "f", TaskStatus::Changed),
        task("r1", "n2", "a", "f", TaskStatus::Changed),
    ] {
        p.apply(&r);
    }
    p.mark_done("n1", "reset", "kubeadm reset", "g");
    p.apply(&Record::Forget {
        run: "r2".into(),
        ts: "t".into(),
        node: "n1".into(),
        keep: vec!["reset".into()],
    });
    assert!(!p.is_done("n1", "s", "a", "f"), "the install is forgotten");
    assert!(
        p.is_done("n1", "reset", "kubeadm reset", "g"),
        "the reset's own progress stays"
    );
    assert!(p.is_done("n2", "s", "a", "f"), "other nodes are untouched");
    let line = serde_json::to_string(&Record::Forget {
        run: "r".into(),
        ts: "t".into(),
        node: "n1".into(),
        keep: Vec::new(),
    })
    .unwrap();
    assert_eq!(line, r#"{"record":"forget","run":"r","ts":"t","node":"n1"}"#);
}

fn journal_text(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect()
}

#[test]
fn resume_knows_tasks_finished_before_by_fingerprint() {
    let text = journal_text(&[
        task("r1", "n1", "a", "f1", TaskStatus::Changed),
        task("r1", "n1", "b", "f2", TaskStatus::Ok),
    ]);
    let p = Progress::read(text.as_bytes()).unwrap();
    assert!(p.is_done("n1", "s", "a", "f1"));
    assert!(p.is_done("n1", "s", "b", "f2"));
    assert!(!p.is_done("n1", "s", "a", "changed-content"));
    assert!(!p.is_done("n2", "s", "a", "f1"));
}

#[test]
fn a_later_failure_forgets_the_earlier_success() {
    let text = journal_text(&[
        task("r1", "n1", "a", "f1", TaskStatus::Changed),
        task("r2", "n1", "a", "f1", TaskStatus::Failed),
    ]);
    let p = Progress::read(text.as_bytes()).unwrap();
    assert!(!p.is_done("n1", "s", "a", "f1"));
    assert_eq!(p.node("n1").unwrap().failed.as_ref().unwrap().1, "a");
}

#[test]
fn a_fresh_generation_forgets_what_finished_before_it_for_its_stages_only() {
    let mut records = vec![
        task("r1", "n1", "a", "f1", TaskStatus::Changed),
        task("r1", "n2", "a", "f1", TaskStatus::Changed),
    ];
    records.push(Record::Fresh {
        run: "r2".into(),
        ts: "t".into(),
        node: "n1".into(),
        stages: vec!["s".into()],
    });
    let p = Progress::read(journal_text(&records).as_bytes()).unwrap();
    assert!(!p.is_done("n1", "s", "a", "f1"), "n1's stage s started anew");
    assert!(p.is_done("n2", "s", "a", "f1"), "n2 was not part of the fresh run");
    assert_eq!(p.done("n1", "s", "a").map(|d| d.generation), Some(0));
    records.push(task("r2", "n1", "a", "f1", TaskStatus::Ok));
    let p = Progress::read(journal_text(&records).as_bytes()).unwrap();
    assert!(p.is_done("n1", "s", "a", "f1"), "done again in the new generation");
}

#[test]
fn a_task_that_started_and_never_ended_is_not_done() {
    let started = Record::TaskStarted {
        run: "r2".into(),
        ts: "t".into(),
        node: "n1".into(),
        stage: "s".into(),
        task: "a".into(),
    };
    let text = journal_text(&[task("r1", "n1", "a", "f1", TaskStatus::Changed), started]);
    let p = Progress::read(text.as_bytes()).unwrap();
    assert!(
        !p.is_done("n1", "s", "a", "f1"),
        "cut off in the middle: its earlier finish no longer holds"
    );
    assert!(p.cut_off("n1", "s", "a"));
}

#[test]
fn a_journal_of_an_older_kubeboot_reads_as_generation_zero() {
    // Written before generations, secret digests and input digests existed.
    let text = concat!(
        r#"{"record":"run","run":"r0","ts":"t","pid":1}"#,
        "\n",
        r#"{"record":"task","run":"r0","ts":"t","node":"n1","stage":"s","task":"a","fingerprint":"f1","status":"changed"}"#,
        "\n",
        r#"{"record":"task","run":"r0","ts":"t","node":"n1","stage":"s","task":"b","fingerprint":"f2","status":"skipped","reason":"guard"}"#,
        "\n",
    );
    let p = Progress::read(text.as_bytes()).unwrap();
    assert_eq!(p.unreadable_lines, 0);
    assert!(p.is_done("n1", "s", "a", "f1"));
    assert!(p.is_done("n1", "s", "b", "f2"));
    let d = p.done("n1", "s", "a").unwrap();
    assert_eq!((d.generation, d.secrets.as_deref(), d.inputs.len()), (0, None, 0));
}

#[test]
fn a_skip_as_done_keeps_where_the_task_really_finished() {
    let mut skipped = task("r2", "n1", "b", "f2", TaskStatus::Skipped);
    if let Record::Task { reason, .. } = &mut skipped {
        *reason = Some(SkipReason::Done);
    }
    let text = journal_text(&[
        task("r1", "n1", "b", "f2", TaskStatus::Ok),
        task("r1", "n1", "a", "f1", TaskStatus::Changed),
        skipped,
    ]);
    let p = Progress::read(text.as_bytes()).unwrap();
    let b = p.done("n1", "s", "b").unwrap();
    assert!(
        b.seq < p.changed_at("n1", "s", "a").unwrap(),
        "b still finished before a changed"
    );
}

fn facts(run: &str, node: &str, boot: &str) -> Record {
    Record::Facts {
        run: run.into(),
        node: node.into(),
        facts: crate::facts::Facts {
            boot_id: boot.into(),
            ..crate::facts::Facts::assumed()
        },
    }
}

fn synced(run: &str, node: &str) -> Record {
    Record::Synced {
        run: run.into(),
        ts: "t".into(),
        node: node.into(),
    }
}

#[test]
fn a_finish_the_node_never_synced_is_lost_when_it_restarted_since() {
    let text = journal_text(&[
        facts("r1", "n1", "boot-a"),
        task("r1", "n1", "a", "f1", TaskStatus::Changed),
        synced("r1", "n1"),
        task("r1", "n1", "b", "f2", TaskStatus::Changed),
    ]);
    let p = Progress::read(text.as_bytes()).unwrap();
    let a = p.done("n1", "s", "a").unwrap();
    let b = p.done("n1", "s", "b").unwrap();
    assert_eq!(b.boot, "boot-a");
    assert!(
        !p.lost_in_restart("n1", a, "boot-b"),
        "a was on the disk before the restart"
    );
    assert!(
        p.lost_in_restart("n1", b, "boot-b"),
        "b was written after the last sync, then the node restarted"
    );
    assert!(
        !p.lost_in_restart("n1", b, "boot-a"),
        "the same boot (kubeboot was killed, not the node) keeps it"
    );
    assert!(
        !p.lost_in_restart("n1", b, ""),
        "a boot not known now counts as the same"
    );
    // A journal of an older kubeboot has no boot: nothing is taken as lost.
    let old = Progress::read(journal_text(&[task("r1", "n1", "b", "f2", TaskStatus::Changed)]).as_bytes()).unwrap();
    assert!(!old.lost_in_restart("n1", old.done("n1", "s", "b").unwrap(), "boot-b"));
    let line = serde_json::to_string(&synced("r", "n1")).unwrap();
    assert_eq!(line, r#"{"record":"synced","run":"r","ts":"t","node":"n1"}"#);
}

#[test]
fn the_digest_key_is_made_once_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    assert!(state.existing_digest_key().unwrap().is_none());
    let key = state.digest_key().unwrap();
    let again = state.digest_key().unwrap();
    assert_eq!(key.bytes(), again.bytes());
    let mode = fs::metadata(dir.path().join(DIGEST_KEY)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    fs::write(dir.path().join(DIGEST_KEY), b"short").unwrap();
    assert!(state.existing_digest_key().is_err());
}

#[test]
fn a_torn_last_line_is_skipped_and_counted() {
    let mut text = journal_text(&[task("r1", "n1", "a", "f1", TaskStatus::Changed)]);
    text.push_str("{\"record\":\"task\",\"run\":\"r1\",\"no");
    let p = Progress::read(text.as_bytes()).unwrap();
    assert!(p.is_done("n1", "s", "a", "f1"));
    assert_eq!(p.unreadable_lines, 1);
}

#[test]
fn writer_after_a_torn_line_keeps_new_records_readable() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut w = state.writer().unwrap();
    w.append(&task("r1", "n1", "a", "f1", TaskStatus::Changed)).unwrap();
    drop(w);
    let mut f = OpenOptions::new().append(true).open(state.journal_path()).unwrap();
    f.write_all(b"{\"record\":\"ta").unwrap();
    drop(f);
    let mut w = state.writer().unwrap();
    w.append(&task("r2", "n1", "b", "f2", TaskStatus::Changed)).unwrap();
    w.sync().unwrap();
    let p = state.progress().unwrap();
    assert!(p.is_done("n1", "s", "a", "f1"));
    assert!(p.is_done("n1", "s", "b", "f2"));
    assert_eq!(p.unreadable_lines, 1);
}

#[test]
fn a_second_lock_on_the_same_state_dir_is_refused_with_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let _held = state.lock().unwrap();
    let err = StateDir::open(dir.path()).unwrap().lock().unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&std::process::id().to_string()), "{text}");
}

#[test]
fn state_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state");
    let state = StateDir::open(&root).unwrap();
    state.writer().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&state.journal_path()), 0o600);
}

proptest::proptest! {
    /// A crash can cut the journal at any byte: every prefix loads, and it never claims
    /// more done than the whole journal says.
    #[test]
    fn any_prefix_of_a_journal_loads_and_claims_no_extra_done(cut in 0usize..2000) {
        let records: Vec<Record> = (0..20)
            .map(|i| task("r1", &format!("n{}", i % 3), &format!("t{i}"), &format!("f{i}"), TaskStatus::Changed))
            .collect();
        let text = journal_text(&records);
        let cut = cut.min(text.len());
        let prefix = Progress::read(&text.as_bytes()[..cut]).unwrap();
        let full = Progress::read(text.as_bytes()).unwrap();
        for ((node, stage, t), d) in &prefix.done {
            proptest::prop_assert!(full.is_done(node, stage, t, &d.fingerprint));
        }
    }
}
