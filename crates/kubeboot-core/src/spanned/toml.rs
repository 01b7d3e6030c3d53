//! The TOML front end: toml's spanned document turned into the same tree of [`Node`]s the YAML front end
//! makes, each byte span turned into the line and column it starts at, so the inventory is read by the
//! same [`super::Reader`] as the playbooks.
//!
//! What only TOML has stays here: datetimes become [`Value::Datetime`] (their text), integers keep
//! their radix (`0x1F`) and digit separators (`1_000`) out of the tree, and a table's entries come in
//! the order they are written (a `[nodes.vars]` header far below its node included).

use std::path::Path;

use ::toml::Spanned;
use ::toml::de::{DeTable, DeValue};

use super::{Node, Value};
use crate::diag::{Diagnostic, Diagnostics};

/// Parses one TOML document; syntax errors are all reported, each at its own position.
pub fn parse(file: &Path, text: &str) -> Result<Node, Diagnostics> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let mut diags = Diagnostics::default();
        for e in errors {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            diags.push(
                Diagnostic::at_offset(file, text, offset, format!("TOML syntax error: {}", e.message().trim()))
                    .with_hint("see https://toml.io for the syntax"),
            );
        }
        return Err(diags);
    }
    let lines = Lines::new(text);
    // The document itself is "at" its first byte: problems of the whole file point there.
    let (line, column) = lines.line_col(0);
    Ok(Node {
        value: table(&lines, doc.get_ref()),
        line,
        column,
    })
}

fn node(lines: &Lines<'_>, v: &Spanned<DeValue<'_>>) -> Node {
    let (line, column) = lines.line_col(v.span().start);
    let value = match v.get_ref() {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            // TOML integers are 64-bit; one beyond that is held at the nearest end, so it is out of
            // every range a key allows.
            let saturated = if digits.starts_with('-') { i64::MIN } else { i64::MAX };
            Value::Int(i64::from_str_radix(&digits, i.radix()).unwrap_or(saturated))
        }
        DeValue::Float(f) => Value::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(items) => Value::Seq(items.iter().map(|v| node(lines, v)).collect()),
        DeValue::Table(t) => table(lines, t),
    };
    Node { value, line, column }
}

/// A table's entries in the order their keys appear in the file.
fn table(lines: &Lines<'_>, t: &DeTable<'_>) -> Value {
    let mut entries: Vec<_> = t.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| {
                let (line, column) = lines.line_col(k.span().start);
                let key = Node {
                    value: Value::Str(k.get_ref().to_string()),
                    line,
                    column,
                };
                (key, node(lines, v))
            })
            .collect(),
    )
}

/// Where each line starts, so a byte offset becomes a line and column without rescanning the text
/// (the same numbers as [`crate::diag::line_col`]).
struct Lines<'a> {
    text: &'a str,
    newlines: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let newlines = text.match_indices('\n').map(|(i, _)| i).collect();
        Lines { text, newlines }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.newlines.partition_point(|&i| i < offset);
        let start = if before == 0 { 0 } else { self.newlines[before - 1] + 1 };
        let column = self.text.get(start..offset).map_or(0, |s| s.chars().count()) + 1;
        (before + 1, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::line_col;
    use crate::spanned::pos;

    #[test]
    fn values_remember_their_line_and_column() {
        let text = "a = 1\n[t]\n  \"é\" = \"x\"\nb = 0x1F\n[[n]]\nc = 1979-05-27\n";
        let doc = parse(Path::new("x.toml"), text).unwrap();
        assert_eq!(pos(&doc), (1, 1));
        let (k, v) = doc.get("t").and_then(|t| t.entry("é")).unwrap();
        assert_eq!((pos(k), pos(v)), ((3, 3), (3, 9)));
        assert_eq!(doc.get("t").and_then(|t| t.get("b")).unwrap().value, Value::Int(31));
        let Value::Seq(items) = &doc.get("n").unwrap().value else {
            panic!()
        };
        assert_eq!(items[0].get("c").unwrap().value, Value::Datetime("1979-05-27".into()));
    }

    #[test]
    fn lines_agree_with_diag_line_col() {
        let text = "a = 1\r\nbé = \"ü\"\n\nc = [\n  1,\n]";
        let lines = Lines::new(text);
        for (offset, _) in text.char_indices().chain([(text.len(), ' ')]) {
            assert_eq!(lines.line_col(offset), line_col(text, offset), "at {offset}");
        }
    }

    #[test]
    fn syntax_errors_are_all_reported() {
        let e = parse(Path::new("x.toml"), "a = \n[[nodes]\n").unwrap_err();
        assert!(e.to_string().contains("x.toml:2:9: error: TOML syntax error"), "{e}");
    }
}
