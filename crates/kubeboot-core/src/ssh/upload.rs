//! Putting a file on a node: compare first (sha256, mode, owner), send the bytes over SFTP to a
//! private temporary file (in the login shell's own folder, which goes away with that shell), then
//! `install` it in place (through sudo for become).

use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::script::quote;
use super::{Command, Session, SshError, Stream};

impl Session {
    /// Puts `content` at `dest` with `mode` (and `owner` "user[:group]"); with become, via a temp file in the
    /// login user's private temp dir + `sudo install`. Returns Ok(false) without writing when the file already
    /// has exactly this content, mode and owner (compared by sha256 on the node). Uses SFTP for the bytes.
    pub async fn upload(
        &self,
        dest: &str,
        content: &[u8],
        mode: u32,
        owner: Option<&str>,
        become_: bool,
        cancel: &CancellationToken,
    ) -> Result<bool, SshError> {
        let fail = |reason: String| SshError::Upload {
            dest: dest.to_string(),
            reason,
        };
        if !dest.starts_with('/') || dest.ends_with('/') {
            return Err(fail("the destination must be an absolute file path".into()));
        }
        let (user, group) = match owner {
            Some(o) => match o.split_once(':') {
                Some((u, g)) => (Some(u), Some(g)),
                None => (Some(o), None),
            },
            None => (None, None),
        };
        let node = self.inner.target.node.clone();
        let mode = format!("{:o}", mode & 0o7777);
        let sha = hex::encode(Sha256::digest(content));

        let check = format!(
            "d=$(dirname -- {dest})\n\
             if [ ! -d \"$d\" ]; then echo \"nodir $d\"; exit 0; fi\n\
             if [ -f {dest} ]; then set -- $(sha256sum < {dest}); echo \"file $1 $(stat -c '%a %U %G' -- {dest})\"; else echo absent; fi",
            dest = quote(dest)
        );
        let (status, errors) = self.capture(&check, become_, cancel).await?;
        let words: Vec<&str> = status.split_whitespace().collect();
        match words.as_slice() {
            ["nodir", dir] => {
                return Err(fail(format!(
                    "the folder {dir} does not exist on {node} — create it first (e.g. a run task with mkdir -p)"
                )));
            }
            ["file", s, m, u, g] => {
                if *s == sha && *m == mode && user.is_none_or(|x| x == *u) && group.is_none_or(|x| x == *g) {
                    return Ok(false);
                }
            }
            ["absent"] => {}
            _ => return Err(fail(format!("cannot inspect it on {node}: {}", errors.trim()))),
        }

        let dir = self.files_dir(cancel).await.map_err(|e| match e {
            SshError::Upload { reason, .. } => fail(reason),
            other => other,
        })?;
        let tmp = format!("{dir}/upload-{}", &sha[..16]);
        let written = tokio::select! {
            r = self.write_file(&tmp, content) => r,
            _ = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        if let Err(reason) = written {
            let _ = self.capture(&format!("rm -f -- {}", quote(&tmp)), false, cancel).await;
            return Err(fail(format!(
                "cannot write the temporary file {tmp} on {node}: {reason} — check free space and permissions there"
            )));
        }

        let mut install = format!("install -m {mode}");
        if let Some(u) = user {
            install.push_str(&format!(" -o {}", quote(u)));
        }
        if let Some(g) = group {
            install.push_str(&format!(" -g {}", quote(g)));
        }
        // The file and its folder reach the disk before the task counts as done: a node that loses power
        // (found on the VM lab with a hard reset during apt) otherwise comes back without files the journal
        // records as written. `sync FILE...` is coreutils 8.24+; elsewhere everything is synced.
        let script = format!(
            "{install} -- {tmp} {dest}; rc=$?; rm -f -- {tmp}
             if [ $rc -eq 0 ]; then sync -- {dest} \"$(dirname -- {dest})\" 2>/dev/null || sync; fi
             exit $rc",
            tmp = quote(&tmp),
            dest = quote(dest)
        );
        let lines = Mutex::new(Vec::new());
        let collect = |_: Stream, l: String| {
            if let Ok(mut v) = lines.lock() {
                v.push(l);
            }
        };
        let exit = self
            .exec(
                &Command {
                    script,
                    env: Vec::new(),
                    become_,
                },
                &collect,
                cancel,
            )
            .await?;
        if !exit.success() {
            let said = lines.into_inner().unwrap_or_default().join(" ");
            return Err(fail(format!("install on {node} failed: {said}")));
        }
        Ok(true)
    }

    /// Runs a short script, returning (stdout, stderr); a non-zero exit is not an error here.
    async fn capture(
        &self,
        script: &str,
        become_: bool,
        cancel: &CancellationToken,
    ) -> Result<(String, String), SshError> {
        let out = Mutex::new((String::new(), String::new()));
        let collect = |s: Stream, l: String| {
            if let Ok(mut o) = out.lock() {
                let buf = if s == Stream::Stdout { &mut o.0 } else { &mut o.1 };
                buf.push_str(&l);
                buf.push('\n');
            }
        };
        let cmd = Command {
            script: script.to_string(),
            env: Vec::new(),
            become_,
        };
        self.exec(&cmd, &collect, cancel).await?;
        Ok(out.into_inner().unwrap_or_default())
    }

    async fn write_file(&self, path: &str, content: &[u8]) -> Result<(), String> {
        let sftp = self
            .inner
            .sftp
            .get_or_try_init(|| async {
                let channel = self
                    .inner
                    .handle
                    .channel_open_session()
                    .await
                    .map_err(|e| e.to_string())?;
                channel
                    .request_subsystem(true, "sftp")
                    .await
                    .map_err(|e| e.to_string())?;
                russh_sftp::client::SftpSession::new(channel.into_stream())
                    .await
                    .map_err(|e| format!("SFTP is not available ({e})"))
            })
            .await?;
        let mut file = sftp.create(path).await.map_err(|e| e.to_string())?;
        file.write_all(content).await.map_err(|e| e.to_string())?;
        file.shutdown().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
