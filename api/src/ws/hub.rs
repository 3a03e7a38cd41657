//! The hub: one actor between the event bus and the sessions, a permanent child of the root
//! (after the event log, before the fleet, so that it follows the bus before any gate
//! publishes). It serializes each committed
//! event once, remembers each gate's newest one, and hands it to the sessions subscribed to
//! that gate. It also routes access-change notices to the sessions of the user or key they
//! concern.
//!
//! Events go straight into each subscriber's outbox (see `outbox.rs` for the per-gate streams);
//! the session actor is not on that path.
//!
//! Ordering and completeness: subscribing registers the session's outbox and reads the gate's
//! newest event under the same lock that publishing takes, so every event after the one the
//! snapshot shows reaches the outbox (held there until the snapshot and replay are queued),
//! and none at or below it is sent twice. When the hub itself falls behind the bus and loses
//! events, it tells every session to fill its gaps from the event store.
//!
//! The [`Hub`] (subscriptions, sessions, counters) is shared state that outlives the actor;
//! [`HubActor`] is the part that can fail. A restarted hub cannot know what it missed
//! between its failure and its new subscription to the bus, so it forgets every gate's
//! newest event and tells every session to resynchronise from the event store: the same path
//! as falling behind the bus, so no gap and no duplicate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::ids::GateId;
use gatehouse_actors::store::EventStore;
use gatehouse_actors::supervision::{ChildSpec, Restart};
use gatehouse_actors::tree::bus::LocalBus;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use tokio::sync::broadcast::{self, error::RecvError};

use super::msg::SessionMsg;
use super::outbox::{Delivery, LiveEvent, Outbox, Queued};
use crate::changes::{AccessChange, AccessChanges};

#[derive(Default)]
struct Slot {
    latest: Option<Arc<LiveEvent>>,
    subscribers: HashMap<ActorId, Arc<Outbox>>,
}

struct Registered {
    actor: ActorRef<SessionMsg>,
    /// `user:<uuid>` or `key:<uuid>` once authenticated.
    who: Option<String>,
}

/// Counters for operators and benchmarks.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Events received from the bus.
    pub events: AtomicU64,
    /// Events handed to sessions.
    pub deliveries: AtomicU64,
    /// Times the hub fell behind the bus or events were lost between nodes (each followed by
    /// a check of every session against the store).
    pub lagged: AtomicU64,
    /// Reads of the subscribed gates' heads after a loss ([`GapHeads`]; one for all sessions).
    pub gap_head_reads: AtomicU64,
    /// Events the hub read from the store after a loss and handed to every subscriber.
    pub gap_filled: AtomicU64,
    /// Sessions that finished checking their gates after a loss.
    pub gap_checks: AtomicU64,
    /// Gates a session refilled from the store after a loss (behind the store's head, or
    /// its head unknown).
    pub gap_refills: AtomicU64,
    /// Sessions ever opened, and closed.
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// Sessions closed for being too slow (4509).
    pub too_slow: AtomicU64,
    /// Events coalesced for clients that were behind.
    pub coalesced: AtomicU64,
    /// Session actors that failed (a bug; the connection is closed with 1011).
    pub failed: AtomicU64,
    /// Times the hub actor started (more than once: it was restarted).
    pub starts: AtomicU64,
    /// Open sessions past `auth`.
    pub authenticated: AtomicI64,
    /// Gate subscriptions over all sessions.
    pub subscriptions: AtomicI64,
}

#[derive(Default)]
pub struct Hub {
    /// One lock per gate, so that a gate with many subscribers being fanned out does not hold
    /// up subscriptions to other gates; the map's own lock is held only to find a slot.
    gates: Mutex<HashMap<GateId, Arc<Mutex<Slot>>>>,
    sessions: Mutex<HashMap<ActorId, Registered>>,
    pub stats: HubStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a map update that cannot be left half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn register(&self, actor: &ActorRef<SessionMsg>) {
        lock(&self.sessions).insert(
            actor.get_id(),
            Registered {
                actor: actor.clone(),
                who: None,
            },
        );
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Records who the session belongs to, for access-change notices.
    pub fn identify(&self, session: ActorId, who: &str) {
        if let Some(r) = lock(&self.sessions).get_mut(&session)
            && r.who.replace(who.to_string()).is_none()
        {
            self.stats.authenticated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets a session and its subscriptions.
    pub fn deregister<'a>(&self, session: ActorId, gates: impl Iterator<Item = &'a GateId>) {
        self.unsubscribe(session, gates);
        if let Some(r) = lock(&self.sessions).remove(&session) {
            self.stats.closed.fetch_add(1, Ordering::Relaxed);
            if r.who.is_some() {
                self.stats.authenticated.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn open_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Subscribes the session's outbox to `gates` (hold them in the outbox first); answers
    /// each gate's newest committed event, if the hub has seen one since it started.
    pub fn subscribe(
        &self,
        session: ActorId,
        outbox: &Arc<Outbox>,
        gates: &[GateId],
    ) -> Vec<Option<Arc<LiveEvent>>> {
        gates
            .iter()
            .map(|gate| {
                let slot = self.slot(gate);
                let mut slot = lock(&slot);
                if slot.subscribers.insert(session, outbox.clone()).is_none() {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                slot.latest.clone()
            })
            .collect()
    }

    /// The gate's newest event seen on the bus since the hub last (re)started or lost events.
    pub fn latest(&self, gate: &GateId) -> Option<Arc<GateEvent>> {
        let slot = lock(&self.gates).get(gate).cloned()?;
        lock(&slot).latest.as_ref().map(|l| l.event.clone())
    }

    fn slot(&self, gate: &GateId) -> Arc<Mutex<Slot>> {
        lock(&self.gates).entry(gate.clone()).or_default().clone()
    }

    pub fn unsubscribe<'a>(&self, session: ActorId, gates: impl Iterator<Item = &'a GateId>) {
        for gate in gates {
            let slot = lock(&self.gates).get(gate).cloned();
            if let Some(slot) = slot
                && lock(&slot).subscribers.remove(&session).is_some()
            {
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Hands a committed event to its gate's subscribers.
    pub fn publish(&self, event: Arc<GateEvent>) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(LiveEvent::new(event));
        let slot = self.slot(&live.event.gate);
        let mut slot = lock(&slot);
        // Several writers could commit out of order; the newest stays the newest.
        if slot
            .latest
            .as_ref()
            .is_none_or(|l| l.event.seq < live.event.seq)
        {
            slot.latest = Some(live.clone());
        }
        let (mut delivered, mut coalesced) = (0, 0);
        for outbox in slot.subscribers.values() {
            match outbox.live(&live) {
                Delivery::Queued(Queued::InOrder) => delivered += 1,
                Delivery::Queued(Queued::Coalesced) => coalesced += 1,
                Delivery::Held | Delivery::Duplicate | Delivery::Ignored => {}
            }
        }
        self.stats
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
        self.stats.coalesced.fetch_add(coalesced, Ordering::Relaxed);
    }

    /// Sends `make()` to every session.
    pub fn tell_all(&self, make: impl Fn() -> SessionMsg) {
        for r in lock(&self.sessions).values() {
            let _ = r.actor.send_message(make());
        }
    }

    fn tell_about(&self, change: AccessChange) {
        let who = match change {
            AccessChange::User(id) => format!("user:{id}"),
            AccessChange::ApiKey(id) => format!("key:{id}"),
            AccessChange::Fleet => return self.tell_all(|| SessionMsg::FleetChanged),
        };
        for r in lock(&self.sessions).values() {
            if r.who.as_deref() == Some(who.as_str()) {
                let _ = r.actor.send_message(SessionMsg::AccessChanged);
            }
        }
    }

    /// Every gate's slot (the map's lock is not held while a slot is looked at).
    fn slots(&self) -> Vec<(GateId, Arc<Mutex<Slot>>)> {
        lock(&self.gates)
            .iter()
            .map(|(g, s)| (g.clone(), s.clone()))
            .collect()
    }

    /// Forgets every gate's newest event (after a restart, they may be stale): subscribers
    /// read the gate's committed state instead. Answers the seq of each event forgotten.
    fn forget_latest(&self) -> HashMap<GateId, u64> {
        self.slots()
            .into_iter()
            .filter_map(|(gate, slot)| Some((gate, lock(&slot).latest.take()?.event.seq)))
            .collect()
    }

    /// How many gates some session follows now.
    pub fn subscribed_gate_count(&self) -> usize {
        self.subscribed_gates().len()
    }

    /// The gates some session follows now.
    fn subscribed_gates(&self) -> Vec<GateId> {
        self.slots()
            .into_iter()
            .filter(|(_, slot)| !lock(slot).subscribers.is_empty())
            .map(|(gate, _)| gate)
            .collect()
    }

    /// Events may have been lost on their way here: forgets each gate's newest event (a
    /// snapshot then comes from the store) and has every session check its gates against
    /// the store's heads, read once for all of them.
    fn check_all_sessions(&self) {
        let seen = self.forget_latest();
        let heads = Arc::new(GapHeads::new(self.subscribed_gates(), seen));
        self.tell_all(|| SessionMsg::Resync(Some(heads.clone())));
    }
}

/// How many gates one heads read asks for (`EventStore::head_seqs`).
const HEADS_PER_READ: usize = 256;

/// Events the hub fills per gate after a loss, at most: a gate further behind is left to its
/// sessions (each reads what it misses, up to its own replay bounds).
const FILL_PER_GATE: u64 = 1_000;

/// After events were lost (between nodes, or the hub fell behind the bus): the committed head
/// of every gate subscribed then, read from the store once, by the first session that asks,
/// for every session; and, for a gate whose head is past the newest event the hub had seen,
/// the events in between, read once and handed to every subscriber as if live. A session
/// whose gates are then at their heads reads nothing more, so a loss costs one read per 256
/// followed gates plus one per gate that lost events, instead of one per session and gate.
/// Every event lost was committed before the loss was noticed, so it is at or below the head
/// read after.
pub struct GapHeads {
    gates: Vec<GateId>,
    /// The newest seq the hub had seen of each gate when the loss was noticed.
    seen: HashMap<GateId, u64>,
    /// `None`: the read failed (each session then reads its gates itself).
    heads: tokio::sync::OnceCell<Option<HashMap<GateId, u64>>>,
}

impl std::fmt::Debug for GapHeads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GapHeads")
            .field("gates", &self.gates.len())
            .field("seen", &self.seen.len())
            .field("read", &self.heads.initialized())
            .finish()
    }
}

impl GapHeads {
    fn new(gates: Vec<GateId>, seen: HashMap<GateId, u64>) -> GapHeads {
        GapHeads {
            gates,
            seen,
            heads: tokio::sync::OnceCell::new(),
        }
    }

    /// The heads (0 for a gate with nothing stored), or `None` when the store could not say;
    /// a gate missing from the map was subscribed after the loss was noticed.
    pub async fn read(&self, store: &dyn EventStore, hub: &Hub) -> Option<&HashMap<GateId, u64>> {
        self.heads
            .get_or_init(|| async {
                hub.stats.gap_head_reads.fetch_add(1, Ordering::Relaxed);
                let mut heads: HashMap<GateId, u64> =
                    self.gates.iter().map(|g| (g.clone(), 0)).collect();
                for chunk in self.gates.chunks(HEADS_PER_READ) {
                    match store.head_seqs(chunk.to_vec()).await {
                        Ok(found) => heads.extend(found),
                        Err(e) => {
                            tracing::warn!(error = %e, "gate heads unreadable after a loss of events; each session reads its gates");
                            return None;
                        }
                    }
                }
                for (gate, &head) in &heads {
                    if let Some(&seen) = self.seen.get(gate)
                        && seen < head
                        && head - seen <= FILL_PER_GATE
                    {
                        Self::fill(store, hub, gate, seen, head).await;
                    }
                }
                Some(heads)
            })
            .await
            .as_ref()
    }

    /// Hands `gate`'s committed events `after + 1 ..= head` to its subscribers, as if live
    /// (each outbox drops what it already has). A failed read leaves them to the sessions.
    async fn fill(store: &dyn EventStore, hub: &Hub, gate: &GateId, mut after: u64, head: u64) {
        while after < head {
            let limit = (head - after).min(500) as u32;
            let page = match store.since(gate.clone(), after, limit).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%gate, error = %e, "lost events not refilled by the hub; its sessions read them");
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            after = last.event.seq;
            for stored in page {
                hub.stats.gap_filled.fetch_add(1, Ordering::Relaxed);
                hub.publish(Arc::new(stored.event));
            }
        }
    }
}

/// The longest the hub waits for the bus in one message, so that a stop request (handled
/// between messages) is never kept waiting longer.
const PUMP_WAKE: Duration = Duration::from_millis(200);

/// Bus events handled per message once one arrived: enough to amortise the message, few
/// enough that access notices and a stop request are not kept waiting.
const PUMP_BATCH: usize = 1_024;

/// The hub actor: follows the bus and the access-change notices.
pub struct HubActor;

pub enum HubMsg {
    /// Internal: take what the bus and the notice board have.
    Pump,
}

/// What the hub actor needs; survives its restarts.
#[derive(Clone)]
pub struct HubArgs {
    pub hub: Arc<Hub>,
    pub bus: LocalBus,
    pub changes: AccessChanges,
}

pub struct HubState {
    hub: Arc<Hub>,
    bus: broadcast::Receiver<Arc<GateEvent>>,
    /// Gaps raised on the bus (the Redis bus lost events on the way).
    gaps: tokio::sync::watch::Receiver<u64>,
    changes: broadcast::Receiver<AccessChange>,
    changes_open: bool,
}

impl Actor for HubActor {
    type Msg = HubMsg;
    type State = HubState;
    type Arguments = HubArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HubMsg>,
        args: HubArgs,
    ) -> Result<HubState, ActorProcessingErr> {
        let state = HubState {
            bus: args.bus.subscribe(),
            gaps: args.bus.gaps(),
            changes: args.changes.subscribe(),
            hub: args.hub,
            changes_open: true,
        };
        if state.hub.stats.starts.fetch_add(1, Ordering::Relaxed) > 0 {
            // Subscribed again first, so that everything after this point arrives live and
            // everything before it is in the store.
            let _ = state.hub.forget_latest();
            state.hub.tell_all(|| SessionMsg::Resync(None));
            state.hub.tell_all(|| SessionMsg::AccessChanged);
            tracing::warn!(
                sessions = state.hub.open_sessions(),
                "the session hub restarted; every session refills from the event store"
            );
        }
        myself.send_message(HubMsg::Pump)?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<HubMsg>,
        HubMsg::Pump: HubMsg,
        state: &mut HubState,
    ) -> Result<(), ActorProcessingErr> {
        let first = tokio::time::timeout(PUMP_WAKE, async {
            tokio::select! {
                event = state.bus.recv() => Some(Ok(event)),
                change = state.changes.recv(), if state.changes_open => Some(Err(change)),
                gap = state.gaps.changed() => {
                    if gap.is_ok() {
                        state.gap();
                    }
                    None
                }
            }
        })
        .await
        .unwrap_or(None);
        // Timed from the first event in hand: the wait for it is idleness, not work.
        let _timing = first
            .is_some()
            .then(|| gatehouse_actors::telemetry::handling(gatehouse_actors::telemetry::Kind::Hub));
        match first {
            None => {}
            Some(Ok(event)) => {
                if !state.on_event(event) {
                    return Ok(()); // the bus closed: nothing more will come
                }
                for _ in 1..PUMP_BATCH {
                    match state.bus.try_recv() {
                        Ok(event) => state.hub.publish(event),
                        Err(broadcast::error::TryRecvError::Lagged(missed)) => state.lagged(missed),
                        Err(_) => break,
                    }
                }
            }
            Some(Err(change)) => state.on_change(change),
        }
        myself.send_message(HubMsg::Pump)?;
        Ok(())
    }
}

impl HubState {
    /// Answers false when the bus has closed.
    fn on_event(&mut self, event: Result<Arc<GateEvent>, RecvError>) -> bool {
        match event {
            Ok(event) => self.hub.publish(event),
            Err(RecvError::Lagged(missed)) => self.lagged(missed),
            Err(RecvError::Closed) => return false,
        }
        true
    }

    /// Events may have been lost before they reached the bus (between nodes): every session
    /// refills from the store, and no gate's newest event is trusted for a snapshot.
    fn gap(&self) {
        self.hub.stats.lagged.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "events between nodes may have been lost; sessions refill from the event store"
        );
        self.hub.check_all_sessions();
    }

    fn lagged(&self, missed: u64) {
        self.hub.stats.lagged.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            missed,
            "the session hub fell behind the event bus; sessions refill from the event store"
        );
        self.hub.check_all_sessions();
    }

    fn on_change(&mut self, change: Result<AccessChange, RecvError>) {
        match change {
            Ok(change) => self.hub.tell_about(change),
            Err(RecvError::Lagged(_)) => self.hub.tell_all(|| SessionMsg::AccessChanged),
            Err(RecvError::Closed) => self.changes_open = false,
        }
    }
}

/// The hub's child spec for the root: permanent.
pub fn child_spec(args: HubArgs) -> ChildSpec {
    ChildSpec::actor("hub", Restart::Permanent, None, move || {
        (HubActor, args.clone())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use gatehouse_actors::access::AuditRecord;
    use gatehouse_actors::ports::BoxFuture;
    use gatehouse_actors::store::{FinishedCommand, GateHead, StoreError, StoredEvent};
    use serde_json::Value;

    use super::super::outbox::tests::opening as event;
    use super::*;

    /// One gate's events `1..=head`, with the reads counted; `away` fails every read.
    struct Counted {
        gate: GateId,
        head: u64,
        away: bool,
        heads_reads: AtomicUsize,
        since_reads: AtomicUsize,
    }

    impl Counted {
        fn new(gate: &GateId, head: u64, away: bool) -> Counted {
            Counted {
                gate: gate.clone(),
                head,
                away,
                heads_reads: AtomicUsize::new(0),
                since_reads: AtomicUsize::new(0),
            }
        }

        fn fail<T>(&self) -> Result<T, StoreError> {
            Err(StoreError::Unavailable("the test store is away".into()))
        }
    }

    impl EventStore for Counted {
        fn append_batch(
            &self,
            _: Vec<Arc<GateEvent>>,
            _: Vec<AuditRecord>,
        ) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { self.fail() })
        }
        fn heads(&self) -> BoxFuture<'_, Result<Vec<(GateId, GateHead)>, StoreError>> {
            Box::pin(async { self.fail() })
        }
        fn heads_of(
            &self,
            gates: Vec<GateId>,
        ) -> BoxFuture<'_, Result<Vec<(GateId, GateHead)>, StoreError>> {
            Box::pin(async move {
                self.heads_reads.fetch_add(1, Ordering::Relaxed);
                if self.away {
                    return self.fail();
                }
                Ok(gates
                    .into_iter()
                    .filter(|g| g == &self.gate)
                    .map(|g| {
                        let head = GateHead {
                            seq: self.head,
                            cycles: None,
                        };
                        (g, head)
                    })
                    .collect())
            })
        }
        fn since(
            &self,
            gate: GateId,
            after: u64,
            limit: u32,
        ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
            Box::pin(async move {
                self.since_reads.fetch_add(1, Ordering::Relaxed);
                if self.away || gate != self.gate {
                    return self.fail();
                }
                Ok((after + 1..=self.head)
                    .take(limit as usize)
                    .map(|seq| StoredEvent {
                        id: seq as i64,
                        event: event(&gate, seq),
                    })
                    .collect())
            })
        }
        fn latest(&self, _: GateId) -> BoxFuture<'_, Result<Option<StoredEvent>, StoreError>> {
            Box::pin(async { self.fail() })
        }
        fn after(&self, _: i64, _: u32) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
            Box::pin(async { self.fail() })
        }
        fn newest_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
            Box::pin(async { self.fail() })
        }
        fn finished_commands(
            &self,
            _: u64,
        ) -> BoxFuture<'_, Result<Vec<FinishedCommand>, StoreError>> {
            Box::pin(async { self.fail() })
        }
    }

    /// Three subscribers of `gate`, each having sent everything up to seq 4, which the hub
    /// saw last.
    fn three_at_four(hub: &Hub, gate: &GateId) -> Vec<Arc<Outbox>> {
        let outboxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::default())).collect();
        for (i, outbox) in outboxes.iter().enumerate() {
            outbox.hold(gate);
            hub.subscribe(ActorId::Local(i as u64), outbox, std::slice::from_ref(gate));
            outbox.release(gate, 4);
        }
        hub.publish(Arc::new(event(gate, 4)));
        outboxes
    }

    fn seqs(outbox: &Outbox) -> Vec<u64> {
        outbox
            .take_frames()
            .iter()
            .map(|f| {
                let frame: Value = serde_json::from_str(f).unwrap();
                frame["seq"].as_u64().unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_loss_is_read_once_and_filled_once_for_every_subscriber() {
        let hub = Hub::default();
        let gate: GateId = "a".parse().unwrap();
        let outboxes = three_at_four(&hub, &gate);
        // 5 and 6 were committed but lost on their way to the hub.
        let store = Counted::new(&gate, 6, false);
        let heads = GapHeads::new(hub.subscribed_gates(), hub.forget_latest());
        for outbox in &outboxes {
            let known = heads.read(&store, &hub).await.expect("the heads were read");
            assert_eq!(known.get(&gate), Some(&6));
            assert_eq!(outbox.last(&gate), Some(6), "at the head: nothing to read");
        }
        assert_eq!(store.heads_reads.load(Ordering::Relaxed), 1);
        assert_eq!(store.since_reads.load(Ordering::Relaxed), 1);
        assert_eq!(hub.stats.gap_filled.load(Ordering::Relaxed), 2);
        for outbox in &outboxes {
            assert_eq!(seqs(outbox), vec![5, 6], "each lost event once, in order");
        }
        assert_eq!(hub.latest(&gate).map(|e| e.seq), Some(6));
    }

    #[tokio::test]
    async fn with_the_store_away_each_session_is_left_to_read_its_gates() {
        let hub = Hub::default();
        let gate: GateId = "a".parse().unwrap();
        let outboxes = three_at_four(&hub, &gate);
        let store = Counted::new(&gate, 6, true);
        let heads = GapHeads::new(hub.subscribed_gates(), hub.forget_latest());
        for _ in &outboxes {
            assert!(heads.read(&store, &hub).await.is_none());
        }
        // Tried once, not once per session.
        assert_eq!(store.heads_reads.load(Ordering::Relaxed), 1);
        assert_eq!(store.since_reads.load(Ordering::Relaxed), 0);
        for outbox in &outboxes {
            assert_eq!(outbox.last(&gate), Some(4));
        }
    }
}
