//! The persistent per-node shell: one long-lived `sh -s` per session (and one root shell for
//! become, so sudo is paid once), to which each command is sent as a framed job instead of
//! opening a channel (and for become, a sudo) per command.
//!
//! Each job runs in its own session and process group (`setsid`), with stdin `/dev/null`. Its
//! stdout and stderr go through small line-prefixing loops, so every line the client reads is
//! `<nonce> <id> <kind> <text>`: output can never pass for a control frame, and the per-session
//! random nonce makes frames unforgeable by anything the job runs. Control frames, written by the
//! shell itself to a descriptor the job does not have: `P pid` (started), `X code` (exited),
//! `D` (all its output is flushed). Cancel, a timeout or a dropped future writes `__kb_kill pgid`
//! to the shell: the job's group and everything descended from it, in any group or session.
//!
//! Where it can, the shell hands its jobs to the node helper right after its prelude (see
//! [`node_helper`]): `kubeboot-node` then reads the shell's stdin and writes the same frames (no `P`:
//! it is told to kill by job id), and each job costs one fork and one exec of `sh` instead of the
//! wrapper below. Everything else (the folder, the watchdog, the cleanup) stays the shell's.
//!
//! Each shell has its own folder on the node (`$TMPDIR/kubeboot-jobs.*`: job PID files, uploads in
//! transit), and however the session ends the folder goes away with the shell: see [`prelude`]
//! for each ending. A folder whose shell never got the chance (the node lost power) is removed
//! by the next kubeboot shell of the same user on that node.
//!
//! One job (the persistent shell: its shell code and the client side of its frames), kept in one
//! file past ~600 lines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::follow::{Followed, Step, follow};
use super::node_helper::{self, Answer};
use super::script::{LineBuffer, quote};
use super::{Command, Exit, SshError};
use crate::event::Stream;

/// What the shell reported for one job.
enum Frame {
    Line(Stream, String),
    Exit(i32),
    Done,
    /// The shell (or the whole connection) went away.
    Gone,
}

#[derive(Default)]
struct Job {
    frames: Option<mpsc::UnboundedSender<Frame>>,
    pid: Option<u32>,
    kill_when_started: bool,
}

/// One running remote shell that runs jobs.
pub(crate) struct Executor {
    nonce: String,
    writes: mpsc::UnboundedSender<Vec<u8>>,
    jobs: Arc<Mutex<HashMap<u64, Job>>>,
    next_id: AtomicU64,
    /// Ids of jobs that reported `D`, handed out again (see [`Executor::take_id`]).
    free_ids: Mutex<Vec<u64>>,
    alive: Arc<AtomicBool>,
    /// Becomes true once the shell has ended.
    ended: watch::Receiver<bool>,
    /// The shell's own folder on the node (job PID files, uploads in transit); gone when it ends.
    dir: String,
    /// sudo asked for the password when it started this shell.
    sudo_asked: bool,
    /// The node helper runs the jobs (see [`node_helper`]); else the shell does.
    helper: bool,
    _permit: OwnedSemaphorePermit,
}

/// How to start a shell.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShellOptions {
    /// How often kubeboot tells the shell it is still there.
    pub beat: Duration,
    /// The shell runs jobs (needs `setsid`), or only holds a folder.
    pub need_setsid: bool,
    /// The shell is started by `sudo -S -p PROMPT … sh -c 'echo SUDO_OK; exec sh -s'`: the
    /// password is sent when sudo prompts for it, and the prelude only once [`SUDO_OK`] arrives, so
    /// the same sudo that starts the shell is the one that finds out whether a password is needed
    /// and checks it (one sudo and at most one password hash per node, no probe), and a refused
    /// password (sudo prompts again) never makes sudo read the prelude as further tries.
    pub sudo_prompt: Option<&'static str>,
    /// Hand the jobs to the node helper where it can run (see [`node_helper`]).
    pub helper: bool,
}

/// What the root shell prints once sudo has let it run (see [`ShellOptions::sudo_prompt`]).
pub(crate) const SUDO_OK: &str = "kubeboot-sudo-ok";

/// Why a shell could not be started; the caller falls back to one channel per command.
pub(crate) enum StartError {
    /// The node cannot host it (no `setsid`, no `mktemp`): use channels for this session.
    Unsupported,
    /// sudo did not start the shell (refused the password, the user may not use it, there is no
    /// sudo): what it wrote to stderr, and whether it asked for the password.
    SudoRefused {
        errors: String,
        asked: bool,
    },
    Ssh(SshError),
}

impl Executor {
    /// Starts the shell with `command` (`sh -s` or a sudo of it); `password` is the sudo password
    /// line, sent only if sudo asks for it (empty: none to give).
    /// It is sent a beat every `beat`; one that hears none for 6 beats cleans up and ends. Without
    /// `need_setsid` the shell only holds a folder (for uploads on a node that cannot run jobs).
    pub(crate) async fn start(
        handle: &russh::client::Handle<super::Client>,
        permit: OwnedSemaphorePermit,
        command: &str,
        password: Vec<u8>,
        shell: ShellOptions,
        lost: impl Fn(&str) -> SshError,
    ) -> Result<Executor, StartError> {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|_| StartError::Ssh(lost("while opening a channel")))?;
        let (mut read, write) = channel.split();
        write
            .exec(true, command)
            .await
            .map_err(|_| StartError::Ssh(lost("while starting the remote shell")))?;
        let mut stdin = Vec::new();
        let mut buf = LineBuffer::default();
        let mut sudo_asked = false;
        if let Some(prompt) = shell.sudo_prompt {
            // sudo prints its prompt (on stderr: -S) when it wants the password, and once more for
            // every further try. The password goes out when the first prompt arrives, never before:
            // a sudo that needs none (NOPASSWD, or a root login) just starts the shell, so this is
            // also the probe of how to become root. A second prompt means the password was refused:
            // stdin is closed so that sudo gives up after that one try.
            let (mut errors, mut ok, mut closed) = (Vec::new(), false, false);
            let mut password = Some(password);
            while !ok {
                match read.wait().await {
                    Some(ChannelMsg::Data { data }) => buf.push(&data, &mut |l| ok |= l == SUDO_OK),
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        errors.extend_from_slice(&data);
                        let prompts = errors.windows(prompt.len()).filter(|w| *w == prompt.as_bytes()).count();
                        if prompts == 1
                            && let Some(line) = password.take()
                        {
                            sudo_asked = true;
                            if line.is_empty() {
                                // Asked, but there is no password to give.
                                closed = true;
                                let _ = write.eof().await;
                            } else {
                                write
                                    .data_bytes(line)
                                    .await
                                    .map_err(|_| StartError::Ssh(lost("while starting the remote shell")))?;
                            }
                        }
                        if prompts > 1 && !closed {
                            closed = true;
                            let _ = write.eof().await;
                        }
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
            if !ok {
                let _ = write.close().await;
                return Err(StartError::SudoRefused {
                    errors: String::from_utf8_lossy(&errors).into_owned(),
                    asked: sudo_asked,
                });
            }
        }
        let beat_secs = shell.beat.as_secs().max(1);
        stdin.extend_from_slice(prelude(&nonce, beat_secs, shell.need_setsid).as_bytes());
        write
            .data_bytes(stdin)
            .await
            .map_err(|_| StartError::Ssh(lost("while starting the remote shell")))?;

        // Wait for the ready frame before handing the shell out.
        let ready = format!("{nonce} - R /");
        let unsupported = format!("{nonce} - U");
        let state = next_line(&mut read, &mut buf, |l| {
            if l.starts_with(&ready) {
                Some(Some(l[ready.len() - 1..].to_string()))
            } else {
                (l == unsupported).then_some(None)
            }
        })
        .await;
        let Some(Some(dir)) = state else {
            let _ = write.close().await;
            return Err(StartError::Unsupported);
        };

        // The node helper, where it can run: asked for; sent (once) when the node has no copy.
        let mut helper = false;
        if shell.helper
            && shell.need_setsid
            && let Some(local) = node_helper::local()
        {
            let mut text = local.start_text(&nonce);
            let mut uploaded = false;
            loop {
                write
                    .data_bytes(std::mem::take(&mut text).into_bytes())
                    .await
                    .map_err(|_| StartError::Ssh(lost("while starting the node helper")))?;
                match next_line(&mut read, &mut buf, |l| node_helper::answer(&nonce, l)).await {
                    None => return Err(StartError::Ssh(lost("while starting the node helper"))),
                    Some(Answer::Ready) => helper = true,
                    Some(Answer::Missing) if !uploaded => {
                        uploaded = true;
                        text = local.upload_text(&nonce) + &local.start_text(&nonce);
                        continue;
                    }
                    Some(_) => {}
                }
                break;
            }
        }

        let (writes, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let jobs: Arc<Mutex<HashMap<u64, Job>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (ended_tx, ended) = watch::channel(false);
        // The writer: one place that writes to the shell's stdin, so frames never interleave. It
        // also sends the beats the shell's watchdog waits for.
        tokio::spawn(async move {
            let period = Duration::from_secs(beat_secs);
            let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let bytes = tokio::select! {
                    b = queue.recv() => match b {
                        Some(b) => b,
                        None => break,
                    },
                    _ = beats.tick() => if helper { HELPER_BEAT } else { BEAT }.to_vec(),
                };
                if write.data_bytes(bytes).await.is_err() {
                    break;
                }
            }
            let _ = write.eof().await;
            let _ = write.close().await;
        });
        // The reader: routes each frame to its job.
        tokio::spawn({
            let jobs = jobs.clone();
            let alive = alive.clone();
            let nonce = nonce.clone();
            // Weak: the shell's stdin must close once every Executor handle is gone.
            let writes = writes.downgrade();
            async move {
                let mut buf = buf;
                loop {
                    match read.wait().await {
                        Some(ChannelMsg::Data { data }) => {
                            buf.push(&data, &mut |l| route(&jobs, &nonce, &writes, &l));
                        }
                        Some(ChannelMsg::Close) | None => break,
                        Some(_) => {}
                    }
                }
                alive.store(false, Ordering::SeqCst);
                let _ = ended_tx.send(true);
                if let Ok(mut jobs) = jobs.lock() {
                    for (_, job) in jobs.drain() {
                        if let Some(tx) = job.frames {
                            let _ = tx.send(Frame::Gone);
                        }
                    }
                }
            }
        });
        Ok(Executor {
            nonce,
            writes,
            jobs,
            next_id: AtomicU64::new(1),
            free_ids: Mutex::default(),
            alive,
            ended,
            dir,
            sudo_asked,
            helper,
            _permit: permit,
        })
    }

    /// Whether sudo asked for the password when it started this shell (see [`ShellOptions::sudo_prompt`]).
    pub(crate) fn sudo_asked(&self) -> bool {
        self.sudo_asked
    }

    /// Whether the node helper runs this shell's jobs.
    pub(crate) fn runs_helper(&self) -> bool {
        self.helper
    }

    /// The shell's folder on the node: private to the shell's user, removed when the shell ends.
    pub(crate) fn dir(&self) -> &str {
        &self.dir
    }

    /// Ends the shell at a clean end of the session: it removes its folder (and kills any job still
    /// running), and this waits up to `within` for it to have done so.
    pub(crate) async fn close(&self, within: Duration) {
        if self.is_alive() {
            let _ = self.writes.send(if self.helper {
                b"Q\n".to_vec()
            } else {
                b"exit 0\n".to_vec()
            });
        }
        let mut ended = self.ended.clone();
        let _ = tokio::time::timeout(within, ended.wait_for(|e| *e)).await;
    }

    /// False once the shell has ended; a new one is started for the next command.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.writes.is_closed()
    }

    /// Runs one command as a job; same contract as `Session::exec`.
    pub(crate) async fn run(
        &self,
        cmd: &Command,
        output: &(dyn Fn(Stream, String) + Send + Sync),
        cancel: &CancellationToken,
        lost: impl Fn(&str) -> SshError,
    ) -> Result<Exit, SshError> {
        let id = self.take_id();
        let (tx, frames) = mpsc::unbounded_channel();
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(
                id,
                Job {
                    frames: Some(tx),
                    ..Default::default()
                },
            );
        }
        let text = if self.helper {
            node_helper::job_request(id, &cmd.env, &cmd.script)
        } else {
            job_text(&self.nonce, id, cmd).into_bytes()
        };
        if !self.is_alive() || self.writes.send(text).is_err() {
            self.forget(id);
            return Err(lost("before the command could start"));
        }
        let mut guard = KillOnDrop {
            executor: self,
            id,
            armed: true,
        };
        let frames = futures::stream::unfold(frames, |mut f| async move { f.recv().await.map(|frame| (frame, f)) });
        let mut flushed = false;
        let followed = follow(frames, cancel, |frame| match frame {
            Frame::Line(stream, line) => {
                output(stream, line);
                Step::More
            }
            Frame::Exit(code) => Step::Exit(Exit::Code(code)),
            Frame::Done => {
                flushed = true;
                Step::Done
            }
            Frame::Gone => Step::Closed,
        })
        .await;
        let exit = match followed {
            // The guard kills the job.
            Followed::Cancelled => return Err(SshError::Cancelled),
            Followed::Failed(e) => return Err(e),
            Followed::Ended { exit, .. } => exit,
        };
        guard.armed = false;
        self.forget(id);
        if flushed {
            self.release_id(id);
        }
        exit.ok_or_else(|| lost("while a command ran"))
    }

    /// The id for a new job: one whose job reported `D` if there is one, else a new one. The id
    /// names the job's PID file (`ID.pid`), so reusing ids reuses those files: creating a new
    /// file per job cost more node CPU than anything else the wrapper does (~0.6 ms of ~3.5 on the
    /// bench machine's ext4 /tmp; overwriting one in place ~0.01 ms). `D` comes last of a job's
    /// frames, once every process that had its output has ended (the job's `sh` too), and after
    /// its PID file was cleared, so nothing of the earlier job can still write that file or send
    /// frames under that id. A job that was cancelled, timed out or never reported `D` (a process
    /// it started keeps its output open) keeps its id for the life of the shell.
    fn take_id(&self) -> u64 {
        if let Ok(mut free) = self.free_ids.lock()
            && let Some(id) = free.pop()
        {
            return id;
        }
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    fn release_id(&self, id: u64) {
        if let Ok(mut free) = self.free_ids.lock() {
            free.push(id);
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(&id);
        }
    }

    /// Kills a job's process group now, or as soon as it reports its PID.
    fn kill(&self, id: u64) {
        let Ok(mut jobs) = self.jobs.lock() else { return };
        let Some(job) = jobs.get_mut(&id) else { return };
        job.frames = None;
        if self.helper {
            // The helper kills by job id: it knows the job's process group from the start.
            let _ = self.writes.send(format!("K {id}\n").into_bytes());
            jobs.remove(&id);
            return;
        }
        match job.pid {
            Some(pid) => {
                let _ = self.writes.send(kill_text(pid).into_bytes());
                jobs.remove(&id);
            }
            None => job.kill_when_started = true,
        }
    }
}

/// Reads the shell's output until a line that `pick` recognises, and returns what it made of it;
/// None once the shell ended first.
async fn next_line<T>(
    read: &mut russh::ChannelReadHalf,
    buf: &mut LineBuffer,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> Option<T> {
    let mut found = None;
    while found.is_none() {
        match read.wait().await {
            Some(ChannelMsg::Data { data }) => buf.push(&data, &mut |l| {
                if found.is_none() {
                    found = pick(&l);
                }
            }),
            Some(ChannelMsg::ExitStatus { .. }) | Some(ChannelMsg::Close) | None => return None,
            Some(_) => {}
        }
    }
    found
}

/// Kills the job when `run` ends early: cancelled, or its future dropped.
struct KillOnDrop<'a> {
    executor: &'a Executor,
    id: u64,
    armed: bool,
}

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.executor.kill(self.id);
        }
    }
}

/// What the shell runs to kill a job: its process group and every process descended from it
/// (see `__kb_kill` in [`FUNCTIONS`]; the node helper does the same for `K ID`).
fn kill_text(pid: u32) -> String {
    format!("__kb_kill {pid}\n")
}

/// Handles one line from the shell: `<nonce> <id> <kind> [text]`. Lines without the nonce are not ours.
fn route(jobs: &Mutex<HashMap<u64, Job>>, nonce: &str, writes: &mpsc::WeakUnboundedSender<Vec<u8>>, line: &str) {
    let Some(rest) = line.strip_prefix(nonce).and_then(|r| r.strip_prefix(' ')) else {
        return;
    };
    let mut parts = rest.splitn(3, ' ');
    let (Some(id), Some(kind)) = (parts.next().and_then(|i| i.parse::<u64>().ok()), parts.next()) else {
        return;
    };
    let text = parts.next().unwrap_or("");
    let Ok(mut jobs) = jobs.lock() else { return };
    let Some(job) = jobs.get_mut(&id) else { return };
    let frame = match kind {
        "O" => Frame::Line(Stream::Stdout, text.to_string()),
        "E" => Frame::Line(Stream::Stderr, text.to_string()),
        "X" => Frame::Exit(text.trim().parse().unwrap_or(-1)),
        "D" => Frame::Done,
        "P" => {
            if let Ok(pid) = text.trim().parse::<u32>() {
                job.pid = Some(pid);
                if job.kill_when_started
                    && let Some(writes) = writes.upgrade()
                {
                    let _ = writes.send(kill_text(pid).into_bytes());
                    jobs.remove(&id);
                }
            }
            return;
        }
        _ => return,
    };
    if let Some(tx) = &job.frames {
        let _ = tx.send(frame);
    }
}

/// Shell functions every kubeboot shell on a node defines (the executor's and the file anchor's):
///
/// - `__kb_started PID` sets `__kb_s` to the process's start time (field 22 of /proc/PID/stat), to
///   `""` when there is no such process (or only its zombie), or to `?` when the node has no /proc;
/// - `__kb_kill PGID` kills a job: its process group and every descendant of the group's
///   processes, also those that left the group for a session of their own (apt runs dpkg in a
///   pty session of its own; a timed-out `apt-get install` killed by its group alone left dpkg
///   running). The group is stopped first and each descendant as it is found, so nothing forks
///   away while /proc is walked (again, until a walk finds nothing new); then all get SIGKILL.
///   Without /proc only the group is killed. Runs only when a job is cancelled or timed out, or
///   its shell ends while it runs;
/// - `__kb_clean DIR` kills (`__kb_kill`) the jobs whose `N.pid` files in DIR name one (the file's
///   first line; empty once that job ended), then removes DIR, again if a job that was just
///   starting wrote its file in between;
/// - `__kb_sweep TMP` removes this user's kubeboot folders in TMP whose shell (the `shell` file:
///   `PID STARTTIME`) no longer runs: what a shell that got no chance to clean up left behind (a
///   node that lost power, a shell killed with SIGKILL). A folder whose `shell` file is missing or
///   not yet complete, or that belongs to another user, is never touched, and nothing it names is killed.
const FUNCTIONS: &str = r#"__kb_started() {
  __kb_s=
  if [ -r /proc/self/stat ]; then
    [ -r "/proc/$1/stat" ] && read -r __kb_s < "/proc/$1/stat" || { __kb_s=; return 0; }
    __kb_s=${__kb_s##*) }
    set -- $__kb_s
    case "${1-}" in Z|X) __kb_s=; return 0 ;; esac
    if [ "$#" -ge 20 ]; then shift 19; __kb_s=$1; else __kb_s='?'; fi
  else
    __kb_s='?'
  fi
}
__kb_kill() {
  __kb_kg=$1
  kill -s STOP -- "-$__kb_kg" 2>/dev/null || return 0
  __kb_ks=" $__kb_kg "
  __kb_kn=1
  while [ "$__kb_kn" = 1 ] && [ -r /proc/self/stat ]; do
    __kb_kn=0
    for __kb_kf in /proc/[0-9]*/stat; do
      read -r __kb_kl < "$__kb_kf" 2>/dev/null || continue
      __kb_kp=${__kb_kl%% *}
      case "$__kb_ks" in *" $__kb_kp "*) continue ;; esac
      set -- ${__kb_kl##*) }
      case "$__kb_ks" in *" $2 "*) ;; *) [ "$3" = "$__kb_kg" ] || continue ;; esac
      kill -s STOP "$__kb_kp" 2>/dev/null
      __kb_ks="$__kb_ks$__kb_kp "
      __kb_kn=1
    done
  done
  kill -s KILL -- "-$__kb_kg" $__kb_ks 2>/dev/null
}
__kb_clean() {
  __kb_n=0
  while [ -d "$1" ] && [ "$__kb_n" -lt 20 ]; do
    for __kb_f in "$1"/*.pid; do
      [ -s "$__kb_f" ] && read -r __kb_p < "$__kb_f" && [ -n "$__kb_p" ] && __kb_kill "$__kb_p"
    done
    rm -rf -- "$1" 2>/dev/null && return 0
    __kb_n=$((__kb_n + 1))
    sleep 0.1 2>/dev/null || sleep 1
  done
}
__kb_sweep() {
  for __kb_o in "$1"/kubeboot-jobs.* "$1"/kubeboot-files.*; do
    [ -d "$__kb_o" ] && [ ! -L "$__kb_o" ] && [ -O "$__kb_o" ] && [ "$__kb_o" != "$__kb_d" ] || continue
    read -r __kb_p __kb_q < "$__kb_o/shell" 2>/dev/null || continue
    case "$__kb_p" in ''|*[!0-9]*) continue ;; esac
    __kb_started "$__kb_p"
    if [ "$__kb_s" = '?' ]; then
      kill -0 "$__kb_p" 2>/dev/null && continue
    elif [ -n "$__kb_s" ] && [ "$__kb_s" = "$__kb_q" ]; then
      continue
    fi
    rm -rf -- "$__kb_o" 2>/dev/null
  done
}
"#;

/// What the shell runs first: its frame descriptor, its own folder (`kubeboot-jobs.*`, or
/// `kubeboot-files.*` for a shell that only holds uploads in transit), a sweep of folders earlier
/// kubeboot shells of this user left behind, and the ways the folder goes away again:
///
/// - the shell's stdin ends (kubeboot closed the session, was killed, or its connection closed):
///   the EXIT trap;
/// - the shell gets HUP, INT, TERM or PIPE: the same cleanup in the trap (a shell reading its
///   script from stdin only takes the trap once that read returns, and `exit` inside a trap
///   would skip the EXIT trap, so each trap cleans up itself);
/// - nothing arrives at all (the connection dropped without a FIN, kubeboot frozen): kubeboot
///   sends a beat every `beat` seconds, and a watchdog that misses 6 in a row cleans up and
///   ends the shell with everything it started.
///
/// Prints `U` when the node lacks what jobs need (`setsid`, when `need_setsid`; `mktemp`), then
/// `R <folder>` when ready.
fn prelude(nonce: &str, beat: u64, need_setsid: bool) -> String {
    let kind = if need_setsid { "jobs" } else { "files" };
    let setsid = if need_setsid {
        "if ! command -v setsid >/dev/null 2>&1; then echo '@N - U'; exit 0; fi\n"
    } else {
        ""
    };
    let text = r#"exec 4>&1
@SETSID__kb_t=${TMPDIR:-/tmp}
__kb_d=$(mktemp -d "$__kb_t/kubeboot-@K.XXXXXXXX") || { echo '@N - U'; exit 0; }
@F__kb_started $$
echo "$$ $__kb_s" > "$__kb_d/shell"
__kb_end() {
  trap '' HUP INT TERM PIPE
  [ -n "${__kb_w-}" ] && kill -s TERM "$__kb_w" 2>/dev/null
  __kb_clean "$__kb_d"
}
trap '__kb_end' EXIT
trap '__kb_end; trap - EXIT; exit 129' HUP
trap '__kb_end; trap - EXIT; exit 130' INT
trap '__kb_end; trap - EXIT; exit 141' PIPE
trap '__kb_end; trap - EXIT; exit 143' TERM
__kb_sweep "$__kb_t"
(
  trap '__kb_m=0' USR1
  trap 'kill "$__kb_z" 2>/dev/null; exit 0' TERM
  __kb_m=0
  while [ "$__kb_m" -lt 6 ]; do
    sleep @B & __kb_z=$!
    while kill -0 "$__kb_z" 2>/dev/null; do wait "$__kb_z"; done
    __kb_m=$((__kb_m + 1))
  done
  __kb_clean "$__kb_d"
  kill -s KILL 0
) </dev/null >/dev/null 2>&1 4>&- &
__kb_w=$!
__kb_pfx() { while IFS= read -r __kb_l || [ -n "$__kb_l" ]; do printf '%s %s
' "$1" "$__kb_l"; done; }
echo "@N - R $__kb_d"
"#;
    text.replace("@SETSID", setsid)
        .replace("@F", FUNCTIONS)
        .replace("@K", kind)
        .replace("@B", &beat.max(1).to_string())
        .replace("@N", nonce)
}

/// The line kubeboot sends every beat: the watchdog's counter starts again.
const BEAT: &[u8] = b"kill -s USR1 \"$__kb_w\" 2>/dev/null\n";
/// The same for the node helper, which passes it on to the watchdog.
const HELPER_BEAT: &[u8] = b"B\n";

/// What clears a job's PID file in place: newlines over the PID written there (at most 7 digits
/// and a newline, Linux's largest `pid_max` being 2^22), so the file's first line is empty and no
/// digits of it are left for a later, shorter PID to be read with.
const CLEAR: &str = r"printf '\n\n\n\n\n\n\n\n'";

/// One job, as shell text for the executor. The job's own script goes in a quoted here-document
/// (no expansion) whose terminator holds the nonce, so no script line can end it early; a job with
/// `env` values goes through a pipe from `printf` instead (see below).
///
/// What each job costs the node, and why each piece is there (measured in dash by
/// `job_text_cost_in_dash` below): the persistent shell forks a background pipeline of two
/// processes, with no subshell around it. The left one runs the inner pipeline: one process waits
/// for the job and reports `X` (the job's exit status is only seen by its parent), the other
/// prefixes stderr. The right one prefixes stdout, and once it sees end of file (so every writer
/// of the job's output, and with it the stderr prefixer, is gone) clears the PID file and
/// reports `D`. The PID file is written and cleared in place (`1<>`: no new file, no truncation),
/// and its name is the job id, which is reused once a job reported `D` (see
/// [`Executor::take_id`]): a shell running jobs one after another keeps using one file. The job itself is one fork plus the exec of `setsid` and of `sh`: its own session
/// and process group, so cancel and timeouts can kill exactly it. Its `sh` runs the script as a
/// function with stdin from /dev/null: the whole script is parsed before anything runs, `exit`
/// ends the job with its status, and no subshell is needed. Five forks and two execs per job, from
/// seven forks before (a subshell around the pipeline, one around the script).
fn job_text(nonce: &str, id: u64, cmd: &Command) -> String {
    let tag = format!("{nonce} {id}");
    let end = format!("__KB_{nonce}_{id}");
    // A job whose folder is already gone started while its shell was ending: it does not run.
    let mut inner =
        format!("echo \"{tag} P $$\" >&4; exec 4>&-; echo $$ 1<> \"$__KB_D/{id}.pid\" || exit 1; unset __KB_D\n");
    for (name, value) in &cmd.env {
        inner.push_str(&format!("export {name}={}\n", quote(value)));
    }
    inner.push_str("__kb_job() {\n");
    inner.push_str(&cmd.script);
    if !cmd.script.ends_with('\n') {
        inner.push('\n');
    }
    inner.push_str("} </dev/null\n__kb_job\n");
    let feed = if cmd.env.is_empty() {
        format!("__KB_D=\"$__kb_d\" setsid sh -s <<'{end}'\n{inner}{end}\n")
    } else {
        // `env` values are often secrets, and some shells keep a here-document in a temporary file
        // (bash before 5.1 is /bin/sh on RHEL 8). These jobs reach `sh` through a pipe from the
        // printf builtin instead: nothing on the node's disk, nothing in its process list.
        format!("printf '%s' {} | __KB_D=\"$__kb_d\" setsid sh -s\n", quote(&inner))
    };
    // `jobs` first: a non-interactive dash never reaps background jobs on its own, so without it
    // every finished job would stay a zombie (and a job-table entry) for the life of the shell.
    // The pipeline's first process gets stdin from /dev/null; the second reads the first's stdout.
    format!(
        "jobs >/dev/null\n{{ {{ {feed}\
         echo \"{tag} X $?\" >&4; }} 2>&1 1>&3 3>&- | __kb_pfx '{tag} E' >&4; }} 3>&1 </dev/null | \
         {{ __kb_pfx '{tag} O' >&4; {CLEAR} 1<> \"$__kb_d/{id}.pid\"; echo '{tag} D' >&4; }} &\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::node_helper::PROTOCOL;

    #[test]
    fn a_job_cannot_end_its_here_document_early() {
        let cmd = Command {
            script: "echo EOF\n__KB_x_1\n".into(),
            ..Default::default()
        };
        let text = job_text("abc", 7, &cmd);
        assert_eq!(text.matches("\n__KB_abc_7\n").count(), 1);
        assert!(text.contains("<<'__KB_abc_7'"));
    }

    #[test]
    fn a_job_with_env_values_reaches_sh_through_a_pipe_not_a_here_document() {
        let cmd = Command {
            script: "echo \"$TOKEN\"\n".into(),
            env: vec![("TOKEN".into(), "s3cret".into())],
            ..Default::default()
        };
        let text = job_text("abc", 7, &cmd);
        assert!(!text.contains("<<"), "{text}");
        assert!(text.contains("printf '%s' 'echo "), "{text}");
        assert!(text.contains("export TOKEN='\\''s3cret'\\''\n"), "{text}");
    }

    /// The nonce of the cost measurements' shells and helpers.
    const COST_NONCE: &str = "0123456789abcdef";

    /// CPU seconds of every child this process has reaped so far (they count once reaped).
    fn children_cpu() -> f64 {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    }

    /// Runs `jobs` jobs of `script` one after the other in a local `dash -s` started with the
    /// prelude, as the executor does (the next job is sent once the previous one reported `D`, so
    /// it gets that one's id again), with the small environment a lean sshd gives; returns the CPU
    /// per job in milliseconds.
    fn cost_per_job(jobs: u64, text: impl Fn(&str, u64) -> String) -> f64 {
        let nonce = COST_NONCE;
        let mut dash = std::process::Command::new("dash");
        dash.arg("-s");
        let start = prelude(nonce, 60, true);
        run_jobs(dash, start.as_bytes(), &format!("{nonce} - R "), jobs, || {
            text(nonce, 1).into_bytes()
        })
    }

    /// Starts `program` with the small environment a lean sshd gives, sends it `start`, waits for a
    /// line beginning with `ready`, then sends `jobs` jobs one after the other (each once the last
    /// reported `D` as job 1, so it gets that one's id again); returns the CPU per job in
    /// milliseconds, of the program and everything it reaped.
    fn run_jobs(
        mut program: std::process::Command,
        start: &[u8],
        ready: &str,
        jobs: u64,
        job: impl Fn() -> Vec<u8>,
    ) -> f64 {
        use std::io::{BufRead, BufReader, Write};
        let nonce = COST_NONCE;
        let before = children_cpu();
        let mut child = program
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/tmp")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the program runs");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        stdin.write_all(start).expect("its start");
        let mut wait_for = |frame: &str| {
            for line in lines.by_ref() {
                if line.expect("a line").starts_with(frame) {
                    return;
                }
            }
            panic!("it ended before {frame}");
        };
        wait_for(ready);
        for _ in 0..jobs {
            stdin.write_all(&job()).expect("a job");
            wait_for(&format!("{nonce} 1 D"));
        }
        drop(stdin);
        child.wait().expect("it ends");
        (children_cpu() - before) * 1000.0 / jobs as f64
    }

    /// A measurement, not a check: what one `true` job costs in dash, beside what a bare `true`
    /// and the job's own spawn (`setsid sh`) cost in the same shell. On the 2-core bench machine at
    /// load 8: 3.45 ms per job (the seven-fork text before: ~4.0 ms), a bare `true` 0.02 ms, one
    /// fork 0.19 ms, `setsid sh -s` 1.69 ms (see benches/ssh/README.md).
    /// `cargo test -p kubeboot-core --lib job_text_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "prints CPU per job; run by hand"]
    fn job_text_cost_in_dash() {
        let n = 200;
        let job = cost_per_job(n, |nonce, id| {
            job_text(
                nonce,
                id,
                &Command {
                    script: "true\n".into(),
                    ..Default::default()
                },
            )
        });
        let bare = |body: &'static str| move |nonce: &str, id: u64| format!("{body}\necho '{nonce} {id} D'\n");
        let floor = cost_per_job(n, bare("true"));
        let spawn = cost_per_job(n, bare("setsid sh -s </dev/null"));
        let sh = cost_per_job(n, bare("sh -s </dev/null"));
        let fork = cost_per_job(n, bare("( true )"));
        let helper = helper_cost_per_job(n);
        println!(
            "CPU per job in dash: executor job {job:.2} ms; with the node helper {helper:.2} ms; \
             bare `true` {floor:.3} ms; one fork {fork:.2} ms; `sh` {sh:.2} ms; `setsid sh` {spawn:.2} ms"
        );
    }

    /// What one `true` job costs when the node helper runs it (built beside the test executable:
    /// `cargo build --bin kubeboot-node` first), in milliseconds of CPU of the helper and its jobs.
    fn helper_cost_per_job(jobs: u64) -> f64 {
        let exe = std::env::current_exe().expect("test executable");
        let helper = [
            exe.with_file_name("kubeboot-node"),
            exe.parent().unwrap().with_file_name("kubeboot-node"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .expect("kubeboot-node is built (cargo build --bin kubeboot-node)");
        let dir = std::env::temp_dir().join(format!("kubeboot-helper-cost.{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder");
        let nonce = COST_NONCE;
        let mut node = std::process::Command::new(helper);
        node.args([
            "serve",
            PROTOCOL,
            nonce,
            dir.to_str().unwrap(),
            &std::process::id().to_string(),
        ]);
        let cost = run_jobs(node, b"", &format!("{nonce} - R helper"), jobs, || {
            node_helper::job_request(1, &[], "true\n")
        });
        let _ = std::fs::remove_dir_all(&dir);
        cost
    }

    #[test]
    fn the_prelude_parses_in_dash_and_in_bash_as_sh() {
        for need_setsid in [true, false] {
            crate::ssh::script::assert_parses_in_dash_and_bash(&prelude("n0nce", 10, need_setsid));
        }
    }

    #[test]
    fn lines_without_the_nonce_are_ignored_and_frames_reach_their_job() {
        let jobs = Mutex::new(HashMap::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        jobs.lock().unwrap().insert(
            3,
            Job {
                frames: Some(tx),
                ..Default::default()
            },
        );
        let (writes, _queue) = mpsc::unbounded_channel();
        let writes = writes.downgrade();
        route(&jobs, "n0nce", &writes, "fake 3 X 0");
        route(&jobs, "n0nce", &writes, "n0nce 3 O X 0 looks like a frame");
        route(&jobs, "n0nce", &writes, "n0nce 3 X 5");
        assert!(matches!(rx.try_recv(), Ok(Frame::Line(Stream::Stdout, l)) if l == "X 0 looks like a frame"));
        assert!(matches!(rx.try_recv(), Ok(Frame::Exit(5))));
        assert!(rx.try_recv().is_err());
    }
}
