//! Gate events as published to the rest of the runtime, and the bus port they travel on.
//! The in-process bus is a tokio broadcast channel; the Redis bus (scale-out) implements the
//! same [`EventSink`] later.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::gate::{Cause, EventKind, GateSnapshot};
use crate::ids::{ControllerId, GateId};

/// One event of one gate. `seq` is assigned by the gate's actor, the only writer for that
/// gate, and increases by one per event: clients resume per gate from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateEvent {
    pub gate: GateId,
    pub controller: ControllerId,
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
    pub cause: Cause,
    /// The gate right after the event.
    pub snapshot: GateSnapshot,
}

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
