//! The Modbus link: the hardware ports (`LinkConnector`, `LinkSession`) implemented with the
//! tokio-modbus client, over Modbus TCP, RTU framing tunnelled over TCP, or RTU on a serial
//! line ([`Wire`]). One connector per controller (one endpoint or one line); every gate on
//! it is a unit id plus a register profile, and every read or write is a single Modbus
//! transaction with its own timeout.
//!
//! The error split follows the design's rule of who crashes: anything wrong with the
//! transport (refused, reset, silent, garbled) is a [`LinkError`] and ends the session;
//! a Modbus exception answered by one unit is that gate's [`UnitException`] and the session
//! carries on serving its neighbours.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::gate::{HwOp, Observation};
use gatehouse_actors::ports::{
    BoxFuture, ConnectFailure, LinkConnector, LinkError, LinkSession, UnitException, UnitResult,
    WriteDone, WriteRefused,
};
use gatehouse_actors::store::{Parity, SerialLine};
use gatehouse_actors::telemetry::{self, Op};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::ProtocolError;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{Request, Response, Slave, SlaveContext};

use crate::late_replies::LateReplies;
use crate::profile::{Profile, Table, WriteEcho, WriteSpec};
use crate::quiet_line::QuietLine;

/// The exception a write of an op the gate's profile has no command for answers with:
/// 1, illegal function. Nothing goes on the wire; the gate treats it like a controller
/// refusal, which is what it is in effect.
pub const UNSUPPORTED_OP: UnitException = UnitException(1);

/// The exception for a gate index outside the connector's bindings: 11, gateway target
/// device failed to respond, because there is no such device behind this link. It is a
/// wiring bug in the caller, but it must not take the link (and the other gates) down.
pub const NO_SUCH_GATE: UnitException = UnitException(0x0B);

/// The exception a gate is given for an answer its profile cannot decode: 4, server device
/// failure, which is what it amounts to; the unit is not the link.
pub const UNDECODABLE: UnitException = UnitException(4);

/// How long a TCP connect may take when nothing overrides it. Profiles carry no connect
/// timeout because it is a property of the network, not of the controller model.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One gate on a link: its Modbus unit id and how its registers are laid out.
#[derive(Debug, Clone)]
pub struct UnitProfile {
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
    /// Request timeouts in a row that declare the link down. Fewer are a lost reply: a read
    /// is asked again, a write reported unanswered, and the link carries on.
    pub timeouts_before_down: u32,
}

/// TCP keepalive on controller connections: a half-open connection (a controller that lost
/// power, a cable pulled) is found within about 10 s + 3 × 5 s even while nothing is asked.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// Per-controller settings that win over what the profiles say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimingOverrides {
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub inter_frame_delay: Option<Duration>,
    pub timeouts_before_down: Option<u32>,
}

impl LinkTiming {
    /// The timing the bound profiles ask for, with `overrides` applied on top.
    ///
    /// A link has one timeout, so when gates with different profiles share it, the
    /// slowest profile's values are used (with one profile, that is simply its own). With
    /// no gates at all, the defaults of a profile without those keys apply.
    pub fn from_profiles(gates: &[UnitProfile], overrides: TimingOverrides) -> LinkTiming {
        let request = gates.iter().map(|g| g.profile.request_timeout).max();
        let delay = gates.iter().map(|g| g.profile.inter_frame_delay).max();
        let down_after = gates.iter().map(|g| g.profile.timeouts_before_down).max();
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
            timeouts_before_down: overrides
                .timeouts_before_down
                .or(down_after)
                .unwrap_or(crate::profile::DEFAULT_TIMEOUTS_BEFORE_DOWN),
        }
    }
}

/// How a link reaches its controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// Modbus TCP: MBAP framing to `host:port`.
    Tcp(String),
    /// RTU frames (unit, PDU, CRC) over a TCP connection to `host:port`: an Ethernet to
    /// RS-485 gateway that tunnels the serial bytes as they are.
    RtuOverTcp(String),
    /// RTU on a local serial line.
    Serial(SerialLine),
}

impl Wire {
    fn framing(&self) -> Framing {
        match self {
            Wire::Tcp(_) => Framing::Mbap,
            Wire::RtuOverTcp(_) | Wire::Serial(_) => Framing::Rtu,
        }
    }
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wire::Tcp(endpoint) => f.write_str(endpoint),
            Wire::RtuOverTcp(endpoint) => write!(f, "rtu+tcp://{endpoint}"),
            Wire::Serial(line) => write!(
                f,
                "{} ({} {}{}{})",
                line.device,
                line.baud,
                line.data_bits,
                match line.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                },
                line.stop_bits
            ),
        }
    }
}

/// How frames are told apart on the wire, which decides how a late reply is kept from
/// being taken for the answer to a later request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// MBAP: every reply carries its request's transaction id ([`LateReplies`]).
    Mbap,
    /// RTU: nothing ties a reply to its request but the unit and function, so the line is
    /// drained before each request ([`QuietLine`]) and left to settle after a lost reply.
    Rtu,
}

/// Opens Modbus sessions to one controller, over TCP or a serial line.
#[derive(Debug, Clone)]
pub struct ModbusConnector {
    /// The endpoint (`host:port`) is resolved at each connect (with tokio's resolver, off
    /// the runtime's threads), so that a controller behind a DNS name that moves is found
    /// again on the next reconnect, and configuring it never blocks on DNS.
    wire: Wire,
    gates: Arc<[UnitProfile]>,
    timing: LinkTiming,
    /// The local address TCP connections start from (`[cluster] bind`); none: the system's
    /// choice.
    local: Option<std::net::IpAddr>,
}

impl ModbusConnector {
    /// `gates[i]` is the gate the port methods call `i`. On a serial line, the inter-frame
    /// delay is never shorter than the line's 3.5 character times.
    pub fn new(wire: Wire, gates: Vec<UnitProfile>, mut timing: LinkTiming) -> Self {
        if let Wire::Serial(line) = &wire {
            timing.inter_frame_delay = timing.inter_frame_delay.max(line.inter_frame_gap());
        }
        Self {
            wire,
            gates: gates.into(),
            timing,
            local: None,
        }
    }

    /// TCP connections start from `local` (an address of this host), so that controllers and
    /// firewalls can tell the nodes of a cluster apart.
    pub fn bound_to(mut self, local: Option<std::net::IpAddr>) -> Self {
        self.local = local;
        self
    }

    /// A Modbus TCP connector to `endpoint` (`host:port`).
    pub fn tcp(endpoint: impl ToString, gates: Vec<UnitProfile>, timing: LinkTiming) -> Self {
        Self::new(Wire::Tcp(endpoint.to_string()), gates, timing)
    }

    /// Like [`ModbusConnector::new`], with the timing taken from the gates' profiles
    /// ([`LinkTiming::from_profiles`]).
    pub fn from_profiles(wire: Wire, gates: Vec<UnitProfile>, overrides: TimingOverrides) -> Self {
        let timing = LinkTiming::from_profiles(&gates, overrides);
        Self::new(wire, gates, timing)
    }

    pub fn gates(&self) -> &[UnitProfile] {
        &self.gates
    }

    pub fn timing(&self) -> LinkTiming {
        self.timing
    }

    fn connect_failed(&self, kind: ConnectFailure, reason: String) -> LinkError {
        LinkError::Connect {
            endpoint: self.wire.to_string(),
            reason,
            kind,
        }
    }

    /// Connects to `endpoint`, from [`local`](Self::bound_to) when set.
    async fn dial(&self, endpoint: &str) -> io::Result<TcpStream> {
        let Some(local) = self.local else {
            return TcpStream::connect(endpoint).await;
        };
        let mut last = None;
        for remote in tokio::net::lookup_host(endpoint).await? {
            if remote.is_ipv4() != local.is_ipv4() {
                continue;
            }
            let socket = if remote.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(std::net::SocketAddr::new(local, 0))?;
            match socket.connect(remote).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{endpoint} has no address of the family of {local}"),
            )
        }))
    }

    /// A TCP connection to `endpoint`: no Nagle (requests are tiny and one at a time), and
    /// keepalive, so that a half-open connection is found while nothing is asked.
    async fn tcp_stream(&self, endpoint: &str) -> Result<TcpStream, LinkError> {
        let stream =
            match tokio::time::timeout(self.timing.connect_timeout, self.dial(endpoint)).await {
                Err(_) => {
                    return Err(self.connect_failed(
                        ConnectFailure::Timeout,
                        format!("no answer within {:?}", self.timing.connect_timeout),
                    ));
                }
                Ok(Err(e)) => {
                    let kind = match e.kind() {
                        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
                        io::ErrorKind::TimedOut => ConnectFailure::Timeout,
                        _ => ConnectFailure::Other,
                    };
                    return Err(self.connect_failed(kind, e.to_string()));
                }
                Ok(Ok(stream)) => stream,
            };
        let refused = |reason: String| self.connect_failed(ConnectFailure::Other, reason);
        stream
            .set_nodelay(true)
            .map_err(|e| refused(format!("cannot set TCP_NODELAY: {e}")))?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&keepalive)
            .map_err(|e| refused(format!("cannot set TCP keepalive: {e}")))?;
        Ok(stream)
    }

    /// The serial line opened and set up (speed, parity, data and stop bits). A device
    /// that is missing or busy is a failed connect, tried again like any other.
    fn serial_port(&self, line: &SerialLine) -> Result<tokio_serial::SerialStream, LinkError> {
        use tokio_serial::SerialPortBuilderExt;
        let parity = match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = if line.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        let mut port = tokio_serial::new(&line.device, line.baud)
            .parity(parity)
            .data_bits(tokio_serial::DataBits::Eight)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(|e| self.connect_failed(ConnectFailure::Other, e.to_string()))?;
        // Only this link may use the line: a second opener would interleave its frames.
        #[cfg(unix)]
        port.set_exclusive(true).map_err(|e| {
            self.connect_failed(ConnectFailure::Other, format!("cannot lock the line: {e}"))
        })?;
        Ok(port)
    }

    /// Opens a session with its concrete type (the trait method boxes it).
    pub async fn open(&self) -> Result<ModbusSession, LinkError> {
        let first_unit = Slave(self.gates.first().map_or(0, |g| g.unit));
        let context = match &self.wire {
            Wire::Tcp(endpoint) => {
                let stream = self.tcp_stream(endpoint).await?;
                tokio_modbus::client::tcp::attach_slave(LateReplies::new(stream), first_unit)
            }
            Wire::RtuOverTcp(endpoint) => {
                let stream = self.tcp_stream(endpoint).await?;
                tokio_modbus::client::rtu::attach_slave(QuietLine::new(stream), first_unit)
            }
            Wire::Serial(line) => {
                let port = self.serial_port(line)?;
                tokio_modbus::client::rtu::attach_slave(QuietLine::new(port), first_unit)
            }
        };
        Ok(ModbusSession {
            context,
            framing: self.wire.framing(),
            gates: Arc::clone(&self.gates),
            timing: self.timing,
            last_end: None,
            broken: None,
            timeouts: 0,
        })
    }
}

impl LinkConnector for ModbusConnector {
    fn endpoint(&self) -> String {
        self.wire.to_string()
    }

    fn connect(&self) -> BoxFuture<'_, Result<Box<dyn LinkSession>, LinkError>> {
        Box::pin(async move {
            let session = self.open().await?;
            Ok(Box::new(session) as Box<dyn LinkSession>)
        })
    }
}

/// One open Modbus connection (TCP or serial). A lost reply is asked again (reads) or reported
/// unanswered (writes); [`LinkTiming::timeouts_before_down`] in a row, or any other transport
/// error, breaks it for good: it then refuses all further work with that same error. A late
/// answer to a timed-out request is never taken for the answer to a later one: the
/// [`LateReplies`] layer passes on only the reply to the latest request.
pub struct ModbusSession {
    context: Context,
    framing: Framing,
    gates: Arc<[UnitProfile]>,
    timing: LinkTiming,
    /// When the previous transaction ended, for the inter-frame delay.
    last_end: Option<Instant>,
    broken: Option<LinkError>,
    /// Request timeouts in a row.
    timeouts: u32,
}

/// What one transaction brought back, short of a transport failure.
enum Answer {
    Response(Response),
    Exception(UnitException),
    /// No answer in time (only for requests that are not asked again).
    None(Duration),
}

impl fmt::Debug for ModbusSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModbusSession")
            .field("gates", &self.gates.len())
            .field("timing", &self.timing)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl ModbusSession {
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
        let words = match self.transact(binding.unit, request, true).await? {
            Answer::Exception(exception) => return Ok(Err(exception)),
            Answer::Response(Response::ReadHoldingRegisters(words))
                if profile.table == Table::Holding =>
            {
                words
            }
            Answer::Response(Response::ReadInputRegisters(words))
                if profile.table == Table::Input =>
            {
                words
            }
            Answer::Response(other) => return Err(self.fail(unexpected(&other))),
            Answer::None(limit) => return Err(self.fail(LinkError::Timeout(limit))),
        };
        match profile.decode(&words) {
            Ok(observation) => Ok(Ok(observation)),
            // A well-framed answer for this unit that its map cannot mean (another number of
            // registers than asked for) is that unit's failure, not the link's: the gate goes
            // offline with exception 4 (server device failure) and its neighbours carry on.
            Err(reason) => {
                tracing::warn!(
                    unit = binding.unit,
                    start,
                    len,
                    %reason,
                    "a unit's answer does not fit its profile"
                );
                Ok(Err(UNDECODABLE))
            }
        }
    }

    /// Writes `op` to gate `gate` as its profile says. An op the profile has no command
    /// for answers [`UNSUPPORTED_OP`] without touching the wire.
    pub async fn write_gate(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> Result<Result<WriteDone, WriteRefused>, LinkError> {
        let Some(binding) = self.gates.get(gate).cloned() else {
            return Ok(Err(NO_SUCH_GATE.into()));
        };
        let Some(spec) = binding.profile.write_spec(op) else {
            return Ok(Err(UNSUPPORTED_OP.into()));
        };
        let release_after = match spec {
            WriteSpec::Register { .. } => None,
            WriteSpec::Coil { pulse_ms, .. } => Some(Duration::from_millis(pulse_ms)),
        };
        Ok(self
            .write_spec(binding.unit, spec, true, binding.profile.write_echo)
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
    ) -> Result<Result<(), WriteRefused>, LinkError> {
        let Some(binding) = self.gates.get(gate).cloned() else {
            return Ok(Err(NO_SUCH_GATE.into()));
        };
        match binding.profile.write_spec(op) {
            Some(spec @ WriteSpec::Coil { .. }) => {
                let echo = binding.profile.write_echo;
                self.write_spec(binding.unit, spec, false, echo).await
            }
            Some(WriteSpec::Register { .. }) | None => Ok(Ok(())),
        }
    }

    /// One write transaction; `on` is the coil's level (registers ignore it).
    ///
    /// The answer is checked against the profile's [`WriteEcho`]. An answer to the same
    /// transaction, unit and function (tokio-modbus has matched the first two; the variant
    /// matches the third) is never the link's failure: if it does not confirm the write,
    /// only this write is refused. An answer of another function is a confused or foreign
    /// frame on the line, which is the link's.
    async fn write_spec(
        &mut self,
        unit: u8,
        spec: WriteSpec,
        on: bool,
        policy: WriteEcho,
    ) -> Result<Result<(), WriteRefused>, LinkError> {
        let (request, addr, value) = match spec {
            WriteSpec::Register { register, value } => (
                Request::WriteSingleRegister(register, value),
                register,
                value,
            ),
            WriteSpec::Coil { coil, .. } => (
                Request::WriteSingleCoil(coil, on),
                coil,
                if on { 0xFF00 } else { 0 },
            ),
        };
        let (echoed_addr, echoed_value) = match self.transact(unit, request, false).await? {
            Answer::Exception(exception) => return Ok(Err(exception.into())),
            Answer::None(limit) => return Ok(Err(WriteRefused::NoAnswer(limit))),
            Answer::Response(Response::WriteSingleRegister(a, v))
                if matches!(spec, WriteSpec::Register { .. }) =>
            {
                (a, v)
            }
            Answer::Response(Response::WriteSingleCoil(a, v))
                if matches!(spec, WriteSpec::Coil { .. }) =>
            {
                (a, if v { 0xFF00 } else { 0 })
            }
            Answer::Response(other) => {
                return Err(self.fail(LinkError::Protocol(format!(
                    "unit {unit}: a write to {addr} was answered with {other:?}"
                ))));
            }
        };
        let confirmed = match policy {
            WriteEcho::Address => echoed_addr == addr,
            WriteEcho::Exact => echoed_addr == addr && echoed_value == value,
        };
        if confirmed {
            Ok(Ok(()))
        } else {
            tracing::warn!(
                unit,
                addr,
                value,
                echoed_addr,
                echoed_value,
                ?policy,
                "a write was answered without confirming it"
            );
            Ok(Err(WriteRefused::NotConfirmed(format!(
                "unit {unit}: wrote {value} to {addr}, the answer said {echoed_value} at {echoed_addr} (write_echo = {})",
                match policy {
                    WriteEcho::Address => "address",
                    WriteEcho::Exact => "exact",
                }
            ))))
        }
    }

    /// Runs one transaction: the inter-frame pause, the unit id, the request under its
    /// timeout, and the split of the outcome into transport error / exception / answer.
    ///
    /// A timeout is a lost reply until [`LinkTiming::timeouts_before_down`] of them come in
    /// a row. With `again`, the request is then asked again on a fresh transaction (reads:
    /// asking twice changes nothing); without, [`Answer::None`] says it went unanswered.
    async fn transact(
        &mut self,
        unit: u8,
        request: Request<'static>,
        again: bool,
    ) -> Result<Answer, LinkError> {
        // Reads are the requests asked again; writes never are.
        let op = if again { Op::Read } else { Op::Write };
        let instruments = telemetry::get();
        loop {
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
            let started = Instant::now();
            let outcome = tokio::time::timeout(limit, self.context.call(request.clone())).await;
            self.last_end = Some(Instant::now());
            if let Some(i) = instruments {
                i.transaction(op, started.elapsed());
            }
            // A lost reply: no answer in time, or (on RTU, or from a confused gateway) an
            // answer that is not this request's: another unit's, or on RTU another
            // function's, which is most likely a late reply to an earlier request.
            let outcome = match outcome {
                Err(_) => Err(LinkError::Timeout(limit)),
                Ok(Err(tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch {
                    message,
                    ..
                }))) => Err(LinkError::Protocol(format!(
                    "unit {unit}: answered by another unit ({message})"
                ))),
                Ok(Err(tokio_modbus::Error::Protocol(ProtocolError::FunctionCodeMismatch {
                    request,
                    result,
                }))) if self.framing == Framing::Rtu => Err(LinkError::Protocol(format!(
                    "unit {unit}: a {request} request answered with {result:?}"
                ))),
                Ok(outcome) => Ok(outcome),
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    if let Some(i) = instruments
                        && matches!(error, LinkError::Timeout(_))
                    {
                        i.timeout(op);
                    }
                    self.timeouts += 1;
                    if self.timeouts >= self.timing.timeouts_before_down.max(1) {
                        return Err(self.fail(error));
                    }
                    tracing::debug!(
                        unit,
                        timeouts = self.timeouts,
                        "{error}; a lost reply so far"
                    );
                    if self.framing == Framing::Rtu {
                        // Nothing on an RTU line says which request a reply answers: give a
                        // straggler time to land, so that the next request's drain discards it.
                        tokio::time::sleep(self.settle_time()).await;
                    }
                    if again {
                        if let Some(i) = instruments {
                            i.retries.increment(1);
                        }
                        continue;
                    }
                    return Ok(Answer::None(limit));
                }
            };
            self.timeouts = 0;
            return match outcome {
                Err(e) => Err(self.fail(transport_error(e))),
                Ok(Err(code)) => {
                    tracing::debug!(unit, code = u8::from(code), "modbus exception");
                    telemetry::exception(u8::from(code));
                    Ok(Answer::Exception(UnitException(u8::from(code))))
                }
                Ok(Ok(response)) => Ok(Answer::Response(response)),
            };
        }
    }

    /// How long an RTU line is left to settle after a lost reply before the next request:
    /// long enough for a reply that was merely slow to arrive and be drained, short enough
    /// that a retried poll still fits well within the next request's timeout.
    fn settle_time(&self) -> Duration {
        (self.timing.request_timeout / 4)
            .min(Duration::from_millis(100))
            .max(self.timing.inter_frame_delay)
    }

    /// Marks the session unusable and hands the error back.
    fn fail(&mut self, error: LinkError) -> LinkError {
        self.broken = Some(error.clone());
        error
    }
}

impl LinkSession for ModbusSession {
    fn read(&mut self, gate: usize) -> BoxFuture<'_, Result<UnitResult<Observation>, LinkError>> {
        Box::pin(self.read_gate(gate))
    }

    fn write(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> BoxFuture<'_, Result<Result<WriteDone, WriteRefused>, LinkError>> {
        Box::pin(self.write_gate(gate, op))
    }

    fn release(
        &mut self,
        gate: usize,
        op: HwOp,
    ) -> BoxFuture<'_, Result<Result<(), WriteRefused>, LinkError>> {
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use gatehouse_actors::gate::HwState;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::profile::ProfileSet;

    /// What the scripted controller saw: unit id, request PDU, when it arrived.
    type Seen = Arc<Mutex<Vec<(u8, Vec<u8>, Instant)>>>;

    /// A hand-rolled Modbus TCP responder: `answer` maps (unit, request PDU) to a response
    /// PDU, or to `None` for silence. Written at byte level so that it can also misbehave
    /// in ways a conforming server library would not allow.
    async fn scripted<F>(answer: F) -> (SocketAddr, Seen)
    where
        F: Fn(u8, &[u8]) -> Option<Vec<u8>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            loop {
                let mut header = [0u8; 7];
                if socket.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                let mut pdu = vec![0u8; len - 1];
                if socket.read_exact(&mut pdu).await.is_err() {
                    return;
                }
                let unit = header[6];
                log.lock()
                    .unwrap()
                    .push((unit, pdu.clone(), Instant::now()));
                if let Some(reply) = answer(unit, &pdu) {
                    let mut frame = Vec::new();
                    frame.extend_from_slice(&header[0..4]);
                    frame.extend_from_slice(&(reply.len() as u16 + 1).to_be_bytes());
                    frame.push(unit);
                    frame.extend_from_slice(&reply);
                    if socket.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        });
        (addr, seen)
    }

    fn registers(function: u8, words: &[u16]) -> Vec<u8> {
        let mut pdu = vec![function, (words.len() * 2) as u8];
        for w in words {
            pdu.extend_from_slice(&w.to_be_bytes());
        }
        pdu
    }

    fn profile(id: &str) -> Arc<Profile> {
        ProfileSet::builtin().unwrap().get(id).unwrap().clone()
    }

    fn timing(request_ms: u64, delay_ms: u64) -> LinkTiming {
        LinkTiming {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_millis(request_ms),
            inter_frame_delay: Duration::from_millis(delay_ms),
            timeouts_before_down: 3,
        }
    }

    /// A responder that sees each request's number, transaction id and PDU, and answers
    /// with any frames it likes, `(transaction id, PDU)` each: none (silence), or a late
    /// answer to an earlier request before the current one.
    async fn framed<F>(answer: F) -> SocketAddr
    where
        F: Fn(usize, u16, &[u8]) -> Vec<(u16, Vec<u8>)> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            for n in 0.. {
                let mut header = [0u8; 7];
                if socket.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                let mut pdu = vec![0u8; len - 1];
                if socket.read_exact(&mut pdu).await.is_err() {
                    return;
                }
                let tx = u16::from_be_bytes([header[0], header[1]]);
                for (tx, reply) in answer(n, tx, &pdu) {
                    let mut frame = tx.to_be_bytes().to_vec();
                    frame.extend_from_slice(&[0, 0]);
                    frame.extend_from_slice(&(reply.len() as u16 + 1).to_be_bytes());
                    frame.push(header[6]);
                    frame.extend_from_slice(&reply);
                    if socket.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_lost_reply_is_asked_again_and_its_late_answer_is_not_taken_for_the_next() {
        // The first read goes unanswered; its answer (open) comes late, just before the
        // answer to the retry (closed). The retry's answer is the one that counts.
        let addr = framed(|n, tx, _| match n {
            0 => vec![],
            1 => vec![
                (tx - 1, registers(0x03, &[16, 100, 0, 0, 0, 0])),
                (tx, registers(0x03, &[17, 0, 0, 0, 0, 0])),
            ],
            _ => vec![(tx, registers(0x03, &[17, 0, 0, 0, 0, 0]))],
        })
        .await;
        let mut s = one_gate(addr, profile("came-zlb30"), timing(200, 0)).await;
        let obs = s.read_gate(0).await.unwrap().unwrap();
        assert_eq!(
            obs.state,
            HwState::Closed,
            "the retry's answer, not the late one"
        );
        // The session is fine, and the count of timeouts in a row starts again.
        for _ in 0..3 {
            assert_eq!(
                s.read_gate(0).await.unwrap().unwrap().state,
                HwState::Closed
            );
        }
    }

    #[tokio::test]
    async fn an_unanswered_write_is_reported_without_taking_the_link_down() {
        let addr = framed(|n, tx, pdu| match (n, pdu[0]) {
            (0, 0x06) => vec![],
            _ => vec![(tx, registers(0x03, &[17, 0, 0, 0, 0, 0]))],
        })
        .await;
        let mut s = one_gate(addr, profile("came-zlb30"), timing(200, 0)).await;
        assert_eq!(
            s.write_gate(0, HwOp::Open).await,
            Ok(Err(WriteRefused::NoAnswer(Duration::from_millis(200))))
        );
        assert_eq!(
            s.read_gate(0).await.unwrap().unwrap().state,
            HwState::Closed
        );
    }

    async fn session(addr: SocketAddr, gates: Vec<UnitProfile>, t: LinkTiming) -> ModbusSession {
        ModbusConnector::tcp(addr, gates, t).open().await.unwrap()
    }

    /// A session to one gate, unit 1, on `profile`.
    async fn one_gate(addr: SocketAddr, profile: Arc<Profile>, t: LinkTiming) -> ModbusSession {
        session(addr, vec![UnitProfile { unit: 1, profile }], t).await
    }

    #[tokio::test]
    async fn connections_start_from_the_bound_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let local: std::net::IpAddr = "127.0.0.23".parse().unwrap();
        let connector =
            ModbusConnector::tcp(&endpoint, Vec::new(), timing(500, 0)).bound_to(Some(local));
        let (dialed, accepted) = tokio::join!(connector.tcp_stream(&endpoint), listener.accept());
        dialed.unwrap();
        assert_eq!(accepted.unwrap().1.ip(), local);
        // An address of the other family cannot reach an IPv4 endpoint: a failed connect.
        let v6 = ModbusConnector::tcp(&endpoint, Vec::new(), timing(500, 0))
            .bound_to(Some("::1".parse().unwrap()));
        assert!(v6.tcp_stream(&endpoint).await.is_err());
    }

    #[tokio::test]
    async fn coil_commands_pulse_and_release() {
        // Write requests are echoed, as a conforming controller does.
        let (addr, seen) = scripted(|_, pdu| Some(pdu.to_vec())).await;
        let gates = vec![UnitProfile {
            unit: 7,
            profile: profile("generic"),
        }];
        let mut s = session(addr, gates, timing(500, 0)).await;

        let done = s.write_gate(0, HwOp::Close).await.unwrap().unwrap();
        assert_eq!(done.release_after, Some(Duration::from_millis(500)));
        s.release_gate(0, HwOp::Close).await.unwrap().unwrap();

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].0, seen[0].1.as_slice()),
            (7, &[0x05, 0, 1, 0xFF, 0][..])
        );
        assert_eq!(
            (seen[1].0, seen[1].1.as_slice()),
            (7, &[0x05, 0, 1, 0, 0][..])
        );
    }

    #[tokio::test]
    async fn unsupported_ops_and_register_releases_stay_off_the_wire() {
        let (addr, seen) = scripted(|_, pdu| Some(pdu.to_vec())).await;
        let mut s = one_gate(addr, profile("ha-cover"), timing(500, 0)).await;

        assert_eq!(
            s.write_gate(0, HwOp::Reset).await,
            Ok(Err(UNSUPPORTED_OP.into()))
        );
        assert_eq!(s.release_gate(0, HwOp::Open).await, Ok(Ok(())));
        assert_eq!(s.release_gate(0, HwOp::Warn).await, Ok(Ok(())));
        assert_eq!(s.read_gate(5).await, Ok(Err(NO_SUCH_GATE)));
        assert_eq!(
            s.write_gate(5, HwOp::Open).await,
            Ok(Err(NO_SUCH_GATE.into()))
        );
        assert!(seen.lock().unwrap().is_empty());

        // HA's close is the value 0 in register 0: a plain register write, no pulse.
        let done = s.write_gate(0, HwOp::Close).await.unwrap().unwrap();
        assert_eq!(done.release_after, None);
        assert_eq!(seen.lock().unwrap()[0].1, [0x06, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn input_table_profiles_read_input_registers() {
        let (addr, seen) = scripted(|_, pdu| match pdu[0] {
            0x04 => Some(registers(0x04, &[2])),
            _ => Some(vec![pdu[0] | 0x80, 1]),
        })
        .await;
        let text = include_str!("../../config/profiles/ha-cover.toml")
            .replace("table = \"holding\"", "table = \"input\"");
        let p = Profile::parse("ha-input", "ha-input.toml", &text).unwrap();
        let gates = vec![UnitProfile {
            unit: 3,
            profile: Arc::new(p),
        }];
        let mut s = session(addr, gates, timing(500, 0)).await;

        let obs = s.read_gate(0).await.unwrap().unwrap();
        assert_eq!(obs.state, HwState::Opening);
        assert_eq!(seen.lock().unwrap()[0].1, [0x04, 0, 1, 0, 1]);
    }

    #[tokio::test]
    async fn an_exception_is_the_units_problem_and_the_session_goes_on() {
        let (addr, _) = scripted(|unit, pdu| match unit {
            1 => Some(registers(0x03, &[16, 100, 0, 0, 0x5678, 0x0001])),
            _ => Some(vec![pdu[0] | 0x80, 0x0B]),
        })
        .await;
        let came = profile("came-zlb30");
        let gates = vec![
            UnitProfile {
                unit: 1,
                profile: came.clone(),
            },
            UnitProfile {
                unit: 2,
                profile: came,
            },
        ];
        let mut s = session(addr, gates, timing(500, 0)).await;

        assert_eq!(s.read_gate(1).await, Ok(Err(UnitException(0x0B))));
        assert_eq!(
            s.write_gate(1, HwOp::Open).await,
            Ok(Err(UnitException(0x0B).into()))
        );
        let obs = s.read_gate(0).await.unwrap().unwrap();
        assert_eq!(obs.state, HwState::Open);
        assert_eq!(obs.cycles.map(|c| c.value), Some(0x0001_5678));
    }

    #[tokio::test]
    async fn a_short_block_is_that_units_failure_and_the_session_goes_on() {
        // Unit 2 answers three registers where its map has six; unit 1 answers in full.
        let (addr, _) = scripted(|unit, _| match unit {
            2 => Some(registers(0x03, &[17, 0, 0])),
            _ => Some(registers(0x03, &[17, 0, 0, 0, 0, 0])),
        })
        .await;
        let came = profile("came-zlb30");
        let gates = vec![
            UnitProfile {
                unit: 1,
                profile: came.clone(),
            },
            UnitProfile {
                unit: 2,
                profile: came,
            },
        ];
        let mut s = session(addr, gates, timing(500, 0)).await;
        assert_eq!(s.read_gate(1).await, Ok(Err(UNDECODABLE)));
        assert_eq!(
            s.read_gate(0).await.unwrap().unwrap().state,
            HwState::Closed
        );
    }

    /// The CAME profile with `write_echo` set as given.
    fn came_with_echo(echo: &str) -> Arc<Profile> {
        let text = format!(
            "write_echo = \"{echo}\"\n{}",
            include_str!("../../config/profiles/came-zlb30.toml")
        );
        Arc::new(Profile::parse("came-echo", "came-echo.toml", &text).unwrap())
    }

    /// A controller that clears its command register as it takes the command and answers
    /// the write with the register's content (0), and serves its status block.
    async fn clearing_controller() -> SocketAddr {
        let (addr, _) = scripted(|_, pdu| match pdu[0] {
            0x06 => Some(vec![0x06, pdu[1], pdu[2], 0, 0]),
            _ => Some(registers(0x03, &[17, 0, 0, 0, 0, 0])),
        })
        .await;
        addr
    }

    #[tokio::test]
    async fn by_default_an_answer_naming_the_register_written_confirms_the_write() {
        let addr = clearing_controller().await;
        let mut s = one_gate(addr, profile("came-zlb30"), timing(500, 0)).await;
        assert_eq!(
            s.write_gate(0, HwOp::Open).await,
            Ok(Ok(WriteDone {
                release_after: None
            }))
        );
    }

    #[tokio::test]
    async fn with_an_exact_echo_another_value_refuses_that_write_and_the_session_goes_on() {
        let addr = clearing_controller().await;
        let mut s = one_gate(addr, came_with_echo("exact"), timing(500, 0)).await;
        let outcome = s.write_gate(0, HwOp::Open).await;
        assert!(
            matches!(outcome, Ok(Err(WriteRefused::NotConfirmed(_)))),
            "{outcome:?}"
        );
        // Not the link's failure: the next transaction runs.
        let obs = s.read_gate(0).await.unwrap().unwrap();
        assert_eq!(obs.state, HwState::Closed);
    }

    #[tokio::test]
    async fn an_answer_for_another_register_never_confirms_a_write() {
        let (addr, _) = scripted(|_, pdu| match pdu[0] {
            0x06 => Some(vec![0x06, 0, 99, pdu[3], pdu[4]]),
            _ => Some(registers(0x03, &[17, 0, 0, 0, 0, 0])),
        })
        .await;
        let mut s = one_gate(addr, profile("came-zlb30"), timing(500, 0)).await;
        let outcome = s.write_gate(0, HwOp::Open).await;
        assert!(
            matches!(outcome, Ok(Err(WriteRefused::NotConfirmed(_)))),
            "{outcome:?}"
        );
        assert!(s.read_gate(0).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_answer_of_another_function_is_a_protocol_error() {
        // A coil answer to a register write: a confused or foreign frame on the line.
        let (addr, seen) = scripted(|_, _| Some(vec![0x05, 0, 200, 0xFF, 0])).await;
        let mut s = one_gate(addr, profile("came-zlb30"), timing(500, 0)).await;

        let outcome = s.write_gate(0, HwOp::Open).await;
        assert!(
            matches!(outcome, Err(LinkError::Protocol(_))),
            "{outcome:?}"
        );
        // The broken session answers with the same error and sends nothing more.
        let again = s.read_gate(0).await;
        assert_eq!(again.map(|_| ()), outcome.map(|_| ()));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (addr, seen) = scripted(|_, _| None).await;
        let mut s = one_gate(addr, profile("came-zlb30"), timing(150, 0)).await;
        assert_eq!(
            s.read_gate(0).await,
            Err(LinkError::Timeout(Duration::from_millis(150)))
        );
        // Three requests went out (the first and two retries) before the link was down.
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn transactions_keep_the_inter_frame_delay() {
        let (addr, seen) = scripted(|_, _| Some(registers(0x03, &[17, 0, 0, 0, 0, 0]))).await;
        let mut s = one_gate(addr, profile("came-zlb30"), timing(500, 80)).await;
        for _ in 0..3 {
            s.read_gate(0).await.unwrap().unwrap();
        }
        let seen = seen.lock().unwrap();
        for pair in seen.windows(2) {
            let gap = pair[1].2 - pair[0].2;
            assert!(gap >= Duration::from_millis(80), "{gap:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        // Bind then drop: the port is very likely closed for the next few milliseconds.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let connector = ModbusConnector::tcp(addr, Vec::new(), timing(500, 0));
        match connector.connect().await {
            Err(LinkError::Connect { endpoint, kind, .. }) => {
                assert_eq!(endpoint, addr.to_string());
                assert_eq!(kind, ConnectFailure::Refused);
            }
            Err(other) => panic!("expected a connect error, got {other:?}"),
            Ok(_) => panic!("expected a connect error, got a session"),
        }
    }

    #[test]
    fn timing_comes_from_the_slowest_profile_unless_overridden() {
        let mut slow = (*profile("generic")).clone();
        slow.request_timeout = Duration::from_millis(2500);
        slow.inter_frame_delay = Duration::from_millis(40);
        let gates = vec![
            UnitProfile {
                unit: 1,
                profile: profile("came-zlb30"),
            },
            UnitProfile {
                unit: 2,
                profile: Arc::new(slow),
            },
        ];
        let t = LinkTiming::from_profiles(&gates, TimingOverrides::default());
        assert_eq!(t.request_timeout, Duration::from_millis(2500));
        assert_eq!(t.inter_frame_delay, Duration::from_millis(40));
        assert_eq!(t.connect_timeout, DEFAULT_CONNECT_TIMEOUT);

        let t = LinkTiming::from_profiles(
            &gates[..1],
            TimingOverrides {
                connect_timeout: Some(Duration::from_millis(700)),
                request_timeout: None,
                inter_frame_delay: Some(Duration::from_millis(15)),
                timeouts_before_down: None,
            },
        );
        assert_eq!(t.request_timeout, Duration::from_millis(800));
        assert_eq!(t.inter_frame_delay, Duration::from_millis(15));
        assert_eq!(t.connect_timeout, Duration::from_millis(700));
        assert_eq!(
            t.timeouts_before_down,
            crate::profile::DEFAULT_TIMEOUTS_BEFORE_DOWN
        );

        // A controller may ride out more lost replies than its profile says, or fewer.
        for wanted in [1, 7] {
            let t = LinkTiming::from_profiles(
                &gates,
                TimingOverrides {
                    timeouts_before_down: Some(wanted),
                    ..TimingOverrides::default()
                },
            );
            assert_eq!(t.timeouts_before_down, wanted);
        }
    }
}
