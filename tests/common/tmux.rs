//! A tmux server of a test's own, so the real binary runs in a real terminal: the test types with
//! `tmux send-keys` and reads the screen with `tmux capture-pane`, as an operator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How often the screen is read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// One detached 100x30 session running a script; the server is killed when dropped.
pub struct Tmux {
    socket: PathBuf,
    /// How long [`Tmux::wait_for`] and [`Tmux::exit_code`] wait.
    timeout: Duration,
}

impl Tmux {
    /// Starts `sh script` in a session on a socket of its own in `dir` (named after the script: a server
    /// still exiting on a reused socket makes the next one fail).
    pub fn start(dir: &Path, script: &Path, timeout: Duration) -> Tmux {
        let name = script
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmux = Tmux {
            socket: dir.join(format!("tmux-{name}.sock")),
            timeout,
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "100",
            "-y",
            "30",
            "-s",
            "kb",
            &format!("sh {}", script.display()),
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux (is it installed?): {e}"))
    }

    /// The visible screen as text.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "kb"]).stdout).into_owned()
    }

    /// The screen plus the normal screen's scrollback (what is left after a TUI gave the terminal back).
    pub fn history(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-S", "-200", "-t", "kb"]).stdout).into_owned()
    }

    /// True while the program in the pane uses the alternate screen.
    pub fn alternate_on(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "kb", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Presses keys (tmux key names: `y`, `Enter`, `PPage`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "kb"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "tmux send-keys {keys:?} failed");
    }

    /// Types `text` literally, then Enter.
    pub fn type_line(&self, text: &str) {
        let out = self.run(&["send-keys", "-t", "kb", "-l", text]);
        assert!(out.status.success(), "tmux send-keys -l {text:?} failed");
        self.keys(&["Enter"]);
    }

    /// Waits until `pred` holds for the visible screen; fails with the screen it last saw.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_in(what, Tmux::screen, pred)
    }

    /// Like [`Tmux::wait_for`] over the screen and its scrollback.
    pub fn wait_for_history(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_in(what, Tmux::history, pred)
    }

    fn wait_for_in(&self, what: &str, capture: fn(&Tmux) -> String, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = capture(self);
            if pred(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < self.timeout,
                "timed out waiting for {what}; the screen was:\n{screen}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the script wrote the program's exit code to `file`; returns it.
    pub fn exit_code(&self, file: &Path) -> i32 {
        let start = Instant::now();
        loop {
            // A half-written file does not parse yet: read again.
            if let Ok(code) = std::fs::read_to_string(file)
                && let Ok(code) = code.trim().parse()
            {
                return code;
            }
            assert!(
                start.elapsed() < self.timeout,
                "kubeboot did not exit; the screen was:\n{}",
                self.history()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
