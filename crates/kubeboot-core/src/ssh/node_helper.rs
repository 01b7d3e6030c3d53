//! The node helper, `kubeboot-node` (`src/bin/kubeboot-node.rs`): kubeboot finds it next to its
//! own executable, copies it to a node once (by its SHA-256, into a cache folder of the shell's
//! user) and has the persistent shell run it, which then runs the shell's jobs: one fork and one
//! exec of `sh` per job instead of the shell's job wrapper (see [`super::executor`]).
//!
//! It is used only where it can run: the node's `uname -m` must be the architecture it was built
//! for, the copy must have the right SHA-256, and it must start (a node whose C library is older
//! than the jump host's, a cache on a `noexec` mount: the shell says so and runs the jobs itself).

use std::sync::OnceLock;

use base64::Engine;
use sha2::{Digest, Sha256};

/// The requests and frames this kubeboot speaks with the helper (`PROTOCOL` in its source): a
/// `kubeboot-node` of another build answers exit status 3, and the shell runs the jobs.
pub(crate) const PROTOCOL: &str = "1";

/// The helper found next to kubeboot's executable.
pub(crate) struct LocalHelper {
    bytes: Vec<u8>,
    sha256: String,
}

/// The helper next to kubeboot's executable (or one folder up, where test executables live),
/// read once; None where there is none (kubeboot then runs every job with the shell).
pub(crate) fn local() -> Option<&'static LocalHelper> {
    static HELPER: OnceLock<Option<LocalHelper>> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            if !cfg!(target_os = "linux") {
                return None;
            }
            let exe = std::env::current_exe().ok()?;
            let dir = exe.parent()?;
            let path = [dir.join("kubeboot-node"), dir.parent()?.join("kubeboot-node")]
                .into_iter()
                .find(|p| p.is_file())?;
            let bytes = std::fs::read(&path).ok()?;
            let sha256 = hex::encode(Sha256::digest(&bytes));
            tracing::debug!(path = %path.display(), %sha256, "node helper found");
            Some(LocalHelper { bytes, sha256 })
        })
        .as_ref()
}

/// What the shell said after [`start_text`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The helper runs and reads the shell's stdin from now on.
    Ready,
    /// No copy with the right SHA-256 in the cache: send [`upload_text`] and ask again.
    Missing,
    /// It cannot run there (another architecture, or it did not start): the shell runs the jobs.
    Unusable,
}

/// Tells the answer to [`start_text`] from a line of the shell's output, if it is one.
pub(crate) fn answer(nonce: &str, line: &str) -> Option<Answer> {
    let rest = line.strip_prefix(nonce)?.strip_prefix(" - ")?;
    match rest {
        "R helper" => Some(Answer::Ready),
        "H missing" => Some(Answer::Missing),
        _ if rest.starts_with("H ") => Some(Answer::Unusable),
        _ => None,
    }
}

impl LocalHelper {
    /// Shell text that runs the cached copy if it is there and whole: from then on the helper
    /// reads the shell's stdin, and when it ends the shell ends (its EXIT trap cleans up as always).
    /// Only a copy the shell's user owns, in a folder only that user can write (mode 700, no
    /// symlinks), is run: nobody else can swap it between the SHA-256 check and the start (for
    /// root that would be a way in).
    /// It answers `H missing`, `H arch` or `H failed` instead (126 and 127 are the shell's own
    /// statuses for a program it could not run, 3 the helper's for another protocol; it never
    /// ends with them once it runs).
    pub(crate) fn start_text(&self, nonce: &str) -> String {
        format!(
            r#"if [ "$(id -u)" = 0 ]; then __kb_c=/var/cache/kubeboot; else __kb_c=${{XDG_CACHE_HOME:-$HOME/.cache}}/kubeboot; fi
__kb_h="$__kb_c/kubeboot-node-{short}"
if [ "$(uname -m 2>/dev/null)" != '{arch}' ]; then
  echo '{nonce} - H arch'
elif [ ! -L "$__kb_c" ] && [ -O "$__kb_c" ] && [ -f "$__kb_h" ] && [ ! -L "$__kb_h" ] && [ -O "$__kb_h" ] \
  && case $(ls -ld "$__kb_c" 2>/dev/null) in d???------*) true ;; *) false ;; esac \
  && [ "$(sha256sum < "$__kb_h" 2>/dev/null)" = '{sha}  -' ]; then
  "$__kb_h" serve {PROTOCOL} '{nonce}' "$__kb_d" "$__kb_w" 4>&-
  __kb_r=$?
  case $__kb_r in 3|126|127) echo '{nonce} - H failed' ;; *) exit "$__kb_r" ;; esac
else
  echo '{nonce} - H missing'
fi
"#,
            short = &self.sha256[..16],
            sha = self.sha256,
            arch = std::env::consts::ARCH,
        )
    }

    /// Shell text that puts the helper into the cache (private to the user: a folder of mode 700),
    /// written beside it and renamed into place, so a copy is whole or absent (two kubeboots
    /// copying at once each rename a whole one); copies of other versions go. Needs `base64`, as coreutils and busybox have it.
    pub(crate) fn upload_text(&self, nonce: &str) -> String {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&self.bytes);
        let mut text = String::with_capacity(encoded.len() + encoded.len() / 76 + 512);
        let end = format!("__KB_{nonce}_HELPER");
        text.push_str(&format!(
            "__kb_u=\"$__kb_c/.kubeboot-node.$$\"\n\
             if ( umask 077 && mkdir -p \"$__kb_c\" && base64 -d > \"$__kb_u\" ) <<'{end}'\n"
        ));
        for line in encoded.as_bytes().chunks(76) {
            text.push_str(std::str::from_utf8(line).unwrap_or_default());
            text.push('\n');
        }
        text.push_str(&format!(
            "{end}\n\
             then for __kb_f in \"$__kb_c\"/kubeboot-node-*; do [ \"$__kb_f\" = \"$__kb_h\" ] || rm -f -- \"$__kb_f\"; done\n\
             chmod 700 \"$__kb_c\" \"$__kb_u\" && mv -f \"$__kb_u\" \"$__kb_h\" || rm -f \"$__kb_u\"\n\
             else rm -f \"$__kb_u\"; fi\n"
        ));
        text
    }
}

/// A job for the helper: `J ID NENV LEN`, then the `NAME=VALUE` entries each ended by a NUL, then
/// the script (see `src/bin/kubeboot-node.rs`).
pub(crate) fn job_request(id: u64, env: &[(String, String)], script: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(script.len() + 64);
    for (name, value) in env {
        payload.extend_from_slice(name.as_bytes());
        payload.push(b'=');
        payload.extend_from_slice(value.as_bytes());
        payload.push(0);
    }
    payload.extend_from_slice(script.as_bytes());
    let mut request = format!("J {id} {} {}\n", env.len(), payload.len()).into_bytes();
    request.extend_from_slice(&payload);
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart_and_other_lines_are_not_answers() {
        assert_eq!(answer("n0", "n0 - R helper"), Some(Answer::Ready));
        assert_eq!(answer("n0", "n0 - H missing"), Some(Answer::Missing));
        assert_eq!(answer("n0", "n0 - H arch"), Some(Answer::Unusable));
        assert_eq!(answer("n0", "n0 - H failed"), Some(Answer::Unusable));
        assert_eq!(answer("n0", "x0 - R helper"), None);
        assert_eq!(answer("n0", "n0 - R /tmp/kubeboot-jobs.x"), None);
    }

    #[test]
    fn a_job_request_carries_env_entries_before_the_script() {
        let r = job_request(7, &[("A".into(), "x y".into())], "echo $A\n");
        assert_eq!(r, b"J 7 1 14\nA=x y\0echo $A\n");
    }

    #[test]
    fn the_texts_parse_in_dash_and_in_bash_as_sh() {
        let helper = LocalHelper {
            bytes: vec![0x7f, b'E', b'L', b'F', 0, 1, 2, 3],
            sha256: "0".repeat(64),
        };
        let text = helper.start_text("n0nce") + &helper.upload_text("n0nce");
        crate::ssh::script::assert_parses_in_dash_and_bash(&text);
    }
}
