//! `kubeboot reset` on a terminal: the operator types the cluster names. The real binary runs in tmux (its own
//! socket) against a lab of real sshd nodes with a harmless `reset/` playbook folder; wrong names are refused
//! (exit 2, nothing runs), the right ones run the reset of that cluster only and the journal forgets its node.
//! Needs root, sshd, sudo and tmux; a missing one fails (never skips).

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::start_lab;
use common::tmux::Tmux;

/// How long the question or the program's exit may take.
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn reset_on_a_terminal_runs_only_after_the_cluster_names_are_typed() {
    let t = start_lab(2);
    let books = t.playbooks();
    for folder in ["backup", "reset"] {
        fs::create_dir_all(books.join(folder)).unwrap();
    }
    fs::write(
        books.join("10-install.yaml"),
        common::stage("install", &[common::logging_task("install", "true")]),
    )
    .unwrap();
    fs::write(
        books.join("backup/10-backup.yaml"),
        "name: etcd-snapshot\nhosts: all\ntasks:\n  - name: note the stamp\n    run: echo '{{ backup_stamp }} {{ backup_required }}'\n",
    )
    .unwrap();
    fs::write(
        books.join("reset/10-reset.yaml"),
        common::stage("reset", &[common::logging_task("reset", "true")]),
    )
    .unwrap();
    // The install first, headless: both nodes' install is recorded done.
    t.apply(&[]).assert_code(0);

    let kubeboot = common::bin();
    let script = |name: &str, typed_cluster: &str| -> (PathBuf, PathBuf) {
        let code = t.work().join(format!("{name}.code"));
        let path = t.work().join(format!("{name}.sh"));
        let line = format!(
            "{} -i {} -p {} --state-dir {} reset --limit {typed_cluster}; echo $? > {}\nsleep 30\n",
            kubeboot.display(),
            t.inventory().display(),
            books.display(),
            t.state_dir().display(),
            code.display()
        );
        fs::write(&path, line).unwrap();
        (path, code)
    };
    let inventory = fs::read_to_string(t.inventory()).unwrap();
    assert!(inventory.contains("cluster = \"lab-02\""), "{inventory}");
    let (target, other) = ("lab-02", "lab-01");
    // Wrong names: refused, nothing runs.
    let (path, code) = script("wrong", target);
    let tmux = Tmux::start(t.work(), &path, TIMEOUT);
    tmux.wait_for_history("the question", |s| s.contains("Type the cluster names to confirm"));
    tmux.type_line(other);
    assert_eq!(tmux.exit_code(&code), 2, "{}", tmux.history());
    let screen = tmux.history();
    assert!(
        screen.contains("the typed names do not match the clusters to reset"),
        "{screen}"
    );
    drop(tmux);
    let node_of = |cluster: &str| if cluster == "lab-01" { "node-1" } else { "node-2" };
    assert!(!t.runs(node_of(target)).contains_key("reset"), "a refused reset ran");

    // The right name: that cluster's node is reset, the other is untouched; its install is forgotten.
    let (path, code) = script("right", target);
    let tmux = Tmux::start(t.work(), &path, TIMEOUT);
    tmux.wait_for_history("the question", |s| s.contains("Type the cluster names to confirm"));
    tmux.type_line(target);
    assert_eq!(tmux.exit_code(&code), 0, "{}", tmux.history());
    drop(tmux);
    assert_eq!(t.runs(node_of(target)).get("reset"), Some(&1));
    assert!(!t.runs(node_of(other)).contains_key("reset"));
    let again = t.apply(&[]);
    again.assert_code(0);
    assert_eq!(
        t.runs(node_of(target)).get("install"),
        Some(&2),
        "the reset node is installed again"
    );
    assert_eq!(
        t.runs(node_of(other)).get("install"),
        Some(&1),
        "the other node stays done"
    );
}
