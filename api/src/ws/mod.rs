//! `/api/v1/ws`: live sessions for phones (protocol `gatehouse.v1`, documented in
//! `docs/websocket-protocol.md`).
//!
//! - [`protocol`]: frames in and out, close codes;
//! - [`msg`]: the messages a session actor accepts;
//! - [`session`]: the session actor, one per connection, split by message family;
//! - [`outbox`]: the bounded outbound queue with per-gate coalescing;
//! - [`hub`]: the bus → sessions fan-out and access-change routing (a child of the root);
//! - [`supervisor`]: the session supervisor (a child of the root; sessions are its temporary
//!   children);
//! - this module: the upgrade (taken by hand, for small buffers) and [`Sessions`], the handle
//!   the HTTP layer keeps, with [`SessionTree`], the two child specs the root starts.

pub mod hub;
pub mod msg;
pub mod outbox;
pub mod protocol;
pub mod session;
pub mod supervisor;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_actors::supervision::{ChildSpec, Current, SupervisorMsg};
use gatehouse_actors::tree::bus::LocalBus;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};

use self::hub::{Hub, HubArgs};
use self::msg::SessionMsg;
use self::session::{Session, SessionArgs};
use crate::app::App;
use crate::changes::AccessChanges;
use crate::routing::{Outcome, Route};
use crate::{ApiError, client_ip};

/// Session limits and timings.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// The first message must be `auth` within this.
    pub auth_timeout: Duration,
    /// Closed with 4408 when nothing arrives for this long (clients ping every 25 s).
    pub idle_timeout: Duration,
    /// A write that makes no progress for this long closes with 4509.
    pub write_stall: Duration,
    /// The largest frame and message a client may send (4413 beyond).
    pub max_frame_bytes: usize,
    /// tungstenite's read buffer per connection (its default is 128 KiB).
    pub read_buffer_bytes: usize,
    /// Client frames per second, with a burst (4429 beyond).
    pub frames_per_second: u32,
    pub frame_burst: u32,
    /// Gates one session may follow.
    pub max_subscriptions: usize,
    /// Events replayed per gate on resume, and per subscribe request in all.
    pub max_replay_per_gate: u64,
    pub max_replay: u64,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_stall: Duration::from_secs(10),
            max_frame_bytes: 16 * 1024,
            read_buffer_bytes: 4 * 1024,
            frames_per_second: 20,
            frame_burst: 40,
            max_subscriptions: 5_000,
            max_replay_per_gate: 500,
            max_replay: 2_000,
        }
    }
}

/// What the runtime keeps of the WebSocket layer.
#[derive(Clone)]
pub struct Sessions {
    hub: Arc<Hub>,
    /// The session supervisor's running instance (the root restarts it if it fails).
    supervisor: Current<SupervisorMsg>,
    config: Arc<WsConfig>,
    /// Numbers the sessions, for their child ids.
    next: Arc<AtomicU64>,
}

/// The WebSocket layer's nodes of the supervision tree, for the root to start: the hub
/// (after the event log) and the session supervisor (last).
pub struct SessionTree {
    pub hub: ChildSpec,
    pub sessions: ChildSpec,
}

/// Session counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    pub open: usize,
    pub opened: u64,
    pub closed: u64,
    pub too_slow: u64,
    pub failed: u64,
    pub events: u64,
    pub deliveries: u64,
    pub coalesced: u64,
    pub hub_lagged: u64,
    /// After losses: reads of the subscribed gates' heads (one per loss, for all sessions),
    /// sessions that finished checking, and gates a session refilled from the store itself.
    pub gap_head_reads: u64,
    pub gap_checks: u64,
    pub gap_refills: u64,
    /// Times the hub actor was restarted after a failure.
    pub hub_restarts: u64,
}

impl Sessions {
    /// The hub: subscriptions, and the session figures.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The handle on the session layer, and the child specs of its hub (following `bus`,
    /// committed events, and `changes`) and of its supervisor. Nothing runs until the root
    /// starts the specs.
    pub fn new(bus: LocalBus, changes: &AccessChanges, config: WsConfig) -> (Self, SessionTree) {
        let hub = Arc::new(Hub::default());
        let supervisor = Current::default();
        let tree = SessionTree {
            hub: hub::child_spec(HubArgs {
                hub: hub.clone(),
                bus,
                changes: changes.clone(),
            }),
            sessions: supervisor::child_spec(hub.clone(), supervisor.clone()),
        };
        let sessions = Self {
            hub,
            supervisor,
            config: Arc::new(config),
            next: Arc::default(),
        };
        (sessions, tree)
    }

    pub fn stats(&self) -> SessionStats {
        let s = &self.hub.stats;
        SessionStats {
            open: self.hub.open_sessions(),
            opened: s.opened.load(Ordering::Relaxed),
            closed: s.closed.load(Ordering::Relaxed),
            too_slow: s.too_slow.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            events: s.events.load(Ordering::Relaxed),
            deliveries: s.deliveries.load(Ordering::Relaxed),
            coalesced: s.coalesced.load(Ordering::Relaxed),
            hub_lagged: s.lagged.load(Ordering::Relaxed),
            gap_head_reads: s.gap_head_reads.load(Ordering::Relaxed),
            gap_checks: s.gap_checks.load(Ordering::Relaxed),
            gap_refills: s.gap_refills.load(Ordering::Relaxed),
            hub_restarts: s.starts.load(Ordering::Relaxed).saturating_sub(1),
        }
    }

    /// Closes every session with 4500 (what is queued is written first) and waits up to
    /// `timeout` for them to go. (The supervisor itself stops with the root.)
    pub async fn shutdown(&self, timeout: Duration) {
        self.hub.tell_all(|| SessionMsg::Shutdown);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.hub.open_sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Serves an upgraded connection as a session, a temporary child of the session
    /// supervisor. Without a supervisor (it is being restarted) the client is told to try
    /// again (1013).
    async fn open(&self, app: App, ip: IpAddr, mut socket: session::Socket) {
        let Some(supervisor) = self.supervisor.get() else {
            let _ = socket
                .close(Some(CloseFrame {
                    code: CloseCode::Again,
                    reason: "the session supervisor is restarting; try again".into(),
                }))
                .await;
            return;
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let args = SessionArgs {
            app,
            hub: self.hub.clone(),
            config: self.config.clone(),
            ip,
            socket,
        };
        let child = ChildSpec::once(format!("session:{n}"), Session, args);
        match ractor::call!(supervisor, SupervisorMsg::StartChild, child) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "a WebSocket session could not start"),
            Err(e) => tracing::error!(error = %e, "the session supervisor did not answer"),
        }
    }

    fn socket_config(&self) -> WebSocketConfig {
        let max = self.config.max_frame_bytes;
        WebSocketConfig::default()
            .read_buffer_size(self.config.read_buffer_bytes)
            // Frames go out as they are written; the outbox is the queue.
            .write_buffer_size(0)
            .max_write_buffer_size(256 * 1024)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

fn bad_upgrade(code: &'static str, message: &'static str) -> ApiError {
    ApiError::bad_request(code, message)
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "websocket",
    operation_id = "websocket",
    responses(
        (status = 101, description = "Switching to the gatehouse.v1 WebSocket protocol (docs/websocket-protocol.md); the first frame must be `auth`"),
        (status = 400, description = "Not a WebSocket upgrade, or the gatehouse.v1 subprotocol was not offered"),
    ),
)]
async fn upgrade(
    app: App,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    ip: IpAddr,
) -> Outcome {
    if !lists(&headers, header::UPGRADE, "websocket")
        || !lists(&headers, header::CONNECTION, "upgrade")
    {
        return Err(bad_upgrade(
            "websocket_upgrade_required",
            "this endpoint speaks WebSocket only (Upgrade: websocket)",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err(bad_upgrade(
            "websocket_version",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    if !lists(
        &headers,
        header::SEC_WEBSOCKET_PROTOCOL,
        protocol::SUBPROTOCOL,
    ) {
        return Err(bad_upgrade(
            "subprotocol_required",
            "offer the gatehouse.v1 subprotocol (Sec-WebSocket-Protocol: gatehouse.v1)",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad_upgrade(
            "websocket_key_missing",
            "Sec-WebSocket-Key is missing",
        ));
    };
    let Some(on_upgrade) = on_upgrade else {
        return Err(bad_upgrade(
            "websocket_upgrade_unavailable",
            "this connection cannot be upgraded (HTTP/2 is not supported for WebSocket)",
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    let sessions = app.sessions.clone();
    let config = sessions.socket_config();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "a WebSocket upgrade did not complete");
                return;
            }
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        sessions.open(app, ip, socket).await;
    });
    let mut response = warp::reply::Reply::into_response(StatusCode::SWITCHING_PROTOCOLS);
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol::SUBPROTOCOL),
    );
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(ApiError::internal)?,
    );
    Ok(response)
}

pub fn routes(app: &App) -> Vec<Route> {
    let app = app.clone();
    vec![Route::new::<__path_upgrade, _>(move |_p| {
        let app = app.clone();
        warp::any()
            .map(move || app.clone())
            .and(warp::header::headers_cloned())
            .and(warp::ext::optional::<OnUpgrade>())
            .and(client_ip())
            .then(upgrade)
    })]
}
