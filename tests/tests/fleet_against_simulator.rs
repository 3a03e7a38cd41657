//! The runtime's fleet against the real simulator over real Modbus TCP, on the happy paths and
//! the wire-level details: gates reconcile from their first poll, open and close run to their
//! end states with the right causes, coil pulses are released (also when a link drop cut them
//! short), a local press is attributed to nobody, and a command id moves a gate only once.
//! The fault paths live in `link_faults.rs` and `gate_faults.rs`.

mod common;

use common::{Controller, LONG_PULSE_PROFILE, Site, gate_id, wait_until};
use gatehouse_actors::gate::{
    Action, Cause, CommandStatus, FailReason, GateState, HwOp, HwState, RejectReason,
};
use gatehouse_actors::ids::CommandId;
use gatehouse_sim::{Fault, WriteKind, WriteRecord};

/// The generic profile's command coils.
const OPEN_COIL: u16 = 0;

/// The writes of `unit` that triggered `op` on the controller.
fn commands(writes: &[WriteRecord], unit: u8, op: HwOp) -> Vec<WriteRecord> {
    writes
        .iter()
        .filter(|w| w.unit == unit && w.op == Some(op))
        .copied()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_come_online_from_their_first_poll_matching_the_simulator() {
    let layout = [
        Controller::new("gen", "generic", &[1, 2], 500),
        Controller::new("came", "came-zlb30", &[3], 500),
        Controller::new("ha", "ha-cover", &[1], 500),
    ];
    // Unit 2 of the generic controller is already open when the runtime first looks.
    let site = Site::start_with(&layout, async |farm| {
        let sim = farm.controller("gen").expect("started");
        sim.with_gate(2, |g, now| g.open(now))
            .expect("unit 2 exists")
            .expect("a healthy gate opens");
        wait_until("the simulated gate to be open", || {
            sim.gate(2)
                .is_some_and(|g| g.observation.state == HwState::Open)
        })
        .await;
    })
    .await;

    for c in ["gen", "came", "ha"] {
        site.wait_reconciled(c).await;
    }
    assert_eq!(
        site.view(&gate_id("gen", 2)).await.snapshot.state,
        GateState::Open
    );
    // Coming online is the runtime's own doing: from offline, caused by the system.
    for (gate, state) in [
        (gate_id("gen", 1), GateState::Closed),
        (gate_id("gen", 2), GateState::Open),
        (gate_id("came", 3), GateState::Closed),
        (gate_id("ha", 1), GateState::Closed),
    ] {
        assert_eq!(
            site.changes_since(0, &gate).first(),
            Some(&(GateState::Offline, state, Cause::System)),
            "{gate}:\n{}",
            site.dump(0)
        );
    }
    // Nothing was written just by looking.
    for c in ["gen", "came", "ha"] {
        assert!(site.sim(c).writes().is_empty(), "{c} was written to");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_close_run_to_their_end_states_caused_by_their_commands() {
    let site = Site::start(&[Controller::new("gen", "generic", &[1, 2], 1000)]).await;
    let gate = gate_id("gen", 1);
    site.wait_state(&gate, GateState::Closed).await;

    let mark = site.mark();
    let (open, acks) = site.command(&gate, Action::Open);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );
    let sim = site.sim("gen").gate(1).expect("unit 1");
    assert_eq!(sim.observation.state, HwState::Open);
    assert_eq!(sim.observation.position, Some(100));
    assert_eq!(
        site.changes_since(mark, &gate),
        [
            (GateState::Closed, GateState::Opening, Cause::Command(open)),
            (GateState::Opening, GateState::Open, Cause::Command(open)),
        ]
    );
    let view = site.view(&gate).await;
    assert_eq!(
        (view.snapshot.state, view.snapshot.position),
        (GateState::Open, Some(100))
    );
    // The neighbour did not move.
    assert_eq!(
        site.view(&gate_id("gen", 2)).await.snapshot.state,
        GateState::Closed
    );

    let mark = site.mark();
    let (close, acks) = site.command(&gate, Action::Close);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );
    assert_eq!(
        site.sim("gen").gate(1).expect("unit 1").observation.state,
        HwState::Closed
    );
    assert_eq!(
        site.changes_since(mark, &gate),
        [
            (GateState::Open, GateState::Closing, Cause::Command(close)),
            (GateState::Closing, GateState::Closed, Cause::Command(close)),
        ]
    );
    // The profile has a warning output: the remote close was preceded by it.
    let writes = site.sim("gen").writes();
    let warn = commands(&writes, 1, HwOp::Warn);
    let closes = commands(&writes, 1, HwOp::Close);
    assert_eq!((warn.len(), closes.len()), (1, 1), "{writes:?}");
    assert!(
        warn[0].at < closes[0].at,
        "warning before close: {writes:?}"
    );
    assert_eq!(commands(&writes, 1, HwOp::Open).len(), 1, "{writes:?}");
    assert!(
        writes.iter().all(|w| w.unit == 1 && w.accepted),
        "only unit 1 was written to, and every write was taken: {writes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coil_pulse_is_released_after_its_length() {
    let site = Site::start(&[Controller::new("gen", "generic", &[1], 1000)]).await;
    let gate = gate_id("gen", 1);
    site.wait_state(&gate, GateState::Closed).await;
    let sim = site.sim("gen");

    let (_, mut acks) = site.command(&gate, Action::Open);
    assert_eq!(acks.next().await, CommandStatus::Accepted);
    // Accepted means the controller took the write: the coil is on now.
    assert_eq!(sim.coil(1, OPEN_COIL), Some(true));
    wait_until("the open coil to be released", || {
        sim.coil(1, OPEN_COIL) == Some(false)
    })
    .await;
    let coil_writes: Vec<u16> = sim
        .writes()
        .iter()
        .filter(|w| w.kind == WriteKind::Coil && w.address == OPEN_COIL)
        .map(|w| w.value)
        .collect();
    assert_eq!(coil_writes, [1, 0], "on, then off");
    assert_eq!(site.connects("gen"), 1, "released on the same connection");
    assert_eq!(acks.next().await, CommandStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coil_pulse_cut_short_by_a_link_drop_is_released_on_reconnect() {
    // Pulses of a minute: only the runtime's reconnect can switch the coil off in time. (A
    // simulated controller restart switches its coils off by itself, so a drop is used.)
    let site = Site::start(&[Controller::new("lp", LONG_PULSE_PROFILE, &[1], 5000)]).await;
    let gate = gate_id("lp", 1);
    site.wait_state(&gate, GateState::Closed).await;
    let sim = site.sim("lp");

    let (_, mut acks) = site.command(&gate, Action::Open);
    assert_eq!(acks.next().await, CommandStatus::Accepted);
    assert_eq!(sim.coil(1, OPEN_COIL), Some(true));
    sim.inject(Fault::DropConnections).await.expect("injected");

    wait_until("the interrupted pulse to be released", || {
        sim.coil(1, OPEN_COIL) == Some(false)
    })
    .await;
    assert!(site.connects("lp") >= 2, "released by a new connection");
    // The link went down under the command: it cannot know how it ended.
    assert_eq!(
        acks.next().await,
        CommandStatus::Failed(FailReason::Offline)
    );
    // The gate itself carried on opening, and the runtime reconciles to it.
    site.wait_state(&gate, GateState::Open).await;
    let offs = sim
        .writes()
        .iter()
        .filter(|w| w.address == OPEN_COIL && w.value == 0)
        .count();
    assert_eq!(offs, 1, "one release: {:?}", sim.writes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_press_moves_the_gate_with_cause_local_and_nothing_written() {
    let site = Site::start(&[Controller::new("came", "came-zlb30", &[1], 800)]).await;
    let gate = gate_id("came", 1);
    site.wait_state(&gate, GateState::Closed).await;

    let mark = site.mark();
    site.sim("came")
        .inject(Fault::LocalPress { unit: 1 })
        .await
        .expect("injected");
    site.wait_state(&gate, GateState::Open).await;
    assert_eq!(
        site.changes_since(mark, &gate),
        [
            (GateState::Closed, GateState::Opening, Cause::Local),
            (GateState::Opening, GateState::Open, Cause::Local),
        ]
    );
    assert!(site.sim("came").writes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_command_id_moves_the_gate_once_and_every_sender_hears_the_outcome() {
    let site = Site::start(&[Controller::new("came", "came-zlb30", &[1], 800)]).await;
    let gate = gate_id("came", 1);
    site.wait_state(&gate, GateState::Closed).await;

    let id = CommandId::random();
    let first = site.command_with_id(&gate, id, Action::Open);
    let second = site.command_with_id(&gate, id, Action::Open);
    assert_eq!(first.terminal().await, CommandStatus::Completed);
    assert_eq!(second.terminal().await, CommandStatus::Completed);
    // A retry after the end hears the same outcome at once.
    let late = site.command_with_id(&gate, id, Action::Open);
    assert_eq!(late.all().await, [CommandStatus::Completed]);

    let opens = commands(&site.sim("came").writes(), 1, HwOp::Open);
    assert_eq!(opens.len(), 1, "one write for one id: {opens:?}");
    assert_eq!(
        site.sim("came")
            .gate(1)
            .expect("unit 1")
            .observation
            .cycles
            .map(|c| c.value),
        Some(1)
    );

    // The same id with another payload is refused, and writes nothing.
    let conflict = site.command_with_id(&gate, id, Action::Close);
    assert_eq!(
        conflict.all().await,
        [CommandStatus::Rejected(RejectReason::IdConflict)]
    );
    let writes = site.sim("came").writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(site.view(&gate).await.snapshot.state, GateState::Open);
}
