//! The session supervisor: a permanent child of the root, on the project's supervision
//! toolkit, with one temporary child per WebSocket (OTP's simple_one_for_one).
//!
//! ```text
//! sessions            one_for_one, SESSIONS_INTENSITY (moot: no child is ever restarted)
//! └── session:<n> ×n  temporary: never restarted (its socket died with it); a failure is
//!                     logged and counted, and its connection closed with 1011 by the
//!                     session's own cleanup
//! ```
//!
//! If the supervisor itself dies, its sessions die with it (closed with 1011) and the root
//! restarts it; clients reconnect and resume with `since`, which loses and repeats nothing.
//! The toolkit indexes children by id and by actor, so opening and closing one of 20,000
//! sessions costs O(log n), not a scan.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gatehouse_actors::supervision::{
    Backoff, ChildEvent, ChildSpec, Current, Intensity, Restart, Strategy, Supervisor,
    SupervisorArgs, SupervisorMsg, SupervisorSpec,
};

use super::hub::Hub;

/// Temporary children are never restarted, so this is never reached; it is stated for the
/// toolkit, which asks every supervisor for one.
pub const SESSIONS_INTENSITY: Intensity = Intensity {
    max_restarts: 10,
    within: Duration::from_secs(60),
};

/// The session supervisor's child spec for the root; each instance is published in
/// `current`, where [`super::Sessions`] finds it to start sessions.
pub fn child_spec(hub: Arc<Hub>, current: Current<SupervisorMsg>) -> ChildSpec {
    ChildSpec::tracked("sessions", Restart::Permanent, current, move || {
        let hub = hub.clone();
        let observer = Arc::new(move |event: &ChildEvent| {
            if let ChildEvent::Exited {
                id,
                failed: true,
                reason,
            } = event
            {
                hub.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(session = %id, %reason, "a WebSocket session failed");
            }
        });
        let args = SupervisorArgs {
            spec: SupervisorSpec {
                strategy: Strategy::OneForOne,
                intensity: SESSIONS_INTENSITY,
                backoff: Backoff::IMMEDIATE,
            },
            children: Vec::new(),
            observer: Some(observer),
        };
        (Supervisor, args)
    })
}
