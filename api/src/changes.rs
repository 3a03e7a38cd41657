//! Changes to who may do what, announced to the live WebSocket sessions so that a revoked
//! grant, a changed role, a disabled account or a revoked API key takes effect on sessions
//! that are already open (the REST layer reads access fresh on every request and needs no
//! notice). In-process for one node; a multi-node deployment carries the same notices over
//! the Redis bus.

use gatehouse_actors::access::UserId;
use tokio::sync::broadcast;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessChange {
    /// The user's role, grants, enabled flag or existence changed.
    User(UserId),
    /// The API key was revoked.
    ApiKey(uuid::Uuid),
    /// The fleet changed: gates may have been removed or moved to another site.
    Fleet,
}

/// Lost notices are not silent: a receiver that lagged behind re-checks every session.
const CAPACITY: usize = 1024;

/// The notice board. Cheap to clone.
#[derive(Clone)]
pub struct AccessChanges {
    tx: broadcast::Sender<AccessChange>,
}

impl Default for AccessChanges {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl AccessChanges {
    /// Announces a change; call it after the change is committed.
    pub fn announce(&self, change: AccessChange) {
        // Nobody listening (no sessions yet) is fine.
        let _ = self.tx.send(change);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AccessChange> {
        self.tx.subscribe()
    }
}
