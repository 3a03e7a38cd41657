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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Sink, SinkExt};
use gatehouse_actors::fleet::events::GateEvent;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

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

#[derive(Default)]
struct Inner {
    frames: VecDeque<Utf8Bytes>,
    /// The newest event of each gate that arrived while the client was behind.
    coalesced: Vec<Arc<LiveEvent>>,
    closing: Option<Closing>,
}

/// What happened to an event handed to [`Outbox::event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    InOrder,
    Coalesced,
}

/// The queue, shared by the session actor (the only producer) and the writer task.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    wake: Notify,
}

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
    /// Frames written per flush.
    const BATCH: usize = 64;

    /// Queues an answer. `false`: the queue is at its hard bound; the caller closes with 4509.
    pub fn push(&self, frame: impl Into<Utf8Bytes>) -> bool {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return true;
        }
        if inner.frames.len() >= Self::HARD {
            return false;
        }
        inner.frames.push_back(frame.into());
        drop(inner);
        self.wake.notify_one();
        true
    }

    /// Queues a live event, or coalesces it when the client is behind.
    pub fn event(&self, event: &Arc<LiveEvent>) -> Queued {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return Queued::InOrder;
        }
        let gate = &event.event.gate;
        // Once one of a gate's events is held back, its later ones must be too, or they would
        // overtake it.
        if let Some(slot) = inner.coalesced.iter_mut().find(|e| &e.event.gate == gate) {
            *slot = event.clone();
            return Queued::Coalesced;
        }
        if inner.frames.len() >= Self::SOFT {
            inner.coalesced.push(event.clone());
            return Queued::Coalesced;
        }
        inner.frames.push_back(event.frame.clone());
        drop(inner);
        self.wake.notify_one();
        Queued::InOrder
    }

    /// Ends the connection with `code`. With `flush`, what is queued is written first.
    pub fn close(&self, code: u16, reason: &str, flush: bool) {
        let mut inner = self.lock();
        if inner.closing.is_none() {
            if !flush {
                inner.frames.clear();
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

    /// Frames waiting (not counting coalesced gates).
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters (every update is a single push or clear), so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next frames to write, or the close, or nothing yet.
    fn next(&self, batch: &mut Vec<Utf8Bytes>) -> Option<Closing> {
        let mut inner = self.lock();
        if !inner.frames.is_empty() {
            let n = inner.frames.len().min(Self::BATCH);
            batch.extend(inner.frames.drain(..n));
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
            batch.push(frame.into());
            return None;
        }
        inner.closing.clone()
    }

    /// Writes the queue to `sink` until the session closes or the socket fails. A write that
    /// makes no progress for `stall` ends it with 4509.
    pub async fn write<S>(&self, mut sink: S, stall: Duration) -> WriterEnd
    where
        S: Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    {
        let mut batch = Vec::with_capacity(Self::BATCH);
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
                        sink.send(Message::Close(Some(frame))).await?;
                        sink.close().await
                    })
                    .await;
                    return WriterEnd::Closed;
                }
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
                Ok(Err(_)) => return WriterEnd::Gone,
                Err(_) => {
                    self.close(close::TOO_SLOW, "too slow; resume with since", false);
                    // One short attempt to say why; the peer is probably not reading.
                    let frame = CloseFrame {
                        code: CloseCode::from(close::TOO_SLOW),
                        reason: "too slow; resume with since".into(),
                    };
                    let _ = tokio::time::timeout(Duration::from_millis(100), async {
                        sink.send(Message::Close(Some(frame))).await
                    })
                    .await;
                    return WriterEnd::Stalled;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_actors::gate::{Cause, EventKind, GateSnapshot, GateState};
    use gatehouse_actors::ids::{ControllerId, GateId};

    use super::*;

    fn live(gate: &str, seq: u64) -> Arc<LiveEvent> {
        Arc::new(LiveEvent::new(Arc::new(GateEvent {
            gate: gate.parse::<GateId>().unwrap(),
            controller: "c".parse::<ControllerId>().unwrap(),
            seq,
            at_ms: 0,
            kind: EventKind::StateChanged {
                from: GateState::Closed,
            },
            cause: Cause::Local,
            snapshot: GateSnapshot {
                state: GateState::Opening,
                ..GateSnapshot::default()
            },
        })))
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
    fn answers_beyond_the_hard_bound_are_refused() {
        let outbox = Outbox::default();
        for _ in 0..Outbox::HARD {
            assert!(outbox.push("{}".to_string()));
        }
        assert!(!outbox.push("{}".to_string()));
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
