//! One task definition rendered for one node: its `when`, its kind's templates and asset files, the secret checks
//! (secrets only in credential fields), and the fingerprint resume compares.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::diag::Diagnostic;
use crate::event::{Inputs, SkipReason};
use crate::playbook::template::{Context, Renderer, file_start};
use crate::playbook::{Location, Playbooks, RegisterDef, Stage, TaskDef, WaitForDef};
use crate::task::Render as _;

use super::{Action, Decision, PlannedTask, Register, depends};

/// Renders one task for one node. A task whose `when` is false is still checked, but a runtime template
/// failure in it is not an error (it will not run); its raw text is kept instead.
pub(super) fn plan_task(
    r: &Renderer,
    books: &Playbooks,
    stage: &Stage,
    def: &TaskDef,
    stage_waits: &[WaitForDef],
    ctx: &Context,
) -> Result<PlannedTask, Vec<Diagnostic>> {
    let field = |name: &str| def.fields.get(name).cloned().unwrap_or_else(|| def.location.clone());
    let mut problems = Vec::new();
    let mut asset_problems = Vec::new();
    let decision = match &def.when {
        Some(w) => match r.condition(w, &field("when"), ctx) {
            Ok(true) => Decision::Run,
            Ok(false) => Decision::Skip(SkipReason::Condition),
            Err(p) => {
                problems.extend(p);
                Decision::Run
            }
        },
        None => Decision::Run,
    };
    let lenient = decision != Decision::Run;
    let mut render = TaskRender {
        r,
        books,
        ctx,
        field: &field,
        lenient,
        problems: &mut problems,
        late: &mut asset_problems,
    };
    let action = def.action.render(&mut render);
    let mut text = |raw: &str, name: &str| render.text(raw, name);
    let unless = def.unless.as_ref().map(|u| text(u, "unless"));
    let env: Vec<(String, String)> = def
        .env
        .iter()
        .map(|(k, v)| (k.clone(), text(v, &format!("env.{k}"))))
        .collect();
    problems.extend(asset_problems);
    let needs = depends::needs(&action, unless.as_deref(), &env);
    problems.extend(depends::misplaced_outputs(def, &action, &needs));
    problems.extend(secrets_on_command_lines(def, &action, unless.as_deref()));
    problems.extend(secrets_outside_credentials(def, &action));
    if !lenient {
        problems.extend(kind_problems(def, &action));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Nothing of a jump-host task runs on the node, so the stage's sudo does not apply to it.
    let become_ = def.become_.unwrap_or(stage.become_) && !action.runs_on_jump_host();
    let extras = Extras {
        changed_when: def.changed_when,
        register: def.register.as_ref(),
        waits: stage_waits.iter().chain(&def.wait_for).collect(),
    };
    let fingerprint = fingerprint(
        &stage.name,
        &def.name,
        &action,
        unless.as_deref(),
        become_,
        &env,
        &extras,
    );
    let inputs = Inputs {
        secrets: None,
        parts: parts(&action, unless.as_deref(), become_, &env, &extras),
    };
    let secrets = secrets_used(&action, &env);
    Ok(PlannedTask {
        stage: stage.name.clone(),
        task: def.name.clone(),
        action,
        become_,
        unless,
        retries: def.retries,
        delay: def.delay,
        timeout: def.timeout,
        env,
        fingerprint,
        inputs,
        secrets,
        after: Default::default(),
        decision,
        register: def.register.as_ref().map(|r| Register {
            name: r.name.clone(),
            secret: r.secret,
            capture: r.capture.clone(),
        }),
        waits: Vec::new(),
        needs,
        serial: stage.serial,
        why: None,
        changed_when: def.changed_when,
    })
}

/// The secret names a task's env values and the texts its kind fills secrets into refer to, sorted.
fn secrets_used(action: &Action, env: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = env.iter().flat_map(|(_, v)| crate::secrets::referenced(v)).collect();
    names.extend(action.filled().iter().flat_map(|text| crate::secrets::referenced(text)));
    names.sort();
    names.dedup();
    names
}

/// The parts of a task's identity only some tasks have, as written: `changed_when: false`, what it hands to
/// other tasks and what it waits for. A changed one runs the task again; a task with none keeps the
/// fingerprint it had before they existed.
struct Extras<'a> {
    /// False for a read-only task.
    changed_when: bool,
    register: Option<&'a RegisterDef>,
    /// The stage's `wait_for` (for its first task) and the task's own.
    waits: Vec<&'a WaitForDef>,
}

impl Extras<'_> {
    /// The register's name, secrecy and capture (the `register` part); empty without one.
    fn register(&self) -> Vec<Vec<u8>> {
        let Some(r) = self.register else { return Vec::new() };
        vec![
            b"register".to_vec(),
            r.name.clone().into_bytes(),
            (if r.secret { "secret" } else { "plain" }).into(),
            format!("{:?}", r.capture).into_bytes(),
        ]
    }

    /// Each declared wait: which nodes and which task (the `waits` part); empty without any.
    fn waits(&self) -> Vec<Vec<u8>> {
        if self.waits.is_empty() {
            return Vec::new();
        }
        let mut out = vec![b"wait_for".to_vec()];
        for w in &self.waits {
            out.push(format!("{:?}", w.nodes).into_bytes());
            out.push(w.task.clone().into_bytes());
        }
        out
    }
}

/// Short digests (sha256, 16 hex digits) of the parts of a task, so a rerun can say which part changed:
/// `command` (what the kind does, all of it), `guard`, `env`, `sudo`, for a copy `owner` and `file <dest>`
/// for each copied file, and the [`Extras`] a task has: `changed_when`, `register`, `waits`.
fn parts(
    action: &Action,
    unless: Option<&str>,
    become_: bool,
    env: &[(String, String)],
    extras: &Extras<'_>,
) -> BTreeMap<String, String> {
    let short = |pieces: &[&[u8]]| {
        let mut h = Sha256::new();
        for p in pieces {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        hex::encode(&h.finalize()[..8])
    };
    let mut out = BTreeMap::new();
    match action {
        Action::Copy(c) => {
            for f in &c.files {
                out.insert(format!("file {}", f.dest), short(&[&f.mode.to_le_bytes(), &f.content]));
            }
            out.insert("owner".into(), short(&[c.owner.as_deref().unwrap_or("").as_bytes()]));
        }
        other => {
            let mut h = Sha256::new();
            other.fingerprint(&mut |bytes: &[u8]| {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            });
            out.insert("command".into(), hex::encode(&h.finalize()[..8]));
        }
    }
    if let Some(u) = unless {
        out.insert("guard".into(), short(&[u.as_bytes()]));
    }
    if !env.is_empty() {
        let flat: Vec<&[u8]> = env.iter().flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]).collect();
        out.insert("env".into(), short(&flat));
    }
    out.insert("sudo".into(), short(&[if become_ { b"become" } else { b"as-user" }]));
    if !extras.changed_when {
        out.insert("changed_when".into(), short(&[b"false"]));
    }
    for (part, pieces) in [("register", extras.register()), ("waits", extras.waits())] {
        if !pieces.is_empty() {
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            out.insert(part.into(), short(&refs));
        }
    }
    out
}

/// A jump-host task's fields other than its credentials end up in output, the plan and the journal's
/// messages, so a secret there would leak; kubeboot only fills secrets into the credential fields.
fn secrets_outside_credentials(def: &TaskDef, action: &Action) -> Vec<Diagnostic> {
    let fields = action.shown();
    secret_fields(
        def,
        &fields,
        |text| !crate::secrets::referenced(text).is_empty(),
        "would show in kubeboot's output, logs and journal",
        "secrets belong only in `user`/`password` (http) or `access_key`/`secret_key` (s3_buckets)",
    )
}

/// One diagnostic per field (the first of its kind) whose text holds a secret, at that field's place.
fn secret_fields(
    def: &TaskDef,
    fields: &[(&str, &str)],
    holds_secret: impl Fn(&str) -> bool,
    consequence: &str,
    hint: &str,
) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    let mut reported: Vec<&str> = Vec::new();
    for &(field, text) in fields {
        if reported.contains(&field) || !holds_secret(text) {
            continue;
        }
        reported.push(field);
        let at = def.fields.get(field).unwrap_or(&def.location);
        out.push(
            Diagnostic::at(
                &at.file,
                at.line,
                at.column,
                format!("a secret in `{field}` {consequence}"),
            )
            .with_hint(hint),
        );
    }
    out
}

/// What the task's kind finds wrong with it once rendered (URLs, paths), at the place of the field.
fn kind_problems(def: &TaskDef, action: &Action) -> Vec<Diagnostic> {
    action
        .problems()
        .into_iter()
        .map(|p| {
            let at = def.fields.get(p.field).unwrap_or(&def.location);
            Diagnostic::at(&at.file, at.line, at.column, p.message).with_hint(p.hint)
        })
        .collect()
}

/// Secrets may only reach a node through `env` or file content: anything else ends up on a command line,
/// visible in the node's process list.
fn secrets_on_command_lines(def: &TaskDef, action: &Action, unless: Option<&str>) -> Vec<Diagnostic> {
    let marker = crate::secrets::placeholder("");
    let marker = marker.trim_end_matches("@@");
    let mut fields = action.command_line();
    if let Some(u) = unless {
        fields.push(("unless", u));
    }
    secret_fields(
        def,
        &fields,
        |text| text.contains(marker),
        "would show on the node's command line",
        "pass it through `env:` (e.g. `env: { TOKEN: \"{{ secrets.NAME }}\" }`) and use $TOKEN",
    )
}

/// Hex sha256 over a length-prefixed encoding of everything that decides what the task does.
fn fingerprint(
    stage: &str,
    task: &str,
    action: &Action,
    unless: Option<&str>,
    become_: bool,
    env: &[(String, String)],
    extras: &Extras<'_>,
) -> String {
    let mut h = Sha256::new();
    let mut put = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(b"kubeboot-task-v1");
    put(stage.as_bytes());
    put(task.as_bytes());
    action.fingerprint(&mut put);
    match unless {
        Some(u) => {
            put(b"unless");
            put(u.as_bytes());
        }
        None => put(b"no-unless"),
    }
    put(if become_ { b"become" } else { b"as-user" });
    for (k, v) in env {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    // Only a read-only task adds it: it decides what later tasks do after it (an `ok` re-runs nothing), and
    // the fingerprints of every other task stay what earlier versions journaled.
    if !extras.changed_when {
        put(b"changed_when-false");
    }
    for piece in extras.register().iter().chain(&extras.waits()) {
        put(piece);
    }
    hex::encode(h.finalize())
}

/// A task's templates rendered for one node; what fails is recorded (leniently for a task that will not run).
struct TaskRender<'a> {
    r: &'a Renderer,
    books: &'a Playbooks,
    ctx: &'a Context,
    field: &'a dyn Fn(&str) -> Location,
    /// The task will not run (`when` is false): runtime template failures are not errors.
    lenient: bool,
    problems: &'a mut Vec<Diagnostic>,
    /// Problems with asset files, reported after the task's own fields.
    late: &'a mut Vec<Diagnostic>,
}

impl crate::task::Render for TaskRender<'_> {
    fn text(&mut self, raw: &str, name: &str) -> String {
        match self.r.render(raw, &(self.field)(name), name, self.ctx) {
            Ok(s) => s,
            Err(p) => {
                // Static problems (undefined names, syntax) are errors even for a task skipped by `when`.
                if !self.lenient || p.iter().any(|d| !d.message.starts_with("template error")) {
                    self.problems.extend(p);
                }
                raw.to_string()
            }
        }
    }

    fn asset(&mut self, text: &str, file: &Path) -> Option<String> {
        match self.r.render(text, &file_start(file), "template", self.ctx) {
            Ok(s) => Some(s),
            Err(p) => {
                self.late.extend(p);
                None
            }
        }
    }

    fn assets_dir(&self) -> &Path {
        &self.books.assets_dir
    }

    fn problem(&mut self, d: Diagnostic) {
        self.late.push(d);
    }
}
