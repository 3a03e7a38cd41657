//! One gate's own troubles, against the real simulator: an obstruction (no close is ever
//! written into it, and a closing gate that meets one reverses and fails its close), a motor
//! fault (motion refused until a reset clears it), and a travel timeout (the command fails and
//! the runtime latches a fault until reset). The controller's interlocks are the simulator's;
//! what is checked here is what the runtime writes, refuses and reports.

mod common;

use common::{Controller, Site, gate_id, wait_until};
use gatehouse_actors::gate::{
    Action, Cause, CommandStatus, EventKind, FailReason, GateState, HwOp, HwState, RejectReason,
};
use gatehouse_sim::Fault;

/// How many writes `unit` received that triggered `op`.
fn written(site: &Site, controller: &str, unit: u8, op: HwOp) -> usize {
    site.sim(controller)
        .writes()
        .iter()
        .filter(|w| w.unit == unit && w.op == Some(op))
        .count()
}

/// Opens gate `unit` of `controller` through the runtime and waits for completion.
async fn open(site: &Site, controller: &str, unit: u8) {
    let (_, acks) = site.command(&gate_id(controller, unit), Action::Open);
    assert_eq!(acks.terminal().await, CommandStatus::Completed);
}

/// Blocks or clears the photo-eye of `unit` and waits until the runtime has seen it.
async fn obstruct(site: &Site, controller: &str, unit: u8, on: bool) {
    let gate = gate_id(controller, unit);
    let mark = site.mark();
    site.sim(controller)
        .inject(Fault::Obstruct { unit, on })
        .await
        .expect("injected");
    site.wait_event(mark, "the obstruction flag to change", |ev| {
        ev.gate == gate && ev.kind == EventKind::Obstruction { obstructed: on }
    })
    .await;
    assert_eq!(site.view(&gate).await.snapshot.flags.obstructed, on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_into_an_obstruction_is_rejected_and_never_written() {
    let site = Site::start(&[Controller::new("gen", "generic", &[1], 500)]).await;
    let gate = gate_id("gen", 1);
    site.wait_state(&gate, GateState::Closed).await;
    open(&site, "gen", 1).await;

    obstruct(&site, "gen", 1, true).await;
    let obstruction = site
        .wait_event(0, "obstruction detected", |ev| {
            ev.gate == gate && ev.kind == EventKind::Obstruction { obstructed: true }
        })
        .await;
    assert_eq!(
        obstruction.cause,
        Cause::Local,
        "a photo-eye is nobody's command"
    );

    let (_, acks) = site.command(&gate, Action::Close);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Rejected(RejectReason::Obstructed)]
    );
    assert_eq!(written(&site, "gen", 1, HwOp::Close), 0);
    assert_eq!(
        written(&site, "gen", 1, HwOp::Warn),
        0,
        "not even the warning"
    );
    assert_eq!(site.view(&gate).await.snapshot.state, GateState::Open);

    // Once the photo-eye is clear, the same request goes through.
    obstruct(&site, "gen", 1, false).await;
    let (_, acks) = site.command(&gate, Action::Close);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );
    assert_eq!(written(&site, "gen", 1, HwOp::Close), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obstruction_during_the_close_warning_cancels_the_close_before_it_is_written() {
    let site = Site::start(&[Controller::new("came", "came-zlb30", &[1], 500)]).await;
    let gate = gate_id("came", 1);
    site.wait_state(&gate, GateState::Closed).await;
    open(&site, "came", 1).await;

    // CAME has a warning output: the close is accepted once the warning is on, and written
    // only after the lead time.
    let (_, mut acks) = site.command(&gate, Action::Close);
    assert_eq!(acks.next().await, CommandStatus::Accepted);
    assert_eq!(written(&site, "came", 1, HwOp::Warn), 1);
    site.sim("came")
        .inject(Fault::Obstruct { unit: 1, on: true })
        .await
        .expect("injected");
    assert_eq!(
        acks.next().await,
        CommandStatus::Failed(FailReason::Obstructed)
    );
    assert_eq!(written(&site, "came", 1, HwOp::Close), 0);
    let sim = site.sim("came").gate(1).expect("unit 1");
    assert_eq!(sim.observation.state, HwState::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_gate_that_meets_an_obstruction_reverses_and_its_close_fails() {
    let site = Site::start(&[Controller::new("gen", "generic", &[1], 2000)]).await;
    let gate = gate_id("gen", 1);
    site.wait_state(&gate, GateState::Closed).await;
    open(&site, "gen", 1).await;

    let mark = site.mark();
    let (close, mut acks) = site.command(&gate, Action::Close);
    assert_eq!(acks.next().await, CommandStatus::Accepted);
    // Half way down, so that the way back up takes several polls.
    site.wait_view(&gate, "closing past half way", |v| {
        v.snapshot.state == GateState::Closing && v.snapshot.position.is_some_and(|p| p <= 50)
    })
    .await;
    site.sim("gen")
        .inject(Fault::Obstruct { unit: 1, on: true })
        .await
        .expect("injected");

    assert_eq!(
        acks.next().await,
        CommandStatus::Failed(FailReason::Obstructed)
    );
    // The controller's entrapment protection reversed it, up to fully open.
    site.wait_state(&gate, GateState::Open).await;
    let view = site.view(&gate).await;
    assert!(view.snapshot.flags.obstructed);
    assert_eq!(
        site.sim("gen").gate(1).expect("unit 1").observation.state,
        HwState::Open
    );
    // The reversal and the way back up are the controller's doing, not the command's.
    assert_eq!(
        site.changes_since(mark, &gate),
        [
            (GateState::Open, GateState::Closing, Cause::Command(close)),
            (GateState::Closing, GateState::Opening, Cause::Local),
            (GateState::Opening, GateState::Open, Cause::Local),
        ]
    );
    assert_eq!(
        written(&site, "gen", 1, HwOp::Close),
        1,
        "one close, no retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_motor_fault_refuses_motion_until_a_reset_clears_it() {
    let site = Site::start(&[Controller::new("came", "came-zlb30", &[1, 2], 500)]).await;
    let gate = gate_id("came", 1);
    site.wait_state(&gate, GateState::Closed).await;

    let mark = site.mark();
    site.sim("came")
        .inject(Fault::MotorFault { unit: 1, code: 42 })
        .await
        .expect("injected");
    let view = site.wait_state(&gate, GateState::Fault).await;
    assert_eq!(view.snapshot.fault_code, Some(42));
    let into_fault = site
        .changes_since(mark, &gate)
        .into_iter()
        .find(|(_, to, _)| *to == GateState::Fault)
        .expect("a change into fault");
    assert!(
        !matches!(into_fault.2, Cause::Command(_)),
        "nobody's command: {into_fault:?}"
    );

    for action in [Action::Open, Action::Close, Action::Toggle] {
        let (_, acks) = site.command(&gate, action);
        assert_eq!(
            acks.all().await,
            [CommandStatus::Rejected(RejectReason::Fault)],
            "{action:?}"
        );
    }
    assert!(site.sim("came").writes().is_empty(), "nothing written");
    // The neighbour is not concerned.
    open(&site, "came", 2).await;

    let (_, acks) = site.command(&gate, Action::Reset);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );
    assert_eq!(written(&site, "came", 1, HwOp::Reset), 1);
    let view = site.view(&gate).await;
    assert_eq!(
        (view.snapshot.state, view.snapshot.fault_code),
        (GateState::Closed, None)
    );
    assert_eq!(
        site.sim("came")
            .gate(1)
            .expect("unit 1")
            .observation
            .fault_code,
        None
    );
    open(&site, "came", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_slower_than_its_travel_timeout_fails_the_command_and_latches_a_fault() {
    let site =
        Site::start(&[Controller::new("gen", "generic", &[1], 4000).travel_timeout_s(1)]).await;
    let gate = gate_id("gen", 1);
    site.wait_state(&gate, GateState::Closed).await;

    let mark = site.mark();
    let (_, acks) = site.command(&gate, Action::Open);
    assert_eq!(
        acks.all().await,
        [
            CommandStatus::Accepted,
            CommandStatus::Failed(FailReason::TravelTimeout)
        ]
    );
    let view = site.view(&gate).await;
    assert_eq!(view.snapshot.state, GateState::Fault);
    assert_eq!(view.snapshot.latched_fault, Some(FailReason::TravelTimeout));
    let into_fault = site
        .changes_since(mark, &gate)
        .into_iter()
        .find(|(_, to, _)| *to == GateState::Fault)
        .expect("a change into fault");
    assert_eq!(into_fault.2, Cause::System);

    // The gate does arrive in the end; the fault stays latched all the same.
    site.wait_view(&gate, "a reading of the gate fully open", |v| {
        v.snapshot.position == Some(100)
    })
    .await;
    wait_until("the simulated gate to be open", || {
        site.sim("gen")
            .gate(1)
            .is_some_and(|g| g.observation.state == HwState::Open)
    })
    .await;
    let (_, acks) = site.command(&gate, Action::Close);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Rejected(RejectReason::Fault)]
    );
    assert_eq!(site.view(&gate).await.snapshot.state, GateState::Fault);

    let (_, acks) = site.command(&gate, Action::Reset);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );
    let view = site.view(&gate).await;
    assert_eq!(
        (view.snapshot.state, view.snapshot.latched_fault),
        (GateState::Open, None)
    );
}
