//! The whole runtime (fleet, controller supervisor, link actor, gate actors) against an
//! independent Modbus stack: pymodbus serving the CAME-style map (`tests/peers/`). A command
//! becomes the profile's write on the wire, and the peer's status codes decode to the right
//! gate states and events. `.ci/run` installs pymodbus; without it this test fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{Action, Cause, CommandStatus, EventKind, GateState};
use gatehouse_actors::ids::{CommandId, GateId};
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_actors::tree::gate::{Ack, AckSink};
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;

const INSTALL_HINT: &str = "run `pip install pymodbus==3.16.1` (.ci/run does)";

/// The pymodbus peer as a child process; killed on drop, pass or fail.
struct Peer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Peer {
    async fn start(port: u16) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/came_pymodbus.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--units", "1,2"])
            .args(["--travel-ms", "400"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 ({e}); {INSTALL_HINT}"));
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut peer = Peer { child, lines };
        assert_eq!(peer.line().await, "READY", "{INSTALL_HINT}");
        peer
    }

    async fn line(&mut self) -> String {
        match timeout(Duration::from_secs(20), self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the pymodbus peer exited; {INSTALL_HINT}"),
            Err(_) => panic!("no line from the pymodbus peer within 20 s"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn fleet(port: u16) -> String {
    format!(
        r#"
[[site]]
id = "yard"
name = "Yard"

[[controller]]
id = "came"
site = "yard"
profile = "came-zlb30"
endpoint = "127.0.0.1:{port}"

[[gate]]
id = "barrier-1"
controller = "came"
unit = 1
travel_timeout_s = 10

[[gate]]
id = "barrier-2"
controller = "came"
unit = 2
travel_timeout_s = 10
"#
    )
}

async fn wait_state(runtime: &Runtime, gate: &GateId, state: GateState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = runtime.fleet.view(gate).await.expect("gate exists");
        if view.snapshot.state == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{gate} stayed {:?}, wanted {state:?}",
            view.snapshot.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
        .expect("gate exists");
    (id, rx)
}

async fn ack(rx: &mut mpsc::UnboundedReceiver<Ack>) -> CommandStatus {
    timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an ack within 20 s")
        .expect("ack channel open")
        .status
}

/// The state changes of `gate` seen so far, with their causes.
fn drain_changes(
    events: &mut broadcast::Receiver<Arc<GateEvent>>,
    gate: &GateId,
) -> Vec<(GateState, GateState, Cause)> {
    let mut out = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if &ev.gate == gate
            && let EventKind::StateChanged { from } = ev.kind
        {
            out.push((from, ev.snapshot.state, ev.cause));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_drives_a_came_board_served_by_pymodbus() {
    let port = free_port();
    let mut peer = Peer::start(port).await;
    let profiles = ProfileSet::builtin().unwrap();
    let file = FleetFile::parse("pymodbus", &fleet(port), &profiles).unwrap();
    let bus = LocalBus::default();
    let mut events = bus.subscribe();
    let runtime = Runtime::start_on(bus, file.controller_specs(&profiles))
        .await
        .unwrap();
    let (one, two) = (
        GateId::new("barrier-1").unwrap(),
        GateId::new("barrier-2").unwrap(),
    );

    // Status 17 decodes to closed.
    wait_state(&runtime, &one, GateState::Closed).await;
    wait_state(&runtime, &two, GateState::Closed).await;
    let cycles_before = runtime.fleet.view(&one).await.unwrap().snapshot.cycles;

    // Open: register 200 := 1 on unit 1; statuses 32 then 16 decode to opening then open.
    let (id, mut acks) = command(&runtime, &one, Action::Open);
    assert_eq!(peer.line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(ack(&mut acks).await, CommandStatus::Completed);
    let view = runtime.fleet.view(&one).await.unwrap();
    assert_eq!(view.snapshot.state, GateState::Open);
    assert_eq!(view.snapshot.position, Some(100));
    assert_eq!(
        view.snapshot.cycles,
        cycles_before.map(|c| c + 1),
        "the 32-bit counter counted the opening"
    );
    let changes = drain_changes(&mut events, &one);
    assert!(
        changes.contains(&(GateState::Closed, GateState::Opening, Cause::Command(id))),
        "{changes:?}"
    );
    assert!(
        changes.contains(&(GateState::Opening, GateState::Open, Cause::Command(id))),
        "{changes:?}"
    );

    // Close: the profile has a warning output (201), run before the close (200 := 2).
    let (id, mut acks) = command(&runtime, &one, Action::Close);
    assert_eq!(peer.line().await, "WRITE unit=1 register=201 value=1");
    assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(peer.line().await, "WRITE unit=1 register=200 value=2");
    assert_eq!(ack(&mut acks).await, CommandStatus::Completed);
    wait_state(&runtime, &one, GateState::Closed).await;
    let changes = drain_changes(&mut events, &one);
    assert!(
        changes.contains(&(GateState::Open, GateState::Closing, Cause::Command(id))),
        "{changes:?}"
    );

    // Unit 2 was never written to and never moved.
    assert_eq!(
        runtime.fleet.view(&two).await.unwrap().snapshot.state,
        GateState::Closed
    );
    assert!(
        peer.lines.try_recv().is_err(),
        "no other write reached the controller"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}
