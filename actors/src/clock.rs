//! The wall clock, in one place: milliseconds since the Unix epoch, for event and audit
//! timestamps. (The gate machines' own clock is monotonic and passed in; see `FleetContext`.)

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock now, milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
