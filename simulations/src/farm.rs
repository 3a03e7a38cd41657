//! A farm: many simulated controllers in one process, described in code ([`FarmSpec`]) or in a
//! TOML farm file, and started, looked up and shut down together.
//!
//! A farm file looks like this (`units` lists unit ids, `unit_count = n` means `1..=n`):
//!
//! ```toml
//! bind = "127.0.0.1"          # optional; the address every controller listens on
//!
//! [[controller]]
//! name = "demo-1"
//! port = 15020                # 0 = any free port
//! profile = "generic"
//! unit_count = 4
//! travel_ms = 8000            # optional; full travel time of each gate
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_adapters::profile::{ProfileError, ProfileSet};
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::controller::{ControllerConfig, MAX_UNIT, MIN_UNIT, SimController};
use crate::gate::{MAX_TRAVEL, MIN_TRAVEL};

/// Simulator ports start here by contract.
pub const BASE_PORT: u16 = 15020;

/// Well-known service ports the simulator never binds: Modbus's own 502 (a real controller
/// may be there), PostgreSQL, MySQL, Redis, AMQP, MQTT and NATS.
pub const FORBIDDEN_PORTS: [u16; 7] = [502, 5432, 3306, 6379, 5672, 1883, 4222];

/// Full travel time of a gate when the spec does not say.
pub const DEFAULT_TRAVEL: Duration = Duration::from_secs(10);

/// More controllers than this in one process is a typo, not a test.
pub const MAX_CONTROLLERS: usize = 2000;

/// Checks a port against the contract. Port 0 (any free port) is fine.
pub fn check_port(port: u16) -> Result<(), String> {
    if FORBIDDEN_PORTS.contains(&port) {
        return Err(format!(
            "port {port} is a well-known service port and is never used by the simulator \
             (reserved: {FORBIDDEN_PORTS:?}); simulator ports start at {BASE_PORT}"
        ));
    }
    Ok(())
}

/// A farm that could not be described or started.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// A bad value; `key` names it (`controller[2].port`).
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("{path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("controller {name}: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: io::Error,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> FarmError {
    FarmError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// How a simulated controller is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SimWire {
    /// Modbus TCP on its port.
    #[default]
    Tcp,
    /// RTU frames over TCP on its port, as an Ethernet to RS-485 gateway.
    RtuOverTcp,
    /// RTU on a serial line (a pseudo-terminal in tests: `socat -d -d pty,raw,echo=0
    /// pty,raw,echo=0` makes a pair, one end for the simulator, one for Gatehouse).
    Serial {
        device: std::path::PathBuf,
        baud: u32,
    },
}

impl SimWire {
    pub fn is_tcp(&self) -> bool {
        !matches!(self, SimWire::Serial { .. })
    }
}

/// One controller of a farm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSpec {
    /// A slug, unique in the farm.
    pub name: String,
    /// Where to listen; port 0 picks a free port.
    pub bind: SocketAddr,
    /// A profile id (`generic`, `came-zlb30`, ...).
    pub profile: String,
    /// Unit ids, one gate each, 1..=247.
    pub units: Vec<u8>,
    /// Full travel time of each gate.
    pub travel: Duration,
    /// How it is reached: TCP (default), RTU over TCP, or a serial line.
    pub wire: SimWire,
}

impl ControllerSpec {
    /// A controller on `127.0.0.1`, any free port, with [`DEFAULT_TRAVEL`].
    pub fn new(
        name: impl Into<String>,
        profile: impl Into<String>,
        units: impl IntoIterator<Item = u8>,
    ) -> ControllerSpec {
        ControllerSpec {
            name: name.into(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            profile: profile.into(),
            units: units.into_iter().collect(),
            travel: DEFAULT_TRAVEL,
            wire: SimWire::Tcp,
        }
    }

    /// Speaks RTU frames over TCP instead of Modbus TCP.
    pub fn with_rtu_over_tcp(mut self) -> ControllerSpec {
        self.wire = SimWire::RtuOverTcp;
        self
    }

    /// Serves RTU on the serial line `device` instead of listening.
    pub fn on_serial(mut self, device: impl Into<std::path::PathBuf>, baud: u32) -> ControllerSpec {
        self.wire = SimWire::Serial {
            device: device.into(),
            baud,
        };
        self
    }

    pub fn with_port(mut self, port: u16) -> ControllerSpec {
        self.bind.set_port(port);
        self
    }

    pub fn with_bind(mut self, bind: SocketAddr) -> ControllerSpec {
        self.bind = bind;
        self
    }

    pub fn with_travel(mut self, travel: Duration) -> ControllerSpec {
        self.travel = travel;
        self
    }
}

/// What to start: the controllers, and the profiles they may name.
#[derive(Debug, Clone)]
pub struct FarmSpec {
    pub controllers: Vec<ControllerSpec>,
    pub profiles: ProfileSet,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FarmFile {
    #[serde(default = "default_bind")]
    bind: IpAddr,
    #[serde(default)]
    controller: Vec<ControllerFile>,
}

fn default_bind() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerFile {
    name: String,
    /// For the TCP transports.
    port: Option<u16>,
    /// `tcp` (default), `rtu-over-tcp` or `rtu`.
    transport: Option<String>,
    /// For `rtu`: the serial device and its speed.
    serial: Option<std::path::PathBuf>,
    baud: Option<u32>,
    profile: String,
    units: Option<Vec<u16>>,
    unit_count: Option<u16>,
    travel_ms: Option<u64>,
}

impl FarmSpec {
    /// Controllers using the profiles built into the binary.
    pub fn new(controllers: Vec<ControllerSpec>) -> Result<FarmSpec, FarmError> {
        Ok(FarmSpec {
            controllers,
            profiles: ProfileSet::builtin()?,
        })
    }

    /// `count` controllers named `{prefix}-1`.. on consecutive ports from `base_port`, each
    /// with units `1..=units`. `base_port` 0 gives every controller a free port.
    pub fn quick(
        prefix: &str,
        count: usize,
        units: u8,
        profile: &str,
        base_port: u16,
        travel: Duration,
        profiles: ProfileSet,
    ) -> Result<FarmSpec, FarmError> {
        if count == 0 || count > MAX_CONTROLLERS {
            return Err(invalid(
                "controllers",
                format!("must be between 1 and {MAX_CONTROLLERS}, got {count}"),
            ));
        }
        let controllers = (0..count)
            .map(|i| {
                let port = if base_port == 0 {
                    Ok(0)
                } else {
                    u16::try_from(i)
                        .ok()
                        .and_then(|i| base_port.checked_add(i))
                        .ok_or_else(|| {
                            invalid(
                                "base-port",
                                format!("{count} controllers from {base_port} run past port 65535"),
                            )
                        })
                }?;
                Ok(
                    ControllerSpec::new(format!("{prefix}-{}", i + 1), profile, 1..=units)
                        .with_port(port)
                        .with_travel(travel),
                )
            })
            .collect::<Result<Vec<_>, FarmError>>()?;
        let spec = FarmSpec {
            controllers,
            profiles,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Parses a farm file. Errors name the key (`controller[1].units[3]`).
    pub fn parse(text: &str, profiles: ProfileSet) -> Result<FarmSpec, FarmError> {
        let file: FarmFile =
            gatehouse_adapters::toml_text::parse(text).map_err(|e| invalid(e.key, e.message))?;
        if file.controller.is_empty() {
            return Err(invalid(
                "controller",
                "the farm needs at least one [[controller]]",
            ));
        }
        let mut controllers = Vec::with_capacity(file.controller.len());
        for (i, c) in file.controller.into_iter().enumerate() {
            let key = |field: &str| format!("controller[{i}].{field}");
            let units: Vec<u16> = match (c.units, c.unit_count) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("unit_count"),
                        "give either units or unit_count, not both",
                    ));
                }
                (None, None) => {
                    return Err(invalid(key("units"), "give units = [..] or unit_count"));
                }
                (Some(list), None) => list,
                (None, Some(n)) => {
                    if n == 0 || n > u16::from(MAX_UNIT) {
                        return Err(invalid(
                            key("unit_count"),
                            format!("must be between 1 and {MAX_UNIT}, got {n}"),
                        ));
                    }
                    (1..=n).collect()
                }
            };
            let mut ids = Vec::with_capacity(units.len());
            for (k, u) in units.iter().enumerate() {
                match u8::try_from(*u) {
                    Ok(u) if (MIN_UNIT..=MAX_UNIT).contains(&u) => ids.push(u),
                    _ => {
                        return Err(invalid(
                            format!("controller[{i}].units[{k}]"),
                            format!("unit ids are {MIN_UNIT}..={MAX_UNIT}, got {u}"),
                        ));
                    }
                }
            }
            let travel = match c.travel_ms {
                None => DEFAULT_TRAVEL,
                Some(ms) => {
                    let t = Duration::from_millis(ms);
                    if !(MIN_TRAVEL..=MAX_TRAVEL).contains(&t) {
                        return Err(invalid(
                            key("travel_ms"),
                            format!(
                                "must be between {} and {}, got {ms}",
                                MIN_TRAVEL.as_millis(),
                                MAX_TRAVEL.as_millis()
                            ),
                        ));
                    }
                    t
                }
            };
            let transport = c.transport.as_deref().unwrap_or("tcp");
            let (wire, port) = match (transport, c.port, c.serial, c.baud) {
                ("tcp", Some(port), None, None) => (SimWire::Tcp, port),
                ("rtu-over-tcp", Some(port), None, None) => (SimWire::RtuOverTcp, port),
                ("rtu", None, Some(device), baud) => (
                    SimWire::Serial {
                        device,
                        baud: baud.unwrap_or(19_200),
                    },
                    0,
                ),
                ("tcp" | "rtu-over-tcp", None, _, _) => {
                    return Err(invalid(
                        key("port"),
                        format!("transport {transport:?} needs a port"),
                    ));
                }
                ("tcp" | "rtu-over-tcp", Some(_), _, _) => {
                    return Err(invalid(
                        key("serial"),
                        "serial and baud are for transport \"rtu\"",
                    ));
                }
                ("rtu", Some(_), _, _) => {
                    return Err(invalid(
                        key("port"),
                        "transport \"rtu\" serves a serial line, not a port",
                    ));
                }
                ("rtu", None, None, _) => {
                    return Err(invalid(
                        key("serial"),
                        "transport \"rtu\" needs serial = \"/dev/...\"",
                    ));
                }
                (other, ..) => {
                    return Err(invalid(
                        key("transport"),
                        format!("{other:?} is not a transport (tcp, rtu-over-tcp or rtu)"),
                    ));
                }
            };
            controllers.push(ControllerSpec {
                name: c.name,
                bind: SocketAddr::new(file.bind, port),
                profile: c.profile,
                units: ids,
                travel,
                wire,
            });
        }
        let spec = FarmSpec {
            controllers,
            profiles,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Reads and parses a farm file.
    pub fn load(path: &Path, profiles: ProfileSet) -> Result<FarmSpec, FarmError> {
        let text = std::fs::read_to_string(path).map_err(|source| FarmError::Read {
            path: path.display().to_string(),
            source,
        })?;
        FarmSpec::parse(&text, profiles)
    }

    /// Checks names, ports, profiles, units and travel times; errors name the key.
    pub fn validate(&self) -> Result<(), FarmError> {
        if self.controllers.is_empty() {
            return Err(invalid(
                "controller",
                "the farm needs at least one controller",
            ));
        }
        if self.controllers.len() > MAX_CONTROLLERS {
            return Err(invalid(
                "controller",
                format!(
                    "at most {MAX_CONTROLLERS} controllers, got {}",
                    self.controllers.len()
                ),
            ));
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut ports: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (i, c) in self.controllers.iter().enumerate() {
            let key = |field: &str| format!("controller[{i}].{field}");
            if let Err(e) = gatehouse_actors::ids::validate_slug(&c.name) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is not a slug: {e}", c.name),
                ));
            }
            if let Some(j) = names.insert(&c.name, i) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is already the name of controller[{j}]", c.name),
                ));
            }
            if let SimWire::Serial { device, .. } = &c.wire {
                if !device.is_absolute() {
                    return Err(invalid(
                        key("serial"),
                        format!("{} is not an absolute path", device.display()),
                    ));
                }
            } else {
                check_port(c.bind.port()).map_err(|m| invalid(key("port"), m))?;
            }
            if c.wire.is_tcp()
                && c.bind.port() != 0
                && let Some(j) = ports.insert(c.bind, i)
            {
                return Err(invalid(
                    key("port"),
                    format!("{} is already used by controller[{j}]", c.bind),
                ));
            }
            if self.profiles.get(&c.profile).is_none() {
                let known: Vec<&str> = self.profiles.ids().collect();
                return Err(invalid(
                    key("profile"),
                    format!(
                        "unknown profile {:?} (known: {})",
                        c.profile,
                        known.join(", ")
                    ),
                ));
            }
            if c.units.is_empty() {
                return Err(invalid(key("units"), "at least one unit id is needed"));
            }
            let mut seen = [false; 256];
            for (k, u) in c.units.iter().enumerate() {
                if !(MIN_UNIT..=MAX_UNIT).contains(u) {
                    return Err(invalid(
                        format!("controller[{i}].units[{k}]"),
                        format!("unit ids are {MIN_UNIT}..={MAX_UNIT}, got {u}"),
                    ));
                }
                if std::mem::replace(&mut seen[usize::from(*u)], true) {
                    return Err(invalid(
                        format!("controller[{i}].units[{k}]"),
                        format!("unit {u} is listed twice"),
                    ));
                }
            }
            if !(MIN_TRAVEL..=MAX_TRAVEL).contains(&c.travel) {
                return Err(invalid(
                    key("travel_ms"),
                    format!(
                        "must be between {} and {} ms, got {}",
                        MIN_TRAVEL.as_millis(),
                        MAX_TRAVEL.as_millis(),
                        c.travel.as_millis()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Running controllers. Dropping a farm stops its listeners; [`Farm::shutdown`] waits for it.
pub struct Farm {
    controllers: Vec<SimController>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Farm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Farm")
            .field("controllers", &self.controllers)
            .finish()
    }
}

impl Farm {
    /// Validates the spec, binds every listener and starts serving. If one bind fails,
    /// the controllers already started are stopped again.
    pub async fn start(spec: FarmSpec) -> Result<Farm, FarmError> {
        spec.validate()?;
        let mut farm = Farm {
            controllers: Vec::with_capacity(spec.controllers.len()),
            tasks: Vec::with_capacity(spec.controllers.len()),
        };
        for (i, c) in spec.controllers.into_iter().enumerate() {
            let Some(profile) = spec.profiles.get(&c.profile).map(Arc::clone) else {
                return Err(invalid(
                    format!("controller[{i}].profile"),
                    "unknown profile",
                ));
            };
            let config = ControllerConfig {
                name: c.name.clone(),
                bind: c.bind,
                wire: c.wire,
                units: c.units,
                travel: c.travel,
            };
            match SimController::start(config, profile).await {
                Ok((controller, task)) => {
                    farm.controllers.push(controller);
                    farm.tasks.push(task);
                }
                Err(source) => {
                    farm.shutdown().await;
                    return Err(FarmError::Bind {
                        name: c.name,
                        addr: c.bind,
                        source,
                    });
                }
            }
        }
        Ok(farm)
    }

    pub fn controller(&self, name: &str) -> Option<&SimController> {
        self.controllers.iter().find(|c| c.name() == name)
    }

    /// In the order of the spec.
    pub fn controllers(&self) -> &[SimController] {
        &self.controllers
    }

    /// Stops every listener and closes every connection, and waits until they are gone.
    pub async fn shutdown(mut self) {
        for c in &self.controllers {
            c.shutdown_signal();
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FarmSpec, FarmError> {
        FarmSpec::parse(text, ProfileSet::builtin().unwrap())
    }

    fn key_of(r: Result<FarmSpec, FarmError>) -> String {
        match r {
            Err(FarmError::Invalid { key, .. }) => key,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    const GOOD: &str = r#"
        [[controller]]
        name = "a-1"
        port = 15020
        profile = "generic"
        unit_count = 3
        travel_ms = 2000

        [[controller]]
        name = "b-1"
        port = 0
        profile = "came-zlb30"
        units = [1, 7, 247]
    "#;

    #[test]
    fn parses_a_farm_file() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.controllers.len(), 2);
        assert_eq!(spec.controllers[0].units, vec![1, 2, 3]);
        assert_eq!(spec.controllers[0].travel, Duration::from_millis(2000));
        assert_eq!(spec.controllers[0].bind.to_string(), "127.0.0.1:15020");
        assert_eq!(spec.controllers[1].units, vec![1, 7, 247]);
        assert_eq!(spec.controllers[1].travel, DEFAULT_TRAVEL);
    }

    #[test]
    fn a_farm_file_chooses_each_controller_s_transport() {
        let text = GOOD
            .replace("port = 0", "port = 0\ntransport = \"rtu-over-tcp\"")
            .replace(
                "name = \"a-1\"\n        port = 15020",
                "name = \"a-1\"\n        transport = \"rtu\"\n        serial = \"/dev/ttyS9\"\n        baud = 9600",
            );
        let spec = parse(&text).unwrap();
        assert_eq!(
            spec.controllers[0].wire,
            SimWire::Serial {
                device: "/dev/ttyS9".into(),
                baud: 9600
            }
        );
        assert_eq!(spec.controllers[1].wire, SimWire::RtuOverTcp);
        assert_eq!(parse(GOOD).unwrap().controllers[0].wire, SimWire::Tcp);

        let no_port = GOOD.replace("port = 0", "");
        assert_eq!(key_of(parse(&no_port)), "controller[1].port");
        let serial_on_tcp = GOOD.replace("port = 0", "port = 0\nserial = \"/dev/ttyS0\"");
        assert_eq!(key_of(parse(&serial_on_tcp)), "controller[1].serial");
        let rtu_with_port = GOOD.replace("port = 0", "port = 0\ntransport = \"rtu\"");
        assert_eq!(key_of(parse(&rtu_with_port)), "controller[1].port");
        let relative = GOOD.replace("port = 0", "transport = \"rtu\"\nserial = \"ttyS0\"");
        assert_eq!(key_of(parse(&relative)), "controller[1].serial");
        let unknown = GOOD.replace("port = 0", "port = 0\ntransport = \"ascii\"");
        assert_eq!(key_of(parse(&unknown)), "controller[1].transport");
    }

    #[test]
    fn errors_name_the_key() {
        let dup_name = GOOD.replace("\"b-1\"", "\"a-1\"");
        assert_eq!(key_of(parse(&dup_name)), "controller[1].name");
        let dup_port = GOOD.replace("port = 0", "port = 15020");
        assert_eq!(key_of(parse(&dup_port)), "controller[1].port");
        let bad_profile = GOOD.replace("\"came-zlb30\"", "\"nope\"");
        assert_eq!(key_of(parse(&bad_profile)), "controller[1].profile");
        let unit0 = GOOD.replace("[1, 7, 247]", "[1, 0]");
        assert_eq!(key_of(parse(&unit0)), "controller[1].units[1]");
        let unit248 = GOOD.replace("[1, 7, 247]", "[248]");
        assert_eq!(key_of(parse(&unit248)), "controller[1].units[0]");
        let reserved = GOOD.replace("port = 15020", "port = 502");
        assert_eq!(key_of(parse(&reserved)), "controller[0].port");
        let typo = GOOD.replace("travel_ms = 2000", "travle_ms = 2000");
        assert_eq!(key_of(parse(&typo)), "controller[0].travle_ms");
        let both = GOOD.replace("unit_count = 3", "unit_count = 3\nunits = [1]");
        assert_eq!(key_of(parse(&both)), "controller[0].unit_count");
        let slow = GOOD.replace("travel_ms = 2000", "travel_ms = 1");
        assert_eq!(key_of(parse(&slow)), "controller[0].travel_ms");
        let bad_name = GOOD.replace("\"a-1\"", "\"A 1\"");
        assert_eq!(key_of(parse(&bad_name)), "controller[0].name");
        assert_eq!(key_of(parse("")), "controller");
    }

    #[test]
    fn every_forbidden_port_is_refused() {
        for port in FORBIDDEN_PORTS {
            assert!(check_port(port).is_err(), "{port}");
        }
        assert!(check_port(BASE_PORT).is_ok());
        assert!(check_port(0).is_ok());
    }

    #[test]
    fn quick_farm_numbers_ports_and_names() {
        let spec = FarmSpec::quick(
            "sim",
            3,
            4,
            "generic",
            BASE_PORT,
            DEFAULT_TRAVEL,
            ProfileSet::builtin().unwrap(),
        )
        .unwrap();
        let names: Vec<_> = spec.controllers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["sim-1", "sim-2", "sim-3"]);
        assert_eq!(spec.controllers[2].bind.port(), BASE_PORT + 2);
        assert_eq!(spec.controllers[0].units, vec![1, 2, 3, 4]);
        // 500..=504 crosses 502.
        let err = FarmSpec::quick(
            "sim",
            5,
            1,
            "generic",
            500,
            DEFAULT_TRAVEL,
            ProfileSet::builtin().unwrap(),
        );
        assert_eq!(key_of(err), "controller[2].port");
    }
}
