//! s3s-fs 0.14.1 as a test peer: a real S3 server we did not write, which checks SigV4
//! signatures (headers and presigned query strings) and keeps objects in a directory. Each
//! user starts its own on a free loopback port, with its own keys and a temporary root, and
//! it is killed when dropped.
//!
//! s3s-fs must be on PATH (`cargo install --locked s3s-fs --version 0.14.1 --features binary`;
//! `.ci/run` installs it). Without it, [`S3sFs::start`] answers none with a notice, except
//! under CI (`CI` set), where it fails.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatehouse_adapters::blob::s3::{S3Blobs, S3Settings};
use tempfile::TempDir;

pub const INSTALL_HINT: &str = "s3s-fs 0.14.1 is required: install it with `cargo install --locked \
                            s3s-fs --version 0.14.1 --features binary` (.ci/run does)";
/// Bounds the server's start.
pub const START_WITHIN: Duration = Duration::from_secs(30);
pub const BUCKET: &str = "gatehouse-blobs";
pub const ACCESS_KEY: &str = "gatehouse-test-access";
pub const SECRET_KEY: &str = "gatehouse-test-secret-5b1e";

/// An s3s-fs process, killed when dropped so that a failing assertion does not leak it.
pub struct S3sFs {
    child: Child,
    pub endpoint: String,
    pub root: TempDir,
}

impl S3sFs {
    /// A running server with an empty bucket, or none when s3s-fs is missing outside CI.
    pub fn start() -> Option<S3sFs> {
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
        let (child, addr) = spawn(root.path(), 0);
        Some(S3sFs {
            child,
            endpoint: format!("http://{addr}"),
            root,
        })
    }

    /// Starts the server again on its port and root (after [`stop`](Self::stop)): what it
    /// kept is there again.
    pub fn restart(&mut self) {
        self.stop();
        let port = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the endpoint's port");
        let (child, addr) = spawn(self.root.path(), port);
        assert_eq!(format!("http://{addr}"), self.endpoint);
        self.child = child;
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            path_style: true,
            access_key: Some(ACCESS_KEY.into()),
            secret_key: Some(SECRET_KEY.into()),
        }
    }

    pub fn blobs(&self) -> S3Blobs {
        S3Blobs::new(self.settings()).unwrap()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Incomplete multipart uploads s3s-fs 0.14.1 keeps in its root (`.upload-<id>.json`,
    /// `.upload_id-<id>.part-<n>`).
    pub fn pending_uploads(&self) -> Vec<String> {
        files_named_like(self.root.path(), ".upload")
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn files_named_like(dir: &Path, start: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(start))
        .collect()
}

/// An s3s-fs on `root` listening on `port` (0: any), once it accepts connections; with the
/// address it reported.
fn spawn(root: &Path, port: u16) -> (Child, SocketAddr) {
    let mut child = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .env("RUST_LOG", "s3s_fs=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start s3s-fs ({e}); {INSTALL_HINT}"));
    // It logs the address it bound; the pipe is drained to the end so that the server never
    // blocks on it.
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
    let reported = rx.recv_timeout(START_WITHIN);
    let Ok(addr) = reported else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("s3s-fs did not report its address within {START_WITHIN:?}");
    };
    let addr: SocketAddr = addr.parse().expect("s3s-fs logged an address");
    let deadline = Instant::now() + START_WITHIN;
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        let exited = child.try_wait().unwrap().is_some();
        if exited || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("s3s-fs at {addr} does not accept connections (exited: {exited})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}
