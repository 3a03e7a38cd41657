//! The gate's vocabulary: states, flags, actions, outcomes, what the controller reports, and
//! what the runtime writes. Plain data, shared by the state machine, the actors and adapters.

use serde::{Deserialize, Serialize};

use crate::ids::CommandId;

/// The gate's state as the runtime knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateState {
    /// Not yet reported, or the controller's status value is not in the profile.
    Unknown,
    Closed,
    Opening,
    Open,
    Closing,
    /// Stopped part way (partly open).
    Stopped,
    /// The controller reports a fault, or the runtime latched one (travel timeout).
    Fault,
    /// No readings: the link is down or the unit does not answer.
    Offline,
}

impl GateState {
    pub fn is_moving(self) -> bool {
        matches!(self, GateState::Opening | GateState::Closing)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GateState::Unknown => "unknown",
            GateState::Closed => "closed",
            GateState::Opening => "opening",
            GateState::Open => "open",
            GateState::Closing => "closing",
            GateState::Stopped => "stopped",
            GateState::Fault => "fault",
            GateState::Offline => "offline",
        }
    }
}

/// The flags that ride alongside the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateFlags {
    /// The controller reports an obstruction (photo-eye, edge). No close is written while set.
    pub obstructed: bool,
    /// Maintenance lockout: motion commands are refused.
    pub locked_out: bool,
    /// Held open: auto-close is suspended and close is refused until `release`.
    pub held_open: bool,
}

/// What a client asks of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Open,
    Close,
    Stop,
    Toggle,
    HoldOpen,
    Release,
    Lockout,
    Unlock,
    Reset,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Open,
        Action::Close,
        Action::Stop,
        Action::Toggle,
        Action::HoldOpen,
        Action::Release,
        Action::Lockout,
        Action::Unlock,
        Action::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Close => "close",
            Action::Stop => "stop",
            Action::Toggle => "toggle",
            Action::HoldOpen => "hold_open",
            Action::Release => "release",
            Action::Lockout => "lockout",
            Action::Unlock => "unlock",
            Action::Reset => "reset",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown action {s:?}"))
    }
}

/// Why a command was refused before anything was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The gate is offline (link down or unit not answering).
    Offline,
    /// The gate is in fault; `reset` first.
    Fault,
    /// Maintenance lockout; `unlock` first.
    LockedOut,
    /// The gate reports an obstruction; no close is written.
    Obstructed,
    /// The profile declares no monitored entrapment protection: no remote closing.
    NoEntrapmentProtection,
    /// The gate is held open; `release` first.
    HeldOpen,
    /// `toggle` needs a known state to pick a direction.
    StateUnknown,
    /// The command id was used before with a different payload.
    IdConflict,
}

impl RejectReason {
    /// The wire spelling of the reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Offline => "offline",
            RejectReason::Fault => "fault",
            RejectReason::LockedOut => "locked_out",
            RejectReason::Obstructed => "obstructed",
            RejectReason::NoEntrapmentProtection => "no_entrapment_protection",
            RejectReason::HeldOpen => "held_open",
            RejectReason::StateUnknown => "state_unknown",
            RejectReason::IdConflict => "id_conflict",
        }
    }
}

/// Why a command that was accepted (or tried) did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The link went down, or was down, before the command finished.
    Offline,
    /// The gate did not reach its end state within the travel timeout.
    TravelTimeout,
    /// The controller answered the write with a Modbus exception.
    ControllerException,
    /// Someone or something else moved the gate the other way, or stopped it.
    Interrupted,
    /// The gate reversed because of an obstruction.
    Obstructed,
    /// A later command took over the gate before this one finished.
    Superseded,
    /// The gate went to fault while the command ran.
    Fault,
    /// `reset` was written but the controller still reports a fault.
    FaultPersists,
    /// The controller answered the write, but not with what the profile counts as a
    /// confirmation (`write_echo`).
    WriteNotConfirmed,
    /// In a cluster: the node driving the gate lost it (or could no longer be heard) before
    /// the command finished. The gate may or may not have moved; its events say.
    Failover,
}

impl FailReason {
    /// The wire spelling of the reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Offline => "offline",
            FailReason::Failover => "failover",
            FailReason::TravelTimeout => "travel_timeout",
            FailReason::ControllerException => "controller_exception",
            FailReason::Interrupted => "interrupted",
            FailReason::Obstructed => "obstructed",
            FailReason::Superseded => "superseded",
            FailReason::Fault => "fault",
            FailReason::FaultPersists => "fault_persists",
            FailReason::WriteNotConfirmed => "write_not_confirmed",
        }
    }
}

/// A command's status as sent to clients: one `accepted`, then exactly one terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum CommandStatus {
    Accepted,
    Completed,
    Rejected(RejectReason),
    Failed(FailReason),
    TimedOut,
}

impl CommandStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, CommandStatus::Accepted)
    }

    /// The wire spelling `(status, reason)`; a reason only for the last three statuses.
    pub fn wire(self) -> (&'static str, Option<&'static str>) {
        match self {
            CommandStatus::Accepted => ("accepted", None),
            CommandStatus::Completed => ("completed", None),
            CommandStatus::Rejected(r) => ("rejected", Some(r.as_str())),
            CommandStatus::Failed(r) => ("failed", Some(r.as_str())),
            // The controller never confirmed the write: whether it moved is unknown.
            CommandStatus::TimedOut => ("timed_out", Some("write_unconfirmed")),
        }
    }
}

/// The state a controller reports, decoded by its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HwState {
    Closed,
    Opening,
    Open,
    Closing,
    Stopped,
    Fault,
    /// A status value the profile does not name.
    Unknown,
}

/// The runtime's state for a controller-reported state (the one mapping; `offline` is the
/// runtime's own, never reported).
impl From<HwState> for GateState {
    fn from(hw: HwState) -> GateState {
        match hw {
            HwState::Closed => GateState::Closed,
            HwState::Opening => GateState::Opening,
            HwState::Open => GateState::Open,
            HwState::Closing => GateState::Closing,
            HwState::Stopped => GateState::Stopped,
            HwState::Fault => GateState::Fault,
            HwState::Unknown => GateState::Unknown,
        }
    }
}

/// One poll of one gate, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub state: HwState,
    /// 0–100 % open, where the controller reports it.
    pub position: Option<u8>,
    pub obstructed: bool,
    /// The controller's own fault code, where it reports one.
    pub fault_code: Option<u16>,
    /// The raw cycle counter and its width in bits (it wraps at 2^bits).
    pub cycles: Option<RawCounter>,
}

impl Observation {
    pub fn state_only(state: HwState) -> Self {
        Self {
            state,
            position: None,
            obstructed: false,
            fault_code: None,
            cycles: None,
        }
    }
}

/// A wrapping hardware counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawCounter {
    pub value: u32,
    /// 16 or 32.
    pub bits: u8,
}

/// What the runtime writes to a controller. The profile says how (coil pulse, register value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HwOp {
    Open,
    Close,
    Stop,
    Reset,
    /// The warning output (flashing light, beeper) before a remote close.
    Warn,
}

impl HwOp {
    pub fn as_str(self) -> &'static str {
        match self {
            HwOp::Open => "open",
            HwOp::Close => "close",
            HwOp::Stop => "stop",
            HwOp::Reset => "reset",
            HwOp::Warn => "warn",
        }
    }
}

/// What the hardware can do beyond open/close/stop, as declared by the gate's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The profile has a reset write.
    pub reset: bool,
    /// The profile has a warning output; remote closes are preceded by it.
    pub warning_output: bool,
    /// The controller has monitored entrapment protection. Without it, no remote or automatic
    /// close is written.
    pub entrapment_protection: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            reset: false,
            warning_output: false,
            entrapment_protection: true,
        }
    }
}

/// Who or what caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A client's command.
    Command(CommandId),
    /// Nobody we know of: a radio remote, a wall button, a manual release.
    Local,
    /// The runtime itself: auto-close, travel timeout, link loss, reconciliation.
    System,
}

/// What happened, in a gate event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The state changed (the snapshot carries the new one).
    StateChanged {
        from: GateState,
    },
    /// The obstruction flag changed.
    Obstruction {
        obstructed: bool,
    },
    /// Auto-close will close the gate soon.
    AutoCloseWarning {
        closes_in_ms: u64,
    },
    /// The gate has been open longer than the configured alert time.
    LeftOpen {
        open_for_ms: u64,
    },
    LockedOut,
    Unlocked,
    HeldOpen,
    Released,
    /// A maintenance plan of this gate is within its warning margin (raised once per
    /// service interval, by the scheduler).
    MaintenanceDue {
        plan: uuid::Uuid,
    },
    /// A maintenance plan of this gate is past its limit.
    MaintenanceOverdue {
        plan: uuid::Uuid,
    },
    /// A command reached its terminal status.
    CommandFinished {
        command: CommandId,
        action: Action,
        status: CommandStatus,
    },
}

/// The gate as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSnapshot {
    pub state: GateState,
    pub flags: GateFlags,
    pub position: Option<u8>,
    /// The controller's fault code while in fault (or offline because of an exception).
    pub fault_code: Option<u16>,
    /// Why the runtime holds the gate in fault, if it latched one.
    pub latched_fault: Option<FailReason>,
    /// Completed cycles, unwrapped from the controller's counter.
    pub cycles: Option<u64>,
}

impl Default for GateSnapshot {
    fn default() -> Self {
        Self {
            state: GateState::Unknown,
            flags: GateFlags::default(),
            position: None,
            fault_code: None,
            latched_fault: None,
            cycles: None,
        }
    }
}
