//! Gate physics: one simulated gate leaf or barrier arm, as its controller sees it.
//!
//! Everything here is pure and takes the time as an argument, so tests drive it with explicit
//! instants and a farm of 10,000 gates costs nothing between reads: a moving gate stores where
//! and when its motion began, and its position is worked out only when someone looks. The
//! controller's own interlocks live here too (a close is refused while obstructed, motion is
//! refused while a motor fault is latched), because that is where a real controller keeps them.

use std::time::{Duration, Instant};

use gatehouse_actors::gate::{HwState, Observation, RawCounter};

/// Internal position units for a fully open gate. Millionths keep a slow gate's progress
/// visible between two fast polls, where whole percent would stand still.
pub const FULL_OPEN: u32 = 1_000_000;

/// Shortest travel time accepted; anything faster would finish between two fast polls.
pub const MIN_TRAVEL: Duration = Duration::from_millis(50);

/// Longest travel time accepted (a slow industrial door).
pub const MAX_TRAVEL: Duration = Duration::from_secs(600);

/// Which way the motor is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Motion {
    Idle,
    Opening,
    Closing,
}

/// Why the controller ignored a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A close while the photo-eye or edge reports an obstruction.
    #[error("obstructed")]
    Obstructed,
    /// Motion while a motor fault is latched; `reset` first.
    #[error("motor fault latched")]
    Fault,
}

/// One gate. Kept small: a farm holds ten thousand of these.
#[derive(Debug, Clone)]
pub struct Gate {
    travel: Duration,
    /// The position when the current motion began (or the resting position when idle).
    origin: u32,
    /// When the current motion began; meaningless while idle.
    since: Instant,
    motion: Motion,
    obstructed: bool,
    fault: Option<u16>,
    cycles: u32,
    /// 16 or 32 when the profile reports a counter.
    cycle_bits: Option<u8>,
    warned_at: Option<Instant>,
}

impl Gate {
    /// A closed, idle gate. `travel` is clamped to [`MIN_TRAVEL`]..=[`MAX_TRAVEL`];
    /// `cycle_bits` is the profile's counter width (`None` when it reports none).
    pub fn new(travel: Duration, cycle_bits: Option<u8>, now: Instant) -> Gate {
        Gate {
            travel: travel.clamp(MIN_TRAVEL, MAX_TRAVEL),
            origin: 0,
            since: now,
            motion: Motion::Idle,
            obstructed: false,
            fault: None,
            cycles: 0,
            cycle_bits,
            warned_at: None,
        }
    }

    pub fn travel(&self) -> Duration {
        self.travel
    }

    /// Position in millionths of full travel at `now`.
    pub fn position_raw(&self, now: Instant) -> u32 {
        let moved = self.progress(now);
        match self.motion {
            Motion::Idle => self.origin,
            Motion::Opening => self.origin.saturating_add(moved).min(FULL_OPEN),
            Motion::Closing => self.origin.saturating_sub(moved),
        }
    }

    /// Position in percent with the fraction kept, for displays and tests.
    pub fn position_percent(&self, now: Instant) -> f64 {
        f64::from(self.position_raw(now)) * 100.0 / f64::from(FULL_OPEN)
    }

    /// The motion at `now`: a gate that has reached its limit is idle even if nobody looked.
    pub fn motion(&self, now: Instant) -> Motion {
        match (self.motion, self.position_raw(now)) {
            (Motion::Opening, FULL_OPEN) | (Motion::Closing, 0) => Motion::Idle,
            (m, _) => m,
        }
    }

    pub fn is_obstructed(&self) -> bool {
        self.obstructed
    }

    pub fn fault_code(&self) -> Option<u16> {
        self.fault
    }

    /// The raw counter value (already wrapped to the profile's width).
    pub fn cycles(&self) -> u32 {
        self.cycles
    }

    /// Sets the counter, for tests that start near the wrap. Wrapped to the counter's width.
    pub fn set_cycles(&mut self, value: u32) {
        self.cycles = value & self.counter_mask();
    }

    /// When the warning output last flashed.
    pub fn last_warning(&self) -> Option<Instant> {
        self.warned_at
    }

    /// Starts opening. Counts a cycle when the gate leaves fully closed.
    pub fn open(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.fault.is_some() {
            return Err(Refusal::Fault);
        }
        self.settle(now);
        let pos = self.position_raw(now);
        if self.motion == Motion::Opening || pos == FULL_OPEN {
            return Ok(());
        }
        if pos == 0 {
            self.cycles = self.cycles.wrapping_add(1) & self.counter_mask();
        }
        self.start(Motion::Opening, now);
        Ok(())
    }

    /// Starts closing, unless the controller sees an obstruction.
    pub fn close(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.fault.is_some() {
            return Err(Refusal::Fault);
        }
        if self.obstructed {
            return Err(Refusal::Obstructed);
        }
        self.settle(now);
        if self.motion == Motion::Closing || self.position_raw(now) == 0 {
            return Ok(());
        }
        self.start(Motion::Closing, now);
        Ok(())
    }

    /// Stops where the gate is. Always accepted, also while faulted.
    pub fn stop(&mut self, now: Instant) {
        self.settle(now);
        self.origin = self.position_raw(now);
        self.motion = Motion::Idle;
    }

    /// Clears a latched motor fault; the gate then reports its state by position.
    pub fn reset(&mut self) {
        self.fault = None;
    }

    /// Flashes the warning output (recorded, nothing moves).
    pub fn warn(&mut self, now: Instant) {
        self.warned_at = Some(now);
    }

    /// The photo-eye or edge changes. An obstruction reverses a closing gate, as entrapment
    /// protection does in the controller.
    pub fn set_obstructed(&mut self, now: Instant, on: bool) {
        self.settle(now);
        self.obstructed = on;
        if on && self.motion == Motion::Closing {
            self.start(Motion::Opening, now);
        }
    }

    /// The motor trips: the gate stops and reports `code` until [`Gate::reset`].
    pub fn motor_fault(&mut self, now: Instant, code: u16) {
        self.stop(now);
        self.fault = Some(code);
    }

    /// A radio remote or wall button: a single-button controller steps through
    /// open → stop → close → stop. Returns what it did, or why it did nothing.
    pub fn press(&mut self, now: Instant) -> Result<Motion, Refusal> {
        if self.fault.is_some() {
            return Err(Refusal::Fault);
        }
        self.settle(now);
        match self.motion {
            Motion::Opening | Motion::Closing => {
                self.stop(now);
                Ok(Motion::Idle)
            }
            Motion::Idle if self.origin == FULL_OPEN => self.close(now).map(|()| Motion::Closing),
            Motion::Idle => self.open(now).map(|()| Motion::Opening),
        }
    }

    /// What the controller reports at `now`, ready for `Profile::encode`.
    pub fn observation(&self, now: Instant) -> Observation {
        let pos = self.position_raw(now);
        let state = if self.fault.is_some() {
            HwState::Fault
        } else {
            match self.motion(now) {
                Motion::Opening => HwState::Opening,
                Motion::Closing => HwState::Closing,
                Motion::Idle if pos == 0 => HwState::Closed,
                Motion::Idle if pos == FULL_OPEN => HwState::Open,
                Motion::Idle => HwState::Stopped,
            }
        };
        let percent = (u64::from(pos) * 100 + u64::from(FULL_OPEN) / 2) / u64::from(FULL_OPEN);
        Observation {
            state,
            position: Some(percent.min(100) as u8),
            obstructed: self.obstructed,
            fault_code: self.fault,
            cycles: self.cycle_bits.map(|bits| RawCounter {
                value: self.cycles,
                bits,
            }),
        }
    }

    /// Millionths travelled since the motion began.
    fn progress(&self, now: Instant) -> u32 {
        if self.motion == Motion::Idle {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.since).as_nanos();
        let travel = self.travel.as_nanos().max(1);
        let moved = elapsed.saturating_mul(u128::from(FULL_OPEN)) / travel;
        u32::try_from(moved.min(u128::from(FULL_OPEN))).unwrap_or(FULL_OPEN)
    }

    /// Folds a motion that has reached its limit into a resting position.
    fn settle(&mut self, now: Instant) {
        if self.motion != Motion::Idle && self.motion(now) == Motion::Idle {
            self.origin = self.position_raw(now);
            self.motion = Motion::Idle;
        }
    }

    fn start(&mut self, motion: Motion, now: Instant) {
        self.origin = self.position_raw(now);
        self.motion = motion;
        self.since = now;
    }

    fn counter_mask(&self) -> u32 {
        match self.cycle_bits {
            Some(bits) if bits < 32 => (1u32 << bits) - 1,
            _ => u32::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAVEL: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn gate(t0: Instant) -> Gate {
        Gate::new(TRAVEL, Some(16), t0)
    }

    #[test]
    fn travels_at_its_speed_and_stops_at_the_open_limit() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        assert_eq!(g.observation(t0).state, HwState::Closed);
        g.open(t0).unwrap();
        let mid = g.observation(t0 + ms(5_000));
        assert_eq!(mid.state, HwState::Opening);
        assert_eq!(mid.position, Some(50));
        assert!((g.position_percent(t0 + ms(2_500)) - 25.0).abs() < 1e-6);
        let end = g.observation(t0 + ms(10_000));
        assert_eq!((end.state, end.position), (HwState::Open, Some(100)));
        // Long after the limit it stays there: no overshoot.
        let later = g.observation(t0 + ms(60_000));
        assert_eq!((later.state, later.position), (HwState::Open, Some(100)));
        assert_eq!(g.motion(t0 + ms(60_000)), Motion::Idle);
    }

    #[test]
    fn closes_to_the_closed_limit_and_stop_holds_position() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.open(t0).unwrap();
        g.close(t0 + ms(20_000)).unwrap();
        let half = t0 + ms(25_000);
        assert_eq!(g.observation(half).state, HwState::Closing);
        g.stop(half);
        let o = g.observation(half + ms(30_000));
        assert_eq!((o.state, o.position), (HwState::Stopped, Some(50)));
        g.close(half + ms(30_000)).unwrap();
        let o = g.observation(half + ms(40_000));
        assert_eq!((o.state, o.position), (HwState::Closed, Some(0)));
    }

    #[test]
    fn reversing_mid_travel_keeps_fine_position() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.open(t0).unwrap();
        g.close(t0 + ms(3_001)).unwrap();
        assert_eq!(g.position_raw(t0 + ms(3_001)), 300_100);
        // Back at closed after the same 3.001 s.
        assert_eq!(g.observation(t0 + ms(6_002)).state, HwState::Closed);
        // From fully open, a close can be turned round by an open; no cycle is counted.
        g.open(t0 + ms(10_000)).unwrap();
        g.close(t0 + ms(30_000)).unwrap();
        g.open(t0 + ms(31_000)).unwrap();
        let o = g.observation(t0 + ms(31_500));
        assert_eq!((o.state, o.position), (HwState::Opening, Some(95)));
        assert_eq!(g.cycles(), 2);
    }

    #[test]
    fn obstruction_reverses_a_closing_gate() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.open(t0).unwrap();
        g.close(t0 + ms(10_000)).unwrap();
        g.set_obstructed(t0 + ms(14_000), true);
        let o = g.observation(t0 + ms(15_000));
        assert_eq!(o.state, HwState::Opening);
        assert!(o.obstructed);
        assert_eq!(o.position, Some(70));
        assert_eq!(g.observation(t0 + ms(30_000)).state, HwState::Open);
    }

    #[test]
    fn obstruction_does_not_disturb_an_opening_or_resting_gate() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.set_obstructed(t0, true);
        assert_eq!(g.observation(t0).state, HwState::Closed);
        g.open(t0).unwrap();
        g.set_obstructed(t0 + ms(1_000), false);
        assert_eq!(g.observation(t0 + ms(2_000)).state, HwState::Opening);
    }

    #[test]
    fn close_is_refused_while_obstructed_and_gate_stays() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.open(t0).unwrap();
        let open = t0 + ms(10_000);
        g.set_obstructed(open, true);
        assert_eq!(g.close(open), Err(Refusal::Obstructed));
        assert_eq!(g.press(open), Err(Refusal::Obstructed));
        assert_eq!(g.observation(open + ms(5_000)).state, HwState::Open);
        g.set_obstructed(open, false);
        g.close(open).unwrap();
        assert_eq!(g.observation(open + ms(1_000)).state, HwState::Closing);
    }

    #[test]
    fn motor_fault_stops_and_latches_until_reset() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.open(t0).unwrap();
        g.motor_fault(t0 + ms(4_000), 17);
        let o = g.observation(t0 + ms(8_000));
        assert_eq!(
            (o.state, o.fault_code, o.position),
            (HwState::Fault, Some(17), Some(40))
        );
        assert_eq!(g.open(t0 + ms(8_000)), Err(Refusal::Fault));
        assert_eq!(g.close(t0 + ms(8_000)), Err(Refusal::Fault));
        assert_eq!(g.press(t0 + ms(8_000)), Err(Refusal::Fault));
        g.reset();
        let o = g.observation(t0 + ms(8_000));
        assert_eq!((o.state, o.fault_code), (HwState::Stopped, None));
        g.close(t0 + ms(8_000)).unwrap();
        assert_eq!(g.observation(t0 + ms(20_000)).state, HwState::Closed);
    }

    #[test]
    fn reset_after_fault_at_a_limit_reports_the_limit() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.motor_fault(t0, 3);
        g.reset();
        assert_eq!(g.observation(t0).state, HwState::Closed);
    }

    #[test]
    fn counter_counts_openings_from_closed_only() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.open(t0).unwrap();
        g.stop(t0 + ms(1_000));
        g.open(t0 + ms(2_000)).unwrap(); // from part way: no new cycle
        assert_eq!(g.cycles(), 1);
        g.close(t0 + ms(20_000)).unwrap();
        g.open(t0 + ms(40_000)).unwrap();
        assert_eq!(g.cycles(), 2);
        assert_eq!(
            g.observation(t0 + ms(40_000)).cycles,
            Some(RawCounter { value: 2, bits: 16 })
        );
    }

    #[test]
    fn sixteen_bit_counter_wraps_at_65535() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        g.set_cycles(65_535);
        g.open(t0).unwrap();
        assert_eq!(g.cycles(), 0);
        let mut wide = Gate::new(TRAVEL, Some(32), t0);
        wide.set_cycles(65_535);
        wide.open(t0).unwrap();
        assert_eq!(wide.cycles(), 65_536);
        let mut back = Gate::new(TRAVEL, Some(32), t0);
        back.set_cycles(u32::MAX);
        back.open(t0).unwrap();
        assert_eq!(back.cycles(), 0);
    }

    #[test]
    fn no_counter_when_the_profile_has_none() {
        let t0 = Instant::now();
        let g = Gate::new(TRAVEL, None, t0);
        assert_eq!(g.observation(t0).cycles, None);
    }

    #[test]
    fn local_press_steps_like_a_single_button_controller() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        assert_eq!(g.press(t0), Ok(Motion::Opening));
        assert_eq!(g.press(t0 + ms(2_000)), Ok(Motion::Idle));
        assert_eq!(g.observation(t0 + ms(2_000)).state, HwState::Stopped);
        // Stopped part way: the next press opens again.
        assert_eq!(g.press(t0 + ms(3_000)), Ok(Motion::Opening));
        let open = t0 + ms(20_000);
        assert_eq!(g.observation(open).state, HwState::Open);
        assert_eq!(g.press(open), Ok(Motion::Closing));
        assert_eq!(g.press(open + ms(1_000)), Ok(Motion::Idle));
        assert_eq!(g.observation(open + ms(1_000)).position, Some(90));
    }

    #[test]
    fn warn_records_the_flash_only() {
        let t0 = Instant::now();
        let mut g = gate(t0);
        assert_eq!(g.last_warning(), None);
        g.warn(t0 + ms(5));
        assert_eq!(g.last_warning(), Some(t0 + ms(5)));
        assert_eq!(g.observation(t0 + ms(5)).state, HwState::Closed);
    }

    #[test]
    fn travel_is_clamped() {
        let t0 = Instant::now();
        assert_eq!(Gate::new(Duration::ZERO, None, t0).travel(), MIN_TRAVEL);
        assert_eq!(
            Gate::new(Duration::from_secs(9_999), None, t0).travel(),
            MAX_TRAVEL
        );
    }

    #[test]
    fn a_gate_stays_small() {
        assert!(
            std::mem::size_of::<Gate>() <= 80,
            "{}",
            std::mem::size_of::<Gate>()
        );
    }
}
