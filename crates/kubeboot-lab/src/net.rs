//! Loopback ranges for labs that run at the same time: test binaries run in parallel, and so do the
//! worktrees of several people on one machine, so no test numbers its own addresses.
//!
//! A range is `127.0.<n>.1..` with ports `first_port..`; whoever holds the lock file
//! `/var/lib/kubeboot-lab/nets/127.0.<n>` (an exclusive `flock`, released when the last process holding
//! it ends, however it ends) owns it; the file names the holder's PID. A range that something still
//! listens on (an sshd a killed test left behind) is passed over.
//!
//! A lab whose nodes outlive the command that started it (the VM lab: qemu daemonizes) hands its lock to
//! one of its own long-lived processes ([`Net::hand_over`]), so the range stays held until `lab down`.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{LabError, STATE_DIR, io};

/// The third octets handed out: above the defaults of `lab up` and the demo (127.0.10.x, 127.0.100.x) and the
/// ranges tests numbered by hand before this allocator (up to 127.0.203.x).
const NETS: std::ops::RangeInclusive<u8> = 204..=254;
/// The most nodes one range holds (its ports are `first_port .. first_port + MAX_NODES`).
pub const MAX_NODES: usize = 20;

/// A claimed range, owned until dropped.
#[derive(Debug)]
pub struct Net {
    /// The first node's address (`127.0.<n>.1`); node i has `first_address + i`.
    pub first_address: Ipv4Addr,
    /// The first node's port; node i has `first_port + i`.
    pub first_port: u16,
    /// Holds the range's `flock`.
    lock: fs::File,
    /// The lock file (it names the holder's PID).
    path: PathBuf,
}

/// Claims a free range for a lab of `nodes` nodes.
pub fn claim(nodes: usize) -> Result<Net, LabError> {
    claim_in(&Path::new(STATE_DIR).join("nets"), NETS, nodes)
}

/// Claims the range of `first_address` (its `127.x.<n>` lock) for `nodes` nodes from `first_port` on, as
/// asked on a command line: a range another lab holds is an error naming the holder's PID, not passed over.
pub fn claim_at(first_address: Ipv4Addr, first_port: u16, nodes: usize) -> Result<Net, LabError> {
    claim_at_in(&Path::new(STATE_DIR).join("nets"), first_address, first_port, nodes)
}

fn claim_at_in(dir: &Path, first_address: Ipv4Addr, first_port: u16, nodes: usize) -> Result<Net, LabError> {
    if nodes > MAX_NODES {
        return Err(LabError::NoFreeNet(format!(
            "a range holds at most {MAX_NODES} nodes, not {nodes}"
        )));
    }
    if !first_address.is_loopback() {
        return Err(LabError::NoFreeNet(format!(
            "{first_address} is not a loopback address (127.0.0.0/8)"
        )));
    }
    let n = first_address.octets()[2];
    let Some(net) = lock(dir, n, first_address, first_port)? else {
        let path = dir.join(format!("127.0.{n}"));
        return Err(LabError::NetHeld {
            range: format!("127.0.{n}.x"),
            holder: holder(&path),
        });
    };
    Ok(net)
}

/// Locks range `n`'s file; `None` when another process holds it.
fn lock(dir: &Path, n: u8, first_address: Ipv4Addr, first_port: u16) -> Result<Option<Net>, LabError> {
    fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let path = dir.join(format!("127.0.{n}"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("cannot open {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(None),
        Err(fs::TryLockError::Error(e)) => return Err(io(format!("cannot lock {}", path.display()))(e)),
    }
    let net = Net {
        first_address,
        first_port,
        lock: file,
        path,
    };
    net.record_holder(std::process::id() as i32)?;
    Ok(Some(net))
}

/// Who holds a lock file: its PID and, while it runs, its program (`4711 (vde_switch)`).
fn holder(path: &Path) -> String {
    let pid = fs::read_to_string(path).unwrap_or_default().trim().to_string();
    if pid.is_empty() {
        return "an unknown process (the lock file names none)".into();
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    match comm.trim() {
        "" => format!("process {pid}"),
        comm => format!("process {pid} ({comm})"),
    }
}

fn claim_in(dir: &Path, nets: std::ops::RangeInclusive<u8>, nodes: usize) -> Result<Net, LabError> {
    if nodes > MAX_NODES {
        return Err(LabError::NoFreeNet(format!(
            "a range holds at most {MAX_NODES} nodes, not {nodes}"
        )));
    }
    for n in nets.clone() {
        let first_port = 23000 + u16::from(n - nets.start()) * MAX_NODES as u16;
        let Some(net) = lock(dir, n, Ipv4Addr::new(127, 0, n, 1), first_port)? else {
            continue;
        };
        if !net.anything_listens(nodes) {
            return Ok(net);
        }
    }
    Err(LabError::NoFreeNet(format!(
        "every range 127.0.{}.x to 127.0.{}.x is held by another test or still has a listener (an sshd a killed test left: `pkill -u {}` or `kubeboot lab down`)",
        nets.start(),
        nets.end(),
        crate::USER
    )))
}

impl Net {
    /// Lets `child` (a process that outlives this one) inherit the range's lock: the range stays held while
    /// either runs. Call [`Net::record_holder`] with the child's PID once it is known.
    pub fn hand_over(&self, child: &mut Command) {
        let fd = self.lock.as_raw_fd();
        // SAFETY: between fork and exec only fcntl runs (async-signal-safe); it clears close-on-exec on the
        // lock's descriptor in the child alone.
        unsafe {
            child.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Writes `pid` into the lock file as the range's holder (what a refused [`claim_at`] names).
    pub fn record_holder(&self, pid: i32) -> Result<(), LabError> {
        let mut f = &self.lock;
        f.set_len(0)
            .and_then(|()| std::io::Seek::rewind(&mut f))
            .and_then(|()| writeln!(f, "{pid}"))
            .map_err(io(format!("cannot write {}", self.path.display())))
    }

    /// Whether something accepts connections on one of the first `nodes` addresses of the range.
    fn anything_listens(&self, nodes: usize) -> bool {
        (0..nodes).any(|i| {
            let addr = SocketAddr::from((
                Ipv4Addr::from(u32::from(self.first_address) + i as u32),
                self.first_port + i as u16,
            ));
            TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges no lab uses, so these tests neither meet nor disturb real labs. Each test has its own,
    /// because they run in parallel and one of them listens where another would look.
    const TEST_NETS: std::ops::RangeInclusive<u8> = 1..=3;
    const LISTENER_TEST_NETS: std::ops::RangeInclusive<u8> = 4..=6;

    #[test]
    fn a_held_range_is_not_handed_out_again_until_it_is_dropped() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let a = claim_in(dir.path(), TEST_NETS, 2).expect("a first range");
        let b = claim_in(dir.path(), TEST_NETS, 2).expect("a second range");
        assert_ne!(a.first_address, b.first_address);
        assert_ne!(a.first_port, b.first_port);
        let a_address = a.first_address;
        drop(a);
        let c = claim_in(dir.path(), TEST_NETS, 2).expect("a third range");
        assert_eq!(c.first_address, a_address, "a dropped range is free again");
    }

    #[test]
    fn a_range_something_listens_on_is_passed_over() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let first = claim_in(dir.path(), LISTENER_TEST_NETS, 1).expect("a range");
        let (address, port) = (first.first_address, first.first_port);
        drop(first);
        let _listener = std::net::TcpListener::bind((address, port)).expect("listen where a stale sshd would");
        let next = claim_in(dir.path(), LISTENER_TEST_NETS, 1).expect("another range");
        assert_ne!(next.first_address, address);
    }

    #[test]
    fn a_range_asked_for_while_held_fails_naming_the_holder() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let held = claim_in(dir.path(), 7..=7, 2).expect("a range");
        let err = claim_at_in(dir.path(), held.first_address, 2400, 2).expect_err("the range is held");
        let text = err.to_string();
        assert!(text.contains("127.0.7.x"), "{text}");
        assert!(text.contains(&format!("process {}", std::process::id())), "{text}");
        drop(held);
        let again = claim_at_in(dir.path(), Ipv4Addr::new(127, 0, 7, 1), 2400, 2).expect("free again");
        assert_eq!(
            (again.first_address, again.first_port),
            (Ipv4Addr::new(127, 0, 7, 1), 2400)
        );
        assert!(claim_at_in(dir.path(), Ipv4Addr::new(10, 0, 7, 1), 2400, 1).is_err());
    }

    #[test]
    fn a_range_handed_to_a_child_stays_held_after_the_claimer_lets_go() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let net = claim_in(dir.path(), 8..=8, 1).expect("a range");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        net.hand_over(&mut cmd);
        let mut child = cmd.spawn().expect("sleep starts");
        net.record_holder(child.id() as i32).expect("holder recorded");
        drop(net);
        let err = claim_at_in(dir.path(), Ipv4Addr::new(127, 0, 8, 1), 2400, 1).expect_err("the child holds it");
        assert!(
            err.to_string().contains(&format!("process {} (sleep)", child.id())),
            "{err}"
        );
        let _ = child.kill();
        let _ = child.wait();
        claim_at_in(dir.path(), Ipv4Addr::new(127, 0, 8, 1), 2400, 1).expect("free once the child is gone");
    }

    #[test]
    fn a_range_holds_at_most_max_nodes() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        assert!(claim_in(dir.path(), TEST_NETS, MAX_NODES + 1).is_err());
    }
}
