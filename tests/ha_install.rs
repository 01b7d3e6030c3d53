//! The SHIPPED playbooks on the highly available example (examples/ha/inventory.toml: three control planes and a
//! worker in one cluster), end to end on an isolated local lab modelled on it.
//!
//! Each node is a real OpenSSH sshd on loopback with a private /etc, /var/lib, /usr/local, /opt, /root and /home and
//! recording stand-ins for kubeadm, kubectl, apt-get, ... (crates/kubeboot-lab/standins/standin.py). The kubeadm
//! stand-in plays the cluster: `kubeadm join` is refused unless its token, CA hash and certificate key are ones the
//! first control plane issued and still knows. The real `kubeboot apply --yes --output json` runs against the lab,
//! is killed (SIGKILL) twice on the way, and the test then reads the stand-ins' records (argv and time of every call).
//!
//! Needs root, sshd, sudo, unshare and /usr/bin/python3: a missing one fails the test, it never skips.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::isolated::{IsolatedLab, LabRun, model_with, rhel, start_isolated_lab, ubuntu};
use common::shipped::{files_below, secrets};
use common::{repo, strings};
use kubeboot::lab::{self, ContainerdLayout};
use serde_json::Value;

const HA: [&str; 4] = ["node-194", "node-196", "node-197", "node-198"];
const FIRST: &str = "node-194";
const JOINING: [&str; 3] = ["node-196", "node-197", "node-198"];
const VIP: &str = "192.168.101.220";

/// A lab like `model` (an inventory file) with these nodes, on a loopback range of its own.
fn start_lab(model: &Path, names: &[&str]) -> IsolatedLab {
    // One RHEL-like control plane that joins; both containerd config layouts.
    let kinds = vec![
        ubuntu(ContainerdLayout::V3),
        rhel(),
        ubuntu(ContainerdLayout::V2),
        ubuntu(ContainerdLayout::V3),
    ];
    start_isolated_lab(model, names, kinds, secrets())
}

/// What the suite reads of a run's events beyond [`LabRun`]'s own.
impl LabRun {
    fn status_of(&self, node: &str, task: &str) -> Option<String> {
        self.finished(node)
            .iter()
            .rev()
            .find(|e| e["task"] == task)
            .map(|e| e["status"].as_str().unwrap_or_default().to_string())
    }

    fn node_status(&self, node: &str) -> Option<&Value> {
        self.events
            .iter()
            .find(|e| e["event"] == "node_finished" && e["node"] == node)
    }
}

fn apply(t: &IsolatedLab) -> LabRun {
    apply_with(t, &t.lab.inventory, &[])
}

fn apply_with(t: &IsolatedLab, inventory: &Path, extra: &[&str]) -> LabRun {
    let mut args = vec!["apply", "--yes", "--output", "json"];
    args.extend(extra);
    t.run_with(inventory, &args)
}

/// Installs the lab's inventory without `later` (the cluster as it was before that node was added); `later` is
/// never touched.
fn install_without(t: &IsolatedLab, later: &str) {
    let mut smaller: toml::Table = std::fs::read_to_string(&t.lab.inventory)
        .expect("the lab inventory")
        .parse()
        .expect("TOML");
    if let Some(toml::Value::Array(nodes)) = smaller.get_mut("nodes") {
        nodes.retain(|n| n.get("name").and_then(toml::Value::as_str) != Some(later));
    }
    let smaller_path = t.dir().join(format!("without-{later}.toml"));
    std::fs::write(&smaller_path, toml::to_string(&smaller).expect("TOML")).expect("written");
    let first = apply_with(t, &smaller_path, &[]);
    assert_eq!(first.code, Some(0), "{}", first.explain());
    assert!(
        calls(t, later).is_empty(),
        "{later} was touched before it was in the inventory"
    );
}

fn plan_text(t: &IsolatedLab, inventory: &Path, extra: &[&str]) -> String {
    let mut args = vec!["plan"];
    args.extend(extra);
    let out = t.kubeboot_with(inventory, &args).output().expect("kubeboot plan runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// An apply killed with SIGKILL as soon as `node`'s stand-in has recorded a call `until` accepts (a held one, so
/// the call is still in progress on the node when kubeboot dies). The hold flags are removed afterwards.
fn apply_killed_at(t: &IsolatedLab, holds: &[(&str, &str)], what: &str, until: impl Fn(&str, &Call) -> bool) -> LabRun {
    let flags: Vec<PathBuf> = holds
        .iter()
        .map(|(node, name)| t.lab.standin_dir(node).join("hold").join(name))
        .collect();
    for f in &flags {
        std::fs::write(f, "").expect("a hold flag can be written");
    }
    let mut child = t
        .kubeboot(&["apply", "--yes", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the kubeboot binary starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let started = Instant::now();
    let mut hit = false;
    while started.elapsed() < Duration::from_secs(600) {
        if HA.iter().any(|n| calls(t, n).iter().any(|c| until(n, c))) {
            hit = true;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let status = child.wait().expect("kubeboot is reaped");
    for f in &flags {
        let _ = std::fs::remove_file(f);
    }
    let run = LabRun::from_parts(
        status.code(),
        &out.join().unwrap_or_default(),
        &err.join().unwrap_or_default(),
        started.elapsed(),
    );
    assert!(hit, "kubeboot never reached {what}\n{}", run.explain());
    assert_eq!(
        run.code,
        None,
        "kubeboot was killed, it did not exit\n{}",
        run.explain()
    );
    run
}

/// One stand-in call as recorded on a node.
#[derive(Debug, Clone)]
struct Call {
    t: f64,
    cmd: String,
    argv: Vec<String>,
    raw: String,
}

impl Call {
    fn is(&self, cmd: &str, args: &[&str]) -> bool {
        self.cmd == cmd && self.argv.len() >= args.len() && self.argv.iter().zip(args).all(|(a, b)| a == b)
    }

    fn line(&self) -> String {
        format!("{} {}", self.cmd, self.argv.join(" "))
    }
}

fn calls(t: &IsolatedLab, node: &str) -> Vec<Call> {
    let path = t.lab.standin_dir(node).join("record.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            // A line being written while a run is killed may be cut short.
            let v: Value = serde_json::from_str(l).ok()?;
            Some(Call {
                t: v["t"].as_f64().unwrap_or_default(),
                cmd: v["cmd"].as_str().unwrap_or_default().to_string(),
                argv: strings(&v["argv"]),
                raw: l.to_string(),
            })
        })
        .collect()
}

fn count(t: &IsolatedLab, node: &str, cmd: &str, args: &[&str]) -> usize {
    calls(t, node).iter().filter(|c| c.is(cmd, args)).count()
}

/// `kubeadm init` itself (not `kubeadm init phase ...`).
fn is_init(c: &Call) -> bool {
    c.is("kubeadm", &["init"]) && c.argv.get(1).is_none_or(|a| a != "phase")
}

fn inits(t: &IsolatedLab, node: &str) -> usize {
    calls(t, node).iter().filter(|c| is_init(c)).count()
}

fn dump(t: &IsolatedLab, node: &str) -> String {
    calls(t, node).iter().map(Call::line).collect::<Vec<_>>().join("\n")
}

/// The stand-in state of a node (what the "cluster" remembers: tokens, certificate keys, what a node joined with).
fn standin_state(t: &IsolatedLab, node: &str) -> Value {
    let path = t.lab.standin_dir(node).join("state.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lets every bootstrap token and certificate key the first control plane issued so far expire (kubeadm deletes
/// them after their TTL), as if the next run came hours later. Returns what expired.
fn expire_join_secrets(t: &IsolatedLab) -> Vec<String> {
    let path = t.lab.standin_dir(FIRST).join("state.json");
    let mut state = standin_state(t, FIRST);
    let mut gone = strings(&state["tokens"]);
    gone.extend(strings(&state["certificate_keys"]));
    state["tokens"] = Value::Array(Vec::new());
    state["certificate_keys"] = Value::Array(Vec::new());
    std::fs::write(&path, state.to_string()).expect("the stand-in state can be written");
    gone
}

fn leaks<'a>(bytes: &[u8], values: &'a [String]) -> Option<&'a str> {
    values
        .iter()
        .find(|v| !v.is_empty() && bytes.windows(v.len()).any(|w| w == v.as_bytes()))
        .map(String::as_str)
}

/// The lines of one node's section of `kubeboot plan`.
fn plan_section<'a>(plan: &'a str, node: &str) -> Vec<&'a str> {
    let head = format!("node {node} ");
    plan.lines()
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| !l.starts_with("node "))
        .collect()
}

/// The task line `name` in a plan section and the lines under it that start with `waits for`.
fn waits_of(section: &[&str], stage: &str, task: &str) -> Vec<String> {
    let stage_line = format!("  stage {stage}");
    let at_stage = section
        .iter()
        .position(|l| l.starts_with(&stage_line))
        .unwrap_or_else(|| panic!("no stage {stage} in\n{}", section.join("\n")));
    let rest = &section[at_stage + 1..];
    let at_task = rest
        .iter()
        .position(|l| l.ends_with(&format!("] {task} (sudo)")) || l.ends_with(&format!("] {task}")))
        .unwrap_or_else(|| panic!("no task {stage}/{task} in\n{}", section.join("\n")));
    rest[at_task + 1..]
        .iter()
        .take_while(|l| !l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()) && !l.starts_with("  stage"))
        .filter_map(|l| l.trim().strip_prefix("waits for ").map(String::from))
        .collect()
}

#[test]
fn the_ha_example_plans_as_a_runbook_of_who_waits_for_whom() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubeboot"))
        .current_dir(repo())
        .args(["-i", "examples/ha/inventory.toml", "-p", "playbooks", "--state-dir"])
        .arg(tempfile::tempdir().expect("a state dir").path())
        .arg("plan")
        .output()
        .expect("kubeboot runs");
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{plan}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The first control plane initialises and makes the join secrets; it waits for no one before the joins.
    let first = plan_section(&plan, FIRST);
    for line in [
        "     46. [run            ] kubeadm init (sudo)",
        "           registers output `join_command` (secret: masked, kept in memory only)",
        "           registers output `certificate_key` (secret: masked, kept in memory only)",
        "  stage kubeadm-join (one node of cluster-01 at a time)",
    ] {
        assert!(
            first.contains(&line),
            "{FIRST}: no line {line:?} in\n{}",
            first.join("\n")
        );
    }
    assert!(waits_of(&first, "kubeadm-init", "kubeadm init").is_empty());
    // Its final check waits for every other node to have joined.
    assert_eq!(
        waits_of(&first, "verify", "node ready"),
        JOINING.map(|n| format!("{n}: kubeadm-join/kubeadm join"))
    );

    // Control planes join with the join command and the certificate key; the worker with the join command only.
    for node in JOINING {
        let section = plan_section(&plan, node);
        assert!(
            section.contains(&"  stage kubeadm-join (one node of cluster-01 at a time)"),
            "{node}: the join stage is not serial:\n{}",
            section.join("\n")
        );
        let mut expected = vec![format!(
            "{FIRST}: kubeadm-init/join command (for output `join_command`)"
        )];
        if node != "node-198" {
            expected.insert(
                0,
                format!("{FIRST}: kubeadm-init/certificate key (for output `certificate_key`)"),
            );
        }
        assert_eq!(waits_of(&section, "kubeadm-join", "kubeadm join"), expected, "{node}");
        // Nothing but the first control plane runs kubeadm init or the cluster-wide stages.
        assert!(
            !section
                .iter()
                .any(|l| l.contains("[run            ] kubeadm init") || l.starts_with("  stage cilium")),
            "{node}:\n{}",
            section.join("\n")
        );
    }
}

#[test]
fn ha_example_installs_end_to_end_and_resumes_after_kill_9_at_the_first_control_plane_and_during_a_join() {
    let t = start_lab(&repo().join("examples/ha/inventory.toml"), &HA);
    let mut issued: Vec<String> = Vec::new();

    // 1. Killed once the first control plane has initialised, while it makes the join command.
    let killed_after_init = apply_killed_at(
        &t,
        &[(FIRST, "kubeadm-token")],
        "the join command on the first control plane",
        |n, c| n == FIRST && c.is("kubeadm", &["token", "create"]),
    );
    assert_eq!(inits(&t, FIRST), 1, "{}", dump(&t, FIRST));
    for node in JOINING {
        assert_eq!(
            count(&t, node, "kubeadm", &["join"]),
            0,
            "{node} joined before the join command existed"
        );
    }
    issued.extend(strings(&standin_state(&t, FIRST)["tokens"]));
    issued.extend(strings(&standin_state(&t, FIRST)["certificate_keys"]));

    // 2. Killed again while the first node to join is in `kubeadm join`.
    let killed_in_join = apply_killed_at(&t, &JOINING.map(|n| (n, "kubeadm-join")), "a kubeadm join", |n, c| {
        n != FIRST && c.is("kubeadm", &["join"])
    });
    assert_eq!(
        inits(&t, FIRST),
        1,
        "kubeadm init ran again after the first kill:\n{}",
        dump(&t, FIRST)
    );
    let held: Vec<&str> = JOINING
        .into_iter()
        .filter(|n| count(&t, n, "kubeadm", &["join"]) > 0)
        .collect();
    assert_eq!(held.len(), 1, "one node at a time joins (serial): {held:?}");
    // Hours later: the token and certificate key of those runs are gone from the cluster.
    issued.extend(expire_join_secrets(&t));
    // What the next apply will do, as `kubeboot plan` tells it: init done, the join secrets made again.
    let plan = plan_text(&t, &t.lab.inventory, &[]);
    let first = plan_section(&plan, FIRST);
    assert!(
        first.iter().any(|l| l.contains("[skip: done     ] kubeadm init")),
        "{}",
        first.join("\n")
    );
    assert!(
        first
            .iter()
            .any(|l| l.trim().starts_with("again: output `join_command` is needed by ")),
        "{}",
        first.join("\n")
    );

    // 3. The next apply finishes everything, initialising nothing again, with a fresh token and key.
    let done = apply(&t);
    assert_eq!(done.code, Some(0), "the resumed run must succeed\n{}", done.explain());
    for node in HA {
        done.assert_all_succeeded(node);
    }
    let init: Vec<(&str, Call)> = HA
        .iter()
        .flat_map(|n| calls(&t, n).into_iter().filter(is_init).map(move |c| (*n, c)))
        .collect();
    assert_eq!(
        init.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [FIRST],
        "kubeadm init on exactly one node, exactly once"
    );
    assert_eq!(done.status_of(FIRST, "kubeadm init").as_deref(), Some("skipped"));
    let init_at = init[0].1.t;
    let now_state = standin_state(&t, FIRST);
    let valid_tokens = strings(&now_state["tokens"]);
    let valid_keys = strings(&now_state["certificate_keys"]);
    assert!(
        !valid_tokens.is_empty(),
        "no fresh token was made after the old ones expired"
    );
    issued.extend(valid_tokens.iter().cloned());
    issued.extend(valid_keys.iter().cloned());
    // The join command made three times (killed, killed later, the run that finished): never kept, always fresh.
    assert_eq!(
        count(&t, FIRST, "kubeadm", &["token", "create"]),
        3,
        "{}",
        dump(&t, FIRST)
    );
    for node in JOINING {
        let joins: Vec<Call> = calls(&t, node)
            .into_iter()
            .filter(|c| c.is("kubeadm", &["join"]))
            .collect();
        let expected = if held.contains(&node) { 2 } else { 1 };
        assert_eq!(joins.len(), expected, "{node}: joins\n{}", dump(&t, node));
        assert!(
            joins.iter().all(|c| c.t > init_at),
            "{node} joined before {FIRST} initialised"
        );
        assert_eq!(
            joins.last().map(|c| c.argv.clone()),
            Some(vec![
                "join".to_string(),
                "--config".into(),
                "/etc/kubernetes/kubeadm-join.yaml".into()
            ])
        );
        let joined = &standin_state(&t, node)["joined"];
        let token = joined["token"].as_str().unwrap_or_default().to_string();
        assert!(
            valid_tokens.contains(&token),
            "{node} joined with a token that is not fresh: {joined}"
        );
        assert_eq!(joined["endpoint"], format!("{VIP}:6443"), "{node}");
        let control_plane = node != "node-198";
        assert_eq!(joined["control_plane"], control_plane, "{node}: {joined}");
        if control_plane {
            let key = joined["certificate_key"].as_str().unwrap_or_default().to_string();
            assert!(valid_keys.contains(&key), "{node}: certificate key not fresh: {joined}");
            // Control planes keep their taint (the cluster has a worker) and announce the vip too.
            assert_eq!(joined["tainted"], true, "{node}: {joined}");
            let vip = t.node_text(node, "/etc/kubernetes/manifests/kube-vip.yaml");
            assert!(vip.contains(VIP), "{node}: kube-vip:\n{vip}");
        } else {
            assert!(
                !t.lab
                    .node_file(node, "/etc/kubernetes/manifests/kube-vip.yaml")
                    .exists(),
                "the worker runs kube-vip"
            );
        }
        // The JoinConfiguration holding the token is gone again.
        assert!(
            !t.lab.node_file(node, "/etc/kubernetes/kubeadm-join.yaml").exists(),
            "{node}: the JoinConfiguration was left behind"
        );
        // Nothing cluster-wide runs here: one cluster, one Cilium.
        assert_eq!(inits(&t, node), 0);
        assert!(
            !calls(&t, node).iter().any(|c| c.raw.contains("cilium-chart-values")),
            "{node} applied Cilium"
        );
    }
    // The joins came one at a time, after the join command of the run that finished.
    let last_token_create = calls(&t, FIRST)
        .iter()
        .filter(|c| c.is("kubeadm", &["token", "create"]))
        .map(|c| c.t)
        .fold(0.0, f64::max);
    for node in JOINING.iter().filter(|n| !held.contains(n)) {
        let at = calls(&t, node).iter().find(|c| c.is("kubeadm", &["join"])).map(|c| c.t);
        assert!(
            at.is_some_and(|a| a > last_token_create),
            "{node} joined before the fresh join command"
        );
    }

    // In the events of that run: each join waits (shown as waiting, on what) for the first control plane's join
    // command and starts only after it; the join stage holds one node of the cluster at a time.
    let at = |pred: &dyn Fn(&Value) -> bool| done.events.iter().position(pred);
    let join_command_done = at(&|e| e["event"] == "task_finished" && e["node"] == FIRST && e["task"] == "join command")
        .unwrap_or_else(|| panic!("the join command was not made again\n{}", done.explain()));
    let mut turns: Vec<(usize, usize, &str)> = Vec::new();
    for node in JOINING {
        let waiting = done
            .events
            .iter()
            .find(|e| e["event"] == "task_waiting" && e["node"] == node && e["task"] == "kubeadm join");
        let on = waiting.map(|e| strings(&e["on"])).unwrap_or_default();
        assert!(
            on.iter().any(|o| o == &format!("{FIRST}: kubeadm-init/join command")),
            "{node}: no waiting event naming the join command: {waiting:?}"
        );
        let in_stage = |e: &Value| {
            e["node"] == node
                && e["stage"] == "kubeadm-join"
                && (e["event"] == "task_started" || e["event"] == "task_finished")
        };
        let start = at(&|e| in_stage(e) && e["event"] == "task_started").expect("the join started");
        let end = done.events.iter().rposition(in_stage).expect("the join stage ended");
        assert!(
            start > join_command_done,
            "{node}'s join started before the join command was made"
        );
        turns.push((start, end, node));
    }
    turns.sort();
    for pair in turns.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "{} and {} were in the serial join stage at the same time",
            pair[0].2,
            pair[1].2
        );
    }

    // The first control plane: endpoint, SANs and Cilium at the vip; kube-vip; the cluster's workloads.
    let kubeadm = t.node_text(FIRST, "/etc/kubernetes/kubeadm-config.yaml");
    assert!(
        kubeadm.contains(&format!("controlPlaneEndpoint: \"{VIP}:6443\"")),
        "{kubeadm}"
    );
    assert!(
        !kubeadm.contains("taints: []"),
        "the control planes must keep their taint:\n{kubeadm}"
    );
    for node in JOINING {
        assert!(
            kubeadm.contains(&format!("- \"{node}\"")),
            "no SAN for {node}:\n{kubeadm}"
        );
    }
    let values = t.node_text(FIRST, "/var/lib/kubeboot/cilium/chart/values.yaml");
    assert!(values.contains(&format!("k8sServiceHost: \"{VIP}\"")), "{values}");
    assert!(
        t.node_text(FIRST, "/etc/kubernetes/manifests/kube-vip.yaml")
            .contains(VIP)
    );
    let first_calls = calls(&t, FIRST);
    let init_args = &init[0].1.argv;
    for flag in ["--upload-certs", "--skip-token-print", "--skip-certificate-key-print"] {
        assert!(
            init_args.iter().any(|a| a == flag),
            "kubeadm init without {flag}: {init_args:?}"
        );
    }
    assert!(
        first_calls.iter().any(|c| c.raw.contains("longhorn-chart-values")),
        "{FIRST}: no Longhorn"
    );

    // 4. Nothing left to do: every task skipped, no stand-in called, no join secret made.
    let before: Vec<usize> = HA.iter().map(|n| calls(&t, n).len()).collect();
    let idle = apply(&t);
    assert_eq!(idle.code, Some(0), "{}", idle.explain());
    for node in HA {
        for e in idle.finished(node) {
            assert_eq!(
                e["status"], "skipped",
                "{node}: {} / {} ran: {e}",
                e["stage"], e["task"]
            );
        }
    }
    let after: Vec<usize> = HA.iter().map(|n| calls(&t, n).len()).collect();
    assert_eq!(before, after, "the run with nothing to do called stand-ins");

    // 5. The join token and the certificate key went only through the secret outputs: never in an argv, kubeboot's
    //    output or events, the journal, the logs, any file of the state dir, or a file left on a node.
    assert!(issued.len() >= 5, "the test saw too few join secrets: {issued:?}");
    let runs = [&killed_after_init, &killed_in_join, &done, &idle];
    for (i, run) in runs.iter().enumerate() {
        for (what, bytes) in [
            ("stdout (events)", run.stdout.as_bytes()),
            ("stderr", run.stderr.as_bytes()),
        ] {
            if let Some(v) = leaks(bytes, &issued) {
                panic!("run {}: a join secret ({}...) is in kubeboot's {what}", i + 1, &v[..6]);
            }
        }
    }
    for node in HA {
        for c in calls(&t, node) {
            assert!(
                leaks(c.raw.as_bytes(), &issued).is_none(),
                "{node}: a join secret in the argv of `{}`",
                c.line()
            );
        }
    }
    let mut stored = files_below(&t.state);
    assert!(
        stored.iter().any(|p| p.ends_with("journal.jsonl")),
        "no journal in {stored:?}"
    );
    for node in HA {
        for dir in lab::ISOLATED_DIRS {
            stored.extend(files_below(&t.lab.node_file(node, dir)));
        }
    }
    for path in stored {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            leaks(&bytes, &issued).is_none(),
            "a join secret is in {}",
            path.display()
        );
    }
    // The inventory's secrets stay out of the same places.
    let inventory_secrets: Vec<String> = t.secrets.iter().map(|(_, v)| v.clone()).collect();
    for run in runs {
        assert!(leaks(run.stdout.as_bytes(), &inventory_secrets).is_none());
    }
}

/// The HA example plus a single-node cluster of its own (node-199), written to `dir`.
fn ha_plus_one_inventory(dir: &Path) -> PathBuf {
    model_with(
        &repo().join("examples/ha/inventory.toml"),
        &[
            (
                "clusters",
                "name = \"cluster-02\"\nrole = \"edge\"\nlb_ip = \"192.168.101.211\"\ndomain = \"k8s-cluster-02.miribit.lab\"",
            ),
            (
                "nodes",
                "name = \"node-199\"\naddress = \"192.168.101.199\"\ncluster = \"cluster-02\"",
            ),
        ],
        &dir.join("ha-plus-one.toml"),
    )
}

#[test]
fn a_failed_join_fails_its_node_blocks_only_who_waits_for_it_and_leaves_the_other_cluster_alone() {
    const BROKEN: &str = "node-197";
    let model_dir = tempfile::tempdir().expect("a folder");
    let model = ha_plus_one_inventory(model_dir.path());
    let all = ["node-194", "node-196", "node-197", "node-198", "node-199"];
    let t = start_lab(&model, &all);
    let flag = t.lab.standin_dir(BROKEN).join("fail/kubeadm-join");
    std::fs::write(&flag, "").expect("the fail flag can be written");

    let run = apply(&t);
    assert_eq!(run.code, Some(1), "a failed node must exit 1\n{}", run.explain());
    let failed: Vec<String> = run
        .finished(BROKEN)
        .iter()
        .filter(|e| e["status"] == "failed")
        .map(|e| {
            format!(
                "{}/{}",
                e["stage"].as_str().unwrap_or(""),
                e["task"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(failed, ["kubeadm-join/kubeadm join"], "{}", run.explain());
    // The other joining nodes do not depend on it: they join (the serial turn passes on) and finish.
    for node in ["node-196", "node-198"] {
        run.assert_all_succeeded(node);
        assert_eq!(
            run.status_of(node, "kubeadm join").as_deref(),
            Some("changed"),
            "{node}"
        );
        assert_eq!(
            run.node_status(node).map(|e| e["status"].clone()),
            Some("ok".into()),
            "{node}"
        );
    }
    // The single-node cluster is not touched by any of it.
    run.assert_all_succeeded("node-199");
    assert_eq!(
        run.node_status("node-199").map(|e| e["status"].clone()),
        Some("ok".into())
    );
    assert_eq!(inits(&t, "node-199"), 1);
    let single = calls(&t, "node-199");
    let init = single.iter().find(|c| is_init(c)).expect("node-199 initialised");
    assert!(init.argv.iter().any(|a| a == "--skip-token-print"), "{:?}", init.argv);
    assert!(!init.argv.iter().any(|a| a == "--upload-certs"), "{:?}", init.argv);
    // A single-node cluster makes no join secrets.
    assert_eq!(count(&t, "node-199", "kubeadm", &["token", "create"]), 0);
    // The first control plane does everything up to its final check, which waits for the broken node.
    let first = run
        .node_status(FIRST)
        .unwrap_or_else(|| panic!("{FIRST} did not finish\n{}", run.explain()));
    assert_eq!(first["status"], "blocked", "{first}");
    assert_eq!(first["blocked_by"], BROKEN, "{first}");
    assert_eq!(run.status_of(FIRST, "apply cilium").as_deref(), Some("changed"));
    // No token printed by any kubeadm init into the output (the single node's included).
    for node in ["node-194", "node-199"] {
        let tokens = strings(&standin_state(&t, node)["tokens"]);
        assert!(!tokens.is_empty(), "{node}: kubeadm init made no token");
        assert!(
            leaks(run.stdout.as_bytes(), &tokens).is_none(),
            "{node}'s bootstrap token is in the output"
        );
        assert!(
            files_below(&t.state)
                .iter()
                .all(|p| leaks(&std::fs::read(p).unwrap_or_default(), &tokens).is_none()),
            "{node}'s bootstrap token is in the state dir"
        );
    }

    // `status` names who blocked whom.
    let status = t.kubeboot(&["status"]).output().expect("kubeboot status runs");
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.status.code(), Some(0), "{text}");
    let section = |node: &str| -> String {
        text.lines()
            .skip_while(|l| !l.starts_with(&format!("{node} (")))
            .take_while({
                let mut first = true;
                move |l| std::mem::take(&mut first) || l.starts_with(' ')
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The lines the guide (13.2) shows.
    for line in [
        format!("{FIRST} (cluster-01)  blocked"),
        format!("{BROKEN} (cluster-01)  failed"),
        format!("  its failure blocked: {FIRST} (they wait for it)"),
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    let first_text = section(FIRST);
    assert!(first_text.contains(&format!("BLOCKED by {BROKEN}")), "{text}");
    let broken_text = section(BROKEN);
    assert!(broken_text.contains("FAILED: kubeadm-join / kubeadm join"), "{text}");
    assert!(broken_text.contains(&format!("its failure blocked: {FIRST}")), "{text}");
    for node in ["node-196", "node-198", "node-199"] {
        let s = section(node);
        assert!(!s.contains("BLOCKED") && !s.contains("FAILED"), "{s}");
    }

    // Fixed: the next apply joins the broken node and the first control plane finishes its check.
    std::fs::remove_file(&flag).expect("the fail flag can be removed");
    let again = apply(&t);
    assert_eq!(again.code, Some(0), "{}", again.explain());
    for node in all {
        again.assert_all_succeeded(node);
    }
    assert_eq!(standin_state(&t, BROKEN)["joined"]["control_plane"], true);
    assert_eq!(inits(&t, FIRST), 1, "kubeadm init ran again");
}

#[test]
fn a_control_plane_added_later_joins_with_apply_limit_cluster_and_nothing_else_is_redone() {
    const LATER: &str = "node-197";
    let t = start_lab(&repo().join("examples/ha/inventory.toml"), &HA);
    // The cluster is first installed without node-197 (two control planes and the worker).
    install_without(&t, LATER);
    let before: Vec<(&str, usize)> = HA
        .iter()
        .filter(|n| **n != LATER)
        .map(|n| (*n, calls(&t, n).len()))
        .collect();

    // Then it is added to the inventory (the lab's own one has it) and the guide's commands are run.
    let plan = plan_text(&t, &t.lab.inventory, &["--limit", "cluster-01"]);
    let section = plan_section(&plan, FIRST);
    assert!(
        section.iter().any(
            |l| l.trim() == format!("again: output `join_command` is needed by {LATER}: kubeadm-join/kubeadm join")
        ),
        "the plan does not say why the join command runs again:\n{}",
        section.join("\n")
    );
    assert!(
        section
            .iter()
            .any(|l| l.trim()
                == format!("again: output `certificate_key` is needed by {LATER}: kubeadm-join/kubeadm join")),
        "{}",
        section.join("\n")
    );
    let added = apply_with(&t, &t.lab.inventory, &["--limit", "cluster-01"]);
    assert_eq!(added.code, Some(0), "{}", added.explain());
    assert_eq!(added.status_of(LATER, "kubeadm join").as_deref(), Some("changed"));
    let joined = &standin_state(&t, LATER)["joined"];
    assert_eq!(joined["control_plane"], true, "{joined}");
    let tokens = strings(&standin_state(&t, FIRST)["tokens"]);
    assert_eq!(
        joined["token"]
            .as_str()
            .map(|t| tokens.last().map(String::as_str) == Some(t)),
        Some(true)
    );
    assert_eq!(inits(&t, FIRST), 1, "kubeadm init ran again");
    // The nodes that were there: no join again, and on the first control plane only the join secrets are made
    // again (and the kubeadm config, whose SAN list now names node-197, is rewritten and validated).
    for (node, n) in &before {
        let new: Vec<Call> = calls(&t, node).into_iter().skip(*n).collect();
        assert!(!new.iter().any(|c| c.is("kubeadm", &["join"])), "{node} joined again");
        let ran: Vec<String> = added
            .finished(node)
            .iter()
            .filter(|e| e["status"] != "skipped")
            .map(|e| {
                format!(
                    "{}/{}",
                    e["stage"].as_str().unwrap_or(""),
                    e["task"].as_str().unwrap_or("")
                )
            })
            .collect();
        if *node == FIRST {
            for needed in ["kubeadm-init/join command", "kubeadm-init/certificate key"] {
                assert!(ran.iter().any(|r| r == needed), "{node}: {needed} did not run: {ran:?}");
            }
            assert!(
                !ran.iter()
                    .any(|r| r.starts_with("cilium/") || r.starts_with("longhorn/")),
                "{node}: cluster-wide stages ran again: {ran:?}"
            );
        } else {
            assert!(ran.is_empty(), "{node}: tasks ran again: {ran:?}");
        }
    }
    let kubeadm = t.node_text(FIRST, "/etc/kubernetes/kubeadm-config.yaml");
    assert!(kubeadm.contains(&format!("- \"{LATER}\"")), "{kubeadm}");
}

#[test]
fn a_worker_added_later_joins_with_a_plain_apply_and_a_fresh_token_and_nothing_else_is_redone() {
    const LATER: &str = "node-199";
    // The model: the HA example with a second worker, node-199, in the same cluster.
    let model_dir = tempfile::tempdir().expect("a folder");
    let model_path = model_with(
        &repo().join("examples/ha/inventory.toml"),
        &[(
            "nodes",
            "name = \"node-199\"\naddress = \"192.168.101.199\"\ncluster = \"cluster-01\"\nrole = \"worker\"",
        )],
        &model_dir.path().join("ha-second-worker.toml"),
    );
    let all = ["node-194", "node-196", "node-197", "node-198", LATER];
    let t = start_lab(&model_path, &all);

    // A finished HA install without node-199 (the HA example as it is).
    install_without(&t, LATER);
    let tokens_before = strings(&standin_state(&t, FIRST)["tokens"]);
    let before: Vec<(&str, usize)> = HA.iter().map(|n| (*n, calls(&t, n).len())).collect();

    // Then the worker is in the inventory (the lab's own one has it): the guide's `plan`, then a plain `apply`.
    let plan = plan_text(&t, &t.lab.inventory, &[]);
    let section = plan_section(&plan, FIRST);
    assert!(
        section.iter().any(
            |l| l.trim() == format!("again: output `join_command` is needed by {LATER}: kubeadm-join/kubeadm join")
        ),
        "the plan does not say why the join command runs again:\n{}",
        section.join("\n")
    );
    // A worker needs no certificate key: the plan does not make one again.
    assert!(
        !section.iter().any(|l| l.contains("again: output `certificate_key`")),
        "{}",
        section.join("\n")
    );
    let added = apply_with(&t, &t.lab.inventory, &[]);
    assert_eq!(added.code, Some(0), "{}", added.explain());
    for node in all {
        added.assert_all_succeeded(node);
    }

    // The worker joined as a worker, with a token made in this run (not one of the first install's).
    assert_eq!(added.status_of(LATER, "kubeadm join").as_deref(), Some("changed"));
    let joined = &standin_state(&t, LATER)["joined"];
    assert_eq!(joined["control_plane"], false, "{joined}");
    assert_eq!(joined["endpoint"], format!("{VIP}:6443"), "{joined}");
    let token = joined["token"].as_str().unwrap_or_default().to_string();
    let tokens_now = strings(&standin_state(&t, FIRST)["tokens"]);
    assert!(
        tokens_now.contains(&token),
        "{LATER} joined with a token the cluster does not know: {joined}"
    );
    assert!(
        !tokens_before.contains(&token),
        "{LATER} joined with an old token: {joined}"
    );
    assert_eq!(count(&t, LATER, "kubeadm", &["join"]), 1, "{}", dump(&t, LATER));
    assert_eq!(inits(&t, LATER), 0);
    assert!(
        !t.lab
            .node_file(LATER, "/etc/kubernetes/manifests/kube-vip.yaml")
            .exists(),
        "the new worker runs kube-vip"
    );
    assert!(
        !t.lab.node_file(LATER, "/etc/kubernetes/kubeadm-join.yaml").exists(),
        "{LATER}: the JoinConfiguration was left behind"
    );
    // The token did not leak: not in kubeboot's output, not in an argv, not in the state dir.
    let fresh: Vec<String> = tokens_now
        .iter()
        .filter(|t| !tokens_before.contains(t))
        .cloned()
        .collect();
    assert!(!fresh.is_empty());
    assert!(
        leaks(added.stdout.as_bytes(), &fresh).is_none(),
        "the fresh token is in the output"
    );
    assert!(
        leaks(added.stderr.as_bytes(), &fresh).is_none(),
        "the fresh token is in stderr"
    );
    for node in all {
        for c in calls(&t, node) {
            assert!(
                leaks(c.raw.as_bytes(), &fresh).is_none(),
                "{node}: the token in `{}`",
                c.line()
            );
        }
    }
    for path in files_below(&t.state) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            leaks(&bytes, &fresh).is_none(),
            "the fresh token is in {}",
            path.display()
        );
    }

    // Nothing else ran again: on the existing nodes no join and no init; what ran (not skipped) is exactly the
    // list the guide (13.3) gives.
    assert_eq!(inits(&t, FIRST), 1, "kubeadm init ran again");
    let ran_on = |node: &str| -> Vec<String> {
        added
            .finished(node)
            .iter()
            .filter(|e| e["status"] != "skipped")
            .map(|e| {
                format!(
                    "{}/{}",
                    e["stage"].as_str().unwrap_or(""),
                    e["task"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    for (node, n) in &before {
        let new: Vec<Call> = calls(&t, node).into_iter().skip(*n).collect();
        assert!(!new.iter().any(|c| c.is("kubeadm", &["join"])), "{node} joined again");
        assert!(!new.iter().any(is_init), "{node} initialised again");
        let ran = ran_on(node);
        if *node == FIRST {
            // The join command for the new worker; the kubeadm config (its template, then the file), whose SAN list
            // names every node of the cluster, and the tasks after it in its stage (kubeadm init itself is skipped: initialised; kube-vip's
            // static pod by its guard, `install.sh --check`: unchanged), but not
            // the certificate key (`after: [kubeadm init]`: a worker needs none, the certificates are the same); the
            // network policies, which list every node's address. Not the join of anyone, not Cilium, not
            // Longhorn (min(3, nodes) is still 3), not the other manifest stages.
            assert_eq!(
                ran,
                [
                    "kubeadm-init/kubeadm config files",
                    "kubeadm-init/kubeadm config",
                    "kubeadm-init/api server ready",
                    "kubeadm-init/join command",
                    "alerts-policies/copy alert and policy manifests",
                    "alerts-policies/apply alerts and policies",
                    "alerts-policies/wait for rules to load",
                ],
                "{node}: what ran again"
            );
            assert_eq!(added.status_of(FIRST, "kubeadm init").as_deref(), Some("skipped"));
        } else {
            assert_eq!(ran, Vec::<String>::new(), "{node}: tasks ran again");
        }
    }
    // The new worker ran its whole install: every stage it has, its join last of the node stages.
    assert_eq!(
        added.node_status(LATER).map(|e| e["status"].clone()),
        Some("ok".into()),
        "{}",
        added.explain()
    );
}
