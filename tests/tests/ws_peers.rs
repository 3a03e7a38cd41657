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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse_tests::procs::{Proc, Stream, bin, tail, workspace_root};

/// How long the demo may take to print its API address and to bring the test gate online.
const START_LIMIT: Duration = Duration::from_secs(60);

/// How long one peer script may run (each bounds itself well below this).
const PEER_LIMIT: Duration = Duration::from_secs(120);

/// How long the demo may take to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// The gate the peers drive: a `generic` gate of the demo (6 s of travel) with no
/// auto-close, so that only the peers move it.
const GATE: &str = "gate-3";

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

/// Waits (bounded) for a stdout line that `pick` accepts, and returns what it made of it.
fn stdout_line<T>(proc: &mut Proc, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
    proc.wait_line(Stream::Out, what, START_LIMIT, |lines| {
        lines.iter().find_map(|l| pick(l))
    })
}

/// A running `gatehouse demo` and how to reach its API.
struct Demo {
    proc: Proc,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, without the `/api/v1` the demo prints.
    base: String,
    user: String,
    password: String,
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut proc = Proc::spawn(
            "gatehouse demo",
            Command::new(bin("gatehouse"))
                // `--for`: a backstop, should this test die without stopping it.
                .args(["demo", "--no-chaos", "--rate", "0", "--for", "300"])
                .current_dir(dir.path()),
        );
        // `API:      http://127.0.0.1:8080/api/v1  (OpenAPI: …)`
        let base = stdout_line(&mut proc, "the API address", |l| {
            let url = l.strip_prefix("API:")?.split_whitespace().next()?;
            Some(
                url.trim_end_matches('/')
                    .trim_end_matches("/api/v1")
                    .to_string(),
            )
        });
        let field =
            |name: &'static str| move |l: &str| Some(l.strip_prefix(name)?.trim().to_string());
        let user = stdout_line(&mut proc, "username:", field("username:"));
        let password = stdout_line(&mut proc, "password:", field("password:"));
        // The gate is online once its first poll was committed: `gate-3 #1 offline -> closed`.
        stdout_line(&mut proc, "the test gate coming online", |l| {
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
        match self.proc.try_wait_exit(STOP_LIMIT) {
            Some(status) => assert!(
                status.success(),
                "the demo did not stop cleanly on SIGTERM ({status})\n{}",
                self.proc.transcript()
            ),
            None => {
                self.proc.signal("KILL");
                let _ = self.proc.try_wait_exit(STOP_LIMIT);
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
    let mut peer = Proc::spawn(
        script,
        Command::new(program)
            .env("PATH", peer_path())
            .arg(script)
            .args(demo.peer_args())
            .current_dir(workspace_root()),
    );
    let status = match peer.try_wait_exit(PEER_LIMIT) {
        Some(status) => status,
        None => {
            peer.signal("KILL");
            let _ = peer.try_wait_exit(STOP_LIMIT);
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
        tail(&demo.proc.lines(Stream::Err), 40)
    );
    println!("{}", peer.transcript());
    peer.lines(Stream::Out).join("\n")
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
