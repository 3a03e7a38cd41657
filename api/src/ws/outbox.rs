//! A session's outbound queue and the task that writes it to the socket.
//!
//! The queue is bounded. Answers (acks, errors, snapshots, pongs) and events go in order
//! while the client keeps up. Once [`Outbox::SOFT`] frames wait, the client is behind: further
//! events are not queued one by one but coalesced per gate (only the newest state of each gate
//! is kept) and written as one `snapshot` frame with `"coalesced": true` when the queue has
//! drained. A client that reads nothing at all is found out two ways: a write that makes no
//! progress for the stall time, or [`Outbox::HARD`] answers piling up. Either way it is closed
//! with 4509, and it resumes with `since`. Nothing here ever waits on the client while
//! holding anything the gates need.
//!
//! Live events come straight from the hub (no hop through the session actor), one stream per
//! subscribed gate. A stream is either *held* — the session is writing that gate's snapshot or
//! replay, and live events wait behind it — or *live*: events above the last seq sent go out,
//! those at or below it are duplicates and dropped, and one that skips a seq (the hub lost
//! events) holds the stream again and asks the session to fill the gap from the event store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Sink, SinkExt};
use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::ids::GateId;
use gatehouse_actors::telemetry;
use ractor::ActorRef;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::msg::SessionMsg;
use super::protocol::{self, close};
use crate::wire;

/// A committed gate event with its `event` frame, serialized once for every subscriber.
#[derive(Debug)]
pub struct LiveEvent {
    pub event: Arc<GateEvent>,
    pub frame: Utf8Bytes,
}

impl LiveEvent {
    pub fn new(event: Arc<GateEvent>) -> Self {
        let fields = wire::event(&event);
        let frame = protocol::frame("event", None, fields).into();
        Self { event, frame }
    }
}

/// How the connection is to end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Closing {
    code: u16,
    reason: String,
    /// Write what is queued first (a final error, a shutdown), or drop it (a stuck client).
    flush: bool,
}

/// One subscribed gate's live events.
#[derive(Default)]
struct Stream {
    /// The last seq queued for the client.
    last: u64,
    /// While held: the live events that arrived meanwhile, in order.
    held: Option<Vec<Arc<LiveEvent>>>,
}

#[derive(Default)]
struct Inner {
    frames: VecDeque<Utf8Bytes>,
    /// The newest event of each gate that arrived while the client was behind.
    coalesced: Vec<Arc<LiveEvent>>,
    closing: Option<Closing>,
    streams: HashMap<GateId, Stream>,
    /// Bytes in `frames`.
    bytes: usize,
}

/// What happened to an event handed to [`Outbox::event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    InOrder,
    Coalesced,
}

/// What became of a live event handed over by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued(Queued),
    /// Kept until the gate's snapshot, replay or gap fill is out.
    Held,
    /// At or below the last seq sent.
    Duplicate,
    /// Not subscribed (any more), or the session is closing.
    Ignored,
}

/// What releasing a held stream found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Everything held went out; the stream is live.
    Live,
    /// A held event skips seqs: the events `after + 1 .. before` must be filled from the
    /// store before the stream is released again. It stays held.
    Gap { after: u64, before: u64 },
    /// The gate is not subscribed.
    Unknown,
}

/// The queue, shared by the session actor, the hub (live events) and the writer task.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    wake: Notify,
    /// Told when a stream needs a gap filled.
    owner: Option<ActorRef<SessionMsg>>,
}

/// How long a client cut off for being too slow has to read the close frame that says so.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why the writer stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterEnd {
    /// The session asked to close and the close frame went out (or was attempted).
    Closed,
    /// The socket failed or the peer went away.
    Gone,
    /// A write made no progress for the stall time: closed with 4509.
    Stalled,
}

impl Outbox {
    /// Frames queued before events start to coalesce.
    pub const SOFT: usize = 64;
    /// Frames queued (answers and replays, which never coalesce) before the client is cut off.
    pub const HARD: usize = 4096;
    /// Bytes queued before the client is cut off (a few large snapshots, asked for again and
    /// again by a client that reads nothing, must not grow the server's memory).
    pub const HARD_BYTES: usize = 4 * 1024 * 1024;
    /// Frames written per flush.
    const BATCH: usize = 64;
    /// Queue capacity kept while idle.
    const IDLE_FRAMES: usize = 4;

    /// Queues an answer. `false`: the queue is at its hard bound; the caller closes with 4509.
    pub fn push(&self, frame: impl Into<Utf8Bytes>) -> bool {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return true;
        }
        let frame = frame.into();
        if inner.frames.len() >= Self::HARD || inner.bytes + frame.len() > Self::HARD_BYTES {
            return false;
        }
        inner.bytes += frame.len();
        inner.frames.push_back(frame);
        drop(inner);
        self.wake.notify_one();
        true
    }

    pub fn new(owner: ActorRef<SessionMsg>) -> Self {
        Self {
            owner: Some(owner),
            ..Self::default()
        }
    }

    /// Queues an event as is (no stream bookkeeping), or coalesces it when the client is
    /// behind. (Live events go through [`Outbox::live`]; this is the queue's own test door.)
    #[cfg(test)]
    fn event(&self, event: &Arc<LiveEvent>) -> Queued {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return Queued::InOrder;
        }
        let queued = Self::enqueue(&mut inner, event);
        drop(inner);
        if queued == Queued::InOrder {
            self.wake.notify_one();
        }
        queued
    }

    fn enqueue(inner: &mut Inner, event: &Arc<LiveEvent>) -> Queued {
        let gate = &event.event.gate;
        // Once one of a gate's events is held back, its later ones must be too, or they would
        // overtake it.
        if let Some(slot) = inner.coalesced.iter_mut().find(|e| &e.event.gate == gate) {
            // The event it replaces is never sent on its own.
            *slot = event.clone();
            if let Some(i) = telemetry::get() {
                i.session_queue_drops.increment(1);
            }
            return Queued::Coalesced;
        }
        if inner.frames.len() >= Self::SOFT {
            inner.coalesced.push(event.clone());
            return Queued::Coalesced;
        }
        inner.bytes += event.frame.len();
        inner.frames.push_back(event.frame.clone());
        Queued::InOrder
    }

    /// Starts (or restarts) holding `gate`'s live events: call before subscribing it at the
    /// hub, then write its snapshot or replay, then [`Outbox::release`].
    /// Answers the last seq queued for it (0 for a new stream), read under the same lock, so
    /// that nothing slips out between the two.
    pub fn hold(&self, gate: &GateId) -> u64 {
        let mut inner = self.lock();
        let stream = inner.streams.entry(gate.clone()).or_default();
        if stream.held.is_none() {
            stream.held = Some(Vec::new());
        }
        stream.last
    }

    /// The last seq queued for `gate`, if subscribed.
    pub fn last(&self, gate: &GateId) -> Option<u64> {
        self.lock().streams.get(gate).map(|s| s.last)
    }

    /// Everything up to `last` of `gate` has been queued: queue what was held after it and go
    /// live, unless the held events skip seqs.
    pub fn release(&self, gate: &GateId, last: u64) -> Release {
        let mut inner = self.lock();
        let Some(stream) = inner.streams.get_mut(gate) else {
            return Release::Unknown;
        };
        stream.last = last;
        let held = stream.held.take().unwrap_or_default();
        let mut queued = false;
        let mut rest = held.into_iter();
        while let Some(event) = rest.next() {
            let Some(stream) = inner.streams.get_mut(gate) else {
                break;
            };
            let seq = event.event.seq;
            if seq <= stream.last {
                continue;
            }
            if seq > stream.last + 1 {
                let after = stream.last;
                stream.held = Some(std::iter::once(event).chain(rest).collect());
                drop(inner);
                if queued {
                    self.wake.notify_one();
                }
                return Release::Gap { after, before: seq };
            }
            stream.last = seq;
            queued |= Self::enqueue(&mut inner, &event) == Queued::InOrder;
        }
        drop(inner);
        if queued {
            self.wake.notify_one();
        }
        Release::Live
    }

    /// Stops following `gate`.
    pub fn forget(&self, gate: &GateId) {
        self.lock().streams.remove(gate);
    }

    /// A committed event from the hub.
    pub fn live(&self, event: &Arc<LiveEvent>) -> Delivery {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return Delivery::Ignored;
        }
        let Some(stream) = inner.streams.get_mut(&event.event.gate) else {
            return Delivery::Ignored;
        };
        let seq = event.event.seq;
        if let Some(held) = &mut stream.held {
            held.push(event.clone());
            return Delivery::Held;
        }
        if seq <= stream.last {
            return Delivery::Duplicate;
        }
        if seq > stream.last + 1 {
            stream.held = Some(vec![event.clone()]);
            drop(inner);
            if let Some(owner) = &self.owner {
                let _ = owner.send_message(SessionMsg::Fill(event.event.gate.clone()));
            }
            return Delivery::Held;
        }
        stream.last = seq;
        let queued = Self::enqueue(&mut inner, event);
        drop(inner);
        if queued == Queued::InOrder {
            self.wake.notify_one();
        }
        Delivery::Queued(queued)
    }

    /// Ends the connection with `code`. With `flush`, what is queued is written first.
    pub fn close(&self, code: u16, reason: &str, flush: bool) {
        let mut inner = self.lock();
        if inner.closing.is_none() {
            telemetry::session_closed(code);
            if !flush {
                inner.frames.clear();
                inner.bytes = 0;
                inner.coalesced.clear();
            }
            inner.closing = Some(Closing {
                code,
                reason: reason.to_string(),
                flush,
            });
        }
        drop(inner);
        self.wake.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters (every update is a single push or clear), so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything queued, taken as the writer would (for tests elsewhere in `ws`).
    #[cfg(test)]
    pub(super) fn take_frames(&self) -> Vec<String> {
        let mut batch = Vec::new();
        let mut frames = Vec::new();
        while self.next(&mut batch).is_none() && !batch.is_empty() {
            frames.extend(batch.drain(..).map(|f| f.as_str().to_owned()));
        }
        frames
    }

    /// The next frames to write, or the close, or nothing yet.
    fn next(&self, batch: &mut Vec<Utf8Bytes>) -> Option<Closing> {
        let mut inner = self.lock();
        if !inner.frames.is_empty() {
            let n = inner.frames.len().min(Self::BATCH);
            let start = batch.len();
            batch.extend(inner.frames.drain(..n));
            let taken: usize = batch[start..].iter().map(|f| f.len()).sum();
            inner.bytes = inner.bytes.saturating_sub(taken);
            return None;
        }
        if !inner.coalesced.is_empty() {
            let gates: Vec<Value> = inner
                .coalesced
                .drain(..)
                .map(|e| {
                    Value::Object(wire::gate_state(
                        e.event.gate.as_str(),
                        e.event.seq,
                        &e.event.snapshot,
                    ))
                })
                .collect();
            let frame = protocol::frame(
                "snapshot",
                None,
                protocol::fields(serde_json::json!({ "coalesced": true, "gates": gates })),
            );
            if let Some(i) = telemetry::get() {
                i.session_coalesced.increment(1);
            }
            batch.push(frame.into());
            return None;
        }
        inner.closing.clone()
    }

    /// Writes the queue to `sink` until the session closes or the socket fails. A write that
    /// makes no progress for `stall` ends it with 4509.
    /// `ended` is told how the writing ended as soon as that is decided: for a client too
    /// slow to keep up, before the close frame that says so is given [`CLOSE_LINGER`] to get
    /// through (the client sees it once it reads again).
    pub async fn write<S>(&self, mut sink: S, stall: Duration, ended: impl FnOnce(WriterEnd))
    where
        S: Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    {
        // Grown on demand and given back when idle: most sessions are idle most of the time,
        // and 10,000 of them each keeping a 64-frame batch would cost 20 MiB.
        let mut batch = Vec::new();
        loop {
            let notified = self.wake.notified();
            let closing = self.next(&mut batch);
            if batch.is_empty() {
                if let Some(closing) = closing {
                    let frame = CloseFrame {
                        code: CloseCode::from(closing.code),
                        reason: closing.reason.into(),
                    };
                    let _ = tokio::time::timeout(stall, async {
                        // Refused when the client closed first; closing the sink then still
                        // flushes tungstenite's echo of the client's close (RFC 6455 5.5.1).
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        sink.close().await
                    })
                    .await;
                    return ended(WriterEnd::Closed);
                }
                batch.shrink_to(0);
                self.lock().frames.shrink_to(Self::IDLE_FRAMES);
                notified.await;
                continue;
            }
            let written = tokio::time::timeout(stall, async {
                for frame in batch.drain(..) {
                    sink.feed(Message::Text(frame)).await?;
                }
                sink.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return ended(WriterEnd::Gone),
                Err(_) => {
                    self.close(close::TOO_SLOW, "too slow; resume with since", false);
                    ended(WriterEnd::Stalled);
                    // Say why, behind what the client has yet to read: it gets the close
                    // frame if it reads again within the linger, as a stuck phone that comes
                    // back from a tunnel does; otherwise the connection is dropped.
                    let frame = CloseFrame {
                        code: CloseCode::from(close::TOO_SLOW),
                        reason: "too slow; resume with since".into(),
                    };
                    let _ = tokio::time::timeout(CLOSE_LINGER, async {
                        sink.send(Message::Close(Some(frame))).await?;
                        sink.flush().await
                    })
                    .await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use gatehouse_actors::gate::{Cause, EventKind, GateSnapshot, GateState};
    use gatehouse_actors::ids::{ControllerId, GateId};

    use super::*;

    /// A gate starting to open: the event the `ws` tests move streams with.
    pub(in crate::ws) fn opening(gate: &GateId, seq: u64) -> GateEvent {
        GateEvent {
            gate: gate.clone(),
            controller: "c".parse::<ControllerId>().unwrap(),
            seq,
            at_ms: seq,
            kind: EventKind::StateChanged {
                from: GateState::Closed,
            },
            cause: Cause::Local,
            snapshot: GateSnapshot {
                state: GateState::Opening,
                ..GateSnapshot::default()
            },
        }
    }

    fn live(gate: &str, seq: u64) -> Arc<LiveEvent> {
        Arc::new(LiveEvent::new(Arc::new(opening(
            &gate.parse::<GateId>().unwrap(),
            seq,
        ))))
    }

    fn drain(outbox: &Outbox) -> Vec<Value> {
        let mut all = Vec::new();
        let mut batch = Vec::new();
        while outbox.next(&mut batch).is_none() && !batch.is_empty() {
            all.extend(
                batch
                    .drain(..)
                    .map(|f| serde_json::from_str::<Value>(f.as_str()).unwrap()),
            );
        }
        all
    }

    #[test]
    fn a_client_that_keeps_up_gets_every_event_in_order() {
        let outbox = Outbox::default();
        for seq in 1..=10 {
            assert_eq!(outbox.event(&live("a", seq)), Queued::InOrder);
        }
        let seqs: Vec<u64> = drain(&outbox)
            .iter()
            .map(|f| f["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_client_behind_gets_the_newest_state_per_gate_once_and_after_what_was_queued() {
        let outbox = Outbox::default();
        for i in 0..Outbox::SOFT {
            assert!(outbox.push(protocol::bare("pong", Some(&i.to_string()))));
        }
        assert_eq!(outbox.event(&live("a", 1)), Queued::Coalesced);
        assert_eq!(outbox.event(&live("b", 1)), Queued::Coalesced);
        assert_eq!(outbox.event(&live("a", 2)), Queued::Coalesced);
        assert_eq!(outbox.event(&live("a", 3)), Queued::Coalesced);
        let frames = drain(&outbox);
        assert_eq!(frames.len(), Outbox::SOFT + 1);
        let last = frames.last().unwrap();
        assert_eq!(last["type"], "snapshot");
        assert_eq!(last["coalesced"], true);
        let gates = last["gates"].as_array().unwrap();
        assert_eq!(gates.len(), 2, "{last}");
        assert_eq!(
            (gates[0]["gate"].clone(), gates[0]["seq"].clone()),
            ("a".into(), 3.into())
        );
        assert_eq!(
            (gates[1]["gate"].clone(), gates[1]["seq"].clone()),
            ("b".into(), 1.into())
        );
        // Caught up: events flow one by one again.
        assert_eq!(outbox.event(&live("a", 4)), Queued::InOrder);
    }

    #[test]
    fn a_held_stream_keeps_live_events_behind_its_replay_and_drops_duplicates() {
        let outbox = Outbox::default();
        let a: GateId = "a".parse().unwrap();
        assert_eq!(
            outbox.live(&live("a", 1)),
            Delivery::Ignored,
            "not subscribed"
        );
        outbox.hold(&a);
        // Live events arrive while the snapshot (at seq 5) and the replay are written.
        assert_eq!(outbox.live(&live("a", 5)), Delivery::Held);
        assert_eq!(outbox.live(&live("a", 6)), Delivery::Held);
        outbox.push(protocol::bare("snapshot", None));
        assert_eq!(outbox.release(&a, 5), Release::Live);
        assert_eq!(outbox.live(&live("a", 6)), Delivery::Duplicate);
        assert_eq!(
            outbox.live(&live("a", 7)),
            Delivery::Queued(Queued::InOrder)
        );
        let frames = drain(&outbox);
        assert_eq!(frames[0]["type"], "snapshot");
        let seqs: Vec<u64> = frames[1..]
            .iter()
            .map(|f| f["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, vec![6, 7], "5 was in the snapshot; no duplicate 6");
    }

    #[test]
    fn a_skipped_seq_holds_the_stream_until_the_gap_is_filled() {
        let outbox = Outbox::default();
        let a: GateId = "a".parse().unwrap();
        outbox.hold(&a);
        assert_eq!(outbox.release(&a, 3), Release::Live);
        // 4 and 5 were lost on the way: 6 waits for them.
        assert_eq!(outbox.live(&live("a", 6)), Delivery::Held);
        assert_eq!(outbox.live(&live("a", 7)), Delivery::Held);
        assert_eq!(
            outbox.release(&a, 3),
            Release::Gap {
                after: 3,
                before: 6
            }
        );
        // The session fills 4..=5 from the store, then releases again.
        outbox.event(&live("a", 4));
        outbox.event(&live("a", 5));
        assert_eq!(outbox.release(&a, 5), Release::Live);
        let seqs: Vec<u64> = drain(&outbox)
            .iter()
            .map(|f| f["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, vec![4, 5, 6, 7]);
        assert_eq!(outbox.last(&a), Some(7));
    }

    #[test]
    fn answers_beyond_the_hard_bound_are_refused() {
        let outbox = Outbox::default();
        for _ in 0..Outbox::HARD {
            assert!(outbox.push("{}".to_string()));
        }
        assert!(!outbox.push("{}".to_string()));
    }

    #[test]
    fn answers_beyond_the_byte_bound_are_refused_and_written_ones_free_it() {
        let outbox = Outbox::default();
        let big = "x".repeat(1024 * 1024);
        for _ in 0..4 {
            assert!(outbox.push(big.clone()));
        }
        assert!(!outbox.push(big.clone()), "5 MiB would be over the bound");
        let mut batch = Vec::new();
        assert!(outbox.next(&mut batch).is_none());
        assert_eq!(batch.len(), 4);
        assert!(outbox.push(big), "written frames no longer count");
    }

    #[test]
    fn closing_without_flush_drops_the_queue_and_with_flush_keeps_it() {
        let outbox = Outbox::default();
        outbox.push("{}".to_string());
        outbox.close(close::TOO_SLOW, "slow", false);
        let mut batch = Vec::new();
        let closing = outbox.next(&mut batch).expect("closing at once");
        assert!(batch.is_empty());
        assert_eq!(closing.code, close::TOO_SLOW);

        let outbox = Outbox::default();
        outbox.push(protocol::bare("pong", None));
        outbox.close(close::SHUTTING_DOWN, "bye", true);
        assert_eq!(drain(&outbox).len(), 1);
        assert_eq!(outbox.next(&mut batch).unwrap().code, close::SHUTTING_DOWN);
    }
}
