//! The fleet's actors against a scripted controller: the fault paths the design names (link
//! drop, timeout, one unit's exception, a pulse cut short) injected exactly where wanted.
//! The same paths against the real simulator over Modbus TCP live in `tests/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::*;
use gatehouse_actors::ids::{CommandId, ControllerId, GateId, SiteId};
use gatehouse_actors::ports::*;
use gatehouse_actors::store::{
    EventStore, FinishedCommand, GateHead, Refused, StoreError, StoredEvent,
};
use gatehouse_actors::tree::Directory;
use gatehouse_actors::tree::bus::{EventSink, LocalBus};
use gatehouse_actors::tree::eventlog;
use gatehouse_actors::tree::gate::{Ack, AckSink};
use gatehouse_actors::tree::{ControllerSpec, Fleet, FleetContext, FleetError, GateSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;

/// A controller whose behaviour the test scripts.
#[derive(Default)]
struct Script {
    states: Vec<HwState>,
    refuse_connect: bool,
    /// The next transaction fails with this transport error.
    break_next: Option<LinkError>,
    exceptions: HashMap<usize, u8>,
    writes: Vec<(usize, HwOp)>,
    released: Vec<(usize, HwOp)>,
    /// Every transaction in order: `read <gate>` or `write <gate>`.
    log: Vec<String>,
    pulse: Option<Duration>,
    connects: usize,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<Script>>);

impl Scripted {
    fn with(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.0.lock().unwrap());
    }
    fn get<T>(&self, f: impl FnOnce(&Script) -> T) -> T {
        f(&self.0.lock().unwrap())
    }
}

struct Session(Scripted);

impl LinkConnector for Scripted {
    fn endpoint(&self) -> String {
        "scripted".into()
    }
    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn LinkSession>, LinkError>> {
        Box::pin(async move {
            let mut s = self.0.lock().unwrap();
            if s.refuse_connect {
                return Err(LinkError::Connect {
                    endpoint: "scripted".into(),
                    reason: "refused".into(),
                    kind: ConnectFailure::Refused,
                });
            }
            s.connects += 1;
            Ok(Box::new(Session(self.clone())) as Box<dyn LinkSession>)
        })
    }
}

impl LinkSession for Session {
    fn read(&mut self, gate: usize) -> BoxFuture<'_, Result<UnitResult<Observation>, LinkError>> {
        Box::pin(async move {
            let mut s = self.0.0.lock().unwrap();
            if let Some(e) = s.break_next.take() {
                return Err(e);
            }
            s.log.push(format!("read {gate}"));
            if let Some(code) = s.exceptions.get(&gate) {
                return Ok(Err(UnitException(*code)));
            }
            Ok(Ok(Observation::state_only(s.states[gate])))
        })
    }
    fn write(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> BoxFuture<'_, Result<Result<WriteDone, WriteRefused>, LinkError>> {
        Box::pin(async move {
            let mut s = self.0.0.lock().unwrap();
            if let Some(e) = s.break_next.take() {
                return Err(e);
            }
            s.writes.push((gate, op));
            s.log.push(format!("write {gate}"));
            // A controller that reaches its end state at once.
            match op {
                HwOp::Open => s.states[gate] = HwState::Open,
                HwOp::Close => s.states[gate] = HwState::Closed,
                HwOp::Stop => s.states[gate] = HwState::Stopped,
                _ => {}
            }
            Ok(Ok(WriteDone {
                release_after: s.pulse,
            }))
        })
    }
    fn release(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> BoxFuture<'_, Result<Result<(), WriteRefused>, LinkError>> {
        Box::pin(async move {
            self.0.0.lock().unwrap().released.push((gate, op));
            Ok(Ok(()))
        })
    }
}

struct Rig {
    fleet: Fleet,
    script: Scripted,
    events: broadcast::Receiver<Arc<GateEvent>>,
    gates: Vec<GateId>,
}

async fn rig(n: usize) -> Rig {
    rig_with(n, None).await
}

/// A fleet of `n` gates; with `store`, events go through the event log into it.
async fn rig_with(n: usize, store: Option<Arc<MemoryStore>>) -> Rig {
    let script = Scripted::default();
    script.with(|s| s.states = vec![HwState::Closed; n]);
    let bus = LocalBus::default();
    let events = bus.subscribe();
    let bus: Arc<dyn EventSink> = Arc::new(bus);
    let directory = Arc::new(Directory::default());
    let (log, writer) = match store {
        Some(store) => {
            let (log, writer) = eventlog::channel(
                store,
                directory.clone(),
                bus.clone(),
                eventlog::QUEUE_CAPACITY,
            );
            (Some(log), Some(writer))
        }
        None => (None, None),
    };
    let ctx = FleetContext::with_log(bus, directory, log);
    let gates: Vec<GateId> = (0..n)
        .map(|i| GateId::new(&format!("g{i}")).unwrap())
        .collect();
    let spec = ControllerSpec::new(
        ControllerId::new("c1").unwrap(),
        SiteId::new("site").unwrap(),
        Arc::new(script.clone()),
        Duration::from_millis(50),
        Duration::from_millis(10),
        gates
            .iter()
            .map(|id| GateSpec {
                id: id.clone(),
                name: id.to_string(),
                config: GateConfig::default(),
            })
            .collect(),
    );
    let (fleet, _) = Fleet::start(ctx, vec![spec], writer).await.unwrap();
    Rig {
        fleet,
        script,
        events,
        gates,
    }
}

impl Rig {
    /// Waits (bounded) until gate `i` is in `state`.
    async fn until(&self, i: usize, state: GateState) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let view = self.fleet.view(&self.gates[i]).await.unwrap();
            if view.snapshot.state == state {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gate {i} stuck in {:?}, wanted {state:?}",
                view.snapshot.state
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends a command and returns a receiver of its acks.
    fn command(&self, i: usize, action: Action) -> (CommandId, mpsc::UnboundedReceiver<Ack>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink: AckSink = Arc::new(move |_: &GateId, ack| {
            let _ = tx.send(ack);
        });
        let id = CommandId::random();
        self.fleet
            .command(&self.gates[i], id, action, Some(sink))
            .unwrap();
        (id, rx)
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Ack>) -> CommandStatus {
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an ack in time")
        .expect("ack channel open")
        .status
}

#[tokio::test]
async fn gates_come_online_from_the_first_poll_and_a_command_runs_to_completion() {
    let r = rig(3).await;
    for i in 0..3 {
        r.until(i, GateState::Closed).await;
    }
    let (_, mut acks) = r.command(1, Action::Open);
    assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(next(&mut acks).await, CommandStatus::Completed);
    assert_eq!(r.script.get(|s| s.writes.clone()), vec![(1, HwOp::Open)]);
    r.until(1, GateState::Open).await;
    r.until(0, GateState::Closed).await;
}

/// Read after write: the transaction after a confirmed write reads that gate, so that motion
/// the controller already shows is reported without waiting for the next poll.
#[tokio::test]
async fn a_confirmed_write_is_followed_at_once_by_a_read_of_that_gate() {
    let r = rig(8).await;
    for i in 0..8 {
        r.until(i, GateState::Closed).await;
    }
    for (i, action) in [(5, Action::Open), (2, Action::Open), (5, Action::Close)] {
        let (_, mut acks) = r.command(i, action);
        assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
        let log = r.script.get(|s| s.log.clone());
        let at = log
            .iter()
            .rposition(|t| t == &format!("write {i}"))
            .expect("the write was logged");
        // The ack is sent before the read; wait (bounded) for the read to be logged.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = r.script.get(|s| s.log.clone());
            if let Some(after) = log.get(at + 1) {
                assert_eq!(after, &format!("read {i}"), "{:?}", &log[at..]);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing after the write"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(next(&mut acks).await, CommandStatus::Completed);
    }
}

#[tokio::test]
async fn a_link_drop_takes_the_gates_offline_until_the_restarted_link_polls_again() {
    let mut r = rig(2).await;
    r.until(0, GateState::Closed).await;
    r.until(1, GateState::Closed).await;
    r.script.with(|s| {
        s.break_next = Some(LinkError::Io("connection reset".into()));
        s.refuse_connect = true;
    });
    r.until(0, GateState::Offline).await;
    r.until(1, GateState::Offline).await;

    // Offline gates refuse motion with a reason.
    let (_, mut acks) = r.command(0, Action::Open);
    assert_eq!(
        next(&mut acks).await,
        CommandStatus::Rejected(RejectReason::Offline)
    );

    // The controller comes back; the link reconnects after its backoff and reconciles.
    r.script.with(|s| {
        s.refuse_connect = false;
        s.states[0] = HwState::Open; // moved by hand while we were away
    });
    r.until(0, GateState::Open).await;
    r.until(1, GateState::Closed).await;
    assert!(r.script.get(|s| s.connects) >= 2);

    // The reconciliation is the runtime's own doing, not a person's.
    let mut saw = false;
    while let Ok(ev) = r.events.try_recv() {
        if ev.gate == r.gates[0]
            && matches!(
                ev.kind,
                EventKind::StateChanged {
                    from: GateState::Offline
                }
            )
            && ev.snapshot.state == GateState::Open
        {
            assert_eq!(ev.cause, Cause::System);
            saw = true;
        }
    }
    assert!(saw, "a reconcile event was published");
}

#[tokio::test]
async fn one_units_exception_takes_only_that_gate_offline() {
    let r = rig(2).await;
    r.until(0, GateState::Closed).await;
    r.until(1, GateState::Closed).await;
    r.script.with(|s| {
        s.exceptions.insert(1, 11);
    });
    r.until(1, GateState::Offline).await;
    let view = r.fleet.view(&r.gates[1]).await.unwrap();
    assert_eq!(view.snapshot.fault_code, Some(11));
    // Its neighbour still works.
    let (_, mut acks) = r.command(0, Action::Open);
    assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(next(&mut acks).await, CommandStatus::Completed);
    r.script.with(|s| {
        s.exceptions.clear();
    });
    r.until(1, GateState::Closed).await;
    assert_eq!(
        r.script.get(|s| s.connects),
        1,
        "a unit's exception never restarts the link"
    );
}

#[tokio::test]
async fn a_write_that_times_out_is_reported_and_the_link_restarts() {
    let r = rig(1).await;
    r.until(0, GateState::Closed).await;
    r.script
        .with(|s| s.break_next = Some(LinkError::Timeout(Duration::from_millis(500))));
    let (_, mut acks) = r.command(0, Action::Open);
    assert_eq!(next(&mut acks).await, CommandStatus::TimedOut);
    r.until(0, GateState::Offline).await;
    r.until(0, GateState::Closed).await;
    assert_eq!(r.script.get(|s| s.connects), 2);
}

#[tokio::test]
async fn a_pulse_cut_short_by_a_link_drop_is_released_on_reconnect() {
    let r = rig(1).await;
    r.until(0, GateState::Closed).await;
    r.script.with(|s| s.pulse = Some(Duration::from_secs(3600)));
    let (_, mut acks) = r.command(0, Action::Open);
    assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
    assert!(r.script.get(|s| s.released.is_empty()));
    r.script
        .with(|s| s.break_next = Some(LinkError::Io("reset".into())));
    r.until(0, GateState::Offline).await;
    r.until(0, GateState::Open).await;
    assert_eq!(r.script.get(|s| s.released.clone()), vec![(0, HwOp::Open)]);
}

#[tokio::test]
async fn a_retried_command_id_moves_the_gate_once_and_both_askers_hear_the_outcome() {
    let r = rig(1).await;
    r.until(0, GateState::Closed).await;
    let id = CommandId::random();
    let mut receivers = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink: AckSink = Arc::new(move |_: &GateId, ack| {
            let _ = tx.send(ack);
        });
        r.fleet
            .command(&r.gates[0], id, Action::Open, Some(sink))
            .unwrap();
        receivers.push(rx);
    }
    for rx in &mut receivers {
        let mut last = next(rx).await;
        if last == CommandStatus::Accepted {
            last = next(rx).await;
        }
        assert_eq!(last, CommandStatus::Completed);
    }
    assert_eq!(r.script.get(|s| s.writes.len()), 1);
}

#[tokio::test]
async fn shutdown_releases_pulses_and_stops_every_actor() {
    let r = rig(2).await;
    r.until(0, GateState::Closed).await;
    r.script.with(|s| s.pulse = Some(Duration::from_secs(3600)));
    let (_, mut acks) = r.command(0, Action::Open);
    assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
    r.fleet.shutdown(Duration::from_secs(5)).await;
    assert_eq!(r.script.get(|s| s.released.clone()), vec![(0, HwOp::Open)]);
    assert!(r.fleet.context().directory.gate_ids().is_empty());
    assert!(r.fleet.view(&r.gates[1]).await.is_err());
}

// ---- the event log ------------------------------------------------------------------------

/// An event store in memory that can be made to fail, recording each batch it was given.
#[derive(Default)]
struct MemoryStore {
    events: Mutex<Vec<Arc<GateEvent>>>,
    batches: Mutex<Vec<usize>>,
    down: AtomicBool,
    /// Fenced appends refuse this gate's events (it moved to another controller).
    moved: Mutex<Option<GateId>>,
}

impl EventStore for MemoryStore {
    fn append_batch(
        &self,
        events: Vec<Arc<GateEvent>>,
        _audits: Vec<gatehouse_actors::access::AuditRecord>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            self.batches.lock().unwrap().push(events.len());
            self.events.lock().unwrap().extend(events);
            Ok(())
        })
    }
    fn append_fenced(
        &self,
        events: Vec<Arc<GateEvent>>,
        audits: Vec<gatehouse_actors::access::AuditRecord>,
        _fence: gatehouse_actors::cluster::Fence,
    ) -> BoxFuture<'_, Result<Refused, StoreError>> {
        Box::pin(async move {
            let moved = self.moved.lock().unwrap().clone();
            let (gone, kept): (Vec<_>, Vec<_>) = events
                .into_iter()
                .partition(|e| moved.as_ref() == Some(&e.gate));
            self.append_batch(kept, audits).await?;
            let mut gates: Vec<GateId> = gone.into_iter().map(|e| e.gate.clone()).collect();
            gates.dedup();
            Ok(Refused {
                controllers: Vec::new(),
                gates,
            })
        })
    }
    fn heads(&self) -> BoxFuture<'_, Result<Vec<(GateId, GateHead)>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn heads_of(
        &self,
        _: Vec<GateId>,
    ) -> BoxFuture<'_, Result<Vec<(GateId, GateHead)>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn since(
        &self,
        _: GateId,
        _: u64,
        _: u32,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn latest(&self, _: GateId) -> BoxFuture<'_, Result<Option<StoredEvent>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn after(&self, _: i64, _: u32) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn newest_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
    fn finished_commands(&self, _: u64) -> BoxFuture<'_, Result<Vec<FinishedCommand>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

impl MemoryStore {
    fn stored(&self) -> Vec<Arc<GateEvent>> {
        self.events.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_terminal_outcome_is_sent_only_after_its_event_is_committed() {
    let store = Arc::new(MemoryStore::default());
    let r = rig_with(1, Some(store.clone())).await;
    r.until(0, GateState::Closed).await;

    store.down.store(true, Ordering::SeqCst);
    let (id, mut acks) = r.command(0, Action::Open);
    // `accepted` does not wait for the database.
    assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
    r.until(0, GateState::Open).await;
    // The gate is open and the command done, but its outcome is not durable: not told yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        acks.try_recv().is_err(),
        "completed was told before it was committed"
    );
    let health = r.fleet.context().eventlog.as_ref().unwrap().stats().clone();
    assert!(
        !health.is_healthy(),
        "readiness degrades while commits fail"
    );

    store.down.store(false, Ordering::SeqCst);
    assert_eq!(next(&mut acks).await, CommandStatus::Completed);
    assert!(health.is_healthy());
    let finished = store.stored().iter().any(|e| {
        matches!(e.kind, EventKind::CommandFinished { command, status: CommandStatus::Completed, .. } if command == id)
    });
    assert!(finished, "the outcome's event is in the store");
}

#[tokio::test]
async fn in_a_cluster_a_stopping_gate_whose_outcome_was_refused_says_failover_not_completed() {
    // One node of a cluster holding c1's lease; its events go through the fenced append.
    let store = Arc::new(MemoryStore::default());
    let script = Scripted::default();
    script.with(|s| s.states = vec![HwState::Closed]);
    let bus: Arc<dyn EventSink> = Arc::new(LocalBus::default());
    let directory = Arc::new(Directory::default());
    let ownership = Arc::new(gatehouse_actors::cluster::Ownership::new(
        gatehouse_actors::ids::NodeId::new("n1").unwrap(),
        Duration::from_secs(60),
    ));
    let c1 = ControllerId::new("c1").unwrap();
    ownership.hold(c1.clone(), 1, tokio::time::Instant::now());
    let (log, writer) = eventlog::channel(
        store.clone(),
        directory.clone(),
        bus.clone(),
        eventlog::QUEUE_CAPACITY,
    );
    let ctx = FleetContext::clustered(bus, directory, Some(log), Some(ownership.clone()), None);
    let gate = GateId::new("g0").unwrap();
    let spec = ControllerSpec::new(
        c1,
        SiteId::new("site").unwrap(),
        Arc::new(script.clone()),
        Duration::from_millis(50),
        Duration::from_millis(10),
        vec![GateSpec {
            id: gate.clone(),
            name: "g0".into(),
            config: GateConfig::default(),
        }],
    );
    let (fleet, _) = Fleet::start(ctx, vec![spec], Some(writer.fenced(ownership.clone())))
        .await
        .unwrap();
    let r = Rig {
        fleet,
        script,
        events: LocalBus::default().subscribe(),
        gates: vec![gate.clone()],
    };
    r.until(0, GateState::Closed).await;

    // The gate moves to another controller (a fleet change made on another node) while a
    // command runs on it here: its outcome's event is refused, so it is never told as such.
    let (id, mut acks) = r.command(0, Action::Open);
    assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
    *store.moved.lock().unwrap() = Some(gate.clone());
    r.until(0, GateState::Open).await;
    // This node applies the change: the gate stops, and its caller hears failover at once,
    // not `completed` (which the log does not have) and not silence.
    r.fleet.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        next(&mut acks).await,
        CommandStatus::Failed(FailReason::Failover)
    );
    assert!(acks.try_recv().is_err(), "one terminal outcome");
    let stored_finish = store
        .stored()
        .iter()
        .any(|e| matches!(e.kind, EventKind::CommandFinished { command, .. } if command == id));
    assert!(!stored_finish, "the refused outcome is not in the store");
    assert!(ownership.moved(&gate), "the store said the gate moved");
}

#[tokio::test]
async fn events_are_group_committed_then_published_in_sequence_per_gate() {
    let store = Arc::new(MemoryStore::default());
    let mut r = rig_with(8, Some(store.clone())).await;
    for i in 0..8 {
        r.until(i, GateState::Closed).await;
    }
    for i in 0..8 {
        let _ = r.command(i, Action::Open);
    }
    for i in 0..8 {
        r.until(i, GateState::Open).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stored = store.stored();
    let mut published = Vec::new();
    while let Ok(ev) = r.events.try_recv() {
        published.push(ev);
    }
    assert_eq!(
        published.len(),
        stored.len(),
        "every committed event is published, and only those"
    );
    for gate in &r.gates {
        let seqs: Vec<u64> = published
            .iter()
            .filter(|e| &e.gate == gate)
            .map(|e| e.seq)
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{gate}: gap-free, in order");
    }
    let batches = store.batches.lock().unwrap().clone();
    assert!(
        batches.iter().any(|n| *n > 1),
        "several events share a commit: {batches:?}"
    );
}

#[tokio::test]
async fn shutdown_writes_everything_the_gates_queued() {
    let store = Arc::new(MemoryStore::default());
    let r = rig_with(4, Some(store.clone())).await;
    for i in 0..4 {
        r.until(i, GateState::Closed).await;
    }
    let _ = r.command(2, Action::Open);
    r.until(2, GateState::Open).await;
    r.fleet.shutdown(Duration::from_secs(5)).await;
    let stored = store.stored();
    for gate in &r.gates {
        let seqs: Vec<u64> = stored
            .iter()
            .filter(|e| &e.gate == gate)
            .map(|e| e.seq)
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{gate}");
        // The last thing each gate said, going offline at shutdown, is stored too.
        let last = stored.iter().rfind(|e| &e.gate == gate).unwrap();
        assert_eq!(last.snapshot.state, GateState::Offline, "{gate}");
    }
}

#[tokio::test]
async fn each_gate_is_found_by_its_controller_and_belongs_to_one_controller_only() {
    let rig = rig(2).await;
    let c1 = ControllerId::new("c1").unwrap();
    assert_eq!(
        rig.fleet.controller_of(&rig.gates[1]).map(|c| c.id.clone()),
        Some(c1.clone())
    );
    assert!(
        rig.fleet
            .controller_of(&GateId::new("nowhere").unwrap())
            .is_none()
    );

    // A second controller that claims g0 is refused; one with new gates is indexed.
    let spec = |id: &str, gates: &[&str]| {
        ControllerSpec::new(
            ControllerId::new(id).unwrap(),
            SiteId::new("site").unwrap(),
            Arc::new(rig.script.clone()),
            Duration::from_millis(50),
            Duration::from_millis(10),
            gates
                .iter()
                .map(|g| GateSpec {
                    id: GateId::new(g).unwrap(),
                    name: g.to_string(),
                    config: GateConfig::default(),
                })
                .collect(),
        )
    };
    assert!(matches!(
        rig.fleet.add_controller(spec("c2", &["g0"])).await,
        Err(FleetError::DuplicateGate(g)) if g.as_str() == "g0"
    ));
    rig.fleet.add_controller(spec("c3", &["g7"])).await.unwrap();
    let g7 = GateId::new("g7").unwrap();
    assert_eq!(rig.fleet.controller_of(&g7).unwrap().id.as_str(), "c3");
    // Once its controller is gone, the gate is nobody's.
    assert!(
        rig.fleet
            .remove_controller(&ControllerId::new("c3").unwrap())
            .await
            .unwrap()
    );
    assert!(rig.fleet.controller_of(&g7).is_none());
    assert_eq!(rig.fleet.controller_of(&rig.gates[0]).unwrap().id, c1);
    rig.fleet.shutdown(Duration::from_secs(5)).await;
}

/// The link does not tell a gate at rest the same reading again (that would wake every gate
/// actor on every poll for nothing), so a gate actor that is restarted must ask for a fresh
/// reading: killed while its unit reads the same as ever, it is back `closed` at once, not
/// after the link's periodic refresh (30 s, far past this test's 10 s bound).
#[tokio::test]
async fn a_restarted_gate_actor_is_told_the_current_reading_even_though_nothing_changed() {
    let r = rig(2).await;
    r.until(0, GateState::Closed).await;
    let reads = |r: &Rig| {
        r.script
            .get(|s| s.log.iter().filter(|l| *l == "read 0").count())
    };
    // Several unchanged readings go by first.
    let before = reads(&r);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reads(&r) < before + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gate 0 is not polled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old = r.fleet.context().directory.gate(&r.gates[0]).unwrap();
    old.kill();
    // The supervisor puts a new actor in its place; it starts knowing nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(now) = r.fleet.context().directory.gate(&r.gates[0])
            && now.get_id() != old.get_id()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gate 0 was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.until(0, GateState::Closed).await;
    // And it is driven as before.
    let (_, mut acks) = r.command(0, Action::Open);
    assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
    assert_eq!(next(&mut acks).await, CommandStatus::Completed);
}

/// The link's counters: (reads, poll messages that read, writes the controller saw).
fn counts(r: &Rig) -> (u64, u64, usize) {
    let stats = r.fleet.context().link_stats();
    let (_, st) = &stats[0];
    (
        st.polls.load(Ordering::Relaxed),
        st.poll_rounds.load(Ordering::Relaxed),
        r.script.get(|s| s.writes.len()),
    )
}

/// Waits (bounded, on the paused clock) until the link has read `reads` more times.
async fn reads_go_by(r: &Rig, reads: u64) {
    let (from, _, _) = counts(r);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counts(r).0 < from + reads {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link stopped polling"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Polling a fleet at rest costs a wake (a message, a timer) per poll message: gates at rest
/// are read in bursts of `link::BURST`, the gates of a controller falling due in groups of
/// that size. While a gate is busy (moving, or just written to) every poll message reads one
/// gate, so that a write queued behind it waits for one read at the most; once the gate is
/// at rest again, bursts are full again (how a gate goes back to its group's schedule is
/// `link::rest_due`'s unit tests). (On tokio's paused clock, reads take no time, so bursts
/// are never cut short by `BURST_TIME`.)
#[tokio::test(start_paused = true)]
async fn gates_at_rest_are_polled_in_bursts_and_one_read_a_message_while_a_gate_is_busy() {
    use gatehouse_actors::tree::link::{BURST, BURST_TIME};
    let r = rig(16).await;
    for i in 0..16 {
        r.until(i, GateState::Closed).await;
    }
    // Past the first round after connecting (every gate at once).
    reads_go_by(&r, 32).await;
    let ratio = |(p0, r0, _): (u64, u64, usize), (p1, r1, _): (u64, u64, usize)| {
        (p1 - p0) as f64 / (r1 - r0).max(1) as f64
    };

    let before = counts(&r);
    reads_go_by(&r, 160).await;
    let at_rest = ratio(before, counts(&r));
    assert!(
        at_rest >= BURST as f64 * 0.9,
        "at rest, {at_rest:.2} reads per poll message (bursts of {BURST})"
    );

    // A write makes its gate hot (fast polling, `HOT_AFTER_WRITE`: 3 s).
    let (_, mut acks) = r.command(3, Action::Open);
    assert_eq!(next(&mut acks).await, CommandStatus::Accepted);
    let written = tokio::time::Instant::now();
    let before = counts(&r);
    reads_go_by(&r, 100).await;
    let after = counts(&r);
    assert!(
        written.elapsed() < Duration::from_secs(3) - BURST_TIME,
        "still within the hot window"
    );
    // Every read but the ones after writes came in a poll message of its own.
    assert_eq!(
        after.0 - before.0,
        (after.1 - before.1) + (after.2 - before.2) as u64,
        "one read per poll message while a gate is hot: {before:?} -> {after:?}"
    );
    assert!(after.0 - before.0 >= 100);

    // After the hot window, bursts are full again.
    while written.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reads_go_by(&r, 32).await;
    let before = counts(&r);
    reads_go_by(&r, 160).await;
    let again = ratio(before, counts(&r));
    assert!(
        again >= BURST as f64 * 0.9,
        "after the gate came to rest, {again:.2} reads per poll message"
    );
    assert_eq!(r.script.get(|s| s.writes.clone()), vec![(3, HwOp::Open)]);
}
