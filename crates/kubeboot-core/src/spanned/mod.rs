//! Values that remember where they were written, and the one reader that turns them into typed fields
//! while collecting every problem at its own file:line:col.
//!
//! Both file formats are read into the same [`Node`] tree: playbooks through the YAML front end
//! ([`yaml`]), the inventory through the TOML front end ([`toml`], byte spans turned into line and
//! column). Playbook loading, each task kind's own keys (see [`crate::task`]) and inventory loading then
//! read that tree through [`Reader`], so unknown keys, wrong types, durations and ports get the same
//! checks everywhere; only the words of a message follow the file's format ([`Syntax`]).

pub mod toml;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;

use crate::diag::{Diagnostic, Diagnostics, closest};

/// A value with where it starts (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: usize,
    pub column: usize,
}

/// One value of either format; mapping entries keep their file order and their keys' positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// TOML only: a date, time or both, as written.
    Datetime(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// The kind of value in YAML's words, for "must be X, not Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "empty",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Datetime(_) => "a datetime",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar as text (mapping keys, and values where a string is expected but YAML guessed a number).
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The value as a template variable.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
            Value::Str(s) | Value::Datetime(s) => Json::String(s.clone()),
            Value::Seq(items) => Json::Array(items.iter().map(|n| n.value.to_json()).collect()),
            Value::Map(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.value.scalar_text().unwrap_or_default(), v.value.to_json()))
                    .collect(),
            ),
        }
    }
}

impl Node {
    /// The value under `key` of a mapping, with its key.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        let Value::Map(entries) = &self.value else { return None };
        entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map(|(k, v)| (k, v))
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// A mapping's entries by key text, in file order (none for other values).
    pub fn entries(&self) -> Entries<'_> {
        let Value::Map(entries) = &self.value else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|(k, v)| (k.value.scalar_text().unwrap_or_default(), k, v))
            .collect()
    }
}

/// 1-based (line, column) of a node.
pub fn pos(n: &Node) -> (usize, usize) {
    (n.line, n.column)
}

/// The format a tree was read from: the words of a message follow it (`not a string` and `quote the
/// value` for YAML, `not string` and `quote it: key = "..."` for TOML, as each was first written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Yaml,
    Toml,
}

impl Syntax {
    /// The kind of value, for "must be X, not Y" messages.
    pub fn kind(self, v: &Value) -> &'static str {
        match self {
            Syntax::Yaml => v.kind(),
            Syntax::Toml => match v {
                Value::Str(_) => "string",
                Value::Int(_) => "integer",
                Value::Float(_) => "float",
                Value::Bool(_) => "boolean",
                Value::Datetime(_) => "datetime",
                Value::Seq(_) => "array",
                Value::Map(_) => "table",
                Value::Null => "empty",
            },
        }
    }
}

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

/// Reads one file's values into typed fields; every problem goes to `diags` and reading goes on.
pub struct Reader<'a> {
    pub file: &'a Path,
    /// Where relative paths resolve: `assets/` for a playbook's `copy.src`, the inventory's folder for
    /// the inventory's paths.
    pub base: &'a Path,
    pub diags: &'a mut Diagnostics,
    pub syntax: Syntax,
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
        let Value::Map(entries) = &n.value else {
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
                self.unknown_key(k, &key, allowed, what);
                continue;
            }
            out.push((key, k, v));
        }
        Some(out)
    }

    /// Reports the keys of a mapping that are not in `allowed` (did you mean), except those in `also`
    /// (keys read elsewhere with a message of their own).
    pub fn check_keys(&mut self, n: &Node, allowed: &[&str], also: &[&str], what: &str) {
        for (key, k, _) in n.entries() {
            if !allowed.contains(&key.as_str()) && !also.contains(&key.as_str()) {
                self.unknown_key(k, &key, allowed, what);
            }
        }
    }

    fn unknown_key(&mut self, k: &Node, key: &str, allowed: &[&str], what: &str) {
        let hint = match closest(key, allowed.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!("known keys in {what}: {}", allowed.join(", ")),
        };
        self.error(k, format!("unknown key `{key}` in {what}"), hint);
    }

    /// The kind of a value in the words of this file's format.
    pub fn kind(&self, v: &Node) -> &'static str {
        self.syntax.kind(&v.value)
    }

    /// "`key` must be EXPECTED, not KIND", with the format's way of writing it right.
    pub fn wrong_type(&mut self, key: &str, v: &Node, expected: &str) {
        let hint = match (self.syntax, expected) {
            (Syntax::Yaml, "a string") => "quote the value".to_string(),
            (Syntax::Yaml, "true or false") => "write true or false".to_string(),
            (Syntax::Yaml, _) => "see the playbook format in the README".to_string(),
            (Syntax::Toml, "a string") => format!("quote it: {key} = \"...\""),
            (Syntax::Toml, "an integer") => "write the number without quotes".to_string(),
            (Syntax::Toml, "true or false") => "write true or false without quotes".to_string(),
            (Syntax::Toml, _) => format!("write it as a [{key}] table"),
        };
        let kind = self.kind(v);
        self.error(v, format!("`{key}` must be {expected}, not {kind}"), hint);
    }

    pub fn string(&mut self, key: &str, v: &Node) -> Option<String> {
        match &v.value {
            Value::Str(s) => Some(s.clone()),
            // `run: 42` or `dest: 1.0` are plainly meant as text; TOML's quotes leave no such doubt.
            Value::Int(_) | Value::Float(_) | Value::Bool(_) if self.syntax == Syntax::Yaml => v.value.scalar_text(),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    /// The string under `key` of a mapping, and its node (for messages about its content).
    pub fn string_in<'n>(&mut self, map: &'n Node, key: &str) -> Option<(String, &'n Node)> {
        let v = map.get(key)?;
        self.string(key, v).map(|s| (s, v))
    }

    /// The boolean under `key` of a mapping.
    pub fn boolean_in(&mut self, map: &Node, key: &str) -> Option<bool> {
        self.boolean(key, map.get(key)?)
    }

    /// The duration under `key` of a mapping.
    pub fn duration_in(&mut self, map: &Node, key: &str) -> Option<Duration> {
        self.duration(key, map.get(key)?)
    }

    /// The TCP port number (1 to 65535) under `key` of a mapping.
    pub fn port_in(&mut self, map: &Node, key: &str, hint: &str) -> Option<u16> {
        let v = map.get(key)?;
        let Value::Int(i) = v.value else {
            self.wrong_type(key, v, "an integer");
            return None;
        };
        match u16::try_from(i) {
            Ok(p) if p >= 1 => Some(p),
            _ => {
                self.error(v, format!("`{key}` must be between 1 and 65535"), hint);
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
            Value::Seq(items) => items.iter().filter_map(|n| self.string(key, n)).collect(),
            _ => self.string(key, v).into_iter().collect(),
        }
    }

    pub fn boolean(&mut self, key: &str, v: &Node) -> Option<bool> {
        match &v.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(key, v, "true or false");
                None
            }
        }
    }

    pub fn count(&mut self, key: &str, v: &Node) -> Option<u32> {
        match &v.value {
            Value::Int(i) if (0..=1000).contains(i) => u32::try_from(*i).ok(),
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
        let Value::Str(s) = &v.value else {
            match self.syntax {
                Syntax::Yaml => self.error(
                    v,
                    format!("`{key}` must be a duration like \"10s\" or \"5m\""),
                    "durations need a unit: 10s, 5m, 1h",
                ),
                Syntax::Toml => self.wrong_type(key, v, "a string"),
            }
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                // Each format's examples are the values its files usually hold.
                let hint = match self.syntax {
                    Syntax::Yaml => "write durations like \"10s\", \"5m\" or \"1h 30m\"",
                    Syntax::Toml => "write durations like \"15s\", \"2m\" or \"1h 30m\"",
                };
                self.error(v, format!("`{key}` is not a duration: {e}"), hint);
                None
            }
        }
    }
}

/// True when the mapping has an unknown key that looks like one of `wanted` (already reported as a typo,
/// so "missing key" would only repeat it).
pub(crate) fn misspelled(n: &Node, wanted: &[&str]) -> bool {
    let Value::Map(entries) = &n.value else { return false };
    entries.iter().any(|(k, _)| {
        let key = k.value.scalar_text().unwrap_or_default();
        !wanted.contains(&key.as_str()) && closest(&key, wanted.iter().copied()).is_some()
    })
}
