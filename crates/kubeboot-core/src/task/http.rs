//! `http:` a GET that kubeboot sends itself from the jump host: the LB addresses and ingress hostnames answer
//! from where the operator sits, with the status and body text the task expects.
//!
//! Credentials (`user`/`password`) are filled in only when the request is built. Messages name the URL and
//! what to check, never a credential. The HTTP client, its error causes and body reading are shared with
//! `s3_buckets`.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::header::HOST;
use reqwest::{Client, StatusCode};
use url::Url;

use crate::event::TaskStatus;
use crate::secrets::Vault;
use crate::spanned::{Fields, Node, Reader, Value, misspelled};

use super::{Failure, Kind, PAD, Render, RunCx, credential, user_name};

const KEYS: &[&str] = &[
    "url",
    "host",
    "expect_status",
    "contains",
    "user",
    "password",
    "insecure",
];
/// The per-attempt limit when the task sets none: a request must never hang a node's run.
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection attempt may take before the target counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of a response body shown in the task's output.
const EXCERPT_CHARS: usize = 160;
/// Bodies are read up to this size; a check never needs more.
const BODY_LIMIT: usize = 4 << 20;

/// Why a request from the jump host failed. Every message says what to check from the jump host.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
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
}

/// An `http:` task. As written every text is a template; rendered, the credentials are still secret
/// placeholders, filled in only when the request is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub url: String,
    /// The name to ask for (ingress hostnames), when `url` holds an address.
    pub host: Option<String>,
    /// Statuses that count as success. Default [200].
    pub expect_status: Vec<u16>,
    /// Texts the body must contain, every one of them.
    pub contains: Vec<String>,
    /// Basic auth.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Accept any TLS certificate (self-signed lab certificates). Default false.
    pub insecure: bool,
}

/// An `http:` task as written in the playbook (the same fields, not yet rendered).
pub type HttpDef = HttpCheck;

impl Kind for HttpCheck {
    const KEY: &'static str = "http";
    const ON_JUMP_HOST: bool = true;
    type Def = HttpCheck;

    fn parse(r: &mut Reader, n: &Node, fields: &mut Fields) -> Option<HttpCheck> {
        let entries = r.mapping(n, KEYS, "`http`")?;
        let mut h = HttpCheck {
            url: String::new(),
            host: None,
            expect_status: vec![200],
            contains: Vec::new(),
            user: None,
            password: None,
            insecure: false,
        };
        let mut url = None;
        for (key, _k, v) in &entries {
            let field = format!("http.{key}");
            match key.as_str() {
                "url" => url = r.field(&field, key, v, fields),
                "host" => h.host = r.field(&field, key, v, fields),
                "user" => h.user = r.field(&field, key, v, fields),
                "password" => h.password = r.field(&field, key, v, fields),
                "contains" => {
                    fields.insert(field, r.loc(v));
                    h.contains = r.texts("contains", v);
                }
                "expect_status" => h.expect_status = statuses(r, v),
                "insecure" => h.insecure = r.boolean("insecure", v).unwrap_or(false),
                _ => {}
            }
        }
        if h.expect_status.is_empty() {
            h.expect_status = vec![200];
        }
        let has = |key: &str| entries.iter().any(|(k, _, _)| k == key);
        if !has("url") && !misspelled(n, &["url"]) {
            r.error(n, "`http` has no `url`", "add `url: http://address/path`");
        }
        if has("password") && !has("user") {
            r.error(
                n,
                "`http` has a `password` but no `user`",
                "basic auth needs both: add `user`",
            );
        }
        h.url = url?;
        Some(h)
    }

    fn default_timeout() -> Option<Duration> {
        Some(DEFAULT_TIMEOUT)
    }

    fn render(h: &HttpCheck, r: &mut dyn Render) -> HttpCheck {
        HttpCheck {
            url: r.text(&h.url, "http.url"),
            host: h.host.as_ref().map(|v| r.text(v, "http.host")),
            expect_status: h.expect_status.clone(),
            // Each line of a rendered text is a text of its own, so a `{% for %}` loop can list many.
            contains: h
                .contains
                .iter()
                .flat_map(|v| {
                    let rendered = r.text(v, "http.contains");
                    rendered
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect(),
            user: h.user.as_ref().map(|v| r.text(v, "http.user")),
            password: h.password.as_ref().map(|v| r.text(v, "http.password")),
            insecure: h.insecure,
        }
    }

    fn fingerprint(&self, put: &mut dyn FnMut(&[u8])) {
        put(self.url.as_bytes());
        for optional in [&self.host, &self.user, &self.password] {
            match optional {
                Some(v) => {
                    put(b"some");
                    put(v.as_bytes());
                }
                None => put(b"none"),
            }
        }
        put(&(self.expect_status.len() as u64).to_le_bytes());
        for code in &self.expect_status {
            put(&code.to_le_bytes());
        }
        put(&(self.contains.len() as u64).to_le_bytes());
        for c in &self.contains {
            put(c.as_bytes());
        }
        put(if self.insecure { b"insecure" } else { b"verified" });
    }

    /// The request, then what counts as success.
    fn describe(&self, out: &mut String) {
        out.push_str(&format!("{PAD}GET {} (from the jump host)\n", self.url));
        if let Some(host) = &self.host {
            out.push_str(&format!("{PAD}  Host: {host}\n"));
        }
        if let Some(user) = &self.user {
            let password = self
                .password
                .as_deref()
                .map(credential)
                .unwrap_or_else(|| "none".into());
            out.push_str(&format!("{PAD}  basic auth {}, password {password}\n", user_name(user)));
        }
        let statuses: Vec<String> = self.expect_status.iter().map(u16::to_string).collect();
        out.push_str(&format!("{PAD}  expect HTTP {}\n", statuses.join(" or ")));
        for c in &self.contains {
            out.push_str(&format!("{PAD}  body contains '{c}'\n"));
        }
        if self.insecure {
            out.push_str(&format!("{PAD}  TLS certificate not verified (insecure: true)\n"));
        }
    }

    fn shown(&self) -> Vec<(&'static str, &str)> {
        let mut fields = vec![("http.url", self.url.as_str())];
        fields.extend(self.host.iter().map(|v| ("http.host", v.as_str())));
        fields.extend(self.contains.iter().map(|v| ("http.contains", v.as_str())));
        fields
    }

    fn problems(&self) -> Vec<super::Problem> {
        super::url_problems("http.url", &self.url)
    }

    fn filled(&self) -> Vec<Cow<'_, str>> {
        self.user
            .iter()
            .chain(self.password.iter())
            .map(|v| Cow::Borrowed(v.as_str()))
            .collect()
    }

    async fn run(&self, cx: &RunCx<'_>) -> Result<TaskStatus, Failure> {
        let out = |line: String| cx.output(line);
        cx.on_jump_host(DEFAULT_TIMEOUT, async {
            get(self, cx.vault, &out).await.map(|()| TaskStatus::Ok)
        })
        .await
    }
}

/// `expect_status`: one HTTP status or a list of them.
fn statuses(r: &mut Reader, v: &Node) -> Vec<u16> {
    let items: Vec<&Node> = match &v.value {
        Value::Seq(items) if !items.is_empty() => items.iter().collect(),
        _ => vec![v],
    };
    let mut out = Vec::new();
    for n in items {
        match &n.value {
            Value::Int(i) if (100..=599).contains(i) => out.push(*i as u16),
            _ => r.error(
                n,
                "`expect_status` must be an HTTP status (100 to 599) or a list of them",
                "e.g. `expect_status: 200` or `expect_status: [200, 404]`",
            ),
        }
    }
    out
}

/// Sends an `http:` check's GET and compares the answer; each step is reported through `out`.
pub async fn get(check: &HttpCheck, vault: &Vault, out: &(dyn Fn(String) + Sync)) -> Result<(), HttpError> {
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
    let unreachable = |e: reqwest::Error| HttpError::Unreachable {
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
        return Err(HttpError::Status {
            url: check.url.clone(),
            got: status.as_u16(),
            expected: expected.join(" or "),
        });
    }
    for text in &check.contains {
        if !body.contains(text.as_str()) {
            return Err(HttpError::Missing {
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
fn target(check: &HttpCheck) -> Result<(Url, Option<(String, SocketAddr)>), HttpError> {
    let bad = |why: String| HttpError::BadUrl {
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
pub(super) fn client(insecure: bool, resolve: Option<(String, SocketAddr)>) -> Result<Client, HttpError> {
    let mut builder = Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(insecure);
    if let Some((name, addr)) = resolve {
        builder = builder.resolve(&name, addr);
    }
    builder.build().map_err(|e| HttpError::Client(cause(&e)))
}

/// The body as text, up to [`BODY_LIMIT`] bytes.
pub(super) async fn read_body(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
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
pub(super) fn cause(e: &reqwest::Error) -> String {
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
}
