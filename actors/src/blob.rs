//! The blob port: files the runtime keeps beside the database (generated reports, maintenance
//! attachments). A local directory by default, S3 in production; `adapters/` implements both.
//!
//! Bodies move as byte streams in both directions (`AsyncRead`), so that an upload or a
//! download is never held whole in memory; a write stops with [`BlobError::TooLarge`] once it
//! passes its limit, and nothing is left stored then.

use std::pin::Pin;
use std::time::Duration;

use tokio::io::AsyncRead;

use crate::ports::BoxFuture;

/// A body being read.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// What is stored under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub key: String,
    pub size: u64,
    pub content_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The body passed its limit (bytes); nothing was kept.
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
    /// The store is away or failed: worth retrying later.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// A key that cannot name a blob (the store's own rules).
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    #[error("blob store error: {0}")]
    Other(String),
}

impl BlobError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BlobError::Unavailable(_))
    }
}

/// Keys are `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`, at most
/// 512 bytes: the same meaning on a file system and in a bucket.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let ok_segment = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if key.len() > 512 || !key.split('/').all(ok_segment) {
        return Err(BlobError::InvalidKey(key.to_owned()));
    }
    Ok(())
}

pub trait BlobStore: Send + Sync + 'static {
    /// Stores what `body` yields under `key` (replacing what was there), refusing with
    /// `TooLarge` past `limit` bytes; answers the size stored.
    fn put<'a>(
        &'a self,
        key: &'a str,
        content_type: &'a str,
        body: BlobReader,
        limit: u64,
    ) -> BoxFuture<'a, Result<u64, BlobError>>;
    /// The blob under `key` and a reader of its body, or none.
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(BlobMeta, BlobReader)>, BlobError>>;
    /// A URL that lets whoever holds it download the blob for `ttl` without credentials, when
    /// the store can make one (S3); none when downloads go through the API (a directory).
    fn presign_get<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, BlobError>>;
    /// Removes the blob; false when there was none.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, BlobError>>;
    /// The blobs whose keys start with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, BlobError>>;
    /// For logs and `/readyz` (no secrets).
    fn describe(&self) -> String;
}

/// How long a presigned download link lives.
pub const PRESIGN_TTL: Duration = Duration::from_secs(15 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_mean_the_same_on_a_disk_and_in_a_bucket() {
        for good in ["reports/2026/r-1.csv", "attachments/abc/0-photo.jpg", "a"] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "../etc/passwd",
            "a/./b",
            "a b",
            "a\\b",
            "ä",
            "trailing/",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"a".repeat(513)).is_err());
    }
}
