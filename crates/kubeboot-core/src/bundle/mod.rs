//! Bundles: every artifact an install downloads, gathered into one folder that can be carried to
//! an air-gapped site, and served from there to the nodes over their SSH connections.

pub mod charts;
pub mod collect;
pub mod dnf;
pub mod images;
pub mod kubeadm;
pub mod packages;
pub mod rpmmd;
pub mod serve;

use std::sync::Arc;

pub use serve::FileServer;

use crate::ssh::ForwardService;

/// The node-side address a bundle is forwarded to: only the node itself can reach it.
pub use crate::inventory::sources::BUNDLE_ADDRESS as LISTEN_ADDRESS;

/// `server` as the service of a remote port forward: every connection a node opens is answered by it.
pub fn forward_service(server: FileServer) -> ForwardService {
    Arc::new(move |stream| {
        let server = server.clone();
        Box::pin(async move { server.serve(stream).await })
    })
}
