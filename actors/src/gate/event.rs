//! A gate event: what one gate did, stamped with that gate's own sequence. The unit of the
//! event log, the bus, the WebSocket stream and resume.

use serde::{Deserialize, Serialize};

use crate::gate::{Cause, EventKind, GateSnapshot};
use crate::ids::{ControllerId, GateId};

/// One event of one gate. `seq` is assigned by the gate's actor, the only writer for that
/// gate, and increases by one per event: clients resume per gate from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateEvent {
    pub gate: GateId,
    pub controller: ControllerId,
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
    pub cause: Cause,
    /// The gate right after the event.
    pub snapshot: GateSnapshot,
}
