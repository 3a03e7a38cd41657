//! Specification of the gate state machine: scenarios first, then properties over random
//! input sequences.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

/// A gate under test with its own clock.
struct Gate {
    m: GateMachine,
    now: u64,
}

fn obs(state: HwState) -> Observation {
    Observation::state_only(state)
}

fn obstructed(state: HwState) -> Observation {
    Observation {
        obstructed: true,
        ..obs(state)
    }
}

impl Gate {
    fn new(cfg: GateConfig) -> Self {
        Self {
            m: GateMachine::new(cfg),
            now: 1_000,
        }
    }

    /// A gate that has reported `state` once.
    fn at(cfg: GateConfig, state: HwState) -> Self {
        let mut g = Self::new(cfg);
        g.feed(Input::Observed(obs(state)));
        g
    }

    fn feed(&mut self, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        self.m.handle(self.now, input, &mut out);
        out
    }

    fn cmd(&mut self, action: Action) -> (CommandId, Vec<Effect>) {
        let id = CommandId::random();
        let mut out = Vec::new();
        assert_eq!(
            self.m.command(self.now, id, action, &mut out),
            Admission::New
        );
        (id, out)
    }

    fn confirm(&mut self, id: CommandId) -> Vec<Effect> {
        self.feed(Input::WriteResult {
            tag: WriteTag::Command(id),
            result: WriteResult::Confirmed,
        })
    }

    fn observe(&mut self, o: Observation) -> Vec<Effect> {
        self.feed(Input::Observed(o))
    }

    fn advance(&mut self, ms: u64) -> Vec<Effect> {
        self.now += ms;
        self.feed(Input::Tick)
    }

    fn state(&self) -> GateState {
        self.m.snapshot().state
    }
}

fn writes(effects: &[Effect]) -> Vec<HwOp> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Write(w) => Some(w.op),
            _ => None,
        })
        .collect()
}

fn acks(effects: &[Effect], id: CommandId) -> Vec<CommandStatus> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Ack { id: i, status } if *i == id => Some(*status),
            _ => None,
        })
        .collect()
}

fn state_changes(effects: &[Effect]) -> Vec<(GateState, Cause)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event {
                kind: EventKind::StateChanged { from },
                cause,
            } => Some((*from, *cause)),
            _ => None,
        })
        .collect()
}

fn has_event(effects: &[Effect], pred: impl Fn(&EventKind) -> bool) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Event { kind, .. } if pred(kind)))
}

#[test]
fn a_new_gate_is_offline_until_its_first_reading_and_that_reading_is_a_system_event() {
    let mut g = Gate::new(GateConfig::default());
    assert_eq!(g.state(), GateState::Offline);
    let fx = g.observe(obs(HwState::Closed));
    assert_eq!(g.state(), GateState::Closed);
    assert_eq!(
        state_changes(&fx),
        vec![(GateState::Offline, Cause::System)]
    );
}

#[test]
fn open_is_accepted_on_write_confirmation_and_completed_at_the_open_limit() {
    let mut g = Gate::at(GateConfig::default(), HwState::Closed);
    let (id, fx) = g.cmd(Action::Open);
    assert_eq!(writes(&fx), vec![HwOp::Open]);
    assert!(
        acks(&fx, id).is_empty(),
        "nothing is acked before the write is confirmed"
    );

    let fx = g.confirm(id);
    assert_eq!(acks(&fx, id), vec![CommandStatus::Accepted]);

    let fx = g.observe(obs(HwState::Opening));
    assert_eq!(
        state_changes(&fx),
        vec![(GateState::Closed, Cause::Command(id))]
    );
    assert!(acks(&fx, id).is_empty());

    let fx = g.observe(obs(HwState::Open));
    assert_eq!(acks(&fx, id), vec![CommandStatus::Completed]);
    assert_eq!(
        state_changes(&fx),
        vec![(GateState::Opening, Cause::Command(id))]
    );
}

#[test]
fn close_is_never_written_while_the_gate_reports_an_obstruction() {
    let mut g = Gate::new(GateConfig::default());
    g.observe(obstructed(HwState::Open));
    for action in [Action::Close, Action::Toggle] {
        let (id, fx) = g.cmd(action);
        assert!(writes(&fx).is_empty());
        assert_eq!(
            acks(&fx, id),
            vec![CommandStatus::Rejected(RejectReason::Obstructed)]
        );
    }
}

#[test]
fn a_closing_gate_that_reverses_on_an_obstruction_fails_the_close_with_obstructed() {
    let mut g = Gate::at(GateConfig::default(), HwState::Open);
    let (id, _) = g.cmd(Action::Close);
    g.confirm(id);
    g.observe(obs(HwState::Closing));
    let fx = g.observe(obstructed(HwState::Opening));
    assert_eq!(
        acks(&fx, id),
        vec![CommandStatus::Failed(FailReason::Obstructed)]
    );
    assert!(has_event(&fx, |k| matches!(
        k,
        EventKind::Obstruction { obstructed: true }
    )));
}

#[test]
fn travel_timeout_fails_the_command_and_latches_a_fault_until_reset() {
    let cfg = GateConfig {
        travel_timeout_ms: 10_000,
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Closed);
    let (id, _) = g.cmd(Action::Open);
    g.confirm(id);
    g.observe(obs(HwState::Opening));
    assert!(g.advance(9_999).is_empty());
    let fx = g.advance(1);
    assert_eq!(
        acks(&fx, id),
        vec![CommandStatus::Failed(FailReason::TravelTimeout)]
    );
    assert_eq!(g.state(), GateState::Fault);
    assert_eq!(
        g.m.snapshot().latched_fault,
        Some(FailReason::TravelTimeout)
    );

    // Readings do not clear a latched fault, and motion is refused.
    g.observe(obs(HwState::Open));
    assert_eq!(g.state(), GateState::Fault);
    let (open, fx) = g.cmd(Action::Open);
    assert_eq!(
        acks(&fx, open),
        vec![CommandStatus::Rejected(RejectReason::Fault)]
    );

    // Without a reset output, reset clears the latch and the last reading takes over.
    let (reset, fx) = g.cmd(Action::Reset);
    assert!(writes(&fx).is_empty());
    assert_eq!(
        acks(&fx, reset),
        vec![CommandStatus::Accepted, CommandStatus::Completed]
    );
    assert_eq!(g.state(), GateState::Open);
}

#[test]
fn reset_with_a_reset_output_writes_it_and_completes_when_the_controller_clears_the_fault() {
    let cfg = GateConfig {
        capabilities: Capabilities {
            reset: true,
            ..Capabilities::default()
        },
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Fault);
    let (id, fx) = g.cmd(Action::Reset);
    assert_eq!(writes(&fx), vec![HwOp::Reset]);
    assert_eq!(acks(&g.confirm(id), id), vec![CommandStatus::Accepted]);
    let fx = g.observe(obs(HwState::Stopped));
    assert_eq!(acks(&fx, id), vec![CommandStatus::Completed]);
}

#[test]
fn offline_refuses_motion_fails_stop_and_still_takes_lockout() {
    let mut g = Gate::new(GateConfig::default());
    assert_eq!(g.state(), GateState::Offline);
    for action in [
        Action::Open,
        Action::Close,
        Action::Toggle,
        Action::HoldOpen,
    ] {
        let (id, fx) = g.cmd(action);
        assert!(writes(&fx).is_empty());
        assert_eq!(
            acks(&fx, id),
            vec![CommandStatus::Rejected(RejectReason::Offline)]
        );
    }
    let (stop, fx) = g.cmd(Action::Stop);
    assert_eq!(
        acks(&fx, stop),
        vec![CommandStatus::Failed(FailReason::Offline)]
    );
    let (lock, fx) = g.cmd(Action::Lockout);
    assert_eq!(
        acks(&fx, lock),
        vec![CommandStatus::Accepted, CommandStatus::Completed]
    );
    assert!(g.m.snapshot().flags.locked_out);
}

#[test]
fn lockout_refuses_motion_but_not_stop_and_unlock_lifts_it() {
    let mut g = Gate::at(GateConfig::default(), HwState::Closed);
    g.cmd(Action::Lockout);
    let (id, fx) = g.cmd(Action::Open);
    assert_eq!(
        acks(&fx, id),
        vec![CommandStatus::Rejected(RejectReason::LockedOut)]
    );
    let (_, fx) = g.cmd(Action::Stop);
    assert_eq!(writes(&fx), vec![HwOp::Stop]);
    g.cmd(Action::Unlock);
    let (_, fx) = g.cmd(Action::Open);
    assert_eq!(writes(&fx), vec![HwOp::Open]);
}

#[test]
fn a_retried_command_id_does_not_move_the_gate_twice() {
    let mut g = Gate::at(GateConfig::default(), HwState::Closed);
    let (id, fx) = g.cmd(Action::Open);
    assert_eq!(writes(&fx).len(), 1);

    let mut out = Vec::new();
    assert_eq!(
        g.m.command(g.now, id, Action::Open, &mut out),
        Admission::Duplicate(None)
    );
    assert!(out.is_empty());
    g.confirm(id);
    assert_eq!(
        g.m.command(g.now, id, Action::Open, &mut out),
        Admission::Duplicate(Some(CommandStatus::Accepted))
    );
    assert_eq!(
        g.m.command(g.now, id, Action::Close, &mut out),
        Admission::Conflict
    );
    assert!(
        out.is_empty(),
        "neither a duplicate nor a conflict writes anything"
    );
}

#[test]
fn auto_close_warns_first_then_closes_and_waits_out_an_obstruction() {
    let cfg = GateConfig {
        auto_close_after_ms: Some(30_000),
        auto_close_warning_ms: 5_000,
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Closed);
    g.observe(obs(HwState::Open)); // opened locally (a radio remote)
    assert!(g.advance(24_999).is_empty());
    let fx = g.advance(1);
    assert!(has_event(&fx, |k| matches!(
        k,
        EventKind::AutoCloseWarning {
            closes_in_ms: 5_000
        }
    )));
    assert!(writes(&fx).is_empty());

    // An obstruction appears before the dwell ends: no close is written.
    g.observe(obstructed(HwState::Open));
    let fx = g.advance(5_000);
    assert!(writes(&fx).is_empty());

    // Once clear, it warns again and closes.
    g.observe(obs(HwState::Open));
    let mut all = Vec::new();
    while writes(&all).is_empty() && all.len() < 100 {
        all.extend(g.advance(500));
    }
    assert!(has_event(&all, |k| matches!(
        k,
        EventKind::AutoCloseWarning { .. }
    )));
    assert_eq!(writes(&all), vec![HwOp::Close]);
    let fx = g.feed(Input::WriteResult {
        tag: WriteTag::AutoClose,
        result: WriteResult::Confirmed,
    });
    assert!(fx.is_empty());
    let fx = g.observe(obs(HwState::Closing));
    assert_eq!(state_changes(&fx), vec![(GateState::Open, Cause::System)]);
}

#[test]
fn without_entrapment_protection_no_remote_or_automatic_close_is_written() {
    let cfg = GateConfig {
        auto_close_after_ms: Some(1_000),
        capabilities: Capabilities {
            entrapment_protection: false,
            ..Capabilities::default()
        },
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Open);
    let (id, fx) = g.cmd(Action::Close);
    assert_eq!(
        acks(&fx, id),
        vec![CommandStatus::Rejected(
            RejectReason::NoEntrapmentProtection
        )]
    );
    assert!(writes(&g.advance(60_000)).is_empty());
}

#[test]
fn a_remote_close_runs_the_warning_output_for_the_lead_time_first() {
    let cfg = GateConfig {
        close_warning_lead_ms: 3_000,
        capabilities: Capabilities {
            warning_output: true,
            ..Capabilities::default()
        },
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Open);
    let (id, fx) = g.cmd(Action::Close);
    assert_eq!(writes(&fx), vec![HwOp::Warn]);
    // The controller took the command: accepted now, not after the lead time.
    assert_eq!(acks(&g.confirm(id), id), vec![CommandStatus::Accepted]);
    assert!(writes(&g.advance(2_999)).is_empty());
    let fx = g.advance(1);
    assert_eq!(writes(&fx), vec![HwOp::Close]);
    assert!(acks(&g.confirm(id), id).is_empty(), "accepted only once");
    g.observe(obs(HwState::Closing));
    assert_eq!(
        acks(&g.observe(obs(HwState::Closed)), id),
        vec![CommandStatus::Completed]
    );
}

#[test]
fn a_close_waiting_out_its_warning_is_dropped_when_an_obstruction_appears() {
    let cfg = GateConfig {
        capabilities: Capabilities {
            warning_output: true,
            ..Capabilities::default()
        },
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Open);
    let (id, _) = g.cmd(Action::Close);
    g.confirm(id);
    let fx = g.observe(obstructed(HwState::Open));
    assert_eq!(
        acks(&fx, id),
        vec![CommandStatus::Failed(FailReason::Obstructed)]
    );
    assert!(writes(&g.advance(10_000)).is_empty());
}

#[test]
fn a_state_change_no_command_caused_is_attributed_to_nobody() {
    let mut g = Gate::at(GateConfig::default(), HwState::Closed);
    let fx = g.observe(obs(HwState::Opening));
    assert_eq!(state_changes(&fx), vec![(GateState::Closed, Cause::Local)]);
}

#[test]
fn a_later_command_supersedes_the_one_driving_the_gate() {
    let mut g = Gate::at(GateConfig::default(), HwState::Closed);
    let (open, _) = g.cmd(Action::Open);
    g.confirm(open);
    g.observe(obs(HwState::Opening));
    let (stop, _) = g.cmd(Action::Stop);
    let fx = g.confirm(stop);
    assert_eq!(acks(&fx, stop), vec![CommandStatus::Accepted]);
    assert_eq!(
        acks(&fx, open),
        vec![CommandStatus::Failed(FailReason::Superseded)]
    );
    let fx = g.observe(obs(HwState::Stopped));
    assert_eq!(acks(&fx, stop), vec![CommandStatus::Completed]);
    assert_eq!(
        state_changes(&fx),
        vec![(GateState::Opening, Cause::Command(stop))]
    );
}

#[test]
fn an_unconfirmed_write_times_out() {
    let mut g = Gate::at(GateConfig::default(), HwState::Closed);
    let (id, _) = g.cmd(Action::Open);
    let fx = g.advance(GateConfig::default().write_timeout_ms);
    assert_eq!(acks(&fx, id), vec![CommandStatus::TimedOut]);
    // A late confirmation changes nothing.
    assert!(g.confirm(id).is_empty());
}

#[test]
fn link_loss_fails_running_commands_and_the_first_reading_after_reconciles() {
    let mut g = Gate::at(GateConfig::default(), HwState::Closed);
    let (id, _) = g.cmd(Action::Open);
    g.confirm(id);
    let fx = g.feed(Input::LinkDown);
    assert_eq!(
        acks(&fx, id),
        vec![CommandStatus::Failed(FailReason::Offline)]
    );
    assert_eq!(g.state(), GateState::Offline);
    let fx = g.observe(obs(HwState::Open));
    assert_eq!(
        state_changes(&fx),
        vec![(GateState::Offline, Cause::System)]
    );
}

#[test]
fn a_unit_exception_takes_only_that_gate_offline_with_its_code() {
    let mut g = Gate::at(GateConfig::default(), HwState::Closed);
    g.feed(Input::UnitFailed { code: 11 });
    assert_eq!(g.state(), GateState::Offline);
    assert_eq!(g.m.snapshot().fault_code, Some(11));
}

#[test]
fn hold_open_suspends_auto_close_and_refuses_close_until_released() {
    let cfg = GateConfig {
        auto_close_after_ms: Some(10_000),
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Closed);
    let (hold, _) = g.cmd(Action::HoldOpen);
    g.confirm(hold);
    g.observe(obs(HwState::Opening));
    let fx = g.observe(obs(HwState::Open));
    assert_eq!(acks(&fx, hold), vec![CommandStatus::Completed]);
    assert!(g.m.snapshot().flags.held_open);
    assert!(writes(&g.advance(60_000)).is_empty());
    let (close, fx) = g.cmd(Action::Close);
    assert_eq!(
        acks(&fx, close),
        vec![CommandStatus::Rejected(RejectReason::HeldOpen)]
    );
    g.cmd(Action::Release);
    assert!(!g.m.snapshot().flags.held_open);
    let mut all = Vec::new();
    for _ in 0..11 {
        all.extend(g.advance(1_000));
    }
    assert_eq!(
        writes(&all),
        vec![HwOp::Close],
        "auto-close re-armed on release"
    );
}

#[test]
fn left_open_is_raised_once_per_opening() {
    let cfg = GateConfig {
        left_open_alert_after_ms: Some(60_000),
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Closed);
    g.observe(obs(HwState::Open));
    let mut all = Vec::new();
    for _ in 0..5 {
        all.extend(g.advance(30_000));
    }
    let raised = all
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Event {
                    kind: EventKind::LeftOpen { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(raised, 1);
}

#[test]
fn cycle_counters_unwrap_across_a_16_bit_wrap_and_rebase_on_a_reset() {
    let mut g = Gate::new(GateConfig::default());
    let at = |value| Observation {
        cycles: Some(RawCounter { value, bits: 16 }),
        ..obs(HwState::Closed)
    };
    g.observe(at(65_534));
    g.observe(at(65_535));
    g.observe(at(1));
    assert_eq!(g.m.snapshot().cycles, Some(65_534 + 3));
    // A controller swapped for a new one starts from 0: not 35,000 cycles in one poll.
    g.observe(at(30_000));
    assert_eq!(g.m.snapshot().cycles, Some(65_537 + 29_999));
    g.observe(at(3));
    g.observe(at(5));
    assert_eq!(g.m.snapshot().cycles, Some(65_537 + 29_999 + 2));
}

// ---- properties ---------------------------------------------------------------------------

/// A step of the environment around one gate.
#[derive(Debug, Clone)]
enum Step {
    Command {
        id: usize,
        action: Action,
    },
    /// Answer the `n`-th outstanding write (modulo) with this result.
    Answer {
        n: usize,
        result: WriteResult,
    },
    Observe {
        state: HwState,
        obstructed: bool,
    },
    UnitFailed,
    LinkDown,
    Advance {
        ms: u64,
    },
}

fn hw_state() -> impl Strategy<Value = HwState> {
    prop_oneof![
        Just(HwState::Closed),
        Just(HwState::Opening),
        Just(HwState::Open),
        Just(HwState::Closing),
        Just(HwState::Stopped),
        Just(HwState::Fault),
        Just(HwState::Unknown),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let result = prop_oneof![
        6 => Just(WriteResult::Confirmed),
        1 => Just(WriteResult::Exception(2)),
        1 => Just(WriteResult::Offline),
        1 => Just(WriteResult::TimedOut),
    ];
    prop_oneof![
        4 => (0..8usize, proptest::sample::select(Action::ALL.to_vec()))
            .prop_map(|(id, action)| Step::Command { id, action }),
        4 => (0..4usize, result).prop_map(|(n, result)| Step::Answer { n, result }),
        5 => (hw_state(), proptest::bool::weighted(0.2))
            .prop_map(|(state, obstructed)| Step::Observe { state, obstructed }),
        1 => Just(Step::UnitFailed),
        1 => Just(Step::LinkDown),
        3 => (0..40_000u64).prop_map(|ms| Step::Advance { ms }),
    ]
}

fn config() -> impl Strategy<Value = GateConfig> {
    (
        any::<(bool, bool, bool)>(),
        proptest::option::of(1_000..60_000u64),
        proptest::option::of(1_000..120_000u64),
    )
        .prop_map(
            |((reset, warning_output, entrapment), auto, left)| GateConfig {
                capabilities: Capabilities {
                    reset,
                    warning_output,
                    entrapment_protection: entrapment,
                },
                auto_close_after_ms: auto,
                left_open_alert_after_ms: left,
                ..GateConfig::default()
            },
        )
}

/// Everything the properties need to know about a run.
#[derive(Default)]
struct Ledger {
    admitted: HashSet<CommandId>,
    accepted: HashMap<CommandId, usize>,
    terminal: HashMap<CommandId, usize>,
}

impl Ledger {
    fn record(&mut self, effects: &[Effect]) -> Result<(), TestCaseError> {
        for e in effects {
            if let Effect::Ack { id, status } = e {
                prop_assert!(
                    self.admitted.contains(id),
                    "ack for a command never admitted"
                );
                prop_assert!(
                    !self.terminal.contains_key(id),
                    "{id} got {status:?} after its terminal outcome"
                );
                if status.is_terminal() {
                    *self.terminal.entry(*id).or_default() += 1;
                } else {
                    let n = self.accepted.entry(*id).or_default();
                    *n += 1;
                    prop_assert_eq!(*n, 1, "accepted twice");
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn safety_and_outcome_invariants_hold_for_any_input_sequence(
        cfg in config(),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let ids: Vec<CommandId> = (0..8).map(|_| CommandId::random()).collect();
        let mut m = GateMachine::new(cfg);
        let mut now = 0u64;
        let mut outstanding: Vec<WriteTag> = Vec::new();
        let mut ledger = Ledger::default();

        for step in steps {
            let before = m.snapshot();
            let mut out = Vec::new();
            let mut admitted_action = None;
            match step {
                Step::Command { id, action } => {
                    let id = ids[id];
                    if m.command(now, id, action, &mut out) == Admission::New {
                        ledger.admitted.insert(id);
                        admitted_action = Some(action);
                    } else {
                        prop_assert!(out.is_empty(), "a repeated id must not act");
                    }
                }
                Step::Answer { n, result } => {
                    if !outstanding.is_empty() {
                        let tag = outstanding.remove(n % outstanding.len());
                        m.handle(now, Input::WriteResult { tag, result }, &mut out);
                    }
                }
                Step::Observe { state, obstructed } => {
                    let o = Observation { obstructed, ..Observation::state_only(state) };
                    m.handle(now, Input::Observed(o), &mut out);
                }
                Step::UnitFailed => m.handle(now, Input::UnitFailed { code: 4 }, &mut out),
                Step::LinkDown => {
                    outstanding.clear();
                    m.handle(now, Input::LinkDown, &mut out);
                }
                Step::Advance { ms } => {
                    now += ms;
                    m.handle(now, Input::Tick, &mut out);
                }
            }
            let after = m.snapshot();

            for e in &out {
                if let Effect::Write(w) = e {
                    outstanding.push(w.tag);
                    if w.op == HwOp::Close {
                        // Never a close while the gate is known to be obstructed.
                        prop_assert!(!before.flags.obstructed && !after.flags.obstructed);
                        prop_assert!(cfg.capabilities.entrapment_protection);
                    }
                }
            }
            ledger.record(&out)?;

            if let Some(action) = admitted_action {
                let writes: Vec<_> = out.iter().filter(|e| matches!(e, Effect::Write(_))).collect();
                let id = match step { Step::Command { id, .. } => ids[id], _ => unreachable!() };
                let first_ack = out.iter().find_map(|e| match e {
                    Effect::Ack { id: i, status } if *i == id => Some(*status),
                    _ => None,
                });
                let motion = matches!(
                    action,
                    Action::Open | Action::Close | Action::Toggle | Action::HoldOpen | Action::Release
                );
                // Offline refuses everything but stop: nothing is written, motion is rejected.
                if before.state == GateState::Offline {
                    prop_assert!(writes.is_empty(), "{action:?} wrote while offline");
                    if motion {
                        prop_assert_eq!(first_ack, Some(CommandStatus::Rejected(RejectReason::Offline)));
                    }
                    if action == Action::Stop {
                        prop_assert_eq!(first_ack, Some(CommandStatus::Failed(FailReason::Offline)));
                    }
                }
                // Lockout refuses motion; stop, unlock, lockout and reset still go through.
                if before.flags.locked_out && motion {
                    prop_assert!(writes.is_empty(), "{action:?} wrote while locked out");
                    prop_assert!(matches!(first_ack, Some(CommandStatus::Rejected(_))));
                }
                if before.state == GateState::Fault && motion {
                    prop_assert!(writes.is_empty(), "{action:?} wrote in fault");
                }
            }
        }

        // Drain: the link drops and every timer runs out. Every admitted command has then
        // had exactly one terminal outcome.
        let mut out = Vec::new();
        m.handle(now, Input::LinkDown, &mut out);
        now += 10 * 24 * 60 * 60 * 1000;
        m.handle(now, Input::Tick, &mut out);
        ledger.record(&out)?;
        for id in &ledger.admitted {
            prop_assert_eq!(ledger.terminal.get(id).copied(), Some(1), "command {} has no single outcome", id);
        }
        prop_assert!(m.next_deadline().is_none() || m.snapshot().state == GateState::Offline);
    }
}
