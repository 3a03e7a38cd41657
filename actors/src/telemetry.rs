//! The runtime's own instruments, through the `metrics` facade (names and meanings in
//! `docs/metrics.md`; the exporter is installed by the runtime).
//!
//! Hot paths (a message handled, a Modbus transaction, a command outcome) use handles
//! registered once in [`install`] and reached through one atomic load; until `install` runs
//! (tests, tools, `[metrics] enabled = false`) every instrument is a no-op that costs that load
//! and nothing else, not even a clock read. Cold paths (an actor starting, a restart) use the
//! facade's macros directly.
//!
//! Labels come from closed sets only (kinds, states, actions, statuses, reason codes, exception
//! codes, close codes, route templates): no per-session, per-user or per-gate label exists.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};

use crate::gate::{Action, CommandStatus, GateState};

/// Every metric name, once (a test compares them with `docs/metrics.md`).
pub mod names {
    pub const ACTORS: &str = "gatehouse_actors";
    pub const ACTOR_RESTARTS: &str = "gatehouse_actor_restarts_total";
    pub const ACTOR_MESSAGE_DURATION: &str = "gatehouse_actor_message_duration_seconds";
    pub const ACTOR_MAILBOX_DEPTH: &str = "gatehouse_actor_mailbox_depth";
    pub const LINKS: &str = "gatehouse_links";
    pub const LINK_UP: &str = "gatehouse_link_up";
    pub const LINK_CONNECTS: &str = "gatehouse_link_connects_total";
    pub const LINK_CONNECT_FAILURES: &str = "gatehouse_link_connect_failures_total";
    pub const LINK_FAILURES: &str = "gatehouse_link_failures_total";
    pub const LINK_TRANSACTION_DURATION: &str = "gatehouse_link_transaction_duration_seconds";
    pub const LINK_TIMEOUTS: &str = "gatehouse_link_timeouts_total";
    pub const LINK_RETRIES: &str = "gatehouse_link_retries_total";
    pub const LINK_EXCEPTIONS: &str = "gatehouse_link_exceptions_total";
    pub const LINK_POLLS: &str = "gatehouse_link_polls_total";
    pub const GATES: &str = "gatehouse_gates";
    pub const GATE_FAULTS: &str = "gatehouse_gate_faults_total";
    pub const GATE_OBSTRUCTIONS: &str = "gatehouse_gate_obstructions_total";
    pub const GATE_CYCLES: &str = "gatehouse_gate_cycles_total";
    pub const COMMANDS: &str = "gatehouse_commands_total";
    pub const COMMAND_ACCEPT_DURATION: &str = "gatehouse_command_accept_duration_seconds";
    pub const COMMAND_COMPLETE_DURATION: &str = "gatehouse_command_complete_duration_seconds";
    pub const SESSIONS: &str = "gatehouse_sessions";
    pub const SESSIONS_AUTHENTICATED: &str = "gatehouse_sessions_authenticated";
    pub const SESSION_SUBSCRIPTIONS: &str = "gatehouse_session_subscriptions";
    pub const SESSION_QUEUE_DROPS: &str = "gatehouse_session_queue_drops_total";
    pub const SESSION_COALESCED: &str = "gatehouse_session_coalesced_snapshots_total";
    pub const SESSION_CLOSES: &str = "gatehouse_session_closes_total";
    pub const SESSION_EVENT_LOSSES: &str = "gatehouse_session_event_losses_total";
    pub const SESSION_GAP_REFILLS: &str = "gatehouse_session_gap_refills_total";
    pub const EVENTLOG_BATCH_SIZE: &str = "gatehouse_eventlog_batch_size";
    pub const EVENTLOG_COMMIT_DURATION: &str = "gatehouse_eventlog_commit_duration_seconds";
    pub const EVENTLOG_QUEUE_DEPTH: &str = "gatehouse_eventlog_queue_depth";
    pub const EVENTLOG_COMMIT_FAILURES: &str = "gatehouse_eventlog_commit_failures_total";
    pub const COMMAND_ID_CLAIMS: &str = "gatehouse_command_id_claims_total";
    pub const SHARED_LIMIT_FAILURES: &str = "gatehouse_shared_limit_failures_total";
    pub const HTTP_REQUESTS: &str = "gatehouse_http_requests_total";
    pub const HTTP_REQUEST_DURATION: &str = "gatehouse_http_request_duration_seconds";
    pub const BUILD_INFO: &str = "gatehouse_build_info";
    pub const START_TIME: &str = "gatehouse_start_time_seconds";

    pub const ALL: &[&str] = &[
        ACTORS,
        ACTOR_RESTARTS,
        ACTOR_MESSAGE_DURATION,
        ACTOR_MAILBOX_DEPTH,
        LINKS,
        LINK_UP,
        LINK_CONNECTS,
        LINK_CONNECT_FAILURES,
        LINK_FAILURES,
        LINK_TRANSACTION_DURATION,
        LINK_TIMEOUTS,
        LINK_RETRIES,
        LINK_EXCEPTIONS,
        LINK_POLLS,
        GATES,
        GATE_FAULTS,
        GATE_OBSTRUCTIONS,
        GATE_CYCLES,
        COMMANDS,
        COMMAND_ACCEPT_DURATION,
        COMMAND_COMPLETE_DURATION,
        SESSIONS,
        SESSIONS_AUTHENTICATED,
        SESSION_SUBSCRIPTIONS,
        SESSION_QUEUE_DROPS,
        SESSION_COALESCED,
        SESSION_CLOSES,
        SESSION_EVENT_LOSSES,
        SESSION_GAP_REFILLS,
        EVENTLOG_BATCH_SIZE,
        EVENTLOG_COMMIT_DURATION,
        EVENTLOG_QUEUE_DEPTH,
        EVENTLOG_COMMIT_FAILURES,
        COMMAND_ID_CLAIMS,
        SHARED_LIMIT_FAILURES,
        HTTP_REQUESTS,
        HTTP_REQUEST_DURATION,
        BUILD_INFO,
        START_TIME,
    ];
}

/// The actors whose message handling is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gate,
    Link,
    Session,
    EventLog,
    Hub,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gate => "gate",
            Kind::Link => "link",
            Kind::Session => "session",
            Kind::EventLog => "eventlog",
            Kind::Hub => "hub",
        }
    }

    const ALL: [Kind; 5] = [
        Kind::Gate,
        Kind::Link,
        Kind::Session,
        Kind::EventLog,
        Kind::Hub,
    ];
}

/// Messages sent to gate actors and not yet handled (or dropped with a stopped mailbox).
pub static GATE_MAILBOX: AtomicI64 = AtomicI64::new(0);
/// The same for link actors.
pub static LINK_MAILBOX: AtomicI64 = AtomicI64::new(0);

/// A message type whose mailbox depth is counted (ractor does not expose it).
pub trait Counted: Sized {
    fn depth() -> &'static AtomicI64;
}

/// A message on its way to an actor of a counted kind. Counted in when made and out when
/// opened by the actor, or when dropped unopened: a message left in the mailbox of an actor
/// that stopped is dropped with it, so the depth cannot drift.
pub struct Mail<M: Counted> {
    msg: M,
    _ticket: Ticket,
}

struct Ticket(Option<&'static AtomicI64>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(depth) = self.0 {
            depth.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<M: Counted> Mail<M> {
    pub fn new(msg: M) -> Self {
        // Nothing is counted while metrics are off.
        let depth = get().map(|_| M::depth());
        if let Some(depth) = depth {
            depth.fetch_add(1, Ordering::Relaxed);
        }
        Mail {
            msg,
            _ticket: Ticket(depth),
        }
    }

    /// The message, counted out of the mailbox.
    pub fn open(self) -> M {
        self.msg
    }
}

impl<M: Counted> From<M> for Mail<M> {
    fn from(msg: M) -> Self {
        Mail::new(msg)
    }
}

/// A Modbus transaction's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// The handles of the hot instruments.
pub struct Instruments {
    handling: [Histogram; 5],
    transaction: [Histogram; 2],
    timeouts: [Counter; 2],
    pub retries: Counter,
    pub polls: Counter,
    pub connects: Counter,
    pub link_failures: Counter,
    pub gate_faults: Counter,
    pub gate_obstructions: Counter,
    pub gate_cycles: Counter,
    gates: [Gauge; 8],
    accept: Vec<Histogram>,
    complete: Vec<Histogram>,
    pub eventlog_batch: Histogram,
    pub eventlog_commit: Histogram,
    pub eventlog_failures: Counter,
    pub session_queue_drops: Counter,
    pub session_coalesced: Counter,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Whether the instruments record (set by [`install`]; [`set_active`] is for benchmarks).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Registers the hot instruments with the recorder installed now. Call once, after the
/// recorder is installed and before the actors start; later calls do nothing.
pub fn install() {
    INSTRUMENTS.get_or_init(|| {
        let op = |name: &'static str, op: &'static str| metrics::histogram!(name, "op" => op);
        Instruments {
            handling: Kind::ALL
                .map(|k| metrics::histogram!(names::ACTOR_MESSAGE_DURATION, "kind" => k.as_str())),
            transaction: [
                op(names::LINK_TRANSACTION_DURATION, "read"),
                op(names::LINK_TRANSACTION_DURATION, "write"),
            ],
            timeouts: [
                metrics::counter!(names::LINK_TIMEOUTS, "op" => "read"),
                metrics::counter!(names::LINK_TIMEOUTS, "op" => "write"),
            ],
            retries: metrics::counter!(names::LINK_RETRIES),
            polls: metrics::counter!(names::LINK_POLLS),
            connects: metrics::counter!(names::LINK_CONNECTS),
            link_failures: metrics::counter!(names::LINK_FAILURES),
            gate_faults: metrics::counter!(names::GATE_FAULTS),
            gate_obstructions: metrics::counter!(names::GATE_OBSTRUCTIONS),
            gate_cycles: metrics::counter!(names::GATE_CYCLES),
            gates: GATE_STATES.map(|s| metrics::gauge!(names::GATES, "state" => s.as_str())),
            accept: Action::ALL
                .iter()
                .map(|a| metrics::histogram!(names::COMMAND_ACCEPT_DURATION, "action" => a.as_str()))
                .collect(),
            complete: Action::ALL
                .iter()
                .map(|a| {
                    metrics::histogram!(names::COMMAND_COMPLETE_DURATION, "action" => a.as_str())
                })
                .collect(),
            eventlog_batch: metrics::histogram!(names::EVENTLOG_BATCH_SIZE),
            eventlog_commit: metrics::histogram!(names::EVENTLOG_COMMIT_DURATION),
            eventlog_failures: metrics::counter!(names::EVENTLOG_COMMIT_FAILURES),
            session_queue_drops: metrics::counter!(names::SESSION_QUEUE_DROPS),
            session_coalesced: metrics::counter!(names::SESSION_COALESCED),
        }
    });
    ACTIVE.store(true, Ordering::Relaxed);
}

/// The hot instruments, if metrics are on.
#[inline]
pub fn get() -> Option<&'static Instruments> {
    if ACTIVE.load(Ordering::Relaxed) {
        INSTRUMENTS.get()
    } else {
        None
    }
}

/// Turns recording off and on again after [`install`], for the benchmark that measures what
/// instrumentation costs in one run. Gauges kept by guards (gates by state, live actors,
/// mailbox depth) are wrong after a toggle: never use this in a process that is scraped.
pub fn set_active(on: bool) {
    ACTIVE.store(on && INSTRUMENTS.get().is_some(), Ordering::Relaxed);
}

const GATE_STATES: [GateState; 8] = [
    GateState::Unknown,
    GateState::Closed,
    GateState::Opening,
    GateState::Open,
    GateState::Closing,
    GateState::Stopped,
    GateState::Fault,
    GateState::Offline,
];

fn state_index(state: GateState) -> usize {
    GATE_STATES.iter().position(|s| *s == state).unwrap_or(0)
}

impl Instruments {
    pub fn transaction(&self, op: Op, took: Duration) {
        self.transaction[op as usize].record(took.as_secs_f64());
    }

    pub fn timeout(&self, op: Op) {
        self.timeouts[op as usize].increment(1);
    }

    fn action_index(action: Action) -> usize {
        Action::ALL.iter().position(|a| *a == action).unwrap_or(0)
    }
}

/// Times one message's handling; records when dropped.
#[must_use]
pub struct Handling(Option<(Kind, Instant)>);

/// Starts timing a message of an actor of `kind` (nothing at all while metrics are off).
#[inline]
pub fn handling(kind: Kind) -> Handling {
    Handling(get().map(|_| (kind, Instant::now())))
}

impl Drop for Handling {
    fn drop(&mut self) {
        if let (Some((kind, started)), Some(i)) = (self.0, get()) {
            i.handling[kind as usize].record(started.elapsed().as_secs_f64());
        }
    }
}

/// A gate's contribution to `gatehouse_gates{state}`: moved with the gate's state and taken
/// back when the gate actor's state is dropped, however it stops.
pub struct GateStateGauge {
    current: Option<GateState>,
}

impl GateStateGauge {
    pub fn new(state: GateState) -> Self {
        if let Some(i) = get() {
            i.gates[state_index(state)].increment(1.0);
        }
        GateStateGauge {
            current: Some(state),
        }
    }

    pub fn set(&mut self, state: GateState) {
        if self.current == Some(state) {
            return;
        }
        if let Some(i) = get() {
            if let Some(old) = self.current {
                i.gates[state_index(old)].decrement(1.0);
            }
            i.gates[state_index(state)].increment(1.0);
        }
        self.current = Some(state);
    }
}

impl Drop for GateStateGauge {
    fn drop(&mut self) {
        if let (Some(old), Some(i)) = (self.current.take(), get()) {
            i.gates[state_index(old)].decrement(1.0);
        }
    }
}

/// A command's outcome, and its round trip from reaching the gate (`since`).
pub fn command_outcome(action: Action, status: &CommandStatus, since: Option<Instant>) {
    let Some(i) = get() else {
        return;
    };
    let a = Instruments::action_index(action);
    match status {
        CommandStatus::Accepted => {
            if let Some(t) = since {
                i.accept[a].record(t.elapsed().as_secs_f64());
            }
        }
        other => {
            if matches!(other, CommandStatus::Completed)
                && let Some(t) = since
            {
                i.complete[a].record(t.elapsed().as_secs_f64());
            }
            let (status, reason) = other.wire();
            metrics::counter!(
                names::COMMANDS,
                "action" => action.as_str(),
                "status" => status,
                "reason" => reason.unwrap_or("none"),
            )
            .increment(1);
        }
    }
}

/// The kind of a supervised child, from its id (`gate:g1` → `gate`, `link` → `link`).
pub fn kind_of(child_id: &str) -> &str {
    child_id.split_once(':').map_or(child_id, |(kind, _)| kind)
}

/// One live actor in `gatehouse_actors{kind}`, for as long as this value lives.
pub struct Alive(Option<Gauge>);

impl Alive {
    pub fn new(kind: &str) -> Alive {
        if get().is_none() {
            return Alive(None);
        }
        let gauge = metrics::gauge!(names::ACTORS, "kind" => kind.to_owned());
        gauge.increment(1.0);
        Alive(Some(gauge))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            g.decrement(1.0);
        }
    }
}

/// A supervisor restarted a child of `kind` after it ended with `reason`.
pub fn restarted(kind: &str, failed: bool, reason: &str) {
    if get().is_none() {
        return;
    }
    let class = if !failed {
        "exit"
    } else if reason.contains("panic") {
        "panic"
    } else {
        "error"
    };
    metrics::counter!(names::ACTOR_RESTARTS, "kind" => kind.to_owned(), "reason" => class)
        .increment(1);
}

/// A connection attempt failed (`refused`, `timeout`, `other`).
pub fn connect_failed(kind: &'static str) {
    if get().is_some() {
        metrics::counter!(names::LINK_CONNECT_FAILURES, "kind" => kind).increment(1);
    }
}

/// A unit answered a request with Modbus exception `code`.
pub fn exception(code: u8) {
    if get().is_some() {
        metrics::counter!(names::LINK_EXCEPTIONS, "code" => code.to_string()).increment(1);
    }
}

/// A WebSocket session ended with close `code`.
pub fn session_closed(code: u16) {
    if get().is_some() {
        metrics::counter!(names::SESSION_CLOSES, "code" => code.to_string()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `docs/metrics.md` lists exactly the metrics this module names.
    #[test]
    fn the_documented_metrics_are_the_ones_named_here() {
        let doc = include_str!("../../docs/metrics.md");
        let documented: BTreeSet<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|name| name.starts_with("gatehouse_"))
            .collect();
        let named: BTreeSet<&str> = names::ALL.iter().copied().collect();
        assert_eq!(documented, named);
        assert_eq!(names::ALL.len(), named.len(), "a name is listed twice");
        for name in names::ALL {
            assert!(name.starts_with("gatehouse_"), "{name}");
        }
    }

    #[test]
    fn kinds_come_from_child_ids() {
        assert_eq!(kind_of("gate:north-1"), "gate");
        assert_eq!(kind_of("controller:c1"), "controller");
        assert_eq!(kind_of("link"), "link");
        assert_eq!(kind_of("session:42"), "session");
    }

    #[test]
    fn without_install_every_instrument_is_a_no_op() {
        // This test binary never installs a recorder.
        assert!(get().is_none());
        let timing = handling(Kind::Gate);
        assert!(timing.0.is_none(), "no clock is read while metrics are off");
        let mut gauge = GateStateGauge::new(GateState::Closed);
        gauge.set(GateState::Open);
        command_outcome(
            Action::Open,
            &CommandStatus::Completed,
            Some(Instant::now()),
        );
        assert!(Alive::new("gate").0.is_none());
    }
}
