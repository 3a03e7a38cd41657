//! The Modbus TCP link: the hardware ports (`LinkConnector`, `LinkSession`) implemented with
//! the tokio-modbus client. One connector per controller (one TCP endpoint); every gate on it
//! is a unit id plus a register profile, and every read or write is a single Modbus
//! transaction with its own timeout.
//!
//! The error split follows the design's rule of who crashes: anything wrong with the
//! transport (refused, reset, silent, garbled) is a [`LinkError`] and ends the session;
//! a Modbus exception answered by one unit is that gate's [`UnitException`] and the session
//! carries on serving its neighbours.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::{HwOp, Observation};
use gatehouse_actors::ports::{
    BoxFuture, LinkConnector, LinkError, LinkSession, UnitException, UnitResult, WriteDone,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{Request, Response, Slave, SlaveContext};

use crate::profile::{Profile, Table, WriteSpec};

/// The exception a write of an op the gate's profile has no command for answers with:
/// 1, illegal function. Nothing goes on the wire; the gate treats it like a controller
/// refusal, which is what it is in effect.
pub const UNSUPPORTED_OP: UnitException = UnitException(1);

/// The exception for a gate index outside the connector's bindings: 11, gateway target
/// device failed to respond, because there is no such device behind this link. It is a
/// wiring bug in the caller, but it must not take the link (and the other gates) down.
pub const NO_SUCH_GATE: UnitException = UnitException(0x0B);

/// How long a TCP connect may take when nothing overrides it. Profiles carry no connect
/// timeout because it is a property of the network, not of the controller model.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One gate on a link: its Modbus unit id and how its registers are laid out.
#[derive(Debug, Clone)]
pub struct GateBinding {
    pub unit: u8,
    pub profile: Arc<Profile>,
}

/// The timing of one link. Slow RS-485 gateways need longer timeouts and a pause between
/// frames; these are per controller, not per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTiming {
    pub connect_timeout: Duration,
    /// Each transaction's limit, from sending the request to decoding the answer.
    pub request_timeout: Duration,
    /// The quiet time between the end of one transaction and the start of the next.
    pub inter_frame_delay: Duration,
}

/// Per-controller settings that win over what the profiles say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimingOverrides {
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub inter_frame_delay: Option<Duration>,
}

impl LinkTiming {
    /// The timing the bound profiles ask for, with `overrides` applied on top.
    ///
    /// A link has one timeout, so when gates with different profiles share it, the
    /// slowest profile's values are used (with one profile, that is simply its own). With
    /// no gates at all, the defaults of a profile without those keys apply.
    pub fn from_profiles(gates: &[GateBinding], overrides: TimingOverrides) -> LinkTiming {
        let request = gates.iter().map(|g| g.profile.request_timeout).max();
        let delay = gates.iter().map(|g| g.profile.inter_frame_delay).max();
        LinkTiming {
            connect_timeout: overrides.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            request_timeout: overrides
                .request_timeout
                .or(request)
                .unwrap_or(Duration::from_secs(1)),
            inter_frame_delay: overrides
                .inter_frame_delay
                .or(delay)
                .unwrap_or(Duration::ZERO),
        }
    }
}

/// Opens Modbus TCP sessions to one controller.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    endpoint: SocketAddr,
    gates: Arc<[GateBinding]>,
    timing: LinkTiming,
}

impl TcpConnector {
    /// `gates[i]` is the gate the port methods call `i`.
    pub fn new(endpoint: SocketAddr, gates: Vec<GateBinding>, timing: LinkTiming) -> Self {
        Self {
            endpoint,
            gates: gates.into(),
            timing,
        }
    }

    /// Like [`TcpConnector::new`], with the timing taken from the gates' profiles
    /// ([`LinkTiming::from_profiles`]).
    pub fn from_profiles(
        endpoint: SocketAddr,
        gates: Vec<GateBinding>,
        overrides: TimingOverrides,
    ) -> Self {
        let timing = LinkTiming::from_profiles(&gates, overrides);
        Self::new(endpoint, gates, timing)
    }

    pub fn endpoint_addr(&self) -> SocketAddr {
        self.endpoint
    }

    pub fn gates(&self) -> &[GateBinding] {
        &self.gates
    }

    pub fn timing(&self) -> LinkTiming {
        self.timing
    }

    /// Opens a session with its concrete type (the trait method boxes it).
    pub async fn open(&self) -> Result<TcpSession, LinkError> {
        let refused = |reason: String| LinkError::Connect {
            endpoint: self.endpoint.to_string(),
            reason,
        };
        let stream = match tokio::time::timeout(
            self.timing.connect_timeout,
            TcpStream::connect(self.endpoint),
        )
        .await
        {
            Err(_) => {
                return Err(refused(format!(
                    "no answer within {:?}",
                    self.timing.connect_timeout
                )));
            }
            Ok(Err(e)) => return Err(refused(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        // Requests are tiny and strictly one at a time: Nagle would only add latency.
        stream
            .set_nodelay(true)
            .map_err(|e| refused(format!("cannot set TCP_NODELAY: {e}")))?;
        let first_unit = self.gates.first().map_or(0, |g| g.unit);
        let context = tokio_modbus::client::tcp::attach_slave(stream, Slave(first_unit));
        Ok(TcpSession {
            context,
            gates: Arc::clone(&self.gates),
            timing: self.timing,
            last_end: None,
            broken: None,
        })
    }
}

impl LinkConnector for TcpConnector {
    fn endpoint(&self) -> String {
        self.endpoint.to_string()
    }

    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn LinkSession>, LinkError>> {
        Box::pin(async move {
            let session = self.open().await?;
            Ok(Box::new(session) as Box<dyn LinkSession>)
        })
    }
}

/// One open Modbus TCP connection. After a transport error it refuses all further work
/// with that same error: a late answer to a timed-out request could otherwise be taken
/// for the answer to the next one.
pub struct TcpSession {
    context: Context,
    gates: Arc<[GateBinding]>,
    timing: LinkTiming,
    /// When the previous transaction ended, for the inter-frame delay.
    last_end: Option<Instant>,
    broken: Option<LinkError>,
}

impl fmt::Debug for TcpSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpSession")
            .field("gates", &self.gates.len())
            .field("timing", &self.timing)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl TcpSession {
    /// Reads gate `gate`'s status block in one transaction and decodes it.
    pub async fn read_gate(&mut self, gate: usize) -> Result<UnitResult<Observation>, LinkError> {
        let Some(binding) = self.gates.get(gate).cloned() else {
            return Ok(Err(NO_SUCH_GATE));
        };
        let profile = &binding.profile;
        let (start, len) = (profile.block_start, profile.block_len);
        let request = match profile.table {
            Table::Holding => Request::ReadHoldingRegisters(start, len),
            Table::Input => Request::ReadInputRegisters(start, len),
        };
        let words = match self.transact(binding.unit, request).await? {
            Err(exception) => return Ok(Err(exception)),
            Ok(Response::ReadHoldingRegisters(words)) if profile.table == Table::Holding => words,
            Ok(Response::ReadInputRegisters(words)) if profile.table == Table::Input => words,
            Ok(other) => return Err(self.fail(unexpected(&other))),
        };
        match profile.decode(&words) {
            Ok(observation) => Ok(Ok(observation)),
            Err(reason) => Err(self.fail(LinkError::Protocol(format!(
                "unit {} registers {start}+{len}: {reason}",
                binding.unit
            )))),
        }
    }

    /// Writes `op` to gate `gate` as its profile says. An op the profile has no command
    /// for answers [`UNSUPPORTED_OP`] without touching the wire.
    pub async fn write_gate(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> Result<UnitResult<WriteDone>, LinkError> {
        let Some(binding) = self.gates.get(gate).cloned() else {
            return Ok(Err(NO_SUCH_GATE));
        };
        let Some(spec) = binding.profile.write_spec(op) else {
            return Ok(Err(UNSUPPORTED_OP));
        };
        let release_after = match spec {
            WriteSpec::Register { .. } => None,
            WriteSpec::Coil { pulse_ms, .. } => Some(Duration::from_millis(pulse_ms)),
        };
        Ok(self
            .write_spec(binding.unit, spec, true)
            .await?
            .map(|()| WriteDone { release_after }))
    }

    /// Sets a pulsed output back (coil off). Register commands and ops the profile lacks
    /// have nothing to set back, so they succeed without a transaction: the caller may
    /// release every op it ever pulsed after a reconnect without checking the profile.
    pub async fn release_gate(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> Result<UnitResult<()>, LinkError> {
        let Some(binding) = self.gates.get(gate).cloned() else {
            return Ok(Err(NO_SUCH_GATE));
        };
        match binding.profile.write_spec(op) {
            Some(spec @ WriteSpec::Coil { .. }) => self.write_spec(binding.unit, spec, false).await,
            Some(WriteSpec::Register { .. }) | None => Ok(Ok(())),
        }
    }

    /// One write transaction; `on` is the coil's level (registers ignore it). The echo is
    /// checked: a controller that echoes something else did not do what was asked.
    async fn write_spec(
        &mut self,
        unit: u8,
        spec: WriteSpec,
        on: bool,
    ) -> Result<UnitResult<()>, LinkError> {
        let (request, echo, addr) = match spec {
            WriteSpec::Register { register, value } => (
                Request::WriteSingleRegister(register, value),
                Response::WriteSingleRegister(register, value),
                register,
            ),
            WriteSpec::Coil { coil, .. } => (
                Request::WriteSingleCoil(coil, on),
                Response::WriteSingleCoil(coil, on),
                coil,
            ),
        };
        match self.transact(unit, request).await? {
            Err(exception) => Ok(Err(exception)),
            Ok(response) if response == echo => Ok(Ok(())),
            Ok(other) => Err(self.fail(LinkError::Protocol(format!(
                "unit {unit}: write to {addr} echoed {other:?}"
            )))),
        }
    }

    /// Runs one transaction: the inter-frame pause, the unit id, the request under its
    /// timeout, and the split of the outcome into transport error / exception / answer.
    async fn transact(
        &mut self,
        unit: u8,
        request: Request<'static>,
    ) -> Result<UnitResult<Response>, LinkError> {
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        if let Some(end) = self.last_end
            && !self.timing.inter_frame_delay.is_zero()
        {
            tokio::time::sleep_until(end + self.timing.inter_frame_delay).await;
        }
        self.context.set_slave(Slave(unit));
        let limit = self.timing.request_timeout;
        let outcome = tokio::time::timeout(limit, self.context.call(request)).await;
        self.last_end = Some(Instant::now());
        match outcome {
            Err(_) => Err(self.fail(LinkError::Timeout(limit))),
            Ok(Err(e)) => Err(self.fail(transport_error(e))),
            Ok(Ok(Err(code))) => {
                tracing::debug!(unit, code = u8::from(code), "modbus exception");
                Ok(Err(UnitException(u8::from(code))))
            }
            Ok(Ok(Ok(response))) => Ok(Ok(response)),
        }
    }

    /// Marks the session unusable and hands the error back.
    fn fail(&mut self, error: LinkError) -> LinkError {
        self.broken = Some(error.clone());
        error
    }
}

impl LinkSession for TcpSession {
    fn read(&mut self, gate: usize) -> BoxFuture<'_, Result<UnitResult<Observation>, LinkError>> {
        Box::pin(self.read_gate(gate))
    }

    fn write(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> BoxFuture<'_, Result<UnitResult<WriteDone>, LinkError>> {
        Box::pin(self.write_gate(gate, op))
    }

    fn release(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> BoxFuture<'_, Result<UnitResult<()>, LinkError>> {
        Box::pin(self.release_gate(gate, op))
    }
}

/// tokio-modbus reports frame-level garbage as I/O errors of kind `InvalidData` (bad
/// protocol id, impossible lengths) or `UnexpectedEof` (a PDU shorter than its function
/// needs); those are malformed responses, not a broken socket.
fn transport_error(e: tokio_modbus::Error) -> LinkError {
    match e {
        tokio_modbus::Error::Protocol(p) => LinkError::Protocol(p.to_string()),
        tokio_modbus::Error::Transport(io)
            if matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            LinkError::Protocol(io.to_string())
        }
        // tokio-modbus turns a clean EOF into `last_os_error()`, which reads "Success
        // (os error 0)": say what actually happened.
        tokio_modbus::Error::Transport(io) if io.raw_os_error() == Some(0) => {
            LinkError::Io("connection closed by the controller".into())
        }
        tokio_modbus::Error::Transport(io) => LinkError::Io(io.to_string()),
    }
}

fn unexpected(response: &Response) -> LinkError {
    LinkError::Protocol(format!("unexpected response {response:?}"))
}
