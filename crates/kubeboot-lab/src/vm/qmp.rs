//! The smallest QMP client: connect to a guest's QMP socket, leave capabilities negotiation, run one command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Runs `execute` (a command without arguments, e.g. `system_reset`) and waits for its answer.
pub(crate) fn command(socket: &Path, execute: &str) -> std::io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // The greeting, then one answer per command (events may come in between; they carry "event").
    reader.read_line(&mut line)?;
    for cmd in ["qmp_capabilities", execute] {
        writer.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QMP closed the connection",
                ));
            }
            if line.contains("\"error\"") {
                return Err(std::io::Error::other(format!("QMP {cmd}: {}", line.trim())));
            }
            if line.contains("\"return\"") {
                break;
            }
        }
    }
    Ok(())
}
