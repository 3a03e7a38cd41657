//! One simulated gate controller: a Modbus TCP listener (or RTU over TCP, or RTU on a serial
//! line) whose unit ids are gates.
//!
//! The controller speaks whatever register profile it was given: reads of the status block
//! return the gates' physics encoded by the profile, command writes (register values or coil
//! rising edges) move the gates, and everything written is kept in a bounded log that tests
//! read back. Faults are injected live through [`SimController::inject`]; link faults (drop,
//! restart) go to the listener task, the rest are state checked on every request.
//!
//! All of a controller's state sits behind one mutex, taken once per request: at 100 units per
//! controller and a few requests in flight per link, contention is negligible, and it keeps a
//! read, the write it races with and the fault table consistent without any finer locking.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::{self, Either, Ready};
use gatehouse_actors::gate::{HwOp, Observation};
use gatehouse_adapters::profile::{Profile, Table, WriteSpec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_modbus::server::{rtu, rtu_over_tcp, tcp};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tracing::{debug, info, warn};

use crate::farm::SimWire;
use crate::gate::{Gate, Motion};
use crate::transport::SimStream;

/// Writes kept per controller; the oldest go first. Enough for any test, small enough for 100.
pub const WRITE_LOG_CAPACITY: usize = 4096;

/// Modbus caps one register read at 125 registers.
pub const MAX_READ_REGISTERS: u16 = 125;

/// Modbus caps one coil read at 2000 coils.
pub const MAX_READ_COILS: u16 = 2000;

/// Lowest and highest unit ids a gate may have (0 is broadcast, 248 and up are reserved).
pub const MIN_UNIT: u8 = 1;
pub const MAX_UNIT: u8 = 247;

/// How long to wait before trying again to listen after a restart found the port taken.
const REBIND_RETRY: Duration = Duration::from_millis(100);

/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A fault injected into one controller. Every fault with a duration clears itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close every open connection now; the listener stays up.
    DropConnections,
    /// The controller reboots: connections drop, new ones are refused for `down`, command
    /// coils come back off, and moving gates stop where they are (positions are kept).
    Restart { down: Duration },
    /// Requests are swallowed: no reply at all.
    Stall { duration: Duration },
    /// Writes are swallowed (not carried out, not answered); reads are answered as usual:
    /// a controller whose command path hangs while its status keeps updating.
    DropWrites { duration: Duration },
    /// Every reply is held back by `delay`.
    Slow { delay: Duration, duration: Duration },
    /// `unit` answers every request with the exception `code`; the other units are fine.
    Exception {
        unit: u8,
        code: u8,
        duration: Duration,
    },
    /// Random bytes are sent in place of every response.
    Garbage { duration: Duration },
    /// The photo-eye of `unit` sees something (`on`) or is clear again.
    Obstruct { unit: u8, on: bool },
    /// The motor of `unit` trips and reports `code` until a reset is written.
    MotorFault { unit: u8, code: u16 },
    /// Someone presses the radio remote or wall button of `unit`.
    LocalPress { unit: u8 },
}

impl Fault {
    /// The unit the fault is about, when it is about one gate.
    pub fn unit(&self) -> Option<u8> {
        match *self {
            Fault::Exception { unit, .. }
            | Fault::Obstruct { unit, .. }
            | Fault::MotorFault { unit, .. }
            | Fault::LocalPress { unit } => Some(unit),
            _ => None,
        }
    }
}

/// Why an injection could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("controller {controller} has no unit {unit}")]
    UnknownUnit { controller: String, unit: u8 },
    #[error("controller {0} is shut down")]
    ShutDown(String),
}

/// How a write was addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Coil,
    Register,
}

/// One write as the controller received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRecord {
    pub unit: u8,
    pub kind: WriteKind,
    pub address: u16,
    /// The register value, or 1/0 for a coil on/off.
    pub value: u16,
    /// The command it triggered (a coil's rising edge, a known register value).
    pub op: Option<HwOp>,
    /// False when the controller answered it with an exception.
    pub accepted: bool,
    pub at: Instant,
    /// The connection it came on (none on a serial line): tells writers apart.
    pub from: Option<SocketAddr>,
}

/// A gate as the simulator sees it, for tests and the control port.
#[derive(Debug, Clone, PartialEq)]
pub struct SimGateView {
    pub unit: u8,
    /// What a read of the status block decodes to.
    pub observation: Observation,
    pub motion: Motion,
    /// Position in percent with the fraction kept.
    pub position: f64,
    pub last_warning: Option<Instant>,
    /// The profile's command coils and whether each is on now (empty for register profiles).
    pub coils: Vec<(u16, HwOp, bool)>,
}

/// The timed faults in force, with the time each has left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveFaults {
    /// Restarting: the listener is closed.
    pub down: bool,
    pub stall: Option<Duration>,
    /// Writes swallowed, for this long still.
    pub drop_writes: Option<Duration>,
    /// The delay, and the time left.
    pub slow: Option<(Duration, Duration)>,
    /// Unit, exception code and time left.
    pub exceptions: Vec<(u8, u8, Duration)>,
    pub garbage: Option<Duration>,
}

impl ActiveFaults {
    pub fn is_empty(&self) -> bool {
        *self == ActiveFaults::default()
    }
}

/// What a controller is built from; see `farm::ControllerSpec` for the public form.
pub(crate) struct ControllerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub wire: SimWire,
    pub units: Vec<u8>,
    pub travel: Duration,
}

enum LinkCommand {
    Drop(oneshot::Sender<()>),
    Restart(Duration, oneshot::Sender<()>),
    Shutdown,
}

struct Slot {
    gate: Gate,
    /// Bit `i` is the state of the profile's `i`-th command coil.
    coils: u8,
}

#[derive(Default)]
struct State {
    gates: BTreeMap<u8, Slot>,
    stall_until: Option<Instant>,
    drop_writes_until: Option<Instant>,
    slow: Option<(Duration, Instant)>,
    exceptions: Vec<(u8, u8, Instant)>,
    writes: VecDeque<WriteRecord>,
}

/// What the listener task, the connections and the handles share.
pub(crate) struct Shared {
    name: String,
    profile: Arc<Profile>,
    addr: SocketAddr,
    /// Where it is reached, as printed: the address, `rtu+tcp://` and the address, or the
    /// serial device.
    place: String,
    /// The profile's command coils by address, at most one per command.
    coil_map: Vec<(u16, HwOp)>,
    /// Time zero for `garbage_until`.
    epoch: Instant,
    /// Nanoseconds after `epoch` until which responses are noise; 0 = off. An atomic rather
    /// than mutex state because every write on every connection checks it.
    garbage_until: AtomicU64,
    down: AtomicBool,
    state: Mutex<State>,
    link: mpsc::UnboundedSender<LinkCommand>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data that is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn garbage_active(&self, now: Instant) -> bool {
        let until = self.garbage_until.load(Ordering::Relaxed);
        until != 0 && nanos_since(self.epoch, now) < until
    }

    fn coil_index(&self, coil: u16) -> Option<usize> {
        self.coil_map.iter().position(|(c, _)| *c == coil)
    }

    fn coil_span(&self) -> Option<(u16, u16)> {
        let lo = self.coil_map.iter().map(|(c, _)| *c).min()?;
        let hi = self.coil_map.iter().map(|(c, _)| *c).max()?;
        Some((lo, hi))
    }

    /// Answers one request, and says how long to hold the answer back.
    fn handle(
        &self,
        req: &SlaveRequest<'_>,
        now: Instant,
        from: Option<SocketAddr>,
    ) -> (Reply, Option<Duration>) {
        // Down on a serial line: the line is still there, the controller is silent.
        if self.down.load(Ordering::Relaxed) {
            return (Ok(None), None);
        }
        let mut st = self.lock();
        if st.stall_until.is_some_and(|t| now < t) {
            return (Ok(None), None);
        }
        let write = matches!(
            req.request,
            Request::WriteSingleCoil(..)
                | Request::WriteMultipleCoils(..)
                | Request::WriteSingleRegister(..)
                | Request::WriteMultipleRegisters(..)
        );
        if write && st.drop_writes_until.is_some_and(|t| now < t) {
            return (Ok(None), None);
        }
        let delay = st.slow.filter(|(_, until)| now < *until).map(|(d, _)| d);
        let unit = req.slave;
        st.exceptions.retain(|(_, _, until)| now < *until);
        if let Some((_, code, _)) = st.exceptions.iter().find(|(u, _, _)| *u == unit) {
            return (Err(ExceptionCode::new(*code)), delay);
        }
        let State { gates, writes, .. } = &mut *st;
        let Some(slot) = gates.get_mut(&unit) else {
            return (Err(ExceptionCode::GatewayTargetDevice), delay);
        };
        let mut log = |kind, address, value, op, accepted| {
            if writes.len() >= WRITE_LOG_CAPACITY {
                writes.pop_front();
            }
            writes.push_back(WriteRecord {
                unit,
                kind,
                address,
                value,
                op,
                accepted,
                at: now,
                from,
            });
        };
        let reply = match &req.request {
            Request::ReadHoldingRegisters(addr, qty) => self
                .read_block(Table::Holding, &slot.gate, *addr, *qty, now)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(addr, qty) => self
                .read_block(Table::Input, &slot.gate, *addr, *qty, now)
                .map(Response::ReadInputRegisters),
            Request::ReadCoils(addr, qty) => {
                self.read_coils(slot, *addr, *qty).map(Response::ReadCoils)
            }
            Request::WriteSingleCoil(addr, on) => match self.coil_index(*addr) {
                Some(i) => {
                    let op = self.set_coil(slot, i, *on, now);
                    log(WriteKind::Coil, *addr, u16::from(*on), op, true);
                    Ok(Response::WriteSingleCoil(*addr, *on))
                }
                None => {
                    log(WriteKind::Coil, *addr, u16::from(*on), None, false);
                    Err(ExceptionCode::IllegalDataAddress)
                }
            },
            Request::WriteMultipleCoils(addr, values) => {
                let targets: Option<Vec<usize>> = (0..values.len())
                    .map(|k| {
                        let a = u16::try_from(k).ok().and_then(|k| addr.checked_add(k))?;
                        self.coil_index(a)
                    })
                    .collect();
                let accepted = targets.is_some();
                for (k, on) in values.iter().enumerate() {
                    let address = addr.wrapping_add(k as u16);
                    let op = match &targets {
                        Some(t) => self.set_coil(slot, t[k], *on, now),
                        None => None,
                    };
                    log(WriteKind::Coil, address, u16::from(*on), op, accepted);
                }
                if accepted {
                    Ok(Response::WriteMultipleCoils(*addr, values.len() as u16))
                } else {
                    Err(ExceptionCode::IllegalDataAddress)
                }
            }
            Request::WriteSingleRegister(addr, value) => match self.register_op(*addr, *value) {
                Ok(op) => {
                    apply(&mut slot.gate, op, now);
                    log(WriteKind::Register, *addr, *value, Some(op), true);
                    Ok(Response::WriteSingleRegister(*addr, *value))
                }
                Err(code) => {
                    log(WriteKind::Register, *addr, *value, None, false);
                    Err(code)
                }
            },
            Request::WriteMultipleRegisters(addr, values) => {
                // All or nothing: a controller validates the whole request before acting.
                let ops: Result<Vec<HwOp>, ExceptionCode> = values
                    .iter()
                    .enumerate()
                    .map(|(k, v)| {
                        let a = u16::try_from(k)
                            .ok()
                            .and_then(|k| addr.checked_add(k))
                            .ok_or(ExceptionCode::IllegalDataAddress)?;
                        self.register_op(a, *v)
                    })
                    .collect();
                let accepted = ops.is_ok();
                for (k, value) in values.iter().enumerate() {
                    let op = ops.as_ref().ok().map(|ops| ops[k]);
                    if let Some(op) = op {
                        apply(&mut slot.gate, op, now);
                    }
                    let address = addr.wrapping_add(k as u16);
                    log(WriteKind::Register, address, *value, op, accepted);
                }
                ops.map(|_| Response::WriteMultipleRegisters(*addr, values.len() as u16))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        (reply.map(Some), delay)
    }

    fn read_block(
        &self,
        table: Table,
        gate: &Gate,
        addr: u16,
        qty: u16,
        now: Instant,
    ) -> Result<Vec<u16>, ExceptionCode> {
        if qty == 0 || qty > MAX_READ_REGISTERS {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let start = u32::from(self.profile.block_start);
        let end = start + u32::from(self.profile.block_len);
        let (first, last) = (u32::from(addr), u32::from(addr) + u32::from(qty));
        if table != self.profile.table || first < start || last > end {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let block = self.profile.encode(&gate.observation(now));
        let from = (first - start) as usize;
        Ok(block[from..from + usize::from(qty)].to_vec())
    }

    fn read_coils(&self, slot: &Slot, addr: u16, qty: u16) -> Result<Vec<bool>, ExceptionCode> {
        if qty == 0 || qty > MAX_READ_COILS {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let Some((lo, hi)) = self.coil_span() else {
            return Err(ExceptionCode::IllegalDataAddress);
        };
        let last = u32::from(addr) + u32::from(qty) - 1;
        if addr < lo || last > u32::from(hi) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok((addr..=hi)
            .take(usize::from(qty))
            .map(|a| {
                self.coil_index(a)
                    .is_some_and(|i| slot.coils & (1 << i) != 0)
            })
            .collect())
    }

    /// Sets a command coil; a rising edge runs its command, which is returned.
    fn set_coil(&self, slot: &mut Slot, index: usize, on: bool, now: Instant) -> Option<HwOp> {
        let bit = 1u8 << index;
        let was = slot.coils & bit != 0;
        if on {
            slot.coils |= bit;
        } else {
            slot.coils &= !bit;
        }
        if on && !was {
            let op = self.coil_map[index].1;
            apply(&mut slot.gate, op, now);
            Some(op)
        } else {
            None
        }
    }

    fn register_op(&self, register: u16, value: u16) -> Result<HwOp, ExceptionCode> {
        if !self.profile.is_command_register(register) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        self.profile
            .op_for_register(register, value)
            .ok_or(ExceptionCode::IllegalDataValue)
    }
}

type Reply = Result<Option<Response>, ExceptionCode>;

fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Runs a command on a gate as its controller would. Refusals are the controller's own
/// interlocks: the write was taken, the gate just does not move.
fn apply(gate: &mut Gate, op: HwOp, now: Instant) {
    let refused = match op {
        HwOp::Open => gate.open(now).err(),
        HwOp::Close => gate.close(now).err(),
        HwOp::Stop => {
            gate.stop(now);
            None
        }
        HwOp::Reset => {
            gate.reset();
            None
        }
        HwOp::Warn => {
            gate.warn(now);
            None
        }
    };
    if let Some(why) = refused {
        debug!(op = op.as_str(), %why, "controller refused command");
    }
}

/// The Modbus service of one connection.
struct Service {
    shared: Arc<Shared>,
    /// The peer, on TCP.
    peer: Option<SocketAddr>,
}

type ReplyFuture = Either<Ready<Reply>, Pin<Box<dyn Future<Output = Reply> + Send>>>;

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = ReplyFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        // The request takes effect now; only the answer is late, as behind a slow gateway.
        match self.shared.handle(&req, Instant::now(), self.peer) {
            (reply, None) => Either::Left(future::ready(reply)),
            (reply, Some(delay)) => Either::Right(Box::pin(async move {
                tokio::time::sleep(delay).await;
                reply
            })),
        }
    }
}

/// A handle on one running controller. Cheap to clone.
#[derive(Clone)]
pub struct SimController {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimController")
            .field("name", &self.shared.name)
            .field("addr", &self.shared.addr)
            .field("profile", &self.shared.profile.id)
            .finish()
    }
}

impl SimController {
    /// Binds the listener and starts serving. Returns the handle and the listener task.
    pub(crate) async fn start(
        config: ControllerConfig,
        profile: Arc<Profile>,
    ) -> io::Result<(SimController, JoinHandle<()>)> {
        let (listener, addr) = match &config.wire {
            SimWire::Serial { .. } => (None, config.bind),
            SimWire::Tcp | SimWire::RtuOverTcp => {
                let listener = TcpListener::bind(config.bind).await?;
                let addr = listener.local_addr()?;
                (Some(listener), addr)
            }
        };
        // A serial line that cannot be opened fails the start, as a port that cannot be
        // bound does.
        let serial = match &config.wire {
            SimWire::Serial { device, baud } => Some(open_serial(device, *baud)?),
            _ => None,
        };
        let now = Instant::now();
        let bits = profile.cycle_bits();
        let gates = config
            .units
            .iter()
            .map(|&unit| {
                let slot = Slot {
                    gate: Gate::new(config.travel, bits, now),
                    coils: 0,
                };
                (unit, slot)
            })
            .collect();
        let coil_map = [HwOp::Open, HwOp::Close, HwOp::Stop, HwOp::Reset, HwOp::Warn]
            .into_iter()
            .filter_map(|op| match profile.write_spec(op) {
                Some(WriteSpec::Coil { coil, .. }) => Some((coil, op)),
                _ => None,
            })
            .collect();
        let (link, rx) = mpsc::unbounded_channel();
        let place = match &config.wire {
            SimWire::Tcp => addr.to_string(),
            SimWire::RtuOverTcp => format!("rtu+tcp://{addr}"),
            SimWire::Serial { device, .. } => device.display().to_string(),
        };
        let shared = Arc::new(Shared {
            name: config.name,
            profile,
            addr,
            place,
            coil_map,
            epoch: now,
            garbage_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
            state: Mutex::new(State {
                gates,
                ..State::default()
            }),
            link,
        });
        let task = match (listener, serial, config.wire) {
            (_, Some(port), SimWire::Serial { device, baud }) => {
                tokio::spawn(run_serial(Arc::clone(&shared), port, (device, baud), rx))
            }
            (Some(listener), _, wire) => tokio::spawn(run_link(
                Arc::clone(&shared),
                listener,
                wire == SimWire::RtuOverTcp,
                rx,
            )),
            _ => unreachable!("a TCP controller has its listener, a serial one its port"),
        };
        Ok((SimController { shared }, task))
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where the controller listens (the real port when it was asked for port 0); for a
    /// controller on a serial line, the unused address it was configured with.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Where the controller is reached: its address (Modbus TCP), `rtu+tcp://` and its
    /// address (RTU over TCP), or its serial device.
    pub fn place(&self) -> &str {
        &self.shared.place
    }

    pub fn profile(&self) -> &Arc<Profile> {
        &self.shared.profile
    }

    pub fn units(&self) -> Vec<u8> {
        self.shared.lock().gates.keys().copied().collect()
    }

    /// A snapshot of one gate.
    pub fn gate(&self, unit: u8) -> Option<SimGateView> {
        let now = Instant::now();
        let st = self.shared.lock();
        st.gates.get(&unit).map(|slot| self.view(unit, slot, now))
    }

    /// Snapshots of every gate, by unit id.
    pub fn gates(&self) -> Vec<SimGateView> {
        let now = Instant::now();
        let st = self.shared.lock();
        st.gates
            .iter()
            .map(|(unit, slot)| self.view(*unit, slot, now))
            .collect()
    }

    fn view(&self, unit: u8, slot: &Slot, now: Instant) -> SimGateView {
        SimGateView {
            unit,
            observation: slot.gate.observation(now),
            motion: slot.gate.motion(now),
            position: slot.gate.position_percent(now),
            last_warning: slot.gate.last_warning(),
            coils: self
                .shared
                .coil_map
                .iter()
                .enumerate()
                .map(|(i, (coil, op))| (*coil, *op, slot.coils & (1 << i) != 0))
                .collect(),
        }
    }

    /// Whether a command coil of `unit` is on now (`None` for an unknown unit or coil).
    pub fn coil(&self, unit: u8, coil: u16) -> Option<bool> {
        let i = self.shared.coil_index(coil)?;
        let st = self.shared.lock();
        st.gates.get(&unit).map(|slot| slot.coils & (1 << i) != 0)
    }

    /// Every write received, oldest first (the last [`WRITE_LOG_CAPACITY`]).
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.shared.lock().writes.iter().copied().collect()
    }

    /// Runs `f` on one gate with the current time, for tests that need a state the Modbus
    /// side cannot produce quickly (a counter about to wrap, a gate already open).
    pub fn with_gate<R>(&self, unit: u8, f: impl FnOnce(&mut Gate, Instant) -> R) -> Option<R> {
        let now = Instant::now();
        let mut st = self.shared.lock();
        st.gates.get_mut(&unit).map(|slot| f(&mut slot.gate, now))
    }

    /// Applies a fault. Returns once it is in force: for `DropConnections` and `Restart`,
    /// once the listener task has closed the connections (and, for a restart, the port).
    pub async fn inject(&self, fault: Fault) -> Result<(), SimError> {
        let now = Instant::now();
        info!(controller = %self.shared.name, ?fault, "inject");
        match fault {
            Fault::DropConnections => {
                let (ack, done) = oneshot::channel();
                self.send_link(LinkCommand::Drop(ack), done).await
            }
            Fault::Restart { down } => {
                {
                    let mut st = self.shared.lock();
                    for slot in st.gates.values_mut() {
                        slot.coils = 0;
                        slot.gate.stop(now);
                    }
                }
                let (ack, done) = oneshot::channel();
                self.send_link(LinkCommand::Restart(down, ack), done).await
            }
            Fault::Stall { duration } => {
                self.shared.lock().stall_until = Some(now + duration);
                Ok(())
            }
            Fault::DropWrites { duration } => {
                self.shared.lock().drop_writes_until = Some(now + duration);
                Ok(())
            }
            Fault::Slow { delay, duration } => {
                self.shared.lock().slow = Some((delay, now + duration));
                Ok(())
            }
            Fault::Exception {
                unit,
                code,
                duration,
            } => {
                let mut st = self.shared.lock();
                if !st.gates.contains_key(&unit) {
                    return Err(self.unknown(unit));
                }
                st.exceptions.retain(|(u, _, _)| *u != unit);
                st.exceptions.push((unit, code, now + duration));
                Ok(())
            }
            Fault::Garbage { duration } => {
                let until = nanos_since(self.shared.epoch, now + duration).max(1);
                self.shared.garbage_until.store(until, Ordering::Relaxed);
                Ok(())
            }
            Fault::Obstruct { unit, on } => self.on_gate(unit, |g| g.set_obstructed(now, on)),
            Fault::MotorFault { unit, code } => self.on_gate(unit, |g| g.motor_fault(now, code)),
            Fault::LocalPress { unit } => self.on_gate(unit, |g| {
                if let Err(why) = g.press(now) {
                    debug!(unit, %why, "local press ignored");
                }
            }),
        }
    }

    /// Ends every injected fault at once: timed link faults, obstructions and motor faults
    /// (as if each were reset). A restart already under way still runs its course.
    pub fn clear(&self) {
        info!(controller = %self.shared.name, "clear faults");
        self.shared.garbage_until.store(0, Ordering::Relaxed);
        let now = Instant::now();
        let mut st = self.shared.lock();
        st.stall_until = None;
        st.drop_writes_until = None;
        st.slow = None;
        st.exceptions.clear();
        for slot in st.gates.values_mut() {
            slot.gate.set_obstructed(now, false);
            slot.gate.reset();
        }
    }

    /// The timed faults in force now.
    pub fn faults(&self) -> ActiveFaults {
        let now = Instant::now();
        let left = |until: Instant| until.checked_duration_since(now).filter(|d| !d.is_zero());
        let st = self.shared.lock();
        let garbage_until = self.shared.garbage_until.load(Ordering::Relaxed);
        let garbage = (garbage_until != 0)
            .then(|| self.shared.epoch + Duration::from_nanos(garbage_until))
            .and_then(left);
        ActiveFaults {
            down: self.is_down(),
            stall: st.stall_until.and_then(left),
            drop_writes: st.drop_writes_until.and_then(left),
            slow: st
                .slow
                .and_then(|(delay, until)| left(until).map(|l| (delay, l))),
            exceptions: st
                .exceptions
                .iter()
                .filter_map(|(u, c, until)| left(*until).map(|l| (*u, *c, l)))
                .collect(),
            garbage,
        }
    }

    /// Whether a restart has the port closed right now.
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::Relaxed)
    }

    pub(crate) fn shutdown_signal(&self) {
        let _ = self.shared.link.send(LinkCommand::Shutdown);
    }

    fn unknown(&self, unit: u8) -> SimError {
        SimError::UnknownUnit {
            controller: self.shared.name.clone(),
            unit,
        }
    }

    fn on_gate(&self, unit: u8, f: impl FnOnce(&mut Gate)) -> Result<(), SimError> {
        let mut st = self.shared.lock();
        match st.gates.get_mut(&unit) {
            Some(slot) => {
                f(&mut slot.gate);
                Ok(())
            }
            None => Err(self.unknown(unit)),
        }
    }

    async fn send_link(
        &self,
        cmd: LinkCommand,
        done: oneshot::Receiver<()>,
    ) -> Result<(), SimError> {
        let gone = || SimError::ShutDown(self.shared.name.clone());
        self.shared.link.send(cmd).map_err(|_| gone())?;
        done.await.map_err(|_| gone())
    }
}

/// The listener task: serves until told to drop connections (serve again at once), restart
/// (close the port, wait, listen again) or stop. Dropping the `serve` future cancels every
/// connection task it spawned, which is how connections are closed.
async fn run_link(
    shared: Arc<Shared>,
    listener: TcpListener,
    rtu_framing: bool,
    mut rx: mpsc::UnboundedReceiver<LinkCommand>,
) {
    let name = shared.name.clone();
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let shared = Arc::clone(&shared);
        async move {
            // Modbus is request/response with tiny frames: Nagle would only add latency.
            if let Err(e) = stream.set_nodelay(true) {
                debug!(controller = %shared.name, %peer, "set_nodelay: {e}");
            }
            debug!(controller = %shared.name, %peer, "connection accepted");
            let service = Service {
                shared: Arc::clone(&shared),
                peer: Some(peer),
            };
            Ok(Some((service, SimStream::new(stream, shared))))
        }
    };
    let on_error = {
        let name = name.clone();
        move |e: io::Error| debug!(controller = %name, "connection ended: {e}")
    };

    let mut listener = Some(listener);
    loop {
        let listener = match listener.take() {
            Some(l) => l,
            None => match listen_again(&shared, &mut rx).await {
                Some(l) => l,
                None => return,
            },
        };
        let server = Listening::new(listener, rtu_framing);
        let restart = loop {
            let cmd = tokio::select! {
                res = server.serve(&on_connected, on_error.clone()) => {
                    if let Err(e) = res {
                        warn!(controller = %name, "accept failed: {e}");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
                cmd = rx.recv() => cmd,
            };
            match cmd {
                None | Some(LinkCommand::Shutdown) => return,
                Some(LinkCommand::Drop(ack)) => {
                    info!(controller = %name, "connections dropped");
                    let _ = ack.send(());
                }
                Some(LinkCommand::Restart(down, ack)) => break (down, ack),
            }
        };
        let (down, ack) = restart;
        drop(server);
        shared.down.store(true, Ordering::Relaxed);
        info!(controller = %name, down_ms = down.as_millis() as u64, "restarting");
        let _ = ack.send(());
        if !stay_down(&name, &mut rx, down).await {
            return;
        }
    }
}

/// A listener serving Modbus TCP, or RTU frames over TCP (a serial gateway).
enum Listening {
    Mbap(tcp::Server),
    Rtu(rtu_over_tcp::Server),
}

impl Listening {
    fn new(listener: TcpListener, rtu_framing: bool) -> Listening {
        if rtu_framing {
            Listening::Rtu(rtu_over_tcp::Server::new(listener))
        } else {
            Listening::Mbap(tcp::Server::new(listener))
        }
    }

    async fn serve<F, OnConnected, OnError>(
        &self,
        on_connected: &OnConnected,
        on_error: OnError,
    ) -> io::Result<()>
    where
        OnConnected: Fn(TcpStream, SocketAddr) -> F,
        F: Future<Output = io::Result<Option<(Service, SimStream)>>>,
        OnError: FnOnce(io::Error) + Clone + Send + 'static,
    {
        match self {
            Listening::Mbap(server) => server.serve(on_connected, on_error).await,
            Listening::Rtu(server) => server.serve(on_connected, on_error).await,
        }
    }
}

/// Opens a serial line for the RTU server (8 data bits, no parity, one stop bit: on a
/// pseudo-terminal, which is what the tests use, the line settings are not enforced).
fn open_serial(device: &std::path::Path, baud: u32) -> io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    tokio_serial::new(device.to_string_lossy(), baud)
        .open_native_async()
        .map_err(io::Error::other)
}

/// The RTU server on a serial line. There is no connection to drop; a restart leaves the
/// line open and the controller silent for its down time, as a board that reboots on a bus.
async fn run_serial(
    shared: Arc<Shared>,
    port: tokio_serial::SerialStream,
    (device, baud): (std::path::PathBuf, u32),
    mut rx: mpsc::UnboundedReceiver<LinkCommand>,
) {
    let name = shared.name.clone();
    let mut port = Some(port);
    let mut up_at: Option<tokio::time::Instant> = None;
    loop {
        let line = match port.take() {
            Some(p) => p,
            None => match open_serial(&device, baud) {
                Ok(p) => p,
                Err(e) => {
                    warn!(controller = %name, device = %device.display(), "cannot open the line again: {e}");
                    if !stay_down(&name, &mut rx, REBIND_RETRY).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let service = Service {
            shared: Arc::clone(&shared),
            peer: None,
        };
        let serve = rtu::Server::new(line).serve_forever(service);
        tokio::pin!(serve);
        loop {
            let back_up = async {
                match up_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => future::pending().await,
                }
            };
            tokio::select! {
                res = &mut serve => {
                    // Noise the codec could not frame, or the line went away: open it again.
                    debug!(controller = %name, "serial server ended: {res:?}");
                    break;
                }
                () = back_up => {
                    up_at = None;
                    shared.down.store(false, Ordering::Relaxed);
                    info!(controller = %name, "back up");
                }
                cmd = rx.recv() => match cmd {
                    None | Some(LinkCommand::Shutdown) => return,
                    Some(LinkCommand::Drop(ack)) => {
                        let _ = ack.send(());
                    }
                    Some(LinkCommand::Restart(down, ack)) => {
                        shared.down.store(true, Ordering::Relaxed);
                        up_at = Some(tokio::time::Instant::now() + down);
                        info!(controller = %name, down_ms = down.as_millis() as u64, "restarting");
                        let _ = ack.send(());
                    }
                },
            }
        }
        if !stay_down(&name, &mut rx, REBIND_RETRY).await {
            return;
        }
    }
}

/// Waits out a restart's down time, answering commands meanwhile. A second restart extends
/// it. Returns false when told to shut down.
async fn stay_down(
    name: &str,
    rx: &mut mpsc::UnboundedReceiver<LinkCommand>,
    down: Duration,
) -> bool {
    let mut until = tokio::time::Instant::now() + down;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return true,
            cmd = rx.recv() => match cmd {
                None | Some(LinkCommand::Shutdown) => return false,
                Some(LinkCommand::Drop(ack)) => {
                    let _ = ack.send(());
                }
                Some(LinkCommand::Restart(more, ack)) => {
                    until = until.max(tokio::time::Instant::now() + more);
                    debug!(controller = %name, "restart extended");
                    let _ = ack.send(());
                }
            },
        }
    }
}

/// Listens on the controller's address again after a restart, retrying while the port is
/// taken. Returns `None` when told to shut down meanwhile.
async fn listen_again(
    shared: &Shared,
    rx: &mut mpsc::UnboundedReceiver<LinkCommand>,
) -> Option<TcpListener> {
    let mut warned = false;
    loop {
        match TcpListener::bind(shared.addr).await {
            Ok(l) => {
                shared.down.store(false, Ordering::Relaxed);
                info!(controller = %shared.name, addr = %shared.addr, "back up");
                return Some(l);
            }
            Err(e) => {
                if !warned {
                    warn!(controller = %shared.name, addr = %shared.addr, "cannot listen again yet: {e}");
                    warned = true;
                }
                if !stay_down(&shared.name, rx, REBIND_RETRY).await {
                    return None;
                }
            }
        }
    }
}
