//! How long to wait between acquisition attempts, and how many to make.
//!
//! A delay is an upper bound: a waiter also wakes when the store (or a lock
//! released through the same [`Locker`](crate::Locker)) says the key may be
//! free, and when the holder's TTL runs out.

use std::time::Duration;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schedule {
    Once,
    Linear { delay: Duration },
    Exponential { base: Duration, max: Duration },
}

/// A retry strategy: a delay schedule plus an optional cap on retries.
///
/// ```
/// use std::time::Duration;
/// use distlock::RetryStrategy;
///
/// let seed_default = RetryStrategy::linear(Duration::from_millis(100)).max_retries(10);
/// assert_eq!(seed_default, RetryStrategy::default());
/// let backoff = RetryStrategy::exponential(Duration::from_millis(10), Duration::from_secs(1));
/// assert_eq!(backoff.retries_cap(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryStrategy {
    schedule: Schedule,
    max_retries: Option<u32>,
}

impl Default for RetryStrategy {
    /// The seed's default: 100 ms between attempts, at most 10 retries.
    fn default() -> Self {
        Self::linear(Duration::from_millis(100)).max_retries(10)
    }
}

impl RetryStrategy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        RetryStrategy {
            schedule: Schedule::Once,
            max_retries: Some(0),
        }
    }

    /// The same delay before every retry; unlimited retries until capped.
    pub fn linear(delay: Duration) -> Self {
        RetryStrategy {
            schedule: Schedule::Linear { delay },
            max_retries: None,
        }
    }

    /// Exponential back-off with full jitter: retry `n` waits a uniformly
    /// random time in `[0, min(max, base * 2^n)]`; unlimited retries until capped.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        RetryStrategy {
            schedule: Schedule::Exponential { base, max },
            max_retries: None,
        }
    }

    /// Caps the number of retries (attempts after the first).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// The cap on retries, if any.
    pub fn retries_cap(&self) -> Option<u32> {
        self.max_retries
    }

    /// True when this strategy never retries.
    pub fn is_once(&self) -> bool {
        self.max_retries == Some(0) || self.schedule == Schedule::Once
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self.schedule {
            Schedule::Once => Ok(()),
            Schedule::Linear { delay } if delay.is_zero() => Err(Error::invalid_options(
                "retry",
                "a linear retry delay must be greater than zero",
            )),
            Schedule::Exponential { base, max } if base.is_zero() || max < base => {
                Err(Error::invalid_options(
                    "retry",
                    format!(
                        "exponential back-off needs 0 < base <= max (got base {base:?}, max {max:?})"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The delay before retry number `retry` (1-based), or `None` when the
    /// strategy allows no such retry.
    pub(crate) fn delay(&self, retry: u32) -> Option<Duration> {
        if self.max_retries.is_some_and(|cap| retry > cap) {
            return None;
        }
        match self.schedule {
            Schedule::Once => None,
            Schedule::Linear { delay } => Some(delay),
            Schedule::Exponential { base, max } => {
                let ceiling = base
                    .checked_mul(
                        1u32.checked_shl(retry.saturating_sub(1))
                            .unwrap_or(u32::MAX),
                    )
                    .map_or(max, |d| d.min(max));
                let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
                Some(Duration::from_nanos(fastrand::u64(0..=nanos)))
            }
        }
    }

    /// The longest the whole schedule can wait, when retries are capped.
    pub(crate) fn max_total_delay(&self) -> Option<Duration> {
        let cap = self.max_retries?;
        let longest = match self.schedule {
            Schedule::Once => Duration::ZERO,
            Schedule::Linear { delay } => delay,
            Schedule::Exponential { max, .. } => max,
        };
        Some(longest.saturating_mul(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn linear_repeats_until_the_cap() {
        let s = RetryStrategy::linear(100 * MS).max_retries(3);
        let delays: Vec<_> = (1..=4).map(|n| s.delay(n)).collect();
        assert_eq!(
            delays,
            [Some(100 * MS), Some(100 * MS), Some(100 * MS), None]
        );
        assert_eq!(s.max_total_delay(), Some(300 * MS));
    }

    #[test]
    fn none_never_retries() {
        let s = RetryStrategy::none();
        assert!(s.is_once());
        assert_eq!(s.delay(1), None);
        assert_eq!(s.max_total_delay(), Some(Duration::ZERO));
    }

    #[test]
    fn exponential_jitter_stays_under_the_doubling_ceiling() {
        let s = RetryStrategy::exponential(10 * MS, 200 * MS);
        for retry in 1..=40 {
            let ceiling = (10 * MS * 2u32.saturating_pow(retry - 1)).min(200 * MS);
            for _ in 0..50 {
                assert!(s.delay(retry).unwrap() <= ceiling, "retry {retry}");
            }
        }
        // Full jitter really spreads: not every draw is at the ceiling.
        assert!((0..50).any(|_| s.delay(5).unwrap() < 150 * MS));
        assert_eq!(s.max_total_delay(), None);
    }

    #[test]
    fn invalid_schedules_are_rejected() {
        assert!(RetryStrategy::linear(Duration::ZERO).validate().is_err());
        assert!(
            RetryStrategy::exponential(Duration::ZERO, MS)
                .validate()
                .is_err()
        );
        assert!(RetryStrategy::exponential(2 * MS, MS).validate().is_err());
        assert!(RetryStrategy::default().validate().is_ok());
    }
}
