//! The gate actor: one per physical gate. It owns the gate's [`GateMachine`], turns its
//! effects into writes (to the controller's link), acks (to the clients that asked) and events
//! (stamped with the gate's own sequence and published), and keeps the machine's timers.
//!
//! It survives link restarts: while the link is down it is `offline` and refuses commands
//! with a reason; the first reading after the link is back reconciles it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::fleet::events::GateEvent;
use crate::fleet::link::LinkMsg;
use crate::fleet::{FleetContext, GateBinding};
use crate::gate::{
    Action, Admission, CommandStatus, Effect, GateMachine, GateSnapshot, Input, Observation,
    RejectReason, WriteResult, WriteTag,
};
use crate::ids::{CommandId, GateId};

/// A command's status, as delivered to whoever asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub id: CommandId,
    pub status: CommandStatus,
}

/// Where a command's acks go: a session, an HTTP request waiting, a test. Called from the gate
/// actor's task, so it must not block.
pub type AckSink = Arc<dyn Fn(&GateId, Ack) + Send + Sync>;

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
    Snapshot(RpcReplyPort<GateView>),
}

/// A gate as read from its actor.
#[derive(Debug, Clone, PartialEq)]
pub struct GateView {
    pub gate: GateId,
    pub snapshot: GateSnapshot,
    /// The sequence number of the gate's latest event (0 before any).
    pub seq: u64,
    /// Whether the gate wants fast polling (moving or a command in flight).
    pub busy: bool,
}

/// A scheduled `Tick` to the gate itself.
type TickTimer = JoinHandle<Result<(), ractor::MessagingErr<GateMsg>>>;

pub struct GateActor;

pub struct GateArgs {
    pub binding: Arc<GateBinding>,
    pub ctx: Arc<FleetContext>,
}

pub struct GateActorState {
    binding: Arc<GateBinding>,
    ctx: Arc<FleetContext>,
    machine: GateMachine,
    /// Who to tell about each live command (several when a client retried the same id).
    listeners: HashMap<CommandId, Vec<AckSink>>,
    /// The pending timer and the machine deadline it is for.
    timer: Option<(u64, TickTimer)>,
    /// Reused between messages so that handling allocates nothing in the common case.
    effects: Vec<Effect>,
}

impl GateActorState {
    fn now_ms(&self) -> u64 {
        self.ctx.now_ms()
    }

    /// Feeds an input and carries out every effect, including the ones that follow from
    /// writes that fail on the spot (link absent).
    fn run(&mut self, myself: &ActorRef<GateMsg>, input: Input) {
        let now = self.now_ms();
        let mut effects = std::mem::take(&mut self.effects);
        self.machine.handle(now, input, &mut effects);
        self.apply(myself, &mut effects);
        self.effects = effects;
    }

    fn apply(&mut self, myself: &ActorRef<GateMsg>, effects: &mut Vec<Effect>) {
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
                Effect::Ack { id, status } => self.deliver(id, status),
                Effect::Event { kind, cause } => {
                    let seq = self.binding.seq.fetch_add(1, Ordering::Relaxed) + 1;
                    let event = GateEvent {
                        gate: self.binding.spec.id.clone(),
                        controller: self.binding.controller.clone(),
                        seq,
                        at_ms: wall_clock_ms(),
                        kind,
                        cause,
                        snapshot: self.machine.snapshot(),
                    };
                    self.ctx.bus.publish(Arc::new(event));
                }
            }
            i += 1;
        }
        effects.clear();
        self.reschedule(myself);
    }

    /// Hands a write to the link; false when there is no link to take it.
    fn send_write(&self, myself: &ActorRef<GateMsg>, tag: WriteTag, op: crate::gate::HwOp) -> bool {
        let Some(link) = self.ctx.directory.link(&self.binding.controller) else {
            return false;
        };
        link.send_message(LinkMsg::Write {
            gate: self.binding.index,
            op,
            tag,
            reply: myself.clone(),
        })
        .is_ok()
    }

    fn deliver(&mut self, id: CommandId, status: CommandStatus) {
        let gate = &self.binding.spec.id;
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
    fn reschedule(&mut self, myself: &ActorRef<GateMsg>) {
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
                    let handle = myself.send_after(delay, || GateMsg::Tick);
                    self.timer = Some((at, handle));
                }
            }
        }
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Actor for GateActor {
    type Msg = GateMsg;
    type State = GateActorState;
    type Arguments = GateArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GateMsg>,
        args: GateArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.ctx
            .directory
            .insert_gate(args.binding.spec.id.clone(), myself.clone());
        let machine = GateMachine::new(args.binding.spec.config);
        Ok(GateActorState {
            binding: args.binding,
            ctx: args.ctx,
            machine,
            listeners: HashMap::new(),
            timer: None,
            effects: Vec::new(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<GateMsg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, handle)) = state.timer.take() {
            handle.abort();
        }
        state
            .ctx
            .directory
            .remove_gate(&state.binding.spec.id, myself.get_id());
        // Whoever still waits hears that the gate went away rather than nothing at all.
        let now = state.now_ms();
        let mut effects = Vec::new();
        state.machine.handle(now, Input::LinkDown, &mut effects);
        for e in effects {
            if let Effect::Ack { id, status } = e {
                state.deliver(id, status);
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<GateMsg>,
        msg: GateMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GateMsg::Command { id, action, reply } => {
                let now = state.now_ms();
                let mut effects = std::mem::take(&mut state.effects);
                let admission = state.machine.command(now, id, action, &mut effects);
                let gate = state.binding.spec.id.clone();
                match (admission, reply) {
                    (Admission::New, Some(sink)) => {
                        state.listeners.entry(id).or_default().push(sink);
                    }
                    (Admission::Duplicate(status), Some(sink)) => match status {
                        Some(s) if s.is_terminal() => sink(&gate, Ack { id, status: s }),
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
            }
            GateMsg::Observed(obs) => state.run(&myself, Input::Observed(obs)),
            GateMsg::UnitFailed(code) => state.run(&myself, Input::UnitFailed { code }),
            GateMsg::LinkDown => state.run(&myself, Input::LinkDown),
            GateMsg::WriteResult { tag, result } => {
                state.run(&myself, Input::WriteResult { tag, result })
            }
            GateMsg::Tick => {
                state.timer = None;
                state.run(&myself, Input::Tick);
            }
            GateMsg::Snapshot(reply) => {
                let _ = reply.send(GateView {
                    gate: state.binding.spec.id.clone(),
                    snapshot: state.machine.snapshot(),
                    seq: state.binding.seq.load(Ordering::Relaxed),
                    busy: state.machine.is_busy(),
                });
            }
        }
        Ok(())
    }
}
