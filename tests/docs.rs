//! The README and 운영가이드.md stay true to the tool: every `kubeboot` command written in
//! their code blocks parses with the real command line, and the scripts they name exist.

use std::path::Path;

use clap::Parser;
use kubeboot::cli::Cli;

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines inside ``` fences.
fn code_lines(text: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
            continue;
        }
        if inside {
            out.push(line.trim().to_string());
        }
    }
    out
}

/// The `kubeboot ...` invocations in a shell line, cut at pipes, redirections, `&&` and comments.
fn invocations(line: &str) -> Vec<Vec<String>> {
    let line = line.split(" #").next().unwrap_or("");
    let mut found = Vec::new();
    for part in line.split("&&").flat_map(|p| p.split('|')).flat_map(|p| p.split(';')) {
        let part = part.split('>').next().unwrap_or("").trim();
        let words: Vec<String> = part
            .split_whitespace()
            .map(|w| w.trim_matches(['"', '\'']).to_string())
            .collect();
        // The program is the first word after `sudo` and VAR=value assignments; `cargo run -- ARGS` runs kubeboot too.
        let first = words.iter().position(|w| w != "sudo" && !w.contains('='));
        let start = match first {
            Some(i) if words[i] == "kubeboot" || words[i].ends_with("/kubeboot") => i,
            Some(i) if words[i] == "cargo" => match words.iter().position(|w| w == "--") {
                Some(dash) => dash,
                None => continue,
            },
            _ => continue,
        };
        let mut args = vec!["kubeboot".to_string()];
        args.extend(words[start + 1..].iter().cloned());
        found.push(args);
    }
    found
}

fn check_commands(name: &str) -> usize {
    let mut checked = 0;
    for line in code_lines(&doc(name)) {
        // The synopsis lines (`kubeboot [-i ...] <command>`) describe the grammar, they are not commands.
        if line.contains("<command>") || line.contains(" [") || line.starts_with("kubeboot ·") {
            continue;
        }
        for args in invocations(&line) {
            if let Err(e) = Cli::try_parse_from(&args)
                && e.kind() != clap::error::ErrorKind::DisplayHelp
                && e.kind() != clap::error::ErrorKind::DisplayVersion
            {
                panic!("{name}: `{line}` does not parse:\n{e}");
            }
            checked += 1;
        }
    }
    checked
}

/// The `kubeboot ...` commands written inline in the prose (`` `kubeboot apply --only verify --fresh` ``),
/// outside the code blocks. Spans with placeholders (`...`, `<stage>`, `NAMES`) show a form, not a command.
fn inline_commands(text: &str) -> Vec<String> {
    inline_spans(text)
        .into_iter()
        .filter(|span| {
            let placeholder = span.contains("...")
                || span.contains('…')
                || span.contains('<')
                || span.contains('[')
                || span
                    .split_whitespace()
                    .any(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase()));
            span.starts_with("kubeboot ") && !placeholder
        })
        .collect()
}

/// The `` `code` `` spans of the prose (outside ``` fences).
fn inline_spans(text: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
            continue;
        }
        if inside {
            continue;
        }
        out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
    }
    out
}

fn check_inline_commands(name: &str) -> usize {
    let mut checked = 0;
    for span in inline_commands(&doc(name)) {
        for args in invocations(&span) {
            // Prose may name a command or a flag without its value (`kubeboot bundle --check`): only a
            // command, flag or value that does not exist fails.
            if let Err(e) = Cli::try_parse_from(&args)
                && e.kind() != clap::error::ErrorKind::DisplayHelp
                && e.kind() != clap::error::ErrorKind::DisplayVersion
                && e.kind() != clap::error::ErrorKind::MissingRequiredArgument
                && !e.to_string().contains("a value is required")
            {
                panic!("{name}: `{span}` does not parse ({:?}):\n{e}", e.kind());
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_kubeboot_command_written_inline_in_the_docs_parses() {
    assert!(check_inline_commands("README.md") >= 5);
    assert!(check_inline_commands("운영가이드.md") >= 20);
}

/// Every long flag some kubeboot command takes.
fn kubeboot_flags() -> Vec<String> {
    fn walk(c: &clap::Command, out: &mut Vec<String>) {
        out.extend(c.get_arguments().filter_map(|a| a.get_long()).map(str::to_string));
        for sub in c.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out
}

/// Flags of other tools the docs name on their own (kustomize, Thanos, helm, kubeadm, apt, the test runner).
const OTHER_TOOLS_FLAGS: &[&str] = &[
    "helm-command",
    "deduplication.func=penalty",
    "deduplication.replica-label",
    "sync-block-duration",
    "parallel",
    "no-hooks",
    "download-only",
    "control-plane",
    // helm template's (as kustomize passes them), kustomize build's, and the operators' the bundle reads.
    "api-versions",
    "kube-version",
    "name-template",
    "include-crds",
    "skip-tests",
    "debug",
    "devel",
    "helm-kube-version",
    "helm-api-versions",
    "prometheus-config-reloader",
    "instance-manager-image",
    "prometheus-default-base-image",
    "alertmanager-default-base-image",
    "thanos-default-base-image",
];

#[test]
fn every_flag_the_docs_name_on_its_own_is_a_kubeboot_flag() {
    let known = kubeboot_flags();
    let mut checked = 0;
    for name in ["README.md", "운영가이드.md"] {
        for span in inline_spans(&doc(name)) {
            let Some(flag) = span.strip_prefix("--") else {
                continue;
            };
            let flag = flag.split_whitespace().next().unwrap_or("");
            if OTHER_TOOLS_FLAGS.contains(&flag) || OTHER_TOOLS_FLAGS.contains(&flag.split('=').next().unwrap_or("")) {
                continue;
            }
            assert!(
                known.iter().any(|k| k == flag),
                "{name}: `--{flag}` is no kubeboot flag"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} flags found");
}

#[test]
fn every_kubeboot_command_in_the_readme_parses() {
    assert!(check_commands("README.md") >= 3);
}

#[test]
fn every_kubeboot_command_in_the_operations_guide_parses() {
    assert!(check_commands("운영가이드.md") >= 20);
}

#[test]
fn the_readme_opens_with_the_two_setup_commands_and_their_scripts_exist() {
    let readme = doc("README.md");
    let lines = code_lines(&readme);
    assert!(
        lines.iter().take(2).any(|l| l.starts_with("bash scripts/demo.sh")),
        "first command: the main job"
    );
    assert!(
        lines.iter().take(2).any(|l| l.starts_with("bash scripts/test.sh")),
        "second command: the test suite"
    );
    for script in ["scripts/demo.sh", "scripts/test.sh", ".ci/run"] {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(script).exists(),
            "{script} is missing"
        );
    }
    let ci = doc(".ci/run");
    assert!(
        ci.contains("scripts/test.sh"),
        ".ci/run must call the README's test command"
    );
}

#[test]
fn a_wrong_flag_is_caught_by_this_check() {
    // The check above is only worth something if a typo fails it.
    assert!(Cli::try_parse_from(invocations("kubeboot apply --frm x")[0].clone()).is_err());
    assert!(Cli::try_parse_from(invocations("kubeboot apply --from x")[0].clone()).is_ok());
    // Inline spans are found, placeholders left out.
    let found = inline_commands("run `kubeboot apply --frm x`, then `kubeboot apply --limit <node>`");
    assert_eq!(found, ["kubeboot apply --frm x"]);
}
