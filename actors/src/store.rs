//! Store ports: durable configuration (the fleet) and the durable event log. Implemented in
//! `adapters/` with diesel on SQLite and PostgreSQL; the actors see only these traits.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access::AuditRecord;
use crate::gate::GateEvent;
use crate::gate::{Action, CommandStatus};
use crate::ids::{CommandId, ControllerId, GateId, SiteId};
use crate::ports::BoxFuture;

/// A site as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub id: SiteId,
    pub name: String,
    /// IANA time zone name.
    pub timezone: String,
}

/// A controller as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    pub id: ControllerId,
    pub site: SiteId,
    /// Profile id (file stem).
    pub profile: String,
    /// How the controller is reached: Modbus TCP (the default), RTU framing tunnelled over
    /// TCP (serial gateways), or RTU on a local serial line.
    #[serde(default)]
    pub transport: Transport,
    /// `host:port`, for `tcp` and `rtu-over-tcp`; empty for `rtu`.
    #[serde(default)]
    pub endpoint: String,
    /// The serial line, for `rtu`, as written (unset keys take [`SerialLine`]'s defaults).
    #[serde(default)]
    pub serial: SerialSettings,
    pub request_timeout_ms: Option<u64>,
    pub inter_frame_delay_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    /// Request timeouts in a row that take the link down, over the profile's.
    pub timeouts_before_down: Option<u64>,
}

/// How a controller's link reaches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Modbus TCP (MBAP framing) to `endpoint`.
    #[default]
    Tcp,
    /// Modbus RTU frames (unit, PDU, CRC) over a TCP connection to `endpoint`: what many
    /// Ethernet-to-RS-485 gateways speak.
    RtuOverTcp,
    /// Modbus RTU on a local serial line (RS-485 adapter).
    Rtu,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Tcp, Transport::RtuOverTcp, Transport::Rtu];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::RtuOverTcp => "rtu-over-tcp",
            Transport::Rtu => "rtu",
        }
    }

    /// Whether the link runs over TCP (and so has an `endpoint`).
    pub fn is_tcp(self) -> bool {
        !matches!(self, Transport::Rtu)
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Transport::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a transport (tcp, rtu-over-tcp or rtu)"))
    }
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub const ALL: [Parity; 3] = [Parity::None, Parity::Even, Parity::Odd];

    pub fn as_str(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

impl std::str::FromStr for Parity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Parity::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a parity (none, even or odd)"))
    }
}

/// A serial line's settings as configured: every key optional, so that what was written is
/// what is stored and exported. [`ControllerRecord::serial_line`] fills in the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSettings {
    /// The device, such as `/dev/ttyUSB0`.
    pub device: Option<String>,
    pub baud: Option<u32>,
    pub parity: Option<Parity>,
    pub data_bits: Option<u8>,
    pub stop_bits: Option<u8>,
}

/// A serial line with every setting decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialLine {
    pub device: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialLine {
    /// The Modbus serial-line specification's defaults (v1.02, 2.5.1): even parity, one
    /// stop bit, and RTU's 8 data bits. The baud rate has no default: it is set on the
    /// controller's board and must be written down.
    pub const DEFAULT_PARITY: Parity = Parity::Even;
    pub const DEFAULT_DATA_BITS: u8 = 8;
    pub const DEFAULT_STOP_BITS: u8 = 1;

    /// Bits on the wire per byte: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// The silence that ends an RTU frame: 3.5 character times, fixed at 1.75 ms above
    /// 19,200 baud (the specification's rule, so fast lines are not held to microseconds
    /// that UARTs cannot keep).
    pub fn inter_frame_gap(&self) -> std::time::Duration {
        if self.baud > 19_200 {
            return std::time::Duration::from_micros(1_750);
        }
        let micros =
            (u64::from(self.bits_per_char()) * 3_500_000).div_ceil(u64::from(self.baud.max(1)));
        std::time::Duration::from_micros(micros)
    }
}

impl ControllerRecord {
    /// The serial line of an `rtu` controller, with the specification's defaults for the
    /// keys not written; `None` for TCP transports, or when no device or baud rate is set
    /// (which validation refuses).
    pub fn serial_line(&self) -> Option<SerialLine> {
        if self.transport != Transport::Rtu {
            return None;
        }
        Some(SerialLine {
            device: self.serial.device.clone()?,
            baud: self.serial.baud?,
            parity: self.serial.parity.unwrap_or(SerialLine::DEFAULT_PARITY),
            data_bits: self
                .serial
                .data_bits
                .unwrap_or(SerialLine::DEFAULT_DATA_BITS),
            stop_bits: self
                .serial
                .stop_bits
                .unwrap_or(SerialLine::DEFAULT_STOP_BITS),
        })
    }
}

/// A gate as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    pub id: GateId,
    pub controller: ControllerId,
    pub unit: u8,
    pub name: String,
    pub travel_timeout_s: u64,
    pub auto_close_after_s: Option<u64>,
    pub left_open_alert_after_s: Option<u64>,
}

/// The whole fleet configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecords {
    pub sites: Vec<SiteRecord>,
    pub controllers: Vec<ControllerRecord>,
    pub gates: Vec<GateRecord>,
}

/// One configuration change. A batch of changes is applied in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetChange {
    UpsertSite(SiteRecord),
    RemoveSite(SiteId),
    UpsertController(ControllerRecord),
    RemoveController(ControllerId),
    UpsertGate(GateRecord),
    RemoveGate(GateId),
}

impl FleetRecords {
    /// Applies `changes` in order, as the store does in its transaction. Only the shape is
    /// checked here (what a change removes must exist); references and values are the
    /// validator's and the database's business.
    pub fn apply(&mut self, changes: &[FleetChange]) -> Result<(), String> {
        fn upsert<T, K: PartialEq>(list: &mut Vec<T>, item: T, key: impl Fn(&T) -> &K) {
            match list.iter().position(|x| key(x) == key(&item)) {
                Some(i) => list[i] = item,
                None => list.push(item),
            }
        }
        for change in changes {
            match change {
                FleetChange::UpsertSite(s) => upsert(&mut self.sites, s.clone(), |x| &x.id),
                FleetChange::UpsertController(c) => {
                    upsert(&mut self.controllers, c.clone(), |x| &x.id)
                }
                FleetChange::UpsertGate(g) => upsert(&mut self.gates, g.clone(), |x| &x.id),
                FleetChange::RemoveSite(id) => {
                    if self.controllers.iter().any(|c| &c.site == id) {
                        return Err(format!("site {id} still has controllers"));
                    }
                    let before = self.sites.len();
                    self.sites.retain(|s| &s.id != id);
                    if self.sites.len() == before {
                        return Err(format!("no site {id}"));
                    }
                }
                FleetChange::RemoveController(id) => {
                    if self.gates.iter().any(|g| &g.controller == id) {
                        return Err(format!("controller {id} still has gates"));
                    }
                    let before = self.controllers.len();
                    self.controllers.retain(|c| &c.id != id);
                    if self.controllers.len() == before {
                        return Err(format!("no controller {id}"));
                    }
                }
                FleetChange::RemoveGate(id) => {
                    let before = self.gates.len();
                    self.gates.retain(|g| &g.id != id);
                    if self.gates.len() == before {
                        return Err(format!("no gate {id}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The controllers whose subtree `changes` touch (their own record, or one of their
    /// gates, before or after).
    pub fn touched_controllers(&self, changes: &[FleetChange]) -> Vec<ControllerId> {
        let mut out: Vec<ControllerId> = Vec::new();
        let mut add = |id: &ControllerId| {
            if !out.contains(id) {
                out.push(id.clone());
            }
        };
        for change in changes {
            match change {
                FleetChange::UpsertController(c) => add(&c.id),
                FleetChange::RemoveController(id) => add(id),
                FleetChange::UpsertGate(g) => {
                    add(&g.controller);
                    if let Some(old) = self.gates.iter().find(|x| x.id == g.id) {
                        add(&old.controller);
                    }
                }
                FleetChange::RemoveGate(id) => {
                    if let Some(old) = self.gates.iter().find(|x| &x.id == id) {
                        add(&old.controller);
                    }
                }
                FleetChange::UpsertSite(_) | FleetChange::RemoveSite(_) => {}
            }
        }
        out
    }
}

/// Where a gate's history stands in the store: resume points for its actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateHead {
    /// The highest event sequence stored for the gate.
    pub seq: u64,
    /// The unwrapped cycle total of the gate's latest event that carried one.
    pub cycles: Option<u64>,
}

/// An event as read back, with its global id (commit order within one writer; not a resume
/// point across writers — clients resume per gate by `seq`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub event: GateEvent,
}

/// Why the store could not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or went away: worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A constraint refused the change (unknown reference, duplicate key): not worth retrying.
    #[error("rejected by the database: {0}")]
    Rejected(String),
    #[error("database error: {0}")]
    Other(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Durable fleet configuration.
pub trait FleetStore: Send + Sync + 'static {
    fn load_fleet(&self) -> BoxFuture<'_, Result<FleetRecords, StoreError>>;
    /// Applies `changes` in one transaction: all or nothing.
    fn apply(&self, changes: Vec<FleetChange>) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The durable event log.
pub trait EventStore: Send + Sync + 'static {
    /// Appends events and command audit records in one transaction. An event whose
    /// `(gate, seq)` is already stored is skipped, so that a retried batch is never stored
    /// twice.
    fn append_batch(
        &self,
        events: Vec<Arc<GateEvent>>,
        audits: Vec<AuditRecord>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// [`EventStore::append_batch`] under a [`Fence`](crate::cluster::Fence): events of
    /// controllers whose lease is no longer the fence's node and epoch are refused, and so
    /// are events of a gate that belongs to another controller now (moved by a fleet change
    /// this node has not applied yet: the gate's new node continues its `seq`); the others
    /// and the audit records are written in one transaction. Answers what was refused.
    /// Stores that have no leases refuse it.
    fn append_fenced(
        &self,
        events: Vec<Arc<GateEvent>>,
        audits: Vec<AuditRecord>,
        fence: crate::cluster::Fence,
    ) -> BoxFuture<'_, Result<Refused, StoreError>> {
        let _ = (events, audits, fence);
        Box::pin(async {
            Err(StoreError::Rejected(
                "this store has no leases to fence writes with".into(),
            ))
        })
    }
    /// [`EventStore::append_batch`] without audit records.
    fn append(&self, events: Vec<Arc<GateEvent>>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.append_batch(events, Vec::new())
    }
    /// Every gate's resume point.
    fn heads(&self) -> BoxFuture<'_, Result<Vec<(GateId, GateHead)>, StoreError>>;
    /// The resume points of `gates` only (those with events), one index lookup each: what a
    /// node taking a few controllers needs, without reading the whole event table's index.
    fn heads_of(
        &self,
        gates: Vec<GateId>,
    ) -> BoxFuture<'_, Result<Vec<(GateId, GateHead)>, StoreError>>;
    /// The highest seq of each of `gates` that has events: [`heads_of`](Self::heads_of)
    /// without the cycles, which a store answers in one query.
    fn head_seqs(
        &self,
        gates: Vec<GateId>,
    ) -> BoxFuture<'_, Result<Vec<(GateId, u64)>, StoreError>> {
        Box::pin(async move {
            let heads = self.heads_of(gates).await?;
            Ok(heads.into_iter().map(|(g, h)| (g, h.seq)).collect())
        })
    }
    /// A gate's events with `seq > after`, oldest first.
    fn since(
        &self,
        gate: GateId,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>>;
    /// The gate's newest stored event (what a node that does not drive the gate shows of it).
    fn latest(&self, gate: GateId) -> BoxFuture<'_, Result<Option<StoredEvent>, StoreError>>;
    /// Every event with global id `> after`, in id order.
    fn after(&self, after: i64, limit: u32) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>>;
    /// The newest event's global id (0 when there is none): where following
    /// [`after`](Self::after) starts.
    fn newest_id(&self) -> BoxFuture<'_, Result<i64, StoreError>>;
    /// Commands that finished at or after `since_ms` (wall clock), from their
    /// `command_finished` events: what a restarted gate must remember for idempotency.
    fn finished_commands(
        &self,
        since_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<FinishedCommand>, StoreError>>;
}

/// What a fenced append refused to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refused {
    /// Controllers whose lease is not the fence's: their subtrees must stop.
    pub controllers: Vec<ControllerId>,
    /// Gates whose events named a controller they no longer belong to.
    pub gates: Vec<GateId>,
}

impl Refused {
    pub fn is_empty(&self) -> bool {
        self.controllers.is_empty() && self.gates.is_empty()
    }

    /// Whether `event` was refused.
    pub fn refuses(&self, event: &GateEvent) -> bool {
        self.controllers.contains(&event.controller) || self.gates.contains(&event.gate)
    }
}

/// A command id taken for one command: the id is the idempotency key across every gate and
/// every node (CONTRACTS.md), so the store, not a node's memory, decides who had it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandClaim {
    pub id: CommandId,
    pub gate: GateId,
    pub action: Action,
    /// Wall clock, for forgetting old ids.
    pub at_ms: u64,
}

/// What the store knew of a claimed id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The id was free: it is this command's now.
    New,
    /// The id was already taken for the same gate and action: a retry.
    Same,
    /// The id names another command (another gate or action).
    Other { gate: GateId, action: Action },
}

/// Command ids taken, durable: they outlive a node and a Redis restart.
pub trait CommandIdStore: Send + Sync + 'static {
    /// Takes each id for its command, in one transaction; answers, in order, what was known of
    /// each before. An id claimed twice in one batch is `Same` or `Other` the second time.
    fn claim_commands(
        &self,
        claims: Vec<CommandClaim>,
    ) -> BoxFuture<'_, Result<Vec<Claimed>, StoreError>>;
    /// Forgets the ids taken before `before_ms`; answers how many.
    fn forget_commands(&self, before_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// The newest `limit` ids taken at or after `since_ms`, oldest first.
    fn recent_commands(
        &self,
        since_ms: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<CommandClaim>, StoreError>>;
}

/// A command's terminal outcome, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedCommand {
    pub gate: GateId,
    /// The sequence of its `command_finished` event.
    pub seq: u64,
    pub at_ms: u64,
    pub id: CommandId,
    pub action: Action,
    pub status: CommandStatus,
}
