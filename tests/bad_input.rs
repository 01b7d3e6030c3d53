//! Malformed inventories, playbooks, assets and command lines, each in `tests/bad_input/<case>/`, must be
//! refused with exactly the diagnostics in the case's `expected.txt`.
//!
//! A case holds whichever of `inventory.toml`, `playbooks/`, `assets/` it needs (the rest comes from
//! `tests/fixtures/good/`) and optionally `selection.txt` (`limit=a,b`, `only=x`, `from=y` lines).
//! Run with `UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate change.

use std::path::{Path, PathBuf};

use kubeboot::diag::Diagnostics;
use kubeboot::journal::Progress;
use kubeboot::plan::{self, Selection};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The first of `case/name` and the good fixture's `name` that exists.
fn input(case: &Path, name: &str) -> PathBuf {
    let own = case.join(name);
    if own.exists() {
        own
    } else {
        root().join("fixtures/good").join(name)
    }
}

fn selection(case: &Path) -> Selection {
    let mut sel = Selection::default();
    let Ok(text) = std::fs::read_to_string(case.join("selection.txt")) else {
        return sel;
    };
    let list = |v: &str| v.split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("limit", v)) => sel.limit = list(v),
            Some(("only", v)) => sel.only = list(v),
            Some(("from", v)) => sel.from = Some(v.trim().to_string()),
            Some(("fresh", v)) => sel.fresh = v.trim() == "true",
            _ => {}
        }
    }
    sel
}

/// Everything kubeboot reports for the case before it would connect to any node.
fn diagnose(case: &Path) -> Diagnostics {
    let inv = kubeboot::inventory::load(&input(case, "inventory.toml"));
    let books = kubeboot::playbook::load(&input(case, "playbooks"), &input(case, "assets"));
    match (inv, books) {
        (Ok(inv), Ok(books)) => match plan::check(&inv, &books, &Progress::empty(), &selection(case)) {
            Ok(()) => Diagnostics::default(),
            Err(d) => d,
        },
        (inv, books) => {
            let mut all = inv.err().unwrap_or_default();
            all.0.extend(books.err().unwrap_or_default().0);
            all
        }
    }
}

/// Rendered diagnostics with machine-specific path prefixes removed.
fn rendered(case: &Path, diags: &Diagnostics) -> String {
    let case_prefix = format!("{}/", case.display());
    let good_prefix = format!("{}/", root().join("fixtures/good").display());
    let text = diags
        .to_string()
        .replace(&case_prefix, "")
        .replace(&good_prefix, "<good>/");
    format!("{text}\n")
}

/// Runs `check` on every case folder under `tests/<folder>/` (at least `min` of them) and compares the text it
/// returns with the case's `expected.txt` (rewritten instead under `UPDATE_GOLDEN=1`); `check` returns `Err` for a
/// case that fails outright. Fails once, listing every case that differs.
fn each_case(folder: &str, min: usize, mut check: impl FnMut(&str, &Path) -> Result<String, String>) {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root().join(folder))
        .unwrap_or_else(|e| panic!("tests/{folder}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= min, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = match check(&name, case) {
            Ok(text) => text,
            Err(failure) => {
                failures.push(format!("{name}: {failure}"));
                continue;
            }
        };
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &text).expect("write expected.txt");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != text {
            failures.push(format!(
                "{name}: differs from expected.txt (UPDATE_GOLDEN=1 to accept)\n--- expected\n{expected}--- actual\n{text}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_malformed_input_is_refused_with_the_expected_diagnostics() {
    each_case("bad_input", 20, |name, case| {
        let diags = diagnose(case);
        if diags.is_empty() {
            return Err("accepted, but it is malformed".into());
        }
        for d in &diags.0 {
            assert!(d.line >= 1 && d.column >= 1, "{name}: {d}");
            assert!(!d.file.as_os_str().is_empty(), "{name}: {d}");
        }
        let text = rendered(case, &diags);
        for line in text.lines().filter(|l| !l.starts_with("  hint: ")) {
            let mut parts = line.splitn(4, ':');
            let (file, l, c) = (parts.next(), parts.next(), parts.next());
            let ok = file.is_some_and(|f| !f.is_empty())
                && l.is_some_and(|l| l.parse::<usize>().is_ok())
                && c.is_some_and(|c| c.parse::<usize>().is_ok());
            assert!(ok, "{name}: not file:line:col: {line}");
        }
        assert!(
            !text.contains("do-not-echo"),
            "{name}: a secret value was echoed:\n{text}"
        );
        Ok(text)
    });
}

#[test]
fn the_good_fixture_is_accepted() {
    let good = root().join("fixtures/good");
    let diags = diagnose(&good);
    assert!(diags.is_empty(), "{diags}");
}

/// Day-two commands refuse bad input the same way, before connecting to anything: each case in
/// `tests/bad_input_day2/<case>/` has `args.txt` (the command line after the global options), optionally its own
/// `inventory.toml` (else the shipped one) and a `journal.jsonl` for the state dir (what kubeboot saw last time).
#[test]
fn day_two_commands_refuse_bad_input_located_and_run_nothing() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    each_case("bad_input_day2", 3, |name, case| {
        let state = tempfile::tempdir().expect("a state dir");
        if let Ok(journal) = std::fs::read(case.join("journal.jsonl")) {
            std::fs::write(state.path().join("journal.jsonl"), journal).expect("journal");
        }
        let inventory = if case.join("inventory.toml").exists() {
            case.join("inventory.toml")
        } else {
            repo.join("inventory.toml")
        };
        let args = std::fs::read_to_string(case.join("args.txt")).expect("args.txt");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubeboot"))
            .arg("-i")
            .arg(&inventory)
            .arg("-p")
            .arg(repo.join("playbooks"))
            .arg("--state-dir")
            .arg(state.path())
            .args(args.split_whitespace())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("kubeboot runs");
        let stderr = String::from_utf8_lossy(&out.stderr)
            .replace(&format!("{}/", case.display()), "")
            .replace(&format!("{}/", repo.display()), "<repo>/");
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("nothing was run."), "{name}: {stderr}");
        let logs = state.path().join("logs");
        let runs = std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0);
        assert_eq!(runs, 0, "{name}: a run started");
        Ok(stderr)
    });
}
