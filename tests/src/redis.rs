//! A private `redis-server` as a test peer: each user starts its own on a free loopback port,
//! keeping nothing on disk, so that a test may stop and restart it without touching anyone
//! else's Redis (the machine's own on 6379 included). Killed when dropped.
//!
//! `redis-server` must be on PATH (`.ci/run` installs Debian's `redis-server` where missing).

use std::time::{Duration, Instant};

use crate::procs::{Proc, Stream};

/// Bounds the server's start.
const START_WITHIN: Duration = Duration::from_secs(30);

pub struct RedisServer {
    proc: Option<Proc>,
    pub port: u16,
}

impl RedisServer {
    /// A running server on a free port.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer { proc: None, port };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut proc = Proc::spawn(
            "redis-server",
            std::process::Command::new("redis-server").args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]),
        );
        proc.wait_for(Stream::Out, "Ready to accept connections", 1);
        // Listening, as a client sees it.
        let deadline = Instant::now() + START_WITHIN;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server never listened on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc = Some(proc);
    }

    /// Kills the server (SIGKILL: in-flight messages are lost, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal("KILL");
            proc.wait_exit(START_WITHIN);
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
