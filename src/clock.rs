//! Wall-clock time as weft reports it: unix milliseconds, the unit of every
//! time in `weftd status`, the store's health and the per-peer counters.
//! A clock before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` in unix ms.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now, in unix ms.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}
