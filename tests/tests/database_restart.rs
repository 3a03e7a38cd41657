//! The event log across a database restart, on a private PostgreSQL cluster started for this
//! test alone (the shared server on 5432 is never touched): with the database down a command
//! is still `accepted` and the gate really moves, but its terminal outcome is not told and the
//! log reports itself unhealthy; once the cluster is back the outcome arrives, the log is
//! healthy again, the `command_finished` event is stored, every gate's stored sequence is
//! gap-free, and the committed events reach the bus only after the restart. The cluster runs
//! from `/usr/lib/postgresql/<highest>/bin` (as the `postgres` user when the test runs as
//! root, since `initdb` refuses root) and is stopped by a drop guard, pass or fail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{Action, CommandStatus, EventKind, GateState, HwState};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_actors::tree::gate::{Ack, AckSink};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::store::Store;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec, SimController};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, timeout};

const INSTALL_HINT: &str = "install the PostgreSQL server (`apt-get install postgresql`; .ci/run \
                            does): this test needs initdb and pg_ctl";

/// The longest any bounded wait may take.
const WAIT: Duration = Duration::from_secs(30);
/// How long the test listens for an outcome that must not come while the database is down.
const SILENCE: Duration = Duration::from_secs(2);
/// The simulated gates' full travel time.
const TRAVEL: Duration = Duration::from_millis(500);
const CONTROLLER: &str = "yard";
const UNITS: [u8; 3] = [1, 2, 3];

/// A PostgreSQL cluster of its own in a temporary directory; stopped (immediately) on drop.
struct PrivateCluster {
    /// Holds `data/`, the socket and the server log; removed on drop, after the stop.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Whether the tools run through `runuser -u postgres` (the test runs as root).
    as_postgres: bool,
    running: bool,
}

impl PrivateCluster {
    /// The `bin` directory of the highest PostgreSQL version installed.
    fn bin_dir() -> PathBuf {
        let root = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
            .unwrap_or_else(|e| panic!("cannot list {} ({e}); {INSTALL_HINT}", root.display()))
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                (bin.join("initdb").exists() && bin.join("pg_ctl").exists())
                    .then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, bin)| bin)
            .unwrap_or_else(|| panic!("no initdb/pg_ctl under {}; {INSTALL_HINT}", root.display()))
    }

    fn running_as_root() -> bool {
        let out = Command::new("id").arg("-u").output().expect("`id -u` runs");
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    }

    /// Creates the cluster and starts it on a free loopback port.
    fn start() -> PrivateCluster {
        let bin = Self::bin_dir();
        let as_postgres = Self::running_as_root();
        let dir = tempfile::tempdir().expect("tempdir");
        if as_postgres {
            let out = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .output()
                .expect("chown runs");
            assert!(
                out.status.success(),
                "cannot hand {} to the postgres user: {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut cluster = PrivateCluster {
            dir,
            bin,
            port,
            as_postgres,
            running: false,
        };
        let data = cluster.data();
        // -N: this throwaway cluster need not be fsynced by initdb.
        let out = cluster
            .tool("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-N"])
            .output()
            .expect("initdb runs");
        cluster.check("initdb", &out);
        cluster.start_server();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A PostgreSQL tool, as the `postgres` user when running as root.
    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        };
        // The postgres user may not be allowed into the test's working directory.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn check(&self, what: &str, out: &Output) {
        assert!(
            out.status.success(),
            "{what} failed ({}): {}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    /// Starts the server and waits until it accepts connections.
    fn start_server(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl runs");
        self.check("pg_ctl start", &out);
        self.running = true;
    }

    /// Stops the server: `immediate` is a crash as far as clients are concerned.
    fn stop_server(&mut self, mode: &str) -> Output {
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output()
            .expect("pg_ctl runs");
        if out.status.success() {
            self.running = false;
        }
        out
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop_server("immediate");
        }
    }
}

/// The fleet file for the farm's one controller: gate `yard-N` on unit N.
fn fleet_toml(sim: &SimController) -> String {
    let mut toml = format!(
        "[[site]]\nid = \"test\"\nname = \"Test site\"\n\n[[controller]]\nid = \"{CONTROLLER}\"\n\
         site = \"test\"\nprofile = \"generic\"\nendpoint = \"{}\"\npoll_interval_ms = 200\n",
        sim.local_addr()
    );
    for unit in UNITS {
        toml.push_str(&format!(
            "\n[[gate]]\nid = \"{}\"\ncontroller = \"{CONTROLLER}\"\nunit = {unit}\n\
             travel_timeout_s = 10\n",
            gate(unit)
        ));
    }
    toml
}

fn gate(unit: u8) -> GateId {
    GateId::new(&format!("{CONTROLLER}-{unit}")).expect("a valid slug")
}

/// Sends `action` to `gate` with a fresh id; its acks arrive on the returned channel.
fn command(
    runtime: &Runtime,
    gate: &GateId,
    action: Action,
) -> (CommandId, mpsc::UnboundedReceiver<Ack>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink: AckSink = Arc::new(move |_: &GateId, ack| {
        let _ = tx.send(ack);
    });
    let id = CommandId::random();
    runtime
        .fleet
        .command(gate, id, action, Some(sink))
        .unwrap_or_else(|e| panic!("sending {action:?} to {gate}: {e}"));
    (id, rx)
}

/// The next status of command `id`, waiting at most `within`; `None` if none came.
async fn next_ack(
    rx: &mut mpsc::UnboundedReceiver<Ack>,
    id: CommandId,
    within: Duration,
) -> Option<CommandStatus> {
    match timeout(within, rx.recv()).await {
        Ok(Some(ack)) => {
            assert_eq!(ack.id, id, "an ack for another command");
            Some(ack.status)
        }
        Ok(None) => panic!("the acks of {id} ended without a terminal status"),
        Err(_) => None,
    }
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "not {what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_state(runtime: &Runtime, gate: &GateId, state: GateState) {
    wait_for(&format!("{gate} {}", state.as_str()), async || {
        runtime
            .fleet
            .view(gate)
            .await
            .expect("gate exists")
            .snapshot
            .state
            == state
    })
    .await;
}

fn log_healthy(runtime: &Runtime) -> bool {
    runtime
        .fleet
        .context()
        .eventlog
        .as_ref()
        .expect("a runtime booted from a store has an event log")
        .stats()
        .is_healthy()
}

/// Everything published on the bus so far.
fn drain(events: &mut broadcast::Receiver<Arc<GateEvent>>) -> Vec<Arc<GateEvent>> {
    let mut out = Vec::new();
    loop {
        match events.try_recv() {
            Ok(ev) => out.push(ev),
            Err(broadcast::error::TryRecvError::Empty) => return out,
            Err(e) => panic!("the bus subscription failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_wait_for_a_restarted_database_and_the_log_resumes_without_gaps() {
    let mut pg = tokio::task::block_in_place(PrivateCluster::start);

    let profiles = ProfileSet::builtin().expect("the built-in profiles load");
    let farm = Farm::start(FarmSpec {
        controllers: vec![SimControllerSpec::new(CONTROLLER, "generic", UNITS).with_travel(TRAVEL)],
        profiles: profiles.clone(),
    })
    .await
    .expect("the farm starts on an ephemeral port");
    let sim = farm.controller(CONTROLLER).expect("started above");
    let toml = fleet_toml(sim);
    let file = FleetFile::parse("restart-fleet.toml", &toml, &profiles)
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));

    let store = Store::connect(&pg.url())
        .await
        .expect("the private cluster accepts connections");
    assert!(
        store.migrate().await.expect("migrations run") > 0,
        "a fresh cluster needs the migrations"
    );
    let store = Arc::new(store);
    let bus = LocalBus::default();
    let mut published = bus.subscribe();
    let runtime = Runtime::boot(store.clone(), profiles, Some(&file), bus)
        .await
        .expect("the runtime boots from the store");
    for unit in UNITS {
        wait_state(&runtime, &gate(unit), GateState::Closed).await;
    }
    assert!(
        log_healthy(&runtime),
        "the log is healthy with the database up"
    );

    // With the database up: the whole command, outcome included.
    let one = gate(1);
    let (first, mut acks) = command(&runtime, &one, Action::Open);
    assert_eq!(
        next_ack(&mut acks, first, WAIT).await,
        Some(CommandStatus::Accepted)
    );
    assert_eq!(
        next_ack(&mut acks, first, WAIT).await,
        Some(CommandStatus::Completed)
    );
    wait_state(&runtime, &one, GateState::Open).await;

    // The database goes away without warning.
    let two = gate(2);
    let two_seq_before = runtime.fleet.view(&two).await.expect("gate exists").seq;
    let out = tokio::task::block_in_place(|| pg.stop_server("immediate"));
    pg.check("pg_ctl stop -m immediate", &out);

    let (second, mut acks) = command(&runtime, &two, Action::Open);
    assert_eq!(
        next_ack(&mut acks, second, WAIT).await,
        Some(CommandStatus::Accepted),
        "accepted does not wait for the database"
    );
    wait_for("yard-2 open in the simulator", async || {
        sim.gate(2)
            .is_some_and(|g| g.observation.state == HwState::Open)
    })
    .await;
    wait_state(&runtime, &two, GateState::Open).await;
    wait_for("the event log reporting itself unhealthy", async || {
        !log_healthy(&runtime)
    })
    .await;
    if let Some(status) = next_ack(&mut acks, second, SILENCE).await {
        panic!("{status:?} was told while the database was down");
    }
    assert!(!log_healthy(&runtime), "still unhealthy while down");
    assert!(
        store.ping().await.is_err(),
        "the readiness ping sees the database gone"
    );
    let early: Vec<u64> = drain(&mut published)
        .iter()
        .filter(|ev| ev.gate == two && ev.seq > two_seq_before)
        .map(|ev| ev.seq)
        .collect();
    assert!(
        early.is_empty(),
        "events of yard-2 reached the bus uncommitted: seqs {early:?}"
    );

    // The database comes back: the held outcome is told, once its event is committed.
    tokio::task::block_in_place(|| pg.start_server());
    assert_eq!(
        next_ack(&mut acks, second, WAIT).await,
        Some(CommandStatus::Completed),
        "the outcome held during the outage arrives after the restart"
    );
    assert!(
        timeout(WAIT, acks.recv())
            .await
            .expect("the acks end")
            .is_none(),
        "nothing follows the terminal status"
    );
    wait_for("the event log healthy again", async || {
        log_healthy(&runtime)
    })
    .await;
    wait_for("the readiness ping answered again", async || {
        store.ping().await.is_ok()
    })
    .await;

    // What was held back reaches the bus, in order, without a gap.
    let after: Vec<u64> = drain(&mut published)
        .iter()
        .filter(|ev| ev.gate == two && ev.seq > two_seq_before)
        .map(|ev| ev.seq)
        .collect();
    let expected: Vec<u64> = (two_seq_before + 1..=two_seq_before + after.len() as u64).collect();
    assert!(
        !after.is_empty(),
        "yard-2's events reached the bus after the restart"
    );
    assert_eq!(
        after, expected,
        "yard-2's events on the bus, in order and gap-free"
    );

    // The store holds both outcomes, once each, and every gate's history is gap-free.
    let finished = store
        .finished_commands(0)
        .await
        .expect("finished commands read back");
    for (id, gate) in [(first, &one), (second, &two)] {
        let rows: Vec<_> = finished.iter().filter(|f| f.id == id).collect();
        assert_eq!(rows.len(), 1, "command {id} is stored once: {finished:?}");
        assert_eq!(&rows[0].gate, gate);
        assert_eq!(rows[0].action, Action::Open);
        assert_eq!(rows[0].status, CommandStatus::Completed);
    }
    let heads: HashMap<GateId, u64> = store
        .heads()
        .await
        .expect("heads read back")
        .into_iter()
        .map(|(g, h)| (g, h.seq))
        .collect();
    for unit in UNITS {
        let id = gate(unit);
        let head = heads.get(&id).copied().unwrap_or(0);
        let events = store.since(id.clone(), 0, 100_000).await.expect("since");
        let seqs: Vec<u64> = events.iter().map(|e| e.event.seq).collect();
        assert_eq!(
            seqs,
            (1..=head).collect::<Vec<_>>(),
            "{id}: stored sequence has a gap or a duplicate"
        );
        let live = runtime.fleet.view(&id).await.expect("gate exists").seq;
        assert_eq!(head, live, "{id}: every event the gate made is stored");
    }
    let two_events = store.since(two.clone(), 0, 100_000).await.expect("since");
    assert!(
        two_events.iter().any(|e| matches!(
            e.event.kind,
            EventKind::CommandFinished { command, status: CommandStatus::Completed, .. }
                if command == second
        )),
        "yard-2's command_finished event is stored"
    );

    runtime.shutdown(Duration::from_secs(10)).await;
    store.close();
    farm.shutdown().await;
    let out = tokio::task::block_in_place(|| pg.stop_server("fast"));
    pg.check("pg_ctl stop -m fast", &out);
}
