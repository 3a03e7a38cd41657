//! The blob port in an S3 bucket (AWS or any S3-compatible store) through rust-s3.
//!
//! Bodies stream both ways: an upload goes out in multipart chunks of rust-s3's
//! [`CHUNK_SIZE`](s3::bucket::CHUNK_SIZE) (8 MiB) with at most [`PARTS_IN_FLIGHT`] parts on
//! the wire, so one upload holds a few chunks in memory whatever its size; a download is the
//! response body read as it arrives.
//!
//! Each request (a part, a listing page, a download including its body) has rust-s3's
//! per-request deadline of 60 s; connection failures and 5xx answers are retried once by
//! rust-s3 when the request is safe to repeat, then reported as [`BlobError::Unavailable`].

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use gatehouse_actors::blob::{BlobError, BlobMeta, BlobReader, BlobStore, check_key};
use gatehouse_actors::ports::BoxFuture;
use s3::Region;
use s3::bucket::Bucket;
use s3::creds::Credentials;
use s3::error::S3Error;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::StreamReader;

/// Multipart parts uploaded at once by one `put` (each holds one 8 MiB chunk in memory).
pub const PARTS_IN_FLIGHT: usize = 2;
/// HEAD requests at once while `list` fetches content types.
const HEADS_IN_FLIGHT: usize = 8;
/// The longest life S3 (SigV4) allows a presigned URL.
const MAX_PRESIGN_SECS: u64 = 7 * 24 * 60 * 60;
/// What a blob stored without a content type is served as.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Where the bucket is and how to reach it: the `[storage]` keys `s3_endpoint`, `s3_bucket`,
/// `s3_region`, `s3_path_style`, `s3_access_key`, `s3_secret_key`.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// A custom endpoint (`http://127.0.0.1:9000`, `https://minio.example.net`); none = AWS in
    /// `region`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// None: `AWS_ACCESS_KEY_ID` from the environment.
    pub access_key: Option<String>,
    /// None: `AWS_SECRET_ACCESS_KEY` from the environment.
    pub secret_key: Option<String>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Settings that cannot make a bucket client, naming the configuration key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct BlobConfigError {
    /// The configuration key, such as `storage.s3_bucket`.
    pub key: &'static str,
    pub reason: String,
}

impl BlobConfigError {
    fn new(key: &'static str, reason: impl Into<String>) -> Self {
        BlobConfigError {
            key,
            reason: reason.into(),
        }
    }
}

/// Blobs in one S3 bucket.
pub struct S3Blobs {
    bucket: Box<Bucket>,
    describe: String,
}

impl S3Blobs {
    /// A client for the bucket `settings` name, with keys from the settings or else from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`, if set). Does
    /// not contact the store.
    pub fn new(settings: S3Settings) -> Result<S3Blobs, BlobConfigError> {
        Self::with_env(settings, |name| std::env::var(name).ok())
    }

    /// As [`S3Blobs::new`], reading the environment through `env`.
    fn with_env(
        settings: S3Settings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Blobs, BlobConfigError> {
        check_bucket_name(&settings.bucket)?;
        let region = region(&settings)?;
        let credentials = credentials(&settings, env)?;
        let bucket = Bucket::new(&settings.bucket, region.clone(), credentials)
            .map_err(|e| BlobConfigError::new("storage", format!("S3 client: {e}")))?;
        let bucket = if settings.path_style {
            bucket.with_path_style()
        } else {
            bucket
        };
        let describe = format!(
            "s3://{} at {}://{}",
            settings.bucket,
            region.scheme(),
            region.host()
        );
        Ok(S3Blobs { bucket, describe })
    }

    async fn put_body(
        &self,
        key: &str,
        content_type: &str,
        body: BlobReader,
        limit: u64,
    ) -> Result<u64, BlobError> {
        check_key(key)?;
        let over = Arc::new(AtomicBool::new(false));
        let mut body = Limited {
            inner: body,
            read: 0,
            limit,
            over: over.clone(),
        };
        // Small bodies go in one PUT; from one chunk on, a multipart upload that rust-s3 aborts
        // when anything fails, our limit included, so no object appears and the one that was
        // there (if any) stays as it was.
        let sent = self
            .bucket
            .put_object_stream_builder(key)
            .with_content_type(content_type)
            .with_max_concurrent_chunks(PARTS_IN_FLIGHT)
            .execute_stream(&mut body)
            .await;
        match sent {
            Ok(sent) => Ok(sent.uploaded_bytes() as u64),
            Err(_) if over.load(Ordering::SeqCst) => Err(BlobError::TooLarge(limit)),
            Err(S3Error::Io(e)) => Err(BlobError::Other(format!("reading the body: {e}"))),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        match self.bucket.head_object(key).await {
            Ok((head, _)) => Ok(Some(BlobMeta {
                key: key.to_owned(),
                size: head.content_length.unwrap_or(0).max(0) as u64,
                content_type: head
                    .content_type
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn get_body(&self, key: &str) -> Result<Option<(BlobMeta, BlobReader)>, BlobError> {
        check_key(key)?;
        // The GET answer's headers are not exposed by rust-s3's streaming call, so the size and
        // content type come from a HEAD just before. An object replaced in between is served
        // with its new body and the old meta.
        let Some(meta) = self.head(key).await? else {
            return Ok(None);
        };
        let response = match self.bucket.get_object_stream(key).await {
            Ok(response) => response,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(store_error(e)),
        };
        let body = response.bytes.map_err(io::Error::other);
        let reader: BlobReader = Box::pin(StreamReader::new(body));
        Ok(Some((meta, reader)))
    }

    async fn presign(&self, key: &str, ttl: Duration) -> Result<Option<String>, BlobError> {
        check_key(key)?;
        let secs = ttl.as_secs().max(1);
        if secs > MAX_PRESIGN_SECS {
            return Err(BlobError::Other(format!(
                "a presigned URL lives at most {MAX_PRESIGN_SECS} s, asked for {secs} s"
            )));
        }
        self.bucket
            .presign_get(key, secs as u32, None)
            .await
            .map(Some)
            .map_err(store_error)
    }

    async fn remove(&self, key: &str) -> Result<bool, BlobError> {
        check_key(key)?;
        // S3 answers 204 to a DELETE whether or not the key existed: ask first.
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        match self.bucket.delete_object(key).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn list_prefix(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        check_prefix(prefix)?;
        let pages = self
            .bucket
            .list(prefix.to_owned(), None)
            .await
            .map_err(store_error)?;
        let mut keys: Vec<String> = pages
            .into_iter()
            .flat_map(|page| page.contents)
            .map(|object| object.key)
            .collect();
        keys.sort();
        keys.dedup();
        // Listings carry sizes but not content types: ask for each blob. One deleted meanwhile
        // is left out.
        let metas: Vec<Option<BlobMeta>> = futures::stream::iter(keys)
            .map(|key| async move { self.head(&key).await })
            .buffered(HEADS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(metas.into_iter().flatten().collect())
    }
}

impl BlobStore for S3Blobs {
    fn put<'a>(
        &'a self,
        key: &'a str,
        content_type: &'a str,
        body: BlobReader,
        limit: u64,
    ) -> BoxFuture<'a, Result<u64, BlobError>> {
        Box::pin(self.put_body(key, content_type, body, limit))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(BlobMeta, BlobReader)>, BlobError>> {
        Box::pin(self.get_body(key))
    }

    fn presign_get<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, BlobError>> {
        Box::pin(self.presign(key, ttl))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, BlobError>> {
        Box::pin(self.remove(key))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, BlobError>> {
        Box::pin(self.list_prefix(prefix))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// A body that fails once it has yielded more than `limit` bytes, and says so in `over`.
struct Limited {
    inner: BlobReader,
    read: u64,
    limit: u64,
    over: Arc<AtomicBool>,
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(this.inner.as_mut().poll_read(cx, buf))?;
        this.read += (buf.filled().len() - before) as u64;
        if this.read > this.limit {
            this.over.store(true, Ordering::SeqCst);
            return Poll::Ready(Err(io::Error::other(format!(
                "the body is larger than {} bytes",
                this.limit
            ))));
        }
        Poll::Ready(Ok(()))
    }
}

fn is_not_found(e: &S3Error) -> bool {
    matches!(e, S3Error::HttpFailWithBody(404, _))
}

/// What a failed request means for the caller: the store away or failing (retry later) or
/// anything else (refused credentials, a missing bucket, a malformed answer).
fn store_error(e: S3Error) -> BlobError {
    match e {
        S3Error::HttpFailWithBody(status, body) => {
            let code = xml_element(&body, "Code").unwrap_or("no error code");
            let text = format!("HTTP {status} ({code})");
            if status >= 500 || status == 408 || status == 429 {
                BlobError::Unavailable(text)
            } else {
                BlobError::Other(text)
            }
        }
        S3Error::Reqwest(e) if e.is_builder() => BlobError::Other(e.to_string()),
        // Connecting, timing out, a connection cut while sending or reading.
        S3Error::Reqwest(e) => BlobError::Unavailable(error_chain(&e)),
        S3Error::Io(e) => BlobError::Unavailable(error_chain(&e)),
        e => BlobError::Other(e.to_string()),
    }
}

/// An error and its causes on one line ("error sending request" alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The text of the first `<name>` element in an S3 error document.
fn xml_element<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let len = body[start..].find(&format!("</{name}>"))?;
    Some(&body[start..start + len])
}

/// A listing prefix: empty, or the beginning of a key (so it may end with `/`).
fn check_prefix(prefix: &str) -> Result<(), BlobError> {
    let ok = prefix.len() <= 512
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && !prefix.starts_with('/')
        && !prefix.contains("//");
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(prefix.to_owned()))
    }
}

/// S3 bucket naming: 3 to 63 of `[a-z0-9.-]`, beginning and ending with a letter or digit.
fn check_bucket_name(name: &str) -> Result<(), BlobConfigError> {
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && edge_ok(name.as_bytes().first())
        && edge_ok(name.as_bytes().last());
    if ok {
        Ok(())
    } else if name.is_empty() {
        Err(BlobConfigError::new("storage.s3_bucket", "is required"))
    } else {
        Err(BlobConfigError::new(
            "storage.s3_bucket",
            format!(
                "{name:?} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-', beginning and \
                 ending with a letter or digit)"
            ),
        ))
    }
}

fn region(settings: &S3Settings) -> Result<Region, BlobConfigError> {
    let name = settings.region.trim();
    if name.is_empty() {
        return Err(BlobConfigError::new("storage.s3_region", "is required"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(BlobConfigError::new(
            "storage.s3_region",
            format!("{name:?} is not a region name (such as eu-west-1)"),
        ));
    }
    let Some(endpoint) = settings
        .endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    else {
        // AWS. Regions rust-s3 does not know get the standard endpoint rather than its guess
        // (the region name taken as a host name).
        return Ok(match name.parse::<Region>() {
            Ok(Region::Custom { .. }) | Err(_) => Region::Custom {
                region: name.to_owned(),
                endpoint: format!("https://s3.{name}.amazonaws.com"),
            },
            Ok(known) => known,
        });
    };
    let bad = |reason: String| BlobConfigError::new("storage.s3_endpoint", reason);
    let url = url::Url::parse(endpoint.trim())
        .map_err(|e| bad(format!("{endpoint:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "{endpoint:?}: the scheme must be http or https"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "carries credentials: use storage.s3_access_key and storage.s3_secret_key".into(),
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!(
            "{endpoint:?}: only scheme, host and port (the bucket is storage.s3_bucket)"
        )));
    }
    let host = match url.host() {
        Some(host) => host,
        None => return Err(bad(format!("{endpoint:?} has no host"))),
    };
    if !settings.path_style && !matches!(host, url::Host::Domain(_)) {
        return Err(BlobConfigError::new(
            "storage.s3_path_style",
            format!(
                "must be true for an endpoint at an IP address ({host}): a virtual-hosted bucket \
                 needs a DNS name"
            ),
        ));
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok(Region::Custom {
        region: name.to_owned(),
        endpoint: format!("{}://{authority}", url.scheme()),
    })
}

fn credentials(
    settings: &S3Settings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Credentials, BlobConfigError> {
    let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let from_env = |name: &str| env(name).filter(|v| !v.is_empty());
    let access_key = given(&settings.access_key);
    let secret_key = given(&settings.secret_key);
    let both_from_env = access_key.is_none() && secret_key.is_none();
    let access_key = access_key
        .or_else(|| from_env("AWS_ACCESS_KEY_ID"))
        .ok_or_else(|| {
            BlobConfigError::new(
                "storage.s3_access_key",
                "is not set, nor is AWS_ACCESS_KEY_ID",
            )
        })?;
    let secret_key = secret_key
        .or_else(|| from_env("AWS_SECRET_ACCESS_KEY"))
        .ok_or_else(|| {
            BlobConfigError::new(
                "storage.s3_secret_key",
                "is not set, nor is AWS_SECRET_ACCESS_KEY",
            )
        })?;
    // A session token belongs to temporary keys from the environment, not to configured ones.
    let session_token = if both_from_env {
        from_env("AWS_SESSION_TOKEN")
    } else {
        None
    };
    // With an access key given, rust-s3 takes the values as they are and looks nowhere else.
    Credentials::new(
        Some(&access_key),
        Some(&secret_key),
        None,
        session_token.as_deref(),
        None,
    )
    .map_err(|e| BlobConfigError::new("storage.s3_access_key", e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: None,
            bucket: "gatehouse-files".into(),
            region: "eu-west-1".into(),
            path_style: false,
            access_key: Some("AKIDEXAMPLE".into()),
            secret_key: Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    async fn presigned(settings: S3Settings) -> url::Url {
        let blobs = S3Blobs::with_env(settings, no_env).unwrap();
        let url = blobs
            .presign_get("reports/2026/r-1.csv", Duration::from_secs(900))
            .await
            .unwrap()
            .unwrap();
        url::Url::parse(&url).unwrap()
    }

    fn query(url: &url::Url) -> HashMap<String, String> {
        url.query_pairs().into_owned().collect()
    }

    #[tokio::test]
    async fn virtual_hosted_urls_put_the_bucket_in_the_host_name() {
        let url = presigned(settings()).await;
        assert_eq!(url.scheme(), "https");
        assert_eq!(
            url.host_str(),
            Some("gatehouse-files.s3-eu-west-1.amazonaws.com")
        );
        assert_eq!(url.path(), "/reports/2026/r-1.csv");
        let q = query(&url);
        assert_eq!(q["X-Amz-Expires"], "900");
        assert!(q["X-Amz-Credential"].starts_with("AKIDEXAMPLE/"), "{q:?}");
        assert!(q["X-Amz-Credential"].contains("/eu-west-1/s3/"), "{q:?}");
        assert!(!q["X-Amz-Signature"].is_empty());

        // A region rust-s3 does not know yet gets AWS's standard endpoint.
        let url = presigned(S3Settings {
            region: "xx-future-9".into(),
            ..settings()
        })
        .await;
        assert_eq!(
            url.host_str(),
            Some("gatehouse-files.s3.xx-future-9.amazonaws.com")
        );

        // And a custom endpoint with a DNS name.
        let url = presigned(S3Settings {
            endpoint: Some("https://objects.example.net".into()),
            ..settings()
        })
        .await;
        assert_eq!(url.host_str(), Some("gatehouse-files.objects.example.net"));
        assert_eq!(url.path(), "/reports/2026/r-1.csv");
    }

    #[tokio::test]
    async fn path_style_urls_put_the_bucket_in_the_path() {
        let url = presigned(S3Settings {
            endpoint: Some("http://127.0.0.1:9000/".into()),
            path_style: true,
            ..settings()
        })
        .await;
        assert_eq!(url.scheme(), "http");
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        assert_eq!(url.port(), Some(9000));
        assert_eq!(url.path(), "/gatehouse-files/reports/2026/r-1.csv");

        let url = presigned(S3Settings {
            path_style: true,
            ..settings()
        })
        .await;
        assert_eq!(url.host_str(), Some("s3-eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/gatehouse-files/reports/2026/r-1.csv");
    }

    #[tokio::test]
    async fn presigned_lifetimes_are_whole_seconds_within_a_week() {
        let blobs = S3Blobs::with_env(settings(), no_env).unwrap();
        let url = blobs
            .presign_get("a", Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(query(&url::Url::parse(&url).unwrap())["X-Amz-Expires"], "1");
        assert!(matches!(
            blobs
                .presign_get("a", Duration::from_secs(MAX_PRESIGN_SECS + 1))
                .await,
            Err(BlobError::Other(_))
        ));
        assert!(matches!(
            blobs.presign_get("../a", PRESIGN_TTL_FOR_TEST).await,
            Err(BlobError::InvalidKey(_))
        ));
    }

    const PRESIGN_TTL_FOR_TEST: Duration = gatehouse_actors::blob::PRESIGN_TTL;

    #[test]
    fn settings_errors_name_their_key() {
        let key_of = |s: S3Settings| S3Blobs::with_env(s, no_env).err().map(|e| e.key);
        assert_eq!(
            key_of(S3Settings {
                bucket: String::new(),
                ..settings()
            }),
            Some("storage.s3_bucket")
        );
        assert_eq!(
            key_of(S3Settings {
                bucket: "Upper_Case".into(),
                ..settings()
            }),
            Some("storage.s3_bucket")
        );
        assert_eq!(
            key_of(S3Settings {
                region: String::new(),
                ..settings()
            }),
            Some("storage.s3_region")
        );
        for endpoint in [
            "not a url",
            "ftp://host",
            "http://user:pw@host:9000",
            "http://host:9000/bucket",
        ] {
            assert_eq!(
                key_of(S3Settings {
                    endpoint: Some(endpoint.into()),
                    path_style: true,
                    ..settings()
                }),
                Some("storage.s3_endpoint"),
                "{endpoint}"
            );
        }
        assert_eq!(
            key_of(S3Settings {
                endpoint: Some("http://127.0.0.1:9000".into()),
                path_style: false,
                ..settings()
            }),
            Some("storage.s3_path_style")
        );
        assert_eq!(
            key_of(S3Settings {
                access_key: None,
                ..settings()
            }),
            Some("storage.s3_access_key")
        );
        assert_eq!(
            key_of(S3Settings {
                secret_key: Some(String::new()),
                ..settings()
            }),
            Some("storage.s3_secret_key")
        );
    }

    #[test]
    fn keys_fall_back_to_the_aws_environment_variables() {
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDFROMENV".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret-from-env".to_owned()),
            "AWS_SESSION_TOKEN" => Some("token-from-env".to_owned()),
            _ => None,
        };
        let from_env = credentials(
            &S3Settings {
                access_key: None,
                secret_key: None,
                ..settings()
            },
            env,
        )
        .unwrap();
        assert_eq!(from_env.access_key.as_deref(), Some("AKIDFROMENV"));
        assert_eq!(from_env.secret_key.as_deref(), Some("secret-from-env"));
        assert_eq!(from_env.session_token.as_deref(), Some("token-from-env"));

        let configured = credentials(&settings(), env).unwrap();
        assert_eq!(configured.access_key.as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(configured.session_token, None);
    }

    #[test]
    fn descriptions_and_debug_output_hold_no_secrets() {
        let blobs = S3Blobs::with_env(
            S3Settings {
                endpoint: Some("http://127.0.0.1:9000".into()),
                path_style: true,
                ..settings()
            },
            no_env,
        )
        .unwrap();
        assert_eq!(
            blobs.describe(),
            "s3://gatehouse-files at http://127.0.0.1:9000"
        );
        let aws = S3Blobs::with_env(settings(), no_env).unwrap();
        assert_eq!(
            aws.describe(),
            "s3://gatehouse-files at https://s3-eu-west-1.amazonaws.com"
        );
        let debug = format!("{:?}", settings());
        assert!(!debug.contains("EXAMPLEKEY"), "{debug}");
    }

    #[test]
    fn answers_map_to_port_errors() {
        let fail = |status, body: &str| S3Error::HttpFailWithBody(status, body.to_owned());
        assert!(matches!(
            store_error(fail(503, "<Error><Code>SlowDown</Code></Error>")),
            BlobError::Unavailable(text) if text.contains("SlowDown")
        ));
        assert!(matches!(
            store_error(fail(403, "<Error><Code>SignatureDoesNotMatch</Code></Error>")),
            BlobError::Other(text) if text.contains("403") && text.contains("SignatureDoesNotMatch")
        ));
        assert!(is_not_found(&fail(404, "")));
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("reports/2026/").is_ok());
        assert!(check_prefix("/reports").is_err());
        assert!(check_prefix("a b").is_err());
    }
}
