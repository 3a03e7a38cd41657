//! Specification of the gate state machine: scenarios first, then properties over random
//! input sequences.

use std::collections::HashMap;

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

/// Found by the racing proptest: a close command confirmed while the auto-close's own write
/// was in flight used to be overwritten by that write's late confirmation, and never ended.
#[test]
fn a_close_command_racing_an_auto_close_write_still_ends() {
    let cfg = GateConfig {
        auto_close_after_ms: Some(1_000),
        auto_close_warning_ms: 0,
        travel_timeout_ms: 1_000,
        write_timeout_ms: 1_000,
        ..GateConfig::default()
    };
    let mut g = Gate::at(cfg, HwState::Open);
    let mut fx = Vec::new();
    for _ in 0..20 {
        fx = g.advance(100);
        if !writes(&fx).is_empty() {
            break;
        }
    }
    assert_eq!(writes(&fx), vec![HwOp::Close], "the auto-close is written");
    let (id, _) = g.cmd(Action::Close);
    let fx = g.confirm(id);
    assert_eq!(acks(&fx, id), vec![CommandStatus::Accepted]);
    // The auto-close's confirmation arrives late: the command keeps the gate.
    g.feed(Input::WriteResult {
        tag: WriteTag::AutoClose,
        result: WriteResult::Confirmed,
    });
    let fx = g.observe(obs(HwState::Closed));
    assert_eq!(acks(&fx, id), vec![CommandStatus::Completed]);
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

/// How many command ids a run draws from: enough that most of a run's commands are new, few
/// enough that a retried id (with the same action or another) comes up in most runs.
const ID_POOL: usize = 64;

/// After the random steps, the drains follow the machine's timers this far into a quiet
/// future. A command's own timers (write, warning lead, close write, travel) add up to under
/// two minutes here: one still running after this never ends.
const DRAIN_HORIZON_MS: u64 = 10 * 60 * 1000;

/// A drain needing more ticks than this spins on a deadline that `Tick` does not consume (the
/// actor would busy-loop on it). A quiet gate needs a few hundred at most: an obstructed
/// auto-close retries every 5 s, two ticks each.
const DRAIN_MAX_TICKS: usize = 10_000;

/// A step of the environment around one gate.
#[derive(Debug, Clone)]
enum Step {
    Command {
        id: usize,
        action: Action,
    },
    /// Answer the `n`-th newest outstanding write (modulo) with this result.
    Answer {
        n: usize,
        result: WriteResult,
    },
    /// A poll: a state of its own (a local operation, a fault, a glitch), or (`None`) the
    /// controller's steady report, which follows the writes it confirmed.
    Observe {
        state: Option<HwState>,
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

fn write_result() -> impl Strategy<Value = WriteResult> {
    prop_oneof![
        6 => Just(WriteResult::Confirmed),
        1 => Just(WriteResult::Exception(2)),
        1 => Just(WriteResult::Offline),
        1 => Just(WriteResult::TimedOut),
    ]
}

/// Every action, the ones that move the gate more often: they make the writes, the timers and
/// the races the properties are about.
fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => Just(Action::Open),
        3 => Just(Action::Close),
        3 => Just(Action::Toggle),
        2 => Just(Action::Stop),
        1 => Just(Action::HoldOpen),
        1 => Just(Action::Release),
        1 => Just(Action::Lockout),
        1 => Just(Action::Unlock),
        1 => Just(Action::Reset),
    ]
}

fn command() -> impl Strategy<Value = Step> {
    (0..ID_POOL, action()).prop_map(|(id, action)| Step::Command { id, action })
}

fn answer() -> impl Strategy<Value = Step> {
    (0..3usize, write_result()).prop_map(|(n, result)| Step::Answer { n, result })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => command(),
        5 => answer(),
        5 => (proptest::option::weighted(0.4, hw_state()), proptest::bool::weighted(0.2))
            .prop_map(|(state, obstructed)| Step::Observe { state, obstructed }),
        1 => Just(Step::UnitFailed),
        1 => Just(Step::LinkDown),
        // Within a write's timeout (answers and commands interleave), and past the timers.
        3 => (0..3_000u64).prop_map(|ms| Step::Advance { ms }),
        2 => (0..70_000u64).prop_map(|ms| Step::Advance { ms }),
    ]
}

/// Steps around a gate that stands open with auto-close on: commands and their answers racing
/// the auto-close's warning and write, few readings of its own, short waits.
fn racing_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => command(),
        3 => answer(),
        2 => (proptest::option::weighted(0.1, hw_state()), proptest::bool::weighted(0.1))
            .prop_map(|(state, obstructed)| Step::Observe { state, obstructed }),
        3 => (0..4_000u64).prop_map(|ms| Step::Advance { ms }),
    ]
}

/// How the quiet drains answer the writes the machine makes, in turn and cycling: a result,
/// or `None` for an answer that never comes (the write's own timeout must end it).
fn answer_script() -> impl Strategy<Value = Vec<Option<WriteResult>>> {
    proptest::collection::vec(proptest::option::weighted(0.7, write_result()), 1..6)
}

/// Gate settings over the ranges a fleet file allows (travel time; the write timeout from the
/// request timeout), weighted towards auto-close and entrapment protection, which most of the
/// interlocks are about.
fn config() -> impl Strategy<Value = GateConfig> {
    (
        (
            any::<(bool, bool)>(),
            proptest::bool::weighted(0.8),
            1_000..90_000u64,
            1_000..10_000u64,
        ),
        proptest::option::weighted(0.7, 1_000..30_000u64),
        proptest::option::of(1_000..120_000u64),
    )
        .prop_map(
            |(((reset, warning_output), entrapment, travel, write), auto, left)| GateConfig {
                capabilities: Capabilities {
                    reset,
                    warning_output,
                    entrapment_protection: entrapment,
                },
                travel_timeout_ms: travel,
                write_timeout_ms: write,
                auto_close_after_ms: auto,
                left_open_alert_after_ms: left,
                ..GateConfig::default()
            },
        )
}

/// A gate with auto-close soon after opening and the protection that allows it.
fn racing_config() -> impl Strategy<Value = GateConfig> {
    (config(), 1_000..8_000u64).prop_map(|(cfg, auto)| GateConfig {
        capabilities: Capabilities {
            entrapment_protection: true,
            ..cfg.capabilities
        },
        auto_close_after_ms: Some(auto),
        ..cfg
    })
}

/// The writes a command of `action` may make (CONTRACTS.md, "Commands and outcomes").
fn ops_of(action: Action, caps: Capabilities) -> Vec<HwOp> {
    let close = if caps.warning_output {
        vec![HwOp::Warn, HwOp::Close]
    } else {
        vec![HwOp::Close]
    };
    match action {
        Action::Open | Action::HoldOpen => vec![HwOp::Open],
        Action::Close => close,
        Action::Toggle => [vec![HwOp::Open], close].concat(),
        Action::Stop => vec![HwOp::Stop],
        Action::Reset if caps.reset => vec![HwOp::Reset],
        Action::Reset | Action::Lockout | Action::Unlock | Action::Release => vec![],
    }
}

/// Whether `action`, admitted on a gate that was `before`, may be accepted with no write.
///
/// The contract: `lockout` and `unlock` always; `reset` when the profile has no reset output.
/// Beyond the table, a command with nothing to do: `open` or `hold_open` at open, `close` at
/// closed, `reset` with no fault to clear. And `release`, which the table lists as "write
/// confirmed" but which has nothing to write: held-open is the runtime's own flag.
fn accepted_without_write(action: Action, before: GateSnapshot, caps: Capabilities) -> bool {
    let in_fault = before.state == GateState::Fault || before.latched_fault.is_some();
    match action {
        Action::Lockout | Action::Unlock | Action::Release => true,
        Action::Reset => !caps.reset || !in_fault,
        Action::Open | Action::HoldOpen => before.state == GateState::Open,
        Action::Close => before.state == GateState::Closed,
        Action::Stop | Action::Toggle => false,
    }
}

/// One machine, the environment around it, and what the properties know independently of it.
#[derive(Clone)]
struct Run {
    cfg: GateConfig,
    m: GateMachine,
    now: u64,
    /// Writes the machine made that the environment has not answered yet, oldest first.
    outstanding: Vec<Write>,
    /// Each admitted command's action: a retry is judged against it, a write must fit it.
    admitted: HashMap<CommandId, Action>,
    /// Every ack each command got, in order.
    acks: HashMap<CommandId, Vec<CommandStatus>>,
    /// The obstruction as the last reading reported it. Not the machine's own flag: a machine
    /// that ignored the reading would agree with itself. Link loss leaves it as it was (the
    /// last thing known; nothing is written to an offline gate, and the next reading replaces
    /// it).
    obstructed: bool,
    /// The state the simulated controller reports when nothing else happens to it.
    reported: HwState,
}

impl Run {
    fn new(cfg: GateConfig) -> Self {
        Self {
            cfg,
            m: GateMachine::new(cfg),
            now: 0,
            outstanding: Vec::new(),
            admitted: HashMap::new(),
            acks: HashMap::new(),
            obstructed: false,
            reported: HwState::Closed,
        }
    }

    /// Plays `steps`, then the drains, checking every property on the way.
    fn play(
        cfg: GateConfig,
        steps: &[Step],
        script: &[Option<WriteResult>],
    ) -> Result<(), TestCaseError> {
        let ids: Vec<CommandId> = (1..=ID_POOL as u128)
            .map(|i| CommandId(uuid::Uuid::from_u128(i)))
            .collect();
        let mut run = Run::new(cfg);
        for step in steps {
            match *step {
                Step::Command { id, action } => run.feed(Input::Command {
                    id: ids[id],
                    action,
                })?,
                Step::Answer { n, result } => {
                    if let Some(last) = run.outstanding.len().checked_sub(1) {
                        run.answer(last - n % run.outstanding.len(), result)?;
                    }
                }
                Step::Observe { state, obstructed } => run.poll(state, obstructed)?,
                Step::UnitFailed => run.feed(Input::UnitFailed { code: 4 })?,
                Step::LinkDown => {
                    // Writes in flight on a lost link are never answered.
                    run.outstanding.clear();
                    run.feed(Input::LinkDown)?;
                }
                Step::Advance { ms } => {
                    run.now += ms;
                    run.feed(Input::Tick)?;
                }
            }
        }

        // With the link up and no more readings, the machine's own timers end every command:
        // with the writes answered as the script says, at once or only at the next timer, and
        // with none answered at all.
        run.clone().drain(script, false)?;
        run.clone().drain(script, true)?;
        run.clone().drain(&[None], false)?;

        // Link loss ends everything at once (no command, auto-close or write in flight) and
        // leaves no timer but a one-shot alert.
        let mut lost = run;
        lost.outstanding.clear();
        lost.feed(Input::LinkDown)?;
        prop_assert!(!lost.m.is_busy(), "still busy after link loss");
        lost.drain(&[None], false)?;
        prop_assert_eq!(lost.m.next_deadline(), None);
        Ok(())
    }

    fn terminal(&self, id: &CommandId) -> Option<CommandStatus> {
        self.acks
            .get(id)
            .and_then(|a| a.iter().copied().find(|s| s.is_terminal()))
    }

    /// Answers the `n`-th outstanding write (oldest first).
    fn answer(&mut self, n: usize, result: WriteResult) -> Result<(), TestCaseError> {
        let w = self.outstanding.remove(n);
        if result == WriteResult::Confirmed {
            // The controller carries out what it confirmed.
            self.reported = match (w.op, self.reported) {
                (HwOp::Open, _) => HwState::Opening,
                (HwOp::Close, _) => HwState::Closing,
                (HwOp::Stop, HwState::Opening | HwState::Closing) => HwState::Stopped,
                (HwOp::Reset, HwState::Fault) => HwState::Stopped,
                (_, s) => s,
            };
        }
        self.feed(Input::WriteResult { tag: w.tag, result })
    }

    /// A poll reporting `state`, or by default the controller's own: by the next poll a moving
    /// gate has reached its end.
    fn poll(&mut self, state: Option<HwState>, obstructed: bool) -> Result<(), TestCaseError> {
        self.reported = state.unwrap_or(match self.reported {
            HwState::Opening => HwState::Open,
            HwState::Closing => HwState::Closed,
            s => s,
        });
        let o = Observation {
            obstructed,
            ..Observation::state_only(self.reported)
        };
        self.feed(Input::Observed(o))
    }

    /// Feeds one input at `now` and checks every per-step property on what came out.
    fn feed(&mut self, input: Input) -> Result<(), TestCaseError> {
        let before = self.m.snapshot();
        let obstructed_before = self.obstructed;
        let mut out = Vec::new();
        let mut admission = None;
        match input {
            Input::Command { id, action } => {
                admission = Some(self.m.command(self.now, id, action, &mut out));
            }
            _ => self.m.handle(self.now, input, &mut out),
        }
        if let Input::Observed(o) = input {
            self.obstructed = o.obstructed;
        }
        let after = self.m.snapshot();

        if let (Input::Command { id, action }, Some(admission)) = (input, admission)
            && !self.admission_ok(id, action, admission, before, after, &out)?
        {
            return Ok(()); // A retried id: nothing came out.
        }
        let admitted_now = match (input, admission) {
            (Input::Command { id, .. }, Some(Admission::New)) => Some(id),
            _ => None,
        };

        for w in out.iter().filter_map(|e| match e {
            Effect::Write(w) => Some(*w),
            _ => None,
        }) {
            self.outstanding.push(w);
            prop_assert!(
                before.state != GateState::Offline,
                "{:?} written to an offline gate",
                w
            );
            // Lockout and hold-open come from commands, so the machine's flags are the truth.
            let restrained = [before, after]
                .iter()
                .any(|s| s.flags.locked_out || s.flags.held_open);
            match w.tag {
                WriteTag::Command(id) => {
                    let Some(&action) = self.admitted.get(&id) else {
                        return Err(TestCaseError::fail(format!(
                            "write for {id} never admitted"
                        )));
                    };
                    prop_assert!(
                        ops_of(action, self.cfg.capabilities).contains(&w.op),
                        "{:?} wrote {:?}",
                        action,
                        w.op
                    );
                    let explicit = matches!(
                        input,
                        Input::Command { id: i, action: Action::Close | Action::Toggle } if i == id
                    );
                    prop_assert!(
                        !(restrained && w.op == HwOp::Close && !explicit),
                        "close for {:?} written on {:?} while locked out or held open ({:?})",
                        action,
                        input,
                        after.flags
                    );
                    if w.op == HwOp::Close && self.cfg.capabilities.warning_output {
                        // The warning output runs (and was confirmed) before a remote close.
                        prop_assert_eq!(input, Input::Tick, "close without its warning first");
                        prop_assert!(
                            self.acks
                                .get(&id)
                                .is_some_and(|a| a == &[CommandStatus::Accepted]),
                            "close for {} before its warning was confirmed",
                            id
                        );
                    }
                }
                WriteTag::AutoClose => {
                    prop_assert_eq!(input, Input::Tick, "auto-close writes only on its timer");
                    prop_assert!(
                        w.op == HwOp::Close
                            || (w.op == HwOp::Warn && self.cfg.capabilities.warning_output),
                        "auto-close wrote {:?}",
                        w.op
                    );
                    prop_assert!(
                        !restrained,
                        "auto-close {:?} while locked out or held open ({:?})",
                        w.op,
                        after.flags
                    );
                }
            }
            if w.op == HwOp::Close {
                prop_assert!(
                    !obstructed_before && !self.obstructed,
                    "close written on {:?} while the last reading reported an obstruction",
                    input
                );
                prop_assert!(self.cfg.capabilities.entrapment_protection);
            }
        }

        // `accepted` is sent as soon as the controller confirmed a command's write, and not
        // before (the environment answers only writes the machine made, so a confirmation here
        // is one of the command's own writes).
        let confirmed = match input {
            Input::WriteResult {
                tag: WriteTag::Command(id),
                result: WriteResult::Confirmed,
            } => Some(id),
            _ => None,
        };
        if let Some(id) = confirmed
            && self.acks.get(&id).is_none_or(Vec::is_empty)
        {
            prop_assert_eq!(
                acks(&out, id).first().copied(),
                Some(CommandStatus::Accepted),
                "{}'s write was confirmed but it was not accepted",
                id
            );
        }

        for (id, status) in out.iter().filter_map(|e| match e {
            Effect::Ack { id, status } => Some((*id, *status)),
            _ => None,
        }) {
            prop_assert!(
                self.admitted.contains_key(&id),
                "ack for {} never admitted",
                id
            );
            let past = self.acks.get(&id).cloned().unwrap_or_default();
            prop_assert!(
                past.iter().all(|s| !s.is_terminal()),
                "{} got {:?} after {:?}",
                id,
                status,
                past
            );
            match status {
                CommandStatus::Accepted => {
                    prop_assert!(past.is_empty(), "{} accepted twice", id);
                    let at_admission = admitted_now == Some(id)
                        && !out.iter().any(
                            |e| matches!(e, Effect::Write(w) if w.tag == WriteTag::Command(id)),
                        )
                        && acks(&out, id).iter().any(|s| s.is_terminal())
                        && accepted_without_write(
                            self.admitted[&id],
                            before,
                            self.cfg.capabilities,
                        );
                    prop_assert!(
                        confirmed == Some(id) || at_admission,
                        "{} ({:?}) accepted on {:?} without a confirmed write (gate {:?})",
                        id,
                        self.admitted[&id],
                        input,
                        before
                    );
                }
                CommandStatus::Completed => prop_assert_eq!(
                    &past,
                    &vec![CommandStatus::Accepted],
                    "{} completed without being accepted",
                    id
                ),
                CommandStatus::Rejected(_) => prop_assert!(
                    past.is_empty() && admitted_now == Some(id),
                    "{} rejected after admission",
                    id
                ),
                CommandStatus::Failed(_) | CommandStatus::TimedOut => {}
            }
            self.acks.entry(id).or_default().push(status);
        }

        // A write belongs to a running command: one for a finished command is an orphan.
        for w in out.iter().filter_map(|e| match e {
            Effect::Write(w) => Some(*w),
            _ => None,
        }) {
            if let WriteTag::Command(id) = w.tag {
                prop_assert!(
                    self.terminal(&id).is_none(),
                    "{:?} written for {}, already finished",
                    w.op,
                    id
                );
            }
        }
        Ok(())
    }

    /// Checks a command's admission. `false` for a retried id, which must do nothing.
    fn admission_ok(
        &mut self,
        id: CommandId,
        action: Action,
        admission: Admission,
        before: GateSnapshot,
        after: GateSnapshot,
        out: &[Effect],
    ) -> Result<bool, TestCaseError> {
        if let Some(&first) = self.admitted.get(&id) {
            // The id is the idempotency key: same action, its current status; another, a conflict.
            let expected = if first == action {
                Admission::Duplicate(self.acks.get(&id).and_then(|a| a.last().copied()))
            } else {
                Admission::Conflict
            };
            prop_assert_eq!(admission, expected, "retry of {} as {:?}", id, action);
            prop_assert!(out.is_empty(), "a retried id must not act: {:?}", out);
            return Ok(false);
        }
        prop_assert_eq!(admission, Admission::New);
        self.admitted.insert(id, action);

        let written = writes(out);
        let first_ack = acks(out, id).first().copied();
        match action {
            Action::Stop if before.state == GateState::Offline => {
                prop_assert!(written.is_empty(), "stop wrote while offline");
                prop_assert_eq!(first_ack, Some(CommandStatus::Failed(FailReason::Offline)));
            }
            // Always allowed while the link is up: in lockout and fault too.
            Action::Stop => prop_assert_eq!(&written, &vec![HwOp::Stop]),
            // Accepted and completed at once, in any state, with nothing written.
            Action::Lockout | Action::Unlock => {
                prop_assert!(written.is_empty());
                prop_assert_eq!(
                    acks(out, id),
                    vec![CommandStatus::Accepted, CommandStatus::Completed]
                );
                prop_assert_eq!(after.flags.locked_out, action == Action::Lockout);
            }
            Action::Open
            | Action::Close
            | Action::Toggle
            | Action::HoldOpen
            | Action::Release
            | Action::Reset => {}
        }
        // Other actions are refused in fault, offline and lockout, with rejected{reason}.
        let motion = matches!(
            action,
            Action::Open | Action::Close | Action::Toggle | Action::HoldOpen | Action::Release
        );
        let mut refusals = Vec::new();
        if before.state == GateState::Offline {
            refusals.push(RejectReason::Offline);
        }
        if before.state == GateState::Fault {
            refusals.push(RejectReason::Fault);
        }
        if before.flags.locked_out {
            refusals.push(RejectReason::LockedOut);
        }
        if motion && !refusals.is_empty() {
            prop_assert!(written.is_empty(), "{:?} wrote on {:?}", action, before);
            prop_assert!(
                matches!(first_ack, Some(CommandStatus::Rejected(r)) if refusals.contains(&r)),
                "{:?} on {:?} answered {:?}",
                action,
                before,
                first_ack
            );
        }
        // Held open: close is refused until release.
        if action == Action::Close && before.flags.held_open {
            prop_assert!(written.is_empty(), "close wrote while held open");
            prop_assert!(matches!(first_ack, Some(CommandStatus::Rejected(_))));
        }
        Ok(true)
    }

    /// Follows the machine's timers into a quiet future (no readings), answering each write it
    /// makes by `script` in turn (`None`: the answer never comes), at once or (`late`) only
    /// when the next timer is due; then checks that every admitted command has ended.
    fn drain(&mut self, script: &[Option<WriteResult>], late: bool) -> Result<(), TestCaseError> {
        let horizon = self.now + DRAIN_HORIZON_MS;
        let due = |m: &GateMachine| m.next_deadline().filter(|&at| at <= horizon);
        let mut answers = script.iter().copied().cycle();
        for _ in 0..DRAIN_MAX_TICKS {
            if late && let Some(at) = due(&self.m) {
                // A slow link: the answers come just before the next timer runs.
                self.now = self.now.max(at);
            }
            while !self.outstanding.is_empty() {
                match answers.next().flatten() {
                    Some(result) => self.answer(0, result)?,
                    None => {
                        self.outstanding.remove(0);
                    }
                }
            }
            let Some(at) = due(&self.m) else {
                let mut running: Vec<_> = self
                    .admitted
                    .iter()
                    .filter(|(id, _)| self.terminal(id).is_none())
                    .collect();
                running.sort_by_key(|(id, _)| id.0);
                prop_assert!(
                    running.is_empty(),
                    "never ended: {:?} (gate {:?})",
                    running,
                    self.m.snapshot()
                );
                return Ok(());
            };
            self.now = self.now.max(at);
            self.feed(Input::Tick)?;
        }
        Err(TestCaseError::fail(format!(
            "still ticking after {DRAIN_MAX_TICKS} ticks (next deadline {:?}, now {})",
            self.m.next_deadline(),
            self.now
        )))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any sequence of commands, answers, readings, link losses and waits.
    #[test]
    fn safety_and_outcome_invariants_hold_for_any_input_sequence(
        cfg in config(),
        steps in proptest::collection::vec(step(), 1..120),
        script in answer_script(),
    ) {
        Run::play(cfg, &steps, &script)?;
    }
}

proptest! {
    // Short cases, so many more of them: the races need the right few steps in the right order.
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// Commands and their answers interleaved with an auto-close that is about to fire.
    #[test]
    fn commands_racing_an_auto_close_keep_the_same_invariants(
        cfg in racing_config(),
        steps in proptest::collection::vec(racing_step(), 1..40),
        script in answer_script(),
    ) {
        let open = Step::Observe { state: Some(HwState::Open), obstructed: false };
        Run::play(cfg, &[vec![open], steps].concat(), &script)?;
    }
}
