//! `kubeboot-node`: the helper a persistent shell on a node hands its jobs to, so that a job costs
//! the node one fork and one exec (its `sh`) instead of the shell's job wrapper (five forks and
//! two execs; see `crates/kubeboot-core/src/ssh/executor.rs`, which starts it and speaks to it).
//!
//! kubeboot copies this program to the node once (to `~/.cache/kubeboot/`, or `/var/cache/kubeboot/`
//! for root, by its SHA-256) and the shell runs it in the foreground as
//! `kubeboot-node serve PROTOCOL NONCE FOLDER WATCHDOG`: everything after that on the shell's
//! stdin is for it, and when it ends the shell ends too (cleaning up its folder as always). A
//! kubeboot that speaks another PROTOCOL (a `kubeboot-node` of another build beside it) gets exit
//! status 3 before anything is read, and its shell runs the jobs itself.
//!
//! Requests, on stdin:
//! - `J ID NENV LEN` and a newline, then LEN bytes: NENV `NAME=VALUE` entries each ended by a NUL,
//!   then the job's script. The job runs as `sh -s` in a session and process group of its own,
//!   with the script on a pipe (never on a command line) run as a function with stdin
//!   `/dev/null`, the helper's environment plus the entries, and its PID in `FOLDER/ID.pid`
//!   (written before `sh` runs, cleared in place once its output ended; the shell's cleanup kills
//!   what those files name);
//! - `K ID`: kill a job, its process group and every process descended from it (see [`kill`]);
//! - `B`: a beat, passed on to the shell's watchdog (`WATCHDOG`) as SIGUSR1;
//! - `Q`, or the end of stdin: the end.
//!
//! Frames, on stdout, as the shell's job text writes them: `NONCE ID O LINE`, `NONCE ID E LINE`,
//! `NONCE ID X STATUS` (128 + the signal for a killed job), `NONCE ID D` (last: all its output was
//! read), and `NONCE - R helper` once ready. No `P` frame: kubeboot kills by job id, so a job costs
//! one frame (one SSH packet) less.
//!
//! Linux only (it reads /proc to kill), no dependencies beyond libc: kubeboot only uses it on a
//! node whose `uname -m` is the architecture it was built for, and falls back to the shell's jobs
//! wherever it cannot run.

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("kubeboot-node runs on Linux nodes only");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
fn main() {
    node::main();
}

#[cfg(target_os = "linux")]
mod node {
    use std::collections::{HashMap, HashSet};
    use std::ffi::{CStr, CString, OsStr, OsString};
    use std::fs::File;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::{Arc, Mutex};

    /// Longest line piece sent in one frame; kubeboot splits lines at 64 KiB, so a piece with its
    /// frame prefix stays below that.
    const MAX_PIECE: usize = 60 * 1024;
    /// What this helper speaks: the requests and frames below.
    const PROTOCOL: &str = "1";
    /// How often a job whose output stays open (a background process holds it) is checked for
    /// having exited, so `X` is not held back by that process.
    const EXIT_CHECK_MS: i32 = 100;

    struct Args {
        nonce: String,
        dir: String,
        watchdog: libc::pid_t,
    }

    /// The process group of each job whose output has not ended yet, by job id.
    type Running = Arc<Mutex<HashMap<u64, libc::pid_t>>>;

    pub(super) fn main() {
        let args: Vec<String> = std::env::args().collect();
        if args.get(1).is_some_and(|a| a == "serve") && args.get(2).is_some_and(|p| p != PROTOCOL) {
            eprintln!(
                "kubeboot-node speaks protocol {PROTOCOL}, not {}: use the kubeboot-node of the same build",
                args[2]
            );
            std::process::exit(3);
        }
        let Some(args) = parse_args(&args) else {
            eprintln!("usage: kubeboot-node serve {PROTOCOL} NONCE FOLDER WATCHDOG-PID (started by kubeboot)");
            std::process::exit(2);
        };
        let sh = find_sh();
        // Every job starts from the environment the helper got, read once.
        let base: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let running = Running::default();
        frames(format!("{} - R helper\n", args.nonce).as_bytes());
        let stdin = std::io::stdin();
        let mut input = BufReader::new(stdin.lock());
        let mut header = Vec::new();
        loop {
            header.clear();
            match input.read_until(b'\n', &mut header) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&header);
            let mut words = line.split_whitespace();
            match words.next() {
                Some("J") => {
                    let numbers: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
                    let [id, nenv, len] = numbers[..] else { break };
                    let mut payload = vec![0; len as usize];
                    if input.read_exact(&mut payload).is_err() {
                        break;
                    }
                    start_job(&args, &sh, &base, &running, id, nenv as usize, &payload);
                }
                Some("K") => {
                    let id = words.next().and_then(|w| w.parse::<u64>().ok());
                    let pgid = id.and_then(|id| running.lock().ok()?.get(&id).copied());
                    if let Some(pgid) = pgid.filter(|p| *p > 1) {
                        kill(pgid);
                    }
                }
                Some("B") => {
                    // SAFETY: kill only sends a signal.
                    unsafe { libc::kill(args.watchdog, libc::SIGUSR1) };
                }
                Some("Q") => break,
                _ => {}
            }
        }
        std::process::exit(0);
    }

    fn parse_args(args: &[String]) -> Option<Args> {
        let [_, serve, protocol, nonce, dir, watchdog] = args else {
            return None;
        };
        if serve != "serve" || protocol != PROTOCOL || nonce.is_empty() || nonce.contains(char::is_whitespace) {
            return None;
        }
        Some(Args {
            nonce: nonce.clone(),
            dir: dir.clone(),
            watchdog: watchdog.parse().ok().filter(|p| *p > 1)?,
        })
    }

    /// The `sh` the shell would run: the first on PATH, found once.
    fn find_sh() -> CString {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("sh"))
            .find(|p| p.is_file())
            .and_then(|p| CString::new(p.into_os_string().into_vec()).ok())
            .unwrap_or_else(|| c"/bin/sh".into())
    }

    /// Writes frames to stdout in one piece; the channel being gone ends the helper (and with it
    /// the shell, which cleans up).
    fn frames(bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        if out.write_all(bytes).and_then(|_| out.flush()).is_err() {
            std::process::exit(0);
        }
    }

    fn start_job(
        args: &Args,
        sh: &CStr,
        base: &[(OsString, OsString)],
        running: &Running,
        id: u64,
        nenv: usize,
        payload: &[u8],
    ) {
        let tag = format!("{} {id}", args.nonce);
        let mut parts = payload.splitn(nenv + 1, |&b| b == 0);
        let env: Vec<(&OsStr, &OsStr)> = parts
            .by_ref()
            .take(nenv)
            .filter_map(|entry| {
                let eq = entry.iter().position(|&b| b == b'=')?;
                Some((OsStr::from_bytes(&entry[..eq]), OsStr::from_bytes(&entry[eq + 1..])))
            })
            .collect();
        let script = parts.next().unwrap_or_default();
        let mut text = b"__kb_job() {\n".to_vec();
        text.extend_from_slice(script);
        if !script.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(b"} </dev/null\n__kb_job\n");

        let pid_file = format!("{}/{id}.pid", args.dir);
        let mut job = match spawn_sh(sh, base, &env, &pid_file) {
            Ok(job) => job,
            Err(e) => {
                // A job whose folder is already gone started while its shell was ending: it does not run.
                frames(format!("{tag} E kubeboot-node: cannot start sh: {e}\n{tag} X 127\n{tag} D\n").as_bytes());
                return;
            }
        };
        if let Ok(mut jobs) = running.lock() {
            jobs.insert(id, job.pid);
        }
        let running = running.clone();
        let _ = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            follow(&tag, &pid_file, &mut job, text, || {
                if let Ok(mut jobs) = running.lock() {
                    jobs.remove(&id);
                }
            })
        });
    }

    /// A job's `sh -s`, started with its script pipe on stdin and its output on two pipes.
    struct Job {
        pid: libc::pid_t,
        stdin: Option<File>,
        stdout: Option<File>,
        stderr: Option<File>,
    }

    impl Job {
        /// The job's exit status (128 + the signal for a killed one) once it has exited: waits for
        /// it with `block`, else only looks.
        fn exit(&self, block: bool) -> Option<i32> {
            let mut status = 0;
            loop {
                // SAFETY: waitpid on our own child, writing into a local.
                let r = unsafe { libc::waitpid(self.pid, &mut status, if block { 0 } else { libc::WNOHANG }) };
                if r == self.pid {
                    break;
                }
                if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return if r < 0 { Some(-1) } else { None };
            }
            Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                -1
            })
        }
    }

    /// Starts `sh -s` for a job with posix_spawn (a vfork: nothing of the helper is copied, as a
    /// fork would copy it) in a session and process group of its own, with default signal
    /// handling and mask, and the helper's environment plus `env`. Its PID file is opened first (no
    /// folder, no job) and gets the PID right after the start.
    fn spawn_sh(
        sh: &CStr,
        base: &[(OsString, OsString)],
        env: &[(&OsStr, &OsStr)],
        pid_file: &str,
    ) -> std::io::Result<Job> {
        let mut pid_out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(pid_file)?;
        let envp: Vec<CString> = base
            .iter()
            .map(|(n, v)| (n.as_os_str(), v.as_os_str()))
            .filter(|(name, _)| !env.iter().any(|(n, _)| n == name))
            .chain(env.iter().copied())
            .filter_map(|(n, v)| {
                let mut entry = n.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(v.as_bytes());
                CString::new(entry).ok()
            })
            .collect();
        let envp_ptrs: Vec<*mut libc::c_char> = envp
            .iter()
            .map(|e| e.as_ptr() as *mut libc::c_char)
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect();
        let argv: [*mut libc::c_char; 3] = [sh.as_ptr() as *mut _, c"-s".as_ptr() as *mut _, std::ptr::null_mut()];
        let mut pipes = [[-1; 2]; 3];
        // SAFETY: plain libc calls on locals; every descriptor made here is closed or owned by a File.
        unsafe {
            for i in 0..pipes.len() {
                if libc::pipe2(pipes[i].as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                    let e = std::io::Error::last_os_error();
                    for fd in pipes[..i].iter().flatten() {
                        libc::close(*fd);
                    }
                    return Err(e);
                }
            }
            let [input, output, errors] = pipes;
            let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            libc::posix_spawn_file_actions_init(&mut actions);
            libc::posix_spawn_file_actions_adddup2(&mut actions, input[0], 0);
            libc::posix_spawn_file_actions_adddup2(&mut actions, output[1], 1);
            libc::posix_spawn_file_actions_adddup2(&mut actions, errors[1], 2);
            libc::posix_spawnattr_init(&mut attr);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::posix_spawnattr_setsigmask(&mut attr, &none);
            let mut default: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut default);
            libc::sigaddset(&mut default, libc::SIGPIPE);
            libc::posix_spawnattr_setsigdefault(&mut attr, &default);
            libc::posix_spawnattr_setflags(
                &mut attr,
                libc::POSIX_SPAWN_SETSID
                    | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
                    | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short,
            );
            let mut pid: libc::pid_t = 0;
            let rc = libc::posix_spawn(
                &mut pid,
                sh.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp_ptrs.as_ptr(),
            );
            libc::posix_spawn_file_actions_destroy(&mut actions);
            libc::posix_spawnattr_destroy(&mut attr);
            for fd in [input[0], output[1], errors[1]] {
                libc::close(fd);
            }
            if rc != 0 {
                for fd in [input[1], output[0], errors[0]] {
                    libc::close(fd);
                }
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            // The PID at the start of the file, in place (no truncation, no new file after the
            // first use of an id); the shell's cleanup kills what these files name.
            let _ = pid_out.write_all(format!("{pid}\n").as_bytes());
            Ok(Job {
                pid,
                stdin: Some(File::from_raw_fd(input[1])),
                stdout: Some(File::from_raw_fd(output[0])),
                stderr: Some(File::from_raw_fd(errors[0])),
            })
        }
    }

    /// One job, on a thread of its own: sends it its script, relays its output line by line, and
    /// reports `X` when it exits and `D` once its output has ended too (`ended` runs just before).
    fn follow(tag: &str, pid_file: &str, child: &mut Job, text: Vec<u8>, ended: impl FnOnce()) {
        if let Some(mut stdin) = child.stdin.take() {
            // sh reads the whole function before it runs anything; a sh that ended early
            // (EPIPE) shows in its exit status.
            let _ = stdin.write_all(&text);
        }
        let mut out = Stream::new(child.stdout.take(), format!("{tag} O "));
        let mut err = Stream::new(child.stderr.take(), format!("{tag} E "));
        let mut exited = false;
        loop {
            let mut batch = Vec::new();
            let open: Vec<&mut Stream> = [&mut out, &mut err].into_iter().filter(|s| s.fd().is_some()).collect();
            if !open.is_empty() {
                let mut fds: Vec<libc::pollfd> = open
                    .iter()
                    .map(|s| libc::pollfd {
                        fd: s.fd().unwrap_or(-1),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                let timeout = if exited { -1 } else { EXIT_CHECK_MS };
                // SAFETY: poll on a live array of pollfd.
                let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
                if ready > 0 {
                    for (stream, fd) in open.into_iter().zip(&fds) {
                        if fd.revents != 0 {
                            stream.read_into(&mut batch);
                        }
                    }
                }
            }
            let output_ended = out.fd().is_none() && err.fd().is_none();
            if !exited && let Some(code) = child.exit(output_ended) {
                exited = true;
                batch.extend_from_slice(format!("{tag} X {code}\n").as_bytes());
            }
            if exited && output_ended {
                ended();
                clear_pid(pid_file);
                batch.extend_from_slice(format!("{tag} D\n").as_bytes());
                frames(&batch);
                return;
            }
            if !batch.is_empty() {
                frames(&batch);
            }
        }
    }

    /// Newlines over the PID at the start of the file, in place: its first line is empty (the
    /// shell's cleanup skips it) and no digit is left for a shorter PID to be read with later.
    fn clear_pid(path: &str) {
        if let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = file.write_all(b"\n\n\n\n\n\n\n\n");
        }
    }

    /// One of a job's output pipes, cut into lines.
    struct Stream {
        pipe: Option<File>,
        prefix: String,
        pending: Vec<u8>,
    }

    impl Stream {
        fn new(pipe: Option<File>, prefix: String) -> Stream {
            Stream {
                pipe,
                prefix,
                pending: Vec::new(),
            }
        }

        fn fd(&self) -> Option<i32> {
            self.pipe.as_ref().map(|p| p.as_raw_fd())
        }

        /// Reads what is there; appends a frame for every complete line (and, at the end of the
        /// output, for a last line without a newline) to `batch`.
        fn read_into(&mut self, batch: &mut Vec<u8>) {
            let Some(pipe) = self.pipe.as_mut() else { return };
            let mut buf = [0u8; 16 * 1024];
            let n = match pipe.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
                Err(_) => 0,
            };
            if n == 0 {
                self.pipe = None;
                if !self.pending.is_empty() {
                    let last = std::mem::take(&mut self.pending);
                    self.frame(&last, batch);
                }
                return;
            }
            self.pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
                let line = self.pending[start..start + pos].to_vec();
                self.frame(&line, batch);
                start += pos + 1;
            }
            self.pending.drain(..start);
            while self.pending.len() >= MAX_PIECE {
                let cut = char_boundary(&self.pending, MAX_PIECE);
                let piece: Vec<u8> = self.pending.drain(..cut).collect();
                self.frame(&piece, batch);
            }
        }

        fn frame(&self, mut line: &[u8], batch: &mut Vec<u8>) {
            loop {
                let cut = if line.len() > MAX_PIECE {
                    char_boundary(line, MAX_PIECE)
                } else {
                    line.len()
                };
                batch.extend_from_slice(self.prefix.as_bytes());
                batch.extend_from_slice(&line[..cut]);
                batch.push(b'\n');
                line = &line[cut..];
                if line.is_empty() {
                    return;
                }
            }
        }
    }

    /// The last UTF-8 character boundary at or before `at` (at most 3 bytes back).
    fn char_boundary(bytes: &[u8], at: usize) -> usize {
        (at.saturating_sub(3)..=at)
            .rev()
            .find(|&i| i == 0 || i >= bytes.len() || bytes[i] & 0xC0 != 0x80)
            .unwrap_or(at)
    }

    /// Kills a job: its process group and every process descended from the group's processes, also
    /// one that left the group for a session of its own (apt runs dpkg in a pty session). The group
    /// is stopped first and each descendant as it is found, so nothing forks away while /proc is
    /// walked (again, until a walk finds nothing new); then all get SIGKILL. The same as the shell's
    /// `__kb_kill`.
    fn kill(pgid: libc::pid_t) {
        // SAFETY: kill only sends signals.
        if unsafe { libc::kill(-pgid, libc::SIGSTOP) } != 0 {
            return;
        }
        let mut found: HashSet<libc::pid_t> = HashSet::from([pgid]);
        let mut more = true;
        while more {
            more = false;
            let Ok(entries) = std::fs::read_dir("/proc") else { break };
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else {
                    continue;
                };
                if found.contains(&pid) {
                    continue;
                }
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // After the command name in parentheses: state, ppid, pgrp, ...
                let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
                    continue;
                };
                let fields: Vec<&str> = rest.split(' ').collect();
                let (Some(ppid), Some(pgrp)) = (
                    fields.get(1).and_then(|f| f.parse::<libc::pid_t>().ok()),
                    fields.get(2).and_then(|f| f.parse::<libc::pid_t>().ok()),
                ) else {
                    continue;
                };
                if found.contains(&ppid) || pgrp == pgid {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGSTOP) };
                    found.insert(pid);
                    more = true;
                }
            }
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
            for pid in found {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lines_are_framed_and_long_ones_cut_at_a_character() {
            let s = Stream {
                pipe: None,
                prefix: "n 1 O ".into(),
                pending: Vec::new(),
            };
            let mut batch = Vec::new();
            s.frame(b"hello", &mut batch);
            assert_eq!(batch, b"n 1 O hello\n");
            let long = "é".repeat(MAX_PIECE);
            batch.clear();
            s.frame(long.as_bytes(), &mut batch);
            for piece in batch.split(|&b| b == b'\n').filter(|p| !p.is_empty()) {
                assert!(piece.len() <= MAX_PIECE + 6);
                assert!(std::str::from_utf8(piece).is_ok(), "cut inside a character");
            }
        }

        #[test]
        fn arguments_must_be_complete() {
            let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).is_some();
            assert!(a(&["kubeboot-node", "serve", PROTOCOL, "abc", "/tmp/x", "42"]));
            assert!(!a(&["kubeboot-node", "serve", PROTOCOL, "abc", "/tmp/x"]));
            assert!(!a(&["kubeboot-node", "serve", PROTOCOL, "abc", "/tmp/x", "1"]));
            assert!(!a(&["kubeboot-node", "serve", "0", "abc", "/tmp/x", "42"]));
            assert!(!a(&["kubeboot-node", "run", PROTOCOL, "abc", "/tmp/x", "42"]));
        }
    }
}
