//! `wait:` a command run on the node every `interval` until it exits 0, within the task's `timeout`.

use std::time::{Duration, Instant};

use crate::event::TaskStatus;
use crate::spanned::{Fields, Node, Reader};

use super::{Failure, Kind, PAD, Render, RunCx, check_exit};

/// Pause between tries when the playbook sets no `interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The limit of the whole wait when the playbook sets no `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A `wait:` task as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitDef {
    /// The command that must exit 0 (a template).
    pub until: String,
    /// Pause between tries. Default 5s.
    pub interval: Duration,
}

/// A `wait:` task rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub until: String,
    pub interval: Duration,
}

impl Kind for Wait {
    const KEY: &'static str = "wait";
    type Def = WaitDef;

    fn parse(r: &mut Reader, v: &Node, fields: &mut Fields) -> Option<WaitDef> {
        r.field("wait", "wait", v, fields).map(|until| WaitDef {
            until,
            interval: DEFAULT_INTERVAL,
        })
    }

    fn default_timeout() -> Option<Duration> {
        Some(DEFAULT_TIMEOUT)
    }

    fn interval(def: &mut WaitDef) -> Option<&mut Duration> {
        Some(&mut def.interval)
    }

    fn render(def: &WaitDef, r: &mut dyn Render) -> Wait {
        Wait {
            until: r.text(&def.until, "wait"),
            interval: def.interval,
        }
    }

    fn fingerprint(&self, put: &mut dyn FnMut(&[u8])) {
        put(self.until.as_bytes());
        put(&self.interval.as_millis().to_le_bytes());
    }

    fn describe(&self, out: &mut String) {
        out.push_str(&format!(
            "{PAD}wait every {}:\n",
            humantime::format_duration(self.interval)
        ));
        super::block(out, "$ ", &self.until);
    }

    fn command_line(&self) -> Vec<(&'static str, &str)> {
        vec![("wait", &self.until)]
    }

    async fn run(&self, cx: &RunCx<'_>) -> Result<TaskStatus, Failure> {
        let limit = cx.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (exit, tail) = match cx.exec(&self.until, true, Some(left)).await {
                Err(Failure::Timeout(_)) => return Err(Failure::Timeout(limit)),
                other => other?,
            };
            if exit.success() {
                return Ok(TaskStatus::Ok);
            }
            if Instant::now() + self.interval >= deadline {
                let last = match check_exit(exit, tail) {
                    Err(f) => f.message(),
                    Ok(()) => String::new(),
                };
                return Err(Failure::Other(format!(
                    "still not true after {} (last try: {last})",
                    humantime::format_duration(limit)
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = cx.cancel.cancelled() => return Err(Failure::Cancelled),
            }
        }
    }
}
