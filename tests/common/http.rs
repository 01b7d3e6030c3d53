//! A file server on 127.0.0.1 for the tests that download: the files of a folder below one path
//! prefix (a release site, a chart repository, an apt repository, image archives). GET and HEAD,
//! `Range: bytes=N-` (206 with content-range), keep-alive (apt sends several requests on one
//! connection), 404 for anything else; every request is logged with its Range header.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path as asked (`/debian/./Packages`), case kept.
    pub path: String,
    /// The Range header's value, "" when none.
    pub range: String,
}

/// A running server; it lives until the test process ends.
pub struct FileServer {
    pub port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl FileServer {
    /// Serves the files of `dir` at `http://127.0.0.1:PORT{prefix}...` (`prefix` like `/debian/`;
    /// a leading `./` and sub-folders are allowed, empty and `..` parts are not).
    pub fn start(prefix: &str, dir: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (log, prefix, dir) = (seen.clone(), prefix.to_string(), dir.to_path_buf());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, prefix, dir) = (log.clone(), prefix.clone(), dir.clone());
                std::thread::spawn(move || connection(stream, &prefix, &dir, &log));
            }
        });
        FileServer { port, seen }
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Request> {
        self.seen.lock().expect("lock").clone()
    }

    /// The paths asked so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|r| r.path).collect()
    }

    /// Forgets the requests so far.
    pub fn clear(&self) {
        self.seen.lock().expect("lock").clear();
    }
}

fn connection(mut stream: TcpStream, prefix: &str, dir: &Path, log: &Mutex<Vec<Request>>) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).unwrap_or(0) != 1 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let mut lines = head.lines();
        let first = lines.next().unwrap_or("");
        let method = first.split_whitespace().next().unwrap_or("").to_string();
        let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
        let range = lines
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("range").then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        log.lock().expect("lock").push(Request {
            path: path.clone(),
            range: range.clone(),
        });
        let start: usize = range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let reply = match file(&path, prefix, dir).and_then(|f| std::fs::read(f).ok()) {
            Some(body) => {
                let part = body[start.min(body.len())..].to_vec();
                let status = if start > 0 {
                    format!(
                        "206 Partial Content\r\ncontent-range: bytes {start}-{}/{}",
                        body.len().saturating_sub(1),
                        body.len()
                    )
                } else {
                    "200 OK".to_string()
                };
                let mut r = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nlast-modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n",
                    part.len()
                )
                .into_bytes();
                if method != "HEAD" {
                    r.extend(part);
                }
                r
            }
            None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
        };
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

/// The file a path names below `prefix`, if it is a plain relative one.
fn file(path: &str, prefix: &str, dir: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(prefix)?.trim_start_matches("./");
    let plain = !rest.is_empty() && rest.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    plain.then(|| dir.join(rest))
}
