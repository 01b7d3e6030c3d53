//! Nothing kubeboot makes on a node for its own purposes outlives the run, however the run ends:
//! each test lists the node's /tmp (each lab node has its own, for the login user's shell and
//! root's under sudo alike) before and after one way of ending, and finds no `kubeboot-*` left.
//! Real OpenSSH sshd nodes on loopback (see tests/common).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use kubeboot::lab;

/// What `kubeboot-*` entries a node's /tmp holds, as `owner name` (owner `root` or `kblab`).
fn leftovers(t: &TestLab, node: &str) -> Vec<String> {
    let kblab = lab_uid();
    let mut found: Vec<String> = fs::read_dir(t.lab.node_tmp(node))
        .expect("the node's /tmp")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kubeboot"))
        .map(|e| {
            let uid = e.metadata().map(|m| m.uid()).unwrap_or(u32::MAX);
            let owner = match uid {
                0 => "root".to_string(),
                u if u == kblab => "kblab".to_string(),
                u => format!("uid {u}"),
            };
            format!("{owner} {}", e.file_name().to_string_lossy())
        })
        .collect();
    found.sort();
    found
}

fn lab_uid() -> u32 {
    let home = Path::new("/home").join(lab::USER);
    fs::metadata(&home).map(|m| m.uid()).expect("the lab user's home")
}

fn all_leftovers(t: &TestLab, nodes: &[&str]) -> Vec<String> {
    nodes
        .iter()
        .flat_map(|n| leftovers(t, n).into_iter().map(move |l| format!("{n}: {l}")))
        .collect()
}

/// Both shells' folders (the login user's and root's) are there: the run is under way.
fn both_shells_have_folders(t: &TestLab, node: &str) -> bool {
    let l = leftovers(t, node);
    l.iter().any(|e| e.starts_with("kblab kubeboot-jobs.")) && l.iter().any(|e| e.starts_with("root kubeboot-jobs."))
}

/// Playbook: an upload as root, a quick root task (so root's shell runs), then `long` as the login user.
fn write_playbook(t: &TestLab, long: &str) {
    t.write_playbook(
        "00-work.yaml",
        &format!(
            "name: work\nhosts: all\ntasks:\n\
             \x20 - name: upload\n    become: true\n    copy:\n      content: \"x\\n\"\n      dest: \"{{{{ lab_root }}}}/copied\"\n\
             \x20 - name: as root\n    become: true\n    run: ls -a /tmp > {{{{ lab_root }}}}/seen-by-root\n\
             \x20 - name: as the user\n    run: ls -a /tmp > {{{{ lab_root }}}}/seen-by-user; {long}\n"
        ),
    );
}

/// An inventory with keepalives (and so the shells' beats) every second.
fn fast_keepalive_inventory(t: &TestLab) -> std::path::PathBuf {
    t.keepalive_inventory("1s")
}

fn spawn(t: &TestLab, inventory: &Path) -> Child {
    t.spawn_apply_with(inventory)
}

/// Starts the run and waits until `sleeper` runs on every node with both shells' folders there.
fn start_and_wait(t: &TestLab, inventory: &Path, nodes: &[&str], sleeper: &str) -> Child {
    assert_eq!(all_leftovers(t, nodes), Vec::<String>::new(), "before the run");
    let child = spawn(t, inventory);
    let up = wait_until(Duration::from_secs(30), || {
        process_list().matches(sleeper).count() >= nodes.len() && nodes.iter().all(|n| both_shells_have_folders(t, n))
    });
    assert!(up, "the run did not get under way: {:?}", all_leftovers(t, nodes));
    child
}

fn assert_clean_within(t: &TestLab, nodes: &[&str], limit: Duration, after: &str) {
    let clean = wait_until(limit, || all_leftovers(t, nodes).is_empty());
    assert!(clean, "{after}, the nodes still hold {:?}", all_leftovers(t, nodes));
}

#[test]
fn a_normal_run_leaves_nothing_and_its_tasks_saw_the_folders() {
    let t = start_private_tmp_lab(2);
    let nodes = ["node-1", "node-2"];
    write_playbook(&t, "true");
    assert_eq!(all_leftovers(&t, &nodes), Vec::<String>::new(), "before the run");
    let run = t.apply(&[]);
    run.assert_code(0);
    // Nothing is waited for: a clean end removes the folders before kubeboot exits.
    assert_eq!(all_leftovers(&t, &nodes), Vec::<String>::new(), "after a normal run");
    for n in nodes {
        let seen = fs::read_to_string(t.root(n).join("seen-by-user")).expect("the user task ran");
        assert!(
            seen.contains("kubeboot-jobs."),
            "the test looks at the right /tmp: {seen}"
        );
    }
}

#[test]
fn ctrl_c_leaves_nothing() {
    let t = start_private_tmp_lab(2);
    let nodes = ["node-1", "node-2"];
    let sleeper = "sleep 300.172";
    write_playbook(&t, sleeper);
    let child = start_and_wait(&t, &t.inventory(), &nodes, sleeper);
    signal(child.id(), libc::SIGINT);
    let out = wait_with_cap(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130));
    assert_clean_within(&t, &nodes, Duration::from_secs(2), "after Ctrl-C");
    assert!(!process_list().contains(sleeper), "the task still runs");
}

#[test]
fn kill_9_of_kubeboot_leaves_nothing() {
    let t = start_private_tmp_lab(2);
    let nodes = ["node-1", "node-2"];
    let sleeper = "sleep 300.173";
    write_playbook(&t, sleeper);
    let child = start_and_wait(&t, &t.inventory(), &nodes, sleeper);
    signal(child.id(), libc::SIGKILL);
    let _ = wait_with_cap(child, Duration::from_secs(10));
    // The kernel closes kubeboot's connections: each shell's stdin ends and its EXIT trap cleans up.
    assert_clean_within(&t, &nodes, Duration::from_secs(10), "after kill -9 of kubeboot");
    assert!(
        wait_until(Duration::from_secs(5), || !process_list().contains(sleeper)),
        "the task still runs"
    );
}

#[test]
fn a_dropped_connection_leaves_nothing_once_the_beats_stop() {
    let t = start_private_tmp_lab(1);
    let nodes = ["node-1"];
    let sleeper = "sleep 300.174";
    write_playbook(&t, sleeper);
    let inv = fast_keepalive_inventory(&t);
    let child = start_and_wait(&t, &inv, &nodes, sleeper);
    // A frozen kubeboot is what a dropped connection looks like from the node: the connection
    // stays open, and nothing more arrives, not even a FIN.
    signal(child.id(), libc::SIGSTOP);
    let frozen = Instant::now();
    // 6 beats of 1 s missed, plus slack for a busy machine.
    assert_clean_within(&t, &nodes, Duration::from_secs(20), "once kubeboot went silent");
    let took = frozen.elapsed();
    let gone = wait_until(Duration::from_secs(5), || !process_list().contains(sleeper));
    signal(child.id(), libc::SIGKILL);
    signal(child.id(), libc::SIGCONT);
    let _ = wait_with_cap(child, Duration::from_secs(10));
    assert!(gone, "the task still runs after its shell gave up");
    assert!(took >= Duration::from_secs(4), "the shell gave up after only {took:?}");
}

#[test]
fn a_frozen_node_that_was_given_up_on_cleans_up_when_it_thaws() {
    let t = start_private_tmp_lab(1);
    let nodes = ["node-1"];
    let sleeper = "sleep 300.175";
    write_playbook(&t, sleeper);
    let inv = fast_keepalive_inventory(&t);
    let child = start_and_wait(&t, &inv, &nodes, sleeper);
    lab::pause_node(&t.lab.dir, "node-1").expect("freeze node-1");
    let out = wait_with_cap(child, Duration::from_secs(60));
    let frozen_left = leftovers(&t, "node-1");
    lab::resume_node(&t.lab.dir, "node-1").expect("thaw node-1");
    assert_eq!(out.status.code(), Some(1), "kubeboot gave up on the node by itself");
    assert_eq!(frozen_left.len(), 2, "a frozen node cannot clean up: {frozen_left:?}");
    assert_clean_within(&t, &nodes, Duration::from_secs(10), "after the node thawed");
}

#[test]
fn a_node_that_lost_power_is_cleaned_at_the_next_connection() {
    let t = start_private_tmp_lab(1);
    let nodes = ["node-1"];
    let sleeper = "sleep 300.176";
    write_playbook(&t, sleeper);
    let child = start_and_wait(&t, &t.inventory(), &nodes, sleeper);
    let before = leftovers(&t, "node-1");
    // SIGKILL to sshd and everything under it: no shell gets to run anything.
    lab::kill_node(&t.lab.dir, "node-1").expect("kill node-1");
    let _ = wait_with_cap(child, Duration::from_secs(60));
    assert_eq!(leftovers(&t, "node-1"), before, "what a power cut leaves");
    lab::start_node(&t.lab.dir, "node-1").expect("start node-1 again");

    write_playbook(&t, "true");
    let run = t.apply(&["--fresh"]);
    run.assert_code(0);
    assert_eq!(
        all_leftovers(&t, &nodes),
        Vec::<String>::new(),
        "the next run's shells removed what the killed ones left ({before:?})"
    );
}

#[test]
fn folders_of_shells_still_running_and_of_other_users_are_left_alone() {
    let t = start_private_tmp_lab(1);
    let tmp = t.lab.node_tmp("node-1");
    // A folder of a live shell of the lab user (this test's own `sleep` stands for it), one whose
    // shell file is incomplete, one without a shell file, and a dead shell's folder of another user.
    let sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep starts");
    let stat = fs::read_to_string(format!("/proc/{}/stat", sleeper.id())).expect("its stat");
    let start = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .nth(19)
        .expect("starttime")
        .to_string();
    let make = |name: &str, shell: Option<&str>, owner: &str| {
        let d = tmp.join(name);
        fs::create_dir(&d).expect("mkdir");
        if let Some(text) = shell {
            fs::write(d.join("shell"), text).expect("write shell");
        }
        let status = std::process::Command::new("chown")
            .args(["-R", &format!("{owner}:"), &d.display().to_string()])
            .status()
            .expect("chown");
        assert!(status.success());
    };
    make(
        "kubeboot-jobs.alive",
        Some(&format!("{} {start}\n", sleeper.id())),
        lab::USER,
    );
    make("kubeboot-jobs.partial", Some("1"), lab::USER);
    make("kubeboot-jobs.nomarker", None, lab::USER);
    make(
        "kubeboot-jobs.dead",
        Some(&format!("{} {start}\n", u32::MAX - 1)),
        lab::USER,
    );
    make(
        "kubeboot-jobs.reused",
        Some(&format!("{} 1\n", sleeper.id())),
        lab::USER,
    );
    make("kubeboot-jobs.other", Some(&format!("{} 1\n", u32::MAX - 1)), "nobody");
    t.write_playbook("00-s.yaml", &stage("s", &[logging_task("one", "true")]));
    t.apply(&[]).assert_code(0);
    let mut sleeper = sleeper;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(
        leftovers(&t, "node-1"),
        [
            "kblab kubeboot-jobs.alive",
            "kblab kubeboot-jobs.nomarker",
            "kblab kubeboot-jobs.partial",
            "uid 65534 kubeboot-jobs.other",
        ],
        "only the dead shells' folders of the lab user go"
    );
}
