//! `kubeboot reset` on a terminal: the operator types the cluster names. The real binary runs in tmux (its own
//! socket) against a lab of real sshd nodes with a harmless `reset/` playbook folder; wrong names are refused
//! (exit 2, nothing runs), the right ones run the reset of that cluster only and the journal forgets its node.
//! Net 127.0.174.x. Needs root, sshd, sudo and tmux; a missing one fails (never skips).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::start_lab;

struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, script: &Path) -> Tmux {
        // A socket per session: a server still exiting on a reused socket makes the next one fail.
        let name = script
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmux = Tmux {
            socket: dir.join(format!("tmux-{name}.sock")),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "100",
            "-y",
            "30",
            "-s",
            "kb",
            &format!("sh {}", script.display()),
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux (is it installed?): {e}"))
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-S", "-100", "-t", "kb"]).stdout).into_owned()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_line(&self, text: &str) {
        let out = self.run(&["send-keys", "-t", "kb", "-l", text]);
        assert!(out.status.success());
        let out = self.run(&["send-keys", "-t", "kb", "Enter"]);
        assert!(out.status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn exit_code(path: &Path, tmux: &Tmux) -> i32 {
    let start = Instant::now();
    loop {
        if let Ok(code) = fs::read_to_string(path)
            && let Ok(code) = code.trim().parse()
        {
            return code;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "kubeboot did not exit:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reset_on_a_terminal_runs_only_after_the_cluster_names_are_typed() {
    let t = start_lab(174, 2);
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
    let tmux = Tmux::start(t.work(), &path);
    tmux.wait_for("the question", |s| s.contains("Type the cluster names to confirm"));
    tmux.type_line(other);
    assert_eq!(exit_code(&code, &tmux), 2, "{}", tmux.screen());
    let screen = tmux.screen();
    assert!(
        screen.contains("the typed names do not match the clusters to reset"),
        "{screen}"
    );
    drop(tmux);
    let node_of = |cluster: &str| if cluster == "lab-01" { "node-1" } else { "node-2" };
    assert!(!t.runs(node_of(target)).contains_key("reset"), "a refused reset ran");

    // The right name: that cluster's node is reset, the other is untouched; its install is forgotten.
    let (path, code) = script("right", target);
    let tmux = Tmux::start(t.work(), &path);
    tmux.wait_for("the question", |s| s.contains("Type the cluster names to confirm"));
    tmux.type_line(target);
    assert_eq!(exit_code(&code, &tmux), 0, "{}", tmux.screen());
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
