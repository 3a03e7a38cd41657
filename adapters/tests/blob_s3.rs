//! `S3Blobs` against a real S3 server we did not write: s3s-fs 0.14.1, which checks SigV4
//! signatures (headers and presigned query strings) and keeps objects in a directory. Each test
//! starts its own server on a free loopback port, with its own keys and a temporary root, and
//! stops it when done.
//!
//! s3s-fs must be on PATH (`cargo install --locked s3s-fs --version 0.14.1 --features binary`;
//! `.ci/run` installs it). Without it the tests are skipped with a notice, except under CI
//! (`CI` set), where they fail.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use gatehouse_actors::blob::{BlobError, BlobReader, BlobStore, PRESIGN_TTL};
use gatehouse_adapters::blob::s3::{S3Blobs, S3Settings};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const INSTALL_HINT: &str = "s3s-fs 0.14.1 is required: install it with `cargo install --locked \
                            s3s-fs --version 0.14.1 --features binary` (.ci/run does)";
/// Bounds the server's start.
const START_WITHIN: Duration = Duration::from_secs(30);
/// Bounds each test, so that a hang fails instead of stalling CI.
const TEST_LIMIT: Duration = Duration::from_secs(180);
const BUCKET: &str = "gatehouse-blobs";
const ACCESS_KEY: &str = "gatehouse-test-access";
const SECRET_KEY: &str = "gatehouse-test-secret-5b1e";
/// Bigger than one multipart chunk, so the upload goes in parts.
const BIG: u64 = 12 * 1024 * 1024;

/// An s3s-fs process, killed when dropped so that a failing assertion does not leak it.
struct S3sFs {
    child: Child,
    endpoint: String,
    root: TempDir,
}

impl S3sFs {
    /// A running server with an empty bucket, or none when s3s-fs is missing outside CI.
    fn start() -> Option<S3sFs> {
        match Command::new("s3s-fs").arg("--version").output() {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout);
                assert!(
                    version.trim().ends_with(" 0.14.1"),
                    "s3s-fs reports {:?}; {INSTALL_HINT}",
                    version.trim()
                );
            }
            _ => {
                assert!(std::env::var_os("CI").is_none(), "{INSTALL_HINT}");
                eprintln!("skipped: {INSTALL_HINT}");
                return None;
            }
        }
        let root = tempfile::tempdir().unwrap();
        // A bucket is a directory under the root.
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start s3s-fs ({e}); {INSTALL_HINT}"));
        // It binds port 0 and logs the address it got; the pipe is drained to the end so that
        // the server never blocks on it.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(at) = line.find("server is running at http://") {
                    let addr = line[at + "server is running at http://".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let mut server = S3sFs {
            child,
            endpoint: String::new(),
            root,
        };
        let addr: SocketAddr = rx
            .recv_timeout(START_WITHIN)
            .unwrap_or_else(|_| panic!("s3s-fs did not report its address within {START_WITHIN:?}"))
            .parse()
            .expect("s3s-fs logged an address");
        let deadline = Instant::now() + START_WITHIN;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs at {addr} does not accept connections"
            );
            assert!(server.child.try_wait().unwrap().is_none(), "s3s-fs exited");
            std::thread::sleep(Duration::from_millis(20));
        }
        server.endpoint = format!("http://{addr}");
        Some(server)
    }

    fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            path_style: true,
            access_key: Some(ACCESS_KEY.into()),
            secret_key: Some(SECRET_KEY.into()),
        }
    }

    fn blobs(&self) -> S3Blobs {
        S3Blobs::new(self.settings()).unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Incomplete multipart uploads s3s-fs 0.14.1 keeps in its root (`.upload-<id>.json`,
    /// `.upload_id-<id>.part-<n>`).
    fn pending_uploads(&self) -> Vec<String> {
        files_named_like(self.root.path(), ".upload")
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.stop();
    }
}

fn files_named_like(dir: &Path, start: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(start))
        .collect()
}

/// The byte at `offset` of every generated body: position-dependent, so a part stored out of
/// order or twice does not compare equal.
fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (offset >> 20) as u8
}

/// `len` generated bytes, made as they are read (never held whole), at most 64 KiB a read.
struct Pattern {
    at: u64,
    len: u64,
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (self.len - self.at)
            .min(buf.remaining() as u64)
            .min(64 * 1024);
        for offset in self.at..self.at + n {
            buf.put_slice(&[pattern_byte(offset)]);
        }
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn pattern(len: u64) -> BlobReader {
    Box::pin(Pattern { at: 0, len })
}

fn bytes(data: &'static [u8]) -> BlobReader {
    Box::pin(data)
}

async fn read_all(mut reader: BlobReader) -> Vec<u8> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    out
}

/// The same URL with one character of its signature changed.
fn tampered(url: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "X-Amz-Signature" {
                let mut chars: Vec<char> = v.chars().collect();
                chars[0] = if chars[0] == '0' { '1' } else { '0' };
                (k, chars.into_iter().collect())
            } else {
                (k, v)
            }
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    assert_ne!(parsed.as_str(), url);
    parsed.into()
}

/// Refused by the server (403), reported as an error that is not worth retrying.
fn refused<T>(r: &Result<T, BlobError>) -> bool {
    matches!(r, Err(BlobError::Other(m)) if m.contains("403"))
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_stream_in_and_out_list_in_key_order_and_presign() {
    let Some(server) = S3sFs::start() else { return };
    bounded(async {
        let blobs = server.blobs();
        assert_eq!(
            blobs.describe(),
            format!("s3://{BUCKET} at {}", server.endpoint)
        );
        assert!(
            BIG > s3::bucket::CHUNK_SIZE as u64,
            "the big body must go in parts"
        );

        let big = blobs
            .put(
                "reports/2026/big.bin",
                "application/octet-stream",
                pattern(BIG),
                BIG,
            )
            .await
            .unwrap();
        assert_eq!(big, BIG);
        let text = b"gate,opened\nnorth,41\n";
        let small = blobs
            .put("reports/2026/a.csv", "text/csv", bytes(text), 1024)
            .await
            .unwrap();
        assert_eq!(small, text.len() as u64);
        blobs
            .put(
                "attachments/x/0-photo.jpg",
                "image/jpeg",
                bytes(b"jpeg"),
                1024,
            )
            .await
            .unwrap();
        // Nothing was left half-done.
        assert_eq!(server.pending_uploads(), Vec::<String>::new());

        let listed = blobs.list("reports/").await.unwrap();
        let summary: Vec<(&str, u64, &str)> = listed
            .iter()
            .map(|m| (m.key.as_str(), m.size, m.content_type.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("reports/2026/a.csv", text.len() as u64, "text/csv"),
                ("reports/2026/big.bin", BIG, "application/octet-stream"),
            ]
        );
        let all: Vec<String> = blobs
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(
            all,
            [
                "attachments/x/0-photo.jpg",
                "reports/2026/a.csv",
                "reports/2026/big.bin"
            ]
        );

        let (meta, body) = blobs.get("reports/2026/big.bin").await.unwrap().unwrap();
        assert_eq!(
            (meta.size, meta.key.as_str()),
            (BIG, "reports/2026/big.bin")
        );
        let got = read_all(body).await;
        assert_eq!(got.len() as u64, BIG);
        let expected: Vec<u8> = (0..BIG).map(pattern_byte).collect();
        assert!(
            got == expected,
            "the body read back differs from the one stored"
        );

        let (meta, body) = blobs.get("reports/2026/a.csv").await.unwrap().unwrap();
        assert_eq!(
            (meta.size, meta.content_type.as_str()),
            (text.len() as u64, "text/csv")
        );
        assert_eq!(read_all(body).await, text);

        // A presigned link works without credentials, and only as signed.
        let url = blobs
            .presign_get("reports/2026/a.csv", PRESIGN_TTL)
            .await
            .unwrap()
            .expect("S3 presigns");
        assert!(url.starts_with(&format!("{}/{BUCKET}/reports/2026/a.csv?", server.endpoint)));
        let answer = reqwest::get(&url).await.unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        assert_eq!(answer.bytes().await.unwrap().as_ref(), text);
        let refused = reqwest::get(tampered(&url)).await.unwrap();
        assert_eq!(refused.status().as_u16(), 403);

        assert!(blobs.delete("reports/2026/a.csv").await.unwrap());
        assert!(!blobs.delete("reports/2026/a.csv").await.unwrap());
        assert!(blobs.get("reports/2026/a.csv").await.unwrap().is_none());
        let left: Vec<String> = blobs
            .list("reports/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(left, ["reports/2026/big.bin"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_its_limit_is_refused_and_nothing_of_it_is_kept() {
    let Some(server) = S3sFs::start() else { return };
    bounded(async {
        let blobs = server.blobs();

        // Exactly the limit is fine.
        assert_eq!(
            blobs.put("k/exact", "text/plain", pattern(100), 100).await,
            Ok(100)
        );

        // One byte over, within a single PUT.
        assert_eq!(
            blobs.put("k/small", "text/plain", pattern(101), 100).await,
            Err(BlobError::TooLarge(100))
        );
        assert!(blobs.get("k/small").await.unwrap().is_none());

        // Over the limit after the first part went up: the multipart upload is aborted.
        let limit = 9 * 1024 * 1024;
        assert_eq!(
            blobs
                .put("k/big", "application/octet-stream", pattern(BIG), limit)
                .await,
            Err(BlobError::TooLarge(limit))
        );
        assert!(blobs.get("k/big").await.unwrap().is_none());
        assert_eq!(server.pending_uploads(), Vec::<String>::new());

        // A refused replacement leaves the blob that was there as it was.
        assert_eq!(
            blobs.put("k/exact", "text/csv", pattern(101), 100).await,
            Err(BlobError::TooLarge(100))
        );
        let (meta, body) = blobs.get("k/exact").await.unwrap().unwrap();
        assert_eq!((meta.size, meta.content_type.as_str()), (100, "text/plain"));
        assert_eq!(
            read_all(body).await,
            (0..100).map(pattern_byte).collect::<Vec<u8>>()
        );

        let keys: Vec<String> = blobs
            .list("k/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["k/exact"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_bad_keys_wrong_credentials_and_a_stopped_server() {
    let Some(mut server) = S3sFs::start() else {
        return;
    };
    bounded(async {
        let blobs = server.blobs();
        assert!(blobs.get("nothing/here").await.unwrap().is_none());
        assert!(!blobs.delete("nothing/here").await.unwrap());
        assert_eq!(blobs.list("nothing/").await.unwrap(), vec![]);
        for bad in ["../escape", "a//b", "with space"] {
            assert_eq!(
                blobs.put(bad, "text/plain", bytes(b"x"), 10).await,
                Err(BlobError::InvalidKey(bad.into()))
            );
            assert!(matches!(
                blobs.get(bad).await,
                Err(BlobError::InvalidKey(_))
            ));
        }
        blobs
            .put("kept", "text/plain", bytes(b"kept"), 10)
            .await
            .unwrap();

        // The server checks signatures: a wrong secret is refused, and that is not an outage.
        let wrong = S3Blobs::new(S3Settings {
            secret_key: Some("not-the-secret".into()),
            ..server.settings()
        })
        .unwrap();
        let put = wrong.put("intruder", "text/plain", bytes(b"x"), 10).await;
        assert!(refused(&put), "{put:?}");
        let get = wrong
            .get("kept")
            .await
            .map(|found| found.map(|(meta, _)| meta));
        assert!(refused(&get), "{get:?}");
        let list = wrong.list("").await;
        assert!(refused(&list), "{list:?}");
        let delete = wrong.delete("kept").await;
        assert!(refused(&delete), "{delete:?}");
        assert!(blobs.get("intruder").await.unwrap().is_none());
        assert!(blobs.get("kept").await.unwrap().is_some());

        // A bucket that does not exist is a configuration error, not an outage.
        let elsewhere = S3Blobs::new(S3Settings {
            bucket: "no-such-bucket".into(),
            ..server.settings()
        })
        .unwrap();
        // (A listing: s3s-fs, unlike S3, stores a PUT into a bucket that does not exist.)
        let list = elsewhere.list("").await;
        assert!(
            matches!(&list, Err(BlobError::Other(m)) if m.contains("NoSuchBucket")),
            "{list:?}"
        );

        server.stop();
        let get = blobs.get("kept").await.map(|found| found.is_some());
        assert!(matches!(get, Err(BlobError::Unavailable(_))), "{get:?}");
        assert!(get.unwrap_err().is_transient());
        let put = blobs.put("later", "text/plain", bytes(b"x"), 10).await;
        assert!(matches!(put, Err(BlobError::Unavailable(_))), "{put:?}");
        let list = blobs.list("").await;
        assert!(matches!(list, Err(BlobError::Unavailable(_))), "{list:?}");
        let delete = blobs.delete("kept").await;
        assert!(
            matches!(delete, Err(BlobError::Unavailable(_))),
            "{delete:?}"
        );
    })
    .await;
}
