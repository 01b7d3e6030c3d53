//! `[sources]`: where each kind of artifact the install downloads comes from, and the bundle
//! folder kubeboot serves to the nodes itself.

use std::path::PathBuf;

/// The port on each node's loopback a bundle is served on, unless `bundle_port` says otherwise.
pub const DEFAULT_BUNDLE_PORT: u16 = 18470;

/// `[sources]` of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// A bundle folder (`kubeboot bundle --out`) to serve to every node over its SSH connection.
    pub bundle: Option<PathBuf>,
    /// The port on each node's 127.0.0.1 the bundle is served on.
    pub bundle_port: u16,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            bundle: None,
            bundle_port: DEFAULT_BUNDLE_PORT,
        }
    }
}

impl Sources {
    /// `http://127.0.0.1:PORT` for a node whose bundle is served on `port`, or "" without a bundle.
    pub fn bundle_url(&self, port: u16) -> String {
        match self.bundle {
            Some(_) => format!("http://{}:{port}", crate::bundle::LISTEN_ADDRESS),
            None => String::new(),
        }
    }
}
