//! One session actor per WebSocket connection: identity, subscriptions, the outbound queue.
//!
//! Three tasks serve a connection: the actor (all decisions, one message at a time), a reader
//! (frames → messages to the actor, with the idle timeout and the per-connection frame rate
//! limit) and a writer ([`Outbox::write`]). Everything that reaches the client goes through
//! the actor and then the outbox, so the order the actor decides is the order on the wire:
//! snapshot, then replay, then live events, with acks in between.
//!
//! The actor's work is split by message family: [`reader`] (the reader task), [`auth`]
//! (identity, expiry, access and fleet re-checks), [`subscribe`] (snapshots, replay, gap
//! fills, resync) and [`command`]. Its messages are in `ws/msg.rs`.
//!
//! Per gate, the actor remembers the last seq it queued. A live event at or below it is a
//! duplicate and dropped; one above `last + 1` means events went missing on the way (the hub
//! fell behind the bus) and the gap is filled from the event store first.

mod auth;
mod command;
mod reader;
mod subscribe;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use gatehouse_actors::access::UserId;
use gatehouse_actors::ids::{GateId, SiteId};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;

use super::WsConfig;
use super::hub::Hub;
use super::msg::{Inbound, SessionMsg};
use super::outbox::{Outbox, WriterEnd};
use super::protocol::{self, ClientMsg, close};
use crate::app::App;
use crate::principal::Caller;
use crate::{ApiError, wire};

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

pub struct SessionArgs {
    pub app: App,
    pub hub: Arc<Hub>,
    pub config: Arc<WsConfig>,
    pub ip: IpAddr,
    pub socket: Socket,
}

/// How to check the caller again when its access changes.
enum Credential {
    User(UserId),
    /// The API key's digest.
    Key(String),
}

struct Authed {
    caller: Caller,
    credential: Credential,
}

struct Sub {
    site: SiteId,
}

pub struct SessionState {
    app: App,
    hub: Arc<Hub>,
    config: Arc<WsConfig>,
    ip: IpAddr,
    me: ActorRef<SessionMsg>,
    outbox: Arc<Outbox>,
    reader: JoinHandle<()>,
    auth: Option<Authed>,
    subs: HashMap<GateId, Sub>,
    deadline: Option<JoinHandle<Result<(), ractor::MessagingErr<SessionMsg>>>>,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        // Runs however the actor ends, a panic included.
        self.hub.deregister(self.me.get_id(), self.subs.keys());
        // The reader may still be draining towards the client's close; give it a moment.
        let reader = std::mem::replace(&mut self.reader, tokio::spawn(async {}));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut reader = reader;
                if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
                    reader.abort();
                }
            });
        } else {
            reader.abort();
        }
        if let Some(d) = self.deadline.take() {
            d.abort();
        }
        self.outbox.close(1011, "internal error", false);
    }
}

pub struct Session;

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let (sink, stream) = args.socket.split();
        let outbox = Arc::new(Outbox::new(myself.clone()));
        let stall = args.config.write_stall;
        {
            let outbox = outbox.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                outbox
                    .write(sink, stall, |end| {
                        let _ = me.send_message(SessionMsg::WriterDone(end));
                    })
                    .await;
            });
        }
        let reader = tokio::spawn(reader::read(stream, myself.clone(), args.config.clone()));
        args.hub.register(&myself);
        let deadline = myself.send_after(args.config.auth_timeout, || SessionMsg::Deadline);
        Ok(SessionState {
            app: args.app,
            hub: args.hub,
            config: args.config,
            ip: args.ip,
            me: myself,
            outbox,
            reader,
            auth: None,
            subs: HashMap::new(),
            deadline: Some(deadline),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        let _timing =
            gatehouse_actors::telemetry::handling(gatehouse_actors::telemetry::Kind::Session);
        match msg {
            SessionMsg::WriterDone(end) => {
                if end == WriterEnd::Stalled {
                    state
                        .hub
                        .stats
                        .too_slow
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                myself.stop(None);
            }
            // Once closing, only the writer's end matters.
            _ if state.outbox.is_closing() => {}
            SessionMsg::Inbound(inbound) => state.inbound(inbound).await,
            SessionMsg::Fill(gate) => {
                if let Some(last) = state.outbox.last(&gate) {
                    state.release(&gate, last).await;
                }
            }
            SessionMsg::Ack { gate, ack } => {
                let (status, reason) = wire::status(ack.status);
                let frame = protocol::ack(&ack.id.to_string(), gate.as_str(), status, reason);
                state.send(frame);
            }
            SessionMsg::Resync(heads) => {
                let known = match &heads {
                    Some(h) => h.read(state.app.events.as_ref(), &state.hub).await,
                    None => None,
                };
                let gates: Vec<GateId> = state.subs.keys().cloned().collect();
                for gate in gates {
                    // Everything up to the head read after the loss was sent: nothing lost.
                    let at_head = known
                        .and_then(|k| k.get(&gate))
                        .zip(state.outbox.last(&gate))
                        .is_some_and(|(&head, last)| head <= last);
                    if !at_head {
                        state.hub.stats.gap_refills.fetch_add(1, Ordering::Relaxed);
                        state.resync(&gate).await;
                    }
                }
                state.hub.stats.gap_checks.fetch_add(1, Ordering::Relaxed);
            }
            SessionMsg::AccessChanged => state.recheck().await,
            SessionMsg::FleetChanged => state.refleet(),
            SessionMsg::Deadline => state.deadline(),
            SessionMsg::Shutdown => {
                state.outbox.close(
                    close::SHUTTING_DOWN,
                    "server shutting down; resume elsewhere",
                    true,
                );
            }
        }
        Ok(())
    }
}

/// How long a closing connection is kept for the client's close answer.
const LINGER: Duration = Duration::from_secs(2);

fn api_error(id: Option<&str>, e: &ApiError) -> String {
    let details = match &e.details {
        Value::Object(m) if m.is_empty() => None,
        d => Some(d.clone()),
    };
    protocol::error(id, e.code, &e.message, details)
}

impl SessionState {
    /// Queues a frame; a client that let [`Outbox::HARD`] frames pile up is cut off.
    fn send(&mut self, frame: String) {
        if !self.outbox.push(frame) {
            self.outbox
                .close(close::TOO_SLOW, "too slow; resume with since", false);
        }
    }

    fn error(&mut self, id: Option<&str>, code: &str, message: &str, details: Option<Value>) {
        self.send(protocol::error(id, code, message, details));
    }

    /// Sends a final error, then closes with `code`.
    fn fail(&mut self, id: Option<&str>, code: &str, message: &str, close_code: u16) {
        self.error(id, code, message, None);
        self.outbox.close(close_code, message, true);
    }

    async fn inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Text(text) => match protocol::parse(text.as_str()) {
                Ok(msg) => self.request(msg).await,
                Err(e) => self.error(e.id.as_deref(), e.code, &e.message, None),
            },
            Inbound::Binary => self.error(
                None,
                "invalid_message",
                "binary frames are not part of gatehouse.v1; send JSON text frames",
                None,
            ),
            Inbound::TooLarge => self.fail(
                None,
                "frame_too_large",
                &format!(
                    "frames are limited to {} bytes",
                    self.config.max_frame_bytes
                ),
                close::TOO_LARGE,
            ),
            Inbound::Idle => self.fail(
                None,
                "idle_timeout",
                &format!(
                    "nothing received for {} s; send ping",
                    self.config.idle_timeout.as_secs()
                ),
                close::IDLE,
            ),
            Inbound::RateLimited => self.fail(
                None,
                "rate_limited",
                &format!(
                    "more than {} frames per second",
                    self.config.frames_per_second
                ),
                close::RATE_LIMITED,
            ),
            // Nothing more can be read from the client: close at once, without an error
            // frame it might not parse either.
            Inbound::ProtocolError(why) => {
                tracing::debug!(%why, "WebSocket protocol error from the client");
                self.outbox
                    .close(close::PROTOCOL_ERROR, "protocol error", false)
            }
            Inbound::InvalidUtf8 => {
                self.outbox
                    .close(close::INVALID_DATA, "text frames must be UTF-8", false)
            }
            Inbound::Closed => self.outbox.close(1000, "", false),
        }
    }

    async fn request(&mut self, msg: ClientMsg) {
        match msg {
            ClientMsg::Auth { id, token } => self.auth(id.as_deref(), &token).await,
            ClientMsg::Ping { id } => self.send(protocol::bare("pong", id.as_deref())),
            msg if self.auth.is_none() => self.fail(
                msg.id().as_deref(),
                "unauthenticated",
                "the first message must be auth",
                close::UNAUTHENTICATED,
            ),
            ClientMsg::Subscribe {
                id,
                gates,
                sites,
                since,
            } => self.subscribe(id.as_deref(), gates, sites, since).await,
            ClientMsg::Unsubscribe { id, gates, sites } => {
                self.unsubscribe(id.as_deref(), &gates, &sites)
            }
            ClientMsg::Command { id, gate, action } => self.command(id, &gate, &action).await,
        }
    }
}
