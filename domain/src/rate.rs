//! Rate limit arithmetic (GCRA). The decisions are made atomically in Redis, where every
//! instance shares them; this module holds the policy and turns a decision into what the
//! client is told.
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT): when the bucket would
//! be empty again if nothing more came. A request costing `c` moves it to
//! `max(TAT, now) + c·T` (T = the emission interval, 60 s / limit) and is allowed when that
//! is no more than `burst·T` ahead of now. In any window of `w` seconds at most
//! `w / T + burst` units pass, never the 2x of a fixed window at its boundary.

/// A per-minute limit with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    pub per_minute: u32,
    /// Units that may go at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// What a client is told about its budget after one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub allowed: bool,
    pub limit: u32,
    /// Requests that would be allowed right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds to wait before the next request can pass; 0 when allowed.
    pub retry_after_secs: u64,
}

impl RatePolicy {
    /// `burst_seconds` of the limit's pace may go at once (at least one unit).
    pub fn new(per_minute: u32, burst_seconds: u32) -> Self {
        let per_minute = per_minute.max(1);
        let burst = (u64::from(per_minute) * u64::from(burst_seconds) / 60).max(1);
        Self {
            per_minute,
            burst: u32::try_from(burst).unwrap_or(u32::MAX),
        }
    }

    pub fn emission_ms(&self) -> f64 {
        60_000.0 / f64::from(self.per_minute.max(1))
    }

    /// How far ahead of now the bucket may run: `burst · T`.
    pub fn tolerance_ms(&self) -> f64 {
        f64::from(self.burst.max(1)) * self.emission_ms()
    }

    /// The client's view of a decision. `ahead_ms` is how far the TAT is ahead of now after
    /// the decision (for a refusal: the TAT the request would have needed).
    pub fn quota(&self, allowed: bool, ahead_ms: f64) -> Quota {
        let emission = self.emission_ms();
        let ahead = ahead_ms.max(0.0);
        let remaining = if allowed {
            ((self.tolerance_ms() - ahead) / emission).floor().max(0.0) as u32
        } else {
            0
        };
        let retry_after_ms = if allowed {
            0.0
        } else {
            (ahead - self.tolerance_ms()).max(1.0)
        };
        Quota {
            allowed,
            limit: self.per_minute,
            remaining,
            reset_secs: (ahead / 1000.0).ceil() as u64,
            retry_after_secs: (retry_after_ms / 1000.0).ceil() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reference GCRA, to check the arithmetic the Redis script performs.
    fn admit(policy: &RatePolicy, tat: &mut f64, now: f64) -> Quota {
        let candidate = tat.max(now) + policy.emission_ms();
        let allowed = candidate - now <= policy.tolerance_ms() + 1e-9;
        if allowed {
            *tat = candidate;
            policy.quota(true, *tat - now)
        } else {
            policy.quota(false, candidate - now)
        }
    }

    #[test]
    fn burst_then_pace() {
        let policy = RatePolicy::new(600, 1); // 10 per second, burst 10
        assert_eq!(policy.burst, 10);
        let mut tat = 0.0;
        let first = admit(&policy, &mut tat, 0.0);
        assert_eq!(
            (first.allowed, first.remaining, first.reset_secs),
            (true, 9, 1)
        );
        for _ in 0..9 {
            assert!(admit(&policy, &mut tat, 0.0).allowed);
        }
        let refused = admit(&policy, &mut tat, 0.0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 1);
        assert!(admit(&policy, &mut tat, 100.0).allowed);
    }

    proptest! {
        /// However requests arrive, no window of 60 s admits more than limit + burst.
        #[test]
        fn no_window_admits_more_than_limit_plus_burst(
            per_minute in 1u32..2000,
            burst_seconds in 0u32..20,
            gaps in proptest::collection::vec(0u32..400, 1..600),
        ) {
            let policy = RatePolicy::new(per_minute, burst_seconds);
            let mut tat = 0.0;
            let mut now = 0.0;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += f64::from(gap);
                if admit(&policy, &mut tat, now).allowed {
                    admitted.push(now);
                }
            }
            let cap = u64::from(policy.per_minute) + u64::from(policy.burst);
            for (i, start) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().take_while(|t| **t < start + 60_000.0).count();
                prop_assert!(in_window as u64 <= cap, "{in_window} > {cap}");
            }
        }
    }
}
