//! Rate limit arithmetic (GCRA). The decisions are made atomically in Redis, where every
//! instance shares them; this module holds the policy and turns a decision into what the
//! client is told.
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT): when the bucket would
//! be empty again if nothing more came. A request costing `c` moves it to
//! `max(TAT, now) + c·T` (T = the emission interval, 60 s / limit) and is allowed when that
//! is no more than `burst·T` ahead of now. In any window of `w` seconds at most
//! `w / T + burst` units pass, never the 2x of a fixed window at its boundary.

/// The GCRA steps, as Redis performs them (`gcra_*` in infra's `lua/lib.lua`). Times and
/// intervals are milliseconds; a TAT of 0 is an empty bucket. A test runs each against the
/// script on the same inputs and expects the same bits.
pub mod gcra {
    /// The TAT once `cost` units are charged at `interval` ms each.
    pub fn charge(tat: f64, now: f64, cost: f64, interval: f64) -> f64 {
        tat.max(now) + cost * interval
    }

    /// When `cost` units may go: the moment the TAT after them is `burst` units ahead of it.
    pub fn ready_at(tat: f64, now: f64, cost: f64, burst: f64, interval: f64) -> f64 {
        tat.max(now) + (cost - burst) * interval
    }

    /// The TAT once `cost` units charged earlier are given back.
    pub fn refund(tat: f64, cost: f64, interval: f64) -> f64 {
        tat - cost * interval
    }

    /// The work charged ahead of now, carried from one interval to another. A TAT already
    /// past is left as it is.
    pub fn rescale(tat: f64, now: f64, old_interval: f64, new_interval: f64) -> f64 {
        if tat <= now {
            return tat;
        }
        now + (tat - now) * new_interval / old_interval
    }
}

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

    /// An api request's admission, as `request_budget.lua` decides it.
    fn admit(policy: &RatePolicy, tat: &mut f64, now: f64) -> Quota {
        let candidate = gcra::charge(*tat, now, 1.0, policy.emission_ms());
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

    #[test]
    fn a_refund_undoes_a_charge_and_a_rescale_keeps_the_work() {
        let charged = gcra::charge(1_000.0, 400.0, 10.0, 6.0);
        assert_eq!(charged, 1_060.0);
        assert_eq!(gcra::refund(charged, 10.0, 6.0), 1_000.0);
        // 60 ms of work at 6 ms per unit is 10 units: at 3 ms per unit, 30 ms.
        assert_eq!(gcra::rescale(1_060.0, 1_000.0, 6.0, 3.0), 1_030.0);
        assert_eq!(gcra::rescale(900.0, 1_000.0, 6.0, 3.0), 900.0);
        // Ready when the TAT after the batch is within the burst: 10 units, burst 4.
        assert_eq!(gcra::ready_at(0.0, 100.0, 10.0, 4.0, 6.0), 136.0);
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
