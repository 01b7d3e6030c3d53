//! `s3_buckets:` buckets kubeboot makes sure exist, from the jump host: HEAD each one, PUT the missing ones.
//! Never deletes anything. [`put_new`] (backups to S3) uses the same client and messages.
//!
//! The keys stay secret placeholders in the plan and are filled in only when a request is signed; signed URLs
//! carry the access key in their query, so a URL is only ever shown as the task wrote it.

use std::borrow::Cow;
use std::time::Duration;

use reqwest::header::CONTENT_LENGTH;
use reqwest::{Client, StatusCode};
use rusty_s3::actions::{CreateBucket, HeadBucket, HeadObject, PutObject};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use url::Url;

use crate::event::TaskStatus;
use crate::inventory::{Inventory, SecretSource};
use crate::secrets::Vault;
use crate::spanned::{Fields, Node, Reader, misspelled};

use super::http::{self, HttpError, cause, client, read_body};
use super::{Failure, Kind, PAD, Render, RunCx, credential};

const KEYS: &[&str] = &["endpoint", "region", "buckets", "access_key", "secret_key"];
/// How long a signed S3 request stays valid.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(300);

/// Why an `s3_buckets:` task failed. Every message says what to check from the jump host.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error(transparent)]
    Http(#[from] HttpError),
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

/// An `s3_buckets:` task. As written every text is a template (the keys normally `{{ secrets.NAME }}`);
/// rendered, the keys are still secret placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Buckets {
    /// `http(s)://host[:port]`, addressed path-style.
    pub endpoint: String,
    pub region: String,
    pub buckets: Vec<String>,
    pub access_key: String,
    pub secret_key: String,
}

/// An `s3_buckets:` task as written in the playbook (the same fields, not yet rendered).
pub type S3BucketsDef = S3Buckets;

impl Kind for S3Buckets {
    const KEY: &'static str = "s3_buckets";
    const ON_JUMP_HOST: bool = true;
    type Def = S3Buckets;

    fn parse(r: &mut Reader, n: &Node, fields: &mut Fields) -> Option<S3Buckets> {
        let entries = r.mapping(n, KEYS, "`s3_buckets`")?;
        let mut got: std::collections::BTreeMap<&str, String> = Default::default();
        let mut buckets = Vec::new();
        for (key, _k, v) in &entries {
            if key == "buckets" {
                fields.insert("s3_buckets.buckets".into(), r.loc(v));
                buckets = r.texts("buckets", v);
                if buckets.is_empty() {
                    r.error(v, "`buckets` is empty", "list the bucket names: `buckets: [a, b]`");
                }
            } else if let Some(text) = r.field(&format!("s3_buckets.{key}"), key, v, fields) {
                let key = KEYS.iter().copied().find(|k| k == key).unwrap_or_default();
                got.insert(key, text);
            }
        }
        let mut missing = false;
        for key in KEYS {
            let written = entries.iter().any(|(k, _, _)| k == key);
            if !written && !misspelled(n, &[key]) {
                r.error(
                    n,
                    format!("`s3_buckets` has no `{key}`"),
                    "it needs endpoint, region, buckets, access_key and secret_key",
                );
            }
            missing |= !written;
        }
        if missing {
            return None;
        }
        let mut take = |key: &str| got.remove(key);
        Some(S3Buckets {
            endpoint: take("endpoint")?,
            region: take("region")?,
            buckets,
            access_key: take("access_key")?,
            secret_key: take("secret_key")?,
        })
    }

    fn default_timeout() -> Option<Duration> {
        Some(http::DEFAULT_TIMEOUT)
    }

    fn render(b: &S3Buckets, r: &mut dyn Render) -> S3Buckets {
        S3Buckets {
            endpoint: r.text(&b.endpoint, "s3_buckets.endpoint"),
            region: r.text(&b.region, "s3_buckets.region"),
            buckets: b.buckets.iter().map(|v| r.text(v, "s3_buckets.buckets")).collect(),
            access_key: r.text(&b.access_key, "s3_buckets.access_key"),
            secret_key: r.text(&b.secret_key, "s3_buckets.secret_key"),
        }
    }

    fn fingerprint(&self, put: &mut dyn FnMut(&[u8])) {
        put(self.endpoint.as_bytes());
        put(self.region.as_bytes());
        put(&(self.buckets.len() as u64).to_le_bytes());
        for bucket in &self.buckets {
            put(bucket.as_bytes());
        }
        put(self.access_key.as_bytes());
        put(self.secret_key.as_bytes());
    }

    fn describe(&self, out: &mut String) {
        out.push_str(&format!(
            "{PAD}S3 buckets {} at {} (from the jump host)\n",
            self.buckets.join(", "),
            self.endpoint
        ));
        out.push_str(&format!(
            "{PAD}  region {}, path-style; missing buckets are created, nothing is deleted\n",
            self.region
        ));
        out.push_str(&format!(
            "{PAD}  keys {} / {}\n",
            credential(&self.access_key),
            credential(&self.secret_key)
        ));
    }

    fn shown(&self) -> Vec<(&'static str, &str)> {
        let mut fields = vec![
            ("s3_buckets.endpoint", self.endpoint.as_str()),
            ("s3_buckets.region", self.region.as_str()),
        ];
        fields.extend(self.buckets.iter().map(|v| ("s3_buckets.buckets", v.as_str())));
        fields
    }

    fn problems(&self) -> Vec<super::Problem> {
        super::url_problems("s3_buckets.endpoint", &self.endpoint)
    }

    fn filled(&self) -> Vec<Cow<'_, str>> {
        vec![Cow::Borrowed(&self.access_key), Cow::Borrowed(&self.secret_key)]
    }

    async fn run(&self, cx: &RunCx<'_>) -> Result<TaskStatus, Failure> {
        let keys = key_sources(cx.inventory, &[&self.access_key, &self.secret_key]);
        let out = |line: String| cx.output(line);
        cx.on_jump_host(http::DEFAULT_TIMEOUT, async {
            let created = ensure(self, cx.vault, &keys, &out).await?;
            Ok::<_, S3Error>(if created { TaskStatus::Changed } else { TaskStatus::Ok })
        })
        .await
    }
}

/// Where the credentials come from, in the operator's words (the environment variables or files of the
/// secrets they name), for an access-denied message.
fn key_sources(inv: &Inventory, fields: &[&str]) -> String {
    let sources: Vec<String> = fields
        .iter()
        .flat_map(|f| crate::secrets::referenced(f))
        .map(|name| match inv.secrets.get(&name) {
            Some(SecretSource::Env(var)) => var.clone(),
            Some(SecretSource::File(path)) => path.display().to_string(),
            None => format!("secrets.{name}"),
        })
        .collect();
    if sources.is_empty() {
        "the task's access_key / secret_key".into()
    } else {
        sources.join(" / ")
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
pub async fn ensure(
    task: &S3Buckets,
    vault: &Vault,
    keys: &str,
    out: &(dyn Fn(String) + Sync),
) -> Result<bool, S3Error> {
    let endpoint = Url::parse(&task.endpoint).map_err(|e| HttpError::BadUrl {
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
            S3Error::BadBucket {
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
pub async fn put_new(
    target: &S3Upload,
    key: &str,
    bytes: Vec<u8>,
    vault: &Vault,
    keys: &str,
) -> Result<Uploaded, S3Error> {
    let endpoint = Url::parse(&target.endpoint).map_err(|e| HttpError::BadUrl {
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
        S3Error::BadBucket {
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
    async fn ensure(&self, bucket: &Bucket) -> Result<BucketState, S3Error> {
        let url = HeadBucket::new(bucket, Some(self.credentials)).sign(SIGNATURE_LIFETIME);
        let response = self.client.head(url).send().await.map_err(|e| self.unreachable(&e))?;
        match response.status() {
            StatusCode::OK => Ok(BucketState::Exists),
            StatusCode::NOT_FOUND => self.create(bucket).await,
            status => Err(self.refused(bucket, "checking", status, String::new())),
        }
    }

    async fn create(&self, bucket: &Bucket) -> Result<BucketState, S3Error> {
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

    fn unreachable(&self, e: &reqwest::Error) -> S3Error {
        S3Error::Http(HttpError::Unreachable {
            what: format!("S3 endpoint {}", self.endpoint),
            why: cause(e),
        })
    }

    fn refused(&self, bucket: &Bucket, doing: &'static str, status: StatusCode, detail: String) -> S3Error {
        if status == StatusCode::FORBIDDEN {
            return S3Error::AccessDenied {
                endpoint: self.endpoint.to_string(),
                bucket: bucket.name().to_string(),
                keys: self.keys.to_string(),
            };
        }
        S3Error::S3Status {
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

    #[test]
    fn s3_error_codes_are_read_from_the_body() {
        let body = "<?xml version=\"1.0\"?><Error><Code>InvalidBucketName</Code><Message>x</Message></Error>";
        assert_eq!(s3_code(body), " (InvalidBucketName)");
        assert_eq!(s3_code("not xml"), "");
    }
}
