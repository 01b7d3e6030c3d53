//! Errors in the operator's input (inventory, playbooks, assets, command line),
//! each pointing at the file, line and column to fix.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in the operator's input, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in, as the operator named it.
    pub file: PathBuf,
    /// 1-based line; 1 for problems about the file as a whole.
    pub line: usize,
    /// 1-based column; 1 for problems about the file as a whole or a whole line.
    pub column: usize,
    /// What is wrong, in one sentence.
    pub message: String,
    /// What to do about it (a "did you mean", the expected form, the flag to use).
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at a known place.
    pub fn at(file: impl AsRef<Path>, line: usize, column: usize, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.as_ref().to_path_buf(),
            line: line.max(1),
            column: column.max(1),
            message: message.into(),
            hint: None,
        }
    }

    /// A problem with a file as a whole (missing, unreadable, empty).
    pub fn file(file: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::at(file, 1, 1, message)
    }

    /// A problem at a byte offset of `source` (converted to line and column).
    pub fn at_offset(file: impl AsRef<Path>, source: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(source, offset);
        Self::at(file, line, column, message)
    }

    /// Adds what the operator should do.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// Every input problem found in one pass: the run stops before anything runs (exit 2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds one problem.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// `Ok(value)` when nothing was found, else all the problems.
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// 1-based line and column (in characters) of a byte offset in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The closest of `candidates` to `word`, for a "did you mean" hint.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// [`did_you_mean`], falling back to a one-edit typo (`rnu` → `run`) that similarity scoring misses on short words.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str> + Clone) -> Option<&'a str> {
    did_you_mean(word, candidates.clone()).or_else(|| {
        candidates
            .into_iter()
            .map(|c| (strsim::damerau_levenshtein(word, c), c))
            .filter(|(d, _)| *d == 1)
            .min_by_key(|(d, _)| *d)
            .map(|(_, c)| c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
    }

    #[test]
    fn did_you_mean_finds_a_close_key() {
        assert_eq!(did_you_mean("adress", ["address", "cluster", "port"]), Some("address"));
        assert_eq!(did_you_mean("zzz", ["address", "cluster"]), None);
    }

    #[test]
    fn closest_also_catches_short_transpositions() {
        assert_eq!(closest("rnu", ["run", "copy", "wait"]), Some("run"));
        assert_eq!(closest("zzz", ["run", "copy"]), None);
    }

    #[test]
    fn diagnostic_prints_file_line_column_and_hint() {
        let d = Diagnostic::at("inventory.toml", 3, 5, "unknown key `adress`").with_hint("did you mean `address`?");
        assert_eq!(
            d.to_string(),
            "inventory.toml:3:5: error: unknown key `adress`\n  hint: did you mean `address`?"
        );
    }
}
