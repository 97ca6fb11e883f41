//! The validity deadline: how long a holder may trust its lock.
//!
//! Measured from the moment the acquire or extend request was *sent*, never
//! from the reply, and shortened by a clock-drift allowance and a safety
//! margin: `sent + ttl * (1 - drift) - margin`. The store cannot expire the
//! lock before that instant unless it loses the key outright.
//!
//! Deadlines use tokio's monotonic clock (CLOCK_MONOTONIC on Linux), which
//! stops while the machine is suspended although the store's TTL keeps
//! running: a holder whose host sleeps must treat its lock as lost.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// The clock-drift allowance and safety margin applied to every TTL.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValidityPolicy {
    drift_factor: f64,
    margin: Duration,
}

impl Default for ValidityPolicy {
    /// 1% drift allowance and a 2 ms margin, as in Redlock.
    fn default() -> Self {
        ValidityPolicy {
            drift_factor: 0.01,
            margin: Duration::from_millis(2),
        }
    }
}

impl ValidityPolicy {
    /// A policy with `drift_factor` in `[0, 0.5]` and a fixed `margin`.
    pub fn new(drift_factor: f64, margin: Duration) -> Result<Self> {
        if !(0.0..=0.5).contains(&drift_factor) {
            return Err(Error::invalid_options(
                "drift_factor",
                format!("{drift_factor} is outside [0, 0.5]"),
            ));
        }
        Ok(ValidityPolicy {
            drift_factor,
            margin,
        })
    }

    /// How long a lock with `ttl` stays valid after its request was sent, or
    /// `None` when the allowances eat the whole TTL.
    pub fn span(&self, ttl: Duration) -> Option<Duration> {
        ttl.mul_f64(1.0 - self.drift_factor)
            .checked_sub(self.margin)
            .filter(|span| !span.is_zero())
    }

    /// The validity deadline of a request for `ttl` sent at `sent`.
    pub(crate) fn deadline(&self, sent: Instant, ttl: Duration) -> Instant {
        sent + self.span(ttl).unwrap_or_default()
    }
}

/// How long before its validity deadline a lock counts as expired, so that
/// [`Lock::lost`](crate::Lock::lost) fires at the deadline rather than
/// after it: tokio rounds a timer's deadline up to its next millisecond
/// tick, and the wait for that tick up to a whole millisecond again, so a
/// timer armed at the deadline fires up to about 2 ms late (measured:
/// 1.1–2.0 ms). Armed this much earlier, `lost()` fires between 2 ms before
/// the deadline and the deadline, give or take the time a busy runtime
/// takes to wake.
pub const EXPIRY_LEAD: Duration = Duration::from_millis(2);

/// When a lock valid until `valid_until` counts as expired:
/// [`EXPIRY_LEAD`] before it.
pub(crate) fn expiry(valid_until: Instant) -> Instant {
    valid_until.checked_sub(EXPIRY_LEAD).unwrap_or(valid_until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_counts_from_the_send_time_minus_allowances() {
        let p = ValidityPolicy::default();
        let sent = Instant::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(
            p.deadline(sent, ttl),
            sent + Duration::from_millis(9900 - 2)
        );
        assert_eq!(p.span(Duration::from_millis(2)), None);
        assert!(ValidityPolicy::new(0.6, Duration::ZERO).is_err());
        assert!(ValidityPolicy::new(-0.1, Duration::ZERO).is_err());
    }
}
