//! Ports: the traits through which actors reach the outside world. `adapters/` implements
//! them; actors never see Modbus frames, sockets or SQL.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::gate::{HwOp, Observation};

/// A boxed, sendable future: the ports are used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A transport failure. It is the link's problem: the link actor crashes on it and its
/// supervisor restarts it with backoff. Never used for one unit's refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        endpoint: String,
        reason: String,
        /// How it failed: it decides how soon the link tries again.
        kind: ConnectFailure,
    },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("i/o error: {0}")]
    Io(String),
    #[error("malformed response: {0}")]
    Protocol(String),
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The host answered and refused: it is up, the service is not (a controller
    /// rebooting). Cheap to try again, and usually short.
    Refused,
    /// No answer within the connect timeout: the host is gone or unreachable. Each attempt
    /// costs the whole timeout, and it may last.
    Timeout,
    /// Anything else (a name that does not resolve, a network that is unreachable).
    Other,
}

/// One unit's refusal: a Modbus exception code (2 illegal address, 4 device failure,
/// 11 gateway target failed to respond, ...). It is that gate's problem, not the link's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("controller exception {0}")]
pub struct UnitException(pub u8);

/// A unit's answer: a value, or its exception.
pub type UnitResult<T> = Result<T, UnitException>;

/// Why a write was not confirmed, when the link itself is fine: that gate's command fails,
/// and the link and the other gates carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefused {
    /// The unit answered with a Modbus exception.
    #[error(transparent)]
    Exception(#[from] UnitException),
    /// The unit answered well framed, but not with what the profile counts as a
    /// confirmation (another register, or another value where the echo must be exact).
    #[error("write not confirmed: {0}")]
    NotConfirmed(String),
    /// No answer within the request timeout, but not yet so many in a row that the link is
    /// declared down: the write may or may not have landed (a write is not repeated, since
    /// a command pressed twice may not mean the same as once).
    #[error("no answer to the write within {0:?}")]
    NoAnswer(Duration),
}

/// A confirmed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteDone {
    /// The write was a pulse (a coil set on): it must be set back after this long, and set
    /// back on reconnect if the link dropped first.
    pub release_after: Option<Duration>,
}

/// Opens sessions to one controller. Built once per controller with its gates (index =
/// position in the controller's gate list); reused by every restart of the link actor.
pub trait LinkConnector: Send + Sync + 'static {
    /// Where the controller is, for logs.
    fn endpoint(&self) -> String;
    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn LinkSession>, LinkError>>;
}

/// One open connection to a controller. Transactions are serialized by the caller (the link
/// actor); each has its own timeout inside the adapter.
pub trait LinkSession: Send + 'static {
    /// Reads gate `gate`'s status: one read per contiguous register block of its unit.
    fn read(&mut self, gate: usize) -> BoxFuture<'_, Result<UnitResult<Observation>, LinkError>>;
    /// Writes `op` to gate `gate` as its profile says.
    fn write(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> BoxFuture<'_, Result<Result<WriteDone, WriteRefused>, LinkError>>;
    /// Sets a pulsed output of `op` back (coil off).
    fn release(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> BoxFuture<'_, Result<Result<(), WriteRefused>, LinkError>>;
}
