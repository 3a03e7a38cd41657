//! The gate actor: one per physical gate. It owns the gate's [`GateMachine`], turns its
//! effects into writes (to the controller's link), acks (to the clients that asked) and events
//! (stamped with the gate's own sequence and published), and keeps the machine's timers.
//!
//! It survives link restarts: while the link is down it is `offline` and refuses commands
//! with a reason; the first reading after the link is back reconciles it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::FleetContext;
use super::controller::GateSlot;
use super::link::LinkMsg;
use crate::gate::GateEvent;
use crate::gate::{
    Action, Admission, Cause, CommandStatus, Effect, EventKind, FailReason, GateMachine,
    GateSnapshot, Input, Observation, RejectReason, WriteResult, WriteTag,
};
use crate::ids::{CommandId, GateId};
use crate::telemetry::{self, Counted, GateStateGauge, Mail};

/// A command's status, as delivered to whoever asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub id: CommandId,
    pub status: CommandStatus,
}

/// Where a command's acks go: a session, an HTTP request waiting, a test. Called from the gate
/// actor's task, so it must not block.
pub type AckSink = Arc<dyn Fn(&GateId, Ack) + Send + Sync>;

/// A gate actor's address; its messages are counted in and out of its mailbox.
pub type GateRef = ActorRef<Mail<GateMsg>>;

pub enum GateMsg {
    Command {
        id: CommandId,
        action: Action,
        reply: Option<AckSink>,
    },
    Observed(Observation),
    /// The unit answered a poll with this Modbus exception code.
    UnitFailed(u8),
    LinkDown,
    WriteResult {
        tag: WriteTag,
        result: WriteResult,
    },
    /// A machine timer may be due.
    Tick,
    /// The event log has committed this gate's events up to `seq`.
    Committed {
        seq: u64,
    },
    Snapshot(RpcReplyPort<GateView>),
    /// Raise an event that no command or reading caused (the scheduler's maintenance
    /// levels) on this gate's stream, with cause `system`.
    Announce(EventKind),
}

/// A gate as read from its actor.
#[derive(Debug, Clone, PartialEq)]
pub struct GateView {
    pub gate: GateId,
    pub snapshot: GateSnapshot,
    /// The sequence number of the gate's latest event (0 before any).
    pub seq: u64,
    /// The highest sequence known to be durable (equal to `seq` without an event log). Live
    /// clients resume from committed sequences only: an event not yet committed may still be
    /// on its way to the bus.
    pub committed: u64,
    /// Whether the gate wants fast polling (moving or a command in flight).
    pub busy: bool,
}

/// How long a stopping gate waits for its last outcomes to be committed before it goes.
const LAST_OUTCOMES_WAIT: Duration = Duration::from_millis(500);

/// A scheduled `Tick` to the gate itself.
type TickTimer = JoinHandle<Result<(), ractor::MessagingErr<Mail<GateMsg>>>>;

pub struct GateActor;

pub struct GateArgs {
    pub slot: Arc<GateSlot>,
    pub ctx: Arc<FleetContext>,
}

pub struct GateActorState {
    slot: Arc<GateSlot>,
    ctx: Arc<FleetContext>,
    machine: GateMachine,
    /// Who to tell about each live command (several when a client retried the same id).
    listeners: HashMap<CommandId, Vec<AckSink>>,
    /// The pending timer and the machine deadline it is for.
    timer: Option<(u64, TickTimer)>,
    /// Reused between messages so that handling allocates nothing in the common case.
    effects: Vec<Effect>,
    /// Terminal outcomes decided but not yet given the seq of their `command_finished` event.
    held: Vec<(CommandId, CommandStatus)>,
    /// Terminal outcomes waiting for their event (by seq) to be committed.
    awaiting: VecDeque<(u64, CommandId, CommandStatus)>,
    /// Events to hand to the event log once the current message's effects are applied.
    to_log: Vec<Arc<GateEvent>>,
    /// The highest committed seq.
    committed: u64,
    /// When each live command reached the gate, for its round-trip figures.
    started: HashMap<CommandId, (Action, Instant)>,
    /// This gate in `gatehouse_gates{state}`.
    gauge: GateStateGauge,
}

impl GateActorState {
    fn now_ms(&self) -> u64 {
        self.ctx.now_ms()
    }

    /// Feeds an input and carries out every effect, including the ones that follow from
    /// writes that fail on the spot (link absent).
    async fn run(&mut self, myself: &GateRef, input: Input) {
        let now = self.now_ms();
        let mut effects = std::mem::take(&mut self.effects);
        self.machine.handle(now, input, &mut effects);
        self.apply(myself, &mut effects);
        self.effects = effects;
        self.flush().await;
    }

    /// Hands this message's events to the event log; waits while its queue is full, which is
    /// the backpressure that keeps memory bounded when the database is slow or away.
    async fn flush(&mut self) {
        let Some(log) = self.ctx.eventlog.clone() else {
            return;
        };
        for event in std::mem::take(&mut self.to_log) {
            if let Err(event) = log.append(event).await {
                // The writer is gone for good (shutdown): nothing durable can be promised.
                tracing::warn!(gate = %event.gate, seq = event.seq, "event log closed; event not stored");
            }
        }
    }

    /// Whether `id`'s terminal outcome is decided but not yet durable.
    fn is_unsettled(&self, id: CommandId) -> bool {
        self.held.iter().any(|(i, _)| *i == id) || self.awaiting.iter().any(|(_, i, _)| *i == id)
    }

    /// The event log committed up to `seq`: release the outcomes that waited for it.
    fn committed(&mut self, seq: u64) {
        self.committed = self.committed.max(seq);
        while self.awaiting.front().is_some_and(|(s, _, _)| *s <= seq) {
            if let Some((_, id, status)) = self.awaiting.pop_front() {
                self.deliver(id, status);
            }
        }
    }

    fn apply(&mut self, myself: &GateRef, effects: &mut Vec<Effect>) {
        let mut i = 0;
        while i < effects.len() {
            match effects[i] {
                Effect::Write(w) => {
                    if !self.send_write(myself, w.tag, w.op) {
                        let now = self.now_ms();
                        let input = Input::WriteResult {
                            tag: w.tag,
                            result: WriteResult::Offline,
                        };
                        self.machine.handle(now, input, effects);
                    }
                }
                Effect::Ack { id, status } => {
                    if status.is_terminal() && self.ctx.eventlog.is_some() {
                        // Sent only once its `command_finished` event is committed.
                        self.held.push((id, status));
                    } else {
                        self.deliver(id, status);
                    }
                }
                Effect::Event { kind, cause } => {
                    let seq = self.slot.seq.fetch_add(1, Ordering::Relaxed) + 1;
                    let event = GateEvent {
                        gate: self.slot.spec.id.clone(),
                        controller: self.slot.controller.clone(),
                        seq,
                        at_ms: crate::clock::wall_ms(),
                        kind,
                        cause,
                        snapshot: self.machine.snapshot(),
                    };
                    if let EventKind::CommandFinished { command, .. } = kind
                        && let Some(i) = self.held.iter().position(|(id, _)| *id == command)
                    {
                        let (id, status) = self.held.swap_remove(i);
                        self.awaiting.push_back((seq, id, status));
                    }
                    self.count(&event);
                    let event = Arc::new(event);
                    if self.ctx.eventlog.is_some() {
                        // Published by the writer once committed, so that no client ever
                        // sees a seq that a crash could hand out again.
                        self.to_log.push(event);
                    } else {
                        self.ctx.bus.publish(event);
                    }
                }
            }
            i += 1;
        }
        effects.clear();
        self.reschedule(myself);
    }

    /// Hands a write to the link; false when there is no link to take it.
    fn send_write(&self, myself: &GateRef, tag: WriteTag, op: crate::gate::HwOp) -> bool {
        let Some(link) = self.ctx.directory.link(&self.slot.controller) else {
            return false;
        };
        link.send_message(
            LinkMsg::Write {
                gate: self.slot.index,
                op,
                tag,
                reply: myself.clone(),
            }
            .into(),
        )
        .is_ok()
    }

    /// The gate's share of the metrics that events carry.
    fn count(&mut self, event: &GateEvent) {
        let Some(i) = telemetry::get() else {
            return;
        };
        match event.kind {
            EventKind::StateChanged { from } => {
                self.gauge.set(event.snapshot.state);
                if event.snapshot.state == crate::gate::GateState::Fault
                    && from != crate::gate::GateState::Fault
                {
                    i.gate_faults.increment(1);
                }
                if event.snapshot.state == crate::gate::GateState::Closed
                    && from == crate::gate::GateState::Closing
                {
                    i.gate_cycles.increment(1);
                }
            }
            EventKind::Obstruction { obstructed: true } => i.gate_obstructions.increment(1),
            _ => {}
        }
    }

    fn deliver(&mut self, id: CommandId, status: CommandStatus) {
        if let Some(&(action, since)) = self.started.get(&id) {
            telemetry::command_outcome(action, &status, Some(since));
            if status.is_terminal() {
                self.started.remove(&id);
            }
        }
        let gate = &self.slot.spec.id;
        if status.is_terminal() {
            for sink in self.listeners.remove(&id).unwrap_or_default() {
                sink(gate, Ack { id, status });
            }
        } else if let Some(sinks) = self.listeners.get(&id) {
            for sink in sinks {
                sink(gate, Ack { id, status });
            }
        }
    }

    /// Keeps exactly one timer, at the machine's next deadline.
    fn reschedule(&mut self, myself: &GateRef) {
        let next = self.machine.next_deadline();
        match (next, &self.timer) {
            (Some(at), Some((scheduled, _))) if *scheduled == at => {}
            (None, None) => {}
            _ => {
                if let Some((_, handle)) = self.timer.take() {
                    handle.abort();
                }
                if let Some(at) = next {
                    let delay = Duration::from_millis(at.saturating_sub(self.now_ms()));
                    let handle = myself.send_after(delay, || GateMsg::Tick.into());
                    self.timer = Some((at, handle));
                }
            }
        }
    }
}

impl Counted for GateMsg {
    fn depth() -> &'static std::sync::atomic::AtomicI64 {
        &telemetry::GATE_MAILBOX
    }
}

impl Actor for GateActor {
    type Msg = Mail<GateMsg>;
    type State = GateActorState;
    type Arguments = GateArgs;

    async fn pre_start(
        &self,
        myself: GateRef,
        args: GateArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.ctx
            .directory
            .insert_gate(args.slot.spec.id.clone(), myself.clone());
        if let Some(ownership) = &args.ctx.ownership {
            ownership.gate_started(&args.slot.spec.id);
        }
        // A restarted gate starts from nothing: its link tells it what the unit reads now,
        // even if nothing changed since it told the actor before (which it otherwise skips).
        if let Some(link) = args.ctx.directory.link(&args.slot.controller) {
            let _ = link.send_message(
                LinkMsg::Reread {
                    gate: args.slot.index,
                }
                .into(),
            );
        }
        let mut machine = GateMachine::new(args.slot.spec.config);
        let restore = &args.slot.restore;
        if let Some(cycles) = restore.cycles {
            machine = machine.with_cycles(cycles);
        }
        let now = args.ctx.now_ms();
        for (id, action, status) in &restore.finished {
            machine.remember_finished(now, *id, *action, *status);
        }
        let committed = args.slot.seq.load(Ordering::Relaxed);
        let gauge = GateStateGauge::new(machine.snapshot().state);
        Ok(GateActorState {
            slot: args.slot,
            ctx: args.ctx,
            machine,
            listeners: HashMap::new(),
            timer: None,
            effects: Vec::new(),
            held: Vec::new(),
            awaiting: VecDeque::new(),
            to_log: Vec::new(),
            committed,
            started: HashMap::new(),
            gauge,
        })
    }

    async fn post_stop(
        &self,
        myself: GateRef,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, handle)) = state.timer.take() {
            handle.abort();
        }
        state
            .ctx
            .directory
            .remove_gate(&state.slot.spec.id, myself.get_id());
        // Whoever still waits hears that the gate went away rather than nothing at all, once
        // that is durable. The process may go on (a cluster giving the controller to another
        // node, a configuration change): wait, briefly, for the commit, then tell them. In a
        // cluster, the outcomes were stored only if the lease still held at the commit and
        // the gate had not moved to another controller; otherwise they hear
        // `failed{failover}` (its events say what became of the gate). Alone, at a shutdown
        // with the database away, they hear nothing and see their connection end.
        state.run(&myself, Input::LinkDown).await;
        if !state.awaiting.is_empty()
            && let Some(log) = state.ctx.eventlog.clone()
        {
            let committed = matches!(
                tokio::time::timeout(LAST_OUTCOMES_WAIT, log.barrier()).await,
                Ok(Ok(()))
            );
            let ownership = state.ctx.ownership.clone();
            let stored = committed
                && ownership.as_ref().is_none_or(|o| {
                    o.holds(&state.slot.controller) && !o.moved(&state.slot.spec.id)
                });
            while let Some((_, id, status)) = state.awaiting.pop_front() {
                if stored {
                    state.deliver(id, status);
                } else if ownership.is_some() {
                    state.deliver(id, CommandStatus::Failed(FailReason::Failover));
                }
            }
        }
        if let Some((_, handle)) = state.timer.take() {
            handle.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: GateRef,
        msg: Mail<GateMsg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _timing = telemetry::handling(telemetry::Kind::Gate);
        match msg.open() {
            GateMsg::Command { id, action, reply } => {
                let now = state.now_ms();
                let mut effects = std::mem::take(&mut state.effects);
                let admission = state.machine.command(now, id, action, &mut effects);
                if admission == Admission::New && telemetry::get().is_some() {
                    state.started.insert(id, (action, Instant::now()));
                }
                let gate = state.slot.spec.id.clone();
                match (admission, reply) {
                    (Admission::New, Some(sink)) => {
                        state.listeners.entry(id).or_default().push(sink);
                    }
                    (Admission::Duplicate(status), Some(sink)) => match status {
                        // A terminal status is only told once it is durable.
                        Some(s) if s.is_terminal() && !state.is_unsettled(id) => {
                            sink(&gate, Ack { id, status: s })
                        }
                        Some(s) if s.is_terminal() => {
                            state.listeners.entry(id).or_default().push(sink)
                        }
                        Some(s) => {
                            sink(&gate, Ack { id, status: s });
                            state.listeners.entry(id).or_default().push(sink);
                        }
                        None => state.listeners.entry(id).or_default().push(sink),
                    },
                    (Admission::Conflict, Some(sink)) => sink(
                        &gate,
                        Ack {
                            id,
                            status: CommandStatus::Rejected(RejectReason::IdConflict),
                        },
                    ),
                    (_, None) => {}
                }
                state.apply(&myself, &mut effects);
                state.effects = effects;
                state.flush().await;
            }
            GateMsg::Observed(obs) => state.run(&myself, Input::Observed(obs)).await,
            GateMsg::UnitFailed(code) => state.run(&myself, Input::UnitFailed { code }).await,
            GateMsg::LinkDown => state.run(&myself, Input::LinkDown).await,
            GateMsg::WriteResult { tag, result } => {
                state.run(&myself, Input::WriteResult { tag, result }).await
            }
            GateMsg::Tick => {
                state.timer = None;
                state.run(&myself, Input::Tick).await;
            }
            GateMsg::Committed { seq } => state.committed(seq),
            GateMsg::Announce(kind) => {
                let mut effects = std::mem::take(&mut state.effects);
                effects.push(Effect::Event {
                    kind,
                    cause: Cause::System,
                });
                state.apply(&myself, &mut effects);
                state.effects = effects;
                state.flush().await;
            }
            GateMsg::Snapshot(reply) => {
                let seq = state.slot.seq.load(Ordering::Relaxed);
                let _ = reply.send(GateView {
                    gate: state.slot.spec.id.clone(),
                    snapshot: state.machine.snapshot(),
                    seq,
                    committed: if state.ctx.eventlog.is_some() {
                        state.committed
                    } else {
                        seq
                    },
                    busy: state.machine.is_busy(),
                });
            }
        }
        Ok(())
    }
}
