//! What crashes what, against the real simulator: a transport fault on one controller (a
//! dropped connection, a reboot, silence, garbage bytes, answers slower than the request
//! timeout) takes every gate of that controller offline, caused by the system, leaves a second
//! controller alone, and heals by itself once the fault is gone; a Modbus exception from one
//! unit takes only that gate offline, with its code, and never restarts the link.

mod common;

use std::time::Duration;

use common::{Controller, Site, gate_id, wait_until};
use gatehouse_actors::gate::{Action, Cause, CommandStatus, EventKind, GateState};
use gatehouse_sim::Fault;

/// The controller that suffers (generic profile, request timeout 1 s) and the bystander.
const VICTIM: &str = "victim";
const BYSTANDER: &str = "bystander";

async fn two_controllers() -> Site {
    two_controllers_with(Controller::new(VICTIM, "generic", &[1, 2], 500)).await
}

/// The victim as given (the same name, two gates), beside the usual bystander.
async fn two_controllers_with(victim: Controller) -> Site {
    let site = Site::start(&[
        victim,
        Controller::new(BYSTANDER, "came-zlb30", &[1, 2], 500),
    ])
    .await;
    site.wait_reconciled(VICTIM).await;
    site.wait_reconciled(BYSTANDER).await;
    site
}

/// Injects `fault` into the victim and checks the whole story: its gates go offline (caused by
/// the system), the bystander keeps working and never goes offline, and once the fault is
/// over the victim's gates are back and reconciled, including a gate that was moved by hand
/// while the runtime could not see it.
async fn transport_fault_takes_only_its_controller_offline(fault: Fault) {
    let site = two_controllers().await;
    let mark = site.mark();
    site.sim(VICTIM).inject(fault).await.expect("injected");

    for unit in [1, 2] {
        let gate = gate_id(VICTIM, unit);
        let cause = site.wait_change(mark, &gate, GateState::Offline).await;
        assert_eq!(cause, Cause::System, "{gate} went offline");
    }
    // Somebody opens a gate by hand meanwhile.
    site.sim(VICTIM)
        .inject(Fault::LocalPress { unit: 1 })
        .await
        .expect("injected");

    // The bystander is served as usual.
    let neighbour = gate_id(BYSTANDER, 1);
    let (_, acks) = site.command(&neighbour, Action::Open);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );

    // The fault ends by itself; the link comes back after its backoff and reconciles.
    wait_until("the fault to end", || site.sim(VICTIM).faults().is_empty()).await;
    site.wait_reconciled(VICTIM).await;
    assert_eq!(
        site.view(&gate_id(VICTIM, 1)).await.snapshot.state,
        GateState::Open,
        "the hand-opened gate is seen open"
    );
    assert_eq!(
        site.view(&gate_id(VICTIM, 2)).await.snapshot.state,
        GateState::Closed
    );
    for unit in [1, 2] {
        let gate = gate_id(VICTIM, unit);
        let back = site
            .changes_since(mark, &gate)
            .into_iter()
            .rfind(|(from, _, _)| *from == GateState::Offline)
            .unwrap_or_else(|| panic!("{gate} never came back:\n{}", site.dump(mark)));
        assert_eq!(back.2, Cause::System, "{gate} reconciled by the system");
    }
    assert!(site.connects(VICTIM) >= 2, "the victim's link reconnected");

    // The bystander never noticed: one connection, never offline.
    assert_eq!(
        site.connects(BYSTANDER),
        1,
        "the bystander's link never restarted"
    );
    for unit in [1, 2] {
        let gate = gate_id(BYSTANDER, unit);
        assert!(
            site.changes_since(mark, &gate)
                .iter()
                .all(|(_, to, _)| *to != GateState::Offline),
            "{gate} went offline:\n{}",
            site.dump(mark)
        );
    }
    // And the victim takes commands again.
    let (_, acks) = site.command(&gate_id(VICTIM, 2), Action::Open);
    assert_eq!(acks.terminal().await, CommandStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_takes_only_that_controller_offline_until_it_reconnects() {
    transport_fault_takes_only_its_controller_offline(Fault::DropConnections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_takes_only_that_controller_offline_until_it_is_back() {
    transport_fault_takes_only_its_controller_offline(Fault::Restart {
        down: Duration::from_millis(1500),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_controller_is_offline_until_it_answers_again() {
    transport_fault_takes_only_its_controller_offline(Fault::Stall {
        duration: Duration::from_millis(2500),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_take_only_that_controller_offline_until_they_stop() {
    transport_fault_takes_only_its_controller_offline(Fault::Garbage {
        duration: Duration::from_millis(2000),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_the_request_timeout_take_only_that_controller_offline() {
    // The generic profile's request timeout is 1 s.
    // Long enough for three request timeouts in a row: fewer are lost replies, retried.
    transport_fault_takes_only_its_controller_offline(Fault::Slow {
        delay: Duration::from_millis(1500),
        duration: Duration::from_millis(5000),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_asked_again_and_keeps_the_gates_online() {
    let site = two_controllers().await;
    let mark = site.mark();
    // Whatever is asked in the next half second goes unanswered: one request timeout,
    // fewer than the three in a row that take a link down.
    site.sim(VICTIM)
        .inject(Fault::Stall {
            duration: Duration::from_millis(500),
        })
        .await
        .expect("injected");
    wait_until("the fault to end", || site.sim(VICTIM).faults().is_empty()).await;
    // A command after it completes, on the same connection.
    let gate = gate_id(VICTIM, 1);
    let (_, acks) = site.command(&gate, Action::Open);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );
    assert_eq!(site.connects(VICTIM), 1, "the link never dropped");
    for unit in [1, 2] {
        assert!(
            site.changes_since(mark, &gate_id(VICTIM, unit))
                .iter()
                .all(|(_, to, _)| *to != GateState::Offline),
            "{}",
            site.dump(mark)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_set_to_one_timeout_goes_down_on_the_first_lost_reply() {
    // The same lost reply as above, on a controller whose fleet entry overrides its
    // profile's three timeouts in a row with one.
    let site = two_controllers_with(
        Controller::new(VICTIM, "generic", &[1, 2], 500).timeouts_before_down(1),
    )
    .await;
    let mark = site.mark();
    site.sim(VICTIM)
        .inject(Fault::Stall {
            duration: Duration::from_millis(500),
        })
        .await
        .expect("injected");
    for unit in [1, 2] {
        let gate = gate_id(VICTIM, unit);
        let cause = site.wait_change(mark, &gate, GateState::Offline).await;
        assert_eq!(cause, Cause::System, "{gate} went offline");
    }
    // It comes back on a new connection once the controller answers again.
    for unit in [1, 2] {
        site.wait_change(mark, &gate_id(VICTIM, unit), GateState::Closed)
            .await;
    }
    site.wait_reconciled(VICTIM).await;
    assert!(site.connects(VICTIM) >= 2, "{}", site.dump(mark));
    assert!(
        site.changes_since(mark, &gate_id(BYSTANDER, 1))
            .iter()
            .all(|(_, to, _)| *to != GateState::Offline),
        "{}",
        site.dump(mark)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_usual_but_within_the_timeout_keep_the_gates_online() {
    let site = two_controllers().await;
    let mark = site.mark();
    site.sim(VICTIM)
        .inject(Fault::Slow {
            delay: Duration::from_millis(300),
            duration: Duration::from_secs(60),
        })
        .await
        .expect("injected");
    let gate = gate_id(VICTIM, 1);
    let (_, acks) = site.command(&gate, Action::Open);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );
    assert_eq!(site.connects(VICTIM), 1);
    assert!(
        site.changes_since(mark, &gate_id(VICTIM, 2))
            .iter()
            .all(|(_, to, _)| *to != GateState::Offline),
        "{}",
        site.dump(mark)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_units_exception_takes_only_that_gate_offline_with_its_code() {
    let site = Site::start(&[Controller::new("came", "came-zlb30", &[1, 2, 3], 500)]).await;
    site.wait_reconciled("came").await;
    let (sick, neighbour, other) = (gate_id("came", 2), gate_id("came", 1), gate_id("came", 3));
    let mark = site.mark();
    site.sim("came")
        .inject(Fault::Exception {
            unit: 2,
            code: 11,
            duration: Duration::from_secs(600),
        })
        .await
        .expect("injected");

    let ev = site
        .wait_event(mark, "came-2 offline", |ev| {
            ev.gate == sick
                && matches!(ev.kind, EventKind::StateChanged { .. })
                && ev.snapshot.state == GateState::Offline
        })
        .await;
    assert_eq!(ev.snapshot.fault_code, Some(11));
    assert_eq!(ev.cause, Cause::System);
    let view = site.view(&sick).await;
    assert_eq!(
        (view.snapshot.state, view.snapshot.fault_code),
        (GateState::Offline, Some(11))
    );

    // Its neighbours on the same link carry on, while it is still sick.
    let (_, acks) = site.command(&neighbour, Action::Open);
    assert_eq!(
        acks.all().await,
        [CommandStatus::Accepted, CommandStatus::Completed]
    );
    assert_eq!(site.view(&sick).await.snapshot.state, GateState::Offline);

    // Once the unit answers again it comes back; the link was never restarted.
    site.sim("came").clear();
    site.wait_state(&sick, GateState::Closed).await;
    assert_eq!(site.view(&sick).await.snapshot.fault_code, None);
    assert_eq!(
        site.connects("came"),
        1,
        "an exception never restarts the link"
    );
    for gate in [&neighbour, &other] {
        assert!(
            site.changes_since(mark, gate)
                .iter()
                .all(|(_, to, _)| *to != GateState::Offline),
            "{gate} went offline:\n{}",
            site.dump(mark)
        );
    }
}
