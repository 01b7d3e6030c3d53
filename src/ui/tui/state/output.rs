//! A node's output pane: the last lines it printed, numbered for scrolling, and made safe to draw.

use std::collections::VecDeque;

/// Output lines kept per node; older lines are dropped so memory stays bounded whatever a command prints.
pub const OUTPUT_LINES_PER_NODE: usize = 2_000;
/// Characters kept of one output line (a minified JSON blob must not cost megabytes).
pub const MAX_LINE_CHARS: usize = 1_000;

/// Where an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
    /// A line kubeboot added (task started, retrying, failed).
    Note,
}

/// One line of a node's output pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// Where it came from.
    pub kind: LineKind,
    /// The text, cleaned of terminal escapes and control characters.
    pub text: String,
}

/// A ring buffer of the last lines a node printed, numbered so a scroll position survives dropped lines.
#[derive(Debug, Clone, Default)]
pub struct OutputBuffer {
    lines: VecDeque<OutputLine>,
    pushed: u64,
}

impl OutputBuffer {
    /// Adds a line, dropping the oldest beyond [`OUTPUT_LINES_PER_NODE`].
    pub fn push(&mut self, kind: LineKind, text: &str) {
        if self.lines.len() >= OUTPUT_LINES_PER_NODE {
            self.lines.pop_front();
        }
        self.lines.push_back(OutputLine {
            kind,
            text: sanitize(text),
        });
        self.pushed += 1;
    }

    /// Lines held now.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when nothing was printed yet.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Sequence number of the oldest line held.
    pub fn first_seq(&self) -> u64 {
        self.pushed - self.lines.len() as u64
    }

    /// Sequence number the next line will get (= lines ever pushed).
    pub fn end_seq(&self) -> u64 {
        self.pushed
    }

    /// Up to `count` lines starting at sequence number `from` (clamped to what is held).
    pub fn window(&self, from: u64, count: usize) -> impl Iterator<Item = &OutputLine> {
        let start = from.saturating_sub(self.first_seq()) as usize;
        self.lines.iter().skip(start).take(count)
    }

    /// The last `count` lines' text.
    pub fn tail(&self, count: usize) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(count);
        self.lines.iter().skip(skip).map(|l| l.text.clone()).collect()
    }
}

/// Makes a remote line safe to draw: keeps what a terminal would show after carriage returns, drops escape
/// sequences and control characters, expands tabs and caps the length.
pub fn sanitize(line: &str) -> String {
    let line = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(line.len().min(MAX_LINE_CHARS));
    let mut count = 0;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if count >= MAX_LINE_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters then one final byte in @..~
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: ends with BEL or ESC \
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => {
                let spaces = 4 - count % 4;
                out.extend(std::iter::repeat_n(' ', spaces));
                count += spaces;
            }
            c if c.is_control() => {}
            c => {
                out.push(c);
                count += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_buffer_keeps_only_the_newest_lines() {
        let mut buffer = OutputBuffer::default();
        for i in 0..OUTPUT_LINES_PER_NODE + 10 {
            buffer.push(LineKind::Stdout, &format!("line {i}"));
        }
        assert_eq!(buffer.len(), OUTPUT_LINES_PER_NODE);
        assert_eq!(buffer.first_seq(), 10);
        assert_eq!(buffer.window(10, 1).next().map(|l| l.text.as_str()), Some("line 10"));
        assert_eq!(buffer.tail(1), vec![format!("line {}", OUTPUT_LINES_PER_NODE + 9)]);
    }

    #[test]
    fn sanitize_drops_escapes_and_keeps_what_follows_a_carriage_return() {
        assert_eq!(sanitize("\u{1b}[31mred\u{1b}[0m text"), "red text");
        assert_eq!(sanitize(" 10%\r 50%\r100%"), "100%");
        assert_eq!(sanitize("done\r"), "done");
        assert_eq!(sanitize("a\tb\u{7}"), "a   b");
        assert_eq!(sanitize("\u{1b}]0;title\u{7}ok"), "ok");
        assert_eq!(sanitize(&"x".repeat(5000)).chars().count(), MAX_LINE_CHARS + 1);
    }
}
