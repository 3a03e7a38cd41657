//! The fleet file: sites, controllers and gates as TOML, the fleet's source until durable
//! state exists (and its import/export format after). Parsed and validated as a whole: an
//! error names the entry and the field, and nothing is applied from a file with an error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::fleet_config::{self, ConfigError};
use gatehouse_actors::gate::GateConfig;
use gatehouse_actors::ids::{ControllerId, GateId, SiteId};
use gatehouse_actors::store::{
    ControllerRecord, FleetRecords, GateRecord, Parity, SerialSettings, SiteRecord, Transport,
};
use gatehouse_actors::tree::{ControllerFactory, ControllerSpec, GateSpec};
use gatehouse_adapters::modbus::{ModbusConnector, TimingOverrides, UnitProfile, Wire};
use gatehouse_adapters::profile::ProfileSet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteEntry>,
    #[serde(default, rename = "controller")]
    pub controllers: Vec<ControllerEntry>,
    #[serde(default, rename = "gate")]
    pub gates: Vec<GateEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteEntry {
    pub id: SiteId,
    pub name: String,
    /// An IANA time zone name; grants' time windows are read in it.
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_timezone() -> String {
    fleet_config::DEFAULT_TIMEZONE.into()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerEntry {
    pub id: ControllerId,
    pub site: SiteId,
    /// A profile id: a file stem in `config/profiles/` or the configured profiles directory.
    pub profile: String,
    /// `tcp` (the default), `rtu-over-tcp` or `rtu`.
    #[serde(default, skip_serializing_if = "is_default_transport")]
    pub transport: Transport,
    /// `host:port`, for the TCP transports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// The serial device, for `rtu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Parity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bits: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_bits: Option<u8>,
    /// Overrides of the profile's timing, for slow gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_frame_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// Request timeouts in a row that take the link down (1..=10), over the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts_before_down: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateEntry {
    pub id: GateId,
    pub controller: ControllerId,
    pub unit: u8,
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_travel_timeout_s")]
    pub travel_timeout_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_close_after_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_open_alert_after_s: Option<u64>,
}

fn is_default_transport(t: &Transport) -> bool {
    *t == Transport::default()
}

fn default_travel_timeout_s() -> u64 {
    fleet_config::DEFAULT_TRAVEL_TIMEOUT_S
}

/// A fleet file that cannot be used: the file, the entry and field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fleet file {file}: {key}: {message}")]
pub struct FleetFileError {
    pub file: String,
    /// Such as `gate[3].unit` or `controller[0].profile`.
    pub key: String,
    pub message: String,
}

impl FleetFile {
    pub fn load(path: &Path, profiles: &ProfileSet) -> Result<FleetFile, FleetFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FleetFileError {
            file: file.clone(),
            key: "(file)".into(),
            message: e.to_string(),
        })?;
        Self::parse(&file, &text, profiles)
    }

    /// Parses and validates; `file` names the source in errors.
    pub fn parse(
        file: &str,
        text: &str,
        profiles: &ProfileSet,
    ) -> Result<FleetFile, FleetFileError> {
        let err = |key: String, message: String| FleetFileError {
            file: file.to_string(),
            key,
            message,
        };
        let fleet: FleetFile =
            gatehouse_adapters::toml_text::parse(text).map_err(|e| err(e.key, e.message))?;
        fleet
            .validate(profiles)
            .map_err(|(key, message)| err(key, message))?;
        Ok(fleet)
    }

    /// The fleet's rules are `fleet_config::validate`'s, the same as REST's; this only names
    /// the entry the way a file does (`gate[3].unit`).
    fn validate(&self, profiles: &ProfileSet) -> Result<(), (String, String)> {
        fleet_config::validate(&self.to_records(), profiles).map_err(file_key)
    }

    /// The controller subtrees to start, with Modbus TCP connectors from the profiles.
    pub fn controller_specs(&self, profiles: &ProfileSet) -> Vec<ControllerSpec> {
        let records = self.to_records();
        records
            .controllers
            .iter()
            .filter_map(|c| build_controller(&records, &c.id, profiles, None).ok())
            .collect()
    }

    /// The same fleet as store records.
    pub fn to_records(&self) -> FleetRecords {
        FleetRecords {
            sites: self
                .sites
                .iter()
                .map(|s| SiteRecord {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    timezone: s.timezone.clone(),
                })
                .collect(),
            controllers: self
                .controllers
                .iter()
                .map(|c| ControllerRecord {
                    id: c.id.clone(),
                    site: c.site.clone(),
                    profile: c.profile.clone(),
                    transport: c.transport,
                    endpoint: c.endpoint.clone(),
                    serial: SerialSettings {
                        device: c.serial.clone(),
                        baud: c.baud,
                        parity: c.parity,
                        data_bits: c.data_bits,
                        stop_bits: c.stop_bits,
                    },
                    request_timeout_ms: c.request_timeout_ms,
                    inter_frame_delay_ms: c.inter_frame_delay_ms,
                    poll_interval_ms: c.poll_interval_ms,
                    timeouts_before_down: c.timeouts_before_down,
                })
                .collect(),
            gates: self
                .gates
                .iter()
                .map(|g| GateRecord {
                    id: g.id.clone(),
                    controller: g.controller.clone(),
                    unit: g.unit,
                    name: g.name.clone(),
                    travel_timeout_s: g.travel_timeout_s,
                    auto_close_after_s: g.auto_close_after_s,
                    left_open_alert_after_s: g.left_open_alert_after_s,
                })
                .collect(),
        }
    }

    /// Store records as a fleet file (for export).
    pub fn from_records(r: &FleetRecords) -> FleetFile {
        FleetFile {
            sites: r
                .sites
                .iter()
                .map(|s| SiteEntry {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    timezone: s.timezone.clone(),
                })
                .collect(),
            controllers: r
                .controllers
                .iter()
                .map(|c| ControllerEntry {
                    id: c.id.clone(),
                    site: c.site.clone(),
                    profile: c.profile.clone(),
                    transport: c.transport,
                    endpoint: c.endpoint.clone(),
                    serial: c.serial.device.clone(),
                    baud: c.serial.baud,
                    parity: c.serial.parity,
                    data_bits: c.serial.data_bits,
                    stop_bits: c.serial.stop_bits,
                    request_timeout_ms: c.request_timeout_ms,
                    inter_frame_delay_ms: c.inter_frame_delay_ms,
                    poll_interval_ms: c.poll_interval_ms,
                    timeouts_before_down: c.timeouts_before_down,
                })
                .collect(),
            gates: r
                .gates
                .iter()
                .map(|g| GateEntry {
                    id: g.id.clone(),
                    controller: g.controller.clone(),
                    unit: g.unit,
                    name: g.name.clone(),
                    travel_timeout_s: g.travel_timeout_s,
                    auto_close_after_s: g.auto_close_after_s,
                    left_open_alert_after_s: g.left_open_alert_after_s,
                })
                .collect(),
        }
    }

    /// Checks store records as if they were a file (`source` names them in errors).
    pub fn check_records(
        source: &str,
        records: &FleetRecords,
        profiles: &ProfileSet,
    ) -> Result<(), FleetFileError> {
        fleet_config::validate(records, profiles).map_err(|e| {
            let (key, message) = file_key(e);
            FleetFileError {
                file: source.to_string(),
                key,
                message,
            }
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// A broken rule, named the way a file names its entries (`gate[3].unit`), with its message.
fn file_key(e: ConfigError) -> (String, String) {
    (
        format!("{}[{}].{}", e.kind.as_str(), e.index, e.field),
        e.message,
    )
}

/// Builds controller subtrees for the fleet from the known profiles: the runtime's
/// implementation of the actors' [`ControllerFactory`] port.
pub struct Catalog {
    pub profiles: ProfileSet,
    /// Where controller connections start from (`[cluster] bind`).
    pub bind: Option<std::net::IpAddr>,
}

impl ControllerFactory for Catalog {
    fn validate(&self, fleet: &FleetRecords) -> Result<(), ConfigError> {
        fleet_config::validate(fleet, &self.profiles)
    }

    fn build(&self, fleet: &FleetRecords, id: &ControllerId) -> Result<ControllerSpec, String> {
        build_controller(fleet, id, &self.profiles, self.bind)
    }
}

/// The subtree of controller `id`: Modbus TCP connector from its profile, gate settings.
pub fn build_controller(
    records: &FleetRecords,
    id: &ControllerId,
    profiles: &ProfileSet,
    bind: Option<std::net::IpAddr>,
) -> Result<ControllerSpec, String> {
    let c = records
        .controllers
        .iter()
        .find(|c| &c.id == id)
        .ok_or_else(|| format!("no controller {id}"))?;
    let profile = profiles
        .get(&c.profile)
        .ok_or_else(|| format!("controller {id}: unknown profile {:?}", c.profile))?
        .clone();
    let gates: Vec<&GateRecord> = records
        .gates
        .iter()
        .filter(|g| &g.controller == id)
        .collect();
    let bindings = gates
        .iter()
        .map(|g| UnitProfile {
            unit: g.unit,
            profile: profile.clone(),
        })
        .collect();
    let overrides = TimingOverrides {
        connect_timeout: None,
        request_timeout: c.request_timeout_ms.map(Duration::from_millis),
        inter_frame_delay: c.inter_frame_delay_ms.map(Duration::from_millis),
        // Validated to 1..=10 before it gets here.
        timeouts_before_down: c
            .timeouts_before_down
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let wire = match c.transport {
        Transport::Tcp => Wire::Tcp(c.endpoint.clone()),
        Transport::RtuOverTcp => Wire::RtuOverTcp(c.endpoint.clone()),
        Transport::Rtu => Wire::Serial(
            c.serial_line()
                .ok_or_else(|| format!("controller {id}: transport rtu without a serial line"))?,
        ),
    };
    let connector = ModbusConnector::from_profiles(wire, bindings, overrides).bound_to(bind);
    let capabilities = profile.capabilities();
    let request_timeout = c
        .request_timeout_ms
        .map_or(profile.request_timeout, Duration::from_millis);
    let specs = gates
        .iter()
        .map(|g| GateSpec {
            id: g.id.clone(),
            name: if g.name.is_empty() {
                g.id.to_string()
            } else {
                g.name.clone()
            },
            config: GateConfig {
                capabilities,
                travel_timeout_ms: g.travel_timeout_s * 1000,
                write_timeout_ms: fleet_config::write_timeout_ms(request_timeout),
                auto_close_after_ms: g.auto_close_after_s.map(|s| s * 1000),
                left_open_alert_after_ms: g.left_open_alert_after_s.map(|s| s * 1000),
                ..GateConfig::default()
            },
        })
        .collect();
    let poll = c
        .poll_interval_ms
        .map_or(profile.poll_interval, Duration::from_millis);
    Ok(ControllerSpec::new(
        c.id.clone(),
        c.site.clone(),
        Arc::new(connector),
        poll,
        profile.fast_poll_interval.min(poll),
        specs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[site]]
id = "hq"
name = "Headquarters"
timezone = "Europe/Paris"

[[controller]]
id = "hq-north"
site = "hq"
profile = "came-zlb30"
endpoint = "127.0.0.1:1502"

[[gate]]
id = "north-barrier"
controller = "hq-north"
unit = 1
name = "North barrier"
auto_close_after_s = 60

[[gate]]
id = "north-pedestrian"
controller = "hq-north"
unit = 2
"#;

    fn parse(text: &str) -> Result<FleetFile, FleetFileError> {
        FleetFile::parse("fleet.toml", text, &ProfileSet::builtin().unwrap())
    }

    fn error_key(text: &str) -> String {
        parse(text).unwrap_err().key
    }

    #[test]
    fn a_good_file_becomes_controller_subtrees() {
        let f = parse(GOOD).unwrap();
        let specs = f.controller_specs(&ProfileSet::builtin().unwrap());
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].gates.len(), 2);
        assert_eq!(
            specs[0].gates[0].spec.config.auto_close_after_ms,
            Some(60_000)
        );
        assert_eq!(specs[0].gates[1].spec.name, "north-pedestrian");
        assert!(
            specs[0].gates[0].spec.config.capabilities.reset,
            "came has a reset write"
        );
    }

    #[test]
    fn export_reimports_to_the_same_fleet() {
        let f = parse(GOOD).unwrap();
        assert_eq!(parse(&f.to_toml()).unwrap(), f);
        let serial = parse(&GOOD.replace(
            "endpoint = \"127.0.0.1:1502\"",
            "transport = \"rtu\"\nserial = \"/dev/ttyUSB0\"\nbaud = 9600\nstop_bits = 2",
        ))
        .unwrap();
        let text = serial.to_toml();
        assert!(
            text.contains("transport = \"rtu\"") && !text.contains("endpoint"),
            "{text}"
        );
        assert!(
            !text.contains("parity"),
            "unset keys are not written: {text}"
        );
        assert_eq!(parse(&text).unwrap(), serial);
    }

    #[test]
    fn each_transport_builds_its_own_link() {
        let with = |link: &str| {
            let f = parse(&GOOD.replace("endpoint = \"127.0.0.1:1502\"", link)).unwrap();
            f.controller_specs(&ProfileSet::builtin().unwrap())
                .remove(0)
                .connector
                .endpoint()
        };
        assert_eq!(with("endpoint = \"127.0.0.1:1502\""), "127.0.0.1:1502");
        assert_eq!(
            with("transport = \"rtu-over-tcp\"\nendpoint = \"10.0.0.7:4001\""),
            "rtu+tcp://10.0.0.7:4001"
        );
        assert_eq!(
            with("transport = \"rtu\"\nserial = \"/dev/ttyUSB0\"\nbaud = 9600"),
            "/dev/ttyUSB0 (9600 8E1)",
            "the Modbus serial-line defaults: 8 data bits, even parity, one stop bit"
        );
        assert_eq!(
            error_key(&GOOD.replace(
                "endpoint = \"127.0.0.1:1502\"",
                "transport = \"rtu\"\nserial = \"/dev/ttyUSB0\""
            )),
            "controller[0].baud"
        );
        assert_eq!(
            error_key(&GOOD.replace(
                "endpoint = \"127.0.0.1:1502\"",
                "transport = \"rtu\"\nserial = \"/dev/ttyUSB0\"\nbaud = 9600\nparity = \"mark\""
            )),
            "controller[0].parity"
        );
    }

    #[test]
    fn bad_entries_are_named_by_entry_and_field() {
        assert_eq!(
            error_key(&GOOD.replace("came-zlb30", "nope")),
            "controller[0].profile"
        );
        assert_eq!(
            error_key(&GOOD.replace("unit = 2", "unit = 1")),
            "gate[1].unit"
        );
        assert_eq!(
            error_key(&GOOD.replace("unit = 2", "unit = 0")),
            "gate[1].unit"
        );
        assert_eq!(
            error_key(&GOOD.replace("unit = 2", "unit = 300")),
            "gate[1].unit"
        );
        assert_eq!(
            error_key(&GOOD.replace("\"north-pedestrian\"", "\"north-barrier\"")),
            "gate[1].id"
        );
        assert_eq!(
            error_key(&GOOD.replace("\"north-pedestrian\"", "\"North\"")),
            "gate[1].id"
        );
        assert_eq!(
            error_key(&GOOD.replace("127.0.0.1:1502", "127.0.0.1")),
            "controller[0].endpoint"
        );
        assert_eq!(
            error_key(&GOOD.replace("Europe/Paris", "Europe/Atlantis")),
            "site[0].timezone"
        );
        assert_eq!(
            error_key(&GOOD.replace("site = \"hq\"", "site = \"elsewhere\"")),
            "controller[0].site"
        );
        assert_eq!(
            error_key(&GOOD.replace("auto_close_after_s = 60", "auto_close_after_s = 1")),
            "gate[0].auto_close_after_s"
        );
        assert_eq!(
            error_key(&GOOD.replace("name = \"North barrier\"", "nmae = \"x\"")),
            "gate[0].nmae"
        );
    }
}
