//! Outputs: values a task printed and `register`ed, used by later tasks of the same node and of other nodes.
//!
//! The plan cannot know them, so a template that reads `{{ outputs.NAME }}` or
//! `{{ nodes['NODE'].outputs.NAME }}` renders a placeholder, like a secret does; the engine fills it when it sends
//! the command, from the [`Store`] the producing task filled. A secret output uses the secret placeholder form, so
//! every check that keeps secrets off command lines and out of messages applies to it unchanged.

use std::collections::BTreeMap;

use crate::secrets::{Secret, Vault};

/// Where a registered output's value comes from in what the task printed on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// All of stdout, surrounding whitespace trimmed.
    Stdout,
    /// One line: 1 is the first, -1 the last (counting non-empty lines), trimmed.
    Line(i64),
    /// stdout is a JSON document; the value at this dotted path (`a.b.0.c`), a string as is, anything else as JSON.
    Json(String),
}

const OPEN: &str = "@@kubeboot-output:";
const SECRET_OPEN: &str = "@@kubeboot-secret:out:";
const CLOSE: &str = "@@";

/// One output of one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutputRef {
    pub node: String,
    pub name: String,
    pub secret: bool,
}

impl std::fmt::Display for OutputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nodes['{}'].outputs.{}", self.node, self.name)
    }
}

/// The text a template renders where an output goes.
pub fn placeholder(node: &str, name: &str, secret: bool) -> String {
    let open = if secret { SECRET_OPEN } else { OPEN };
    format!("{open}{node}/{name}{CLOSE}")
}

/// The outputs whose placeholders appear in `text`, in order of appearance.
pub fn referenced(text: &str) -> Vec<OutputRef> {
    let mut out = Vec::new();
    for (open, secret) in [(OPEN, false), (SECRET_OPEN, true)] {
        let mut rest = text;
        while let Some(start) = rest.find(open) {
            let after = &rest[start + open.len()..];
            let Some(end) = after.find(CLOSE) else { break };
            if let Some((node, name)) = after[..end].rsplit_once('/') {
                let r = OutputRef {
                    node: node.to_string(),
                    name: name.to_string(),
                    secret,
                };
                if !out.contains(&r) {
                    out.push(r);
                }
            }
            rest = &after[end + CLOSE.len()..];
        }
    }
    out
}

/// The value a `register` takes from a task's stdout.
pub fn capture(how: &Capture, stdout: &str) -> Result<String, String> {
    match how {
        Capture::Stdout => Ok(stdout.trim().to_string()),
        Capture::Line(n) => {
            let lines: Vec<&str> = stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let index = if *n > 0 {
                usize::try_from(*n - 1).ok()
            } else {
                usize::try_from(n.unsigned_abs())
                    .ok()
                    .and_then(|back| lines.len().checked_sub(back))
            };
            index
                .and_then(|i| lines.get(i))
                .map(|l| l.to_string())
                .ok_or_else(|| format!("it printed {} non-empty lines, so there is no line {n}", lines.len()))
        }
        Capture::Json(path) => {
            let doc: serde_json::Value =
                serde_json::from_str(stdout.trim()).map_err(|e| format!("its stdout is not JSON ({e})"))?;
            let mut at = &doc;
            for part in path.split('.').filter(|p| !p.is_empty()) {
                let next = match at {
                    serde_json::Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
                    other => other.get(part),
                };
                at = next.ok_or_else(|| format!("its JSON has nothing at `{path}` (no `{part}`)"))?;
            }
            Ok(match at {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        }
    }
}

/// The outputs known during a run: kept in memory, secret ones nowhere else.
#[derive(Debug, Default)]
pub struct Store {
    values: BTreeMap<(String, String), Secret>,
}

/// Words shorter than this in a secret output are not masked on their own (they would mask ordinary text).
const MASK_WORD_MIN: usize = 12;

/// Masks a secret output from now on, whole and by each of its long words (a join command's token shows up
/// alone in messages).
pub fn mask(vault: &mut Vault, value: &Secret) {
    for word in value.expose().split_whitespace().filter(|w| w.len() >= MASK_WORD_MIN) {
        vault.add_mask(Secret::new(word));
    }
    vault.add_mask(value.clone());
}

impl Store {
    /// Records an output (masking a secret one is the fan-out's, see [`mask`]).
    pub fn insert(&mut self, node: &str, name: &str, value: String) {
        self.values
            .insert((node.to_string(), name.to_string()), Secret::new(value));
    }

    /// True when this output has a value in this run.
    pub fn has(&self, node: &str, name: &str) -> bool {
        self.values.contains_key(&(node.to_string(), name.to_string()))
    }

    /// Puts the values where placeholders stand; the first output that has no value yet is the error.
    pub fn fill(&self, text: &str) -> Result<String, OutputRef> {
        let mut out = text.to_string();
        for r in referenced(text) {
            let Some(v) = self.values.get(&(r.node.clone(), r.name.clone())) else {
                return Err(r);
            };
            out = out.replace(&placeholder(&r.node, &r.name, r.secret), v.expose());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_again_with_their_node_and_name() {
        let text = format!(
            "a {} b {}",
            placeholder("node-1.lab", "token", true),
            placeholder("n2", "hash", false)
        );
        let refs = referenced(&text);
        assert_eq!(refs.len(), 2);
        assert!(refs.contains(&OutputRef {
            node: "node-1.lab".into(),
            name: "token".into(),
            secret: true
        }));
        // A secret output looks like a secret to every check, but is no inventory secret.
        assert!(text.contains("@@kubeboot-secret:"));
        assert!(crate::secrets::referenced(&text).is_empty());
    }

    #[test]
    fn capture_takes_stdout_a_line_or_a_json_value() {
        let out = "[upload-certs] Using certificate key:\n\n  abc123  \n";
        assert_eq!(capture(&Capture::Line(-1), out).unwrap(), "abc123");
        assert_eq!(
            capture(&Capture::Line(1), out).unwrap(),
            "[upload-certs] Using certificate key:"
        );
        assert!(capture(&Capture::Line(3), out).is_err());
        assert!(capture(&Capture::Line(-3), out).is_err());
        assert_eq!(capture(&Capture::Stdout, " x\n").unwrap(), "x");
        let json = r#"{"status": {"tokens": ["t0", {"id": 7}]}}"#;
        assert_eq!(capture(&Capture::Json("status.tokens.0".into()), json).unwrap(), "t0");
        assert_eq!(capture(&Capture::Json("status.tokens.1.id".into()), json).unwrap(), "7");
        assert!(capture(&Capture::Json("status.nope".into()), json).is_err());
        assert!(capture(&Capture::Json("a".into()), "not json").is_err());
    }

    #[test]
    fn the_store_fills_known_outputs_and_masks_secret_ones_and_their_words() {
        let mut store = Store::default();
        store.insert(
            "cp1",
            "join",
            "kubeadm join 10.0.0.5:6443 --token abcdef.0123456789abcdef".into(),
        );
        store.insert("cp1", "plain", "hello".into());
        let text = format!(
            "{} {}",
            placeholder("cp1", "plain", false),
            placeholder("cp1", "join", true)
        );
        assert_eq!(
            store.fill(&text).unwrap(),
            "hello kubeadm join 10.0.0.5:6443 --token abcdef.0123456789abcdef"
        );
        assert_eq!(store.fill(&placeholder("cp2", "x", false)).unwrap_err().node, "cp2");
        let mut vault = Vault::default();
        mask(
            &mut vault,
            &Secret::new("kubeadm join 10.0.0.5:6443 --token abcdef.0123456789abcdef"),
        );
        assert_eq!(
            vault.redact("token abcdef.0123456789abcdef expired; hello"),
            "token **** expired; hello"
        );
    }
}
