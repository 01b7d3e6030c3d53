//! `run:` a shell script on the node (over SSH, via sudo with `become`).

use crate::event::TaskStatus;
use crate::spanned::{Fields, Node, Reader};

use super::{Kind, Render, RunCx, check_exit};

/// A `run:` task rendered: the script `sh` runs on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub command: String,
}

impl Kind for Run {
    const KEY: &'static str = "run";
    const REGISTERS: bool = true;
    /// The script as written (a template).
    type Def = String;

    fn parse(r: &mut Reader, v: &Node, fields: &mut Fields) -> Option<String> {
        r.field("run", "run", v, fields)
    }

    fn render(def: &String, r: &mut dyn Render) -> Run {
        Run {
            command: r.text(def, "run"),
        }
    }

    fn fingerprint(&self, put: &mut dyn FnMut(&[u8])) {
        put(self.command.as_bytes());
    }

    fn describe(&self, out: &mut String) {
        super::block(out, "$ ", &self.command);
    }

    fn command_line(&self) -> Vec<(&'static str, &str)> {
        vec![("run", &self.command)]
    }

    async fn run(&self, cx: &RunCx<'_>) -> Result<TaskStatus, super::Failure> {
        let (exit, tail) = cx.exec(&self.command, true, cx.timeout).await?;
        check_exit(exit, tail)?;
        Ok(TaskStatus::Changed)
    }
}
