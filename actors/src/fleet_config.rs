//! The fleet configuration's rules, in one place: every shape the fleet is declared in (the
//! fleet file, REST bodies, the store's records) converts into [`FleetRecords`] and is
//! checked here as a whole, so that an import and an admin's REST call are held to the same
//! time-zone, unit-id, timeout and endpoint rules.
//!
//! Validation does no I/O: an endpoint is checked for its form (`host:port`) and resolved
//! when the link connects, never here (a blocking DNS lookup would hold up the async
//! configuration path, and a name that does not resolve today may resolve tomorrow).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::ids::ControllerId;
use crate::store::{ControllerRecord, FleetRecords};

/// Modbus unit ids that address one device (0 is broadcast; 248–255 are reserved).
pub const UNIT_IDS: RangeInclusive<u8> = 1..=247;
/// A controller's per-request timeout override.
pub const REQUEST_TIMEOUT_MS: RangeInclusive<u64> = 10..=600_000;
/// A controller's pause between frames (slow RS-485 gateways).
pub const INTER_FRAME_DELAY_MS: RangeInclusive<u64> = 0..=10_000;
/// Request timeouts in a row that take a controller's link down (fewer are lost replies).
pub const TIMEOUTS_BEFORE_DOWN: RangeInclusive<u64> = 1..=10;
/// Serial line speeds a controller may be set to.
pub const BAUD: RangeInclusive<u32> = 300..=1_000_000;
/// A controller's poll interval at rest.
pub const POLL_INTERVAL_MS: RangeInclusive<u64> = 50..=600_000;
/// A gate's travel timeout: longer than this and the gate faults.
pub const TRAVEL_TIMEOUT_S: RangeInclusive<u64> = 1..=3_600;
/// The travel timeout when none is configured.
pub const DEFAULT_TRAVEL_TIMEOUT_S: u64 = 60;
/// Auto-close after this long open.
pub const AUTO_CLOSE_AFTER_S: RangeInclusive<u64> = 5..=86_400;
/// The "left open" alert after this long open.
pub const LEFT_OPEN_ALERT_AFTER_S: RangeInclusive<u64> = 10..=7 * 86_400;
/// A site's time zone when none is given.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// How long a gate gives a write before it counts as timed out: three request timeouts
/// (a lost reply is retried), and never under a second.
pub fn write_timeout_ms(request_timeout: Duration) -> u64 {
    (request_timeout.as_millis() as u64 * 3).max(1_000)
}

/// The register profiles the validator may name (implemented over the profile set, which the
/// actors do not know).
pub trait ProfileNames {
    fn has(&self, id: &str) -> bool;
    /// Every known id, for the message that names what would have been accepted.
    fn names(&self) -> Vec<String>;
}

/// Which entry of the configuration is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Site,
    Controller,
    Gate,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Site => "site",
            Kind::Controller => "controller",
            Kind::Gate => "gate",
        }
    }
}

/// A configuration that breaks a rule: the entry (its kind, position and id), the field, and
/// what is wrong. Each shape names it its own way (`gate[3].unit` in a file, the gate and the
/// field in a REST error's details).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub kind: Kind,
    /// Position among the entries of its kind.
    pub index: usize,
    pub id: String,
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {}",
            self.kind.as_str(),
            self.id,
            self.field,
            self.message
        )
    }
}

/// Whether `zone` is an IANA time zone this machine knows.
pub fn valid_timezone(zone: &str) -> bool {
    !zone.trim().is_empty() && jiff::tz::TimeZone::get(zone).is_ok()
}

/// Checks the form of a Modbus TCP endpoint: `host:port` (an IPv6 address in brackets), with
/// a port from 1 to 65535. Nothing is resolved.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!(
            "{endpoint:?} needs a port (host:port; Modbus TCP is usually 502)"
        ));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{endpoint:?}: the port must be 1 to 65535")),
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !name_ok {
        return Err(format!(
            "{endpoint:?}: {host:?} is neither an IP address nor a host name (IPv6 goes in brackets: [::1]:502)"
        ));
    }
    Ok(())
}

/// Checks a whole fleet configuration against every rule.
pub fn validate(fleet: &FleetRecords, profiles: &dyn ProfileNames) -> Result<(), ConfigError> {
    let mut sites = BTreeSet::new();
    for (index, s) in fleet.sites.iter().enumerate() {
        let err = |field, message: String| ConfigError {
            kind: Kind::Site,
            index,
            id: s.id.to_string(),
            field,
            message,
        };
        if !sites.insert(&s.id) {
            return Err(err("id", format!("duplicate site id {}", s.id)));
        }
        if s.name.trim().is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        if !valid_timezone(&s.timezone) {
            return Err(err(
                "timezone",
                format!(
                    "{:?} is not an IANA time zone (such as Europe/Paris or UTC)",
                    s.timezone
                ),
            ));
        }
    }
    let mut controllers = BTreeSet::new();
    let mut devices: BTreeMap<&str, &ControllerId> = BTreeMap::new();
    for (index, c) in fleet.controllers.iter().enumerate() {
        let err = |field, message: String| ConfigError {
            kind: Kind::Controller,
            index,
            id: c.id.to_string(),
            field,
            message,
        };
        if !controllers.insert(&c.id) {
            return Err(err("id", format!("duplicate controller id {}", c.id)));
        }
        if !sites.contains(&c.site) {
            return Err(err("site", format!("no site {}", c.site)));
        }
        if !profiles.has(&c.profile) {
            return Err(err(
                "profile",
                format!(
                    "unknown profile {:?} (known: {})",
                    c.profile,
                    profiles.names().join(", ")
                ),
            ));
        }
        check_transport(c).map_err(|(field, m)| err(field, m))?;
        if let (crate::store::Transport::Rtu, Some(device)) =
            (c.transport, c.serial.device.as_deref())
            && let Some(other) = devices.insert(device, &c.id)
        {
            return Err(err(
                "serial",
                format!(
                    "{device} is already controller {other}'s line; one serial line is one \
                     link: put the gates of both under one controller (each its own unit id)"
                ),
            ));
        }
        for (field, value, range) in [
            (
                "request_timeout_ms",
                c.request_timeout_ms,
                REQUEST_TIMEOUT_MS,
            ),
            (
                "inter_frame_delay_ms",
                c.inter_frame_delay_ms,
                INTER_FRAME_DELAY_MS,
            ),
            ("poll_interval_ms", c.poll_interval_ms, POLL_INTERVAL_MS),
            (
                "timeouts_before_down",
                c.timeouts_before_down,
                TIMEOUTS_BEFORE_DOWN,
            ),
        ] {
            if let Some(v) = value {
                in_range(v, &range).map_err(|m| err(field, m))?;
            }
        }
    }
    let mut gates = BTreeSet::new();
    let mut units: BTreeMap<(&ControllerId, u8), &str> = BTreeMap::new();
    for (index, g) in fleet.gates.iter().enumerate() {
        let err = |field, message: String| ConfigError {
            kind: Kind::Gate,
            index,
            id: g.id.to_string(),
            field,
            message,
        };
        if !gates.insert(&g.id) {
            return Err(err("id", format!("duplicate gate id {}", g.id)));
        }
        if !controllers.contains(&g.controller) {
            return Err(err("controller", format!("no controller {}", g.controller)));
        }
        if !UNIT_IDS.contains(&g.unit) {
            return Err(err(
                "unit",
                format!(
                    "must be {}..={}, got {}",
                    UNIT_IDS.start(),
                    UNIT_IDS.end(),
                    g.unit
                ),
            ));
        }
        if let Some(other) = units.insert((&g.controller, g.unit), g.id.as_str()) {
            return Err(err(
                "unit",
                format!(
                    "unit {} on {} is already gate {other}",
                    g.unit, g.controller
                ),
            ));
        }
        in_range(g.travel_timeout_s, &TRAVEL_TIMEOUT_S).map_err(|m| err("travel_timeout_s", m))?;
        if let Some(s) = g.auto_close_after_s {
            in_range(s, &AUTO_CLOSE_AFTER_S).map_err(|m| err("auto_close_after_s", m))?;
        }
        if let Some(s) = g.left_open_alert_after_s {
            in_range(s, &LEFT_OPEN_ALERT_AFTER_S).map_err(|m| err("left_open_alert_after_s", m))?;
        }
    }
    Ok(())
}

/// The transport's own keys: an endpoint for the TCP transports, a serial line for `rtu`, and
/// none of the other's (a key that would be ignored is a mistake worth naming).
fn check_transport(c: &ControllerRecord) -> Result<(), (&'static str, String)> {
    let t = c.transport.as_str();
    if c.transport.is_tcp() {
        if c.endpoint.is_empty() {
            return Err((
                "endpoint",
                format!("transport {t:?} needs an endpoint (host:port; Modbus TCP is usually 502)"),
            ));
        }
        check_endpoint(&c.endpoint).map_err(|m| ("endpoint", m))?;
        let s = &c.serial;
        for (field, set) in [
            ("serial", s.device.is_some()),
            ("baud", s.baud.is_some()),
            ("parity", s.parity.is_some()),
            ("data_bits", s.data_bits.is_some()),
            ("stop_bits", s.stop_bits.is_some()),
        ] {
            if set {
                return Err((
                    field,
                    format!("applies to transport \"rtu\" only, and this controller's is {t:?}"),
                ));
            }
        }
        return Ok(());
    }
    if !c.endpoint.is_empty() {
        return Err((
            "endpoint",
            "transport \"rtu\" uses a serial line (`serial`), not an endpoint; for a serial \
             gateway on the network use transport \"rtu-over-tcp\""
                .into(),
        ));
    }
    match c.serial.device.as_deref() {
        None => {
            return Err((
                "serial",
                "transport \"rtu\" needs the serial device, such as /dev/ttyUSB0".into(),
            ));
        }
        Some(d) if !d.starts_with('/') || d.len() > 4096 || d.contains('\0') => {
            return Err((
                "serial",
                format!("{d:?} is not an absolute device path, such as /dev/ttyUSB0"),
            ));
        }
        Some(_) => {}
    }
    match c.serial.baud {
        None => {
            return Err((
                "baud",
                "transport \"rtu\" needs the line's baud rate (set on the controller's board; \
                 9600 and 19200 are common)"
                    .into(),
            ));
        }
        Some(b) if !BAUD.contains(&b) => {
            return Err((
                "baud",
                format!("must be {}..={}, got {b}", BAUD.start(), BAUD.end()),
            ));
        }
        Some(_) => {}
    }
    if let Some(bits) = c.serial.data_bits
        && bits != 8
    {
        return Err((
            "data_bits",
            format!("Modbus RTU frames are 8-bit bytes: data_bits must be 8, got {bits}"),
        ));
    }
    if let Some(bits) = c.serial.stop_bits
        && !(1..=2).contains(&bits)
    {
        return Err(("stop_bits", format!("must be 1 or 2, got {bits}")));
    }
    Ok(())
}

fn in_range(v: u64, range: &RangeInclusive<u64>) -> Result<(), String> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "must be between {} and {}, got {v}",
            range.start(),
            range.end()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        ControllerRecord, GateRecord, Parity, SerialSettings, SiteRecord, Transport,
    };

    /// `c1` on a serial line at 19200 baud, the other keys left to their defaults.
    fn on_serial(f: &mut FleetRecords) {
        let c = &mut f.controllers[0];
        c.transport = Transport::Rtu;
        c.endpoint.clear();
        c.serial.device = Some("/dev/ttyUSB0".into());
        c.serial.baud = Some(19_200);
    }

    #[test]
    fn each_transport_takes_its_own_keys_and_refuses_the_others() {
        let mut f = fleet();
        on_serial(&mut f);
        assert_eq!(validate(&f, &Two), Ok(()));
        let line = f.controllers[0].serial_line().expect("a serial line");
        assert_eq!(
            (line.parity, line.data_bits, line.stop_bits),
            (Parity::Even, 8, 1)
        );
        // 11 bits per character at 19200 baud: 3.5 characters are 2.005 ms.
        assert_eq!(line.inter_frame_gap(), Duration::from_micros(2_006));
        let mut fast = line.clone();
        fast.baud = 115_200;
        assert_eq!(fast.inter_frame_gap(), Duration::from_micros(1_750));

        let mut f = fleet();
        f.controllers[0].transport = Transport::RtuOverTcp;
        assert_eq!(validate(&f, &Two), Ok(()));
        assert_eq!(f.controllers[0].serial_line(), None);

        let serial = |change: fn(&mut ControllerRecord)| {
            broken(|f| {
                on_serial(f);
                change(&mut f.controllers[0]);
            })
        };
        let c = Kind::Controller;
        assert_eq!(serial(|c| c.serial.device = None), (c, "serial"));
        assert_eq!(
            serial(|c| c.serial.device = Some("ttyUSB0".into())),
            (c, "serial")
        );
        assert_eq!(serial(|c| c.serial.baud = None), (c, "baud"));
        assert_eq!(serial(|c| c.serial.baud = Some(50)), (c, "baud"));
        assert_eq!(serial(|c| c.serial.data_bits = Some(7)), (c, "data_bits"));
        assert_eq!(serial(|c| c.serial.stop_bits = Some(3)), (c, "stop_bits"));
        assert_eq!(
            serial(|c| c.endpoint = "10.0.0.9:502".into()),
            (c, "endpoint")
        );
        assert_eq!(
            broken(|f| f.controllers[0].serial.baud = Some(9_600)),
            (c, "baud"),
            "a serial key on a TCP controller would be ignored: refused"
        );
        assert_eq!(
            broken(|f| {
                f.controllers[0].transport = Transport::RtuOverTcp;
                f.controllers[0].endpoint.clear();
            }),
            (c, "endpoint")
        );
        assert_eq!(
            broken(|f| {
                on_serial(f);
                let mut twin = f.controllers[0].clone();
                twin.id = "c2".parse().unwrap();
                f.controllers.push(twin);
            }),
            (c, "serial"),
            "two links on one serial line"
        );
    }

    struct Two;

    impl ProfileNames for Two {
        fn has(&self, id: &str) -> bool {
            id == "generic" || id == "came-zlb30"
        }
        fn names(&self) -> Vec<String> {
            vec!["came-zlb30".into(), "generic".into()]
        }
    }

    fn fleet() -> FleetRecords {
        FleetRecords {
            sites: vec![SiteRecord {
                id: "hq".parse().unwrap(),
                name: "HQ".into(),
                timezone: "Europe/Paris".into(),
            }],
            controllers: vec![ControllerRecord {
                id: "c1".parse().unwrap(),
                site: "hq".parse().unwrap(),
                profile: "generic".into(),
                transport: Transport::Tcp,
                endpoint: "gate-board.local:1502".into(),
                serial: SerialSettings::default(),
                request_timeout_ms: None,
                inter_frame_delay_ms: None,
                poll_interval_ms: Some(200),
                timeouts_before_down: None,
            }],
            gates: vec![GateRecord {
                id: "g1".parse().unwrap(),
                controller: "c1".parse().unwrap(),
                unit: 1,
                name: "G1".into(),
                travel_timeout_s: 60,
                auto_close_after_s: None,
                left_open_alert_after_s: None,
            }],
        }
    }

    fn broken(change: impl FnOnce(&mut FleetRecords)) -> (Kind, &'static str) {
        let mut f = fleet();
        change(&mut f);
        let e = validate(&f, &Two).unwrap_err();
        (e.kind, e.field)
    }

    #[test]
    fn a_good_fleet_passes_without_resolving_its_host_names() {
        assert_eq!(validate(&fleet(), &Two), Ok(()));
    }

    #[test]
    fn every_rule_names_the_entry_and_field_it_breaks() {
        assert_eq!(
            broken(|f| f.sites[0].timezone = "Mars/Olympus".into()),
            (Kind::Site, "timezone")
        );
        assert_eq!(
            broken(|f| f.sites[0].timezone = "".into()),
            (Kind::Site, "timezone")
        );
        assert_eq!(
            broken(|f| f.controllers[0].profile = "nope".into()),
            (Kind::Controller, "profile")
        );
        assert_eq!(
            broken(|f| f.controllers[0].site = "elsewhere".parse().unwrap()),
            (Kind::Controller, "site")
        );
        assert_eq!(
            broken(|f| f.controllers[0].poll_interval_ms = Some(10)),
            (Kind::Controller, "poll_interval_ms")
        );
        for n in [0, 11] {
            assert_eq!(
                broken(|f| f.controllers[0].timeouts_before_down = Some(n)),
                (Kind::Controller, "timeouts_before_down")
            );
        }
        assert_eq!(broken(|f| f.gates[0].unit = 0), (Kind::Gate, "unit"));
        assert_eq!(
            broken(|f| f.gates[0].travel_timeout_s = 0),
            (Kind::Gate, "travel_timeout_s")
        );
        assert_eq!(
            broken(|f| f.gates[0].auto_close_after_s = Some(1)),
            (Kind::Gate, "auto_close_after_s")
        );
        assert_eq!(
            broken(|f| {
                let mut twin = f.gates[0].clone();
                twin.id = "g2".parse().unwrap();
                f.gates.push(twin);
            }),
            (Kind::Gate, "unit")
        );
    }

    #[test]
    fn endpoints_are_checked_for_form_only() {
        for good in [
            "127.0.0.1:502",
            "[::1]:502",
            "plc-7.site.example:1502",
            "board:1",
        ] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "board:0",
            "board:70000",
            ":502",
            "::1:502",
            "bad host:502",
            "-board:502",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_write_timeout_is_three_requests_and_at_least_a_second() {
        assert_eq!(write_timeout_ms(Duration::from_millis(100)), 1_000);
        assert_eq!(write_timeout_ms(Duration::from_millis(800)), 2_400);
    }
}
