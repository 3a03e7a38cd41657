//! The EventLog writer: durable, group-committed append of gate events and of the audit
//! records of commands.
//!
//! Gate actors hand their events to an [`EventLog`] (a bounded queue: when it is full the
//! sender waits, so memory never grows without bound). The writer actor takes whatever is
//! queued — up to [`MAX_BATCH`] events, waiting at most [`BATCH_WINDOW`] for more once the
//! first arrives — and appends it in one transaction. After each commit it tells every gate in
//! the batch how far it is committed ([`GateMsg::Committed`]), which is when a gate releases
//! the terminal outcomes waiting on those events: an outcome reported to a client is already
//! durable. A transient database error is retried with backoff, forever, with readiness
//! reported as degraded meanwhile; the queue fills, and senders wait.
//!
//! Command audit records share the queue and the commit: the command path hands them over
//! without waiting for the database (so they never delay `accepted`), and the writer retries
//! them like events while the database is away (so none is dropped).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{Mutex, mpsc};

use super::bus::EventSink;
use super::directory::Directory;
use super::gate::GateMsg;
use crate::access::AuditRecord;
use crate::gate::GateEvent;
use crate::ids::GateId;
use crate::stats::Histogram;
use crate::store::EventStore;
use crate::supervision::{ChildSpec, Restart};

/// Events queued for the writer before senders have to wait.
pub const QUEUE_CAPACITY: usize = 65_536;
/// At most this many events per transaction.
pub const MAX_BATCH: usize = 1_000;
/// Once an event is in hand, wait at most this long for more to share its commit.
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Retry delays after a failed commit: from the first to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The writer's figures and health, shared with whoever reports them.
#[derive(Default)]
pub struct EventLogStats {
    /// Events committed.
    pub committed: AtomicU64,
    /// Command audit records committed.
    pub audited: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
    /// Time from an event's enqueueing to its commit.
    pub commit_latency: Histogram,
    /// Time of each append transaction (successful ones).
    pub transaction_time: Histogram,
    /// False while commits are failing.
    healthy: AtomicBool,
    /// Why the latest commit failed, while commits are failing.
    last_error: std::sync::Mutex<Option<String>>,
}

impl EventLogStats {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The latest commit's error while commits are failing (`None` once one succeeds).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

enum Item {
    Event(Arc<GateEvent>),
    Audit(AuditRecord),
    /// Answered once everything queued before it has been through a commit.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

struct Entry {
    item: Item,
    queued: tokio::time::Instant,
}

/// The sending side, cloned into every gate actor.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<Entry>,
    stats: Arc<EventLogStats>,
}

impl EventLog {
    /// Queues an event; waits while the queue is full. Fails only when the writer is gone.
    pub async fn append(&self, event: Arc<GateEvent>) -> Result<(), Arc<GateEvent>> {
        let entry = Entry {
            item: Item::Event(event.clone()),
            queued: tokio::time::Instant::now(),
        };
        self.tx.send(entry).await.map_err(|_| event)
    }

    /// Queues an audit record without waiting: when the queue is full, a task waits for room
    /// instead of the caller. Only a writer that is gone (the process is stopping) loses the
    /// record, and that is logged with the record.
    pub fn audit(&self, record: AuditRecord) {
        let entry = Entry {
            item: Item::Audit(record),
            queued: tokio::time::Instant::now(),
        };
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(entry)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = tx.send(entry).await {
                        lost(e.0);
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(entry)) => lost(entry),
        }
    }

    /// Resolves once everything queued before this call has been through a commit (stored, or
    /// refused by the lease fence): a gate that stops waits on it to tell its last outcomes.
    /// Fails when the writer is gone.
    pub async fn barrier(&self) -> Result<(), ()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let entry = Entry {
            item: Item::Barrier(tx),
            queued: tokio::time::Instant::now(),
        };
        self.tx.send(entry).await.map_err(|_| ())?;
        rx.await.map_err(|_| ())
    }

    pub fn stats(&self) -> &Arc<EventLogStats> {
        &self.stats
    }

    /// Entries waiting to be written.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// How many entries the queue holds before senders wait.
    pub fn queue_capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

fn lost(entry: Entry) {
    if let Item::Audit(record) = entry.item {
        tracing::error!(
            ?record,
            "the event log writer is gone; an audit record was not written"
        );
    }
}

/// What the writer actor needs; survives its restarts (the queue is not lost with it).
#[derive(Clone)]
pub struct WriterArgs {
    store: Arc<dyn EventStore>,
    rx: Arc<Mutex<mpsc::Receiver<Entry>>>,
    stats: Arc<EventLogStats>,
    directory: Arc<Directory>,
    /// Committed events are published here, in commit order.
    bus: Arc<dyn EventSink>,
    /// In a cluster: the leases every commit proves (events of controllers no longer held
    /// are refused by the store, never published, and their subtrees stop).
    fence: Option<Arc<crate::cluster::Ownership>>,
}

impl WriterArgs {
    /// Commits fenced by `ownership`'s leases.
    pub fn fenced(mut self, ownership: Arc<crate::cluster::Ownership>) -> WriterArgs {
        self.fence = Some(ownership);
        self
    }
}

/// Creates the queue of `capacity` entries ([`QUEUE_CAPACITY`] unless configured): the handle
/// for senders and the arguments for the writer actor.
pub fn channel(
    store: Arc<dyn EventStore>,
    directory: Arc<Directory>,
    bus: Arc<dyn EventSink>,
    capacity: usize,
) -> (EventLog, WriterArgs) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(EventLogStats::default());
    stats.healthy.store(true, Ordering::Relaxed);
    (
        EventLog {
            tx,
            stats: stats.clone(),
        },
        WriterArgs {
            store,
            rx: Arc::new(Mutex::new(rx)),
            stats,
            directory,
            bus,
            fence: None,
        },
    )
}

/// The writer's child spec: permanent, and the root's first child, so that it starts before
/// any gate and stops after every gate (nothing they log is left unwritten). Its queue lives
/// in `args`, so a restarted writer carries on with what was waiting.
pub fn child_spec(args: WriterArgs) -> ChildSpec {
    ChildSpec::actor("eventlog", Restart::Permanent, None, move || {
        (EventLogWriter, args.clone())
    })
}

pub struct EventLogWriter;

pub enum WriterMsg {
    /// Internal: take the next batch.
    Drain,
}

impl Actor for EventLogWriter {
    type Msg = WriterMsg;
    type State = WriterArgs;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WriterMsg>,
        args: WriterArgs,
    ) -> Result<WriterArgs, ActorProcessingErr> {
        myself.send_message(WriterMsg::Drain)?;
        Ok(args)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WriterMsg>,
        state: &mut WriterArgs,
    ) -> Result<(), ActorProcessingErr> {
        // The gates stop before the writer: what they queued is written before it goes.
        let mut rest = Vec::new();
        {
            let mut rx = state.rx.lock().await;
            while let Ok(e) = rx.try_recv() {
                rest.push(e);
            }
        }
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(MAX_BATCH));
            commit(state, rest).await;
            rest = tail;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WriterMsg>,
        WriterMsg::Drain: WriterMsg,
        state: &mut WriterArgs,
    ) -> Result<(), ActorProcessingErr> {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        {
            let mut rx = state.rx.lock().await;
            // Wait for the first event; a stop request interrupts this between messages only,
            // so wake up now and then to let it in.
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(first)) => batch.push(first),
                Ok(None) => return Ok(()), // every sender is gone: nothing more will come
                Err(_) => {
                    myself.send_message(WriterMsg::Drain)?;
                    return Ok(());
                }
            }
            let window = tokio::time::Instant::now() + BATCH_WINDOW;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                let got = rx.recv_many(&mut batch, room).now_or_wait(window).await;
                if got == 0 {
                    break;
                }
            }
        }
        // Timed from the batch in hand, not from the idle wait for its first entry.
        let timing = crate::telemetry::handling(crate::telemetry::Kind::EventLog);
        commit(state, batch).await;
        drop(timing);
        myself.send_message(WriterMsg::Drain)?;
        Ok(())
    }
}

/// Appends one batch, retrying transient failures until it is in, then tells the gates.
async fn commit(state: &WriterArgs, batch: Vec<Entry>) {
    let mut events: Vec<Arc<GateEvent>> = Vec::with_capacity(batch.len());
    let mut audits: Vec<AuditRecord> = Vec::new();
    let mut barriers = Vec::new();
    // When each event and audit record was queued (barriers are not written).
    let mut queued = Vec::with_capacity(batch.len());
    for Entry { item, queued: at } in batch {
        match item {
            Item::Event(event) => events.push(event),
            Item::Audit(record) => audits.push(record),
            Item::Barrier(tx) => {
                barriers.push(tx);
                continue;
            }
        }
        queued.push(at);
    }
    if queued.is_empty() {
        for b in barriers {
            let _ = b.send(());
        }
        return;
    }
    let mut delay = RETRY_FIRST;
    loop {
        let started = tokio::time::Instant::now();
        let appended = match &state.fence {
            None => state
                .store
                .append_batch(events.clone(), audits.clone())
                .await
                .map(|()| crate::store::Refused::default()),
            Some(ownership) => {
                state
                    .store
                    .append_fenced(
                        events.clone(),
                        audits.clone(),
                        ownership.fence(events.iter().map(|e| &e.controller)),
                    )
                    .await
            }
        };
        match appended {
            Ok(refused) => {
                if let (Some(ownership), false) = (&state.fence, refused.is_empty()) {
                    // Another node holds these now (or the gate moved to another controller):
                    // what this one saw of them is not history.
                    let before = events.len();
                    events.retain(|e| !refused.refuses(e));
                    tracing::warn!(
                        controllers = ?refused.controllers,
                        moved_gates = ?refused.gates,
                        dropped = before - events.len(),
                        "events refused by the fence; stopping the controllers whose lease \
                         is gone (a moved gate stops when this node applies the change)"
                    );
                    if !refused.controllers.is_empty() {
                        ownership.refused(&refused.controllers);
                    }
                    ownership.gates_moved(&refused.gates);
                }
                state.stats.transaction_time.record(started.elapsed());
                if let Some(i) = crate::telemetry::get() {
                    i.eventlog_commit.record(started.elapsed().as_secs_f64());
                    i.eventlog_batch.record(queued.len() as f64);
                }
                break;
            }
            Err(e) => {
                state.stats.failures.fetch_add(1, Ordering::Relaxed);
                state.stats.set_error(Some(e.to_string()));
                if let Some(i) = crate::telemetry::get() {
                    i.eventlog_failures.increment(1);
                }
                if state.stats.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!("event log commit failed, retrying: {e}");
                }
                if !e.is_transient() {
                    // A batch the database refuses outright would block everything behind
                    // it forever; this is a bug, not an outage. Keep retrying but shout.
                    tracing::error!(events = events.len(), "event batch refused: {e}");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
    if !state.stats.healthy.swap(true, Ordering::Relaxed) {
        state.stats.set_error(None);
        tracing::info!("event log commits again");
    }
    let now = tokio::time::Instant::now();
    for at in queued {
        state.stats.commit_latency.record(now - at);
    }
    state
        .stats
        .committed
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    state
        .stats
        .audited
        .fetch_add(audits.len() as u64, Ordering::Relaxed);
    state.stats.batches.fetch_add(1, Ordering::Relaxed);

    let mut heads: HashMap<&GateId, u64> = HashMap::new();
    for e in &events {
        let seq = heads.entry(&e.gate).or_default();
        *seq = (*seq).max(e.seq);
        state.bus.publish(e.clone());
    }
    for (gate, seq) in heads {
        if let Some(actor) = state.directory.gate(gate) {
            let _ = actor.send_message(GateMsg::Committed { seq }.into());
        }
    }
    for b in barriers {
        let _ = b.send(());
    }
}

/// `recv_many` until a deadline: whatever arrived by then (possibly nothing).
trait NowOrWait {
    async fn now_or_wait(self, deadline: tokio::time::Instant) -> usize;
}

impl<F: std::future::Future<Output = usize>> NowOrWait for F {
    async fn now_or_wait(self, deadline: tokio::time::Instant) -> usize {
        tokio::time::timeout_at(deadline, self).await.unwrap_or(0)
    }
}
