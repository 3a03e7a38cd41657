//! The rig shared by the tests that drive the runtime against the real simulator: a farm of
//! simulated controllers on ephemeral loopback ports, a fleet file written for exactly those
//! ports (parsed by the runtime's own `FleetFile`, so connectors, timings and gate settings
//! come out the way `gatehouse serve` builds them), and the fleet started with every event
//! recorded from the first. Every wait here is bounded and fails with what it saw.
//!
//! Each test binary uses a different subset of these helpers, hence the `dead_code` allowance.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{Action, Cause, CommandStatus, EventKind, GateState, HwState};
use gatehouse_actors::ids::{CommandId, ControllerId, GateId};
use gatehouse_actors::tree::bus::EventSink;
use gatehouse_actors::tree::gate::{Ack, AckSink, GateView};
use gatehouse_actors::tree::{Fleet, FleetContext};
use gatehouse_adapters::profile::{Profile, ProfileSet};
use gatehouse_runtime::fleet_file::FleetFile;
use gatehouse_sim::{ControllerSpec as SimControllerSpec, Farm, FarmSpec, SimController};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest any single wait may take. Generous: the suite runs in parallel on two cores,
/// possibly next to a build, and a link that failed a few times backs off for seconds.
pub const WAIT: Duration = Duration::from_secs(30);

/// How often the waits look again.
const STEP: Duration = Duration::from_millis(20);

/// The poll interval at rest written into the fleet files: faster than the profiles' 1 s so
/// that faults on an idle link are noticed quickly.
pub const POLL_MS: u64 = 200;

/// A profile like `generic`, but whose coil pulses last a minute: within a test, a coil that
/// goes off again was switched off by something other than the pulse timer.
pub const LONG_PULSE_PROFILE: &str = "long-pulse";

/// One simulated controller and the gates the fleet file puts on it.
#[derive(Debug, Clone)]
pub struct Controller {
    pub name: &'static str,
    pub profile: &'static str,
    pub units: Vec<u8>,
    /// The simulated gates' full travel time.
    pub travel: Duration,
    /// Written as each gate's `travel_timeout_s`.
    pub travel_timeout_s: u64,
    /// The controller's override of its profile's `timeouts_before_down`, if any.
    pub timeouts_before_down: Option<u64>,
}

impl Controller {
    pub fn new(name: &'static str, profile: &'static str, units: &[u8], travel_ms: u64) -> Self {
        Self {
            name,
            profile,
            units: units.to_vec(),
            travel: Duration::from_millis(travel_ms),
            travel_timeout_s: 30,
            timeouts_before_down: None,
        }
    }

    pub fn timeouts_before_down(mut self, n: u64) -> Self {
        self.timeouts_before_down = Some(n);
        self
    }

    pub fn travel_timeout_s(mut self, seconds: u64) -> Self {
        self.travel_timeout_s = seconds;
        self
    }
}

/// The gate id the rig gives unit `unit` of controller `controller`.
pub fn gate_id(controller: &str, unit: u8) -> GateId {
    GateId::new(&format!("{controller}-{unit}")).expect("a valid slug")
}

/// The built-in profiles plus [`LONG_PULSE_PROFILE`].
pub fn profiles() -> ProfileSet {
    let mut set = ProfileSet::builtin().expect("the built-in profiles load");
    let text = include_str!("../../../config/profiles/generic.toml")
        .replace("pulse_ms = 500", "pulse_ms = 60000");
    assert!(
        text.contains("pulse_ms = 60000"),
        "generic.toml changed shape"
    );
    let long = Profile::parse(LONG_PULSE_PROFILE, "long-pulse.toml", &text)
        .expect("the long-pulse profile parses");
    set.insert(long);
    set
}

/// Every event the fleet published, in order. It is the fleet's event sink itself (in place
/// of the runtime's broadcast bus), so an event is recorded before the gate actor goes on to
/// deliver the acks that follow it: a test that got an ack sees the events before it.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Arc<GateEvent>>>>);

impl EventSink for Recorder {
    fn publish(&self, event: Arc<GateEvent>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}

impl Recorder {
    pub fn all(&self) -> Vec<Arc<GateEvent>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A farm, the fleet driving it, and the recorded events.
pub struct Site {
    pub farm: Farm,
    pub fleet: Fleet,
    pub events: Recorder,
    /// The fleet file the fleet was built from, for failure messages.
    pub fleet_toml: String,
}

/// The `(from, to, cause)` of a state change.
pub type Change = (GateState, GateState, Cause);

impl Site {
    /// Starts the farm on ephemeral ports, writes the fleet file for it and starts the fleet.
    pub async fn start(controllers: &[Controller]) -> Site {
        Site::start_with(controllers, async |_| {}).await
    }

    /// Like [`Site::start`], with `prepare` run on the farm before the fleet starts.
    pub async fn start_with(controllers: &[Controller], prepare: impl AsyncFnOnce(&Farm)) -> Site {
        let profiles = profiles();
        let sims = controllers
            .iter()
            .map(|c| {
                SimControllerSpec::new(c.name, c.profile, c.units.iter().copied())
                    .with_travel(c.travel)
            })
            .collect();
        let farm = Farm::start(FarmSpec {
            controllers: sims,
            profiles: profiles.clone(),
        })
        .await
        .expect("the farm starts on ephemeral ports");
        prepare(&farm).await;

        let mut toml = String::from("[[site]]\nid = \"test\"\nname = \"Test site\"\n");
        for c in controllers {
            let sim = farm.controller(c.name).expect("started above");
            let _ = write!(
                toml,
                "\n[[controller]]\nid = \"{}\"\nsite = \"test\"\nprofile = \"{}\"\n\
                 endpoint = \"{}\"\npoll_interval_ms = {POLL_MS}\n",
                c.name,
                c.profile,
                sim.local_addr()
            );
            if let Some(n) = c.timeouts_before_down {
                let _ = writeln!(toml, "timeouts_before_down = {n}");
            }
            for unit in &c.units {
                let _ = write!(
                    toml,
                    "\n[[gate]]\nid = \"{}\"\ncontroller = \"{}\"\nunit = {unit}\n\
                     travel_timeout_s = {}\n",
                    gate_id(c.name, *unit),
                    c.name,
                    c.travel_timeout_s
                );
            }
        }
        let file = FleetFile::parse("test-fleet.toml", &toml, &profiles)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));

        // In place before the fleet starts, so that even the first reconcile is recorded.
        let events = Recorder::default();
        let ctx = FleetContext::new(Arc::new(events.clone()));
        let (fleet, _) = Fleet::start(ctx, file.controller_specs(&profiles), None)
            .await
            .expect("the fleet starts");
        Site {
            farm,
            fleet,
            events,
            fleet_toml: toml,
        }
    }

    pub fn sim(&self, controller: &str) -> &SimController {
        self.farm
            .controller(controller)
            .unwrap_or_else(|| panic!("no simulated controller {controller}"))
    }

    pub async fn view(&self, gate: &GateId) -> GateView {
        self.fleet
            .view(gate)
            .await
            .unwrap_or_else(|e| panic!("viewing {gate}: {e}"))
    }

    /// How many times the link of `controller` has connected.
    pub fn connects(&self, controller: &str) -> u64 {
        let id = ControllerId::new(controller).expect("a valid slug");
        self.fleet
            .context()
            .link_stats()
            .into_iter()
            .find(|(c, _)| *c == id)
            .map_or(0, |(_, s)| {
                s.connects.load(std::sync::atomic::Ordering::Relaxed)
            })
    }

    /// A position in the event history: what happens from now on starts here.
    pub fn mark(&self) -> usize {
        self.events.len()
    }

    pub fn events_since(&self, mark: usize) -> Vec<Arc<GateEvent>> {
        self.events.all().split_off(mark)
    }

    /// The state changes of `gate` since `mark`.
    pub fn changes_since(&self, mark: usize, gate: &GateId) -> Vec<Change> {
        self.events_since(mark)
            .iter()
            .filter(|ev| ev.gate == *gate)
            .filter_map(|ev| match ev.kind {
                EventKind::StateChanged { from } => Some((from, ev.snapshot.state, ev.cause)),
                _ => None,
            })
            .collect()
    }

    /// Waits until an event since `mark` satisfies `pred`, and returns it.
    pub async fn wait_event(
        &self,
        mark: usize,
        what: &str,
        pred: impl Fn(&GateEvent) -> bool,
    ) -> Arc<GateEvent> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(ev) = self.events_since(mark).into_iter().find(|e| pred(e)) {
                return ev;
            }
            if Instant::now() > deadline {
                panic!(
                    "no event {what} within {WAIT:?}; events since the mark:\n{}",
                    self.dump(mark)
                );
            }
            tokio::time::sleep(STEP).await;
        }
    }

    /// Waits until `gate` changes to `to` (since `mark`), and returns the change's cause.
    pub async fn wait_change(&self, mark: usize, gate: &GateId, to: GateState) -> Cause {
        let what = format!("{gate} -> {}", to.as_str());
        let ev = self
            .wait_event(mark, &what, |ev| {
                ev.gate == *gate
                    && matches!(ev.kind, EventKind::StateChanged { .. })
                    && ev.snapshot.state == to
            })
            .await;
        ev.cause
    }

    /// Waits until the runtime holds `gate` in `state`.
    pub async fn wait_state(&self, gate: &GateId, state: GateState) -> GateView {
        self.wait_view(gate, state.as_str(), |v| v.snapshot.state == state)
            .await
    }

    /// Waits until the runtime's view of `gate` satisfies `pred`, and returns it.
    pub async fn wait_view(
        &self,
        gate: &GateId,
        what: &str,
        pred: impl Fn(&GateView) -> bool,
    ) -> GateView {
        let deadline = Instant::now() + WAIT;
        loop {
            let view = self.view(gate).await;
            if pred(&view) {
                return view;
            }
            if Instant::now() > deadline {
                panic!(
                    "{gate} never {what} within {WAIT:?}: {:?}; all events:\n{}",
                    view.snapshot,
                    self.dump(0)
                );
            }
            tokio::time::sleep(STEP).await;
        }
    }

    /// Waits until the runtime's view of every gate of `controller` matches what the simulator
    /// reports, with the simulated gates at rest: reconciled.
    pub async fn wait_reconciled(&self, controller: &str) {
        let sim = self.sim(controller);
        let deadline = Instant::now() + WAIT;
        loop {
            let mut mismatch = None;
            for g in sim.gates() {
                let id = gate_id(controller, g.unit);
                let runtime = self.view(&id).await.snapshot;
                // What the wire says: the profile may not report everything the gate knows.
                let profile = sim.profile();
                let wire = profile
                    .decode(&profile.encode(&g.observation))
                    .expect("the simulator's registers decode");
                let at_rest = !matches!(wire.state, HwState::Opening | HwState::Closing);
                if !at_rest
                    || runtime.state != GateState::from(wire.state)
                    || runtime.position != wire.position
                {
                    mismatch = Some(format!(
                        "{id}: runtime {:?} at {:?}, simulator {:?}",
                        runtime.state, runtime.position, wire
                    ));
                    break;
                }
            }
            let Some(m) = mismatch else { return };
            if Instant::now() > deadline {
                panic!(
                    "{controller} not reconciled within {WAIT:?}: {m}; events:\n{}",
                    self.dump(0)
                );
            }
            tokio::time::sleep(STEP).await;
        }
    }

    /// Sends `action` to `gate` with a fresh command id.
    pub fn command(&self, gate: &GateId, action: Action) -> (CommandId, Acks) {
        let id = CommandId::random();
        (id, self.command_with_id(gate, id, action))
    }

    /// Sends `action` to `gate` under a given command id.
    pub fn command_with_id(&self, gate: &GateId, id: CommandId, action: Action) -> Acks {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink: AckSink = Arc::new(move |_: &GateId, ack: Ack| {
            let _ = tx.send(ack);
        });
        self.fleet
            .command(gate, id, action, Some(sink))
            .unwrap_or_else(|e| panic!("sending {action:?} to {gate}: {e}"));
        Acks { id, rx }
    }

    /// Every recorded event since `mark`, one per line.
    pub fn dump(&self, mark: usize) -> String {
        let mut s = String::new();
        for ev in self.events_since(mark) {
            let _ = writeln!(
                s,
                "  {} #{} {:?} -> {:?} cause {:?}",
                ev.gate, ev.seq, ev.kind, ev.snapshot.state, ev.cause
            );
        }
        s
    }
}

/// The acks of one command, as its sender receives them.
pub struct Acks {
    pub id: CommandId,
    rx: mpsc::UnboundedReceiver<Ack>,
}

impl Acks {
    /// The next status (bounded).
    pub async fn next(&mut self) -> CommandStatus {
        let ack = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no ack for {} within {WAIT:?}", self.id))
            .unwrap_or_else(|| panic!("the acks of {} ended early", self.id));
        assert_eq!(ack.id, self.id, "an ack for another command");
        ack.status
    }

    /// Every status until the gate lets go of this sender (it does after the terminal
    /// status), bounded. Checks the contract's shape: at most one `accepted`, first, and
    /// exactly one terminal status, last.
    pub async fn all(mut self) -> Vec<CommandStatus> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ack)) => seen.push(ack.status),
                Ok(None) => break,
                Err(_) => panic!(
                    "the acks of {} did not end within {WAIT:?}: {seen:?}",
                    self.id
                ),
            }
        }
        let terminal = seen.iter().filter(|s| s.is_terminal()).count();
        assert_eq!(terminal, 1, "exactly one terminal status: {seen:?}");
        assert!(
            seen.last().is_some_and(|s| s.is_terminal()),
            "the terminal status comes last: {seen:?}"
        );
        let accepted = seen
            .iter()
            .filter(|s| **s == CommandStatus::Accepted)
            .count();
        assert!(accepted <= 1, "accepted at most once: {seen:?}");
        seen
    }

    /// The terminal status (after an optional `accepted`).
    pub async fn terminal(self) -> CommandStatus {
        *self.all().await.last().expect("checked by all()")
    }
}

/// Waits (bounded) until `check` holds; `what` names it in the failure.
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(STEP).await;
    }
}
