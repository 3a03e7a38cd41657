//! The link actor: one per controller. It owns the connection (through the
//! [`LinkConnector`] port), serializes every transaction on it, polls its gates on their own
//! schedules (fast while moving or just commanded, the profile's rate at rest), carries out
//! gate writes and releases coil pulses.
//!
//! A transport failure is the link's failure: the handler returns the error, the actor
//! crashes, and the controller supervisor restarts it with backoff (telling the gates they are
//! offline meanwhile). A Modbus exception from one unit is that gate's problem only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::FleetContext;
use super::controller::ControllerSpec;
use super::gate::{GateMsg, GateRef};
use crate::gate::{HwOp, HwState, Observation, WriteResult, WriteTag};
use crate::ports::{ConnectFailure, LinkError, LinkSession, WriteRefused};
use crate::stats::Histogram;
use crate::telemetry::{Counted, Mail};

/// After a write, a gate is polled fast for this long even before it starts moving.
const HOT_AFTER_WRITE: Duration = Duration::from_secs(3);
/// A moving gate is read again this soon at the most, so that its arrival at an end
/// position is reported within about this long on a fast link.
pub const HOT_POLL_FLOOR: Duration = Duration::from_millis(10);
/// The share of a link's time that hot reads may take together: the hot interval stretches
/// with the number of hot gates and the link's transaction time, so that gates at rest on a
/// slow line (RS-485 at 9600 baud) keep their schedule however many gates move at once. The
/// profile's `fast_poll_interval_ms` is the slowest a hot gate is ever read.
const HOT_SHARE: f64 = 0.5;
/// A gate at rest whose reading has not changed is not told it again, which spares a gate
/// actor's wake-up per poll (most of a fleet, most of the time), except at least this often;
/// any change, motion, a command in flight, an exception and a new connection are told at
/// once, and a restarted gate actor asks for a fresh reading (`LinkMsg::Reread`).
const QUIET_REFRESH: Duration = Duration::from_secs(30);
/// At most this many reads a second of moving gates per link, whatever its speed: on a fast
/// link (loopback, a LAN) the time share alone would let a hundred moving gates take ten
/// thousand reads a second, which costs the process CPU rather than the link time. A few
/// gates moving at once still get [`HOT_POLL_FLOOR`].
const HOT_READS_PER_SECOND: f64 = 250.0;
/// Weight of the newest read in the link's running mean transaction time.
const TX_MEAN_WEIGHT: f64 = 0.1;
/// Gates at rest are polled in bursts of up to this many reads back to back in one message:
/// each message costs a thread wake (and each timer a task), and waking threads is most of
/// what polling a fleet at rest costs on a fast link. The gates of a controller are spread
/// over the interval in groups of this size that fall due together. Bursts pay only if the
/// bursts of many links overlap (see [`LINK_SPREAD`]): one link's reads are sequential round
/// trips, each a wake of its own unless other links' replies arrive meanwhile. Measured at
/// 10,000 gates on 100 links, bursts whose links fell due at random made 1.9× the context
/// switches and 10 % more CPU than one read per message; aligned, half the CPU.
pub const BURST: usize = 8;
/// A burst stops once it has taken this long, so that a write queued behind it waits no
/// longer than this (on a slow line, where one read takes longer, a burst is one read).
pub const BURST_TIME: Duration = Duration::from_millis(5);
/// A burst may take a gate at rest this much before it falls due (a fiftieth of the poll
/// interval, at most this), so that gates whose schedules almost coincide share a wake.
pub const BURST_AHEAD_MAX: Duration = Duration::from_millis(10);
/// The bursts of different links fall due together (their round trips overlap, and one
/// thread wake serves many replies), in this many lanes between a link's groups, so that
/// not every link of the process bursts at the same instant (poll jitter).
pub const LINK_SPREAD: usize = 4;

/// Reconnecting to a controller that refuses connections (the host is up, the service is
/// not: a controller rebooting) is cheap, and such outages are usually short: try every
/// this often for the first [`FAST_RECONNECT_FOR`] of the outage, so that its gates are back
/// within this long of it listening again.
pub const FAST_RECONNECT: Duration = Duration::from_millis(250);
/// How long an outage gets [`FAST_RECONNECT`] before the attempts thin out.
pub const FAST_RECONNECT_FOR: Duration = Duration::from_secs(10);
/// The longest gap between attempts at a controller that refuses: a controller down for
/// long is found within this long of coming back, at one refused SYN per controller per
/// interval.
pub const REFUSED_RECONNECT_MAX: Duration = Duration::from_millis(1500);
/// A controller that does not answer at all (each attempt costs the whole connect
/// timeout): from this long between attempts, doubling...
pub const SILENT_RECONNECT_FIRST: Duration = Duration::from_secs(1);
/// ...up to this.
pub const SILENT_RECONNECT_MAX: Duration = Duration::from_secs(30);

/// How long to wait before the next connection attempt, after `failures` failed attempts in
/// a row (1 for the first), the outage having lasted `down_for`, the last attempt having
/// failed as `kind`. `jitter` in [0, 1) takes up to 20 % off, so that controllers that went
/// down together do not come back in lockstep.
pub fn reconnect_delay(
    kind: ConnectFailure,
    down_for: Duration,
    failures: u32,
    jitter: f64,
) -> Duration {
    let nominal = match kind {
        ConnectFailure::Refused if down_for < FAST_RECONNECT_FOR => FAST_RECONNECT,
        ConnectFailure::Refused => {
            // Past the fast phase: grow by half each attempt, to the cap.
            let slow = failures.saturating_sub(
                (FAST_RECONNECT_FOR.as_millis() / FAST_RECONNECT.as_millis()) as u32,
            );
            FAST_RECONNECT
                .mul_f64(1.5f64.powi(slow.min(16) as i32))
                .min(REFUSED_RECONNECT_MAX)
        }
        ConnectFailure::Timeout | ConnectFailure::Other => SILENT_RECONNECT_FIRST
            .mul_f64(2f64.powi(failures.saturating_sub(1).min(16) as i32))
            .min(SILENT_RECONNECT_MAX),
    };
    nominal.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
}

/// Pulsed outputs still switched on, by gate index. Shared across restarts of the link so
/// that a pulse interrupted by a link drop is released on reconnect.
pub type PulseLedger = Arc<Mutex<Vec<(usize, HwOp)>>>;

/// The link's own figures, shared with whoever reports them.
#[derive(Default)]
pub struct LinkStats {
    /// How late each poll started against its schedule.
    pub poll_jitter: Histogram,
    /// Reads, of every kind (polls and reads after writes).
    pub polls: std::sync::atomic::AtomicU64,
    /// Poll messages that read at least one gate: `polls` ÷ this is the mean burst.
    pub poll_rounds: std::sync::atomic::AtomicU64,
    pub connects: std::sync::atomic::AtomicU64,
    /// Where the link is now, for the live tree and the metrics.
    status: Mutex<LinkStatus>,
}

impl LinkStats {
    pub fn status(&self) -> LinkStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn set(&self, change: impl FnOnce(&mut LinkStatus)) {
        if let Ok(mut s) = self.status.lock() {
            change(&mut s);
        }
    }
}

/// A link's phase, as operators see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinkPhase {
    /// Started, first connection attempt under way.
    #[default]
    Connecting,
    Connected,
    /// Connections fail; the link tries again on its own schedule.
    Unreachable,
    /// The connection broke; the controller's supervisor restarts the link after its backoff.
    Restarting,
}

impl LinkPhase {
    pub const ALL: [LinkPhase; 4] = [
        LinkPhase::Connecting,
        LinkPhase::Connected,
        LinkPhase::Unreachable,
        LinkPhase::Restarting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkPhase::Connecting => "connecting",
            LinkPhase::Connected => "connected",
            LinkPhase::Unreachable => "unreachable",
            LinkPhase::Restarting => "restarting",
        }
    }
}

/// A link's state for the live tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub phase: LinkPhase,
    /// Wall-clock ms since the phase began.
    pub since_ms: u64,
    /// Connection attempts failed in a row (while unreachable).
    pub failures: u32,
    /// Wall-clock ms of the next connection attempt (while unreachable).
    pub retry_at_ms: Option<u64>,
    /// Why the last connection failed or broke.
    pub last_error: Option<String>,
}

/// A link actor's address; its messages are counted in and out of its mailbox.
pub type LinkRef = ActorRef<Mail<LinkMsg>>;

pub enum LinkMsg {
    /// Internal: open the connection (sent to itself on start, so that a failure is a crash
    /// the supervisor sees and backs off from).
    Connect,
    /// Internal: poll whatever gates are due.
    Poll,
    Write {
        gate: usize,
        op: HwOp,
        tag: WriteTag,
        reply: GateRef,
    },
    /// Internal: a pulse has run its length.
    Release { gate: usize, op: HwOp },
    /// A gate actor (re)started: read it at once and tell it, even if its reading has not
    /// changed since the link last told its predecessor.
    Reread { gate: usize },
}

/// A scheduled `Poll` to the link itself.
type PollTimer = JoinHandle<Result<(), ractor::MessagingErr<Mail<LinkMsg>>>>;

pub struct LinkActor;

pub struct LinkArgs {
    pub spec: Arc<ControllerSpec>,
    pub ctx: Arc<FleetContext>,
    pub pulses: PulseLedger,
    pub stats: Arc<LinkStats>,
}

struct Slot {
    due: Instant,
    /// Where this gate's polls at rest fall in the interval, from the connection's start:
    /// the gates of a controller are spread over the interval in groups of [`BURST`] that
    /// fall due together (see [`rest_due`]).
    phase: Duration,
    /// Polled at the profile's fast rate until then (a command in flight).
    hot_until: Option<Instant>,
    /// Seen moving: polled as often as the link's budget allows until then.
    moving_until: Option<Instant>,
    /// The observation last told to the gate actor, and when: an identical reading of a
    /// gate at rest is not told again (see [`QUIET_REFRESH`]).
    told: Option<(Observation, Instant)>,
    gate: Option<GateRef>,
}

pub struct LinkState {
    args: LinkArgs,
    session: Option<Box<dyn LinkSession>>,
    /// Since when the controller could not be reached, and how many attempts failed in a
    /// row (connection failures are retried here, on [`reconnect_delay`]'s schedule; they
    /// are an outage to ride out, not a crash for the supervisor to count).
    unreachable: Option<(Instant, u32)>,
    slots: Vec<Slot>,
    /// Running mean of a read's round trip on this link, in seconds (0 before the first).
    tx_mean_s: f64,
    /// When the pending poll timer fires, if one is pending.
    timer: Option<(Instant, PollTimer)>,
    /// A `Poll` the link sent itself is waiting in its mailbox: no timer is armed meanwhile
    /// (handling it schedules the next).
    poll_queued: bool,
    /// When the current connection started: the origin of every slot's `phase`.
    epoch: Instant,
    /// Until then some gate of this link is moving or was just written to, and reads go one
    /// per message (see [`LinkState::poll_due`]).
    busy_until: Option<Instant>,
}

impl LinkState {
    fn session(&mut self) -> Result<&mut Box<dyn LinkSession>, LinkError> {
        self.session
            .as_mut()
            .ok_or_else(|| LinkError::Io("not connected".into()))
    }

    /// The gate actor for slot `i`, looked up again if the cached one has stopped.
    fn tell(&mut self, i: usize, msg: GateMsg) {
        let msg = match &self.slots[i].gate {
            Some(g) => match g.send_message(msg.into()) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(m)) => m.open(),
                Err(_) => return,
            },
            None => msg,
        };
        let id = &self.args.spec.gates[i].spec.id;
        self.slots[i].gate = self.args.ctx.directory.gate(id);
        if let Some(g) = &self.slots[i].gate {
            let _ = g.send_message(msg.into());
        }
    }

    /// Arranges the next `Poll`: at once, as a message to itself, if a gate is due already;
    /// else a timer at the earliest due time. Never both, and never a second of either.
    fn schedule(&mut self, myself: &LinkRef) {
        if self.session.is_none() || self.poll_queued {
            return;
        }
        let Some(next) = self.slots.iter().map(|s| s.due).min() else {
            return;
        };
        if let Some((at, _)) = &self.timer
            && *at <= next
        {
            return;
        }
        if let Some((_, h)) = self.timer.take() {
            h.abort();
        }
        let now = Instant::now();
        if next <= now {
            // A self message costs no timer task.
            if myself.send_message(LinkMsg::Poll.into()).is_ok() {
                self.poll_queued = true;
            }
            return;
        }
        let handle = myself.send_after(next - now, || LinkMsg::Poll.into());
        self.timer = Some((next, handle));
    }

    fn busy(&self, now: Instant) -> bool {
        self.busy_until.is_some_and(|t| t > now)
    }

    /// Reads the earliest due gate; then, while no gate of the link is moving or was just
    /// written to, up to [`BURST`] − 1 more gates due by now (or within the look-ahead),
    /// earliest first, for at most [`BURST_TIME`]. While a gate is busy it is one read per
    /// message, so that a queued write (commands come in bunches) waits for at most one read
    /// (the command latency tail: p99 1.5 ms against 2.3 ms with four reads a message, at
    /// 10,000 gates). Due slots are picked by a plain scan, which allocates nothing.
    async fn poll_due(&mut self) -> Result<(), LinkError> {
        let started = Instant::now();
        let ahead = (self.args.spec.poll_interval / 50).min(BURST_AHEAD_MAX);
        let mut reads = 0usize;
        loop {
            let now = Instant::now();
            let limit = if reads == 0 { now } else { now + ahead };
            let mut earliest: Option<usize> = None;
            for (i, slot) in self.slots.iter().enumerate() {
                if slot.due <= limit && earliest.is_none_or(|e| slot.due < self.slots[e].due) {
                    earliest = Some(i);
                }
            }
            let Some(i) = earliest else {
                break;
            };
            let scheduled = self.slots[i].due;
            self.args
                .stats
                .poll_jitter
                .record(now.saturating_duration_since(scheduled));
            self.read_slot(i, scheduled).await?;
            reads += 1;
            if reads >= BURST || self.busy(Instant::now()) || started.elapsed() >= BURST_TIME {
                break;
            }
        }
        if reads > 0 {
            self.args
                .stats
                .poll_rounds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// When a gate at rest is next due: the first point of its grid (`anchor` + k × `base`, the
/// connection's start plus the gate's phase) at least half an interval after `scheduled`
/// (when this read was due) and after `done` (when it ended). On schedule that is
/// `scheduled + base`; a late read does not cause catch-up reads; and a gate off its grid
/// (after a fast episode, a reread, a connection) goes back to it, to its burst group.
pub fn rest_due(anchor: Instant, base: Duration, scheduled: Instant, done: Instant) -> Instant {
    let base = base.max(Duration::from_millis(1));
    let from = (scheduled + base / 2).max(done);
    let step = base.as_nanos();
    let at = |k: u128, forward: bool| {
        let off = Duration::from_nanos((k * step).min(u64::MAX as u128) as u64);
        if forward { anchor + off } else { anchor - off }
    };
    let next = if from <= anchor {
        at((anchor - from).as_nanos() / step, false)
    } else {
        at((from - anchor).as_nanos().div_ceil(step), true)
    };
    if next <= done { next + base } else { next }
}

impl LinkState {
    /// How soon a moving gate is read again: as often as the link allows within its budget
    /// ([`HOT_SHARE`] of the link's time and [`HOT_READS_PER_SECOND`] for all moving gates
    /// together), never sooner than
    /// [`HOT_POLL_FLOOR`] and never later than the profile's fast interval. (A gate that was
    /// just commanded but is not moving yet, waiting out a warning lead say, is read at the
    /// fast interval: it was read at once after the write, and it has nothing to report
    /// sooner.)
    fn hot_gap(&self, now: Instant, fast: Duration) -> Duration {
        let hot = self
            .slots
            .iter()
            .filter(|s| s.moving_until.is_some_and(|t| t > now))
            .count()
            .max(1);
        let by_time = self.tx_mean_s * hot as f64 / HOT_SHARE;
        let by_rate = hot as f64 / HOT_READS_PER_SECOND;
        let budget = Duration::from_secs_f64(by_time.max(by_rate));
        budget.clamp(HOT_POLL_FLOOR.min(fast), fast)
    }

    /// Reads gate `i` now, tells its actor, and schedules its next poll: fast while it moves
    /// or was just written to, else on its phase at the profile's rate (`scheduled` is when
    /// this read was due; see [`rest_due`]).
    async fn read_slot(&mut self, i: usize, scheduled: Instant) -> Result<(), LinkError> {
        let base = self.args.spec.poll_interval;
        let fast = self.args.spec.fast_poll_interval;
        self.args
            .stats
            .polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(i) = crate::telemetry::get() {
            i.polls.increment(1);
        }
        let started = Instant::now();
        let reading = self.session()?.read(i).await?;
        let done = Instant::now();
        let took = done.saturating_duration_since(started).as_secs_f64();
        self.tx_mean_s = if self.tx_mean_s == 0.0 {
            took
        } else {
            self.tx_mean_s + TX_MEAN_WEIGHT * (took - self.tx_mean_s)
        };
        let moving = matches!(
            reading,
            Ok(o) if matches!(o.state, HwState::Opening | HwState::Closing)
        );
        if moving {
            self.slots[i].moving_until = Some(done + fast);
            self.busy_until = self.busy_until.max(Some(done + fast));
        }
        // Only a moving gate needs the hot interval (it counts the link's moving gates).
        let hot_gap = self.slots[i]
            .moving_until
            .is_some_and(|t| t > done)
            .then(|| self.hot_gap(done, fast));
        let epoch = self.epoch;
        let slot = &mut self.slots[i];
        slot.due = if let Some(gap) = hot_gap {
            done + gap
        } else if slot.hot_until.is_some_and(|t| t > done) {
            done + fast
        } else {
            rest_due(epoch + slot.phase, base, scheduled, done)
        };
        let busy =
            slot.moving_until.is_some_and(|t| t > done) || slot.hot_until.is_some_and(|t| t > done);
        match reading {
            Ok(obs) => {
                let unchanged = slot
                    .told
                    .is_some_and(|(last, at)| last == obs && done < at + QUIET_REFRESH);
                if busy || !unchanged {
                    slot.told = Some((obs, done));
                    self.tell(i, GateMsg::Observed(obs));
                }
            }
            Err(exception) => {
                slot.told = None;
                self.tell(i, GateMsg::UnitFailed(exception.0));
            }
        }
        Ok(())
    }
}

impl Counted for LinkMsg {
    fn depth() -> &'static std::sync::atomic::AtomicI64 {
        &crate::telemetry::LINK_MAILBOX
    }
}

impl Actor for LinkActor {
    type Msg = Mail<LinkMsg>;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: LinkRef,
        args: LinkArgs,
    ) -> Result<LinkState, ActorProcessingErr> {
        myself.send_message(LinkMsg::Connect.into())?;
        args.stats.set(|s| {
            if s.phase != LinkPhase::Restarting {
                s.since_ms = crate::clock::wall_ms();
            }
            s.phase = LinkPhase::Connecting;
        });
        let now = Instant::now();
        let slots = args
            .spec
            .gates
            .iter()
            .map(|g| Slot {
                due: now,
                phase: Duration::ZERO,
                hot_until: None,
                moving_until: None,
                told: None,
                gate: args.ctx.directory.gate(&g.spec.id),
            })
            .collect();
        Ok(LinkState {
            args,
            session: None,
            unreachable: None,
            slots,
            tx_mean_s: 0.0,
            timer: None,
            poll_queued: false,
            epoch: now,
            busy_until: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: LinkRef,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, h)) = state.timer.take() {
            h.abort();
        }
        state.args.stats.set(|s| {
            s.phase = LinkPhase::Restarting;
            s.since_ms = crate::clock::wall_ms();
            s.retry_at_ms = None;
        });
        state.args.ctx.directory.remove_link(&state.args.spec.id);
        // A clean stop leaves no output switched on. If this fails, the ledger keeps the
        // pulses and the next connection releases them.
        if let Some(mut session) = state.session.take() {
            let pulses = pending_pulses(&state.args.pulses);
            for (gate, op) in pulses {
                if let Ok(Ok(())) = session.release(gate, op).await {
                    forget_pulse(&state.args.pulses, gate, op);
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: LinkRef,
        msg: Mail<LinkMsg>,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        let _timing = crate::telemetry::handling(crate::telemetry::Kind::Link);
        match msg.open() {
            LinkMsg::Connect => {
                let mut session = match state.args.spec.connector.connect().await {
                    Ok(session) => session,
                    Err(LinkError::Connect { reason, kind, .. }) => {
                        let (since, failures) =
                            state.unreachable.get_or_insert((Instant::now(), 0));
                        *failures += 1;
                        let (since, failures) = (*since, *failures);
                        let delay =
                            reconnect_delay(kind, since.elapsed(), failures, rand::random());
                        crate::telemetry::connect_failed(match kind {
                            ConnectFailure::Refused => "refused",
                            ConnectFailure::Timeout => "timeout",
                            ConnectFailure::Other => "other",
                        });
                        let now_ms = crate::clock::wall_ms();
                        state.args.stats.set(|s| {
                            if s.phase != LinkPhase::Unreachable {
                                s.since_ms = now_ms;
                            }
                            s.phase = LinkPhase::Unreachable;
                            s.failures = failures;
                            s.retry_at_ms = Some(now_ms + delay.as_millis() as u64);
                            s.last_error = Some(reason.to_string());
                        });
                        if failures == 1 {
                            tracing::warn!(controller = %state.args.spec.id, endpoint = %state.args.spec.connector.endpoint(), %reason, ?kind, "controller unreachable; trying again");
                        } else {
                            tracing::debug!(controller = %state.args.spec.id, %reason, failures, ?delay, "controller still unreachable");
                        }
                        myself.send_after(delay, || LinkMsg::Connect.into());
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                };
                if let Some((since, failures)) = state.unreachable.take() {
                    tracing::info!(controller = %state.args.spec.id, after = ?since.elapsed(), failures, "controller reachable again");
                }
                // Pulses cut short by the last drop are released before anything else.
                let pulses = pending_pulses(&state.args.pulses);
                for (gate, op) in pulses {
                    let _ = session.release(gate, op).await?;
                    forget_pulse(&state.args.pulses, gate, op);
                }
                state.session = Some(session);
                state
                    .args
                    .stats
                    .connects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(i) = crate::telemetry::get() {
                    i.connects.increment(1);
                }
                state.args.stats.set(|s| {
                    s.phase = LinkPhase::Connected;
                    s.since_ms = crate::clock::wall_ms();
                    s.failures = 0;
                    s.retry_at_ms = None;
                });
                state
                    .args
                    .ctx
                    .directory
                    .insert_link(state.args.spec.id.clone(), myself.clone());
                // Every gate is read at once, to reconcile quickly after a restart; after that
                // the gates of a controller are spread over the interval so that they do not
                // all land in the same millisecond, every interval, forever: in groups of
                // `BURST`, each group read in one burst.
                let now = Instant::now();
                let groups = state.slots.len().div_ceil(BURST).max(1) as u32;
                let interval = state.args.spec.poll_interval;
                // Every link's grid starts on a wall-clock multiple of its interval, so that
                // the bursts of different links fall due together and their round trips
                // overlap (one thread wake for many replies); links are dealt over
                // `LINK_SPREAD` offsets between their groups, so that not all of them burst
                // at once.
                let since = crate::clock::wall_ms() % (interval.as_millis().max(1) as u64);
                let lane = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::hash::DefaultHasher::new();
                    state.args.spec.id.hash(&mut h);
                    (h.finish() % LINK_SPREAD as u64) as u32
                };
                let offset = interval * lane / (groups * LINK_SPREAD as u32);
                state.epoch = now.checked_sub(Duration::from_millis(since)).unwrap_or(now) + offset;
                for (i, slot) in state.slots.iter_mut().enumerate() {
                    slot.due = now;
                    slot.told = None;
                    slot.phase = interval * (i / BURST) as u32 / groups;
                }
                tracing::info!(controller = %state.args.spec.id, endpoint = %state.args.spec.connector.endpoint(), "link up");
            }
            LinkMsg::Poll => {
                // Either the timer fired or the link sent it itself; a fired timer whose
                // message overtook a queued one is no loss (it finds nothing due, or reads).
                state.poll_queued = false;
                if state
                    .timer
                    .as_ref()
                    .is_some_and(|(at, _)| *at <= Instant::now())
                {
                    state.timer = None;
                }
                if state.session.is_some() {
                    state.poll_due().await?;
                }
            }
            LinkMsg::Write {
                gate,
                op,
                tag,
                reply,
            } => {
                let send = |result| {
                    let _ = reply.send_message(GateMsg::WriteResult { tag, result }.into());
                };
                // In a cluster, nothing is written without a lease this node can prove (a
                // node woken from a long pause finds its deadline past).
                let leased = match &state.args.ctx.ownership {
                    Some(o) => o.may_write(&state.args.spec.id),
                    None => true,
                };
                let Some(session) = state.session.as_mut().filter(|_| leased) else {
                    send(WriteResult::Offline);
                    return Ok(());
                };
                match session.write(gate, op).await {
                    Ok(Ok(done)) => {
                        send(WriteResult::Confirmed);
                        if let Some(after) = done.release_after {
                            if let Ok(mut p) = state.args.pulses.lock() {
                                p.push((gate, op));
                            }
                            myself.send_after(after, move || LinkMsg::Release { gate, op }.into());
                        }
                        if let Some(slot) = state.slots.get_mut(gate) {
                            let now = Instant::now();
                            slot.hot_until = Some(now + HOT_AFTER_WRITE);
                            state.busy_until = state.busy_until.max(Some(now + HOT_AFTER_WRITE));
                            // Read after write: the gate is read at once, as the next
                            // transaction, so that motion the controller already shows is
                            // reported now rather than at the next poll. (Queuing the read
                            // behind other commands' writes instead was tried: their
                            // `accepted` came 10 % sooner and every first motion 60 % later.)
                            state.read_slot(gate, now).await?;
                        }
                    }
                    Ok(Err(WriteRefused::Exception(exception))) => {
                        send(WriteResult::Exception(exception.0))
                    }
                    Ok(Err(WriteRefused::NoAnswer(limit))) => {
                        tracing::warn!(controller = %state.args.spec.id, gate, ?limit, "no answer to a write");
                        send(WriteResult::TimedOut);
                    }
                    Ok(Err(WriteRefused::NotConfirmed(why))) => {
                        // The unit answered: the link is fine, this write did not land.
                        tracing::warn!(controller = %state.args.spec.id, gate, %why, "write not confirmed");
                        send(WriteResult::NotConfirmed);
                    }
                    Err(e) => {
                        send(match e {
                            LinkError::Timeout(_) => WriteResult::TimedOut,
                            _ => WriteResult::Offline,
                        });
                        return Err(e.into());
                    }
                }
            }
            LinkMsg::Reread { gate } => {
                if let Some(slot) = state.slots.get_mut(gate) {
                    slot.told = None;
                    slot.gate = None;
                    slot.due = Instant::now();
                }
            }
            LinkMsg::Release { gate, op } => {
                // A pulse is released by the node that holds the lease only: after a pause, the
                // controller may already have a new writer, whose own pulse this could cut.
                let leased = state
                    .args
                    .ctx
                    .ownership
                    .as_ref()
                    .is_none_or(|o| o.may_write(&state.args.spec.id));
                if state.session.is_some() && leased {
                    let _ = state.session()?.release(gate, op).await?;
                    forget_pulse(&state.args.pulses, gate, op);
                }
            }
        }
        state.schedule(&myself);
        Ok(())
    }
}

fn pending_pulses(ledger: &PulseLedger) -> Vec<(usize, HwOp)> {
    ledger.lock().map(|p| p.clone()).unwrap_or_default()
}

fn forget_pulse(ledger: &PulseLedger, gate: usize, op: HwOp) {
    if let Ok(mut p) = ledger.lock()
        && let Some(i) = p.iter().position(|x| *x == (gate, op))
    {
        p.swap_remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_refusing_controller_is_tried_every_quarter_second_for_ten_seconds() {
        for (down, failures) in [(S(0), 1), (S(5), 20), (Duration::from_millis(9_900), 39)] {
            for jitter in [0.0, 0.5, 0.999] {
                let d = reconnect_delay(ConnectFailure::Refused, down, failures, jitter);
                assert!(
                    d <= FAST_RECONNECT && d >= FAST_RECONNECT.mul_f64(0.8),
                    "{down:?} {failures}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn a_controller_that_stays_refusing_is_tried_less_often_up_to_a_second_and_a_half() {
        let mut last = Duration::ZERO;
        for failures in 41..80 {
            let d = reconnect_delay(ConnectFailure::Refused, S(30), failures, 0.0);
            assert!(d >= last && d <= REFUSED_RECONNECT_MAX, "{failures}: {d:?}");
            last = d;
        }
        assert_eq!(last, REFUSED_RECONNECT_MAX);
    }

    #[test]
    fn a_silent_controller_backs_off_exponentially_to_half_a_minute() {
        let delays: Vec<Duration> = (1..=8)
            .map(|n| reconnect_delay(ConnectFailure::Timeout, S(n * 3), n as u32, 0.0))
            .collect();
        assert_eq!(delays, [S(1), S(2), S(4), S(8), S(16), S(30), S(30), S(30)]);
        assert_eq!(
            reconnect_delay(ConnectFailure::Other, S(0), 1, 0.0),
            SILENT_RECONNECT_FIRST
        );
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_gate_at_rest_read_on_time_is_next_due_one_interval_later() {
        let epoch = Instant::now();
        let anchor = epoch + MS(250);
        for k in [0, 1, 7] {
            let scheduled = anchor + S(1) * k;
            for took in [MS(0), MS(3), MS(400)] {
                assert_eq!(
                    rest_due(anchor, S(1), scheduled, scheduled + took),
                    scheduled + S(1),
                    "read {k} took {took:?}"
                );
            }
        }
    }

    #[test]
    fn a_late_read_is_not_caught_up_but_next_due_on_the_gates_grid() {
        let anchor = Instant::now() + MS(250);
        // Read 2.7 intervals late: the missed polls are skipped, not made up in a burst.
        let done = anchor + MS(2_700);
        let next = rest_due(anchor, S(1), anchor, done);
        assert_eq!(next, anchor + S(3));
        // Late by exactly whole intervals: still strictly after the read.
        let done = anchor + S(2);
        assert_eq!(rest_due(anchor, S(1), anchor, done), anchor + S(3));
    }

    #[test]
    fn a_gate_off_its_grid_goes_back_to_it_within_half_to_one_and_a_half_intervals() {
        let epoch = Instant::now();
        let anchor = epoch + MS(250);
        // After a fast episode, a reread, a connection: due off the grid, at any offset,
        // on either side of the anchor.
        for off in (0..40).map(|i| MS(i * 97)) {
            let scheduled = epoch + off;
            let next = rest_due(anchor, S(1), scheduled, scheduled);
            let gap = next - scheduled;
            assert!(gap >= MS(500) && gap < MS(1_500), "{off:?}: {gap:?}");
            let on_grid = if next >= anchor {
                (next - anchor).as_nanos() % S(1).as_nanos()
            } else {
                (anchor - next).as_nanos() % S(1).as_nanos()
            };
            assert_eq!(on_grid, 0, "{off:?}: {next:?} is off the grid");
        }
    }
}
