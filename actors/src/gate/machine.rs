//! The gate state machine: a pure function of `(state, input, now) -> (state, effects)`.
//!
//! It performs no I/O and reads no clock: time arrives as `now` (milliseconds on a monotonic
//! scale chosen by the caller) and timers are inputs ([`Input::Tick`]) that the caller sends at
//! [`GateMachine::next_deadline`]. Writes to the controller, acks to clients and gate events are
//! returned as [`Effect`]s for the gate actor to carry out. This is where the safety interlocks
//! live, so it is also where the property tests live.

use std::collections::VecDeque;

use crate::gate::types::*;
use crate::ids::CommandId;

/// How many finished commands a gate remembers for idempotency (besides the live ones), so
/// that a retried id does not move the gate again (CONTRACTS.md: ids are remembered for 24
/// hours). 2,048 covers a gate commanded every 42 s around the clock; a gate busier than that
/// forgets its oldest ids early (ARCHITECTURE.md, known gaps). Entries are small (an id, an
/// action, a status, a time), and a quiet gate holds only the few it had.
pub const RECENT_COMMANDS: usize = 2048;
/// Command ids are remembered at least this long (CONTRACTS.md), within [`RECENT_COMMANDS`].
pub const COMMAND_MEMORY_MS: u64 = 24 * 60 * 60 * 1000;

/// Per-gate settings, resolved from the fleet and the gate's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    pub capabilities: Capabilities,
    /// Open/close must reach the end state within this, or the gate goes to `fault`.
    pub travel_timeout_ms: u64,
    /// A write must be confirmed within this, or the command is `timed_out`.
    pub write_timeout_ms: u64,
    /// Close automatically after the gate has been open this long.
    pub auto_close_after_ms: Option<u64>,
    /// The `auto_close_warning` event (and the warning output) comes this long before.
    pub auto_close_warning_ms: u64,
    /// Raise `left_open` once the gate has been not-closed this long.
    pub left_open_alert_after_ms: Option<u64>,
    /// With a warning output: how long it runs before a remote close is written.
    pub close_warning_lead_ms: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            capabilities: Capabilities::default(),
            travel_timeout_ms: 60_000,
            write_timeout_ms: 3_000,
            auto_close_after_ms: None,
            auto_close_warning_ms: 5_000,
            left_open_alert_after_ms: None,
            close_warning_lead_ms: 3_000,
        }
    }
}

/// Who a write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteTag {
    Command(CommandId),
    /// The runtime's own auto-close (its warning and its close).
    AutoClose,
}

/// A write for the link to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub tag: WriteTag,
    pub op: HwOp,
}

/// How a write ended, as reported by the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Confirmed,
    /// The unit answered with a Modbus exception.
    Exception(u8),
    /// The link was down, or went down before the answer.
    Offline,
    /// No answer within the link's request timeout.
    TimedOut,
    /// The unit answered, but its answer does not confirm the write (the profile's
    /// `write_echo`).
    NotConfirmed,
}

/// What the machine is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    Command {
        id: CommandId,
        action: Action,
    },
    WriteResult {
        tag: WriteTag,
        result: WriteResult,
    },
    /// A fresh poll of this gate.
    Observed(Observation),
    /// The unit answered a poll with a Modbus exception: this gate only is offline.
    UnitFailed {
        code: u8,
    },
    /// The link is down: every gate on it is offline.
    LinkDown,
    /// A timer may have expired.
    Tick,
}

/// What the machine asks its actor to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    Write(Write),
    /// Tell the command's client.
    Ack {
        id: CommandId,
        status: CommandStatus,
    },
    /// Record and publish an event (the actor stamps sequence, time and snapshot).
    Event {
        kind: EventKind,
        cause: Cause,
    },
}

/// How a command was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new command: its acks follow as effects.
    New,
    /// The id was seen with the same action: its current status (`None` = not accepted yet).
    /// Nothing is written again.
    Duplicate(Option<CommandStatus>),
    /// The id was seen with another action: answer `rejected{id_conflict}` to this request
    /// only; the original command is untouched.
    Conflict,
}

/// Where a command is taking the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Open {
        hold: bool,
    },
    Closed,
    /// Not moving.
    Still,
    /// Out of fault.
    Healthy,
}

/// The command (or auto-close) currently driving the gate: accepted, not yet finished.
#[derive(Debug, Clone, Copy)]
struct Active {
    /// `None` for the runtime's own auto-close.
    id: Option<CommandId>,
    action: Action,
    target: Target,
    deadline: u64,
    /// The gate has been seen moving the commanded way since acceptance.
    seen_motion: bool,
}

/// A write in flight for a command.
#[derive(Debug, Clone, Copy)]
struct Pending {
    id: CommandId,
    action: Action,
    op: HwOp,
    target: Target,
    deadline: u64,
    /// `accepted` was already sent (for the close that follows a confirmed warning).
    announced: bool,
}

/// A remote close waiting for its warning lead time to run out.
#[derive(Debug, Clone, Copy)]
struct DelayedClose {
    id: CommandId,
    action: Action,
    at: u64,
}

#[derive(Debug, Clone, Copy)]
struct AutoClose {
    close_at: u64,
    warned: bool,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    id: CommandId,
    action: Action,
    status: Option<CommandStatus>,
    at: u64,
}

/// One gate's state machine.
#[derive(Debug, Clone)]
pub struct GateMachine {
    cfg: GateConfig,
    snap: GateSnapshot,
    /// The last reading, to fall back on when a latched fault is cleared.
    last_obs: Option<Observation>,
    last_counter: Option<RawCounter>,
    active: Option<Active>,
    pending: Vec<Pending>,
    delayed: Option<DelayedClose>,
    auto: Option<AutoClose>,
    /// An auto-close write in flight (its deadline).
    auto_writing: Option<u64>,
    /// Since when the gate has been not closed, and whether `left_open` was raised.
    open_since: Option<u64>,
    left_open_raised: bool,
    recent: VecDeque<Record>,
}

impl GateMachine {
    pub fn new(cfg: GateConfig) -> Self {
        Self {
            cfg,
            snap: GateSnapshot {
                state: GateState::Offline,
                ..GateSnapshot::default()
            },
            last_obs: None,
            last_counter: None,
            active: None,
            pending: Vec::new(),
            delayed: None,
            auto: None,
            auto_writing: None,
            open_since: None,
            left_open_raised: false,
            recent: VecDeque::new(),
        }
    }

    /// Restores the unwrapped cycle total (from the store) before the first reading.
    pub fn with_cycles(mut self, total: u64) -> Self {
        self.snap.cycles = Some(total);
        self
    }

    /// Remembers a command that finished before this machine existed (restored from the
    /// store), so that a client retrying its id after a restart does not move the gate again.
    pub fn remember_finished(
        &mut self,
        now: u64,
        id: CommandId,
        action: Action,
        status: CommandStatus,
    ) {
        if self.recent.iter().any(|r| r.id == id) {
            return;
        }
        self.remember(now, id, action);
        if let Some(r) = self.recent.back_mut() {
            r.status = Some(status);
        }
    }

    pub fn snapshot(&self) -> GateSnapshot {
        self.snap
    }

    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    /// Whether the gate wants fast polling: moving, or a command or auto-close in flight.
    pub fn is_busy(&self) -> bool {
        self.snap.state.is_moving()
            || self.active.is_some()
            || !self.pending.is_empty()
            || self.auto_writing.is_some()
    }

    /// The earliest time at which [`Input::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let auto = self.auto.map(|a| {
            if a.warned {
                a.close_at
            } else {
                a.close_at.saturating_sub(self.cfg.auto_close_warning_ms)
            }
        });
        let left_open = match (self.open_since, self.cfg.left_open_alert_after_ms) {
            (Some(since), Some(after)) if !self.left_open_raised => Some(since + after),
            _ => None,
        };
        self.pending
            .iter()
            .map(|p| p.deadline)
            .chain(self.active.map(|a| a.deadline))
            .chain(self.delayed.map(|d| d.at))
            .chain(self.auto_writing)
            .chain(auto)
            .chain(left_open)
            .min()
    }

    /// Receives a command. New commands produce their acks in `out`.
    pub fn command(
        &mut self,
        now: u64,
        id: CommandId,
        action: Action,
        out: &mut Vec<Effect>,
    ) -> Admission {
        if let Some(r) = self.recent.iter().find(|r| r.id == id) {
            return if r.action == action {
                Admission::Duplicate(r.status)
            } else {
                Admission::Conflict
            };
        }
        self.remember(now, id, action);
        self.admit(now, id, action, out);
        Admission::New
    }

    /// Feeds one input; effects are appended to `out`.
    pub fn handle(&mut self, now: u64, input: Input, out: &mut Vec<Effect>) {
        match input {
            Input::Command { id, action } => {
                self.command(now, id, action, out);
            }
            Input::WriteResult { tag, result } => self.write_result(now, tag, result, out),
            Input::Observed(obs) => self.observed(now, obs, out),
            Input::UnitFailed { code } => self.go_offline(now, Some(code), out),
            Input::LinkDown => self.go_offline(now, None, out),
            Input::Tick => self.tick(now, out),
        }
    }

    // ---- commands ---------------------------------------------------------------------------

    fn admit(&mut self, now: u64, id: CommandId, action: Action, out: &mut Vec<Effect>) {
        let state = self.snap.state;
        let flags = self.snap.flags;
        match action {
            Action::Lockout => {
                self.accept_now(id, out);
                if !flags.locked_out {
                    self.snap.flags.locked_out = true;
                    self.auto = None;
                    self.supersede_delayed(id, out);
                    self.event(EventKind::LockedOut, Cause::Command(id), out);
                }
                self.finish(id, action, CommandStatus::Completed, out);
            }
            Action::Unlock => {
                self.accept_now(id, out);
                if flags.locked_out {
                    self.snap.flags.locked_out = false;
                    self.event(EventKind::Unlocked, Cause::Command(id), out);
                    self.arm_auto_close(now);
                }
                self.finish(id, action, CommandStatus::Completed, out);
            }
            Action::Reset => self.admit_reset(now, id, out),
            Action::Stop => {
                if state == GateState::Offline {
                    self.finish(id, action, CommandStatus::Failed(FailReason::Offline), out);
                } else {
                    self.start_write(now, id, action, HwOp::Stop, Target::Still, out);
                }
            }
            Action::Open | Action::Close | Action::Toggle | Action::HoldOpen | Action::Release => {
                if let Some(reason) = self.motion_refusal() {
                    return self.finish(id, action, CommandStatus::Rejected(reason), out);
                }
                match action {
                    Action::Release => {
                        self.accept_now(id, out);
                        if flags.held_open {
                            self.snap.flags.held_open = false;
                            self.event(EventKind::Released, Cause::Command(id), out);
                            self.arm_auto_close(now);
                        }
                        self.finish(id, action, CommandStatus::Completed, out);
                    }
                    Action::HoldOpen if state == GateState::Open => {
                        self.accept_now(id, out);
                        self.hold(id, out);
                        self.finish(id, action, CommandStatus::Completed, out);
                    }
                    Action::HoldOpen => self.start_write(
                        now,
                        id,
                        action,
                        HwOp::Open,
                        Target::Open { hold: true },
                        out,
                    ),
                    Action::Open => self.admit_open(now, id, action, out),
                    Action::Close => self.admit_close(now, id, action, out),
                    Action::Toggle => match state {
                        GateState::Closed | GateState::Closing | GateState::Stopped => {
                            self.admit_open(now, id, action, out)
                        }
                        GateState::Open | GateState::Opening => {
                            self.admit_close(now, id, action, out)
                        }
                        _ => self.finish(
                            id,
                            action,
                            CommandStatus::Rejected(RejectReason::StateUnknown),
                            out,
                        ),
                    },
                    _ => unreachable!("matched above"),
                }
            }
        }
    }

    /// Why a motion command cannot be taken now, if it cannot.
    fn motion_refusal(&self) -> Option<RejectReason> {
        match self.snap.state {
            GateState::Offline => Some(RejectReason::Offline),
            GateState::Fault => Some(RejectReason::Fault),
            _ if self.snap.flags.locked_out => Some(RejectReason::LockedOut),
            _ => None,
        }
    }

    fn close_refusal(&self) -> Option<RejectReason> {
        if self.snap.flags.obstructed {
            Some(RejectReason::Obstructed)
        } else if !self.cfg.capabilities.entrapment_protection {
            Some(RejectReason::NoEntrapmentProtection)
        } else if self.snap.flags.held_open {
            Some(RejectReason::HeldOpen)
        } else {
            None
        }
    }

    fn admit_open(&mut self, now: u64, id: CommandId, action: Action, out: &mut Vec<Effect>) {
        if self.snap.state == GateState::Open {
            self.accept_now(id, out);
            return self.finish(id, action, CommandStatus::Completed, out);
        }
        self.start_write(
            now,
            id,
            action,
            HwOp::Open,
            Target::Open { hold: false },
            out,
        );
    }

    fn admit_close(&mut self, now: u64, id: CommandId, action: Action, out: &mut Vec<Effect>) {
        if let Some(reason) = self.close_refusal() {
            return self.finish(id, action, CommandStatus::Rejected(reason), out);
        }
        if self.snap.state == GateState::Closed {
            self.accept_now(id, out);
            return self.finish(id, action, CommandStatus::Completed, out);
        }
        let op = if self.cfg.capabilities.warning_output {
            HwOp::Warn
        } else {
            HwOp::Close
        };
        self.start_write(now, id, action, op, Target::Closed, out);
    }

    fn admit_reset(&mut self, now: u64, id: CommandId, out: &mut Vec<Effect>) {
        let action = Action::Reset;
        let in_fault = self.snap.state == GateState::Fault || self.snap.latched_fault.is_some();
        if !in_fault {
            self.accept_now(id, out);
            return self.finish(id, action, CommandStatus::Completed, out);
        }
        if self.cfg.capabilities.reset {
            if self.snap.state == GateState::Offline {
                return self.finish(id, action, CommandStatus::Failed(FailReason::Offline), out);
            }
            return self.start_write(now, id, action, HwOp::Reset, Target::Healthy, out);
        }
        // No reset output: only the runtime's own latch can be cleared.
        self.accept_now(id, out);
        self.snap.latched_fault = None;
        let hw_fault = self.last_obs.is_some_and(|o| o.state == HwState::Fault);
        if self.snap.state == GateState::Fault {
            let next = match self.last_obs {
                Some(obs) => GateState::from(obs.state),
                None => GateState::Unknown,
            };
            self.set_state(now, next, Cause::Command(id), out);
        }
        let status = if hw_fault {
            CommandStatus::Failed(FailReason::FaultPersists)
        } else {
            CommandStatus::Completed
        };
        self.finish(id, action, status, out);
    }

    fn start_write(
        &mut self,
        now: u64,
        id: CommandId,
        action: Action,
        op: HwOp,
        target: Target,
        out: &mut Vec<Effect>,
    ) {
        debug_assert!(
            !(op == HwOp::Close && self.snap.flags.obstructed),
            "close written while obstructed"
        );
        self.pending.push(Pending {
            id,
            action,
            op,
            target,
            deadline: now + self.cfg.write_timeout_ms,
            announced: false,
        });
        out.push(Effect::Write(Write {
            tag: WriteTag::Command(id),
            op,
        }));
    }

    fn hold(&mut self, id: CommandId, out: &mut Vec<Effect>) {
        if !self.snap.flags.held_open {
            self.snap.flags.held_open = true;
            self.auto = None;
            self.event(EventKind::HeldOpen, Cause::Command(id), out);
        }
    }

    // ---- write results ----------------------------------------------------------------------

    fn write_result(
        &mut self,
        now: u64,
        tag: WriteTag,
        result: WriteResult,
        out: &mut Vec<Effect>,
    ) {
        let id = match tag {
            WriteTag::AutoClose => return self.auto_write_result(now, result),
            WriteTag::Command(id) => id,
        };
        let Some(i) = self.pending.iter().position(|p| p.id == id) else {
            return; // Already finished (timed out, or the link went down first).
        };
        let p = self.pending.swap_remove(i);
        match result {
            WriteResult::Confirmed if p.op == HwOp::Warn => {
                // The controller took the command: the warning runs, and the close follows
                // after the lead time, its interlocks checked again then.
                self.ack(id, CommandStatus::Accepted, out);
                self.supersede_delayed(id, out);
                self.delayed = Some(DelayedClose {
                    id,
                    action: p.action,
                    at: now + self.cfg.close_warning_lead_ms,
                });
            }
            WriteResult::Confirmed => {
                if !p.announced {
                    self.ack(id, CommandStatus::Accepted, out);
                }
                self.accepted(now, p.id, p.action, p.target, out)
            }
            WriteResult::Exception(_) => self.finish(
                id,
                p.action,
                CommandStatus::Failed(FailReason::ControllerException),
                out,
            ),
            WriteResult::Offline => self.finish(
                id,
                p.action,
                CommandStatus::Failed(FailReason::Offline),
                out,
            ),
            WriteResult::TimedOut => self.finish(id, p.action, CommandStatus::TimedOut, out),
            WriteResult::NotConfirmed => self.finish(
                id,
                p.action,
                CommandStatus::Failed(FailReason::WriteNotConfirmed),
                out,
            ),
        }
    }

    /// A command's write was confirmed: it now drives the gate.
    fn accepted(
        &mut self,
        now: u64,
        id: CommandId,
        action: Action,
        target: Target,
        out: &mut Vec<Effect>,
    ) {
        if let Some(prev) = self.active.take() {
            self.end_active(prev, CommandStatus::Failed(FailReason::Superseded), out);
        }
        self.supersede_delayed(id, out);
        // The command drives the gate now: an auto-close write still in flight is dropped,
        // so its late confirmation cannot take the gate over from this command (which would
        // then never end).
        self.auto = None;
        self.auto_writing = None;
        if target == Target::Healthy {
            self.snap.latched_fault = None;
        }
        let active = Active {
            id: Some(id),
            action,
            target,
            deadline: now + self.cfg.travel_timeout_ms,
            seen_motion: false,
        };
        if self.reached(target) {
            if let Target::Open { hold: true } = target {
                self.hold(id, out);
            }
            self.finish(id, action, CommandStatus::Completed, out);
        } else {
            self.active = Some(active);
        }
    }

    fn auto_write_result(&mut self, now: u64, result: WriteResult) {
        if self.auto_writing.take().is_none() {
            return;
        }
        if result == WriteResult::Confirmed {
            self.active = Some(Active {
                id: None,
                action: Action::Close,
                target: Target::Closed,
                deadline: now + self.cfg.travel_timeout_ms,
                seen_motion: false,
            });
        }
    }

    // ---- readings ---------------------------------------------------------------------------

    fn observed(&mut self, now: u64, obs: Observation, out: &mut Vec<Effect>) {
        self.last_obs = Some(obs);
        self.snap.position = obs.position;
        self.count_cycles(obs.cycles);
        if obs.obstructed != self.snap.flags.obstructed {
            self.snap.flags.obstructed = obs.obstructed;
            self.event(
                EventKind::Obstruction {
                    obstructed: obs.obstructed,
                },
                Cause::Local,
                out,
            );
            if obs.obstructed {
                // A remote close waiting out its warning is not written into an obstruction.
                if let Some(d) = self.delayed.take() {
                    self.finish(
                        d.id,
                        d.action,
                        CommandStatus::Failed(FailReason::Obstructed),
                        out,
                    );
                }
            }
        }
        let next = if self.snap.latched_fault.is_some() {
            GateState::Fault
        } else {
            GateState::from(obs.state)
        };
        self.snap.fault_code = if next == GateState::Fault {
            obs.fault_code
        } else {
            None
        };
        let cause = self.cause_of(next);
        self.set_state(now, next, cause, out);
        self.check_active(out);
    }

    /// Unwraps the controller's counter into a running total.
    fn count_cycles(&mut self, raw: Option<RawCounter>) {
        let Some(raw) = raw else { return };
        let total = self.snap.cycles.unwrap_or(0);
        let next = match self.last_counter {
            None if self.snap.cycles.is_none() => u64::from(raw.value),
            None => total, // Restored from the store: re-base on this reading.
            Some(prev) => {
                let modulus = 1u64 << raw.bits.min(32);
                let delta = (u64::from(raw.value) + modulus - u64::from(prev.value)) % modulus;
                // A jump of more than half the range backwards is a counter reset (a controller
                // replaced or reset), not 30,000 cycles in one poll: re-base without counting.
                if delta > modulus / 2 {
                    total
                } else {
                    total + delta
                }
            }
        };
        self.snap.cycles = Some(next);
        self.last_counter = Some(raw);
    }

    fn cause_of(&self, next: GateState) -> Cause {
        if next == self.snap.state {
            return Cause::System;
        }
        if let Some(a) = self.active {
            let consistent = match a.target {
                Target::Open { .. } => matches!(next, GateState::Opening | GateState::Open),
                Target::Closed => matches!(next, GateState::Closing | GateState::Closed),
                Target::Still => !next.is_moving(),
                Target::Healthy => next != GateState::Fault,
            };
            if consistent {
                return a.id.map_or(Cause::System, Cause::Command);
            }
        }
        if matches!(self.snap.state, GateState::Offline | GateState::Unknown) {
            return Cause::System; // Reconciling from the first reading.
        }
        if next == GateState::Fault && self.snap.latched_fault.is_some() {
            return Cause::System;
        }
        Cause::Local
    }

    /// Does the current state satisfy `target`?
    fn reached(&self, target: Target) -> bool {
        let s = self.snap.state;
        match target {
            Target::Open { .. } => s == GateState::Open,
            Target::Closed => s == GateState::Closed,
            Target::Still => !s.is_moving() && s != GateState::Offline && s != GateState::Unknown,
            Target::Healthy => s != GateState::Fault && s != GateState::Offline,
        }
    }

    fn check_active(&mut self, out: &mut Vec<Effect>) {
        let Some(mut a) = self.active else { return };
        let s = self.snap.state;
        if self.reached(a.target) {
            self.active = None;
            if let (Target::Open { hold: true }, Some(id)) = (a.target, a.id) {
                self.hold(id, out);
            }
            return self.end_active(a, CommandStatus::Completed, out);
        }
        let obstructed = self.snap.flags.obstructed;
        let interrupted = if obstructed {
            FailReason::Obstructed
        } else {
            FailReason::Interrupted
        };
        let failure = match a.target {
            _ if s == GateState::Fault && a.target != Target::Healthy => Some(FailReason::Fault),
            Target::Open { .. } => match s {
                GateState::Opening => {
                    a.seen_motion = true;
                    None
                }
                GateState::Closing => Some(FailReason::Interrupted),
                GateState::Stopped | GateState::Closed if a.seen_motion => {
                    Some(FailReason::Interrupted)
                }
                _ => None,
            },
            Target::Closed => match s {
                GateState::Closing => {
                    a.seen_motion = true;
                    None
                }
                GateState::Opening => Some(interrupted),
                GateState::Stopped | GateState::Open if a.seen_motion => Some(interrupted),
                _ => None,
            },
            Target::Still | Target::Healthy => None,
        };
        match failure {
            Some(reason) => {
                self.active = None;
                self.end_active(a, CommandStatus::Failed(reason), out);
            }
            None => self.active = Some(a),
        }
    }

    fn go_offline(&mut self, now: u64, code: Option<u8>, out: &mut Vec<Effect>) {
        for p in std::mem::take(&mut self.pending) {
            self.finish(
                p.id,
                p.action,
                CommandStatus::Failed(FailReason::Offline),
                out,
            );
        }
        if let Some(a) = self.active.take() {
            self.end_active(a, CommandStatus::Failed(FailReason::Offline), out);
        }
        if let Some(d) = self.delayed.take() {
            self.finish(
                d.id,
                d.action,
                CommandStatus::Failed(FailReason::Offline),
                out,
            );
        }
        self.auto = None;
        self.auto_writing = None;
        self.snap.fault_code = code.map(u16::from);
        self.snap.position = None;
        // The counter may be re-based by a replaced controller; keep the total, forget the raw.
        self.last_counter = None;
        self.set_state(now, GateState::Offline, Cause::System, out);
    }

    // ---- timers -----------------------------------------------------------------------------

    fn tick(&mut self, now: u64, out: &mut Vec<Effect>) {
        let (expired, live): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.pending = live;
        for p in expired {
            self.finish(p.id, p.action, CommandStatus::TimedOut, out);
        }
        if self.auto_writing.is_some_and(|d| d <= now) {
            self.auto_writing = None;
        }

        if let Some(a) = self.active
            && a.deadline <= now
        {
            self.active = None;
            match a.target {
                Target::Healthy => {
                    self.end_active(a, CommandStatus::Failed(FailReason::FaultPersists), out)
                }
                Target::Still if !self.snap.state.is_moving() => {
                    self.end_active(a, CommandStatus::Completed, out)
                }
                _ => {
                    self.end_active(a, CommandStatus::Failed(FailReason::TravelTimeout), out);
                    self.snap.latched_fault = Some(FailReason::TravelTimeout);
                    self.set_state(now, GateState::Fault, Cause::System, out);
                }
            }
        }

        if let Some(d) = self.delayed
            && d.at <= now
        {
            self.delayed = None;
            let refusal = self.motion_refusal().or_else(|| self.close_refusal());
            match refusal {
                Some(RejectReason::Obstructed) => self.finish(
                    d.id,
                    d.action,
                    CommandStatus::Failed(FailReason::Obstructed),
                    out,
                ),
                Some(RejectReason::Offline) => self.finish(
                    d.id,
                    d.action,
                    CommandStatus::Failed(FailReason::Offline),
                    out,
                ),
                Some(RejectReason::Fault) => self.finish(
                    d.id,
                    d.action,
                    CommandStatus::Failed(FailReason::Fault),
                    out,
                ),
                Some(_) => self.finish(
                    d.id,
                    d.action,
                    CommandStatus::Failed(FailReason::Superseded),
                    out,
                ),
                None => {
                    self.start_write(now, d.id, d.action, HwOp::Close, Target::Closed, out);
                    if let Some(p) = self.pending.last_mut() {
                        p.announced = true;
                    }
                }
            }
        }

        if let Some(mut auto) = self.auto {
            let warn_at = auto.close_at.saturating_sub(self.cfg.auto_close_warning_ms);
            if !auto.warned && warn_at <= now {
                auto.warned = true;
                self.event(
                    EventKind::AutoCloseWarning {
                        closes_in_ms: auto.close_at.saturating_sub(now),
                    },
                    Cause::System,
                    out,
                );
                if self.cfg.capabilities.warning_output && !self.snap.flags.obstructed {
                    out.push(Effect::Write(Write {
                        tag: WriteTag::AutoClose,
                        op: HwOp::Warn,
                    }));
                }
            }
            self.auto = Some(auto);
            if auto.close_at <= now {
                self.auto = None;
                if self.snap.flags.obstructed {
                    // Never close into an obstruction: try again, warning first, once clear.
                    self.auto = Some(AutoClose {
                        close_at: now + self.cfg.auto_close_warning_ms.max(1_000),
                        warned: false,
                    });
                } else if self.snap.state == GateState::Open && self.active.is_none() {
                    self.auto_writing = Some(now + self.cfg.write_timeout_ms);
                    out.push(Effect::Write(Write {
                        tag: WriteTag::AutoClose,
                        op: HwOp::Close,
                    }));
                }
            }
        }

        if let (Some(since), Some(after)) = (self.open_since, self.cfg.left_open_alert_after_ms)
            && !self.left_open_raised
            && since + after <= now
        {
            self.left_open_raised = true;
            self.event(
                EventKind::LeftOpen {
                    open_for_ms: now - since,
                },
                Cause::System,
                out,
            );
        }
    }

    fn arm_auto_close(&mut self, now: u64) {
        let Some(after) = self.cfg.auto_close_after_ms else {
            return;
        };
        let f = self.snap.flags;
        if self.snap.state == GateState::Open
            && self.cfg.capabilities.entrapment_protection
            && !f.held_open
            && !f.locked_out
            && self.auto.is_none()
        {
            self.auto = Some(AutoClose {
                close_at: now + after,
                warned: false,
            });
        }
    }

    // ---- bookkeeping ------------------------------------------------------------------------

    fn set_state(&mut self, now: u64, next: GateState, cause: Cause, out: &mut Vec<Effect>) {
        let from = self.snap.state;
        if from == next {
            return;
        }
        self.snap.state = next;
        self.event(EventKind::StateChanged { from }, cause, out);
        match next {
            GateState::Open => self.arm_auto_close(now),
            _ => self.auto = None,
        }
        match next {
            GateState::Closed => {
                self.open_since = None;
                self.left_open_raised = false;
            }
            GateState::Opening | GateState::Open | GateState::Stopped | GateState::Closing
                if self.open_since.is_none() && from != GateState::Offline =>
            {
                self.open_since = Some(now);
            }
            // Unknown, offline, fault: keep the clock running; we don't know better.
            _ => {}
        }
    }

    fn end_active(&mut self, a: Active, status: CommandStatus, out: &mut Vec<Effect>) {
        if let Some(id) = a.id {
            self.finish(id, a.action, status, out);
        }
    }

    fn supersede_delayed(&mut self, by: CommandId, out: &mut Vec<Effect>) {
        if let Some(d) = self.delayed.take_if(|d| d.id != by) {
            self.finish(
                d.id,
                d.action,
                CommandStatus::Failed(FailReason::Superseded),
                out,
            );
        }
    }

    fn accept_now(&mut self, id: CommandId, out: &mut Vec<Effect>) {
        self.ack(id, CommandStatus::Accepted, out);
    }

    fn finish(
        &mut self,
        id: CommandId,
        action: Action,
        status: CommandStatus,
        out: &mut Vec<Effect>,
    ) {
        debug_assert!(status.is_terminal());
        self.ack(id, status, out);
        self.event(
            EventKind::CommandFinished {
                command: id,
                action,
                status,
            },
            Cause::Command(id),
            out,
        );
    }

    fn ack(&mut self, id: CommandId, status: CommandStatus, out: &mut Vec<Effect>) {
        if let Some(r) = self.recent.iter_mut().find(|r| r.id == id) {
            r.status = Some(status);
        }
        out.push(Effect::Ack { id, status });
    }

    fn event(&mut self, kind: EventKind, cause: Cause, out: &mut Vec<Effect>) {
        out.push(Effect::Event { kind, cause });
    }

    fn remember(&mut self, now: u64, id: CommandId, action: Action) {
        // Forget finished commands past the memory window, then the oldest finished ones
        // beyond the cap. Live commands always stay: their id must keep deduplicating.
        let finished = |r: &Record| r.status.is_some_and(CommandStatus::is_terminal);
        self.recent
            .retain(|r| !(finished(r) && now.saturating_sub(r.at) > COMMAND_MEMORY_MS));
        while self.recent.len() >= RECENT_COMMANDS {
            match self.recent.iter().position(finished) {
                Some(i) => {
                    self.recent.remove(i);
                }
                None => break,
            }
        }
        self.recent.push_back(Record {
            id,
            action,
            status: None,
            at: now,
        });
    }
}

#[cfg(test)]
mod tests;
