//! The bus node of the tree: committed gate events to whoever follows them (the session hub,
//! the log watcher). The in-process bus is a tokio broadcast channel. In a cluster, the
//! Redis bus (`gatehouse_adapters::redis_bus`) feeds the events of the other nodes' gates
//! into a second local bus that the session hub follows, and raises a gap on it whenever
//! events may have been lost on the way (Redis away, a node's publisher reconnecting): the
//! followers then refill from the event store, so the per-gate `seq` stays the only
//! contract.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::gate::GateEvent;

/// Where gate events go.
pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, event: Arc<GateEvent>);
}

/// How many events a slow local subscriber may fall behind before it starts losing them.
pub const LOCAL_BUS_CAPACITY: usize = 16 * 1024;

/// The in-process bus.
#[derive(Clone)]
pub struct LocalBus {
    tx: broadcast::Sender<Arc<GateEvent>>,
    /// Counts the gaps raised: events that may have been lost before reaching this bus.
    gaps: Arc<watch::Sender<u64>>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::with_capacity(LOCAL_BUS_CAPACITY)
    }
}

impl LocalBus {
    /// A bus on which a subscriber may fall `capacity` events behind (tests use a tiny one to
    /// make subscribers lose events).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
            gaps: Arc::new(watch::channel(0).0),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<GateEvent>> {
        self.tx.subscribe()
    }

    /// Says that events may have been lost before they reached this bus: whoever follows it
    /// must read what it missed from the event store.
    pub fn signal_gap(&self) {
        self.gaps.send_modify(|n| *n += 1);
    }

    /// Follows the gaps raised from now on.
    pub fn gaps(&self) -> watch::Receiver<u64> {
        self.gaps.subscribe()
    }
}

impl EventSink for LocalBus {
    fn publish(&self, event: Arc<GateEvent>) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.tx.send(event);
    }
}
