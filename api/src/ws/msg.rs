//! The messages a session actor accepts, in one place: from its reader task, from the hub
//! (gap fills, resync, access and fleet notices), from gates (acks), from timers and from the
//! writer. The hub and the outbox import these, never the session itself.

use gatehouse_actors::ids::GateId;
use gatehouse_actors::tree::gate::Ack;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::outbox::WriterEnd;

/// What the reader saw.
#[derive(Debug)]
pub enum Inbound {
    Text(Utf8Bytes),
    Binary,
    TooLarge,
    Idle,
    RateLimited,
    /// The client broke RFC 6455's framing rules; what tungstenite said.
    ProtocolError(String),
    /// A text frame that is not UTF-8.
    InvalidUtf8,
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
    /// The hub lost events: fill every subscribed gate from the store, those behind the
    /// heads read after the loss only (all of them without heads: the hub restarted).
    Resync(Option<std::sync::Arc<super::hub::GapHeads>>),
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
