//! The node helper's copy on a node (needs root, sshd, sudo): copied once, copied again when it is
//! damaged, and where it cannot be put the shell runs the jobs. A test binary of its own: it makes
//! the lab user's cache unusable for a moment, which the SSH tests running beside it in one binary
//! (they share the lab user) would see; cargo runs test binaries one after another.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{TestLab, start_lab};
use kubeboot::event::Stream;
use kubeboot::ssh::{Command, Exit, Session};
use tokio_util::sync::CancellationToken;

/// The parent of a job's `sh` (its command name), and the job's exit.
async fn parent_of_a_job(s: &Session, become_: bool) -> String {
    let lines = Mutex::new(Vec::new());
    let exit = s
        .exec(
            &Command {
                script: "ps -o comm= -p $PPID".into(),
                become_,
                ..Default::default()
            },
            &|stream, line| {
                if stream == Stream::Stdout {
                    lines.lock().unwrap().push(line)
                }
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("the job failed: {e}"));
    assert_eq!(exit, Exit::Code(0));
    lines.into_inner().unwrap().join(" ")
}

async fn session(t: &TestLab) -> Session {
    Session::connect(t.lab.target("node-1").unwrap())
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}"))
}

/// The lab user's cache folder and the copies of the helper in it.
fn copies(cache: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("kubeboot-node-"))
    });
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_helper_is_copied_once_copied_again_when_damaged_and_done_without_where_it_cannot_be_put() {
    let t = start_lab(1);
    let home = PathBuf::from(
        String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", "getent passwd kblab | cut -d: -f6"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    );
    let cache = home.join(".cache/kubeboot");

    // A first session makes the cache folder (as the lab user), whatever earlier tests left.
    let s = session(&t).await;
    assert!(parent_of_a_job(&s, false).await.starts_with("kubeboot-node"));
    s.close().await;

    // Copied when there is no copy; a copy of another version goes then.
    for p in copies(&cache) {
        std::fs::remove_file(p).unwrap();
    }
    let old = cache.join("kubeboot-node-0000000000000000");
    std::fs::write(&old, b"an older helper").unwrap();
    let s = session(&t).await;
    assert!(parent_of_a_job(&s, false).await.starts_with("kubeboot-node"));
    assert!(parent_of_a_job(&s, true).await.starts_with("kubeboot-node"));
    s.close().await;
    assert!(!old.exists(), "the other version's copy is still there");
    let copy = copies(&cache);
    assert_eq!(copy.len(), 1, "{copy:?}");
    let first = std::fs::metadata(&copy[0]).unwrap();
    assert_eq!(first.mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);

    // Used as it is by the next session: not copied again.
    let s = session(&t).await;
    assert!(parent_of_a_job(&s, false).await.starts_with("kubeboot-node"));
    s.close().await;
    let again = std::fs::metadata(&copy[0]).unwrap();
    assert_eq!(
        (again.ino(), again.mtime_nsec()),
        (first.ino(), first.mtime_nsec()),
        "copied again"
    );

    // A damaged copy (here: cut short) is never run, but replaced.
    let bytes = std::fs::read(&copy[0]).unwrap();
    std::fs::write(&copy[0], &bytes[..bytes.len() / 2]).unwrap();
    let s = session(&t).await;
    assert!(parent_of_a_job(&s, false).await.starts_with("kubeboot-node"));
    s.close().await;
    assert_eq!(
        std::fs::read(&copy[0]).unwrap(),
        bytes,
        "the damaged copy was not replaced"
    );

    // Where no copy can be put (the cache is a file, not a folder), the shell runs the jobs: the
    // session works as before, and root's shell does not try again either.
    let aside = home.join(".cache/kubeboot.aside");
    std::fs::rename(&cache, &aside).unwrap();
    std::fs::write(&cache, b"not a folder").unwrap();
    let s = session(&t).await;
    let user = parent_of_a_job(&s, false).await;
    let root = parent_of_a_job(&s, true).await;
    s.close().await;
    std::fs::remove_file(&cache).unwrap();
    std::fs::rename(&aside, &cache).unwrap();
    assert!(!user.starts_with("kubeboot-node"), "{user}");
    assert!(!root.starts_with("kubeboot-node"), "{root}");
}
