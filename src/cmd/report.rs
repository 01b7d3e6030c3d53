//! `kubeboot report [--out FILE]`: one tar.gz of what a support ticket needs — the state dir's run logs
//! (`logs/latest` as real files), the journal, `status` as text and JSON, the kubeboot version, the inventory
//! and the playbooks as they are — with every secret value kubeboot can read masked in every file it writes.
//!
//! The logs are masked when they are written already; masking again here is the second guard (a log of an
//! older version, a value pasted into a playbook by hand). Only what is listed here goes in: never the digest
//! key (`fingerprint.key`), fetched kubeconfigs, backups or anything else a `fetch` task wrote to the state dir.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::{Exit, Failure};
use crate::cli::{Cli, ReportArgs};
use crate::diag::{Diagnostic, Diagnostics};
use crate::inventory::{self, Inventory, SecretSource};
use crate::secrets;

/// What the masked parts of the archive are replaced with (as in kubeboot's own output).
const MASK: &[u8] = b"****";
/// Folders below the playbooks folder deeper than this are not followed (a link loop).
const MAX_DEPTH: usize = 8;

/// Runs `kubeboot report`.
pub(crate) fn report(cli: &Cli, args: &ReportArgs) -> Result<Exit, Failure> {
    let state = &cli.state_dir;
    if !state.is_dir() {
        return Err(bad(
            state,
            format!("there is no state dir at {}: nothing to report", state.display()),
            "run it in the folder you ran `kubeboot apply` in, or give --state-dir",
        ));
    }
    let stamp = super::run::run_id();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("kubeboot-report-{stamp}.tar.gz")));
    if out.exists() {
        return Err(bad(
            &out,
            format!("{} already exists", out.display()),
            "give another --out (a report never replaces a file)",
        ));
    }
    let inventory = inventory::load(&cli.inventory);
    let masks = Masks::read(inventory.as_ref().ok());
    let status = match super::status::status_report(cli) {
        Ok(both) => both,
        Err(e) => {
            let why = format!("kubeboot status failed: {}\n", failure_text(&e));
            (
                why.clone(),
                serde_json::json!({ "error": why.trim_end() }).to_string() + "\n",
            )
        }
    };

    let root = format!("kubeboot-report-{stamp}");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    files.push((
        "version.txt".into(),
        format!("kubeboot {}\n", env!("CARGO_PKG_VERSION")).into_bytes(),
    ));
    files.push(("status.txt".into(), status.0.into_bytes()));
    files.push(("status.json".into(), status.1.into_bytes()));
    if let Ok(journal) = fs::read(state.join("journal.jsonl")) {
        files.push(("journal.jsonl".into(), journal));
    }
    let latest = latest_run(state);
    for (run, dir) in runs(state) {
        // The newest run goes in as `logs/latest` (its files, not the link); the others under their names.
        let name = if latest.as_deref() == Some(run.as_str()) {
            "latest".to_string()
        } else {
            run
        };
        collect(&dir, &format!("logs/{name}"), 1, &mut files);
    }
    match fs::read(&cli.inventory) {
        Ok(bytes) => files.push((
            format!("inventory/{}", file_name(&cli.inventory, "inventory.toml")),
            bytes,
        )),
        Err(e) => files.push((
            "inventory/MISSING.txt".into(),
            format!("{}: {e}\n", cli.inventory.display()).into_bytes(),
        )),
    }
    collect(&cli.playbooks, "playbooks", 1, &mut files);

    let mut masked = 0;
    for (_, bytes) in files.iter_mut() {
        masked += masks.apply(bytes);
    }
    let mut readme = readme(cli, &inventory, &masks, latest.as_deref(), masked, &files).into_bytes();
    masks.apply(&mut readme);
    files.insert(0, ("README.txt".into(), readme));

    write_archive(&out, &root, &files).map_err(|e| Failure::Other(format!("cannot write {}: {e}", out.display())))?;
    let size = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} files, {} KiB): attach it to the ticket",
        out.display(),
        files.len(),
        size.div_ceil(1024)
    );
    println!("{}", masks.summary(masked));
    Ok(Exit::Ok)
}

fn bad(file: &Path, message: String, hint: &str) -> Failure {
    Failure::BadInput(Diagnostics::from(Diagnostic::file(file, message).with_hint(hint)))
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::BadInput(d) => d.to_string(),
        Failure::State(e) => e.to_string(),
        Failure::Other(e) => e.clone(),
    }
}

fn file_name(path: &Path, default: &str) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| default.to_string())
}

/// The secret values the inventory names that can be read now, and the names of those that cannot.
#[derive(Default)]
struct Masks {
    /// Longest first, so a value that holds another is masked whole.
    values: Vec<Vec<u8>>,
    unread: Vec<String>,
    /// The inventory did not load: no secret is known.
    no_inventory: bool,
}

impl Masks {
    fn read(inventory: Option<&Inventory>) -> Masks {
        let Some(inv) = inventory else {
            return Masks {
                no_inventory: true,
                ..Masks::default()
            };
        };
        let mut sources: Vec<(String, &SecretSource)> = Vec::new();
        for node in &inv.nodes {
            if let Some(s) = &node.ssh.password {
                sources.push((describe(s), s));
            }
            if let Some(s) = &node.ssh.sudo_password {
                sources.push((describe(s), s));
            }
        }
        for (name, s) in &inv.secrets {
            sources.push((format!("secrets.{name} ({})", describe(s)), s));
        }
        for (name, r) in &inv.sources.registries {
            for s in [&r.username, &r.password].into_iter().flatten() {
                sources.push((format!("registry {name} ({})", describe(s)), s));
            }
        }
        let mut m = Masks::default();
        for (label, source) in sources {
            match secrets::read(source) {
                Ok(v) if !m.values.iter().any(|x| x == v.expose().as_bytes()) => {
                    m.values.push(v.expose().as_bytes().to_vec())
                }
                Ok(_) => {}
                Err(_) if !m.unread.contains(&label) => m.unread.push(label),
                Err(_) => {}
            }
        }
        m.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        m
    }

    /// Replaces every secret value in `bytes`; how many places were masked.
    fn apply(&self, bytes: &mut Vec<u8>) -> usize {
        let mut count = 0;
        for value in &self.values {
            let (out, n) = replace_all(bytes, value);
            if n > 0 {
                *bytes = out;
                count += n;
            }
        }
        count
    }

    fn summary(&self, masked: usize) -> String {
        if self.no_inventory {
            return "secrets: the inventory did not load, so no secret value was known to mask here (the logs \
                    were masked when they were written)"
                .into();
        }
        let mut text = format!(
            "secrets: {} value(s) known, {masked} place(s) masked",
            self.values.len()
        );
        if !self.unread.is_empty() {
            text.push_str(&format!(
                "; not readable now, so not masked here (export them and run report again to be sure): {}",
                self.unread.join(", ")
            ));
        }
        text
    }
}

fn describe(s: &SecretSource) -> String {
    match s {
        SecretSource::Env(var) => format!("${var}"),
        SecretSource::File(path) => path.display().to_string(),
    }
}

/// `hay` with every `needle` replaced by [`MASK`], and how many there were.
fn replace_all(hay: &[u8], needle: &[u8]) -> (Vec<u8>, usize) {
    if needle.is_empty() || hay.len() < needle.len() {
        return (Vec::new(), 0);
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut count = 0;
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(MASK);
            i += needle.len();
            count += 1;
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    (out, count)
}

/// The run folder `logs/latest` points at.
fn latest_run(state: &Path) -> Option<String> {
    let target = fs::read_link(state.join("logs").join("latest")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Every run's log folder, by name (oldest first: run ids start with their time).
fn runs(state: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(state.join("logs")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        // `latest` itself is a link: its run is added under that name instead.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

/// The regular files below `dir` (links to files followed, links to folders not), under `prefix`.
fn collect(dir: &Path, prefix: &str, depth: usize, files: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() && depth < MAX_DEPTH {
            collect(&path, &format!("{prefix}/{name}"), depth + 1, files);
        } else if path.is_file()
            && let Ok(bytes) = fs::read(&path)
        {
            files.push((format!("{prefix}/{name}"), bytes));
        }
    }
}

fn readme(
    cli: &Cli,
    inventory: &Result<Inventory, Diagnostics>,
    masks: &Masks,
    latest: Option<&str>,
    masked: usize,
    files: &[(String, Vec<u8>)],
) -> String {
    let now = time::OffsetDateTime::now_utc();
    let when = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    let mut text = format!(
        "kubeboot report\n\
         made: {when} by kubeboot {}\n\
         state dir: {}\n\
         inventory: {}\n\
         playbooks: {}\n\
         logs/latest: {}\n\
         {}\n",
        env!("CARGO_PKG_VERSION"),
        cli.state_dir.display(),
        cli.inventory.display(),
        cli.playbooks.display(),
        latest.map_or("(no run yet)".to_string(), |r| format!("the files of run {r}")),
        masks.summary(masked),
    );
    if let Err(d) = inventory {
        text.push_str(&format!("the inventory did not load:\n{d}\n"));
    }
    text.push_str(
        "\nleft out on purpose: fingerprint.key (the secrets' digest key), fetched kubeconfigs, etcd backups and \
         everything else fetch tasks wrote to the state dir, SSH keys, the assets folder\n\nfiles:\n",
    );
    for (name, bytes) in files {
        text.push_str(&format!("  {name} ({} bytes)\n", bytes.len()));
    }
    text
}

/// Writes the archive next to `out` and moves it in place (no half archive under the final name).
fn write_archive(out: &Path, root: &str, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let part = out.with_file_name(format!(".{}.part", file_name(out, "report.tar.gz")));
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // Private: it holds the logs (masked, but still the operator's).
        .mode(0o600)
        .open(&part)?;
    let result = (|| {
        let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::default()));
        let mtime = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(mtime);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, format!("{root}/{name}"), bytes.as_slice())?;
        }
        let mut gz = tar.into_inner()?;
        gz.flush()?;
        gz.finish()?.sync_all()
    })();
    match result {
        Ok(()) => fs::rename(&part, out),
        Err(e) => {
            let _ = fs::remove_file(&part);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_masked_and_counted() {
        let (out, n) = replace_all(b"a=s3cr3t b=s3cr3ts3cr3t", b"s3cr3t");
        assert_eq!((out.as_slice(), n), (&b"a=**** b=********"[..], 3));
        let (_, n) = replace_all(b"nothing here", b"s3cr3t");
        assert_eq!(n, 0);
    }

    #[test]
    fn a_longer_value_holding_a_shorter_one_is_masked_whole() {
        let masks = Masks {
            values: vec![b"token-abc-123".to_vec(), b"abc".to_vec()],
            ..Masks::default()
        };
        let mut text = b"x token-abc-123 abc".to_vec();
        assert_eq!(masks.apply(&mut text), 2);
        assert_eq!(text, b"x **** ****");
    }
}
