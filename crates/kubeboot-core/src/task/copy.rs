//! `copy:` files put on the node over SFTP: one file from `assets/` or inline `content`, or every file
//! below an assets folder. Folders on the way are created (0755, like `mkdir -p`).

use std::borrow::Cow;
use std::path::{Component, Path, PathBuf};

use crate::diag::{Diagnostic, closest};
use crate::event::TaskStatus;
use crate::spanned::{Fields, Node, Reader, Value, misspelled};

use super::{Failure, Kind, PAD, Render, RunCx, check_exit};

const KEYS: &[&str] = &["src", "content", "dest", "mode", "owner", "template"];
const DEFAULT_MODE: u32 = 0o644;

/// A `copy:` task as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyDef {
    /// Path under the assets folder, a file or a folder (copied whole, `dest` is then a folder);
    /// exactly one of `src` and `content` is set.
    pub src: Option<String>,
    /// Inline content (a template).
    pub content: Option<String>,
    /// Destination path on the node (a template).
    pub dest: String,
    /// File mode, e.g. 0o644. Default 0o644.
    pub mode: u32,
    /// `user` or `user:group` (needs `become`).
    pub owner: Option<String>,
    /// Render `src` through the template engine. Default false for `src`, always for `content`.
    pub template: bool,
}

/// A `copy:` task rendered: the files (sorted for a folder `src`), each owned by `owner` when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFiles {
    pub files: Vec<FileCopy>,
    pub owner: Option<String>,
}

/// One file a `copy` task puts on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    /// Absolute destination path on the node.
    pub dest: String,
    /// The (rendered) bytes.
    pub content: Vec<u8>,
    /// File mode, e.g. 0o644; folders on the way are created 0755.
    pub mode: u32,
}

impl Kind for CopyFiles {
    const KEY: &'static str = "copy";
    type Def = CopyDef;

    fn parse(r: &mut Reader, n: &Node, fields: &mut Fields) -> Option<CopyDef> {
        let entries = r.mapping(n, KEYS, "`copy`")?;
        let mut c = CopyDef {
            src: None,
            content: None,
            dest: String::new(),
            mode: DEFAULT_MODE,
            owner: None,
            template: false,
        };
        let mut dest = None;
        let mut src_node = None;
        for (key, _k, v) in &entries {
            match key.as_str() {
                "src" => {
                    src_node = Some(*v);
                    c.src = r.field("copy.src", "src", v, fields);
                }
                "content" => c.content = r.field("copy.content", "content", v, fields),
                "dest" => dest = r.field("copy.dest", "dest", v, fields),
                "mode" => c.mode = mode(r, v).unwrap_or(DEFAULT_MODE),
                "owner" => c.owner = r.string("owner", v),
                "template" => c.template = r.boolean("template", v).unwrap_or(false),
                _ => {}
            }
        }
        let has = |key: &str| entries.iter().any(|(k, _, _)| k == key);
        if has("src") == has("content") {
            r.error(
                n,
                "`copy` needs exactly one of `src` and `content`",
                "`src` is a path under assets/, `content` is inline text",
            );
        }
        if !has("dest") && !misspelled(n, &["dest"]) {
            r.error(n, "`copy` has no `dest`", "add `dest: /absolute/path/on/the/node`");
        }
        if let (Some(src), Some(at)) = (&c.src, src_node) {
            check_src(r, src, at);
        }
        if c.content.is_some() {
            c.template = true;
        }
        c.dest = dest?;
        Some(c)
    }

    fn render(def: &CopyDef, r: &mut dyn Render) -> CopyFiles {
        let dest = r.text(&def.dest, "copy.dest");
        let files = match (&def.content, &def.src) {
            (Some(content), _) => vec![FileCopy {
                dest,
                content: r.text(content, "copy.content").into_bytes(),
                mode: def.mode,
            }],
            (None, Some(src)) => asset_files(r, src, &dest, def),
            (None, None) => Vec::new(),
        };
        CopyFiles {
            files,
            owner: def.owner.clone(),
        }
    }

    fn fingerprint(&self, put: &mut dyn FnMut(&[u8])) {
        put(self.owner.as_deref().unwrap_or("").as_bytes());
        put(&(self.files.len() as u64).to_le_bytes());
        for f in &self.files {
            put(f.dest.as_bytes());
            put(&f.mode.to_le_bytes());
            put(&f.content);
        }
    }

    fn describe(&self, out: &mut String) {
        for f in &self.files {
            let owner = self
                .owner
                .as_deref()
                .map(|o| format!(", owner {o}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "{PAD}copy -> {} (mode {:04o}{owner}, {} bytes)\n",
                f.dest,
                f.mode,
                f.content.len()
            ));
        }
    }

    fn command_line(&self) -> Vec<(&'static str, &str)> {
        let mut fields: Vec<(&'static str, &str)> = self.files.iter().map(|f| ("copy.dest", f.dest.as_str())).collect();
        if let Some(o) = &self.owner {
            fields.push(("copy.owner", o));
        }
        fields
    }

    fn filled(&self) -> Vec<Cow<'_, str>> {
        self.files.iter().map(|f| String::from_utf8_lossy(&f.content)).collect()
    }

    async fn run(&self, cx: &RunCx<'_>) -> Result<TaskStatus, Failure> {
        // The plan's contract: folders on the way to a copied file are created (0755, like mkdir -p).
        let mut dirs: Vec<&str> = self
            .files
            .iter()
            .filter_map(|f| f.dest.rsplit_once('/').map(|(dir, _)| dir))
            .filter(|dir| !dir.is_empty())
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        if !dirs.is_empty() {
            let quoted: Vec<String> = dirs.iter().map(|d| crate::ssh::quote(d)).collect();
            let script = format!("umask 022; mkdir -p -- {}", quoted.join(" "));
            let (exit, tail) = cx.exec(&script, false, cx.timeout).await?;
            check_exit(exit, tail)?;
        }
        let mut changed = false;
        for file in &self.files {
            let content = cx.fill_bytes(&file.content);
            let upload = cx.session.upload(
                &file.dest,
                &content,
                file.mode,
                self.owner.as_deref(),
                cx.become_,
                cx.cancel,
            );
            changed |= match cx.timeout {
                Some(limit) => tokio::time::timeout(limit, upload)
                    .await
                    .map_err(|_| Failure::Timeout(limit))?,
                None => upload.await,
            }?;
        }
        Ok(if changed { TaskStatus::Changed } else { TaskStatus::Ok })
    }
}

fn check_src(r: &mut Reader, src: &str, at: &Node) {
    let rel = Path::new(src);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
        r.error(
            at,
            format!("`src` must be a path inside the assets folder, not `{src}`"),
            "write it relative to assets/, without `..`",
        );
        return;
    }
    let full = r.base.join(rel);
    if !full.exists() {
        let hint = match nearby_asset(r.base, rel) {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!("put the file under {}", r.base.display()),
        };
        r.error(at, format!("asset `{src}` does not exist"), hint);
    }
}

fn mode(r: &mut Reader, v: &Node) -> Option<u32> {
    let text = match &v.value {
        Value::Str(s) => s.trim().trim_start_matches("0o").to_string(),
        // An unquoted `644` is written meaning octal digits.
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    };
    match u32::from_str_radix(&text, 8) {
        Ok(m) if m <= 0o7777 => Some(m),
        _ => {
            r.error(
                v,
                "`mode` must be an octal file mode like \"0644\"",
                "quote it: mode: \"0644\"",
            );
            None
        }
    }
}

/// The closest existing sibling of a missing asset, for a did-you-mean.
fn nearby_asset(assets_dir: &Path, rel: &Path) -> Option<String> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let wanted = rel.file_name()?.to_string_lossy().into_owned();
    let names: Vec<String> = std::fs::read_dir(assets_dir.join(parent))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let best = closest(&wanted, names.iter().map(String::as_str))?;
    Some(parent.join(best).display().to_string())
}

/// The files a `copy.src` puts on the node: the file itself, or every file below the folder (sorted).
/// Problems (unreadable files, template errors in templated assets) go to the renderer.
fn asset_files(r: &mut dyn Render, src: &str, dest: &str, c: &CopyDef) -> Vec<FileCopy> {
    let root = r.assets_dir().join(src);
    let mut paths = Vec::new();
    if root.is_dir() {
        if let Err(e) = walk(&root, &mut paths) {
            r.problem(Diagnostic::file(&root, format!("cannot read the asset folder: {e}")));
            return Vec::new();
        }
        paths.sort();
    } else {
        paths.push(root.clone());
    }
    let mut files = Vec::new();
    let mut failed = false;
    for path in paths {
        let target = match path.strip_prefix(&root) {
            Ok(rel) if !rel.as_os_str().is_empty() => {
                format!("{}/{}", dest.trim_end_matches('/'), rel.to_string_lossy())
            }
            _ => dest.to_string(),
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                r.problem(Diagnostic::file(&path, format!("cannot read the asset: {e}")));
                failed = true;
                continue;
            }
        };
        let content = if c.template {
            match String::from_utf8(bytes) {
                Ok(text) => match r.asset(&text, &path) {
                    Some(s) => s.into_bytes(),
                    None => {
                        failed = true;
                        continue;
                    }
                },
                Err(_) => {
                    r.problem(
                        Diagnostic::file(&path, "a templated asset must be UTF-8 text")
                            .with_hint("set `template: false` for binary files"),
                    );
                    failed = true;
                    continue;
                }
            }
        } else {
            bytes
        };
        files.push(FileCopy {
            dest: target,
            content,
            mode: c.mode,
        });
    }
    if failed { Vec::new() } else { files }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}
