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
    /// Times the hub fell behind the bus (each followed by a resync of every session).
    pub lagged: AtomicU64,
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

    /// Forgets every gate's newest event (after a restart, they may be stale): subscribers
    /// read the gate's committed state instead.
    fn forget_latest(&self) {
        let slots: Vec<_> = lock(&self.gates).values().cloned().collect();
        for slot in slots {
            lock(&slot).latest = None;
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
            state.hub.forget_latest();
            state.hub.tell_all(|| SessionMsg::Resync);
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
        self.hub.forget_latest();
        self.hub.tell_all(|| SessionMsg::Resync);
    }

    fn lagged(&self, missed: u64) {
        self.hub.stats.lagged.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            missed,
            "the session hub fell behind the event bus; sessions refill from the event store"
        );
        self.hub.tell_all(|| SessionMsg::Resync);
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
