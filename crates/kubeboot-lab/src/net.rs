//! Loopback ranges for labs that run at the same time: test binaries run in parallel, and so do the
//! worktrees of several people on one machine, so no test numbers its own addresses.
//!
//! A range is `127.0.<n>.1..` with ports `first_port..`; whoever holds the lock file
//! `/var/lib/kubeboot-lab/nets/127.0.<n>` (an exclusive `flock`, released when the process ends,
//! however it ends) owns it. A range that something still listens on (an sshd a killed test left
//! behind) is passed over.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
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
    _lock: fs::File,
}

/// Claims a free range for a lab of `nodes` nodes.
pub fn claim(nodes: usize) -> Result<Net, LabError> {
    claim_in(&Path::new(STATE_DIR).join("nets"), NETS, nodes)
}

fn claim_in(dir: &Path, nets: std::ops::RangeInclusive<u8>, nodes: usize) -> Result<Net, LabError> {
    if nodes > MAX_NODES {
        return Err(LabError::NoFreeNet(format!(
            "a range holds at most {MAX_NODES} nodes, not {nodes}"
        )));
    }
    fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    for n in nets.clone() {
        let path = dir.join(format!("127.0.{n}"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("cannot open {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => continue,
            Err(fs::TryLockError::Error(e)) => return Err(io(format!("cannot lock {}", path.display()))(e)),
        }
        let net = Net {
            first_address: Ipv4Addr::new(127, 0, n, 1),
            first_port: 23000 + u16::from(n - nets.start()) * MAX_NODES as u16,
            _lock: file,
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
    fn a_range_holds_at_most_max_nodes() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        assert!(claim_in(dir.path(), TEST_NETS, MAX_NODES + 1).is_err());
    }
}
