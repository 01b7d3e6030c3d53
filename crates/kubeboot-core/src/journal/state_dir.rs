//! The state directory on disk: the folder (private to the user), the lock held while a run uses it, the
//! journal's append-only writer, the key of the secrets' digests, and the per-run log folders.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Progress, Record, StateError};
use crate::secrets::DigestKey;

const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "lock";
/// The random key of the secrets' keyed digests (see [`crate::secrets::DigestKey`]).
pub(super) const DIGEST_KEY: &str = "fingerprint.key";

/// The state directory (`--state-dir`, default `.kubeboot/`).
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// Held while a run uses the state dir; the OS releases it when the process dies.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl StateDir {
    /// Opens (creating, private to the user) the state directory and checks it is writable.
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        let unusable = |source| StateError::Unusable {
            path: path.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(unusable)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path.join("logs"))
            .map_err(unusable)?;
        // Probe writability now, so a read-only state dir is bad input before anything runs.
        let probe = path.join(".write-test");
        File::create(&probe).map_err(unusable)?;
        let _ = fs::remove_file(&probe);
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing state dir for reading only (`status`, `plan`); a missing one reads as empty.
    pub fn existing(path: &Path) -> StateDir {
        StateDir {
            path: path.to_path_buf(),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal file.
    pub fn journal_path(&self) -> PathBuf {
        self.path.join(JOURNAL)
    }

    /// Takes the run lock, or says who holds it.
    pub fn lock(&self) -> Result<Lock, StateError> {
        let lock_path = self.path.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| StateError::Unusable {
                path: self.path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.set_len(0);
                let _ = file.rewind();
                let _ = writeln!(file, "{}", std::process::id());
                let _ = file.sync_data();
                Ok(Lock { _file: file })
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim() {
                    "" => String::new(),
                    pid => format!(" (process {pid})"),
                };
                Err(StateError::Locked {
                    path: self.path.clone(),
                    holder,
                })
            }
            Err(fs::TryLockError::Error(source)) => Err(StateError::Unusable {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The PID of a live kubeboot run holding the lock, read without taking it (so `status` never
    /// gets in the way of an `apply` starting). A killed run's PID is gone from /proc, so it reads as none.
    pub fn running_holder(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.path.join(LOCK)).ok()?.trim().parse().ok()?;
        let command = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (pid != std::process::id() && command.trim() == "kubeboot").then_some(pid)
    }

    /// Reads what earlier runs finished; a missing journal is an empty one.
    pub fn progress(&self) -> io::Result<Progress> {
        match File::open(self.journal_path()) {
            Ok(f) => Progress::read(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Progress::empty()),
            Err(e) => Err(e),
        }
    }

    /// The key of the secrets' keyed digests, made (random, 0600) on first use.
    pub fn digest_key(&self) -> io::Result<DigestKey> {
        if let Some(key) = self.existing_digest_key()? {
            return Ok(key);
        }
        let path = self.path.join(DIGEST_KEY);
        let key = DigestKey::random();
        // Written under a temporary name and renamed: a crash never leaves a short key behind.
        let part = self.path.join(format!("{DIGEST_KEY}.part"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)?;
        f.write_all(key.bytes())?;
        f.sync_all()?;
        fs::rename(&part, &path)?;
        File::open(&self.path)?.sync_all()?;
        Ok(key)
    }

    /// The key of the secrets' digests if one was made before (for read-only commands such as `plan`).
    pub fn existing_digest_key(&self) -> io::Result<Option<DigestKey>> {
        let path = self.path.join(DIGEST_KEY);
        match fs::read(&path) {
            Ok(bytes) => match DigestKey::from_bytes(&bytes) {
                Some(key) => Ok(Some(key)),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged (not 32 bytes); remove it and the tasks that use secrets run once more",
                        path.display()
                    ),
                )),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the journal for appending.
    pub fn writer(&self) -> io::Result<JournalWriter> {
        let path = self.journal_path();
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        // An older file may have other permissions; the journal stays private.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let torn = ends_without_newline(&path)?;
        Ok(JournalWriter {
            file,
            start_with_newline: torn,
        })
    }

    /// The folder for this run's log files (created, private). `logs/latest` moves to it only
    /// once the run really starts ([`StateDir::mark_latest`]).
    pub fn run_logs(&self, run_id: &str) -> io::Result<PathBuf> {
        let dir = self.path.join("logs").join(run_id);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(dir)
    }

    /// Points `logs/latest` at this run's log folder.
    pub fn mark_latest(&self, run_id: &str) {
        let latest = self.path.join("logs").join("latest");
        let _ = fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(run_id, &latest);
    }
}

fn ends_without_newline(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(io::SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Appends records; each record is one `write` of one whole line.
#[derive(Debug)]
pub struct JournalWriter {
    file: File,
    /// A crash left a torn last line: start on a fresh line so the next record stays readable.
    start_with_newline: bool,
}

impl JournalWriter {
    /// Appends one record (written at once, not yet synced).
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = if std::mem::take(&mut self.start_with_newline) {
            b"\n".to_vec()
        } else {
            Vec::new()
        };
        serde_json::to_writer(&mut line, record)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }

    /// Appends records and makes them durable at once (records written outside a run, e.g. by `reset`).
    pub fn append_all(&mut self, records: &[Record]) -> io::Result<()> {
        for r in records {
            self.append(r)?;
        }
        self.sync()
    }

    /// Makes everything appended so far durable (one sync per batch of records).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}
