//! Tasks kubeboot runs itself, on the jump host, instead of over SSH on the node: `http:` checks (the LB IPs
//! and ingress hostnames answer from where the operator sits) and `s3_buckets:` (the buckets exist).
//!
//! The engine hands over a rendered task and the vault; this module fills the credentials in, sends the
//! requests, and reports line by line through a callback, like a command's output. Messages name the URL,
//! the bucket and what to check, never a credential: signed S3 URLs carry the access key in their query, so
//! a URL is only ever shown as the task wrote it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, HOST};
use reqwest::{Client, StatusCode};
use rusty_s3::actions::{CreateBucket, HeadBucket, HeadObject, PutObject};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use url::Url;

use crate::plan::{HttpCheck, S3Buckets};
use crate::secrets::Vault;

/// How long a connection attempt may take before the target counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a signed S3 request stays valid.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(300);
/// Characters of a response body shown in the task's output.
const EXCERPT_CHARS: usize = 160;
/// Bodies are read up to this size; a check never needs more.
const BODY_LIMIT: usize = 4 << 20;

/// Why a jump-host task failed. Every message says what to check from the jump host.
#[derive(Debug, thiserror::Error)]
pub enum JumpError {
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("`{url}` cannot be used: {why}")]
    BadUrl { url: String, why: String },
    #[error(
        "{what} did not answer from the jump host: {why} — check DNS, routing and firewalls between the jump host and it"
    )]
    Unreachable { what: String, why: String },
    #[error("GET {url} answered HTTP {got}, expected {expected}")]
    Status { url: String, got: u16, expected: String },
    #[error("GET {url} answered, but its body does not contain '{text}'")]
    Missing { url: String, text: String },
    #[error("bucket name `{bucket}` cannot be used: {why}")]
    BadBucket { bucket: String, why: String },
    #[error("S3 at {endpoint}: access denied for bucket {bucket} — check {keys}")]
    AccessDenied {
        endpoint: String,
        bucket: String,
        keys: String,
    },
    #[error("S3 at {endpoint}: unexpected HTTP {code} when {doing} bucket {bucket}{detail}")]
    S3Status {
        endpoint: String,
        bucket: String,
        doing: &'static str,
        code: u16,
        detail: String,
    },
}

/// Sends an `http:` check's GET and compares the answer; each step is reported through `out`.
pub async fn http(check: &HttpCheck, vault: &Vault, out: &(dyn Fn(String) + Sync)) -> Result<(), JumpError> {
    let (url, resolve) = target(check)?;
    // An address URL already carries the name (see `target`); a name URL gets it as the Host header.
    let header = check.host.as_ref().filter(|_| resolve.is_none());
    let client = client(check.insecure, resolve)?;
    let mut request = client.get(url);
    if let Some(host) = header {
        request = request.header(HOST, host.as_str());
    }
    if let Some(user) = &check.user {
        request = request.basic_auth(vault.fill(user), check.password.as_ref().map(|p| vault.fill(p)));
    }
    let shown = match &check.host {
        Some(host) => format!("GET {} (Host: {host})", check.url),
        None => format!("GET {}", check.url),
    };
    let unreachable = |e: reqwest::Error| JumpError::Unreachable {
        what: shown.clone(),
        why: cause(&e),
    };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    let body = read_body(response).await.map_err(unreachable)?;
    out(format!("{shown} -> HTTP {}", status_text(status)));
    let excerpt = excerpt(&body);
    if !excerpt.is_empty() {
        out(format!("body: {excerpt}"));
    }
    if !check.expect_status.contains(&status.as_u16()) {
        let expected: Vec<String> = check.expect_status.iter().map(u16::to_string).collect();
        return Err(JumpError::Status {
            url: check.url.clone(),
            got: status.as_u16(),
            expected: expected.join(" or "),
        });
    }
    for text in &check.contains {
        if !body.contains(text.as_str()) {
            return Err(JumpError::Missing {
                url: check.url.clone(),
                text: text.clone(),
            });
        }
        out(format!("body contains '{text}'"));
    }
    Ok(())
}

/// The URL to request and, when `host` names an address's site, the name to send instead of the address:
/// the request goes to the address while the URL (Host header, TLS name) carries the name.
fn target(check: &HttpCheck) -> Result<(Url, Option<(String, SocketAddr)>), JumpError> {
    let bad = |why: String| JumpError::BadUrl {
        url: check.url.clone(),
        why,
    };
    let mut url = Url::parse(&check.url).map_err(|e| bad(e.to_string()))?;
    let (Some(host), Some(ip)) = (&check.host, url_ip(&url)) else {
        return Ok((url, None));
    };
    url.set_host(Some(host))
        .map_err(|e| bad(format!("host `{host}` is not a host name ({e})")))?;
    Ok((url, Some((host.clone(), SocketAddr::new(ip, 0)))))
}

/// The URL's host when it is an IP address.
fn url_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// A client that goes straight to the target (no proxy: the check is about what the jump host reaches),
/// never follows redirects (a 302 is an answer to check), and verifies TLS unless told otherwise.
fn client(insecure: bool, resolve: Option<(String, SocketAddr)>) -> Result<Client, JumpError> {
    let mut builder = Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(insecure);
    if let Some((name, addr)) = resolve {
        builder = builder.resolve(&name, addr);
    }
    builder.build().map_err(|e| JumpError::Client(cause(&e)))
}

/// The body as text, up to [`BODY_LIMIT`] bytes.
async fn read_body(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= BODY_LIMIT {
            bytes.truncate(BODY_LIMIT);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `200 OK`.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// The start of a body on one line, whitespace collapsed.
fn excerpt(body: &str) -> String {
    let words: Vec<&str> = body.split_whitespace().collect();
    let line = words.join(" ");
    match line.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// What went wrong with a request, without its URL (a signed URL holds the access key): the innermost
/// cause, e.g. "Connection refused (os error 111)" or a DNS lookup failure.
fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut innermost: Option<&dyn std::error::Error> = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = Some(s);
        source = s.source();
    }
    match innermost {
        Some(s) => s.to_string(),
        None if e.is_builder() => "the request could not be built".into(),
        None => "the request failed".into(),
    }
}

/// The outcome for one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketState {
    Exists,
    Created,
}

/// Makes every bucket of an `s3_buckets:` task exist: HEAD it, PUT it when missing. Never deletes anything.
/// `keys` names where the credentials come from, for the access-denied message. Returns true when a
/// bucket was created.
pub async fn s3_buckets(
    task: &S3Buckets,
    vault: &Vault,
    keys: &str,
    out: &(dyn Fn(String) + Sync),
) -> Result<bool, JumpError> {
    let endpoint = Url::parse(&task.endpoint).map_err(|e| JumpError::BadUrl {
        url: task.endpoint.clone(),
        why: e.to_string(),
    })?;
    let credentials = Credentials::new(vault.fill(&task.access_key), vault.fill(&task.secret_key));
    let client = client(false, None)?;
    let s3 = S3 {
        client: &client,
        credentials: &credentials,
        endpoint: &task.endpoint,
        keys,
    };
    let mut created = false;
    for name in &task.buckets {
        let bucket = Bucket::new(endpoint.clone(), UrlStyle::Path, name.clone(), task.region.clone()).map_err(|e| {
            JumpError::BadBucket {
                bucket: name.clone(),
                why: e.to_string(),
            }
        })?;
        let state = s3.ensure(&bucket).await?;
        created |= state == BucketState::Created;
        let word = match state {
            BucketState::Exists => "exists",
            BucketState::Created => "created",
        };
        out(format!("bucket {name}: {word}"));
    }
    Ok(created)
}

/// Where a file goes in S3 and with which keys (the keys are secret placeholders, filled here only).
#[derive(Debug, Clone)]
pub struct S3Upload {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    Stored,
    /// An object of that name was there already: never overwritten.
    AlreadyThere,
}

/// Stores `bytes` as object `key`, the bucket created when missing; an existing object of that name is never
/// overwritten (backups). `keys` names where the credentials come from, for the access-denied message.
pub async fn s3_put_new(
    target: &S3Upload,
    key: &str,
    bytes: Vec<u8>,
    vault: &Vault,
    keys: &str,
) -> Result<Uploaded, JumpError> {
    let endpoint = Url::parse(&target.endpoint).map_err(|e| JumpError::BadUrl {
        url: target.endpoint.clone(),
        why: e.to_string(),
    })?;
    let credentials = Credentials::new(vault.fill(&target.access_key), vault.fill(&target.secret_key));
    let client = client(false, None)?;
    let s3 = S3 {
        client: &client,
        credentials: &credentials,
        endpoint: &target.endpoint,
        keys,
    };
    let bucket = Bucket::new(endpoint, UrlStyle::Path, target.bucket.clone(), target.region.clone()).map_err(|e| {
        JumpError::BadBucket {
            bucket: target.bucket.clone(),
            why: e.to_string(),
        }
    })?;
    s3.ensure(&bucket).await?;
    let head = HeadObject::new(&bucket, Some(&credentials), key).sign(SIGNATURE_LIFETIME);
    let response = client.head(head).send().await.map_err(|e| s3.unreachable(&e))?;
    match response.status() {
        StatusCode::OK => return Ok(Uploaded::AlreadyThere),
        StatusCode::NOT_FOUND => {}
        status => return Err(s3.refused(&bucket, "checking an object in", status, String::new())),
    }
    let put = PutObject::new(&bucket, Some(&credentials), key).sign(SIGNATURE_LIFETIME);
    let response = client
        .put(put)
        .header(CONTENT_LENGTH, bytes.len())
        .body(bytes)
        .send()
        .await
        .map_err(|e| s3.unreachable(&e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(Uploaded::Stored);
    }
    let body = read_body(response).await.unwrap_or_default();
    Err(s3.refused(&bucket, "uploading to", status, s3_code(&body)))
}

/// One S3 endpoint with its credentials.
struct S3<'a> {
    client: &'a Client,
    credentials: &'a Credentials,
    /// As the task wrote it, for messages.
    endpoint: &'a str,
    keys: &'a str,
}

impl S3<'_> {
    async fn ensure(&self, bucket: &Bucket) -> Result<BucketState, JumpError> {
        let url = HeadBucket::new(bucket, Some(self.credentials)).sign(SIGNATURE_LIFETIME);
        let response = self.client.head(url).send().await.map_err(|e| self.unreachable(&e))?;
        match response.status() {
            StatusCode::OK => Ok(BucketState::Exists),
            StatusCode::NOT_FOUND => self.create(bucket).await,
            status => Err(self.refused(bucket, "checking", status, String::new())),
        }
    }

    async fn create(&self, bucket: &Bucket) -> Result<BucketState, JumpError> {
        let action = CreateBucket::new(bucket, self.credentials);
        let url = action.sign(SIGNATURE_LIFETIME);
        let body = action.body();
        // An empty body (us-east-1) must still say so: S3 servers answer 411 to a PUT without a length.
        let response = self
            .client
            .put(url)
            .header(CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(BucketState::Created);
        }
        let body = read_body(response).await.unwrap_or_default();
        // Created meanwhile by someone else with the same keys (a second kubeboot, the operator): fine.
        if status == StatusCode::CONFLICT && body.contains("BucketAlreadyOwnedByYou") {
            return Ok(BucketState::Exists);
        }
        Err(self.refused(bucket, "creating", status, s3_code(&body)))
    }

    fn unreachable(&self, e: &reqwest::Error) -> JumpError {
        JumpError::Unreachable {
            what: format!("S3 endpoint {}", self.endpoint),
            why: cause(e),
        }
    }

    fn refused(&self, bucket: &Bucket, doing: &'static str, status: StatusCode, detail: String) -> JumpError {
        if status == StatusCode::FORBIDDEN {
            return JumpError::AccessDenied {
                endpoint: self.endpoint.to_string(),
                bucket: bucket.name().to_string(),
                keys: self.keys.to_string(),
            };
        }
        JumpError::S3Status {
            endpoint: self.endpoint.to_string(),
            bucket: bucket.name().to_string(),
            doing,
            code: status.as_u16(),
            detail,
        }
    }
}

/// The `<Code>` of an S3 error body, as ` (Code)`, or nothing.
fn s3_code(body: &str) -> String {
    let code = body
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.trim())
        .filter(|c| !c.is_empty() && c.len() < 80);
    code.map(|c| format!(" ({c})")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, host: Option<&str>) -> HttpCheck {
        HttpCheck {
            url: url.into(),
            host: host.map(str::to_string),
            expect_status: vec![200],
            contains: Vec::new(),
            user: None,
            password: None,
            insecure: false,
        }
    }

    #[test]
    fn a_host_for_an_address_goes_to_the_address_under_the_name() {
        let (url, resolve) = target(&check("http://192.168.101.210/api/health", Some("grafana.c1.lab"))).unwrap();
        assert_eq!(url.as_str(), "http://grafana.c1.lab/api/health");
        assert_eq!(
            resolve,
            Some(("grafana.c1.lab".into(), "192.168.101.210:0".parse().unwrap()))
        );
    }

    #[test]
    fn a_url_with_a_name_is_left_alone() {
        let (url, resolve) = target(&check("https://s3.lab:9000/x", Some("other.lab"))).unwrap();
        assert_eq!(url.as_str(), "https://s3.lab:9000/x");
        assert_eq!(resolve, None, "the Host header carries the name instead");
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt("{\n  \"status\":  \"green\"\n}\n"), "{ \"status\": \"green\" }");
        let long = "x".repeat(500);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT_CHARS + 1);
    }

    #[test]
    fn s3_error_codes_are_read_from_the_body() {
        let body = "<?xml version=\"1.0\"?><Error><Code>InvalidBucketName</Code><Message>x</Message></Error>";
        assert_eq!(s3_code(body), " (InvalidBucketName)");
        assert_eq!(s3_code("not xml"), "");
    }
}
