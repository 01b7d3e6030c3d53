//! Secrets: where they come from, the placeholders the plan carries instead of them,
//! and the one redaction every output path goes through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const OPEN: &str = "@@kubeboot-secret:";
const CLOSE: &str = "@@";

/// The text a rendered template holds where a secret goes; the engine swaps in the
/// value only when it sends the command, so plans, fingerprints and logs never hold it.
pub fn placeholder(name: &str) -> String {
    format!("{OPEN}{name}{CLOSE}")
}

/// Where a secret comes from. The value itself is never stored in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The named environment variable.
    Env(String),
    /// The first line of this file (path resolved relative to the inventory).
    File(PathBuf),
}

/// A node's login and sudo secrets, read before the run starts.
#[derive(Debug, Clone, Default)]
pub struct NodeSecrets {
    pub password: Option<Secret>,
    pub sudo_password: Option<Secret>,
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

    /// The keyed digest of every named secret, for the plan's resume decisions.
    pub fn digests(&self, key: &DigestKey) -> Digests {
        Digests(
            self.named
                .iter()
                .map(|(name, value)| (name.clone(), key.digest(name, value)))
                .collect(),
        )
    }
}

/// The random key that makes secret digests unguessable offline: without it, a digest in the journal says
/// nothing about the value (a plain sha256 of a short password could be brute-forced; an HMAC cannot).
/// Kept 0600 in the state dir, made on first use.
#[derive(Clone)]
pub struct DigestKey([u8; 32]);

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(****)")
    }
}

impl DigestKey {
    /// A new random key.
    pub fn random() -> DigestKey {
        DigestKey(rand::random())
    }

    /// The key from its stored bytes; None unless exactly 32.
    pub fn from_bytes(bytes: &[u8]) -> Option<DigestKey> {
        bytes.try_into().ok().map(DigestKey)
    }

    /// The bytes to store.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// HMAC-SHA256 over the secret's name and value (length-prefixed), hex.
    fn digest(&self, name: &str, value: &Secret) -> String {
        // An HMAC key may have any length: `new_from_slice` cannot fail for HMAC.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        for part in [
            b"kubeboot-secret-v1".as_slice(),
            name.as_bytes(),
            value.expose().as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Keyed digests (HMAC-SHA256) of the named secrets of a run, by name: what the plan puts into the resume
/// identity of a task that uses secrets, so a rotated secret runs its tasks again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests(BTreeMap<String, String>);

impl Digests {
    /// No secret known (plans that are only shown, or tests).
    pub fn none() -> Digests {
        Digests::default()
    }

    /// One digest for the secrets a task uses (sorted names, each with its HMAC); None when the task uses none
    /// or one of them is not known in this run (see [`Digests::knows_all`]).
    pub fn of(&self, names: &[String]) -> Option<String> {
        if names.is_empty() {
            return None;
        }
        let mut names: Vec<&String> = names.iter().collect();
        names.sort();
        names.dedup();
        let mut h = Sha256::new();
        for name in names {
            let mac = self.0.get(name)?;
            for part in [name.as_bytes(), mac.as_bytes()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
        Some(hex::encode(h.finalize()))
    }

    /// True when every one of these secrets has a digest in this run.
    pub fn knows_all(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.0.contains_key(n))
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
    fn secret_digests_are_keyed_and_follow_the_value() {
        let key = DigestKey::random();
        let mut v = Vault::default();
        v.insert("pw", Secret::new("hunter2"));
        let one = v.digests(&key).of(&["pw".to_string()]).unwrap();
        // Same key, same value: same digest; another value or another key: another one.
        assert_eq!(v.digests(&key).of(&["pw".to_string()]), Some(one.clone()));
        v.insert("pw", Secret::new("hunter3"));
        assert_ne!(v.digests(&key).of(&["pw".to_string()]), Some(one.clone()));
        v.insert("pw", Secret::new("hunter2"));
        assert_ne!(
            v.digests(&DigestKey::random()).of(&["pw".to_string()]),
            Some(one.clone())
        );
        // Never the plain hash of the value.
        assert_ne!(one, hex::encode(Sha256::digest(b"hunter2")));
        assert_eq!(v.digests(&key).of(&[]), None);
        assert_eq!(v.digests(&key).of(&["unknown".to_string()]), None);
    }

    #[test]
    fn debug_never_shows_the_value() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(****)");
    }
}
