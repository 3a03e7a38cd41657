//! The real binaries and third-party peers as child processes, for the process-level tests
//! (`binary.rs`, `console.rs`, `ws_peers.rs`): output collected line by line as it comes,
//! bounded waits for lines and exits, signals by process id, and a kill on drop so that a
//! failing test leaves nothing running.
//!
//! Cargo builds only a crate's own binaries for its tests, so `gatehouse` and `gatehouse-sim`
//! must already be built in the same target directory: `.ci/run` builds every binary before
//! the tests; by hand, `cargo build -p gatehouse-runtime -p gatehouse-sim --bins` ([`bin`]
//! says so when one is missing, and warns when one is older than its sources).

use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The longest any wait for a line may take.
pub const WAIT: Duration = Duration::from_secs(40);

/// The repository's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Where the executable's sibling binaries are: `target/<profile>/`, the parent of the `deps/`
/// folder a test runs from, or the folder of a binary (the benchmarks). Panics, saying how to
/// build it, when `name` is missing.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the executable's path");
    let mut dir = exe.parent().expect("the executable's folder");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target/<profile>/ above deps/");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with \
         `cargo build -p gatehouse-runtime -p gatehouse-sim --bins`",
        path.display()
    );
    if let Some(note) = staleness(&path) {
        eprintln!("warning: {note}");
    }
    path
}

/// A note when a source file the binary is built from is newer than it: a failure may then
/// be the old binary's, not the code's.
fn staleness(binary: &Path) -> Option<String> {
    let built = std::fs::metadata(binary).ok()?.modified().ok()?;
    let root = workspace_root();
    let newest = [
        "actors/src",
        "adapters/src",
        "api/src",
        "runtime/src",
        "simulations/src",
    ]
    .iter()
    .filter_map(|d| newest_file(&root.join(d)))
    .max()?;
    (newest > built).then(|| {
        format!(
            "{} is older than its sources; rebuild it with \
             `cargo build -p gatehouse-runtime -p gatehouse-sim --bins`",
            binary.display()
        )
    })
}

fn newest_file(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                newest_file(&e.path())
            } else {
                meta.modified().ok()
            }
        })
        .max()
}

/// Which output of a process.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Out,
    Err,
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

/// A child process whose output is collected line by line.
pub struct Proc {
    name: String,
    child: Child,
    out: Lines,
    err: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with piped output, no input, and an environment free of the settings of
    /// whoever runs the tests (`RUST_LOG`, `GATEHOUSE_*`), without colours in the logs.
    /// Variables the test sets on `cmd` itself are kept.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        Self::start(name, cmd, None)
    }

    /// Like [`Proc::spawn`], with `input` as the child's whole standard input.
    pub fn spawn_with_input(name: &str, cmd: &mut Command, input: &str) -> Proc {
        Self::start(name, cmd, Some(input))
    }

    fn start(name: &str, cmd: &mut Command, input: Option<&str>) -> Proc {
        let own: Vec<String> = cmd
            .get_envs()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for (var, _) in std::env::vars() {
            if (var.starts_with("GATEHOUSE_") || var == "RUST_LOG") && !own.contains(&var) {
                cmd.env_remove(var);
            }
        }
        cmd.env("NO_COLOR", "1")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin
                .write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("cannot write to {name}'s input: {e}"));
            // Dropped here: the child reads to the end of its input.
        }
        let (out, err) = (Lines::default(), Lines::default());
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), out.clone()),
            collect(child.stderr.take().expect("piped stderr"), err.clone()),
        ];
        Proc {
            name: name.to_string(),
            child,
            out,
            err,
            readers,
        }
    }

    pub fn lines(&self, stream: Stream) -> Vec<String> {
        let lines = match stream {
            Stream::Out => &self.out,
            Stream::Err => &self.err,
        };
        lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many lines of `stream` contain every one of `needles`.
    pub fn count(&self, stream: Stream, needles: &[&str]) -> usize {
        self.lines(stream)
            .iter()
            .filter(|l| needles.iter().all(|x| l.contains(x)))
            .count()
    }

    /// Waits until `stream` has at least `n` lines containing `needle`; returns the first.
    pub fn wait_for(&mut self, stream: Stream, needle: &str, n: usize) -> String {
        self.wait_for_all(stream, &[needle], n)
    }

    /// Waits until `stream` has at least `n` lines containing every one of `needles`;
    /// returns the first.
    pub fn wait_for_all(&mut self, stream: Stream, needles: &[&str], n: usize) -> String {
        let what = format!("{n} × {needles:?}");
        self.wait_line(stream, &what, WAIT, |lines| {
            let found: Vec<&String> = lines
                .iter()
                .filter(|l| needles.iter().all(|x| l.contains(x)))
                .collect();
            (found.len() >= n).then(|| found[0].clone())
        })
    }

    /// Waits (up to `limit`) until `pick` makes something of the lines of `stream` so far;
    /// panics, with the transcript, when the process exits first or the time is up.
    pub fn wait_line<T>(
        &mut self,
        stream: Stream,
        what: &str,
        limit: Duration,
        pick: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = pick(&self.lines(stream)) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_readers();
                if let Some(found) = pick(&self.lines(stream)) {
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
                "{} did not print {what} within {limit:?}\n{}",
                self.name,
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends a signal (`TERM`, `KILL`, `INT`) to this process, by its id.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the process to exit (and its output to be read to the end);
    /// `None` if it is still running then.
    pub fn try_wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_readers();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the process to exit; panics, with the transcript, if it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match self.try_wait_exit(limit) {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {limit:?}\n{}",
                self.name,
                self.transcript()
            ),
        }
    }

    /// Waits (bounded) for the process to exit, killing it if it does not; panics then.
    pub fn finish(&mut self, limit: Duration) -> ExitStatus {
        match self.try_wait_exit(limit) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.try_wait_exit(WAIT);
                panic!(
                    "{} did not finish within {limit:?}: killed\n{}",
                    self.name,
                    self.transcript()
                );
            }
        }
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Everything the process printed so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
            self.lines(Stream::Out).join("\n"),
            self.lines(Stream::Err).join("\n"),
            name = self.name
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The last `n` lines, for failure messages.
pub fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A `gatehouse-sim` child: `controllers` generic controllers (`sim-1`, `sim-2`, …) of
/// `units` gates each, on free ports, with a control port.
pub struct Simulator {
    pub proc: Proc,
    /// `(name, host:port)` of each controller, in order.
    pub controllers: Vec<(String, String)>,
    /// The control port's address.
    pub control: String,
}

impl Simulator {
    /// On free ports.
    pub fn spawn(controllers: usize, units: u8, travel_ms: u64) -> Simulator {
        Self::spawn_on(0, controllers, units, travel_ms)
    }

    /// With the first controller on `base_port` (0: free ports), for a restart on the same
    /// address.
    pub fn spawn_on(base_port: u16, controllers: usize, units: u8, travel_ms: u64) -> Simulator {
        let mut proc = Proc::spawn(
            "gatehouse-sim",
            Command::new(bin("gatehouse-sim")).args([
                "--controllers",
                &controllers.to_string(),
                "--units",
                &units.to_string(),
                "--profile",
                "generic",
                "--travel-ms",
                &travel_ms.to_string(),
                "--name-prefix",
                "sim",
                "--base-port",
                &base_port.to_string(),
                "--control",
                "127.0.0.1:0",
            ]),
        );
        // `sim-1 127.0.0.1:PORT generic units=1,2`, one per controller, then `control ADDR`.
        let second = |line: &str| {
            line.split_whitespace()
                .nth(1)
                .unwrap_or_else(|| panic!("no address in {line:?}"))
                .to_string()
        };
        let control = second(&proc.wait_for(Stream::Out, "control ", 1));
        let controllers = (1..=controllers)
            .map(|n| {
                let name = format!("sim-{n}");
                let line = proc.wait_for(Stream::Out, &format!("{name} "), 1);
                (name, second(&line))
            })
            .collect();
        Simulator {
            proc,
            controllers,
            control,
        }
    }

    /// Sends one control command and checks that it answered `ok`.
    pub fn control(&self, command: &str) {
        use std::net::TcpStream;
        let mut stream = TcpStream::connect(&self.control).expect("the control port answers");
        stream.set_read_timeout(Some(WAIT)).expect("a read timeout");
        writeln!(stream, "{command}").expect("send a control command");
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .expect("an answer from the control port");
        assert_eq!(answer.trim(), "ok", "{command}");
    }

    /// Sends one control command that prints lines (`status`, `writes`, `list`) and answers
    /// them, checking that it ended `ok`.
    pub fn query(&self, command: &str) -> Vec<String> {
        use std::net::TcpStream;
        let mut stream = TcpStream::connect(&self.control).expect("the control port answers");
        stream.set_read_timeout(Some(WAIT)).expect("a read timeout");
        writeln!(stream, "{command}").expect("send a control command");
        let mut lines = Vec::new();
        for line in BufReader::new(stream).lines() {
            let line = line.expect("an answer from the control port");
            if line == "ok" {
                return lines;
            }
            assert!(!line.starts_with("error:"), "{command}: {line}");
            lines.push(line);
        }
        panic!("{command}: the control port closed before ok; got {lines:?}");
    }

    /// The first controller's address.
    pub fn addr(&self) -> &str {
        &self.controllers[0].1
    }

    /// A fleet file with every controller of the simulator and `units` gates on each, named
    /// `<controller>-g<unit>`.
    pub fn fleet_file(&self, units: u8) -> String {
        let mut out = String::from("[[site]]\nid = \"site\"\nname = \"Site\"\n");
        for (name, addr) in &self.controllers {
            out.push_str(&format!(
                "\n[[controller]]\nid = \"{name}\"\nsite = \"site\"\nprofile = \"generic\"\n\
                 endpoint = \"{addr}\"\n"
            ));
            for unit in 1..=units {
                out.push_str(&format!(
                    "\n[[gate]]\nid = \"{name}-g{unit}\"\ncontroller = \"{name}\"\nunit = {unit}\n"
                ));
            }
        }
        out
    }
}

/// `gatehouse user add NAME --role ROLE --password-stdin --config CONFIG`, run in `dir`.
pub fn add_user(dir: &Path, config: &Path, name: &str, role: &str, password: &str) {
    add_user_with_email(dir, config, name, role, password, None);
}

/// [`add_user`], with `--email EMAIL` when given.
pub fn add_user_with_email(
    dir: &Path,
    config: &Path,
    name: &str,
    role: &str,
    password: &str,
    email: Option<&str>,
) {
    let mut command = Command::new(bin("gatehouse"));
    command.args(["user", "add", name, "--role", role]);
    if let Some(email) = email {
        command.args(["--email", email]);
    }
    command
        .args(["--password-stdin", "--config"])
        .arg(config)
        .current_dir(dir);
    let mut add =
        Proc::spawn_with_input("gatehouse user add", &mut command, &format!("{password}\n"));
    let status = add.finish(WAIT);
    assert!(
        status.success(),
        "gatehouse user add failed ({status})\n{}",
        add.transcript()
    );
}

/// `gatehouse serve --config CONFIG` in `dir`, once its API listens; with the API's address.
pub fn serve_api(dir: &Path, config: &Path) -> (Proc, std::net::SocketAddr) {
    let mut serve = Proc::spawn(
        "gatehouse serve",
        Command::new(bin("gatehouse"))
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(dir),
    );
    let line = serve.wait_for(Stream::Err, "API on http://", 1);
    let start = line.find("http://").expect("a URL") + "http://".len();
    let end = line[start..].find('/').expect("a path") + start;
    let addr = line[start..end].parse().expect("an address");
    (serve, addr)
}

/// A pseudo-terminal pair made by socat: two ends of one serial line, such as a controller
/// (or the simulator) on `a` and Gatehouse on `b`. Killed on drop. Needs `socat` (`.ci/run`
/// installs it).
pub struct PtyPair {
    socat: Child,
    pub a: PathBuf,
    pub b: PathBuf,
    _dir: tempfile::TempDir,
}

impl PtyPair {
    pub fn spawn() -> PtyPair {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (a, b) = (dir.path().join("tty-a"), dir.path().join("tty-b"));
        let socat = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start socat ({e}); .ci/run installs it"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(a.exists() && b.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "socat made no pty pair within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PtyPair {
            socat,
            a,
            b,
            _dir: dir,
        }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}
