//! Scale-out's live half, over Redis pub/sub: the bus between the nodes of a cluster.
//!
//! What travels (JSON, one envelope per Redis message, naming the node it came from):
//! - on `<prefix>events`: each node's committed gate events, in commit order, batched; and a
//!   `gap` when a node's publisher lost some on the way (Redis away);
//! - on `<prefix>notices`: access-change notices (a revoked grant closes sessions everywhere);
//! - on `<prefix>node:<node>`: commands for the gates that node drives, and the acks coming
//!   back to the node a command came from.
//!
//! Redis is never the source of truth. Pub/sub loses what is sent while a subscriber is away,
//! so every loss raises a gap on the local bus the session hub follows, and the sessions refill
//! from the event store by `seq` (no gap, no duplicate: the outboxes drop what they already
//! sent). While Redis is away, a node that follows the store (`follow_store`) reads the
//! events every node committed from it, every [`AWAY_POLL`], one query for all gates, and
//! publishes other nodes' on the view as if they had come over Redis (the outboxes drop what
//! they already sent and fill any jump from the store); without a store it raises a gap
//! every [`AWAY_REFILL`] instead. A gap is also raised whenever a controller changes hands,
//! since its old holder (killed, say) may have committed events it never published. A command sent to another node ends exactly once: its
//! owner's terminal ack, or `failed{failover}` when the controller's lease moves or lapses or
//! the way back is lost, whichever comes first (see [`Peers`]); a command that reaches no
//! subscriber (its node is gone from Redis) is refused at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use deadpool_redis::redis;
use futures::StreamExt;
use gatehouse_actors::cluster::{Ownership, Peers, RemoteCommand};
use gatehouse_actors::gate::{Action, CommandStatus, FailReason, GateEvent, RejectReason};
use gatehouse_actors::ids::{CommandId, ControllerId, GateId, NodeId};
use gatehouse_actors::store::EventStore;
use gatehouse_actors::tree::Fleet;
use gatehouse_actors::tree::bus::{EventSink, LocalBus};
use gatehouse_actors::tree::gate::{Ack, AckSink};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

/// While Redis is away, without a store to follow: how often the sessions re-read other
/// nodes' gates from the store.
pub const AWAY_REFILL: Duration = Duration::from_secs(1);

/// While Redis is away: how often the node reads the events committed since its last read.
pub const AWAY_POLL: Duration = Duration::from_millis(500);

/// Events per read of the store while Redis is away.
const TAIL_PAGE: u32 = 1_000;
/// Reads of the store per poll, at most.
const TAIL_PAGES: usize = 50;

/// How long a failed connection waits before the next attempt (publisher and subscriber).
const RECONNECT: Duration = Duration::from_millis(250);

/// How often commands in flight on other nodes are checked against the leases.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The longest a command waits on another node for its terminal ack (the longest travel
/// timeout a gate may have, plus margin): a bound so that nothing waits for ever.
const COMMAND_BOUND: Duration = Duration::from_secs(15 * 60);

/// The longest a command waits on another node for its first ack: a gate answers within its
/// write timeout (`timed_out` after it), so silence this long means the way back is broken.
const FIRST_ACK_BOUND: Duration = Duration::from_secs(30);

/// Events per message, at most.
const EVENTS_PER_MESSAGE: usize = 256;

/// One Redis message.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Body {
    Events {
        events: Vec<Arc<GateEvent>>,
    },
    Gap,
    Notice {
        notice: serde_json::Value,
    },
    Command {
        gate: GateId,
        id: CommandId,
        action: Action,
    },
    Ack {
        gate: GateId,
        id: CommandId,
        status: CommandStatus,
    },
}

/// Whether the bus reaches Redis (both ways), for `/readyz`.
#[derive(Debug, Default)]
pub struct BusHealth {
    publisher_down: AtomicBool,
    subscriber_down: AtomicBool,
    /// Redis is away and other nodes' events are read from the store.
    following_store: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl BusHealth {
    /// `None` when both ways are up; else what failed last.
    pub fn problem(&self) -> Option<String> {
        let down = self.publisher_down.load(Ordering::Relaxed)
            || self.subscriber_down.load(Ordering::Relaxed);
        down.then(|| {
            lock(&self.last_error)
                .clone()
                .unwrap_or_else(|| "not connected yet".into())
        })
    }

    /// Whether other nodes' events come from the store now (Redis is away).
    pub fn following_store(&self) -> bool {
        self.following_store.load(Ordering::Relaxed)
    }

    fn failed(&self, flag: &AtomicBool, error: &str) {
        flag.store(true, Ordering::Relaxed);
        *lock(&self.last_error) = Some(error.to_string());
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Something to publish, with what to do if it cannot be.
struct Out {
    channel: String,
    payload: Vec<u8>,
    /// Events: a loss must be announced as a gap once Redis is back.
    is_events: bool,
    on_fail: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// A command sent to another node, waiting for its terminal ack.
struct Pending {
    owner: NodeId,
    epoch: u64,
    controller: ControllerId,
    sinks: Vec<AckSink>,
    accepted: bool,
    sent: tokio::time::Instant,
}

struct Inner {
    node: NodeId,
    prefix: String,
    out: mpsc::UnboundedSender<Out>,
    /// Where other nodes' events go (the session hub follows it), and gaps are raised.
    view: LocalBus,
    notices: broadcast::Sender<serde_json::Value>,
    pending: Mutex<HashMap<(GateId, CommandId), Pending>>,
    /// Runs the commands other nodes send here (set once the tree is up).
    fleet: OnceLock<Fleet>,
    ownership: OnceLock<Arc<Ownership>>,
    /// Where other nodes' events are read while Redis is away.
    store: OnceLock<Arc<dyn EventStore>>,
    health: BusHealth,
}

/// The bus between nodes. Cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
    /// Shared with the publisher (a deadpool pool is a handle).
    pool: deadpool_redis::Pool,
}

/// Why the bus could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cluster.redis_url: {0}")]
pub struct RedisBusError(String);

impl RedisBus {
    /// Starts the bus for `node` on the Redis at `url`: other nodes' events go to `view`.
    /// Connecting happens in the background (and again after every loss), so a node starts
    /// while Redis is away and [`BusHealth`] says so. `prefix` names this cluster's channels
    /// (several clusters may share one Redis).
    pub fn start(
        url: &str,
        node: NodeId,
        prefix: &str,
        view: LocalBus,
    ) -> Result<RedisBus, RedisBusError> {
        let client = redis::Client::open(url).map_err(|e| RedisBusError(e.to_string()))?;
        let pool = deadpool_redis::Config::from_url(url)
            .builder()
            .map_err(|e| RedisBusError(e.to_string()))?
            .max_size(4)
            .wait_timeout(Some(Duration::from_secs(2)))
            .create_timeout(Some(Duration::from_secs(2)))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| RedisBusError(e.to_string()))?;
        let (out, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            node,
            prefix: prefix.to_string(),
            out,
            view,
            notices: broadcast::channel(1024).0,
            pending: Mutex::default(),
            fleet: OnceLock::new(),
            ownership: OnceLock::new(),
            store: OnceLock::new(),
            health: BusHealth {
                publisher_down: AtomicBool::new(false),
                subscriber_down: AtomicBool::new(true),
                following_store: AtomicBool::new(false),
                last_error: Mutex::new(None),
            },
        });
        tokio::spawn(publish_loop(pool.clone(), rx, Arc::downgrade(&inner)));
        tokio::spawn(subscribe_loop(client, Arc::downgrade(&inner)));
        tokio::spawn(watch_loop(Arc::downgrade(&inner)));
        Ok(RedisBus { inner, pool })
    }

    /// From now on, commands other nodes send here run on `fleet`, and commands this node
    /// sent elsewhere are watched against `ownership`'s view of the leases.
    pub fn serve(&self, fleet: Fleet, ownership: Arc<Ownership>) {
        let _ = self.inner.fleet.set(fleet);
        self.follow_leases(ownership);
    }

    /// From now on, commands this node sent elsewhere are watched against `ownership`'s view
    /// of the leases (part of [`serve`](Self::serve)).
    pub fn follow_leases(&self, ownership: Arc<Ownership>) {
        let _ = self.inner.ownership.set(ownership);
    }

    /// While Redis is away, other nodes' events are read from `store` (instead of every
    /// session re-reading every gate it follows, once a second).
    pub fn follow_store(&self, store: Arc<dyn EventStore>) {
        let _ = self.inner.store.set(store);
    }

    pub fn health(&self) -> &BusHealth {
        &self.inner.health
    }

    /// Carries this node's committed events (as published on `own`) to the other nodes, and
    /// to `view` here. Runs until `own` closes.
    pub fn forward(&self, own: &LocalBus) -> tokio::task::JoinHandle<()> {
        let mut rx = own.subscribe();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::{RecvError, TryRecvError};
            loop {
                let first = match rx.recv().await {
                    Ok(e) => e,
                    Err(RecvError::Lagged(_)) => {
                        // This forwarder fell behind its own bus: here and elsewhere, refill.
                        inner.view.signal_gap();
                        inner.send(inner.channel("events"), &Body::Gap, true, None);
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let mut batch = vec![first];
                let mut lagged = false;
                while batch.len() < EVENTS_PER_MESSAGE {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(TryRecvError::Lagged(_)) => {
                            lagged = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                for e in &batch {
                    inner.view.publish(e.clone());
                }
                inner.send(
                    inner.channel("events"),
                    &Body::Events { events: batch },
                    true,
                    None,
                );
                if lagged {
                    inner.view.signal_gap();
                    inner.send(inner.channel("events"), &Body::Gap, true, None);
                }
            }
        })
    }

    /// Sends an access-change notice to the other nodes.
    pub fn announce(&self, notice: serde_json::Value) {
        self.inner.send(
            self.inner.channel("notices"),
            &Body::Notice { notice },
            false,
            None,
        );
    }

    /// Sends a notice to the other nodes now, past the publisher's queue: answers once Redis
    /// took it (for a node about to exit, whose queue may never be drained). Bound it with a
    /// timeout: getting a connection waits up to 2 s while Redis is away.
    pub async fn announce_now(&self, notice: serde_json::Value) -> Result<(), String> {
        let payload = self
            .inner
            .encode(&Body::Notice { notice })
            .map_err(|e| e.to_string())?;
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let _reached: i64 = redis::cmd("PUBLISH")
            .arg(self.inner.channel("notices"))
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The notices other nodes announce.
    pub fn notices(&self) -> broadcast::Receiver<serde_json::Value> {
        self.inner.notices.subscribe()
    }
}

impl Inner {
    /// `body` as this node sends it on any channel.
    fn encode(&self, body: &Body) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&EnvelopeRef {
            from: self.node.as_str(),
            body,
        })
    }

    fn channel(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn node_channel(&self, node: &NodeId) -> String {
        format!("{}node:{node}", self.prefix)
    }

    fn send(
        &self,
        channel: String,
        body: &Body,
        is_events: bool,
        on_fail: Option<Box<dyn FnOnce() + Send + Sync>>,
    ) {
        let payload = match self.encode(body) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "a bus message could not be encoded");
                if let Some(f) = on_fail {
                    f();
                }
                return;
            }
        };
        let out = Out {
            channel,
            payload,
            is_events,
            on_fail,
        };
        if let Err(mpsc::error::SendError(out)) = self.out.send(out)
            && let Some(f) = out.on_fail
        {
            f();
        }
    }

    /// One message from Redis.
    fn dispatch(self: &Arc<Self>, payload: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                // Another version's message, or garbage on our channels: never a crash.
                tracing::warn!(error = %e, "a bus message that is not ours was ignored");
                return;
            }
        };
        if envelope.from == self.node.as_str() {
            return; // our own events and notices, already delivered here
        }
        match envelope.body {
            Body::Events { events } => {
                for e in events {
                    self.view.publish(e);
                }
            }
            Body::Gap => self.view.signal_gap(),
            Body::Notice { notice } => {
                let _ = self.notices.send(notice);
            }
            Body::Command { gate, id, action } => self.run_here(envelope.from, gate, id, action),
            Body::Ack { gate, id, status } => self.acked(&gate, id, status),
        }
    }

    /// A command another node routed here: run on this node's gate, acks sent back.
    fn run_here(self: &Arc<Self>, from: String, gate: GateId, id: CommandId, action: Action) {
        let Ok(from) = from.parse::<NodeId>() else {
            return;
        };
        let back = self.node_channel(&from);
        let me = Arc::downgrade(self);
        let sink: AckSink = Arc::new(move |gate: &GateId, ack: Ack| {
            if let Some(me) = me.upgrade() {
                me.send(
                    back.clone(),
                    &Body::Ack {
                        gate: gate.clone(),
                        id: ack.id,
                        status: ack.status,
                    },
                    false,
                    None,
                );
            }
        });
        let here = self
            .fleet
            .get()
            .map(|f| f.command_here(&gate, id, action, Some(sink.clone())));
        if !matches!(here, Some(Ok(()))) {
            // Not (or no longer) driven here: the sender's watch ends it when it sees the
            // lease move; saying so now is quicker.
            sink(
                &gate,
                Ack {
                    id,
                    status: CommandStatus::Failed(FailReason::Failover),
                },
            );
        }
    }

    fn acked(&self, gate: &GateId, id: CommandId, status: CommandStatus) {
        let sinks = {
            let mut pending = lock(&self.pending);
            let key = (gate.clone(), id);
            let Some(p) = pending.get_mut(&key) else {
                return; // already ended (failover), or not ours
            };
            if status.is_terminal() {
                pending.remove(&key).map(|p| p.sinks).unwrap_or_default()
            } else if std::mem::replace(&mut p.accepted, true) {
                return; // a second `accepted` (a retried id): the clients had theirs
            } else {
                p.sinks.clone()
            }
        };
        for sink in sinks {
            sink(gate, Ack { id, status });
        }
    }

    /// Ends the commands matching `which` with `status` (each exactly once).
    fn end_where(&self, status: CommandStatus, which: impl Fn(&Pending) -> bool) {
        let ended: Vec<((GateId, CommandId), Pending)> = {
            let mut pending = lock(&self.pending);
            let keys: Vec<_> = pending
                .iter()
                .filter(|(_, p)| which(p))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| pending.remove(&k).map(|p| (k, p)))
                .collect()
        };
        for ((gate, id), p) in ended {
            tracing::info!(%gate, %id, owner = %p.owner, status = ?status, "a command on another node ended here");
            for sink in p.sinks {
                sink(&gate, Ack { id, status });
            }
        }
    }
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    from: &'a str,
    #[serde(flatten)]
    body: &'a Body,
}

impl Peers for RedisBus {
    fn command(&self, command: RemoteCommand) {
        let RemoteCommand {
            owner,
            epoch,
            controller,
            gate,
            id,
            action,
            reply,
        } = command;
        let inner = &self.inner;
        if inner.health.subscriber_down.load(Ordering::Relaxed) {
            // The answer could not come back: refused before anything was sent.
            if let Some(reply) = reply {
                reply(
                    &gate,
                    Ack {
                        id,
                        status: CommandStatus::Rejected(RejectReason::Offline),
                    },
                );
            }
            return;
        }
        {
            let mut pending = lock(&inner.pending);
            let entry = pending.entry((gate.clone(), id));
            use std::collections::hash_map::Entry;
            match entry {
                Entry::Occupied(mut o) => {
                    // A retry of a command still in flight: it hears the same outcome, and the
                    // owner's gate answers the retry from its own memory.
                    if let Some(reply) = reply {
                        o.get_mut().sinks.push(reply);
                    }
                }
                Entry::Vacant(v) => {
                    v.insert(Pending {
                        owner: owner.clone(),
                        epoch,
                        controller,
                        sinks: reply.into_iter().collect(),
                        accepted: false,
                        sent: tokio::time::Instant::now(),
                    });
                }
            }
        }
        let weak = Arc::downgrade(inner);
        let (g, i) = (gate.clone(), id);
        let on_fail: Box<dyn FnOnce() + Send + Sync> = Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                let key = (g.clone(), i);
                let sinks = lock(&inner.pending).remove(&key).map(|p| p.sinks);
                for sink in sinks.unwrap_or_default() {
                    sink(
                        &g,
                        Ack {
                            id: i,
                            status: CommandStatus::Rejected(RejectReason::Offline),
                        },
                    );
                }
            }
        });
        inner.send(
            inner.node_channel(&owner),
            &Body::Command { gate, id, action },
            false,
            Some(on_fail),
        );
    }
}

/// Sends what is queued, in order, batching what is waiting into one pipeline.
async fn publish_loop(
    pool: deadpool_redis::Pool,
    mut rx: mpsc::UnboundedReceiver<Out>,
    inner: std::sync::Weak<Inner>,
) {
    // Events were dropped while Redis was away: the others must refill once it is back.
    let mut lost_events = false;
    let mut retry_at = tokio::time::Instant::now();
    loop {
        // While down and idle, try now and then, so that readiness (and the gap owed to the
        // other nodes) does not wait for the next message.
        let down = inner
            .upgrade()
            .is_some_and(|me| me.health.publisher_down.load(Ordering::Relaxed));
        let first = if down {
            match tokio::time::timeout(RECONNECT, rx.recv()).await {
                Ok(first) => first,
                Err(_) => {
                    let Some(me) = inner.upgrade() else { return };
                    if publish(&pool, &me, &mut [], lost_events).await.is_ok() {
                        lost_events = false;
                        me.health.publisher_down.store(false, Ordering::Relaxed);
                        tracing::info!("Redis reachable again for publishing");
                    }
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let Some(me) = inner.upgrade() else { return };
        let result = if tokio::time::Instant::now() < retry_at {
            Err("Redis unreachable (waiting before the next attempt)".to_string())
        } else {
            publish(&pool, &me, &mut batch, lost_events).await
        };
        match result {
            Ok(()) => {
                lost_events = false;
                if me.health.publisher_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis reachable again for publishing");
                }
            }
            Err(e) => {
                if !me.health.publisher_down.load(Ordering::Relaxed) {
                    tracing::warn!(error = %e, "publishing to Redis failed; other nodes refill from the store");
                }
                me.health.failed(&me.health.publisher_down, &e);
                retry_at = tokio::time::Instant::now() + RECONNECT;
                for out in batch {
                    lost_events |= out.is_events;
                    if let Some(f) = out.on_fail {
                        f();
                    }
                }
            }
        }
    }
}

async fn publish(
    pool: &deadpool_redis::Pool,
    me: &Inner,
    batch: &mut [Out],
    gap_first: bool,
) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let mut pipe = redis::pipe();
    if gap_first {
        let gap = me.encode(&Body::Gap).map_err(|e| e.to_string())?;
        pipe.cmd("PUBLISH")
            .arg(me.channel("events"))
            .arg(gap)
            .ignore();
    }
    if batch.is_empty() && !gap_first {
        pipe.cmd("PING").ignore();
    }
    for out in batch.iter() {
        pipe.cmd("PUBLISH").arg(&out.channel).arg(&out.payload);
    }
    // How many subscribers each message reached.
    let reached: Vec<i64> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    for (out, reached) in batch.iter_mut().zip(reached) {
        // A command nobody listens for (its node is not subscribed, or gone): refused now
        // rather than left for the lease to lapse.
        if reached == 0
            && let Some(f) = out.on_fail.take()
        {
            f();
        }
    }
    Ok(())
}

/// Follows this cluster's channels; after every loss of the subscription, raises a gap and
/// ends the commands waiting on other nodes (their acks may have been lost).
async fn subscribe_loop(client: redis::Client, inner: std::sync::Weak<Inner>) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        let channels = [
            me.channel("events"),
            me.channel("notices"),
            me.node_channel(&me.node),
        ];
        drop(me);
        let error = match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channels).await {
                Ok(()) => {
                    let Some(me) = inner.upgrade() else { return };
                    if me.health.subscriber_down.swap(false, Ordering::Relaxed) {
                        tracing::info!(node = %me.node, "following the cluster bus on Redis");
                    }
                    // Whatever was published while we were away is in the store; a fleet
                    // change announced meanwhile is read from the store too.
                    me.view.signal_gap();
                    let _ = me.notices.send(serde_json::json!("fleet"));
                    drop(me);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(me) = inner.upgrade() else { return };
                        me.dispatch(msg.get_payload_bytes());
                    }
                    "the subscription to Redis ended".to_string()
                }
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        let Some(me) = inner.upgrade() else { return };
        if !me.health.subscriber_down.load(Ordering::Relaxed) {
            tracing::warn!(node = %me.node, error = %error, "the cluster bus lost Redis; sessions follow other nodes' gates from the store");
            // Once when it goes, not at every attempt to come back: what follows comes from
            // the store (see `watch_loop`).
            me.view.signal_gap();
        }
        me.health.failed(&me.health.subscriber_down, &error);
        // Their acks may have been published while we were not listening.
        me.end_where(CommandStatus::Failed(FailReason::Failover), |_| true);
        drop(me);
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Ends commands whose owner lost their controller's lease (or that waited too long), and
/// while Redis is away follows the store (or, without one, has the sessions refill from it).
async fn watch_loop(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refill = tokio::time::Instant::now();
    let mut owner_changes = 0;
    let mut tail: Option<Tail> = None;
    loop {
        tick.tick().await;
        let Some(me) = inner.upgrade() else { return };
        let now = tokio::time::Instant::now();
        if let Some(ownership) = me.ownership.get() {
            // A controller changed hands: its old holder (killed, say) may have committed
            // events it never published. The sessions read them from the store.
            let changes = ownership.owner_changes();
            if std::mem::replace(&mut owner_changes, changes) != changes {
                me.view.signal_gap();
            }
            me.end_where(CommandStatus::Failed(FailReason::Failover), |p| {
                now >= p.sent
                    + if p.accepted {
                        COMMAND_BOUND
                    } else {
                        FIRST_ACK_BOUND
                    }
                    || ownership.owner_of(&p.controller) != Some((p.owner.clone(), p.epoch))
            });
        }
        let away = me.health.subscriber_down.load(Ordering::Relaxed);
        match (away, me.store.get()) {
            (true, Some(store)) => {
                if now.duration_since(last_refill) >= AWAY_POLL {
                    last_refill = now;
                    follow(&me, store.as_ref(), &mut tail).await;
                }
            }
            (true, None) => {
                if now.duration_since(last_refill) >= AWAY_REFILL {
                    last_refill = now;
                    me.view.signal_gap();
                }
            }
            (false, _) => {
                if tail.take().is_some() {
                    me.health.following_store.store(false, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Following the store while Redis is away: events are read after `floor`, one poll behind
/// the newest read (`cursor`), so that an event committed a little after others with higher
/// ids (several writers commit out of order) is still read; what is read twice is dropped by
/// the outboxes.
struct Tail {
    floor: i64,
    cursor: i64,
}

/// One poll of the store while Redis is away: the first marks where the store's events end
/// and raises a gap (the sessions catch up to there from the store), the next ones publish
/// other nodes' events from there on the view.
async fn follow(me: &Inner, store: &dyn EventStore, tail: &mut Option<Tail>) {
    let Some(t) = tail.as_mut() else {
        match store.newest_id().await {
            Ok(newest) => {
                *tail = Some(Tail {
                    floor: newest,
                    cursor: newest,
                });
                me.view.signal_gap();
                me.health.following_store.store(true, Ordering::Relaxed);
                tracing::info!(
                    "Redis is away: following the other nodes' gates from the event store"
                );
            }
            Err(e) => {
                // Tried again at the next poll. The sessions were told to refill when Redis
                // went; the gap raised once this succeeds covers what is committed meanwhile.
                tracing::debug!(error = %e, "the event store is not answering either");
            }
        }
        return;
    };
    let mut from = t.floor;
    let mut newest = t.cursor;
    for _ in 0..TAIL_PAGES {
        let page = match store.after(from, TAIL_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, "reading the event store while Redis is away");
                return;
            }
        };
        let full = page.len() == TAIL_PAGE as usize;
        for stored in page {
            from = stored.id;
            newest = newest.max(stored.id);
            let mine = me
                .ownership
                .get()
                .is_some_and(|o| o.holds(&stored.event.controller));
            // This node's own events are on the view already.
            if !mine {
                me.view.publish(Arc::new(stored.event));
            }
        }
        if !full {
            break;
        }
    }
    t.floor = t.cursor;
    t.cursor = newest;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_reads_back_as_written() {
        let body = Body::Ack {
            gate: "g-1".parse().unwrap(),
            id: CommandId(uuid::Uuid::nil()),
            status: CommandStatus::Failed(FailReason::Failover),
        };
        let bytes = serde_json::to_vec(&EnvelopeRef {
            from: "node-a",
            body: &body,
        })
        .unwrap();
        let back: Envelope = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.from, "node-a");
        match back.body {
            Body::Ack { gate, status, .. } => {
                assert_eq!(gate.as_str(), "g-1");
                assert_eq!(status, CommandStatus::Failed(FailReason::Failover));
            }
            other => panic!("read back as {other:?}"),
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["t"], "ack");
    }
}
