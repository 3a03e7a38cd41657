//! Faults of the embedded database, injected for real.
//!
//! Locked by another process, with an event-log queue small enough to fill: a Python `sqlite3` process holds an exclusive lock on the runtime's database file.
//! Commands are still `accepted` (that needs the controller, not the database) and the gates
//! really move, but the event log's commits fail (it says so: unhealthy), its queue fills, the
//! gates wait on it (backpressure, not loss), and no terminal outcome is told. Once the lock
//! is released everything queued is committed: every outcome arrives, and every gate's stored
//! events run 1..=seq without a gap.
//!
//! Disk full, with `gatehouse serve` as a child process: a file size limit (RLIMIT_FSIZE, set
//! from outside with `prlimit`, SIGXFSZ ignored so that writes fail with EFBIG instead of
//! killing it) a little above the write-ahead log's size after start. The WAL is the file that
//! grows (the database file is written only by checkpoints, after 1,000 pages), so commits
//! fail once it reaches the limit, as `disk I/O error` or `database or disk is full`. The
//! runtime says so on `/readyz` (the event log not ready, naming the error), tells no terminal
//! outcome meanwhile (a REST caller waiting for one gets `202 accepted`), and once the limit is
//! lifted commits everything that waited: every outcome told is stored exactly once, every
//! gate's events run 1..=seq.
//!
//! Read-only at start, as an unprivileged user (root writes anything): `gatehouse serve` exits
//! non-zero at once, naming the file or directory it cannot write, without a panic and without
//! serving. (A file made read-only while running changes nothing: open descriptors keep their
//! write access, and the pool opens no new connection; so there is no test of it.)
//!
//! Removed while running: SQLite in WAL mode does not notice (its `SQLITE_READONLY_DBMOVED`
//! covers rollback journals) and would go on committing into the unlinked file, so the store
//! checks the path before each commit. Moved away and back: nothing is committed or told while
//! it is away, both the database and the event log checks say why, and it all lands once the
//! file is back. Removed for good: the same, until a restart starts a new, empty database.
//!
//! Needs `python3` (its standard `sqlite3` module; `.ci/run` puts a venv's first in PATH),
//! `prlimit` and `setpriv` (util-linux), `id` (coreutils), `sh`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_actors::gate::{Action, CommandStatus, EventKind, GateState, HwState};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_actors::tree::gate::{Ack, AckSink};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::store::Store;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec};
use gatehouse_tests::drive::stored_events;
use gatehouse_tests::http::{Http, Reply};
use gatehouse_tests::procs::{Proc, Simulator, Stream, add_user, bin};
use reqwest::Method;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);
const CONTROLLER: &str = "yard";
const UNITS: [u8; 4] = [1, 2, 3, 4];
/// Fewer entries than the commands below make events: the queue fills.
const QUEUE: usize = 4;

fn gate(unit: u8) -> GateId {
    GateId::new(&format!("{CONTROLLER}-{unit}")).expect("a valid slug")
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "not {what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process holding an exclusive lock on the SQLite file at `path` until `release` exists.
fn lock_holder(path: &std::path::Path, release: &std::path::Path) -> Proc {
    let script = "import os, sqlite3, sys, time\n\
        db, release = sys.argv[1], sys.argv[2]\n\
        c = sqlite3.connect(db, isolation_level=None, timeout=30)\n\
        c.execute('BEGIN EXCLUSIVE')\n\
        print('locked', flush=True)\n\
        deadline = time.time() + 120\n\
        while not os.path.exists(release) and time.time() < deadline:\n    time.sleep(0.02)\n\
        c.execute('COMMIT')\n\
        print('released', flush=True)\n";
    Proc::spawn(
        "python3 sqlite3 lock",
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(path)
            .arg(release),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_holds_outcomes_back_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = dir.path().join("gatehouse.db");
    let profiles = ProfileSet::builtin().expect("the built-in profiles load");
    let farm = Farm::start(FarmSpec {
        controllers: vec![
            SimControllerSpec::new(CONTROLLER, "generic", UNITS)
                .with_travel(Duration::from_millis(600)),
        ],
        profiles: profiles.clone(),
    })
    .await
    .expect("the farm starts");
    let sim = farm.controller(CONTROLLER).expect("started above");
    let mut toml = format!(
        "[[site]]\nid = \"test\"\nname = \"Test\"\n\n[[controller]]\nid = \"{CONTROLLER}\"\n\
         site = \"test\"\nprofile = \"generic\"\nendpoint = \"{}\"\npoll_interval_ms = 200\n",
        sim.local_addr()
    );
    for unit in UNITS {
        toml.push_str(&format!(
            "\n[[gate]]\nid = \"{}\"\ncontroller = \"{CONTROLLER}\"\nunit = {unit}\n\
             travel_timeout_s = 30\n",
            gate(unit)
        ));
    }
    let file = FleetFile::parse("fleet.toml", &toml, &profiles).expect("a valid fleet");
    let store = Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("the database opens");
    store.migrate().await.expect("migrations run");
    let store = Arc::new(store);
    let runtime = Runtime::boot_tree(
        store.clone(),
        profiles,
        Some(&file),
        LocalBus::default(),
        None,
        gatehouse_runtime::boot::TreeOptions {
            eventlog_queue: QUEUE,
            ..Default::default()
        },
    )
    .await
    .expect("boots");
    let log = runtime
        .fleet
        .context()
        .eventlog
        .clone()
        .expect("an event log");
    assert_eq!(log.queue_capacity(), QUEUE);
    for unit in UNITS {
        wait_for("every gate closed", async || {
            runtime
                .fleet
                .view(&gate(unit))
                .await
                .is_ok_and(|v| v.snapshot.state == GateState::Closed)
        })
        .await;
    }
    wait_for("everything so far committed", async || {
        log.queue_depth() == 0
    })
    .await;

    // Another process locks the database.
    let release = dir.path().join("release");
    let mut holder = lock_holder(&db, &release);
    holder.wait_for(Stream::Out, "locked", 1);

    let (tx, mut acks) = mpsc::unbounded_channel::<(GateId, Ack)>();
    let mut ids: Vec<(GateId, CommandId)> = Vec::new();
    for unit in UNITS {
        let tx = tx.clone();
        let sink: AckSink = Arc::new(move |g: &GateId, ack| {
            let _ = tx.send((g.clone(), ack));
        });
        let id = CommandId::random();
        runtime
            .fleet
            .command(&gate(unit), id, Action::Open, Some(sink))
            .expect("sent");
        ids.push((gate(unit), id));
    }
    // Every command is accepted and every gate really opens: neither needs the database.
    let mut accepted = 0;
    while accepted < UNITS.len() {
        let (g, ack) = timeout(WAIT, acks.recv())
            .await
            .expect("accepted in time")
            .expect("acks flow");
        assert_eq!(ack.status, CommandStatus::Accepted, "{g}: {ack:?}");
        accepted += 1;
    }
    wait_for("the simulated gates open", async || {
        sim.gates()
            .iter()
            .all(|g| g.observation.state == HwState::Open)
    })
    .await;
    // The log says it cannot commit, and its queue fills.
    wait_for("the event log unhealthy", async || {
        !log.stats().is_healthy()
    })
    .await;
    wait_for("the event-log queue full", async || {
        log.queue_depth() == QUEUE
    })
    .await;
    // No terminal outcome was told while nothing could be committed.
    if let Ok(Some((g, ack))) = timeout(Duration::from_millis(500), acks.recv()).await {
        panic!("{g}: {ack:?} was told while the database was locked");
    }

    // The lock goes away: everything queued is committed and told.
    std::fs::write(&release, b"").expect("release the lock");
    holder.wait_for(Stream::Out, "released", 1);
    let mut completed = 0;
    while completed < UNITS.len() {
        let (g, ack) = timeout(WAIT, acks.recv())
            .await
            .expect("outcomes arrive once the lock is gone")
            .expect("acks flow");
        assert!(ids.iter().any(|(gg, id)| *gg == g && *id == ack.id));
        assert_eq!(ack.status, CommandStatus::Completed, "{g}: {ack:?}");
        completed += 1;
    }
    wait_for("the event log healthy again", async || {
        log.stats().is_healthy()
    })
    .await;
    wait_for("the queue drained", async || log.queue_depth() == 0).await;

    // Nothing was lost: every gate's stored events run 1..=seq.
    for unit in UNITS {
        let g = gate(unit);
        let seq = runtime.fleet.view(&g).await.expect("the gate").committed;
        let stored: Vec<u64> = store
            .since(g.clone(), 0, 10_000)
            .await
            .expect("reads")
            .iter()
            .map(|e| e.event.seq)
            .collect();
        assert_eq!(stored, (1..=seq).collect::<Vec<_>>(), "{g}");
    }
    runtime.shutdown(Duration::from_secs(10)).await;
}

const PASSWORD: &str = "sqlite-faults-password-7";
/// Gates on the one simulated controller of the process-level tests.
const SIM_UNITS: u8 = 4;
/// `?wait=true` holds a request this long at most (the API's `MAX_WAIT`); the client waits
/// longer.
const HTTP_WAIT: Duration = Duration::from_secs(60);

/// A temp dir with a fleet file for `sim`, a configuration (any free port, the database at
/// `data/gatehouse.db`) and an operator `ops`.
fn prepare(sim: &Simulator) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("fleet.toml"), sim.fleet_file(SIM_UNITS)).expect("fleet");
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[fleet]\nfile = \"fleet.toml\"\n",
    )
    .expect("config");
    add_user(dir.path(), &config, "ops", "operator", PASSWORD);
    (dir, config)
}

/// `gatehouse serve` with SIGXFSZ ignored (a file size limit then fails writes with EFBIG
/// instead of killing it; ignored signals stay ignored across `exec`), once its gates are
/// online; with its API's address.
fn serve(dir: &Path, config: &Path) -> (Proc, std::net::SocketAddr) {
    let mut proc = Proc::spawn(
        "gatehouse serve",
        Command::new("sh")
            .args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""])
            .arg(bin("gatehouse"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(dir),
    );
    let line = proc.wait_for(Stream::Err, "API on http://", 1);
    let start = line.find("http://").expect("a URL") + "http://".len();
    let end = line[start..].find('/').expect("a path") + start;
    let addr = line[start..end].parse().expect("an address");
    proc.wait_for(Stream::Err, "offline -> ", usize::from(SIM_UNITS));
    (proc, addr)
}

async fn login(http: &Http) -> String {
    let reply = http.login("ops", PASSWORD).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["access_token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

/// `/readyz`: its status code, and each check by name.
async fn readyz(http: &Http) -> (u16, HashMap<String, Value>) {
    let reply = http.call(Method::GET, "/readyz", None, None).await;
    let checks = reply.body["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks: {reply:?}"))
        .iter()
        .map(|c| (c["name"].as_str().expect("a name").to_owned(), c.clone()))
        .collect();
    (reply.status, checks)
}

/// The check `name` is not ready, with a reason containing one of `why`: its reason.
async fn not_ready_because(http: &Http, name: &str, why: &[&str]) -> Option<String> {
    let (status, checks) = readyz(http).await;
    let check = checks.get(name)?;
    let reason = check["reason"].as_str().unwrap_or_default();
    (status == 503 && check["ready"] == false && why.iter().any(|w| reason.contains(w)))
        .then(|| reason.to_owned())
}

async fn is_ready(http: &Http, name: &str) -> bool {
    readyz(http)
        .await
        .1
        .get(name)
        .is_some_and(|c| c["ready"] == true)
}

/// Outcomes told to REST callers: command id, gate, status.
type Told = Arc<Mutex<Vec<(Uuid, String, String)>>>;

/// A REST command with `?wait=true`; a terminal answer (200) is recorded in `told`.
async fn command(http: &Http, token: &str, gate: &str, action: &str, told: &Told) -> Reply {
    let id = Uuid::new_v4();
    let reply = http.command(token, gate, id, action, true).await;
    if reply.status == 200 {
        let status = reply.body["status"].as_str().expect("a status").to_owned();
        told.lock().unwrap().push((id, gate.to_owned(), status));
    }
    reply
}

/// Opens and closes `gate` until `stop`.
async fn keep_commanding(
    http: Http,
    token: String,
    gate: String,
    told: Told,
    stop: Arc<AtomicBool>,
) {
    for action in ["open", "close"].iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        command(&http, &token, &gate, action, &told).await;
    }
}

/// Every gate's stored events run 1..=n, and every outcome in `told` is stored exactly once
/// with the status told; also each of `untold` (accepted, never told) exactly once.
async fn assert_all_stored_once(db: &Path, told: &[(Uuid, String, String)], untold: &[Uuid]) {
    let events = stored_events(db).await;
    let mut finished: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (gate, list) in &events {
        let seqs: Vec<u64> = list.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{gate}");
        for e in list {
            if let EventKind::CommandFinished {
                command, status, ..
            } = e.kind
            {
                finished
                    .entry(command.0)
                    .or_default()
                    .push(status.wire().0.to_owned());
            }
        }
    }
    for (id, gate, status) in told {
        assert_eq!(
            finished.get(id),
            Some(&vec![status.clone()]),
            "told {status} for {id} on {gate}"
        );
    }
    for id in untold {
        assert_eq!(
            finished.get(id).map(Vec::len),
            Some(1),
            "{id} finished once"
        );
    }
}

/// The size of a file (0 when it does not exist).
fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// `prlimit --pid PID --fsize=SOFT:` (the soft limit only: raising it again needs no
/// privilege, and this machine's root may lack CAP_SYS_RESOURCE).
fn limit_file_size(pid: &str, soft: &str) {
    let status = Command::new("prlimit")
        .args(["--pid", pid, &format!("--fsize={soft}:")])
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit --fsize={soft}: failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_outcomes_back_says_why_and_commits_everything_once_it_has_room() {
    let sim = Simulator::spawn(1, SIM_UNITS, 300);
    let (dir, config) = prepare(&sim);
    let (mut server, addr) = serve(dir.path(), &config);
    let http = Http::new(addr, HTTP_WAIT);
    let token = login(&http).await;
    let db = dir.path().join("data/gatehouse.db");
    let wal = dir.path().join("data/gatehouse.db-wal");
    let gates: Vec<String> = (1..=SIM_UNITS).map(|u| format!("sim-1-g{u}")).collect();
    let told = Told::default();
    assert_eq!(
        command(&http, &token, &gates[0], "open", &told)
            .await
            .status,
        200
    );

    // The WAL may grow 32 KiB more: a handful of commits.
    let limit = size(&db).max(size(&wal)) + 32 * 1024;
    limit_file_size(&server.pid(), &limit.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = gates[..3]
        .iter()
        .map(|g| {
            tokio::spawn(keep_commanding(
                Http::new(addr, HTTP_WAIT),
                token.clone(),
                g.clone(),
                told.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    let reason = loop {
        let why = ["disk I/O error", "database or disk is full"];
        if let Some(reason) = not_ready_because(&http, "event_log", &why).await {
            break reason;
        }
        assert!(
            Instant::now() < deadline,
            "commits did not fail within {WAIT:?}\n{}",
            server.transcript()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("outcomes are held back"), "{reason}");
    assert!(size(&wal) <= limit, "the WAL stays within the limit");
    // A command now is accepted (the gate moves) but its outcome is not told: it needs a
    // commit, and none succeeds while the failed batch is retried in front of it.
    let held = Uuid::new_v4();
    let reply = http.command(&token, &gates[3], held, "open", true).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["status"], "accepted", "{reply:?}");
    assert!(
        server.is_running(),
        "a full disk does not end the process\n{}",
        server.transcript()
    );
    assert!(
        not_ready_because(&http, "event_log", &["disk"])
            .await
            .is_some(),
        "still failing while the limit holds"
    );

    // Room again: everything waiting is committed, and the callers are told.
    limit_file_size(&server.pid(), "unlimited");
    wait_for("the event log committing again", async || {
        is_ready(&http, "event_log").await
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        timeout(HTTP_WAIT, client)
            .await
            .expect("the clients stop")
            .expect("no panic");
    }
    let told = told.lock().unwrap().clone();
    assert!(told.len() > 1, "outcomes were told: {told:?}");
    server.signal("TERM");
    let status = server.wait_exit(WAIT);
    assert!(status.success(), "{status}\n{}", server.transcript());
    assert_eq!(
        server.count(Stream::Err, &["panicked"]),
        0,
        "{}",
        server.transcript()
    );
    assert_all_stored_once(&db, &told, &[held]).await;
}

/// `id -u nobody` / `id -g nobody`.
fn nobody_id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "nobody"])
        .output()
        .expect("id runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

/// `gatehouse serve` as `nobody` (root would write a read-only file anyway), from a copy of
/// the binary in `dir` (the build's own path may not be open to other users).
fn serve_as_nobody(dir: &Path, config: &Path) -> Proc {
    let copy = dir.join("gatehouse");
    std::fs::copy(bin("gatehouse"), &copy).expect("copy the binary");
    Proc::spawn(
        "gatehouse serve (nobody)",
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&copy)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(dir),
    )
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_or_directory_stops_serve_at_once_saying_which() {
    let sim = Simulator::spawn(1, SIM_UNITS, 300);
    // (what is read-only, what the error must say)
    for (case, says) in [
        ("file", "the database file ./data/gatehouse.db is read-only"),
        ("directory", "the directory ./data is read-only"),
    ] {
        let (dir, config) = prepare(&sim);
        // A database that exists, migrated and seeded, as a first boot leaves it.
        let (mut first, _) = serve(dir.path(), &config);
        first.signal("TERM");
        assert!(first.wait_exit(WAIT).success(), "{}", first.transcript());
        chmod(dir.path(), 0o755);
        let data = dir.path().join("data");
        let (uid, gid) = (nobody_id("-u"), nobody_id("-g"));
        for entry in std::fs::read_dir(&data)
            .expect("data")
            .chain(std::fs::read_dir(dir.path()).expect("dir"))
        {
            let path = entry.expect("an entry").path();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        }
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).expect("chown");
        chmod(&data, 0o555);
        if case == "file" {
            chmod(&data.join("gatehouse.db"), 0o444);
        }

        let mut server = serve_as_nobody(dir.path(), &config);
        let status = server.wait_exit(WAIT);
        assert!(
            !status.success(),
            "{case}: {status}\n{}",
            server.transcript()
        );
        let err = server.lines(Stream::Err);
        assert!(
            err.iter()
                .any(|l| l.starts_with("error: ") && l.contains(says)),
            "{case}: says {says:?}\n{}",
            server.transcript()
        );
        for never in ["panicked", "API on http://", "fleet restored"] {
            assert_eq!(
                server.count(Stream::Err, &[never]),
                0,
                "{case}: {never}\n{}",
                server.transcript()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_removed_under_serve_commits_nothing_says_so_and_a_restart_starts_anew() {
    let sim = Simulator::spawn(1, SIM_UNITS, 300);
    let (dir, config) = prepare(&sim);
    let (mut server, addr) = serve(dir.path(), &config);
    let http = Http::new(addr, HTTP_WAIT);
    let token = login(&http).await;
    let data = dir.path().join("data");
    let files = ["gatehouse.db", "gatehouse.db-wal", "gatehouse.db-shm"];
    let told = Told::default();
    assert_eq!(
        command(&http, &token, "sim-1-g1", "open", &told)
            .await
            .status,
        200
    );
    assert_eq!(told.lock().unwrap()[0].2, "completed");

    // Moved away: nothing is committed into the file nobody will find, and both checks say
    // why.
    let moved = ["moved.db", "moved.db-wal", "moved.db-shm"];
    for (from, to) in files.iter().zip(moved) {
        std::fs::rename(data.join(from), data.join(to)).expect("move away");
    }
    let held = Uuid::new_v4();
    let waiting = {
        let http = Http::new(addr, HTTP_WAIT);
        let token = token.clone();
        tokio::spawn(async move { http.command(&token, "sim-1-g1", held, "close", true).await })
    };
    let gone = ["was removed or moved away while in use"];
    wait_for("the event log saying the file is gone", async || {
        not_ready_because(&http, "event_log", &gone).await.is_some()
    })
    .await;
    wait_for("the database check saying the file is gone", async || {
        not_ready_because(&http, "database", &gone).await.is_some()
    })
    .await;
    let reply = timeout(HTTP_WAIT, waiting)
        .await
        .expect("answered")
        .expect("no panic");
    assert_eq!(
        reply.status, 202,
        "not told while the file is away: {reply:?}"
    );
    assert_eq!(reply.body["status"], "accepted", "{reply:?}");

    // Back in place: what waited is committed there.
    for (from, to) in moved.iter().zip(files) {
        std::fs::rename(data.join(from), data.join(to)).expect("move back");
    }
    wait_for("the event log committing again", async || {
        is_ready(&http, "event_log").await
    })
    .await;
    wait_for("the database check ready again", async || {
        is_ready(&http, "database").await
    })
    .await;
    let told_before = told.lock().unwrap().clone();
    assert_all_stored_once(&data.join("gatehouse.db"), &told_before, &[held]).await;

    // Removed for good: the same, and a stop that does not hang on it.
    assert_eq!(
        command(&http, &token, "sim-1-g2", "open", &told)
            .await
            .status,
        200
    );
    for file in files {
        std::fs::remove_file(data.join(file)).expect("remove");
    }
    let reply = command(&http, &token, "sim-1-g2", "close", &told).await;
    assert_eq!(
        reply.status, 202,
        "not told once the file is gone: {reply:?}"
    );
    assert!(
        not_ready_because(&http, "event_log", &gone).await.is_some(),
        "{:?}",
        readyz(&http).await
    );
    assert!(server.is_running(), "{}", server.transcript());
    server.signal("TERM");
    server.wait_exit(WAIT);
    assert_eq!(
        server.count(Stream::Err, &["panicked"]),
        0,
        "{}",
        server.transcript()
    );
    assert!(
        !data.join("gatehouse.db").exists(),
        "nothing recreated the file under the old process"
    );

    // A restart starts a new, empty database (seeded from the fleet file, no users).
    let (mut server, addr) = serve(dir.path(), &config);
    let http = Http::new(addr, HTTP_WAIT);
    wait_for("the restarted server ready", async || {
        readyz(&http).await.0 == 200
    })
    .await;
    assert!(data.join("gatehouse.db").exists());
    assert_eq!(
        http.login("ops", PASSWORD).await.status,
        401,
        "the users went with the file"
    );
    server.signal("TERM");
    assert!(server.wait_exit(WAIT).success(), "{}", server.transcript());
}
