//! A property test of resume over random histories, against real sshd lab nodes: random sequences of edits
//! (playbook text, an asset, a [vars] value, a secret), applies killed with SIGKILL at random instants, and
//! `--fresh` runs. After a final uninterrupted `apply`, every node holds exactly what a from-scratch install of
//! the final inputs makes, a further `apply` has nothing to do, and an `apply` that follows a completed one runs
//! exactly the tasks the edits in between touch (no task whose inputs are unchanged runs again).
//!
//! The playbooks are small on purpose (two stages, five tasks, each leaving files in the node's lab root) so a
//! few dozen runs fit in about a minute.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{TestLab, run, signal, start_lab, wait_with_cap};
use proptest::prelude::*;

const NODES: [&str; 2] = ["node-1", "node-2"];

/// The inputs an operator edits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    /// A line of the asset the copy task puts on the node (a template: it also renders `greeting`).
    asset: String,
    greeting: String,
    version: String,
    /// A comment in the `version` task's command: the playbook text changes, nothing else.
    comment: String,
    token: String,
}

#[derive(Debug, Clone)]
enum Step {
    Asset(u8),
    Greeting(u8),
    Version(u8),
    PlaybookText(u8),
    Secret(u8),
    Apply,
    KilledApply { fresh: bool, after_ms: u64 },
    Fresh,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4).prop_map(Step::Asset),
        (0u8..4).prop_map(Step::Greeting),
        (0u8..4).prop_map(Step::Version),
        (0u8..4).prop_map(Step::PlaybookText),
        (0u8..4).prop_map(Step::Secret),
        Just(Step::Apply),
        Just(Step::Apply),
        (any::<bool>(), 50u64..1500).prop_map(|(fresh, after_ms)| Step::KilledApply { fresh, after_ms }),
        Just(Step::Fresh),
    ]
}

const STAGE_A: &str = "\
name: a
hosts: all
tasks:
  - name: conf
    copy: { src: conf.txt, dest: \"{{ lab_root }}/a/conf.txt\", template: true }
  - name: apply conf
    run: |
      sleep 0.05
      cp {{ lab_root }}/a/conf.txt {{ lab_root }}/a/applied.txt
      echo 'apply conf' >> {{ lab_root }}/log
  - name: token
    after: []
    env: { TOKEN: \"{{ secrets.token }}\" }
    run: |
      sleep 0.05
      printf '%s' \"$TOKEN\" | sha256sum | cut -c1-16 > {{ lab_root }}/a/token.sum
      echo 'token' >> {{ lab_root }}/log
";

fn stage_b(comment: &str) -> String {
    format!(
        "\
name: b
hosts: all
tasks:
  - name: version
    run: |
      # {comment}
      sleep 0.05
      mkdir -p {{{{ lab_root }}}}/b
      echo '{{{{ version }}}}' > {{{{ lab_root }}}}/b/version
      echo 'version' >> {{{{ lab_root }}}}/log
  - name: derived
    after: [version, a/apply conf]
    run: |
      sleep 0.05
      cat {{{{ lab_root }}}}/b/version {{{{ lab_root }}}}/a/applied.txt > {{{{ lab_root }}}}/b/derived
      echo 'derived' >> {{{{ lab_root }}}}/log
"
    )
}

struct Prop {
    t: TestLab,
    inventory: PathBuf,
}

impl Prop {
    fn write(&self, i: &Inputs) {
        fs::create_dir_all(self.t.work().join("assets")).expect("assets folder");
        fs::write(
            self.t.work().join("assets/conf.txt"),
            format!("{}\n{{{{ greeting }}}}\n", i.asset),
        )
        .expect("asset");
        self.t.write_playbook("00-a.yaml", STAGE_A);
        self.t.write_playbook("10-b.yaml", &stage_b(&i.comment));
        let text = fs::read_to_string(self.t.inventory()).expect("the lab inventory");
        let mut inv: toml::Table = text.parse().expect("TOML");
        let mut vars = inv
            .get("vars")
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        vars.insert("greeting".into(), toml::Value::String(i.greeting.clone()));
        vars.insert("version".into(), toml::Value::String(i.version.clone()));
        inv.insert("vars".into(), toml::Value::Table(vars));
        let mut secrets = toml::Table::new();
        let mut token = toml::Table::new();
        token.insert("env".into(), toml::Value::String("PROP_TOKEN".into()));
        secrets.insert("token".into(), toml::Value::Table(token));
        inv.insert("secrets".into(), toml::Value::Table(secrets));
        fs::write(&self.inventory, toml::to_string(&inv).expect("TOML")).expect("inventory");
    }

    /// `apply --yes --output json <extra>` with this history's own state dir (a from-scratch install uses another).
    fn command(&self, state: &Path, i: &Inputs, extra: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(common::bin());
        c.arg("-i")
            .arg(&self.inventory)
            .arg("-p")
            .arg(self.t.playbooks())
            .arg("--state-dir")
            .arg(state)
            .args(["apply", "--yes", "--output", "json"])
            .args(extra)
            .env("PROP_TOKEN", &i.token)
            .stdin(Stdio::null());
        c
    }

    fn apply(&self, state: &Path, i: &Inputs, extra: &[&str]) -> common::Run {
        let r = run(self.command(state, i, extra));
        r.assert_code(0);
        r
    }

    fn killed(&self, state: &Path, i: &Inputs, fresh: bool, after_ms: u64) {
        let extra: &[&str] = if fresh { &["--fresh"] } else { &[] };
        let child = self
            .command(state, i, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubeboot starts");
        std::thread::sleep(Duration::from_millis(after_ms));
        signal(child.id(), libc::SIGKILL);
        let _ = wait_with_cap(child, Duration::from_secs(10));
        // Let remote commands the kill cut off end (their shells go with the connection).
        std::thread::sleep(Duration::from_millis(200));
    }

    /// What the tasks left on a node (the files below a/ and b/ of its lab root).
    fn node_state(&self, node: &str) -> BTreeMap<String, String> {
        let root = self.t.root(node);
        let mut out = BTreeMap::new();
        for dir in ["a", "b"] {
            for entry in fs::read_dir(root.join(dir)).into_iter().flatten().flatten() {
                let name = format!("{dir}/{}", entry.file_name().to_string_lossy());
                out.insert(name, fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }

    fn wipe_nodes(&self) {
        for node in NODES {
            let root = self.t.root(node);
            for dir in ["a", "b"] {
                let _ = fs::remove_dir_all(root.join(dir));
            }
            let _ = fs::remove_file(root.join("log"));
        }
    }
}

/// The tasks an apply that follows a completed one must run, from what was edited in between.
fn touched(before: &Inputs, now: &Inputs) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    if before.asset != now.asset || before.greeting != now.greeting {
        // The copy changes; `apply conf` follows it (stage rule), `derived` names `a/apply conf`.
        out.extend(["conf", "apply conf", "derived"]);
    }
    if before.token != now.token {
        out.insert("token");
    }
    if before.version != now.version || before.comment != now.comment {
        out.extend(["version", "derived"]);
    }
    out
}

fn started(r: &common::Run, node: &str) -> BTreeSet<String> {
    r.events_of("task_started")
        .iter()
        .filter(|e| e["node"] == node)
        .map(|e| e["task"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn history(p: &Prop, steps: &[Step]) -> Result<(), TestCaseError> {
    let state = p.t.work().join(format!("state-{}", rand::random::<u32>()));
    p.wipe_nodes();
    let mut inputs = Inputs {
        asset: "asset-0".into(),
        greeting: "hello-0".into(),
        version: "v0".into(),
        comment: "c0".into(),
        token: "token-0".into(),
    };
    p.write(&inputs);
    // The inputs of the last apply that completed, if nothing but edits happened since.
    let mut completed: Option<Inputs> = None;
    for step in steps.iter().chain(std::iter::once(&Step::Apply)) {
        match step {
            Step::Asset(v) => inputs.asset = format!("asset-{v}"),
            Step::Greeting(v) => inputs.greeting = format!("hello-{v}"),
            Step::Version(v) => inputs.version = format!("v{v}"),
            Step::PlaybookText(v) => inputs.comment = format!("c{v}"),
            Step::Secret(v) => inputs.token = format!("token-{v}"),
            Step::Apply | Step::Fresh => {
                let fresh = matches!(step, Step::Fresh);
                p.write(&inputs);
                let r = p.apply(&state, &inputs, if fresh { &["--fresh"] } else { &[] });
                if let (Some(before), false) = (&completed, fresh) {
                    let want = touched(before, &inputs);
                    for node in NODES {
                        let got = started(&r, node);
                        let got: BTreeSet<&str> = got.iter().map(String::as_str).collect();
                        prop_assert_eq!(&got, &want, "{} after edits {:?} -> {:?}", node, before, inputs);
                    }
                }
                completed = Some(inputs.clone());
                continue;
            }
            Step::KilledApply { fresh, after_ms } => {
                p.write(&inputs);
                p.killed(&state, &inputs, *fresh, *after_ms);
                completed = None;
                continue;
            }
        }
        p.write(&inputs);
    }
    // Converged: what the history left equals a from-scratch install of the final inputs.
    let final_state: Vec<BTreeMap<String, String>> = NODES.iter().map(|n| p.node_state(n)).collect();
    let again = p.apply(&state, &inputs, &[]);
    for node in NODES {
        prop_assert!(
            started(&again, node).is_empty(),
            "{} had work left: {:?}",
            node,
            started(&again, node)
        );
    }
    p.wipe_nodes();
    let scratch = p.t.work().join(format!("scratch-{}", rand::random::<u32>()));
    p.apply(&scratch, &inputs, &[]);
    for (i, node) in NODES.iter().enumerate() {
        prop_assert_eq!(
            &final_state[i],
            &p.node_state(node),
            "{} differs from a from-scratch install",
            node
        );
    }
    // The journal never holds the secret, nor its plain sha256.
    let journal = fs::read_to_string(state.join("journal.jsonl")).unwrap_or_default();
    for v in 0..4 {
        let token = format!("token-{v}");
        prop_assert!(!journal.contains(&token));
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        prop_assert!(!journal.contains(&hash));
    }
    let _ = fs::remove_dir_all(&state);
    let _ = fs::remove_dir_all(&scratch);
    Ok(())
}

#[test]
fn random_edits_kills_and_fresh_runs_converge_to_a_from_scratch_install_without_needless_reruns() {
    let t = start_lab(NODES.len());
    let p = Prop {
        inventory: t.work().join("inventory.toml"),
        t,
    };
    let cases = std::env::var("KUBEBOOT_RESUME_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        // Shrinking replays whole histories against the lab: a few steps are enough to read a failure.
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(step(), 3..9), |steps| history(&p, &steps));
    if let Err(e) = result {
        panic!("{e}");
    }
}
