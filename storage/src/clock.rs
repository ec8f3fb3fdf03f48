//! The clock seam: where the store's time comes from.
//!
//! The store reads the time in two places: the writer stamps each write
//! group with it (records, lease and tuple expiry checks, the dedupe
//! window), and the background retention pass measures ages against it.
//! Both read a [`Clock`] given when the store opens, so a test can set the
//! time instead of waiting for it: [`ManualClock`] moves only when told.
//! [`SystemClock`] is the operating system's wall clock, the default.
//!
//! The writer never lets record times go backwards (LOG-4 in
//! docs/storage-format.md): it stamps a group with the later of the clock
//! and the last record's time, so a clock set back, by hand or by NTP, only
//! holds the log's time still until the clock catches up.
//!
//! Rejected alternative: passing the time into every call. Appends would
//! carry a parameter that only tests choose, and every adapter would read the
//! system clock itself.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        now_us()
    }
}

/// Microseconds since the Unix epoch, from the system clock (0 if the clock
/// is set before 1970).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64)
}

/// A clock that moves only when told. Clones share one time, so a test keeps
/// a clone and moves the clock of a store it opened with another.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    us: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that reads `now_us` until it is moved.
    pub fn new(now_us: u64) -> ManualClock {
        ManualClock { us: Arc::new(AtomicU64::new(now_us)) }
    }

    /// A clock that starts at the system clock's time now.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(now_us())
    }

    /// Sets the time, forwards or back.
    pub fn set(&self, now_us: u64) {
        self.us.store(now_us, Ordering::SeqCst);
    }

    /// Moves the time forward by `by` (saturating at `u64::MAX`
    /// microseconds).
    pub fn advance(&self, by: Duration) {
        let by = by.as_micros().min(u128::from(u64::MAX)) as u64;
        let _ = self.us.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(t.saturating_add(by)));
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.us.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::new(1_000);
        let shared = clock.clone();
        assert_eq!(shared.now_us(), 1_000);
        clock.advance(Duration::from_millis(2));
        assert_eq!(shared.now_us(), 3_000);
        clock.set(10);
        assert_eq!(shared.now_us(), 10);
        clock.set(u64::MAX - 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(shared.now_us(), u64::MAX);
    }

    #[test]
    fn the_system_clock_is_past_2020() {
        assert!(SystemClock.now_us() > 1_577_836_800_000_000);
    }
}
