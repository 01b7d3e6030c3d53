//! Values that remember where they were written, and a reader that turns them into typed fields while
//! collecting every problem at its own file:line:col.
//!
//! Playbook loading and each task kind's own keys (see [`crate::task`]) read YAML through [`Reader`], so a
//! kind parses its keys in its own file with the same messages as every other key.

pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diag::{Diagnostic, Diagnostics, closest};
pub use yaml::{Node, Yaml, pos};

/// A place in a file, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

/// Where each templated field's value starts (`run`, `copy.dest`, `env.NAME`, ...), by field name.
pub type Fields = BTreeMap<String, Location>;

/// A mapping's entries by key text, in file order.
pub(crate) type Entries<'n> = Vec<(String, &'n Node, &'n Node)>;

/// Reads one YAML file's values into typed fields; every problem goes to `diags` and reading goes on.
pub struct Reader<'a> {
    pub file: &'a Path,
    /// Where `copy.src` paths resolve.
    pub assets_dir: &'a Path,
    pub diags: &'a mut Diagnostics,
}

impl Reader<'_> {
    pub fn loc(&self, n: &Node) -> Location {
        let (line, column) = pos(n);
        Location {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    pub fn error(&mut self, n: &Node, message: impl Into<String>, hint: impl Into<String>) {
        let (line, column) = pos(n);
        self.diags
            .push(Diagnostic::at(self.file, line, column, message).with_hint(hint));
    }

    /// The entries of a mapping, with unknown keys reported (did you mean).
    pub fn mapping<'n>(&mut self, n: &'n Node, allowed: &[&str], what: &str) -> Option<Entries<'n>> {
        let Yaml::Map(entries) = &n.value else {
            self.error(
                n,
                format!("{what} must be a mapping (`key: value` lines), not {}", n.value.kind()),
                "see the playbook format in the README",
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let key = k.value.scalar_text().unwrap_or_default();
            if !allowed.contains(&key.as_str()) {
                let hint = match closest(&key, allowed.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("known keys in {what}: {}", allowed.join(", ")),
                };
                self.error(k, format!("unknown key `{key}` in {what}"), hint);
                continue;
            }
            out.push((key, k, v));
        }
        Some(out)
    }

    pub fn string(&mut self, key: &str, v: &Node) -> Option<String> {
        match &v.value {
            Yaml::Str(s) => Some(s.clone()),
            // `run: 42` or `dest: 1.0` are plainly meant as text.
            Yaml::Int(_) | Yaml::Float(_) | Yaml::Bool(_) => v.value.scalar_text(),
            other => {
                let kind = other.kind();
                self.error(v, format!("`{key}` must be a string, not {kind}"), "quote the value");
                None
            }
        }
    }

    /// A text field remembered under `field` in `fields`, for template messages.
    pub fn field(&mut self, field: &str, key: &str, v: &Node, fields: &mut Fields) -> Option<String> {
        fields.insert(field.to_string(), self.loc(v));
        self.string(key, v)
    }

    /// One text or a list of texts.
    pub fn texts(&mut self, key: &str, v: &Node) -> Vec<String> {
        match &v.value {
            Yaml::Seq(items) => items.iter().filter_map(|n| self.string(key, n)).collect(),
            _ => self.string(key, v).into_iter().collect(),
        }
    }

    pub fn boolean(&mut self, key: &str, v: &Node) -> Option<bool> {
        match &v.value {
            Yaml::Bool(b) => Some(*b),
            other => {
                let kind = other.kind();
                self.error(
                    v,
                    format!("`{key}` must be true or false, not {kind}"),
                    "write true or false",
                );
                None
            }
        }
    }

    pub fn count(&mut self, key: &str, v: &Node) -> Option<u32> {
        match &v.value {
            Yaml::Int(i) if (0..=1000).contains(i) => u32::try_from(*i).ok(),
            _ => {
                self.error(
                    v,
                    format!("`{key}` must be a whole number from 0 to 1000"),
                    "e.g. `retries: 3`",
                );
                None
            }
        }
    }

    pub fn duration(&mut self, key: &str, v: &Node) -> Option<Duration> {
        let Yaml::Str(s) = &v.value else {
            self.error(
                v,
                format!("`{key}` must be a duration like \"10s\" or \"5m\""),
                "durations need a unit: 10s, 5m, 1h",
            );
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    v,
                    format!("`{key}` is not a duration: {e}"),
                    "write durations like \"10s\", \"5m\" or \"1h 30m\"",
                );
                None
            }
        }
    }
}

/// True when the mapping has an unknown key that looks like one of `wanted` (already reported as a typo,
/// so "missing key" would only repeat it).
pub(crate) fn misspelled(n: &Node, wanted: &[&str]) -> bool {
    let Yaml::Map(entries) = &n.value else { return false };
    entries.iter().any(|(k, _)| {
        let key = k.value.scalar_text().unwrap_or_default();
        !wanted.contains(&key.as_str()) && closest(&key, wanted.iter().copied()).is_some()
    })
}
