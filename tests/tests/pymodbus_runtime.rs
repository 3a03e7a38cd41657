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
use gatehouse_actors::ids::GateId;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use gatehouse_tests::drive::{ack, command, wait_state};
use gatehouse_tests::procs::PtyPair;
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
        Self::start_with(port, &[]).await
    }

    /// The peer with extra options (`--clear-command`).
    async fn start_with(port: u16, options: &[&str]) -> Peer {
        Self::spawn(&["--port", &port.to_string()], options).await
    }

    /// The peer on `place` (`--port P` or `--serial DEV`), with `options`.
    async fn spawn(place: &[&str], options: &[&str]) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/came_pymodbus.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(place)
            .args(["--units", "1,2"])
            .args(["--travel-ms", "400"])
            .args(options)
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
    fleet_on(port, "came-zlb30")
}

fn fleet_on(port: u16, profile: &str) -> String {
    fleet_with(profile, &format!("endpoint = \"127.0.0.1:{port}\""))
}

/// The runtime on `fleet` (a fleet file's text), with a local bus.
async fn runtime_for(fleet: &str, profiles: &ProfileSet) -> Runtime {
    let file = FleetFile::parse("pymodbus", fleet, profiles).expect("a valid fleet");
    Runtime::start_on(LocalBus::default(), file.controller_specs(profiles))
        .await
        .expect("the runtime starts")
}

/// The two-gate fleet with the controller reached as `link` says (its transport keys).
fn fleet_with(profile: &str, link: &str) -> String {
    format!(
        r#"
[[site]]
id = "yard"
name = "Yard"

[[controller]]
id = "came"
site = "yard"
profile = "{profile}"
{link}

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

/// How many times the runtime's links have connected.
fn connects(runtime: &Runtime) -> u64 {
    runtime
        .fleet
        .context()
        .link_stats()
        .iter()
        .map(|(_, s)| s.connects.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
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

/// A board that clears its command register as it takes a command, and answers the write with
/// the register's content (0) rather than an echo: with the default `write_echo = "address"`
/// the gate opens and closes; with `write_echo = "exact"` the command fails with
/// `write_not_confirmed`, and the gate, its neighbour and the link stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_that_clears_its_command_register_is_driven_through_its_profile() {
    let port = free_port();
    let mut peer = Peer::start_with(port, &["--clear-command"]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("came-exact.toml"),
        format!(
            "write_echo = \"exact\"\n{}",
            include_str!("../../config/profiles/came-zlb30.toml")
        ),
    )
    .unwrap();
    let mut profiles = ProfileSet::builtin().unwrap();
    profiles.load_dir(dir.path()).unwrap();
    let (one, two) = (
        GateId::new("barrier-1").unwrap(),
        GateId::new("barrier-2").unwrap(),
    );

    // The default profile: the answer names register 200, which confirms the write.
    let runtime = runtime_for(&fleet(port), &profiles).await;
    wait_state(&runtime, &one, GateState::Closed).await;
    for (action, end, value) in [
        (Action::Open, GateState::Open, 1),
        (Action::Close, GateState::Closed, 2),
    ] {
        let (_, mut acks) = command(&runtime, &one, action);
        if action == Action::Close {
            assert_eq!(peer.line().await, "WRITE unit=1 register=201 value=1");
        }
        assert_eq!(
            peer.line().await,
            format!("WRITE unit=1 register=200 value={value}")
        );
        assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
        assert_eq!(ack(&mut acks).await, CommandStatus::Completed);
        wait_state(&runtime, &one, end).await;
    }
    runtime.shutdown(Duration::from_secs(5)).await;

    // A profile that wants an exact echo: the write is not confirmed, and only that command
    // fails; the link stays up and both gates stay online.
    let runtime = runtime_for(&fleet_on(port, "came-exact"), &profiles).await;
    wait_state(&runtime, &one, GateState::Closed).await;
    let before = connects(&runtime);
    let (_, mut acks) = command(&runtime, &one, Action::Open);
    assert_eq!(peer.line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(
        ack(&mut acks).await,
        CommandStatus::Failed(gatehouse_actors::gate::FailReason::WriteNotConfirmed)
    );
    // The controller did take the command: the gate is followed as it opens by itself.
    wait_state(&runtime, &one, GateState::Open).await;
    assert_eq!(
        runtime.fleet.view(&two).await.unwrap().snapshot.state,
        GateState::Closed,
        "the neighbour stays online"
    );
    assert_eq!(connects(&runtime), before, "the link never dropped");
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A unit that reports values its map does not have (status code 99, position 150 of 100) is
/// that gate's business: it reads `unknown` at 100 %, and its neighbour and the link carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_reporting_values_off_its_map_is_unknown_and_its_neighbour_carries_on() {
    let port = free_port();
    let mut peer = Peer::start_with(port, &["--off-map-unit", "2"]).await;
    let profiles = ProfileSet::builtin().unwrap();
    let runtime = runtime_for(&fleet(port), &profiles).await;
    let (one, two) = (
        GateId::new("barrier-1").unwrap(),
        GateId::new("barrier-2").unwrap(),
    );
    wait_state(&runtime, &one, GateState::Closed).await;
    wait_state(&runtime, &two, GateState::Unknown).await;
    let odd = runtime.fleet.view(&two).await.unwrap().snapshot;
    assert_eq!(
        odd.position,
        Some(100),
        "a position beyond the map's maximum is clamped"
    );

    // The neighbour is driven as usual on the same link.
    let (_, mut acks) = command(&runtime, &one, Action::Open);
    assert_eq!(peer.line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(ack(&mut acks).await, CommandStatus::Completed);
    assert_eq!(connects(&runtime), 1, "the link never dropped");
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// Opens then closes barrier-1 and checks both commands complete, with the writes the
/// came-zlb30 profile makes reaching the peer.
async fn open_and_close(runtime: &Runtime, peer: &mut Peer) {
    let one = GateId::new("barrier-1").unwrap();
    wait_state(runtime, &one, GateState::Closed).await;
    let (_, mut acks) = command(runtime, &one, Action::Open);
    assert_eq!(peer.write_line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(ack(&mut acks).await, CommandStatus::Completed);
    assert_eq!(
        runtime.fleet.view(&one).await.unwrap().snapshot.state,
        GateState::Open
    );
    let (_, mut acks) = command(runtime, &one, Action::Close);
    assert_eq!(peer.write_line().await, "WRITE unit=1 register=201 value=1");
    assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(peer.write_line().await, "WRITE unit=1 register=200 value=2");
    assert_eq!(ack(&mut acks).await, CommandStatus::Completed);
    wait_state(runtime, &one, GateState::Closed).await;
}

impl Peer {
    /// The next `WRITE` line, skipping the misbehaviour reports.
    async fn write_line(&mut self) -> String {
        loop {
            let line = self.line().await;
            if !line.starts_with("MISBEHAVE") {
                return line;
            }
        }
    }
}

/// RTU frames over TCP (an Ethernet to RS-485 gateway): pymodbus's TCP server on its RTU
/// framer, and the runtime's controller set to `transport = "rtu-over-tcp"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_behind_an_rtu_over_tcp_gateway_is_driven_end_to_end() {
    let port = free_port();
    let mut peer = Peer::start_with(port, &["--framer", "rtu"]).await;
    let profiles = ProfileSet::builtin().unwrap();
    let link = format!("transport = \"rtu-over-tcp\"\nendpoint = \"127.0.0.1:{port}\"");
    let runtime = runtime_for(&fleet_with("came-zlb30", &link), &profiles).await;
    open_and_close(&runtime, &mut peer).await;
    let two = GateId::new("barrier-2").unwrap();
    assert_eq!(
        runtime.fleet.view(&two).await.unwrap().snapshot.state,
        GateState::Closed
    );
    assert_eq!(connects(&runtime), 1, "one connection served it all");
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// RTU on a serial line: pymodbus's serial server (RTU framer, pyserial) on one end of a
/// socat pseudo-terminal pair, the runtime's `transport = "rtu"` controller on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_on_a_serial_line_is_driven_end_to_end() {
    let pty = PtyPair::spawn();
    let device = pty.a.display().to_string();
    let mut peer = Peer::spawn(&["--serial", &device, "--baud", "19200"], &[]).await;
    let profiles = ProfileSet::builtin().unwrap();
    let link = format!(
        "transport = \"rtu\"\nserial = \"{}\"\nbaud = 19200\nparity = \"none\"",
        pty.b.display()
    );
    let runtime = runtime_for(&fleet_with("came-zlb30", &link), &profiles).await;
    open_and_close(&runtime, &mut peer).await;
    assert_eq!(connects(&runtime), 1, "the line was opened once");
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// One spoiled reply on barrier-1's link, after it has been polled a few times: the link
/// counts it as a lost reply (a read is asked again), never as an outage. Both gates stay
/// online, the link is never reopened, and barrier-1 is then driven as usual.
async fn one_spoiled_reply_is_a_lost_reply(framer: &str, kind: &str) {
    let port = free_port();
    let misbehave = format!("{kind}:1");
    let mut peer = Peer::start_with(
        port,
        &[
            "--framer",
            framer,
            "--misbehave",
            &misbehave,
            "--misbehave-after",
            "3",
        ],
    )
    .await;
    let profiles = ProfileSet::builtin().unwrap();
    let transport = if framer == "rtu" {
        "rtu-over-tcp"
    } else {
        "tcp"
    };
    let link = format!("transport = \"{transport}\"\nendpoint = \"127.0.0.1:{port}\"");
    let runtime = runtime_for(&fleet_with("came-zlb30", &link), &profiles).await;
    assert_eq!(peer.line().await, format!("MISBEHAVE {kind} unit=1"));
    let (one, two) = (
        GateId::new("barrier-1").unwrap(),
        GateId::new("barrier-2").unwrap(),
    );
    open_and_close(&runtime, &mut peer).await;
    for gate in [&one, &two] {
        assert_eq!(
            runtime.fleet.view(gate).await.unwrap().snapshot.state,
            GateState::Closed,
            "{gate} stayed online"
        );
    }
    assert_eq!(
        connects(&runtime),
        1,
        "{kind} over {framer}: the link was never reopened"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_a_foreign_transaction_id_is_a_lost_reply() {
    one_spoiled_reply_is_a_lost_reply("socket", "wrong-tid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_another_unit_is_a_lost_reply_on_tcp_and_on_rtu() {
    one_spoiled_reply_is_a_lost_reply("socket", "wrong-unit").await;
    one_spoiled_reply_is_a_lost_reply("rtu", "wrong-unit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_its_timeout_is_never_taken_for_a_later_answer() {
    one_spoiled_reply_is_a_lost_reply("socket", "late").await;
    one_spoiled_reply_is_a_lost_reply("rtu", "late").await;
}

/// A unit that refuses a command with an exception (6, server device busy): that command
/// fails with `controller_exception`; the gate, its neighbour and the link stay up, and the
/// next command goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_refused_with_an_exception_fails_alone() {
    let port = free_port();
    let mut peer = Peer::start_with(port, &["--misbehave", "busy:1"]).await;
    let profiles = ProfileSet::builtin().unwrap();
    let runtime = runtime_for(&fleet(port), &profiles).await;
    let (one, two) = (
        GateId::new("barrier-1").unwrap(),
        GateId::new("barrier-2").unwrap(),
    );
    wait_state(&runtime, &one, GateState::Closed).await;
    wait_state(&runtime, &two, GateState::Closed).await;
    let (_, mut acks) = command(&runtime, &one, Action::Open);
    assert_eq!(peer.line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(peer.line().await, "MISBEHAVE busy unit=1");
    assert_eq!(
        ack(&mut acks).await,
        CommandStatus::Failed(gatehouse_actors::gate::FailReason::ControllerException)
    );
    assert_eq!(
        runtime.fleet.view(&one).await.unwrap().snapshot.state,
        GateState::Closed,
        "the refused gate did not move and is still online"
    );
    // The neighbour is driven on the same link, then the refused gate itself.
    let (_, mut acks) = command(&runtime, &two, Action::Open);
    assert_eq!(peer.line().await, "WRITE unit=2 register=200 value=1");
    assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(ack(&mut acks).await, CommandStatus::Completed);
    let (_, mut acks) = command(&runtime, &one, Action::Open);
    assert_eq!(peer.line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(ack(&mut acks).await, CommandStatus::Completed);
    assert_eq!(connects(&runtime), 1, "the link never dropped");
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// The controller restarts while a command is in flight (the peer is killed after the
/// write landed and a fresh one, closed again, listens on the same port): the command gets
/// exactly one terminal outcome, the link comes back by itself, and the gate follows the
/// restarted controller and can be driven again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restarting_mid_command_ends_the_command_once_and_comes_back() {
    let port = free_port();
    let mut peer = Peer::start_with(port, &["--travel-ms", "3000"]).await;
    let profiles = ProfileSet::builtin().unwrap();
    let runtime = runtime_for(&fleet(port), &profiles).await;
    let one = GateId::new("barrier-1").unwrap();
    wait_state(&runtime, &one, GateState::Closed).await;
    let (_, mut acks) = command(&runtime, &one, Action::Open);
    assert_eq!(peer.line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(ack(&mut acks).await, CommandStatus::Accepted);
    wait_state(&runtime, &one, GateState::Opening).await;
    drop(peer);
    let mut peer = Peer::start_with(port, &[]).await;
    let terminal = ack(&mut acks).await;
    assert!(
        terminal.is_terminal(),
        "the in-flight command ended: {terminal:?}"
    );
    // The restarted controller reports the gate closed (its state was lost with it).
    wait_state(&runtime, &one, GateState::Closed).await;
    assert!(connects(&runtime) >= 2, "the link reconnected");
    let (_, mut next) = command(&runtime, &one, Action::Open);
    assert_eq!(peer.line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(ack(&mut next).await, CommandStatus::Accepted);
    assert_eq!(ack(&mut next).await, CommandStatus::Completed);
    // Acks of one gate are sent in order: anything more for the first command would have
    // arrived before the second one's completion.
    assert!(
        acks.try_recv().is_err(),
        "the interrupted command was told one terminal outcome only"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}
