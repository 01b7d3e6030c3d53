//! Planning against the good fixture: selections, resume decisions, fingerprints, the golden plan.

use std::path::Path;

use crate::event::SkipReason;
use crate::facts::Facts;
use crate::inventory::Inventory;
use crate::journal::Progress;
use crate::playbook::{Capture, Playbooks, WaitForDef};
use crate::secrets::Digests;

use super::*;
use crate::event::TaskStatus;
use crate::task::{ActionDef, CopyDef};

fn fixture() -> (Inventory, Playbooks) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/good");
    let inv = match crate::inventory::load(&root.join("inventory.toml")) {
        Ok(i) => i,
        Err(d) => panic!("{d}"),
    };
    let books = match crate::playbook::load(&root.join("playbooks"), &root.join("assets")) {
        Ok(b) => b,
        Err(d) => panic!("{d}"),
    };
    (inv, books)
}

fn plan(inv: &Inventory, books: &Playbooks, node: &str, progress: &Progress, sel: &Selection) -> NodePlan {
    match plan_node(inv, books, node, &Facts::assumed(), progress, &Digests::none(), sel) {
        Ok(p) => p,
        Err(d) => panic!("{d}"),
    }
}

fn names(p: &NodePlan) -> Vec<String> {
    p.tasks.iter().map(|t| format!("{}/{}", t.stage, t.task)).collect()
}

#[test]
fn the_good_fixture_checks_clean() {
    let (inv, books) = fixture();
    assert_eq!(check(&inv, &books, &Progress::empty(), &Selection::default()), Ok(()));
}

#[test]
fn when_false_skips_by_condition_and_templates_render() {
    let (inv, books) = fixture();
    let p = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
    assert_eq!(p.address, "192.168.101.194:22");
    let redhat = p
        .tasks
        .iter()
        .find(|t| t.task == "install containerd (redhat)")
        .unwrap();
    assert_eq!(redhat.decision, Decision::Skip(SkipReason::Condition));
    let debian = p.tasks.iter().find(|t| t.task == "install containerd").unwrap();
    assert_eq!(debian.decision, Decision::Run);
    assert_eq!(debian.unless.as_deref(), Some("dpkg -s containerd.io"));
    assert!(debian.become_);
    let Action::Copy(crate::task::CopyFiles { files, owner }) =
        &p.tasks.iter().find(|t| t.task == "containerd config").unwrap().action
    else {
        panic!("not a copy")
    };
    assert_eq!(owner.as_deref(), Some("root:root"));
    assert!(String::from_utf8_lossy(&files[0].content).contains("sandbox_image = \"registry.k8s.io/pause:3.10\""));
    let lb = p.tasks.iter().find(|t| t.task == "lb address").unwrap();
    let Action::Copy(crate::task::CopyFiles { files, .. }) = &lb.action else {
        panic!()
    };
    assert_eq!(files[0].content, b"lb=192.168.101.210\n");
}

#[test]
fn a_folder_src_copies_every_file_below_it_sorted() {
    let (inv, books) = fixture();
    let p = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
    let t = p.tasks.iter().find(|t| t.task == "addons").unwrap();
    let Action::Copy(crate::task::CopyFiles { files, .. }) = &t.action else {
        panic!()
    };
    let dests: Vec<&str> = files.iter().map(|f| f.dest.as_str()).collect();
    assert_eq!(
        dests,
        ["/etc/kubeboot/addons/a.yaml", "/etc/kubeboot/addons/sub/b.yaml"]
    );
}

#[test]
fn secrets_stay_placeholders_in_the_plan() {
    let (inv, books) = fixture();
    let p = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
    let t = p.tasks.iter().find(|t| t.task == "s3 credentials").unwrap();
    assert_eq!(
        t.env,
        vec![(
            "AWS_ACCESS_KEY_ID".to_string(),
            crate::secrets::placeholder("s3_access_key")
        )]
    );
}

#[test]
fn resume_skips_tasks_finished_before_unless_their_content_changed() {
    let (inv, mut books) = fixture();
    let first = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
    let mut progress = Progress::empty();
    for t in &first.tasks[..2] {
        progress.mark_done("node-194", &t.stage, &t.task, &t.fingerprint);
    }
    let again = plan(&inv, &books, "node-194", &progress, &Selection::default());
    assert_eq!(again.tasks[0].decision, Decision::Skip(SkipReason::Done));
    assert_eq!(again.tasks[1].decision, Decision::Skip(SkipReason::Done));
    assert_eq!(again.tasks[2].decision, Decision::Skip(SkipReason::Condition));

    // --fresh starts a new generation: what finished before it is not done.
    let fresh = Selection {
        fresh: true,
        ..Selection::default()
    };
    let mut fresh_progress = progress.clone();
    start_fresh(&inv, &books, &fresh, &mut fresh_progress).unwrap();
    let p = plan(&inv, &books, "node-194", &fresh_progress, &fresh);
    assert_eq!(p.tasks[0].decision, Decision::Run);
    assert_eq!(p.tasks[0].why, Some(Why::FreshGeneration));

    // A changed command gets a new fingerprint and runs again.
    books.stages[1].tasks[0].action = crate::task::ActionDef::Run("apt-get install -y containerd.io=2.0".into());
    let changed = plan(&inv, &books, "node-194", &progress, &Selection::default());
    assert_eq!(changed.tasks[0].decision, Decision::Skip(SkipReason::Done));
    assert_eq!(changed.tasks[1].decision, Decision::Run);
    assert_ne!(changed.tasks[1].fingerprint, first.tasks[1].fingerprint);
}

#[test]
fn a_task_the_node_may_have_lost_in_a_restart_runs_again() {
    let (inv, books) = fixture();
    let boot = |id: &str| Facts {
        boot_id: id.into(),
        ..Facts::assumed()
    };
    let first = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
    let mut progress = Progress::empty();
    progress.set_facts("node-194", boot("boot-a"));
    progress.mark_done(
        "node-194",
        &first.tasks[0].stage,
        &first.tasks[0].task,
        &first.tasks[0].fingerprint,
    );
    progress.apply(&crate::journal::Record::Synced {
        run: "r".into(),
        ts: "t".into(),
        node: "node-194".into(),
    });
    progress.mark_done(
        "node-194",
        &first.tasks[1].stage,
        &first.tasks[1].task,
        &first.tasks[1].fingerprint,
    );
    let at = |facts: &Facts| {
        plan_node(
            &inv,
            &books,
            "node-194",
            facts,
            &progress,
            &Digests::none(),
            &Selection::default(),
        )
        .unwrap()
    };

    let same_boot = at(&boot("boot-a"));
    assert_eq!(
        same_boot.tasks[1].decision,
        Decision::Skip(SkipReason::Done),
        "kubeboot stopped, the node did not"
    );
    let restarted = at(&boot("boot-b"));
    assert_eq!(
        restarted.tasks[0].decision,
        Decision::Skip(SkipReason::Done),
        "synced before the restart"
    );
    assert_eq!(restarted.tasks[1].decision, Decision::Run);
    assert_eq!(restarted.tasks[1].why, Some(Why::Restarted));
    assert_eq!(Why::Restarted.text(), "node restarted before it was on disk");
}

/// Records every task of a plan as the engine would: `changed` for run tasks, `ok` for copies and waits.
fn record_all(progress: &mut Progress, p: &NodePlan, digests: &Digests) {
    for t in p
        .tasks
        .iter()
        .filter(|t| t.decision != Decision::Skip(SkipReason::Condition))
    {
        let status = match t.action {
            Action::Run { .. } => TaskStatus::Changed,
            _ => TaskStatus::Ok,
        };
        progress.apply(&crate::journal::Record::Task {
            run: "r".into(),
            ts: "t".into(),
            node: p.node.clone(),
            stage: t.stage.clone(),
            task: t.task.clone(),
            fingerprint: t.fingerprint.clone(),
            secrets: digests.of(&t.secrets),
            inputs: t.inputs.parts.clone(),
            status,
            reason: None,
            error: None,
        });
    }
}

fn decision_of(p: &NodePlan, task: &str) -> (Decision, Option<String>) {
    let t = p.tasks.iter().find(|t| t.task == task).unwrap();
    (t.decision, t.why.as_ref().map(Why::text))
}

#[test]
fn a_task_runs_again_when_an_earlier_task_of_its_stage_changes() {
    let (inv, mut books) = fixture();
    let sel = Selection::default();
    let mut progress = Progress::empty();
    let first = plan(&inv, &books, "node-194", &progress, &sel);
    record_all(&mut progress, &first, &Digests::none());
    // An edited asset: the copy's content changed, so it runs; the later tasks of its stage run if it changes.
    let ActionDef::Copy(c) = &mut books.stages[1].tasks[3].action else {
        panic!("addons is a copy")
    };
    c.dest = "/etc/kubeboot/addons2".into();
    let p = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(decision_of(&p, "containerd config").0, Decision::Skip(SkipReason::Done));
    let (d, why) = decision_of(&p, "addons");
    assert_eq!(d, Decision::Run);
    let why = why.unwrap();
    assert!(
        why.starts_with("input changed: file /etc/kubeboot/addons2/a.yaml"),
        "{why}"
    );
    assert_eq!(
        decision_of(&p, "s3 credentials"),
        (Decision::Run, Some("after changed: addons (if it changes)".into()))
    );
    // Another stage is not touched by the stage rule.
    assert_eq!(decision_of(&p, "lb address").0, Decision::Skip(SkipReason::Done));

    // The copy reported `changed`, then the run was cut off: the next plan still owes the later task.
    let addons = p.tasks.iter().find(|t| t.task == "addons").unwrap();
    progress.apply(&crate::journal::Record::Task {
        run: "r2".into(),
        ts: "t".into(),
        node: "node-194".into(),
        stage: addons.stage.clone(),
        task: addons.task.clone(),
        fingerprint: addons.fingerprint.clone(),
        secrets: None,
        inputs: addons.inputs.parts.clone(),
        status: TaskStatus::Changed,
        reason: None,
        error: None,
    });
    let p = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(decision_of(&p, "addons").0, Decision::Skip(SkipReason::Done));
    assert_eq!(
        decision_of(&p, "s3 credentials"),
        (Decision::Run, Some("after changed: addons".into()))
    );

    // `after: []` opts out of the stage rule.
    books.stages[1].tasks[4].after = Some(Vec::new());
    let p = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(decision_of(&p, "s3 credentials").0, Decision::Skip(SkipReason::Done));
}

#[test]
fn a_changed_register_or_wait_for_runs_the_task_again() {
    let (inv, mut books) = fixture();
    let sel = Selection::default();
    let mut progress = Progress::empty();
    let first = plan(&inv, &books, "node-194", &progress, &sel);
    record_all(&mut progress, &first, &Digests::none());
    let location = books.stages[1].tasks[0].location.clone();

    // A new `register` on a task done before: it runs again, and says why.
    books.stages[1].tasks[0].register = Some(crate::playbook::RegisterDef {
        name: "installed".into(),
        secret: false,
        capture: Capture::Line(-1),
        location: location.clone(),
    });
    let p = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(
        decision_of(&p, "install containerd"),
        (Decision::Run, Some("input changed: register".into()))
    );
    record_all(&mut progress, &p, &Digests::none());
    // Only a changed capture (the last line instead of the first) counts too.
    books.stages[1].tasks[0].register.as_mut().unwrap().capture = Capture::Line(1);
    let p = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(decision_of(&p, "install containerd").0, Decision::Run);
    record_all(&mut progress, &p, &Digests::none());
    let p = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(
        decision_of(&p, "install containerd").0,
        Decision::Skip(SkipReason::Done)
    );

    // A new `wait_for`: the same.
    books.stages[1].tasks[0].wait_for = vec![WaitForDef {
        nodes: crate::playbook::WaitNodes::Named("node-195".into()),
        task: "containerd/install containerd".into(),
        location,
    }];
    let p = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(
        decision_of(&p, "install containerd"),
        (Decision::Run, Some("input changed: waits".into()))
    );
    // A task with neither keeps the fingerprint it always had (journals of earlier versions stay valid).
    let untouched = |p: &NodePlan| {
        p.tasks
            .iter()
            .find(|t| t.task == "containerd config")
            .unwrap()
            .fingerprint
            .clone()
    };
    assert_eq!(untouched(&p), untouched(&first));
}

#[test]
fn after_names_earlier_tasks_also_of_earlier_stages() {
    let (inv, mut books) = fixture();
    let sel = Selection::default();
    let mut progress = Progress::empty();
    let first = plan(&inv, &books, "node-194", &progress, &sel);
    record_all(&mut progress, &first, &Digests::none());
    books.stages[2].tasks[1].after = Some(vec!["containerd/containerd config".into()]);
    books.stages[1].tasks[2].action = ActionDef::Copy(CopyDef {
        src: None,
        content: Some("other".into()),
        dest: "/etc/containerd/config.toml".into(),
        mode: 0o644,
        owner: None,
        template: true,
    });
    let p = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(
        decision_of(&p, "lb address"),
        (
            Decision::Run,
            Some("after changed: containerd/containerd config (if it changes)".into())
        )
    );
    assert_eq!(
        books.resolve_after(2, 1, "containerd/containerd config"),
        Some(("containerd".into(), "containerd config".into()))
    );
    assert_eq!(
        books.resolve_after(1, 0, "addons"),
        None,
        "a later task is no dependency"
    );
}

#[test]
fn a_changed_secret_runs_the_tasks_that_use_it() {
    let (inv, books) = fixture();
    let sel = Selection::default();
    let key = crate::secrets::DigestKey::random();
    let digests = |value: &str| {
        let mut v = crate::secrets::Vault::default();
        v.insert("s3_access_key", crate::secrets::Secret::new(value));
        v.digests(&key)
    };
    let before = digests("AKIA-ONE");
    let mut progress = Progress::empty();
    let first = plan_node(&inv, &books, "node-194", &Facts::assumed(), &progress, &before, &sel).unwrap();
    record_all(&mut progress, &first, &before);
    let same = plan_node(&inv, &books, "node-194", &Facts::assumed(), &progress, &before, &sel).unwrap();
    assert_eq!(decision_of(&same, "s3 credentials").0, Decision::Skip(SkipReason::Done));
    let rotated = plan_node(
        &inv,
        &books,
        "node-194",
        &Facts::assumed(),
        &progress,
        &digests("AKIA-TWO"),
        &sel,
    )
    .unwrap();
    assert_eq!(
        decision_of(&rotated, "s3 credentials"),
        (Decision::Run, Some("input changed: secrets".into()))
    );
    assert_eq!(decision_of(&rotated, "addons").0, Decision::Skip(SkipReason::Done));
    // Not read (a plan shown without the secret): compared without it.
    let unknown = plan(&inv, &books, "node-194", &progress, &sel);
    assert_eq!(
        decision_of(&unknown, "s3 credentials").0,
        Decision::Skip(SkipReason::Done)
    );
}

#[test]
fn only_from_and_limit_choose_stages_and_nodes() {
    let (inv, books) = fixture();
    let only = Selection {
        only: vec!["api".into()],
        ..Selection::default()
    };
    let nodes: Vec<&str> = select_nodes(&inv, &books, &only)
        .unwrap()
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(nodes, ["node-194"], "api runs on the central cluster only");

    let from = Selection {
        from: Some("containerd".into()),
        ..Selection::default()
    };
    let p = plan(&inv, &books, "node-195", &Progress::empty(), &from);
    assert!(
        names(&p).iter().all(|n| n.starts_with("containerd/")),
        "{:?}",
        names(&p)
    );

    let limit = Selection {
        limit: vec!["cluster-02".into()],
        ..Selection::default()
    };
    let nodes: Vec<&str> = select_nodes(&inv, &books, &limit)
        .unwrap()
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(nodes, ["node-195"]);
}

#[test]
fn bad_selections_are_command_line_errors() {
    let (inv, books) = fixture();
    let sel = Selection {
        limit: vec!["node-19".into()],
        only: vec!["containrd".into()],
        from: Some("api".into()),
        fresh: false,
    };
    let e = check(&inv, &books, &Progress::empty(), &sel).unwrap_err().to_string();
    assert!(
        e.contains("command line:1:1: error: --only and --from cannot be used together"),
        "{e}"
    );
    assert!(
        e.contains("no stage is named `containrd`\n  hint: did you mean `containerd`?"),
        "{e}"
    );
    assert!(e.contains("--limit `node-19` matches no node or cluster"), "{e}");
}

#[test]
fn ipv6_addresses_are_bracketed() {
    assert_eq!(host_port("fd00::1", 22), "[fd00::1]:22");
    assert_eq!(host_port("node-1.lab", 2222), "node-1.lab:2222");
}

#[test]
fn the_fixture_plan_matches_its_golden_file() {
    let (inv, books) = fixture();
    let sel = Selection::default();
    let plans: Vec<NodePlan> = select_nodes(&inv, &books, &sel)
        .unwrap()
        .iter()
        .map(|n| plan(&inv, &books, &n.name, &Progress::empty(), &sel))
        .collect();
    let text = render(&plans, true);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/good/plan.txt");
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&golden, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&golden).unwrap_or_default(),
        text,
        "UPDATE_GOLDEN=1 to accept"
    );
}

#[test]
fn the_plan_text_reads_like_a_runbook() {
    let (inv, books) = fixture();
    let mut progress = Progress::empty();
    let first = plan(&inv, &books, "node-194", &Progress::empty(), &Selection::default());
    progress.mark_done("node-194", "preflight", "show the OS", &first.tasks[0].fingerprint);
    let p = plan(&inv, &books, "node-194", &progress, &Selection::default());
    let text = render(std::slice::from_ref(&p), true);
    assert!(
        text.starts_with("node node-194 (192.168.101.194:22, cluster cluster-01): 8 tasks, 6 to run, 2 to skip\n"),
        "{text}"
    );
    assert!(
        text.contains("  stage preflight\n      1. [skip: done     ] show the OS\n"),
        "{text}"
    );
    assert!(
        text.contains("[skip: condition] install containerd (redhat) (sudo)"),
        "{text}"
    );
    assert!(
        text.contains("$ apt-get update\n             apt-get install -y containerd.io\n"),
        "{text}"
    );
    assert_eq!(render(&[p], true), text, "deterministic");
}
