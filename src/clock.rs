//! Wall-clock time behind a trait, so grant windows and expiry can be tested
//! without waiting. Timers still use `tokio::time`; this only answers "what
//! time is it" in Unix milliseconds, the unit every stored record uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that starts at the real time and can be moved forward by tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn starting_now() -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(SystemClock.now_ms())))
    }

    pub fn starting_at(ms: i64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(ms)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 in UTC, to the second: how times are shown to people.
pub fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A duration as people read it: `1h 59m`, `42s`.
pub fn format_duration_ms(ms: i64) -> String {
    if ms <= 0 {
        return "0s".into();
    }
    let secs = (ms as u64).div_ceil(1000);
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let parts: Vec<String> = [(d, "d"), (h, "h"), (m, "m"), (s, "s")]
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect();
    parts.into_iter().take(2).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration_ms(42_000), "42s");
        assert_eq!(format_duration_ms(7_140_000), "1h 59m");
        assert_eq!(format_duration_ms(90_061_000), "1d 1h");
        assert_eq!(format_duration_ms(-5), "0s");
    }

    #[test]
    fn manual_clock_moves() {
        let c = ManualClock::starting_now();
        let t0 = c.now_ms();
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now_ms() - t0, 2000);
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
    }
}
