//! The one back-off schedule of every retry and reconnect loop (the
//! engine's idempotent retries, the Redis subscription, etcd's keepalive
//! stream and reaper): exponential from a floor to a ceiling, optionally
//! jittered, reset after a success. The delays come from `backon`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays that double from `min` to `max`; with jitter, each is stretched
/// by a random factor in `[1, 2)` so that clients that failed together do
/// not come back together.
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from `min` to `max`, without jitter.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self::from_builder(
            ExponentialBuilder::new()
                .with_min_delay(min)
                .with_max_delay(max)
                .without_max_times(),
            max,
        )
    }

    /// Delays from `min` to `max`, each jittered.
    pub(crate) fn jittered(min: Duration, max: Duration) -> Self {
        Self::from_builder(
            ExponentialBuilder::new()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_jitter()
                .without_max_times(),
            max,
        )
    }

    fn from_builder(builder: ExponentialBuilder, max: Duration) -> Self {
        Backoff {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // Without a cap on times the iterator never ends; the ceiling is
        // the fallback all the same.
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts again from the floor (after a success).
    pub(crate) fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_to_the_ceiling_and_reset_to_the_floor() {
        let mut b = Backoff::new(5 * MS, 20 * MS);
        let delays: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [5 * MS, 10 * MS, 20 * MS, 20 * MS]);
        b.reset();
        assert_eq!(b.next_delay(), 5 * MS);
    }

    #[test]
    fn jitter_stretches_each_delay_by_less_than_double() {
        let mut b = Backoff::jittered(10 * MS, 40 * MS);
        for base in [10, 20, 40, 40] {
            let d = b.next_delay();
            assert!(d >= base * MS && d < 2 * base * MS, "{d:?} for {base} ms");
        }
    }
}
