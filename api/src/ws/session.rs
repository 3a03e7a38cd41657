//! One session actor per WebSocket connection: identity, subscriptions, the outbound queue.
//!
//! Three tasks serve a connection: the actor (all decisions, one message at a time), a reader
//! (frames → messages to the actor, with the idle timeout and the per-connection frame rate
//! limit) and a writer ([`Outbox::write`]). Everything that reaches the client goes through
//! the actor and then the outbox, so the order the actor decides is the order on the wire:
//! snapshot, then replay, then live events, with acks in between.
//!
//! Per gate, the actor remembers the last seq it queued. A live event at or below it is a
//! duplicate and dropped; one above `last + 1` means events went missing on the way (the hub
//! fell behind the bus) and the gap is filled from the event store first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gatehouse_actors::access::{AuditRecord, Denial, Operation, UserId, authorize};
use gatehouse_actors::fleet::gate::{Ack, AckSink};
use gatehouse_actors::gate::{Action, CommandStatus, GateSnapshot, RejectReason};
use gatehouse_actors::ids::{CommandId, GateId, SiteId};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::WsConfig;
use super::hub::Hub;
use super::outbox::{Outbox, Release, WriterEnd};
use super::protocol::{self, ClientMsg, close};
use crate::auth::secrets;
use crate::principal::{self, Caller};
use crate::ratelimit::{Admitted, Gcra, Quota};
use crate::v1::gates::{forbidden, locate, time_for};
use crate::v1::{App, now_ms};
use crate::{ApiError, wire};

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// What the reader saw.
#[derive(Debug)]
pub enum Inbound {
    Text(Utf8Bytes),
    Binary,
    TooLarge,
    Idle,
    RateLimited,
    Closed,
}

pub enum SessionMsg {
    Inbound(Inbound),
    /// A subscribed gate's live events skipped seqs (the outbox holds them): fill the gap
    /// from the event store.
    Fill(GateId),
    /// A status of one of this session's commands, from the gate.
    Ack {
        gate: GateId,
        ack: Ack,
    },
    /// The hub lost events: fill every subscribed gate from the store.
    Resync,
    /// The caller's user or key changed: check the session's authority again.
    AccessChanged,
    /// The fleet changed: drop subscribed gates that are gone, re-check those that moved.
    FleetChanged,
    /// The authentication deadline or the token's expiry.
    Deadline,
    /// The server is stopping: close with 4500.
    Shutdown,
    /// The writer stopped; the session ends.
    WriterDone(WriterEnd),
}

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
                let end = outbox.write(sink, stall).await;
                let _ = me.send_message(SessionMsg::WriterDone(end));
            });
        }
        let reader = tokio::spawn(read(stream, myself.clone(), args.config.clone()));
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
            SessionMsg::Resync => {
                let gates: Vec<GateId> = state.subs.keys().cloned().collect();
                for gate in gates {
                    state.resync(&gate).await;
                }
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

/// The reader task: frames to the actor until the connection ends. After a frame that ends
/// the session (too large, too many, idle) it keeps reading and discarding until the client
/// answers the close: closing a TCP connection with unread data in it resets it, and the
/// client would never see the close frame that says why.
async fn read(
    mut stream: futures::stream::SplitStream<Socket>,
    me: ActorRef<SessionMsg>,
    config: Arc<WsConfig>,
) {
    let quota = Quota {
        burst: config.frame_burst,
        period: Duration::from_secs(1) / config.frames_per_second.max(1),
    };
    let (mut frames, opened) = (Gcra::default(), Instant::now());
    let mut admit = move || frames.admit(quota, opened.elapsed()).is_ok();
    loop {
        let inbound = match tokio::time::timeout(config.idle_timeout, stream.next()).await {
            Err(_) => Inbound::Idle,
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => Inbound::Closed,
            Ok(Some(Ok(Message::Text(text)))) => match admit() {
                true => Inbound::Text(text),
                false => Inbound::RateLimited,
            },
            Ok(Some(Ok(Message::Binary(_)))) => match admit() {
                true => Inbound::Binary,
                false => Inbound::RateLimited,
            },
            // Control frames keep the connection alive; tungstenite answers pings itself.
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Err(WsError::Capacity(_)))) => Inbound::TooLarge,
            Ok(Some(Err(_))) => Inbound::Closed,
        };
        let more = matches!(inbound, Inbound::Text(_) | Inbound::Binary);
        let ended = matches!(inbound, Inbound::Closed);
        if me.send_message(SessionMsg::Inbound(inbound)).is_err() || ended {
            return;
        }
        if !more {
            // Drain until the client's close (the session's drop bounds this with LINGER).
            while let Some(Ok(frame)) = stream.next().await {
                if matches!(frame, Message::Close(_)) {
                    return;
                }
            }
            return;
        }
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
                let mut gone: Vec<GateId> = gates
                    .iter()
                    .filter_map(|g| g.parse::<GateId>().ok())
                    .filter(|g| self.subs.contains_key(g))
                    .collect();
                gone.extend(
                    self.subs
                        .iter()
                        .filter(|(_, s)| sites.iter().any(|site| site == s.site.as_str()))
                        .map(|(g, _)| g.clone()),
                );
                self.hub.unsubscribe(self.me.get_id(), gone.iter());
                for g in &gone {
                    self.subs.remove(g);
                    self.outbox.forget(g);
                }
                self.send(protocol::bare("ok", id.as_deref()));
            }
            ClientMsg::Command { id, gate, action } => self.command(id, &gate, &action),
        }
    }

    async fn auth(&mut self, id: Option<&str>, token: &str) {
        let caller = match principal::resolve(&self.app.keys, &self.app.access, token).await {
            Ok(caller) => caller,
            Err(e) if e.status == warp::http::StatusCode::SERVICE_UNAVAILABLE => {
                // The database is away: the client may try again; nothing changes meanwhile.
                self.send(api_error(id, &e));
                return;
            }
            Err(e) if e.status == warp::http::StatusCode::UNAUTHORIZED => {
                self.send(api_error(id, &e));
                self.outbox
                    .close(close::UNAUTHENTICATED, "unauthenticated", true);
                return;
            }
            Err(e) => {
                // Our fault, not the credential's: do not send the client back to its login.
                self.send(api_error(id, &e));
                self.outbox.close(1011, "internal error", true);
                return;
            }
        };
        if let Some(current) = &self.auth
            && current.caller.actor != caller.actor
        {
            self.fail(
                id,
                "identity_mismatch",
                "re-authentication must be for the same user or key",
                close::UNAUTHENTICATED,
            );
            return;
        }
        // Without a user, `resolve` accepted an API key.
        let credential = match &caller.user {
            Some(user) => Credential::User(user.id),
            None => Credential::Key(secrets::digest(token)),
        };
        if let Some(d) = self.deadline.take() {
            d.abort();
        }
        if let Some(expires_at) = caller.expires_at {
            let left = Duration::from_secs(expires_at.saturating_sub(now_ms() / 1000));
            self.deadline = Some(self.me.send_after(left, || SessionMsg::Deadline));
        }
        self.hub.identify(self.me.get_id(), &caller.actor);
        self.send(protocol::auth_ok(
            id,
            caller.expires_at,
            caller.principal.role.as_str(),
        ));
        let renewed = self.auth.is_some();
        self.auth = Some(Authed { caller, credential });
        if renewed {
            // The fresh token's user may have lost grants since the last check.
            self.drop_unreadable();
        }
    }

    /// The auth deadline passed, or the token may have expired.
    fn deadline(&mut self) {
        match &self.auth {
            None => self.fail(
                None,
                "unauthenticated",
                "no auth message in time",
                close::UNAUTHENTICATED,
            ),
            Some(a) => {
                let now = now_ms() / 1000;
                match a.caller.expires_at {
                    Some(exp) if exp <= now => self.fail(
                        None,
                        "token_expired",
                        "the access token expired; reconnect with a fresh one",
                        close::UNAUTHENTICATED,
                    ),
                    Some(exp) => {
                        let left = Duration::from_secs(exp - now);
                        self.deadline = Some(self.me.send_after(left, || SessionMsg::Deadline));
                    }
                    None => {}
                }
            }
        }
    }

    /// The caller's access changed: read it again; close when the account went away or a
    /// subscribed gate is no longer readable.
    async fn recheck(&mut self) {
        let Some(authed) = &self.auth else { return };
        let fresh = match &authed.credential {
            Credential::User(id) => principal::user_caller(&self.app.access, *id).await,
            Credential::Key(digest) => {
                match self.app.access.api_key_by_hash(digest.clone()).await {
                    Ok(Some(key)) if key.revoked_at_ms.is_none() => Ok(authed.caller.clone()),
                    Ok(_) => Err(principal::unauthenticated("the API key was revoked")),
                    Err(e) => Err(principal::store_error(e)),
                }
            }
        };
        let mut caller = match fresh {
            Ok(c) => c,
            // The database is away: keep the session as it is; the next notice checks again.
            Err(e) if e.status == warp::http::StatusCode::SERVICE_UNAVAILABLE => return,
            Err(e) => {
                let message = e.message.to_string();
                self.fail(None, e.code, &message, close::UNAUTHENTICATED);
                return;
            }
        };
        // A new password means the account's owner (or an admin who suspects it is not its
        // owner) wants existing sessions to end.
        let password_changed = match (&authed.caller.user, &caller.user) {
            (Some(before), Some(now)) => before.password_hash != now.password_hash,
            _ => false,
        };
        if password_changed {
            self.fail(
                None,
                "credentials_changed",
                "the account's password changed; log in again",
                close::UNAUTHENTICATED,
            );
            return;
        }
        caller.expires_at = authed.caller.expires_at;
        if let Some(a) = &mut self.auth {
            a.caller = caller;
        }
        self.drop_unreadable();
    }

    /// Follows the fleet: subscribed gates that no longer exist are dropped (and the client
    /// told, `gate_removed`); gates that moved to another site are re-checked.
    fn refleet(&mut self) {
        let mut removed = Vec::new();
        for (gate, sub) in self.subs.iter_mut() {
            match locate(&self.app, gate) {
                Some((site, _, _)) => sub.site = site,
                None => removed.push(gate.clone()),
            }
        }
        if !removed.is_empty() {
            self.hub.unsubscribe(self.me.get_id(), removed.iter());
            for gate in &removed {
                self.subs.remove(gate);
                self.outbox.forget(gate);
            }
            let gates: Vec<&str> = removed.iter().map(GateId::as_str).collect();
            self.error(
                None,
                "gate_removed",
                "subscribed gates were removed from the fleet; they are no longer followed",
                Some(json!({ "gates": gates })),
            );
        }
        if self.auth.is_some() {
            self.drop_unreadable();
        }
    }

    /// Closes with 4403 when the current caller may no longer read a subscribed gate.
    fn drop_unreadable(&mut self) {
        let revoked: Vec<String> = self
            .subs
            .iter()
            .filter(|(gate, sub)| self.may_read(gate, &sub.site).is_err())
            .map(|(gate, _)| gate.to_string())
            .collect();
        if !revoked.is_empty() {
            self.error(
                None,
                "grant_revoked",
                "access to subscribed gates was revoked",
                Some(json!({ "gates": revoked })),
            );
            self.outbox
                .close(close::GRANT_REVOKED, "grant revoked", true);
        }
    }

    fn caller(&self) -> &Caller {
        &self
            .auth
            .as_ref()
            .expect("only called once authenticated")
            .caller
    }

    async fn subscribe(
        &mut self,
        id: Option<&str>,
        gates: Vec<String>,
        sites: Vec<String>,
        since: std::collections::BTreeMap<String, u64>,
    ) {
        // Everything is checked before anything changes.
        let mut wanted: Vec<(GateId, SiteId)> = Vec::new();
        for name in &gates {
            let Some((gate, site)) = name
                .parse::<GateId>()
                .ok()
                .and_then(|g| locate(&self.app, &g).map(|(site, _, _)| (g, site)))
            else {
                return self.error(
                    id,
                    "unknown_gate",
                    &format!("no gate {name}"),
                    Some(json!({ "gate": name })),
                );
            };
            if let Err(denial) = self.may_read(&gate, &site) {
                let e = forbidden(denial);
                let mut details = e.details.clone();
                details["gate"] = json!(name);
                return self.error(id, "forbidden", "not allowed", Some(details));
            }
            wanted.push((gate, site));
        }
        if !sites.is_empty() {
            let controllers = self.app.fleet.controllers();

            for name in &sites {
                // The site limit first, so that a limited key cannot probe other sites' names.
                if let Some(limit) = &self.caller().principal.site
                    && limit.as_str() != name
                {
                    let e = forbidden(Denial::OtherSite);
                    let mut details = e.details.clone();
                    details["site"] = json!(name);
                    return self.error(id, "forbidden", "not allowed", Some(details));
                }
                let exists = name
                    .parse::<SiteId>()
                    .is_ok_and(|site| self.app.fleet.site_timezone(&site).is_some())
                    || controllers.iter().any(|c| c.site.as_str() == name);
                if !exists {
                    return self.error(
                        id,
                        "unknown_site",
                        &format!("no site {name}"),
                        Some(json!({ "site": name })),
                    );
                }
                for c in controllers.iter().filter(|c| c.site.as_str() == name) {
                    for g in &c.gates {
                        // A site brings the gates of it the caller may read.
                        if self.may_read(&g.spec.id, &c.site).is_ok() {
                            wanted.push((g.spec.id.clone(), c.site.clone()));
                        }
                    }
                }
            }
        }
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        wanted.dedup_by(|a, b| a.0 == b.0);
        let total = wanted
            .iter()
            .filter(|(g, _)| !self.subs.contains_key(g))
            .count()
            + self.subs.len();
        if total > self.config.max_subscriptions {
            return self.error(
                id,
                "too_many_gates",
                &format!(
                    "a session follows at most {} gates",
                    self.config.max_subscriptions
                ),
                None,
            );
        }
        if let Some(stray) = since
            .keys()
            .find(|g| !wanted.iter().any(|(w, _)| w.as_str() == g.as_str()))
        {
            return self.error(
                id,
                "invalid_message",
                &format!("since: gate {stray} is not subscribed by this request"),
                Some(json!({ "gate": stray })),
            );
        }

        let ids: Vec<GateId> = wanted.iter().map(|(g, _)| g.clone()).collect();
        // Held first, so that live events wait behind the snapshot and the replay; recorded
        // first, so that a session stopped half way still deregisters them.
        for (gate, site) in &wanted {
            self.outbox.hold(gate);
            self.subs.insert(gate.clone(), Sub { site: site.clone() });
        }
        let latest = self.hub.subscribe(self.me.get_id(), &self.outbox, &ids);
        let mut entries = Vec::with_capacity(ids.len());
        let mut replays = Vec::new();
        let mut heads = Vec::with_capacity(ids.len());
        let mut budget = self.config.max_replay;
        for ((gate, site), latest) in wanted.into_iter().zip(latest) {
            let (seq, snapshot): (u64, GateSnapshot) = match latest {
                Some(l) => (l.event.seq, l.event.snapshot),
                None => match self.app.fleet.view(&gate).await {
                    Ok(view) => (view.committed, view.snapshot),
                    // Removed a moment ago: nothing to follow.
                    Err(_) => {
                        self.hub
                            .unsubscribe(self.me.get_id(), std::iter::once(&gate));
                        self.outbox.forget(&gate);
                        self.subs.remove(&gate);
                        continue;
                    }
                },
            };
            let mut entry = wire::gate_state(gate.as_str(), seq, &snapshot);
            entry.insert("site".into(), site.as_str().into());
            if let Some(&after) = since.get(gate.as_str())
                && after < seq
            {
                // The newest missed events, within the per-request budget.
                let missed = seq - after;
                let take = missed.min(self.config.max_replay_per_gate).min(budget);
                budget -= take;
                // `replay_from` above `since + 1` tells the client what it must fetch over
                // REST; with the budget spent it is `seq + 1`: nothing replayed.
                let from = seq - take + 1;
                entry.insert("replay_from".into(), from.into());
                if take > 0 {
                    replays.push((gate.clone(), from, seq));
                }
            }
            entries.push(Value::Object(entry));
            heads.push((gate, seq));
        }
        self.send(protocol::frame(
            "snapshot",
            id,
            protocol::fields(json!({ "gates": entries })),
        ));
        let mut unavailable = Vec::new();
        for (gate, from, to) in replays {
            if self.replay(&gate, from, to).await.is_err() {
                unavailable.push(gate.to_string());
            }
        }
        for (gate, seq) in heads {
            self.release(&gate, seq).await;
        }
        if !unavailable.is_empty() {
            self.error(
                id,
                "replay_unavailable",
                "the event store is unavailable; these gates continue live without the replay (fetch it later from /api/v1/gates/{gate}/events)",
                Some(json!({ "gates": unavailable })),
            );
        }
    }

    fn may_read(&self, gate: &GateId, site: &SiteId) -> Result<(), Denial> {
        authorize(
            &self.caller().principal,
            Operation::Read,
            Some((gate, site)),
            gatehouse_actors::access::LocalTime {
                weekday: 0,
                minute: 0,
            },
        )
    }

    /// Queues the committed events `from..=to` of `gate` (`to` may be `u64::MAX`: everything
    /// stored). Answers the last seq queued (`from - 1` when none), or an error when the
    /// store failed.
    async fn replay(&mut self, gate: &GateId, from: u64, to: u64) -> Result<u64, ()> {
        let mut after = from.saturating_sub(1);
        while after < to {
            let limit = (to - after).min(500) as u32;
            let page = match self.app.events.since(gate.clone(), after, limit).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%gate, error = %e, "replay from the event store failed");
                    return Err(());
                }
            };
            if page.is_empty() {
                break;
            }
            for stored in page {
                if stored.event.seq > to {
                    return Ok(after);
                }
                after = stored.event.seq;
                let frame = protocol::frame("event", None, wire::event(&stored.event));
                self.send(frame);
            }
        }
        Ok(after)
    }

    /// Lets `gate`'s held live events go, everything up to `last` being queued; fills any gap
    /// they show from the store first. A gap the store cannot fill (it is away) is skipped:
    /// the client sees the seq jump and may fetch it later over REST.
    async fn release(&mut self, gate: &GateId, mut last: u64) {
        loop {
            match self.outbox.release(gate, last) {
                Release::Live | Release::Unknown => return,
                Release::Gap { after, before } => {
                    let _ = self.replay(gate, after + 1, before - 1).await;
                    last = before - 1;
                }
            }
        }
    }

    /// The hub lost events: hold the gate, queue whatever the store has after the last seq
    /// sent, and go live again.
    async fn resync(&mut self, gate: &GateId) {
        if self.outbox.last(gate).is_none() {
            return;
        }
        let last = self.outbox.hold(gate);
        let newest = self.replay(gate, last + 1, u64::MAX).await.unwrap_or(last);
        self.release(gate, newest).await;
    }

    fn command(&mut self, id: uuid::Uuid, gate: &str, action: &str) {
        let request = id.to_string();
        let rid = Some(request.as_str());
        let Ok(action) = action.parse::<Action>() else {
            return self.error(
                rid,
                "unknown_action",
                &format!("unknown action {action:?}"),
                Some(json!({ "field": "action" })),
            );
        };
        let Some((gate_id, site)) = gate
            .parse::<GateId>()
            .ok()
            .and_then(|g| locate(&self.app, &g).map(|(site, _, _)| (g, site)))
        else {
            return self.error(
                rid,
                "unknown_gate",
                &format!("no gate {gate}"),
                Some(json!({ "gate": gate })),
            );
        };
        let caller = self.caller().clone();
        let op = Operation::Command(action);
        // Inline (no I/O: site time zones are in memory), so that one session's commands
        // reach a gate in the order they were sent.
        let at = time_for(&self.app, &caller.principal, op, &site);
        if let Err(denial) = authorize(&caller.principal, op, Some((&gate_id, &site)), at) {
            let e = forbidden(denial);
            return self.send(api_error(rid, &e));
        }
        match self
            .app
            .limits
            .admit_command(&caller.actor, &gate_id, action, id)
        {
            Ok(Admitted::New | Admitted::Retry) => {}
            // The id names another command lately (another gate or action).
            Ok(Admitted::Conflict) => {
                let (status, reason) =
                    wire::status(CommandStatus::Rejected(RejectReason::IdConflict));
                return self.send(protocol::ack(&request, gate_id.as_str(), status, reason));
            }
            Err(wait) => {
                let e = crate::ratelimit::rate_limited(wait, "commands on this gate");
                let mut details = e.details.clone();
                details["retry_after_ms"] = json!(wait.as_millis() as u64);
                return self.error(rid, e.code, &e.message, Some(details));
            }
        }
        let me = self.me.clone();
        let sink: AckSink = Arc::new(move |gate: &GateId, ack| {
            let _ = me.send_message(SessionMsg::Ack {
                gate: gate.clone(),
                ack,
            });
        });
        if self
            .app
            .fleet
            .command(&gate_id, CommandId(id), action, Some(sink))
            .is_err()
        {
            return self.error(
                rid,
                "unknown_gate",
                &format!("no gate {gate_id}"),
                Some(json!({ "gate": gate_id.as_str() })),
            );
        }
        // The audit write must not hold up the session (nor the next command).
        let access = self.app.access.clone();
        let record = AuditRecord {
            at_ms: now_ms(),
            actor: caller.actor,
            action: format!("gate.{}", action.as_str()),
            target: Some(format!("gate:{gate_id}")),
            source_ip: Some(self.ip.to_string()),
            details: json!({ "command": request, "via": "websocket" }).to_string(),
        };
        tokio::spawn(async move {
            if let Err(e) = access.audit(record).await {
                tracing::warn!(error = %e, "a command's audit record was not written");
            }
        });
    }
}
