//! The root of the supervision tree. The wiring crate (`runtime/src/boot.rs`) hands it the
//! child specs of every node, and this is the tree it builds, in start order:
//!
//! ```text
//! Root supervisor              one_for_one, ROOT_INTENSITY, ROOT_BACKOFF; escalation ends
//! │                            the process (non-zero exit; its manager restarts it)
//! ├── eventlog                 permanent   tree/eventlog.rs: group-committed events and audit
//! ├── hub                      permanent   api/src/ws/hub.rs: committed events → sessions
//! ├── fleet                    permanent   tree/fleet.rs: one_for_one, FLEET_INTENSITY,
//! │   │                                    CONTROLLER_BACKOFF
//! │   └── controller:<id> ×n   permanent   tree/controller.rs: one_for_one,
//! │       │                                CONTROLLER_INTENSITY, LINK_BACKOFF
//! │       ├── gate:<id> ×m     permanent   tree/gate.rs (started before the link)
//! │       └── link             permanent   tree/link.rs: crashes on transport failure
//! └── sessions                 permanent   api/src/ws/supervisor.rs: one_for_one,
//!     │                                    SESSIONS_INTENSITY, no backoff
//!     └── session:<n> ×n       temporary   api/src/ws/session/: one per WebSocket
//! ```
//!
//! Why one_for_one at the root: every dependency between the root's children goes through a
//! handle that outlives the child (the event log's queue, the bus, the directory, the
//! fleet's records), so a restarted child finds its neighbours as they were and nothing else
//! has to restart with it. A restarted hub tells every session to refill from the event
//! store; a restarted fleet supervisor starts every controller the fleet handle knows.
//!
//! Shutdown runs in reverse: sessions (already told 4500 by the HTTP layer), the fleet, the
//! hub, and the event log writer last, which writes what the gates queued before it goes.

use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorRef, SpawnErr};

use crate::supervision::{
    Backoff, ChildSpec, Intensity, Strategy, Supervisor, SupervisorArgs, SupervisorMsg,
    SupervisorSpec,
};

/// The root restarts its children at most this often; one more and the process ends.
pub const ROOT_INTENSITY: Intensity = Intensity {
    max_restarts: 5,
    within: Duration::from_secs(60),
};

/// How the root waits before restarting a child: soon, since each of them is local.
pub const ROOT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
    factor: 2.0,
    jitter: 0.0,
    reset_after: Duration::from_secs(60),
};

/// The root's children, one field per node, in start order. The optional ones are absent in
/// trees that do not need them (tools and tests without a store or without an API).
pub struct RootChildren {
    pub eventlog: Option<ChildSpec>,
    pub hub: Option<ChildSpec>,
    pub fleet: ChildSpec,
    /// In a cluster: which controllers this node drives (after the fleet, so that it stops
    /// first and hands its controllers over while the fleet and the event log still run).
    pub keeper: Option<ChildSpec>,
    pub sessions: Option<ChildSpec>,
    /// Maintenance plans (needs a store).
    pub scheduler: Option<ChildSpec>,
    /// Notifications (needs a store).
    pub notifier: Option<ChildSpec>,
}

/// A running tree.
pub struct Root {
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Resolves when the root has stopped: after a shutdown, or after an escalation that
    /// reached it.
    pub stopped: JoinHandle<()>,
}

impl Root {
    /// Starts the root and its children in order; fails if any child fails to start.
    pub async fn start(children: RootChildren) -> Result<Root, SpawnErr> {
        let RootChildren {
            eventlog,
            hub,
            fleet,
            keeper,
            sessions,
            scheduler,
            notifier,
        } = children;
        let children = [
            eventlog,
            hub,
            Some(fleet),
            keeper,
            sessions,
            scheduler,
            notifier,
        ]
        .into_iter()
        .flatten()
        .collect();
        let args = SupervisorArgs {
            spec: SupervisorSpec {
                strategy: Strategy::OneForOne,
                intensity: ROOT_INTENSITY,
                backoff: ROOT_BACKOFF,
            },
            children,
            observer: None,
        };
        let (supervisor, stopped) = Actor::spawn(None, Supervisor, args).await?;
        Ok(Root {
            supervisor,
            stopped,
        })
    }
}

/// Stops `target` (children in reverse start order), killing it if it takes longer than
/// `timeout`.
pub async fn stop(target: &ActorRef<SupervisorMsg>, what: &str, timeout: Duration) {
    if target
        .stop_and_wait(Some("shutdown".into()), Some(timeout))
        .await
        .is_err()
    {
        tracing::warn!("the {what} did not stop within {timeout:?}; killing it");
        target.kill();
    }
}
