//! The embedded database locked by another process, with an event-log queue small enough to
//! fill: a Python `sqlite3` process holds an exclusive lock on the runtime's database file.
//! Commands are still `accepted` (that needs the controller, not the database) and the gates
//! really move, but the event log's commits fail (it says so: unhealthy), its queue fills, the
//! gates wait on it (backpressure, not loss), and no terminal outcome is told. Once the lock
//! is released everything queued is committed: every outcome arrives, and every gate's stored
//! events run 1..=seq without a gap.
//!
//! Needs `python3` (its standard `sqlite3` module; `.ci/run` puts a venv's first in PATH).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::{Action, CommandStatus, GateState, HwState};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_actors::tree::gate::{Ack, AckSink};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_adapters::store::Store;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec};
use gatehouse_tests::procs::{Proc, Stream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

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
        QUEUE,
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
