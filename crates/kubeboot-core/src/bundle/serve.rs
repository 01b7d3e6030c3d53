//! A small read-only HTTP file server for one bundle folder, answering on any byte stream (the
//! nodes reach it through a remote port forward over their SSH connection; see
//! [`crate::ssh::Session::forward_remote`]). GET and HEAD of regular files below the folder, with
//! single byte ranges (apt and curl resume with them); no listings, nothing outside the folder.
//! HTTP itself is hyper's.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite};

type Body = BoxBody<Bytes, std::io::Error>;

/// Serves the files below one folder.
#[derive(Debug, Clone)]
pub struct FileServer {
    /// The folder, canonical (symlinks resolved), so a resolved file can be checked to lie inside.
    root: Arc<PathBuf>,
}

impl FileServer {
    /// A server for `root`, which must be an existing folder.
    pub fn new(root: &Path) -> std::io::Result<FileServer> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!("{} is not a folder", root.display())));
        }
        Ok(FileServer { root: Arc::new(root) })
    }

    /// The folder served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Answers HTTP/1.1 requests on `stream` until the client closes it.
    pub async fn serve<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let server = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.answer(req).await) }
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            // apt sends several requests without waiting for the answers.
            .pipeline_flush(true)
            .serve_connection(io, service)
            .await
        {
            tracing::debug!("bundle connection ended: {e}");
        }
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        let Some(path) = self.resolve(req.uri().path()).await else {
            return text(StatusCode::FORBIDDEN, "outside the bundle\n");
        };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(_) => return text(StatusCode::NOT_FOUND, "not in the bundle\n"),
        };
        let len = match file.metadata().await {
            Ok(m) if m.is_file() => m.len(),
            _ => return text(StatusCode::NOT_FOUND, "not a file in the bundle\n"),
        };
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| byte_range(v, len));
        let (status, start, count) = match range {
            None | Some(Range::Ignored) => (StatusCode::OK, 0, len),
            Some(Range::Unsatisfiable) => {
                let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range outside the file\n");
                set(&mut r, header::CONTENT_RANGE, &format!("bytes */{len}"));
                return r;
            }
            Some(Range::Bytes { start, end }) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        };
        let body = if head {
            Empty::new().map_err(|never| match never {}).boxed()
        } else {
            if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n");
            }
            let frames = tokio_util::io::ReaderStream::new(file.take(count)).map_ok(Frame::data);
            StreamBody::new(frames).boxed()
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        set(&mut r, header::CONTENT_LENGTH, &count.to_string());
        set(&mut r, header::CONTENT_TYPE, "application/octet-stream");
        set(&mut r, header::ACCEPT_RANGES, "bytes");
        if status == StatusCode::PARTIAL_CONTENT {
            let end = start + count - 1;
            set(&mut r, header::CONTENT_RANGE, &format!("bytes {start}-{end}/{len}"));
        }
        r
    }

    /// The file a request path names, or None when it would leave the folder (`..`, or a symlink
    /// pointing out). A path that does not exist resolves (and then answers 404).
    async fn resolve(&self, uri_path: &str) -> Option<PathBuf> {
        let decoded = percent_encoding::percent_decode_str(uri_path).decode_utf8().ok()?;
        let relative = Path::new(decoded.trim_start_matches('/'));
        let mut path = self.root.to_path_buf();
        for part in relative.components() {
            match part {
                Component::Normal(p) => path.push(p),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        match tokio::fs::canonicalize(&path).await {
            Ok(real) if real.starts_with(self.root.as_path()) => Some(real),
            Ok(_) => None,
            Err(_) => Some(path),
        }
    }
}

/// A `Range` header as this server honours it.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Bytes `start..=end` of the file.
    Bytes { start: u64, end: u64 },
    /// A range that lies outside the file: 416.
    Unsatisfiable,
    /// Not understood or several ranges: the whole file (allowed by RFC 9110).
    Ignored,
}

fn byte_range(header: &str, len: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Range::Ignored;
    };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Ignored;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        // The last N bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return Range::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => None,
        },
        (false, true) => first.parse::<u64>().ok().map(|s| (s, len.saturating_sub(1))),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(len.saturating_sub(1)))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => Range::Ignored,
        Some((start, _)) if start >= len => Range::Unsatisfiable,
        Some((start, end)) => Range::Bytes { start, end },
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    set(&mut r, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    r
}

fn set(r: &mut Response<Body>, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_are_read_as_rfc_9110_says() {
        assert_eq!(byte_range("bytes=0-9", 100), Range::Bytes { start: 0, end: 9 });
        assert_eq!(byte_range("bytes=90-", 100), Range::Bytes { start: 90, end: 99 });
        assert_eq!(byte_range("bytes=-10", 100), Range::Bytes { start: 90, end: 99 });
        assert_eq!(byte_range("bytes=95-200", 100), Range::Bytes { start: 95, end: 99 });
        assert_eq!(byte_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Range::Ignored);
        assert_eq!(byte_range("items=0-1", 100), Range::Ignored);
        assert_eq!(byte_range("bytes=9-1", 100), Range::Ignored);
    }

    #[tokio::test]
    async fn paths_never_leave_the_folder() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("bundle");
        std::fs::create_dir_all(root.join("pool")).unwrap();
        std::fs::write(root.join("pool/a.deb"), "a").unwrap();
        std::fs::write(outer.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("link")).unwrap();
        let server = FileServer::new(&root).unwrap();
        let real_root = server.root().to_path_buf();
        assert_eq!(server.resolve("/pool/a.deb").await, Some(real_root.join("pool/a.deb")));
        assert_eq!(
            server.resolve("/pool/./a.deb").await,
            Some(real_root.join("pool/a.deb"))
        );
        assert_eq!(server.resolve("/../secret").await, None);
        assert_eq!(server.resolve("/pool/%2e%2e/%2e%2e/secret").await, None);
        assert_eq!(server.resolve("/link").await, None);
    }
}
