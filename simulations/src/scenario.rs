//! Scripted chaos: a timed list of faults applied to a running farm, optionally on a loop.
//!
//! A scenario is a TOML file of `[[step]]` tables, each applied `at_ms` after the start
//! (of the run, or of the current round when `repeat_every_ms` is set):
//!
//! ```toml
//! repeat_every_ms = 60000
//!
//! [[step]]
//! at_ms = 5000
//! controller = "demo-1"
//! fault = "slow"          # drop restart stall slow exception garbage obstruct
//! delay_ms = 400          # clear_obstruction motor_fault press clear
//! duration_ms = 5000
//! ```
//!
//! Each fault takes exactly the keys it needs (`unit`, `code`, `duration_ms`, `delay_ms`); a
//! missing or superfluous one is an error naming the step, as is any unknown key.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::controller::{Fault, MAX_UNIT, MIN_UNIT, SimController};
use crate::farm::Farm;

/// Longest fault a scenario may ask for.
pub const MAX_FAULT_DURATION: Duration = Duration::from_secs(3600);

/// Longest reply delay a scenario may ask for.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Shortest loop: anything tighter would hammer the farm rather than exercise it.
pub const MIN_REPEAT: Duration = Duration::from_millis(100);

/// Most steps in one scenario.
pub const MAX_STEPS: usize = 10_000;

/// A scenario file that does not hold up, or names what the farm does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ScenarioError {
    /// The key at fault, such as `step[3].duration_ms`.
    pub key: String,
    pub message: String,
}

fn error(key: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError {
        key: key.into(),
        message: message.into(),
    }
}

/// What a step does to its controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAction {
    Inject(Fault),
    /// End every injected fault on the controller.
    Clear,
}

/// One timed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// From the start of the run (or of the round).
    pub at: Duration,
    pub controller: String,
    pub action: StepAction,
}

/// A validated scenario, its steps in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub steps: Vec<Step>,
    pub repeat_every: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    repeat_every_ms: Option<u64>,
    #[serde(default)]
    step: Vec<StepFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FaultName {
    Drop,
    Restart,
    Stall,
    DropWrites,
    Slow,
    Exception,
    Garbage,
    Obstruct,
    ClearObstruction,
    MotorFault,
    Press,
    Clear,
}

impl FaultName {
    fn as_str(self) -> &'static str {
        match self {
            FaultName::Drop => "drop",
            FaultName::Restart => "restart",
            FaultName::Stall => "stall",
            FaultName::DropWrites => "drop_writes",
            FaultName::Slow => "slow",
            FaultName::Exception => "exception",
            FaultName::Garbage => "garbage",
            FaultName::Obstruct => "obstruct",
            FaultName::ClearObstruction => "clear_obstruction",
            FaultName::MotorFault => "motor_fault",
            FaultName::Press => "press",
            FaultName::Clear => "clear",
        }
    }

    /// Which optional keys the fault takes: unit, code, duration_ms, delay_ms.
    fn needs(self) -> [bool; 4] {
        match self {
            FaultName::Drop | FaultName::Clear => [false, false, false, false],
            FaultName::Restart | FaultName::Stall | FaultName::DropWrites | FaultName::Garbage => {
                [false, false, true, false]
            }
            FaultName::Slow => [false, false, true, true],
            FaultName::Exception => [true, true, true, false],
            FaultName::Obstruct | FaultName::ClearObstruction | FaultName::Press => {
                [true, false, false, false]
            }
            FaultName::MotorFault => [true, true, false, false],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    at_ms: u64,
    controller: String,
    fault: FaultName,
    unit: Option<u64>,
    code: Option<u64>,
    duration_ms: Option<u64>,
    delay_ms: Option<u64>,
}

impl StepFile {
    fn into_step(self, i: usize) -> Result<Step, ScenarioError> {
        let key = |field: &str| format!("step[{i}].{field}");
        let name = self.fault.as_str();
        let given = [
            ("unit", self.unit),
            ("code", self.code),
            ("duration_ms", self.duration_ms),
            ("delay_ms", self.delay_ms),
        ];
        for ((field, value), needed) in given.iter().zip(self.fault.needs()) {
            match (value, needed) {
                (None, true) => {
                    return Err(error(key(field), format!("required for fault \"{name}\"")));
                }
                (Some(_), false) => {
                    return Err(error(key(field), format!("not used by fault \"{name}\"")));
                }
                _ => {}
            }
        }
        if self.controller.is_empty() {
            return Err(error(key("controller"), "must not be empty"));
        }
        let unit = match self.unit {
            None => 0,
            Some(u) => match u8::try_from(u) {
                Ok(u) if (MIN_UNIT..=MAX_UNIT).contains(&u) => u,
                _ => {
                    return Err(error(
                        key("unit"),
                        format!("unit ids are {MIN_UNIT}..={MAX_UNIT}, got {u}"),
                    ));
                }
            },
        };
        let duration = match self.duration_ms {
            None => Duration::ZERO,
            Some(ms) => {
                let d = Duration::from_millis(ms);
                if d.is_zero() || d > MAX_FAULT_DURATION {
                    return Err(error(
                        key("duration_ms"),
                        format!(
                            "must be between 1 and {}, got {ms}",
                            MAX_FAULT_DURATION.as_millis()
                        ),
                    ));
                }
                d
            }
        };
        let delay = match self.delay_ms {
            None => Duration::ZERO,
            Some(ms) => {
                let d = Duration::from_millis(ms);
                if d.is_zero() || d > MAX_DELAY {
                    return Err(error(
                        key("delay_ms"),
                        format!("must be between 1 and {}, got {ms}", MAX_DELAY.as_millis()),
                    ));
                }
                d
            }
        };
        let action = match self.fault {
            FaultName::Drop => StepAction::Inject(Fault::DropConnections),
            FaultName::Restart => StepAction::Inject(Fault::Restart { down: duration }),
            FaultName::Stall => StepAction::Inject(Fault::Stall { duration }),
            FaultName::DropWrites => StepAction::Inject(Fault::DropWrites { duration }),
            FaultName::Slow => StepAction::Inject(Fault::Slow { delay, duration }),
            FaultName::Garbage => StepAction::Inject(Fault::Garbage { duration }),
            FaultName::Exception => {
                let code = self.code.unwrap_or_default();
                let code = u8::try_from(code).ok().filter(|c| *c != 0).ok_or_else(|| {
                    error(
                        key("code"),
                        format!("a Modbus exception code is 1..=255, got {code}"),
                    )
                })?;
                StepAction::Inject(Fault::Exception {
                    unit,
                    code,
                    duration,
                })
            }
            FaultName::Obstruct => StepAction::Inject(Fault::Obstruct { unit, on: true }),
            FaultName::ClearObstruction => StepAction::Inject(Fault::Obstruct { unit, on: false }),
            FaultName::Press => StepAction::Inject(Fault::LocalPress { unit }),
            FaultName::MotorFault => {
                let code = self.code.unwrap_or_default();
                let code = u16::try_from(code)
                    .ok()
                    .filter(|c| *c != 0)
                    .ok_or_else(|| {
                        error(
                            key("code"),
                            format!("a fault code is 1..=65535, got {code}"),
                        )
                    })?;
                StepAction::Inject(Fault::MotorFault { unit, code })
            }
            FaultName::Clear => StepAction::Clear,
        };
        Ok(Step {
            at: Duration::from_millis(self.at_ms),
            controller: self.controller,
            action,
        })
    }
}

impl Scenario {
    /// Parses and validates a scenario. Errors name the key, with the step's index.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile =
            gatehouse_adapters::toml_text::parse(text).map_err(|e| error(e.key, e.message))?;
        if file.step.is_empty() {
            return Err(error("step", "a scenario needs at least one [[step]]"));
        }
        if file.step.len() > MAX_STEPS {
            return Err(error(
                "step",
                format!("at most {MAX_STEPS} steps, got {}", file.step.len()),
            ));
        }
        let mut steps = file
            .step
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.into_step(i))
            .collect::<Result<Vec<_>, _>>()?;
        // Stable: steps at the same time keep the order they were written in.
        steps.sort_by_key(|s| s.at);
        let repeat_every = match file.repeat_every_ms {
            None => None,
            Some(ms) => {
                let every = Duration::from_millis(ms);
                let last = steps.last().map_or(Duration::ZERO, |s| s.at);
                if every < MIN_REPEAT {
                    return Err(error(
                        "repeat_every_ms",
                        format!("must be at least {}, got {ms}", MIN_REPEAT.as_millis()),
                    ));
                }
                if every <= last {
                    return Err(error(
                        "repeat_every_ms",
                        format!(
                            "must be longer than the last step's at_ms ({})",
                            last.as_millis()
                        ),
                    ));
                }
                Some(every)
            }
        };
        Ok(Scenario {
            steps,
            repeat_every,
        })
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| error("(file)", e.to_string()))?;
        Scenario::parse(&text)
    }

    /// Checks that every step names a controller (and unit) of `farm`.
    pub fn check(&self, farm: &Farm) -> Result<(), ScenarioError> {
        for (i, step) in self.steps.iter().enumerate() {
            let Some(c) = farm.controller(&step.controller) else {
                let known: Vec<&str> = farm.controllers().iter().map(|c| c.name()).collect();
                return Err(error(
                    format!("step[{i}].controller"),
                    format!(
                        "the farm has no controller {:?} (it has: {})",
                        step.controller,
                        known.join(", ")
                    ),
                ));
            };
            if let StepAction::Inject(fault) = step.action
                && let Some(unit) = fault.unit()
                && c.gate(unit).is_none()
            {
                return Err(error(
                    format!("step[{i}].unit"),
                    format!("controller {} has no unit {unit}", step.controller),
                ));
            }
        }
        Ok(())
    }
}

/// A running scenario. Dropping the handle stops it.
#[derive(Debug)]
pub struct ScenarioHandle {
    task: JoinHandle<()>,
}

impl ScenarioHandle {
    /// Stops applying steps (faults already in force run their course).
    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until a scenario without `repeat_every` has applied its last step.
    pub async fn finished(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for ScenarioHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts applying `scenario` to `farm` (in the background, from now). Every applied step is
/// logged. Fails if a step names a controller or unit the farm does not have.
pub fn run_scenario(farm: &Farm, scenario: Scenario) -> Result<ScenarioHandle, ScenarioError> {
    scenario.check(farm)?;
    let steps: Vec<(Step, SimController)> = scenario
        .steps
        .into_iter()
        .filter_map(|s| farm.controller(&s.controller).cloned().map(|c| (s, c)))
        .collect();
    let repeat = scenario.repeat_every;
    let task = tokio::spawn(async move {
        let mut round_start = tokio::time::Instant::now();
        let mut round: u64 = 0;
        loop {
            for (i, (step, controller)) in steps.iter().enumerate() {
                tokio::time::sleep_until(round_start + step.at).await;
                info!(round, step = i, at_ms = step.at.as_millis() as u64, controller = %step.controller, action = ?step.action, "scenario step");
                match step.action {
                    StepAction::Inject(fault) => {
                        if let Err(e) = controller.inject(fault).await {
                            warn!(step = i, "scenario step failed: {e}");
                        }
                    }
                    StepAction::Clear => controller.clear(),
                }
            }
            let Some(every) = repeat else { return };
            round_start += every;
            round += 1;
        }
    });
    Ok(ScenarioHandle { task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(text: &str) -> String {
        match Scenario::parse(text) {
            Err(e) => e.key,
            Ok(s) => panic!("expected an error, got {s:?}"),
        }
    }

    #[test]
    fn parses_and_orders_steps() {
        let s = Scenario::parse(
            r#"
            repeat_every_ms = 10000
            [[step]]
            at_ms = 5000
            controller = "c"
            fault = "exception"
            unit = 3
            code = 11
            duration_ms = 2000
            [[step]]
            at_ms = 1000
            controller = "c"
            fault = "slow"
            delay_ms = 200
            duration_ms = 1000
            [[step]]
            at_ms = 1000
            controller = "c"
            fault = "clear"
            "#,
        )
        .unwrap();
        assert_eq!(s.repeat_every, Some(Duration::from_secs(10)));
        assert_eq!(
            s.steps[0].action,
            StepAction::Inject(Fault::Slow {
                delay: Duration::from_millis(200),
                duration: Duration::from_secs(1)
            })
        );
        assert_eq!(s.steps[1].action, StepAction::Clear);
        assert_eq!(
            s.steps[2].action,
            StepAction::Inject(Fault::Exception {
                unit: 3,
                code: 11,
                duration: Duration::from_secs(2)
            })
        );
    }

    #[test]
    fn errors_name_the_step_and_key() {
        let step = |body: &str| {
            format!(
                "[[step]]\nat_ms = 0\ncontroller = \"c\"\nfault = \"drop\"\n[[step]]\nat_ms = 1\ncontroller = \"c\"\n{body}"
            )
        };
        assert_eq!(key_of(&step("fault = \"stall\"")), "step[1].duration_ms");
        assert_eq!(key_of(&step("fault = \"drop\"\nunit = 2")), "step[1].unit");
        assert_eq!(key_of(&step("fault = \"press\"\nunit = 0")), "step[1].unit");
        assert_eq!(
            key_of(&step("fault = \"press\"\nunit = 300")),
            "step[1].unit"
        );
        assert_eq!(
            key_of(&step("fault = \"motor_fault\"\nunit = 1\ncode = 0")),
            "step[1].code"
        );
        assert_eq!(
            key_of(&step(
                "fault = \"exception\"\nunit = 1\ncode = 256\nduration_ms = 5"
            )),
            "step[1].code"
        );
        assert_eq!(
            key_of(&step("fault = \"slow\"\nduration_ms = 5")),
            "step[1].delay_ms"
        );
        assert!(key_of(&step("fault = \"explode\"")).starts_with("step[1].fault"));
        assert!(key_of(&step("fault = \"drop\"\ncolour = 1")).starts_with("step[1]"));
        assert_eq!(
            key_of(&format!(
                "repeat_every_ms = 1\n{}",
                step("fault = \"drop\"")
            )),
            "repeat_every_ms"
        );
        assert_eq!(key_of(""), "step");
    }
}
