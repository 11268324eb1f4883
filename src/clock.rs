//! The wall clock, read in one place. The pure core never reads it: the
//! edge passes the time in (see `desk` and `intake`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now; 0 on a clock set before 1970.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
