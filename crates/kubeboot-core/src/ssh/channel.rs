//! One command in a channel of its own: the way to run a command when the node runs no
//! persistent shell, and for the probes and checks that come before one.

use russh::ChannelMsg;
use tokio_util::sync::CancellationToken;

use super::follow::{self, Followed, Step};
use super::script::LineBuffer;
use super::{Exit, Session, SshError};
use crate::event::Stream;

impl Session {
    /// Runs `command` on a new channel with `stdin`, streaming its output. `eof` closes stdin after it;
    /// commands run through [`script::wrap`](super::script::wrap) must keep it open, their watchdog kills them on EOF.
    pub(super) async fn run(
        &self,
        command: &str,
        stdin: Vec<u8>,
        eof: bool,
        output: &(dyn Fn(Stream, String) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<Exit, SshError> {
        let _permit = tokio::select! {
            permit = self.inner.channels.acquire() => permit.map_err(|_| self.lost("(session closed)"))?,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        if self.inner.handle.is_closed() {
            return Err(self.lost("before the command could start"));
        }
        let channel = tokio::select! {
            c = self.inner.handle.channel_open_session() => c.map_err(|_| self.lost("while opening a channel"))?,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        let (read, write) = channel.split();
        let mut guard = CloseOnDrop(Some(write));
        let Some(write) = guard.0.as_ref() else {
            return Err(SshError::Protocol("channel already closed".into()));
        };
        write
            .exec(true, command)
            .await
            .map_err(|_| self.lost("while starting a command"))?;
        write
            .data_bytes(stdin)
            .await
            .map_err(|_| self.lost("while sending a command"))?;
        if eof {
            write.eof().await.map_err(|_| self.lost("while sending a command"))?;
        }

        let mut out = LineBuffer::default();
        let mut err = LineBuffer::default();
        let messages = futures::stream::unfold(read, |mut r| async move { r.wait().await.map(|m| (m, r)) });
        let followed = follow::follow(messages, cancel, |msg| match msg {
            ChannelMsg::Data { data } => {
                out.push(&data, &mut |l| output(Stream::Stdout, l));
                Step::More
            }
            ChannelMsg::ExtendedData { data, .. } => {
                err.push(&data, &mut |l| output(Stream::Stderr, l));
                Step::More
            }
            ChannelMsg::ExitStatus { exit_status } => Step::Exit(Exit::Code(exit_status as i32)),
            ChannelMsg::ExitSignal { signal_name, .. } => Step::Exit(Exit::Signal(signal_name_of(&signal_name))),
            ChannelMsg::Failure => Step::Fail(SshError::Protocol(format!(
                "{} refused to run a command (exec request failed) — check its sshd allows sessions for {}",
                self.inner.target.node, self.inner.target.user
            ))),
            ChannelMsg::Close => Step::Closed,
            _ => Step::More,
        })
        .await;
        let exit = match followed {
            Followed::Cancelled => {
                // Dropping the guard sends EOF and closes the channel: the watchdog kills the command.
                drop(guard);
                return Err(SshError::Cancelled);
            }
            Followed::Failed(e) => return Err(e),
            Followed::Ended { exit, closed } => {
                if closed {
                    guard.0 = None;
                }
                exit
            }
        };
        out.finish(&mut |l| output(Stream::Stdout, l));
        err.finish(&mut |l| output(Stream::Stderr, l));
        exit.ok_or_else(|| self.lost("while a command ran"))
    }
}

/// Sends EOF and closes the channel when dropped, unless disarmed: dropping the future of a running
/// command must still kill it (the remote watchdog acts on EOF).
struct CloseOnDrop(Option<russh::ChannelWriteHalf<russh::client::Msg>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(write) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = write.eof().await;
                let _ = write.close().await;
            });
        }
    }
}

fn signal_name_of(sig: &russh::Sig) -> String {
    let debug = format!("{sig:?}");
    match debug.strip_prefix("Custom(\"").and_then(|s| s.strip_suffix("\")")) {
        Some(name) => name.to_string(),
        None => debug,
    }
}
