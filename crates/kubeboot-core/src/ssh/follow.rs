//! The one loop that follows a running command until it ends, for both ways a command runs: in a
//! channel of its own (its SSH channel messages) and as a job of the persistent shell (its frames).
//!
//! It stops on cancel at once, keeps reading for at most [`DRAIN_AFTER_EXIT`] after the exit status
//! (output still in flight; a background process that keeps stdout open must not hold the task
//! forever), and otherwise when the caller's handler says the command is over or the messages end.

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{DRAIN_AFTER_EXIT, Exit, SshError};

/// What one message means, as the caller's handler reads it.
pub(super) enum Step {
    /// Output (already passed on) or nothing of interest: keep reading.
    More,
    /// The command's exit status; output may still follow.
    Exit(Exit),
    /// All of the command's output is in.
    Done,
    /// The other side closed (the channel, or the shell went away).
    Closed,
    /// The command cannot go on.
    Fail(SshError),
}

/// How following a command ended.
pub(super) enum Followed {
    Cancelled,
    /// The exit status, if one arrived, and whether the other side closed.
    Ended {
        exit: Option<Exit>,
        closed: bool,
    },
    Failed(SshError),
}

/// Reads `messages` through `handle` until the command is over (see the module header).
pub(super) async fn follow<M>(
    messages: impl Stream<Item = M>,
    cancel: &CancellationToken,
    mut handle: impl FnMut(M) -> Step,
) -> Followed {
    let mut messages = std::pin::pin!(messages);
    let mut exit = None;
    loop {
        let drain = async {
            match exit {
                Some(_) => tokio::time::sleep(DRAIN_AFTER_EXIT).await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Followed::Cancelled,
            m = messages.next() => m,
            _ = drain => break,
        };
        let Some(message) = message else { break };
        match handle(message) {
            Step::More => {}
            Step::Exit(e) => exit = Some(e),
            Step::Done => break,
            Step::Closed => return Followed::Ended { exit, closed: true },
            Step::Fail(e) => return Followed::Failed(e),
        }
    }
    Followed::Ended { exit, closed: false }
}
