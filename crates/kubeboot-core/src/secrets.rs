//! Secrets: where they come from, the placeholders the plan carries instead of them,
//! and the one redaction every output path goes through.

use std::collections::BTreeMap;
use std::path::Path;

use crate::inventory::model::SecretSource;

const OPEN: &str = "@@kubeboot-secret:";
const CLOSE: &str = "@@";

/// The text a rendered template holds where a secret goes; the engine swaps in the
/// value only when it sends the command, so plans, fingerprints and logs never hold it.
pub fn placeholder(name: &str) -> String {
    format!("{OPEN}{name}{CLOSE}")
}

/// A secret value; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the few places that must send it (SSH auth, sudo's stdin).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set (export it before running kubeboot)")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("secret file {0} is empty")]
    Empty(String),
}

/// Reads a secret from its source: the variable's value, or the file's first line.
pub fn read(source: &SecretSource) -> Result<Secret, SecretError> {
    match source {
        SecretSource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret(v)),
            _ => Err(SecretError::EnvMissing(var.clone())),
        },
        SecretSource::File(path) => read_file(path),
    }
}

fn read_file(path: &Path) -> Result<Secret, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
        path: path.display().to_string(),
        source,
    })?;
    let first = text.lines().next().unwrap_or("").trim_end_matches('\r').to_string();
    if first.is_empty() {
        return Err(SecretError::Empty(path.display().to_string()));
    }
    Ok(Secret(first))
}

/// Named secret values, able to fill placeholders and to mask values in any text.
#[derive(Debug, Clone, Default)]
pub struct Vault {
    named: BTreeMap<String, Secret>,
    /// Every value to mask, longest first so a value containing another is masked whole.
    mask: Vec<Secret>,
}

impl Vault {
    /// Adds a named secret (usable as `{{ secrets.NAME }}`) and masks its value.
    pub fn insert(&mut self, name: &str, value: Secret) {
        self.add_mask(value.clone());
        self.named.insert(name.to_string(), value);
    }

    /// Masks a value that has no template name (SSH and sudo passwords).
    pub fn add_mask(&mut self, value: Secret) {
        if value.0.is_empty() || self.mask.contains(&value) {
            return;
        }
        self.mask.push(value);
        self.mask.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    }

    /// Replaces placeholders with the values, for sending to a node. Unknown names stay as they are.
    pub fn fill(&self, text: &str) -> String {
        if !text.contains(OPEN) {
            return text.to_string();
        }
        let mut out = text.to_string();
        for (name, value) in &self.named {
            out = out.replace(&placeholder(name), value.expose());
        }
        out
    }

    /// Replaces every secret value in `text` with `****`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = std::borrow::Cow::Borrowed(text);
        for s in &self.mask {
            if out.contains(s.expose()) {
                out = std::borrow::Cow::Owned(out.replace(s.expose(), "****"));
            }
        }
        out.into_owned()
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.mask.is_empty()
    }
}

/// The inventory secret names whose placeholders appear in `text` (secret outputs, `out:...`, share the
/// placeholder form but are filled by the engine from what a task printed: [`crate::outputs`]).
pub fn referenced(text: &str) -> Vec<String> {
    let mut names = all_referenced(text);
    names.retain(|n| !n.starts_with("out:"));
    names
}

fn all_referenced(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        match after.find(CLOSE) {
            Some(end) => {
                names.push(after[..end].to_string());
                rest = &after[end + CLOSE.len()..];
            }
            None => break,
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_puts_values_where_placeholders_stand() {
        let mut v = Vault::default();
        v.insert("s3_key", Secret::new("AKIA123"));
        assert_eq!(v.fill(&format!("key={}", placeholder("s3_key"))), "key=AKIA123");
    }

    #[test]
    fn redact_masks_every_value_longest_first() {
        let mut v = Vault::default();
        v.add_mask(Secret::new("abc"));
        v.add_mask(Secret::new("abcdef"));
        assert_eq!(v.redact("x abcdef y abc"), "x **** y ****");
    }

    #[test]
    fn referenced_lists_every_placeholder_name() {
        let text = format!("a={} b={} c", placeholder("one"), placeholder("two"));
        assert_eq!(referenced(&text), vec!["one".to_string(), "two".to_string()]);
    }

    #[test]
    fn debug_never_shows_the_value() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(****)");
    }
}
