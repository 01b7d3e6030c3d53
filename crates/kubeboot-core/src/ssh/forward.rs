//! Remote port forwards: a port on the node's loopback whose connections come back to kubeboot
//! over the node's own SSH connection (`ssh -R`), so a node without any other network can reach a
//! service kubeboot runs itself. This module only moves bytes; what answers is the caller's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use russh::client::{ChannelOpenHandle, Msg};

use super::{Session, SshError};

/// One connection a node opened to a forwarded port: a byte stream (AsyncRead + AsyncWrite).
pub type ForwardedStream = russh::ChannelStream<Msg>;

/// What answers the connections of one forwarded port; called once per connection, on its own task.
pub type ForwardService = Arc<dyn Fn(ForwardedStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The services of a connection's forwarded ports, by the port the node listens on; shared between
/// the session (which asks sshd for a forward) and the russh handler (which gets its connections).
#[derive(Clone, Default)]
pub(crate) struct Forwards(Arc<Mutex<HashMap<u32, ForwardService>>>);

impl Forwards {
    pub(crate) fn insert(&self, port: u32, service: ForwardService) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(port, service);
        }
    }

    pub(crate) fn remove(&self, port: u32) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&port);
        }
    }

    /// Accepts a connection sshd forwards to us when one of our ports asked for it, and hands it to
    /// that port's service; refuses anything else (a forward nobody here asked for).
    pub(crate) async fn open(&self, channel: russh::Channel<Msg>, port: u32, reply: ChannelOpenHandle) {
        let service = self.0.lock().ok().and_then(|map| map.get(&port).cloned());
        match service {
            Some(service) => {
                reply.accept().await;
                tokio::spawn(service(channel.into_stream()));
            }
            None => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
        }
    }
}

impl Session {
    /// Asks the node's sshd to listen on `address:port` on the node (e.g. `127.0.0.1`) and to send
    /// every connection there back over this connection to `service` (like `ssh -R`). Connections
    /// stay possible until the session closes. The node's sshd must allow it (`AllowTcpForwarding`
    /// `yes` or `remote`, its default) and the port must be free on the node.
    pub async fn forward_remote(&self, address: &str, port: u16, service: ForwardService) -> Result<(), SshError> {
        let t = &self.inner.target;
        self.inner.forwards.insert(u32::from(port), service);
        match self.inner.handle.tcpip_forward(address, u32::from(port)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.inner.forwards.remove(u32::from(port));
                Err(match e {
                    russh::Error::RequestDenied => SshError::Forward(format!(
                        "{} refused to forward {address}:{port} back to kubeboot — check that its sshd_config allows it \
                         (AllowTcpForwarding yes or remote; DisableForwarding no) and that nothing else listens on port {port} there",
                        t.node
                    )),
                    _ => self.lost("while asking for a port forward"),
                })
            }
        }
    }
}
