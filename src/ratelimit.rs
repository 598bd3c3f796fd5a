//! Fixed-window rate limiting per key (client id, or IP for unauthenticated calls). Sharded
//! map, no global lock on the request path; time comes from the shared clock.
use crate::clock::SharedClock;
use dashmap::DashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset_in: u64,
}

pub struct RateLimiter {
    limit: u32,
    window_secs: i64,
    clock: SharedClock,
    windows: DashMap<String, (i64, u32)>,
}

impl RateLimiter {
    pub fn per_minute(limit: u32, clock: SharedClock) -> Self {
        Self { limit, window_secs: 60, clock, windows: DashMap::new() }
    }

    pub fn check(&self, key: &str) -> Decision {
        let now = self.clock.now().timestamp();
        let window = now.div_euclid(self.window_secs);
        let reset_in = ((window + 1) * self.window_secs - now).max(1) as u64;
        let mut entry = self.windows.entry(key.to_string()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        let allowed = entry.1 < self.limit;
        if allowed {
            entry.1 += 1;
        }
        Decision { allowed, limit: self.limit, remaining: self.limit.saturating_sub(entry.1), reset_in }
    }

    /// Drops windows that have ended, so memory stays bounded by active keys.
    pub fn sweep(&self) {
        let window = self.clock.now().timestamp().div_euclid(self.window_secs);
        self.windows.retain(|_, v| v.0 >= window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::{Duration, TimeZone, Utc};
    use std::sync::Arc;

    #[test]
    fn allows_the_limit_then_refuses_until_the_window_resets() {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap());
        let rl = RateLimiter::per_minute(3, Arc::new(clock.clone()));
        let d: Vec<_> = (0..4).map(|_| rl.check("c1")).collect();
        assert_eq!(d.iter().map(|d| d.allowed).collect::<Vec<_>>(), [true, true, true, false]);
        assert_eq!(d[0].remaining, 2);
        assert_eq!(d[3].remaining, 0);
        assert_eq!(d[3].reset_in, 50);
        assert!(rl.check("other").allowed, "keys are independent");
        clock.advance(Duration::seconds(50));
        let after = rl.check("c1");
        assert!(after.allowed);
        assert_eq!(after.remaining, 2);
        rl.sweep();
        assert_eq!(rl.windows.len(), 1);
    }
}
