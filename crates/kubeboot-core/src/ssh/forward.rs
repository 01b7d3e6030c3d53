//! Remote port forwards: a port on the node's loopback whose connections come back to kubeboot
//! over the node's own SSH connection (`ssh -R`), so a node without any other network can reach a
//! service kubeboot runs itself. This module only moves bytes; what answers is the caller's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use russh::client::{ChannelOpenHandle, Msg};

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
