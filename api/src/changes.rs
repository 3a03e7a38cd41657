//! Changes to who may do what, announced to the live WebSocket sessions so that a revoked
//! grant, a changed role, a disabled account or a revoked API key takes effect on sessions
//! that are already open (the REST layer reads access fresh on every request and needs no
//! notice). In a cluster the runtime carries the notices announced here to the other nodes
//! over the Redis bus ([`AccessChanges::announced`]) and hands theirs in with
//! [`AccessChanges::deliver`], so a revoked grant closes sessions on every node.

use gatehouse_actors::access::UserId;
use tokio::sync::broadcast;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// Every change, from this node or another (the session hub follows it).
    tx: broadcast::Sender<AccessChange>,
    /// Only those announced on this node (carried to the other nodes of a cluster).
    local: broadcast::Sender<AccessChange>,
}

impl Default for AccessChanges {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            local: broadcast::channel(CAPACITY).0,
        }
    }
}

impl AccessChanges {
    /// Announces a change made on this node; call it after the change is committed.
    pub fn announce(&self, change: AccessChange) {
        // Nobody listening (no sessions yet) is fine.
        let _ = self.tx.send(change);
        let _ = self.local.send(change);
    }

    /// Hands in a change another node announced.
    pub fn deliver(&self, change: AccessChange) {
        let _ = self.tx.send(change);
    }

    /// Every change, wherever it was announced.
    pub fn subscribe(&self) -> broadcast::Receiver<AccessChange> {
        self.tx.subscribe()
    }

    /// The changes announced on this node from now on.
    pub fn announced(&self) -> broadcast::Receiver<AccessChange> {
        self.local.subscribe()
    }
}
