//! What is sent to a node to run one command, and how its output is cut into lines. Pure: no I/O.
//!
//! The remote command line is always a fixed `sh -s` (under sudo for `become`): the script, its
//! environment and any password travel on stdin, so the node's `ps` never shows them.

/// The longest line handed out; longer ones are split so one runaway line cannot eat memory.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Quotes a value for a POSIX shell: single quotes, with `'` written as `'\''`.
pub(crate) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// True for names a shell accepts in `export NAME=...`.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The text `sh -s` reads: the environment, then the user's script run so that
///
/// - its stdin is `/dev/null` (it cannot swallow the rest of what we send, nor wait on a terminal);
/// - it dies when the client goes away: a watchdog reads our stdin, which we never close while the
///   command should run, and on EOF (cancel, dropped future, lost connection) kills the whole
///   process group sshd (or sudo) made for this command. A channel `signal` alone is not enough:
///   OpenSSH ignores it for commands without a terminal on many versions.
///
/// The script ends with a function call, so the shell has parsed all of it before anything runs.
pub(crate) fn wrap(script: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(script.len() + 512);
    for (name, value) in env {
        out.push_str(&format!("export {name}={}\n", quote(value)));
    }
    out.push_str("__kb_main() {\nexec 3<&0\n(\n");
    out.push_str(script);
    if !script.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(
        ") </dev/null 3<&- &\n\
         __kb_job=$!\n\
         ( while IFS= read -r __kb_l; do :; done; kill -KILL 0 ) <&3 >/dev/null 2>&1 &\n\
         __kb_dog=$!\n\
         exec 3<&-\n\
         wait \"$__kb_job\"\n\
         __kb_rc=$?\n\
         kill \"$__kb_dog\" 2>/dev/null\n\
         exit \"$__kb_rc\"\n\
         }\n\
         __kb_main\n",
    );
    out
}

/// Cuts a byte stream into lines as it arrives: `\n` ends a line, a trailing `\r` is dropped,
/// and a line longer than [`MAX_LINE`] is handed out in pieces.
#[derive(Default)]
pub(crate) struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Adds received bytes and hands out every line they complete.
    pub(crate) fn push(&mut self, data: &[u8], emit: &mut dyn FnMut(String)) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            emit_piecewise(&self.pending[start..end], emit);
            start = end + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE {
            let cut = char_boundary(&self.pending, MAX_LINE);
            emit(String::from_utf8_lossy(&self.pending[..cut]).into_owned());
            self.pending.drain(..cut);
        }
    }

    /// Hands out a last line that had no `\n`.
    pub(crate) fn finish(&mut self, emit: &mut dyn FnMut(String)) {
        if !self.pending.is_empty() {
            emit_piecewise(&std::mem::take(&mut self.pending), emit);
        }
    }
}

fn emit_piecewise(mut line: &[u8], emit: &mut dyn FnMut(String)) {
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    loop {
        if line.len() <= MAX_LINE {
            emit(String::from_utf8_lossy(line).into_owned());
            return;
        }
        let cut = char_boundary(line, MAX_LINE);
        emit(String::from_utf8_lossy(&line[..cut]).into_owned());
        line = &line[cut..];
    }
}

/// The largest cut at or below `max` that does not split a UTF-8 character (when the text is UTF-8).
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    let mut cut = max.min(bytes.len());
    // Continuation bytes look like 0b10xxxxxx; a character is at most 4 bytes long.
    for _ in 0..3 {
        if cut > 0 && cut < bytes.len() && bytes[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
    }
    if cut == 0 { max.min(bytes.len()) } else { cut }
}

/// Test help: `text` parses as a script in dash and in bash as sh (`-n`: nothing runs).
#[cfg(test)]
pub(crate) fn assert_parses_in_dash_and_bash(text: &str) {
    use std::io::Write;
    for shell in ["dash", "bash"] {
        let mut child = std::process::Command::new(shell)
            .arg("-n")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{shell} must be installed (the CI installs dash): {e}"));
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = LineBuffer::default();
        for c in chunks {
            buf.push(c, &mut |l| out.push(l));
        }
        buf.finish(&mut |l| out.push(l));
        out
    }

    #[test]
    fn lines_split_across_chunks_are_joined() {
        assert_eq!(lines(&[b"hel", b"lo\nwor", b"ld\n"]), ["hello", "world"]);
    }

    #[test]
    fn a_final_line_without_newline_is_kept_and_carriage_returns_dropped() {
        assert_eq!(lines(&[b"a\r\nb\r\n\nlast"]), ["a", "b", "", "last"]);
    }

    #[test]
    fn very_long_lines_are_split_at_64_kib() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let out = lines(&[&long]);
        assert_eq!(out.iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 5]);
    }

    #[test]
    fn long_lines_are_not_split_inside_a_character() {
        let mut long = vec![b'x'; MAX_LINE - 1];
        long.extend_from_slice("é\n".as_bytes());
        let out = lines(&[&long]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], "é");
    }

    #[test]
    fn quoting_survives_quotes_and_newlines() {
        assert_eq!(quote("it's\nok"), "'it'\\''s\nok'");
    }

    #[test]
    fn env_names_must_be_shell_identifiers() {
        assert!(is_env_name("AWS_KEY_1"));
        assert!(is_env_name("_x"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn the_wrapped_script_exports_env_before_the_user_script() {
        let text = wrap("echo hi", &[("A".into(), "b c".into())]);
        assert!(text.starts_with("export A='b c'\n"));
        assert!(text.contains("(\necho hi\n) </dev/null"));
        assert!(text.ends_with("__kb_main\n"));
    }
}
