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
use crate::store::FleetRecords;

/// Modbus unit ids that address one device (0 is broadcast; 248–255 are reserved).
pub const UNIT_IDS: RangeInclusive<u8> = 1..=247;
/// A controller's per-request timeout override.
pub const REQUEST_TIMEOUT_MS: RangeInclusive<u64> = 10..=600_000;
/// A controller's pause between frames (slow RS-485 gateways).
pub const INTER_FRAME_DELAY_MS: RangeInclusive<u64> = 0..=10_000;
/// Request timeouts in a row that take a controller's link down (fewer are lost replies).
pub const TIMEOUTS_BEFORE_DOWN: RangeInclusive<u64> = 1..=10;
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
        check_endpoint(&c.endpoint).map_err(|m| err("endpoint", m))?;
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
    use crate::store::{ControllerRecord, GateRecord, SiteRecord};

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
                endpoint: "gate-board.local:1502".into(),
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
