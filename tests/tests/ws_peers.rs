//! Third-party WebSocket peers against the real `gatehouse demo` process: the Python
//! `websockets` client of `tests/peers/ws_resume.py` (written from docs/websocket-protocol.md
//! alone) drives commands, drops its connection abruptly mid-movement and resumes with
//! `since`, checking that the events it sees are contiguous; `tests/peers/ws_websocat.sh`
//! speaks the protocol through `websocat` (auth, subscribe, ping, a bad frame).
//!
//! Both run against one demo, one after the other, inside a single test: two demos would
//! only race for ports and CPU. The demo's residents are switched off (`--rate 0`) and chaos
//! too, so that nothing but the peers moves the gate they use.
//!
//! Needs the built `target/debug/gatehouse` (`cargo build --workspace --bins`), `python3`
//! with `websockets`, and `websocat` (in PATH or `~/.cargo/bin`); `.ci/run` installs both
//! peers. Without them the test is skipped with a notice, except under CI (`CI=true`), where
//! a missing peer fails it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the demo may take to print its API address and to bring the test gate online.
const START_LIMIT: Duration = Duration::from_secs(60);

/// How long one peer script may run (each bounds itself well below this).
const PEER_LIMIT: Duration = Duration::from_secs(120);

/// How long the demo may take to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// The gate the peers drive: a `generic` gate of the demo (6 s of travel) with no
/// auto-close, so that only the peers move it.
const GATE: &str = "gate-3";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn gatehouse_bin() -> PathBuf {
    let path = workspace_root().join("target/debug/gatehouse");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// PATH with `~/.cargo/bin` in front, where `cargo install` puts `websocat`.
fn peer_path() -> OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("a valid PATH")
}

/// Whether `program args…` runs and exits 0 (output discarded).
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .env("PATH", peer_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The peers that are missing on this machine, by name.
fn missing_peers() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !succeeds("python3", &["-c", "import websockets"]) {
        missing.push("python3 with websockets (pip install websockets)");
    }
    if !succeeds("websocat", &["--version"]) {
        missing.push("websocat (cargo install --locked websocat --version 1.14.1)");
    }
    missing
}

/// Lines of one output, collected by a reader thread as they come.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect(source: impl Read + Send + 'static, into: Lines) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    })
}

/// A child process whose output is collected line by line; killed by its id when dropped
/// while still running, so that a failing test leaves nothing behind.
struct Watched {
    name: String,
    child: Child,
    out: Lines,
    err: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Watched {
    fn start(name: &str, cmd: &mut Command) -> Watched {
        // The settings of whoever runs the tests stay out of the child.
        for (var, _) in std::env::vars() {
            if var.starts_with("GATEHOUSE_") || var == "RUST_LOG" {
                cmd.env_remove(var);
            }
        }
        let mut child = cmd
            .env("NO_COLOR", "1")
            .env("PATH", peer_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Lines::default();
        let err = Lines::default();
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), out.clone()),
            collect(child.stderr.take().expect("piped stderr"), err.clone()),
        ];
        Watched {
            name: name.to_string(),
            child,
            out,
            err,
            readers,
        }
    }

    fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn transcript(&self) -> String {
        format!(
            "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
            self.stdout().join("\n"),
            self.stderr().join("\n"),
            name = self.name
        )
    }

    /// Waits (bounded) for a stdout line that `pick` accepts, and returns what it made of it.
    fn wait_line<T>(&mut self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(found) = self.stdout().iter().find_map(|l| pick(l)) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_readers();
                if let Some(found) = self.stdout().iter().find_map(|l| pick(l)) {
                    return found;
                }
                panic!(
                    "{} exited ({status}) before printing {what}\n{}",
                    self.name,
                    self.transcript()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {what} within {START_LIMIT:?}\n{}",
                self.name,
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running then.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_readers();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A running `gatehouse demo` and how to reach its API.
struct Demo {
    proc: Watched,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, without the `/api/v1` the demo prints.
    base: String,
    user: String,
    password: String,
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut proc = Watched::start(
            "gatehouse demo",
            Command::new(gatehouse_bin())
                // `--for`: a backstop, should this test die without stopping it.
                .args(["demo", "--no-chaos", "--rate", "0", "--for", "300"])
                .current_dir(dir.path()),
        );
        // `API:      http://127.0.0.1:8080/api/v1  (OpenAPI: …)`
        let base = proc.wait_line("the API address", |l| {
            let url = l.strip_prefix("API:")?.split_whitespace().next()?;
            Some(
                url.trim_end_matches('/')
                    .trim_end_matches("/api/v1")
                    .to_string(),
            )
        });
        let field =
            |name: &'static str| move |l: &str| Some(l.strip_prefix(name)?.trim().to_string());
        let user = proc.wait_line("username:", field("username:"));
        let password = proc.wait_line("password:", field("password:"));
        // The gate is online once its first poll was committed: `gate-3 #1 offline -> closed`.
        proc.wait_line("the test gate coming online", |l| {
            let mut words = l.split_whitespace();
            (words.nth(1) == Some(GATE) && l.contains("offline -> closed")).then_some(())
        });
        Demo {
            proc,
            _dir: dir,
            base,
            user,
            password,
        }
    }

    /// SIGTERM, a bounded wait, then SIGKILL; the demo must have stopped cleanly.
    fn stop(mut self) {
        self.proc.signal("TERM");
        match self.proc.wait_exit(STOP_LIMIT) {
            Some(status) => assert!(
                status.success(),
                "the demo did not stop cleanly on SIGTERM ({status})\n{}",
                self.proc.transcript()
            ),
            None => {
                self.proc.signal("KILL");
                let _ = self.proc.wait_exit(STOP_LIMIT);
                panic!(
                    "the demo did not stop within {STOP_LIMIT:?} of SIGTERM: killed\n{}",
                    self.proc.transcript()
                );
            }
        }
    }

    /// The flags both peer scripts take, each as `--flag=value`: the demo's password is
    /// random base64url and may start with `-`, which a parser would take for a flag.
    fn peer_args(&self) -> Vec<String> {
        vec![
            format!("--base={}", self.base),
            format!("--user={}", self.user),
            format!("--password={}", self.password),
            format!("--gate={GATE}"),
        ]
    }
}

/// Runs one peer script from the workspace root, bounded, and asserts that it exited 0.
/// Returns its stdout.
fn run_peer(demo: &Demo, program: &str, script: &str) -> String {
    let mut peer = Watched::start(
        script,
        Command::new(program)
            .arg(script)
            .args(demo.peer_args())
            .current_dir(workspace_root()),
    );
    let status = match peer.wait_exit(PEER_LIMIT) {
        Some(status) => status,
        None => {
            peer.signal("KILL");
            let _ = peer.wait_exit(STOP_LIMIT);
            panic!(
                "{script} did not finish within {PEER_LIMIT:?}\n{}\n{}",
                peer.transcript(),
                demo.proc.transcript()
            );
        }
    };
    assert!(
        status.success(),
        "{script} failed ({status})\n{}\n--- the demo's stderr, last lines ---\n{}",
        peer.transcript(),
        tail(&demo.proc.stderr(), 40)
    );
    println!("{}", peer.transcript());
    peer.stdout().join("\n")
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn python_websockets_and_websocat_drive_the_protocol_against_the_demo() {
    let missing = missing_peers();
    // A missing peer is a failure, in CI or not: a pass must mean the peers ran.
    assert!(
        missing.is_empty(),
        "the WebSocket peers must be installed (.ci/run does it); missing: {}",
        missing.join(", ")
    );

    let demo = Demo::start();

    let summary = run_peer(&demo, "python3", "tests/peers/ws_resume.py");
    let last = summary.lines().last().unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("ws_resume.py's last line is not JSON ({e}): {last:?}"));
    assert_eq!(parsed["ok"], true, "{last}");

    run_peer(&demo, "bash", "tests/peers/ws_websocat.sh");

    demo.stop();
}
