//! `/api/v1/ws`: live sessions for phones (protocol `gatehouse.v1`, documented in
//! `docs/websocket-protocol.md`).
//!
//! - [`protocol`]: frames in and out, close codes;
//! - [`session`]: the session actor, one per connection, with its reader and writer tasks;
//! - [`outbox`]: the bounded outbound queue with per-gate coalescing;
//! - [`hub`]: the bus → sessions fan-out and access-change routing;
//! - this module: the upgrade (taken by hand, for small buffers), the session supervisor,
//!   and [`Sessions`], the handle the runtime keeps.
//!
//! Supervision: sessions are children of one supervisor actor, OTP's `simple_one_for_one`
//! with temporary children — a session is never restarted (its socket died with it), but a
//! failing one is logged and counted, its connection closed with 1011, and nothing else is
//! touched.

pub mod hub;
pub mod outbox;
pub mod protocol;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gatehouse_actors::fleet::events::GateEvent;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};

use self::hub::Hub;
use self::session::{Session, SessionArgs, SessionMsg};
use crate::routing::{Outcome, Route};
use crate::v1::App;
use crate::v1::changes::AccessChanges;
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

/// The supervisor of every session (OTP `simple_one_for_one`, temporary children).
struct SessionSupervisor;

struct SupervisorState {
    hub: Arc<Hub>,
}

impl Actor for SessionSupervisor {
    type Msg = ();
    type State = SupervisorState;
    type Arguments = Arc<Hub>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        hub: Arc<Hub>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState { hub })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Temporary children: never restarted. A failure is a bug worth a log line; the
        // session's own cleanup (its state's drop) has closed the connection already.
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            state.hub.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(session = %cell.get_id(), %error, "a WebSocket session failed");
        }
        Ok(())
    }
}

/// What the runtime keeps of the WebSocket layer.
#[derive(Clone)]
pub struct Sessions {
    hub: Arc<Hub>,
    supervisor: ActorCell,
    config: Arc<WsConfig>,
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
}

impl Sessions {
    /// Starts the hub on `bus` (committed events) and `changes`, and the session supervisor.
    pub async fn start(
        bus: broadcast::Receiver<Arc<GateEvent>>,
        changes: &AccessChanges,
        config: WsConfig,
    ) -> Result<Self, SpawnErr> {
        let hub = Arc::new(Hub::default());
        tokio::spawn(hub.clone().run(bus, changes.subscribe()));
        let (supervisor, _) = Actor::spawn(None, SessionSupervisor, hub.clone()).await?;
        Ok(Self {
            hub,
            supervisor: supervisor.get_cell(),
            config: Arc::new(config),
        })
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
        }
    }

    /// Closes every session with 4500 (what is queued is written first) and waits up to
    /// `timeout` for them to go.
    pub async fn shutdown(&self, timeout: Duration) {
        self.hub.tell_all(|| SessionMsg::Shutdown);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.hub.open_sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.supervisor.stop(None);
    }

    /// Serves an upgraded connection as a session, a child of the session supervisor.
    async fn open(&self, app: App, ip: IpAddr, socket: session::Socket) -> Result<(), SpawnErr> {
        let args = SessionArgs {
            app,
            hub: self.hub.clone(),
            config: self.config.clone(),
            ip,
            socket,
        };
        Actor::spawn_linked(None, Session, args, self.supervisor.clone()).await?;
        Ok(())
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
        if let Err(e) = sessions.open(app, ip, socket).await {
            tracing::error!(error = %e, "a WebSocket session could not start");
        }
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
