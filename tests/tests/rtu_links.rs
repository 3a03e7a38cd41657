//! The bundled simulator speaking RTU, driven by the whole runtime: one controller behind an
//! RTU-over-TCP gateway, one on a serial line (a socat pseudo-terminal pair: the simulator on
//! one end, the runtime on the other). Both are driven end to end, and a controller on the
//! serial line that goes silent (a board rebooting on its bus: the line stays, nobody
//! answers) takes its gates offline and brings them back when it answers again, while the
//! gateway's gates carry on.
//!
//! Needs `socat` (`.ci/run` installs it).

use std::time::Duration;

use gatehouse_actors::gate::{Action, CommandStatus, GateState};
use gatehouse_actors::ids::GateId;
use gatehouse_actors::tree::bus::LocalBus;
use gatehouse_adapters::profile::ProfileSet;
use gatehouse_runtime::Runtime;
use gatehouse_runtime::fleet_file::FleetFile;
use gatehouse_sim::{ControllerSpec, Farm, FarmSpec, Fault};
use gatehouse_tests::drive::{drive, wait_state};
use gatehouse_tests::procs::PtyPair;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_over_rtu_gateway_and_serial_line_is_driven_and_recovers() {
    let pty = PtyPair::spawn();
    let profiles = ProfileSet::builtin().unwrap();
    let farm = Farm::start(FarmSpec {
        controllers: vec![
            ControllerSpec::new("gateway", "generic", [1, 2])
                .with_rtu_over_tcp()
                .with_travel(Duration::from_millis(300)),
            ControllerSpec::new("bus", "generic", [5, 6])
                .on_serial(&pty.a, 19_200)
                .with_travel(Duration::from_millis(300)),
        ],
        profiles: profiles.clone(),
    })
    .await
    .expect("the farm starts");
    let gateway = farm.controller("gateway").unwrap();
    let bus = farm.controller("bus").unwrap();
    let fleet = format!(
        r#"
[[site]]
id = "yard"
name = "Yard"

[[controller]]
id = "gateway"
site = "yard"
profile = "generic"
transport = "rtu-over-tcp"
endpoint = "{}"
poll_interval_ms = 200

[[controller]]
id = "bus"
site = "yard"
profile = "generic"
transport = "rtu"
serial = "{}"
baud = 19200
parity = "none"
poll_interval_ms = 200
timeouts_before_down = 2

[[gate]]
id = "gw-1"
controller = "gateway"
unit = 1

[[gate]]
id = "gw-2"
controller = "gateway"
unit = 2

[[gate]]
id = "bus-5"
controller = "bus"
unit = 5

[[gate]]
id = "bus-6"
controller = "bus"
unit = 6
"#,
        gateway.local_addr(),
        pty.b.display()
    );
    let file = FleetFile::parse("fleet.toml", &fleet, &profiles).expect("a valid fleet");
    let runtime = Runtime::start_on(LocalBus::default(), file.controller_specs(&profiles))
        .await
        .expect("boots");
    let gates: Vec<GateId> = ["gw-1", "gw-2", "bus-5", "bus-6"]
        .iter()
        .map(|g| GateId::new(g).unwrap())
        .collect();
    for g in &gates {
        wait_state(&runtime, g, GateState::Closed).await;
    }

    // Both transports carry commands, and the simulator saw the writes on its gates.
    for g in [&gates[0], &gates[2]] {
        assert_eq!(
            drive(&runtime, g, Action::Open).await,
            [CommandStatus::Accepted, CommandStatus::Completed],
            "{g} opened"
        );
        wait_state(&runtime, g, GateState::Open).await;
    }
    assert!(!gateway.writes().is_empty() && !bus.writes().is_empty());
    assert!(
        bus.gate(5).expect("unit 5").position > 99.0,
        "the serial gate really moved"
    );

    // The board on the serial line reboots: silent for 2 s. Its gates go offline (after
    // two lost replies in a row), the gateway's do not, and both come back on their own.
    bus.inject(Fault::Restart {
        down: Duration::from_secs(2),
    })
    .await
    .unwrap();
    wait_state(&runtime, &gates[2], GateState::Offline).await;
    wait_state(&runtime, &gates[3], GateState::Offline).await;
    assert_eq!(
        runtime.fleet.view(&gates[1]).await.unwrap().snapshot.state,
        GateState::Closed,
        "the gateway's gates are another link"
    );
    wait_state(&runtime, &gates[3], GateState::Closed).await;
    wait_state(&runtime, &gates[2], GateState::Open).await;
    assert_eq!(
        drive(&runtime, &gates[2], Action::Close).await,
        [CommandStatus::Accepted, CommandStatus::Completed],
        "the serial gate is driven again after the reboot"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
    farm.shutdown().await;
}
