//! The blob port on a local directory (the default: `<data dir>/blobs`). A key is a relative
//! path under the root (`check_key` keeps it there); a body is written to a temporary file
//! beside its target and renamed into place once complete, so that a reader never sees half
//! a blob and a write refused for its size leaves nothing. The content type is kept in a
//! sidecar file (`<name>.type`). Downloads go through the API: no presigned URLs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_actors::blob::{BlobError, BlobMeta, BlobReader, BlobStore, check_key};
use gatehouse_actors::ports::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes copied per read while storing.
const CHUNK: usize = 64 * 1024;
/// The suffix of a blob's content-type sidecar (no key segment may end with it).
const TYPE_SUFFIX: &str = ".type";
/// The suffix of a blob being written.
const PARTIAL_SUFFIX: &str = ".partial";

pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    /// Blobs under `root` (created if missing).
    pub fn new(root: &Path) -> std::io::Result<LocalBlobs> {
        std::fs::create_dir_all(root)?;
        Ok(LocalBlobs {
            root: root.to_owned(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        if key.ends_with(TYPE_SUFFIX) || key.ends_with(PARTIAL_SUFFIX) {
            return Err(BlobError::InvalidKey(key.to_owned()));
        }
        Ok(self.root.join(key))
    }
}

fn io(e: std::io::Error) -> BlobError {
    BlobError::Unavailable(e.to_string())
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TYPE_SUFFIX);
    PathBuf::from(s)
}

async fn put(
    store: &LocalBlobs,
    key: &str,
    content_type: &str,
    mut body: BlobReader,
    limit: u64,
) -> Result<u64, BlobError> {
    let path = store.path(key)?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(
        ".{}{PARTIAL_SUFFIX}",
        uuid::Uuid::new_v4().simple()
    ));
    let partial = PathBuf::from(partial);
    let result = async {
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut buf = vec![0u8; CHUNK];
        let mut size = 0u64;
        loop {
            let n = body
                .read(&mut buf)
                .await
                .map_err(|e| BlobError::Other(format!("reading the body: {e}")))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > limit {
                return Err(BlobError::TooLarge(limit));
            }
            file.write_all(&buf[..n]).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        tokio::fs::write(sidecar(&path), content_type)
            .await
            .map_err(io)?;
        tokio::fs::rename(&partial, &path).await.map_err(io)?;
        Ok(size)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

async fn get(store: &LocalBlobs, key: &str) -> Result<Option<(BlobMeta, BlobReader)>, BlobError> {
    let path = store.path(key)?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let size = file.metadata().await.map_err(io)?.len();
    let content_type = tokio::fs::read_to_string(sidecar(&path))
        .await
        .unwrap_or_else(|_| "application/octet-stream".to_owned());
    Ok(Some((
        BlobMeta {
            key: key.to_owned(),
            size,
            content_type,
        },
        Box::pin(file),
    )))
}

async fn delete(store: &LocalBlobs, key: &str) -> Result<bool, BlobError> {
    let path = store.path(key)?;
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {
            let _ = tokio::fs::remove_file(sidecar(&path)).await;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(e)),
    }
}

async fn list(store: &LocalBlobs, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
    let mut out = Vec::new();
    let mut dirs = vec![store.root.clone()];
    while let Some(dir) = dirs.pop() {
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let path = entry.path();
            let kind = entry.file_type().await.map_err(io)?;
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(&store.root) else {
                continue;
            };
            let key = rel.to_string_lossy().replace('\\', "/");
            if key.ends_with(TYPE_SUFFIX)
                || key.ends_with(PARTIAL_SUFFIX)
                || !key.starts_with(prefix)
            {
                continue;
            }
            let size = entry.metadata().await.map_err(io)?.len();
            let content_type = tokio::fs::read_to_string(sidecar(&path))
                .await
                .unwrap_or_else(|_| "application/octet-stream".to_owned());
            out.push(BlobMeta {
                key,
                size,
                content_type,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

impl BlobStore for LocalBlobs {
    fn put<'a>(
        &'a self,
        key: &'a str,
        content_type: &'a str,
        body: BlobReader,
        limit: u64,
    ) -> BoxFuture<'a, Result<u64, BlobError>> {
        Box::pin(put(self, key, content_type, body, limit))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(BlobMeta, BlobReader)>, BlobError>> {
        Box::pin(get(self, key))
    }

    fn presign_get<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, BlobError>> {
        Box::pin(async move {
            self.path(key)?;
            Ok(None)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, BlobError>> {
        Box::pin(delete(self, key))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, BlobError>> {
        Box::pin(list(self, prefix))
    }

    fn describe(&self) -> String {
        format!("files in {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: Vec<u8>) -> BlobReader {
        Box::pin(std::io::Cursor::new(bytes))
    }

    #[tokio::test]
    async fn blobs_round_trip_list_in_key_order_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = LocalBlobs::new(&dir.path().join("blobs")).unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let size = blobs
            .put("reports/b.csv", "text/csv", reader(body.clone()), 1 << 20)
            .await
            .unwrap();
        assert_eq!(size, body.len() as u64);
        blobs
            .put(
                "reports/a.pdf",
                "application/pdf",
                reader(b"%PDF".to_vec()),
                10,
            )
            .await
            .unwrap();
        blobs
            .put("other/c", "text/plain", reader(b"x".to_vec()), 10)
            .await
            .unwrap();
        let (meta, mut r) = blobs.get("reports/b.csv").await.unwrap().unwrap();
        assert_eq!(
            (meta.size, meta.content_type.as_str()),
            (200_000, "text/csv")
        );
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, body);
        let keys: Vec<String> = blobs
            .list("reports/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["reports/a.pdf", "reports/b.csv"]);
        assert!(blobs.delete("reports/a.pdf").await.unwrap());
        assert!(!blobs.delete("reports/a.pdf").await.unwrap());
        assert!(blobs.get("reports/a.pdf").await.unwrap().is_none());
        assert_eq!(
            blobs
                .presign_get("reports/b.csv", Duration::from_secs(1))
                .await,
            Ok(None)
        );
    }

    #[tokio::test]
    async fn a_body_past_its_limit_leaves_nothing_and_keys_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = LocalBlobs::new(dir.path()).unwrap();
        let refused = blobs
            .put("big", "text/plain", reader(vec![7; 70_000]), 65_536)
            .await;
        assert_eq!(refused, Err(BlobError::TooLarge(65_536)));
        assert!(blobs.get("big").await.unwrap().is_none());
        assert!(
            blobs.list("").await.unwrap().is_empty(),
            "no partial file is listed"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left on disk"
        );
        for bad in ["../escape", "/etc/passwd", "a/../../b", "x.type"] {
            assert!(matches!(
                blobs.put(bad, "text/plain", reader(vec![1]), 10).await,
                Err(BlobError::InvalidKey(_))
            ));
        }
    }
}
