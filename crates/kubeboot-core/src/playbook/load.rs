//! Reading `playbooks/*.yaml` into [`Playbooks`], reporting every problem with file, line and column.
//!
//! This file has the folder (its files, in file-name order, each read as UTF-8 and parsed) and the
//! check across stages (`after`); a stage's keys are read in `load/stage.rs`, a task's in
//! `load/task.rs`.

mod stage;
mod task;

use std::path::{Path, PathBuf};

use super::model::{Playbooks, Stage};
use crate::diag::{Diagnostic, Diagnostics, closest};
use crate::spanned::{Reader, Syntax, Value, yaml};

/// Reads every `*.yaml`/`*.yml` in `dir` (one stage each, in file-name order); `copy.src` resolves under `assets_dir`.
pub fn load(dir: &Path, assets_dir: &Path) -> Result<Playbooks, Diagnostics> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Diagnostic::file(dir, format!("cannot read the playbooks folder: {e}")).with_hint("check the -p path")
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(Diagnostic::file(dir, "the playbooks folder has no *.yaml files")
            .with_hint("add one file per stage, e.g. 00-preflight.yaml")
            .into());
    }
    let mut diags = Diagnostics::default();
    let mut stages: Vec<Stage> = Vec::new();
    for file in files {
        let Some(stage) = load_file(&file, assets_dir, &mut diags) else {
            continue;
        };
        if let Some(first) = stages.iter().find(|s| s.name == stage.name) {
            diags.push(
                Diagnostic::at(
                    &file,
                    stage.location.line,
                    stage.location.column,
                    format!("stage `{}` is also defined in {}", stage.name, first.file.display()),
                )
                .with_hint("stage names must be unique across playbook files"),
            );
            continue;
        }
        stages.push(stage);
    }
    check_after(&stages, &mut diags);
    // Files in run order, problems in each file top to bottom.
    let order: Vec<PathBuf> = diags.0.iter().map(|d| d.file.clone()).fold(Vec::new(), |mut v, f| {
        if !v.contains(&f) {
            v.push(f);
        }
        v
    });
    diags
        .0
        .sort_by_key(|d| (order.iter().position(|f| *f == d.file), d.line, d.column));
    diags.into_result(Playbooks {
        dir: dir.to_path_buf(),
        assets_dir: assets_dir.to_path_buf(),
        stages,
    })
}

/// Every name in an `after` list must be an earlier task: of its stage by name, or of an earlier stage as
/// `stage/name` (a later task cannot have changed before this one runs).
fn check_after(stages: &[Stage], diags: &mut Diagnostics) {
    for (si, stage) in stages.iter().enumerate() {
        for (ti, task) in stage.tasks.iter().enumerate() {
            for name in task.after.iter().flatten() {
                if super::model::resolve_after(stages, si, ti, name).is_some() {
                    continue;
                }
                let earlier = stage.tasks[..ti].iter().map(|t| t.name.as_str());
                let hint = match closest(name, earlier) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "name an earlier task of this stage, or `stage/task` of an earlier stage".into(),
                };
                let at = task.fields.get("after").unwrap_or(&task.location);
                diags.push(
                    Diagnostic::at(
                        &stage.file,
                        at.line,
                        at.column,
                        format!("`after` names `{name}`, which is not an earlier task"),
                    )
                    .with_hint(hint),
                );
            }
        }
    }
}

fn load_file(file: &Path, assets_dir: &Path, diags: &mut Diagnostics) -> Option<Stage> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            diags.push(Diagnostic::file(file, format!("cannot read the playbook: {e}")));
            return None;
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let before = String::from_utf8_lossy(&e.as_bytes()[..offset]).into_owned();
            diags.push(
                Diagnostic::at_offset(file, &before, offset, "the playbook is not valid UTF-8 text")
                    .with_hint("save the file as UTF-8"),
            );
            return None;
        }
    };
    parse_text(file, &text, assets_dir, diags)
}

/// Parses one playbook's text as if it were read from `file` (for tests and fuzzing).
pub fn parse(file: &Path, text: &str, assets_dir: &Path) -> Result<Stage, Diagnostics> {
    let mut diags = Diagnostics::default();
    let stage = parse_text(file, text, assets_dir, &mut diags);
    match stage {
        Some(stage) if diags.is_empty() => Ok(stage),
        _ => Err(diags),
    }
}

fn parse_text(file: &Path, text: &str, assets_dir: &Path, diags: &mut Diagnostics) -> Option<Stage> {
    if text.trim().is_empty() {
        diags.push(
            Diagnostic::file(file, "the playbook is empty")
                .with_hint("a playbook needs `name`, `hosts` and `tasks`, or remove the file"),
        );
        return None;
    }
    let doc = match yaml::parse(file, text) {
        Ok(d) => d,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    if doc.value == Value::Null {
        diags.push(
            Diagnostic::file(file, "the playbook is empty")
                .with_hint("a playbook needs `name`, `hosts` and `tasks`, or remove the file"),
        );
        return None;
    }
    let mut r = Reader {
        file,
        base: assets_dir,
        diags,
        syntax: Syntax::Yaml,
    };
    r.stage(&doc)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::playbook::model::{ActionDef, Hosts};

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let books = tmp.path().join("playbooks");
        let assets = tmp.path().join("assets");
        std::fs::create_dir_all(&books).unwrap();
        std::fs::create_dir_all(assets.join("containerd")).unwrap();
        std::fs::write(assets.join("containerd/config.toml"), "x").unwrap();
        for (n, t) in files {
            write(&books, n, t);
        }
        (tmp, books, assets)
    }

    const CONTAINERD: &str = r#"name: containerd
hosts: [central, node-1]
become: true
vars: { a: 1 }
tasks:
  - name: install containerd
    run: apt-get install -y containerd.io
    unless: dpkg -s containerd.io
    when: "{{ os_family == 'debian' }}"
    retries: 3
    delay: 10s
    timeout: 10m
    become: false
    env: { AWS_ACCESS_KEY_ID: "{{ secrets.s3 }}" }
  - name: containerd config
    copy: { src: containerd/config.toml, dest: /etc/containerd/config.toml, mode: 0600, owner: "root:root", template: true }
  - name: inline file
    copy: { content: "x={{ a }}\n", dest: /etc/x.conf }
  - name: wait for the API server
    wait: kubectl get --raw=/readyz
    interval: 2s
"#;

    #[test]
    fn a_good_playbook_set_loads_in_file_name_order() {
        let (_tmp, books, assets) = setup(&[
            ("10-containerd.yaml", CONTAINERD),
            (
                "00-first.yml",
                "name: first\nhosts: all\ntasks:\n  - name: a\n    run: 'true'\n",
            ),
        ]);
        let p = match load(&books, &assets) {
            Ok(p) => p,
            Err(d) => panic!("{d}"),
        };
        assert_eq!(
            p.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["first", "containerd"]
        );
        let s = &p.stages[1];
        assert!(s.become_);
        assert_eq!(s.hosts, Hosts::Select(vec!["central".into(), "node-1".into()]));
        let t = &s.tasks[0];
        assert_eq!(t.retries, 3);
        assert_eq!(t.delay, Duration::from_secs(10));
        assert_eq!(t.timeout, Some(Duration::from_secs(600)));
        assert_eq!(t.become_, Some(false));
        assert_eq!(t.location.line, 6);
        assert_eq!(t.fields["run"].line, 7);
        let ActionDef::Copy(c) = &s.tasks[1].action else {
            panic!()
        };
        assert_eq!(c.mode, 0o600);
        assert!(c.template);
        let ActionDef::Wait(w) = &s.tasks[3].action else {
            panic!()
        };
        assert_eq!(w.interval, Duration::from_secs(2));
        assert_eq!(s.tasks[3].timeout, Some(Duration::from_secs(300)));
    }

    #[test]
    fn task_problems_point_at_the_offending_key() {
        let (_tmp, books, assets) = setup(&[(
            "a.yaml",
            "name: a\nhosts: all\ntasks:\n  - name: x\n    rnu: ls\n  - name: y\n    copy: { src: containerd/config.tom, dest: /x }\n",
        )]);
        let e = load(&books, &assets).unwrap_err().to_string();
        assert!(e.contains("a.yaml:5:5: error: unknown key `rnu` in a task"), "{e}");
        assert!(e.contains("did you mean `run`?"), "{e}");
        assert!(!e.contains("the task has no action"), "the typo already says it: {e}");
        assert!(
            e.contains("a.yaml:7:18: error: asset `containerd/config.tom` does not exist"),
            "{e}"
        );
        assert!(e.contains("did you mean `containerd/config.toml`?"), "{e}");
    }
}
