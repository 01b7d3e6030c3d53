//! `fetch:` a file read on the node and written on the jump host (the reverse of `copy`).
//!
//! The node sends the file's sha256 and then the file as base64 on the stdout of one command (under sudo
//! for `become`), so binary files (etcd snapshots) and root-only files (admin.conf) travel the same way; the
//! digest is checked before anything is written. On the jump host the file is written 0600 in folders
//! created 0700, through a temporary file in the same folder, so a crash never leaves half a file under
//! the destination name. Without `overwrite`, an existing file with other content is never replaced
//! (backups); the same content counts as done, which makes a resumed run converge.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::event::TaskStatus;
use crate::spanned::{Fields, Node, Reader, misspelled};

use super::{Failure, Kind, PAD, Problem, Render, RunCx, check_exit};

const KEYS: &[&str] = &["src", "dest", "overwrite"];

/// A `fetch:` task: one file read on the node (with `become`, as root) and written on the jump host, 0600.
/// As written `src` and `dest` are templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Absolute path of the file on the node.
    pub src: String,
    /// Where it goes on the jump host: relative paths are under the state dir, absolute ones as written.
    pub dest: String,
    /// Replace a file already at `dest`. Default false: an existing file with other content is never overwritten
    /// (backups), the same content counts as done.
    pub overwrite: bool,
}

/// A `fetch:` task as written in the playbook (the same fields, not yet rendered).
pub type FetchDef = Fetch;

impl Kind for Fetch {
    const KEY: &'static str = "fetch";
    type Def = Fetch;

    fn parse(r: &mut Reader, n: &Node, fields: &mut Fields) -> Option<Fetch> {
        let entries = r.mapping(n, KEYS, "`fetch`")?;
        let mut src = None;
        let mut dest = None;
        let mut overwrite = false;
        for (key, _k, v) in &entries {
            match key.as_str() {
                "src" => src = r.field("fetch.src", key, v, fields),
                "dest" => dest = r.field("fetch.dest", key, v, fields),
                "overwrite" => overwrite = r.boolean("overwrite", v).unwrap_or(false),
                _ => {}
            }
        }
        let has = |key: &str| entries.iter().any(|(k, _, _)| k == key);
        if !has("src") && !misspelled(n, &["src"]) {
            r.error(n, "`fetch` has no `src`", "add `src: /absolute/path/on/the/node`");
        }
        if !has("dest") && !misspelled(n, &["dest"]) {
            r.error(
                n,
                "`fetch` has no `dest`",
                "add `dest: path/on/the/jump/host` (relative paths are under the state dir)",
            );
        }
        Some(Fetch {
            src: src?,
            dest: dest?,
            overwrite,
        })
    }

    fn render(def: &Fetch, r: &mut dyn Render) -> Fetch {
        Fetch {
            src: r.text(&def.src, "fetch.src"),
            dest: r.text(&def.dest, "fetch.dest"),
            overwrite: def.overwrite,
        }
    }

    fn fingerprint(&self, put: &mut dyn FnMut(&[u8])) {
        put(self.src.as_bytes());
        put(self.dest.as_bytes());
        put(if self.overwrite { b"overwrite" } else { b"keep-old" });
    }

    fn describe(&self, out: &mut String) {
        let dest = if self.dest.starts_with('/') {
            self.dest.clone()
        } else {
            format!("<state dir>/{}", self.dest)
        };
        out.push_str(&format!(
            "{PAD}fetch {} -> {dest} on the jump host (mode 0600)\n",
            self.src
        ));
        let old = if self.overwrite {
            "an older file there is replaced"
        } else {
            "an older file there is never overwritten (the same content counts as done)"
        };
        out.push_str(&format!("{PAD}  {old}\n"));
    }

    fn command_line(&self) -> Vec<(&'static str, &str)> {
        vec![("fetch.src", &self.src), ("fetch.dest", &self.dest)]
    }

    /// `src` is an absolute path on the node, `dest` a file path (no folder) on the jump host.
    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if !self.src.starts_with('/') {
            out.push(Problem {
                field: "fetch.src",
                message: format!("`fetch.src` must be an absolute path on the node, not `{}`", self.src),
                hint: "e.g. /etc/kubernetes/admin.conf",
            });
        }
        let rel = Path::new(self.dest.as_str());
        if self.dest.trim().is_empty()
            || self.dest.ends_with('/')
            || rel.components().any(|c| matches!(c, Component::ParentDir))
        {
            out.push(Problem {
                field: "fetch.dest",
                message: format!(
                    "`fetch.dest` must name a file on the jump host without `..`, not `{}`",
                    self.dest
                ),
                hint: "relative paths are under the state dir, e.g. backups/{{ cluster.name }}/etcd.db",
            });
        }
        out
    }

    /// The node prints the file (digest + base64, never shown as output), kubeboot writes it here.
    async fn run(&self, cx: &RunCx<'_>) -> Result<TaskStatus, Failure> {
        let src = &self.src;
        let (exit, lines, errors) = cx.capture(&script(src), cx.timeout).await?;
        check_exit(exit, errors)?;
        let bytes = decode(&lines).map_err(|e| Failure::Other(format!("fetching {src}: {e}")))?;
        let path = destination(cx.fetch_root, &self.dest);
        let written = write(&path, &bytes, self.overwrite).map_err(Failure::Other)?;
        cx.output(match written {
            Written::Changed => format!("fetched {src} ({} bytes) -> {}", bytes.len(), path.display()),
            Written::Unchanged => format!("unchanged: {} already holds {src}", path.display()),
        });
        Ok(match written {
            Written::Changed => TaskStatus::Changed,
            Written::Unchanged => TaskStatus::Ok,
        })
    }
}

/// The script that prints the file's sha256 (first line) and the file as base64 (the other lines).
fn script(src: &str) -> String {
    let q = crate::ssh::quote(src);
    format!(
        "set -eu\nf={q}\nif [ ! -f \"$f\" ]; then echo \"no such file on the node: $f\" >&2; exit 3; fi\n\
         sha256sum < \"$f\" | cut -d ' ' -f 1\nbase64 < \"$f\"\n"
    )
}

/// Where a fetched file goes: relative destinations are under `root` (the state dir).
pub fn destination(root: &Path, dest: &str) -> PathBuf {
    let p = Path::new(dest);
    if p.is_absolute() { p.to_path_buf() } else { root.join(p) }
}

/// The file's bytes from what [`script`] printed, checked against the digest the node computed.
fn decode(lines: &[String]) -> Result<Vec<u8>, String> {
    let Some((digest, body)) = lines.split_first() else {
        return Err("the node sent nothing".into());
    };
    let text: String = body.iter().map(|l| l.trim()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| format!("the node's answer is not base64 ({e})"))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != digest.trim() {
        return Err(format!(
            "the file changed or was damaged on the way: sha256 {got} here, {} on the node",
            digest.trim()
        ));
    }
    Ok(bytes)
}

/// What writing the fetched file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new file, or a replaced one (`overwrite`).
    Changed,
    /// The file was already there with exactly these bytes.
    Unchanged,
}

/// Writes `bytes` at `path`, 0600 (folders on the way 0700). Without `overwrite`, a file already there with other
/// content is an error and stays as it was.
pub fn write(path: &Path, bytes: &[u8], overwrite: bool) -> Result<Written, String> {
    let shown = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {} on the jump host: {e}", dir.display()))?;
    match fs::read(path) {
        Ok(old) if old == bytes => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot make {shown} private: {e}"))?;
            return Ok(Written::Unchanged);
        }
        Ok(_) if !overwrite => {
            return Err(format!(
                "{shown} already exists with other content and is never overwritten — move it away or fetch to another name"
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.kubeboot-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
        if overwrite {
            fs::rename(&temp, path).map_err(|e| format!("cannot put the file at {shown}: {e}"))
        } else {
            // A hard link never replaces an existing file: a backup written meanwhile by another run stays.
            fs::hard_link(&temp, path).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => format!("{shown} appeared meanwhile; it is never overwritten"),
                _ => format!("cannot put the file at {shown}: {e}"),
            })
        }
    })();
    let _ = fs::remove_file(&temp);
    result?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(Written::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_for(bytes: &[u8]) -> Vec<String> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut lines = vec![hex::encode(Sha256::digest(bytes))];
        lines.extend(
            b64.as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8_lossy(c).into_owned()),
        );
        lines
    }

    #[test]
    fn decode_checks_the_digest() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert_eq!(decode(&lines_for(&bytes)).unwrap(), bytes);
        let mut bad = lines_for(&bytes);
        bad[0] = hex::encode(Sha256::digest(b"other"));
        assert!(decode(&bad).unwrap_err().contains("damaged"));
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn write_is_private_and_never_overwrites_unless_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("backups/c1/etcd.db");
        assert_eq!(write(&path, b"one", false), Ok(Written::Changed));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(write(&path, b"one", false), Ok(Written::Unchanged));
        let e = write(&path, b"two", false).unwrap_err();
        assert!(e.contains("never overwritten"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(write(&path, b"two", true), Ok(Written::Changed));
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        let left: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn relative_destinations_are_under_the_state_dir() {
        assert_eq!(destination(Path::new("/s"), "a/b.db"), PathBuf::from("/s/a/b.db"));
        assert_eq!(destination(Path::new("/s"), "/tmp/x"), PathBuf::from("/tmp/x"));
    }
}
