//! The bus node of the tree: committed gate events to whoever follows them (the session hub,
//! the log watcher). The in-process bus is a tokio broadcast channel; the Redis bus
//! (scale-out) implements the same [`EventSink`] port later.

use std::sync::Arc;

use tokio::sync::broadcast;

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
}

impl Default for LocalBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(LOCAL_BUS_CAPACITY).0,
        }
    }
}

impl LocalBus {
    /// A bus on which a subscriber may fall `capacity` events behind (tests use a tiny one to
    /// make subscribers lose events).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<GateEvent>> {
        self.tx.subscribe()
    }
}

impl EventSink for LocalBus {
    fn publish(&self, event: Arc<GateEvent>) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.tx.send(event);
    }
}
