//! The YAML front end: a YAML document as the tree of [`Node`]s that each remember their line and column.
//!
//! Playbooks are read into this tree first (not straight into structs) so that validation can report every
//! unknown key, wrong type and semantic problem at its own position, all in one pass.

use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{Node, Value};
use crate::diag::Diagnostic;

/// Playbook files larger than this are refused before parsing.
pub(crate) const MAX_FILE_BYTES: usize = 1024 * 1024;

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        let spanned = serde_saphyr::Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            value: spanned.value,
            line: spanned.referenced.line() as usize,
            column: spanned.referenced.column() as usize,
        })
    }
}

struct YamlVisitor;

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(YamlVisitor)
    }
}

/// Parses one YAML document safely: duplicate keys, alias bombs and oversized input are errors.
pub(crate) fn parse(file: &Path, text: &str) -> Result<Node, Diagnostic> {
    if text.len() > MAX_FILE_BYTES {
        return Err(
            Diagnostic::file(file, format!("the file is larger than {} KiB", MAX_FILE_BYTES / 1024))
                .with_hint("split the playbook into smaller stages, or move large content into assets/"),
        );
    }
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    // `mode: 0644` stays the text "0644" so it is read as octal, the way operators mean it.
    options.leading_zero_numbers_as_strings = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_aliases = 100;
    budget.max_anchors = 100;
    budget.max_nodes = 100_000;
    budget.max_depth = 64;
    budget.max_total_scalar_bytes = 4 * MAX_FILE_BYTES;
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 10_000;
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((1, 1));
        let msg = e.to_string();
        let hint = if msg.contains("duplicate mapping key") {
            "each key may appear only once in a mapping"
        } else if msg.contains("budget") || msg.contains("alias") || msg.contains("limit") {
            "too many aliases or nodes: write the values out instead of expanding anchors"
        } else {
            "check the YAML syntax at this position (indentation, quotes, `key: value`)"
        };
        Diagnostic::at(
            file,
            line,
            column,
            format!("YAML error: {}", clean_message(&e.to_string())),
        )
        .with_hint(hint)
    })
}

/// serde-saphyr's message without its own location suffix (the diagnostic carries the position).
fn clean_message(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    let first = first.split(", set DuplicateKeyPolicy").next().unwrap_or(first);
    match first.find(" at line ") {
        Some(i) => first[..i].trim_end_matches(',').to_string(),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spanned::pos;

    #[test]
    fn values_remember_their_positions() {
        let n = parse(
            Path::new("x.yaml"),
            "name: a\ntasks:\n  - run: |\n      echo hi\n    x: 0644\n",
        )
        .unwrap();
        let Value::Map(entries) = &n.value else { panic!() };
        assert_eq!(pos(&entries[1].0), (2, 1));
        let Value::Seq(tasks) = &entries[1].1.value else {
            panic!()
        };
        let Value::Map(t) = &tasks[0].value else { panic!() };
        assert_eq!(t[1].1.value, Value::Str("0644".into()));
        // A block scalar's position is its first content line, so template lines add to it.
        assert_eq!(pos(&t[0].1), (4, 7));
    }

    #[test]
    fn oversized_files_are_refused_before_parsing() {
        let big = format!("name: x\nvars:\n  blob: \"{}\"\n", "a".repeat(MAX_FILE_BYTES));
        let e = parse(Path::new("x.yaml"), &big).unwrap_err();
        assert!(e.message.contains("larger than 1024 KiB"), "{e}");
    }

    #[test]
    fn duplicate_keys_and_alias_bombs_are_errors() {
        let e = parse(Path::new("x.yaml"), "a: 1\na: 2\n").unwrap_err();
        eprintln!("{e}");
        assert_eq!(e.line, 2);
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n";
        let e = parse(Path::new("x.yaml"), bomb).unwrap_err();
        eprintln!("{e}");
        let e = parse(Path::new("x.yaml"), "a: [1,\n").unwrap_err();
        eprintln!("{e}");
    }
}
