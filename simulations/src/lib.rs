//! Gatehouse's hardware simulator: a farm of Modbus TCP gate controllers on loopback, with
//! gate physics and injected faults, for tests, benchmarks, `gatehouse demo` and integrators.
//!
//! A [`Farm`] runs many [`SimController`]s, each one listener whose unit ids are gates
//! speaking a register profile (`config/profiles/`). Faults are injected live through
//! [`SimController::inject`], scripted with a [`Scenario`], or sent from another process
//! over the [`control`] port of the `gatehouse-sim` binary.

pub mod control;
pub mod controller;
pub mod farm;
pub mod gate;
pub mod scenario;
mod transport;

pub use controller::{
    ActiveFaults, Fault, SimController, SimError, SimGateView, WriteKind, WriteRecord,
};
pub use farm::{ControllerSpec, Farm, FarmError, FarmSpec, SimWire};
pub use gate::{Gate, Motion, Refusal};
pub use scenario::{Scenario, ScenarioError, ScenarioHandle, Step, StepAction, run_scenario};
