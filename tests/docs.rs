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
}
