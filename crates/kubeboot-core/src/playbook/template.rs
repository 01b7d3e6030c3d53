//! Templating of playbook fields and assets (minijinja, strict undefined), with the per-node context.
//!
//! Undefined names are caught twice: statically (every name a template reads must exist in the context,
//! even in a branch not taken with these facts) and while rendering (strict undefined behavior).
//!
//! This file renders and checks (the static check of the names a template reads); the per-node
//! context is `template/context.rs`.

mod context;

use std::collections::BTreeSet;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

use super::model::Location;
use crate::diag::{Diagnostic, closest};

pub use context::{Context, Registry};

/// Names minijinja provides itself; never reported as undefined.
const BUILTINS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "cycler",
    "joiner",
    "lipsum",
    "loop",
    "self",
    "super",
    "caller",
    "varargs",
    "kwargs",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
];

/// Renders templates for one context; problems become diagnostics at the field's place.
pub struct Renderer {
    env: Environment<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

/// Template instructions one render may execute: far more than any shipped template needs, and
/// it stops a runaway loop at plan time instead of hanging the plan.
const FUEL: u64 = 100_000;

impl Renderer {
    /// A strict renderer that keeps trailing newlines (files must stay byte-exact).
    pub fn new() -> Renderer {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        if let Ok(syntax) = SyntaxConfig::builder().keep_trailing_newline(true).build() {
            env.set_syntax(syntax);
        }
        Renderer { env }
    }

    /// Renders `text` (a template written at `at`); `field` names it in messages.
    pub fn render(&self, text: &str, at: &Location, field: &str, ctx: &Context) -> Result<String, Vec<Diagnostic>> {
        if !text.contains("{{") && !text.contains("{%") && !text.contains("{#") {
            return Ok(text.to_string());
        }
        let tmpl = self
            .env
            .template_from_str(text)
            .map_err(|e| vec![template_error(&e, at, field)])?;
        let problems = undefined_names(text, tmpl.undeclared_variables(true), at, field, ctx);
        if !problems.is_empty() {
            return Err(problems);
        }
        tmpl.render(ctx.value())
            .map_err(|e| vec![template_error(&e, at, field)])
    }

    /// Evaluates a `when` condition: `{{ expr }}` or a bare expression.
    pub fn condition(&self, text: &str, at: &Location, ctx: &Context) -> Result<bool, Vec<Diagnostic>> {
        let trimmed = text.trim();
        let expr = trimmed
            .strip_prefix("{{")
            .and_then(|t| t.strip_suffix("}}"))
            .filter(|inner| !inner.contains("{{") && !inner.contains("}}"))
            .unwrap_or(trimmed);
        let compiled = self
            .env
            .compile_expression(expr)
            .map_err(|e| vec![template_error(&e, at, "when")])?;
        let problems = undefined_names(expr, compiled.undeclared_variables(true), at, "when", ctx);
        if !problems.is_empty() {
            return Err(problems);
        }
        compiled
            .eval(ctx.value())
            .map(|v| v.is_true())
            .map_err(|e| vec![template_error(&e, at, "when")])
    }
}

/// A minijinja error as a diagnostic at the field's line plus the template's own line.
fn template_error(e: &minijinja::Error, at: &Location, field: &str) -> Diagnostic {
    let tline = e.line().unwrap_or(1).max(1);
    let column = if tline == 1 { at.column } else { 1 };
    let what = match e.kind() {
        ErrorKind::SyntaxError => "template syntax error",
        ErrorKind::UndefinedError => "undefined variable",
        ErrorKind::OutOfFuel => "template does too much work",
        _ => "template error",
    };
    let detail = e.detail().map(str::to_string).unwrap_or_else(|| e.kind().to_string());
    let outputs = e.kind() == ErrorKind::UndefinedError && e.to_string().contains("outputs");
    let hint = match e.kind() {
        _ if outputs => "no task of that node registers this output: add `register: NAME` to the task that prints it",
        ErrorKind::SyntaxError => "check the {{ }} / {% %} pairs and the expression syntax",
        ErrorKind::UndefinedError => "define it in [vars], the cluster or node vars, or the stage's `vars`",
        ErrorKind::OutOfFuel => {
            "it ran over 100000 template steps: shorten its loops, or move the work into the shell command"
        }
        _ => "check the expression and the types of the values it uses",
    };
    Diagnostic::at(
        &at.file,
        at.line + tline - 1,
        column,
        format!("{what} in `{field}`: {detail}"),
    )
    .with_hint(hint)
}

/// Names (and `a.b` lookups) the template reads that the context does not have.
fn undefined_names(
    source: &str,
    names: std::collections::HashSet<String>,
    at: &Location,
    field: &str,
    ctx: &Context,
) -> Vec<Diagnostic> {
    let sorted: BTreeSet<String> = names.into_iter().collect();
    let mut out = Vec::new();
    for path in sorted {
        let mut parts = path.split('.');
        let Some(top) = parts.next() else { continue };
        if BUILTINS.contains(&top) || guarded(source, top) {
            continue;
        }
        let Some(mut value) = ctx.vars.get(top).cloned() else {
            let hint = match closest(top, ctx.vars.keys().map(String::as_str)) {
                Some(m) => format!("did you mean `{m}`?"),
                None => "define it in [vars], the cluster or node vars, or the stage's `vars`".into(),
            };
            out.push(undefined_at(
                source,
                top,
                at,
                field,
                format!("`{top}` is not defined"),
                hint,
            ));
            continue;
        };
        let mut walked = top.to_string();
        for attr in parts {
            if value.kind() != minijinja::value::ValueKind::Map {
                break;
            }
            let keys: Vec<String> = value
                .try_iter()
                .map(|it| it.filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let Ok(next) = value.get_attr(attr) else { break };
            if next.is_undefined() && !guarded(source, &format!("{walked}.{attr}")) {
                let hint = if top == "outputs" {
                    format!(
                        "no task of this node registers `{attr}` (add `register: {attr}` to the task that prints it); registered here: {}",
                        keys.join(", ")
                    )
                } else if top == "secrets" {
                    match closest(attr, keys.iter().map(String::as_str)) {
                        Some(m) => format!("did you mean `{m}`? secrets are declared in the inventory's [secrets]"),
                        None => "declare it in the inventory's [secrets] as `NAME = { env = \"VAR\" }`".into(),
                    }
                } else {
                    match closest(attr, keys.iter().map(String::as_str)) {
                        Some(m) => format!("did you mean `{walked}.{m}`?"),
                        None => format!("`{walked}` has: {}", keys.join(", ")),
                    }
                };
                let msg = if top == "secrets" {
                    format!("unknown secret `{attr}`")
                } else {
                    format!("`{walked}.{attr}` is not defined")
                };
                out.push(undefined_at(source, &format!("{walked}.{attr}"), at, field, msg, hint));
                break;
            }
            walked = format!("{walked}.{attr}");
            value = next;
        }
    }
    out
}

/// True when the template itself makes the name optional: `is defined` / `is undefined`
/// tests, or a `default` filter (both work on undefined values even in strict mode).
fn guarded(source: &str, name: &str) -> bool {
    let tests = ["is defined", "is not defined", "is undefined"]
        .iter()
        .any(|t| source.contains(&format!("{name} {t}")));
    let defaulted = ["|default(", "| default(", "|d(", "| d("]
        .iter()
        .any(|f| source.contains(&format!("{name}{f}")) || source.contains(&format!("{name} {f}")));
    tests || defaulted
}

/// A diagnostic at the first line of the template that mentions `needle`.
fn undefined_at(source: &str, needle: &str, at: &Location, field: &str, msg: String, hint: String) -> Diagnostic {
    let tline = source
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(1);
    let column = if tline == 1 { at.column } else { 1 };
    Diagnostic::at(
        &at.file,
        at.line + tline - 1,
        column,
        format!("undefined variable in `{field}`: {msg}"),
    )
    .with_hint(hint)
}

/// Location of line 1 of a file (templated assets report the asset file and the template line).
pub fn file_start(file: &Path) -> Location {
    Location {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
    }
}

/// `https://HOST/v2/` for a chart repository `oci://HOST/PATH` (the OCI distribution API's base), else None.
// checked: OCI distribution-spec v1.1 spec.md (end-1: GET /v2/, 200 or 401), helm pkg/registry (oci://host/path)
pub fn oci_api_base(repo: &str) -> Option<String> {
    let rest = repo.strip_prefix("oci://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(format!("https://{host}/v2/"))
}

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

    use super::*;
    use crate::facts::Facts;
    use crate::inventory::{Inventory, parse};
    use crate::playbook::Hosts;
    use crate::playbook::model::Stage;

    fn inventory() -> Inventory {
        let text = r#"
[[clusters]]
name = "c1"
role = "central"
lb_ip = "10.0.0.100"
[clusters.vars]
level = "cluster"
only_cluster = 1

[[nodes]]
name = "n1"
address = "10.0.0.1"
cluster = "c1"
[nodes.vars]
level = "node"

[vars]
level = "global"
only_global = 2
os_family = "overridden by facts"

[secrets]
s3 = { env = "X" }
"#;
        match parse(Path::new("inventory.toml"), text) {
            Ok(i) => i,
            Err(d) => panic!("{d}"),
        }
    }

    fn stage(vars: &[(&str, Json)]) -> Stage {
        Stage {
            name: "s".into(),
            file: "s.yaml".into(),
            hosts: Hosts::All,
            become_: false,
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            wait_for: vec![],
            serial: false,
            once_per_cluster: false,
            tasks: vec![],
            location: file_start(Path::new("s.yaml")),
            hosts_location: file_start(Path::new("s.yaml")),
        }
    }

    fn at(line: usize) -> Location {
        Location {
            file: "s.yaml".into(),
            line,
            column: 10,
        }
    }

    fn render(text: &str, st: &Stage) -> Result<String, String> {
        let inv = inventory();
        let ctx = Context::new(&inv, &inv.nodes[0], st, &Facts::assumed(), &Registry::new());
        Renderer::new()
            .render(text, &at(5), "run", &ctx)
            .map_err(|d| d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))
    }

    #[test]
    fn a_runaway_loop_is_a_plan_error_not_a_hang() {
        let err = render(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            &stage(&[]),
        )
        .unwrap_err();
        assert!(err.contains("s.yaml:5:10"), "{err}");
        assert!(err.contains("template does too much work"), "{err}");
        assert!(err.contains("100000 template steps"), "{err}");
    }

    #[test]
    fn later_layers_override_earlier_ones() {
        assert_eq!(render("{{ level }}", &stage(&[])).unwrap(), "node");
        assert_eq!(
            render("{{ level }}", &stage(&[("level", Json::from("stage"))])).unwrap(),
            "stage"
        );
        assert_eq!(
            render("{{ only_global }}/{{ only_cluster }}", &stage(&[])).unwrap(),
            "2/1"
        );
        assert_eq!(
            render("{{ os_family }}/{{ facts.arch }}", &stage(&[])).unwrap(),
            "debian/x86_64"
        );
    }

    #[test]
    fn a_default_filter_makes_a_variable_optional_but_a_bare_typo_still_fails() {
        let st = stage(&[]);
        assert_eq!(render("{{ retention | default('30d') }}", &st).unwrap(), "30d");
        assert_eq!(render("{{ retention|d('1h') }}", &st).unwrap(), "1h");
        assert!(render("{{ retention }}", &st).unwrap_err().contains("retention"));
    }

    #[test]
    fn node_cluster_and_central_objects_are_available() {
        let st = stage(&[]);
        assert_eq!(
            render(
                "{{ node.name }}@{{ node.address }}:{{ node.port }} {{ cluster.lb_ip }} {{ cluster.nodes[0] }}",
                &st
            )
            .unwrap(),
            "n1@10.0.0.1:22 10.0.0.100 n1"
        );
        assert_eq!(
            render("{{ central.nodes[0].address }} {{ nodes|length }}", &st).unwrap(),
            "10.0.0.1 1"
        );
        assert_eq!(render("{{ cluster.level }}", &st).unwrap(), "cluster");
    }

    #[test]
    fn secrets_render_as_placeholders_and_unknown_ones_fail() {
        let st = stage(&[]);
        assert_eq!(
            render("{{ secrets.s3 }}", &st).unwrap(),
            crate::secrets::placeholder("s3")
        );
        let e = render("{{ secrets.s4 }}", &st).unwrap_err();
        assert!(
            e.contains("s.yaml:5:10: error: undefined variable in `run`: unknown secret `s4`"),
            "{e}"
        );
    }

    #[test]
    fn a_typo_in_a_branch_not_taken_is_still_reported() {
        let e = render(
            "line one\n{% if false %}{{ kubernets_version }}{% endif %}",
            &stage(&[]),
        )
        .unwrap_err();
        assert!(
            e.contains("s.yaml:6:1: error: undefined variable in `run`: `kubernets_version`"),
            "{e}"
        );
        let e = render("{{ node.adress }}", &stage(&[])).unwrap_err();
        assert!(e.contains("did you mean `node.address`?"), "{e}");
    }

    #[test]
    fn syntax_errors_point_at_the_template_line() {
        let e = render("a\nb {{ x + }}\n", &stage(&[])).unwrap_err();
        assert!(e.contains("s.yaml:6:1: error: template syntax error in `run`"), "{e}");
    }

    #[test]
    fn trailing_newlines_are_kept() {
        assert_eq!(render("x={{ level }}\n", &stage(&[])).unwrap(), "x=node\n");
    }

    #[test]
    fn conditions_accept_braces_or_bare_expressions() {
        let inv = inventory();
        let st = stage(&[]);
        let ctx = Context::new(&inv, &inv.nodes[0], &st, &Facts::assumed(), &Registry::new());
        let r = Renderer::new();
        assert_eq!(r.condition("{{ os_family == 'debian' }}", &at(1), &ctx), Ok(true));
        assert_eq!(r.condition("os_family == 'redhat'", &at(1), &ctx), Ok(false));
        assert!(r.condition("os_famly == 'x'", &at(1), &ctx).is_err());
    }
}
