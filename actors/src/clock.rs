//! The wall clock, in one place: milliseconds since the Unix epoch, for event and audit
//! timestamps, and their one text form for people (emails, reports). (The gate machines' own clock is monotonic and passed in; see `FleetContext`.)

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock now, milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wall-clock time as UTC text (`2026-12-07 10:54:46 UTC`).
pub fn utc(at_ms: u64) -> String {
    match jiff::Timestamp::from_millisecond(at_ms as i64) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => format!("{at_ms} ms"),
    }
}
