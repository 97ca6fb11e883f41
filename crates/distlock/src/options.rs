//! Per-call obtain options with the seed's defaults, and their validation.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::retry::RetryStrategy;
use crate::validity::{EXPIRY_LEAD, ValidityPolicy};

/// The longest TTL accepted.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest metadata accepted, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;

/// The seed's default TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The poll interval used while waiting when no retry strategy is given.
pub const DEFAULT_WAIT_POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Governed by the retry strategy's cap (the seed's default mode).
    RetryBudget,
    For(Duration),
    Forever,
}

/// How to obtain one lock.
///
/// Defaults are the seed's: TTL 30 s, refresh interval TTL/3, and without a
/// wait, up to 10 retries 100 ms apart (about one second of trying).
///
/// * [`try_once`](Self::try_once): one attempt, fail fast if held.
/// * [`wait`](Self::wait): keep trying until the deadline; retries are
///   unlimited unless the strategy caps them.
/// * [`wait_forever`](Self::wait_forever): keep trying until obtained.
///
/// Between attempts a waiter sleeps at most the retry delay and at most the
/// holder's remaining TTL, and wakes early when the store signals a release.
///
/// ```
/// use std::time::Duration;
/// use distlock::{ObtainOptions, RetryStrategy};
///
/// let opts = ObtainOptions::new()
///     .ttl(Duration::from_secs(10))
///     .wait(Duration::from_secs(2))
///     .retry(RetryStrategy::exponential(Duration::from_millis(5), Duration::from_millis(200)))
///     .metadata("worker-7");
/// assert_eq!(opts.refresh_interval_or_default(), Duration::from_secs(10) / 3);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ObtainOptions {
    ttl: Duration,
    wait: Wait,
    retry: Option<RetryStrategy>,
    refresh_interval: Option<Duration>,
    metadata: Option<String>,
}

impl Default for ObtainOptions {
    fn default() -> Self {
        ObtainOptions {
            ttl: DEFAULT_TTL,
            wait: Wait::RetryBudget,
            retry: None,
            refresh_interval: None,
            metadata: None,
        }
    }
}

/// What the engine does for one obtain call, derived from validated options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WaitPlan {
    /// When waiting for the lock ends; `None` means the retry cap ends it, or never.
    pub deadline: Option<Instant>,
    /// Bounds the wait for a turn among this locker's own waiters.
    pub queue_deadline: Option<Instant>,
    pub retry: RetryStrategy,
}

impl ObtainOptions {
    /// The seed's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the store keeps the lock without a refresh.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Try once and fail fast with [`Error::NotObtained`] if the lock is held.
    pub fn try_once(mut self) -> Self {
        self.wait = Wait::For(Duration::ZERO);
        self.retry = None;
        self
    }

    /// Keep trying until `max_wait` has passed (the seed's `WithBlockWait`;
    /// a zero wait means one attempt, like [`try_once`](Self::try_once)).
    pub fn wait(mut self, max_wait: Duration) -> Self {
        self.wait = Wait::For(max_wait);
        self
    }

    /// Keep trying until the lock is obtained (the seed's `WithBlockWait(0)`).
    pub fn wait_forever(mut self) -> Self {
        self.wait = Wait::Forever;
        self
    }

    /// The delay schedule between attempts (the seed's `WithRetryDelay`).
    pub fn retry(mut self, strategy: RetryStrategy) -> Self {
        self.retry = Some(strategy);
        self
    }

    /// How often [`Lock::start_refresh`](crate::Lock::start_refresh) extends
    /// the lock; default TTL/3.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = Some(interval);
        self
    }

    /// Metadata stored with the lock, visible to
    /// [`Locker::inspect`](crate::Locker::inspect) (at most
    /// [`MAX_METADATA_BYTES`]).
    pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

    /// The TTL.
    pub fn ttl_value(&self) -> Duration {
        self.ttl
    }

    /// The metadata, if any.
    pub fn metadata_value(&self) -> Option<&str> {
        self.metadata.as_deref()
    }

    /// The refresh interval, defaulting to TTL/3.
    pub fn refresh_interval_or_default(&self) -> Duration {
        self.refresh_interval.unwrap_or(self.ttl / 3)
    }

    /// Checks every option and their combinations.
    pub(crate) fn validate(&self, validity: &ValidityPolicy) -> Result<()> {
        if self.ttl.is_zero() || self.ttl > MAX_TTL {
            return Err(Error::invalid_options(
                "ttl",
                format!("{:?} is outside (0, {MAX_TTL:?}]", self.ttl),
            ));
        }
        // A lock counts as expired EXPIRY_LEAD before its deadline.
        let span = validity
            .span(self.ttl)
            .filter(|span| *span > EXPIRY_LEAD)
            .ok_or_else(|| {
                Error::invalid_options(
                    "ttl",
                    format!(
                        "{:?} leaves no validity after the clock-drift allowance, the safety \
                         margin and the expiry timer's lead ({EXPIRY_LEAD:?})",
                        self.ttl
                    ),
                )
            })?;
        let interval = self.refresh_interval_or_default();
        if interval.is_zero() || interval >= span {
            return Err(Error::invalid_options(
                "refresh_interval",
                format!(
                    "{interval:?} must be greater than zero and shorter than the lock's validity ({span:?} for ttl {:?})",
                    self.ttl
                ),
            ));
        }
        if let Some(retry) = &self.retry {
            retry.validate()?;
            match self.wait {
                Wait::For(d) if d.is_zero() && !retry.is_once() => {
                    return Err(Error::invalid_options(
                        "retry",
                        "a zero wait means one attempt; it cannot be combined with retries",
                    ));
                }
                Wait::Forever if retry.retries_cap().is_some() => {
                    return Err(Error::invalid_options(
                        "retry",
                        "wait_forever cannot be combined with a cap on retries; use wait(duration) or drop the cap",
                    ));
                }
                _ => {}
            }
        }
        if self
            .metadata
            .as_ref()
            .is_some_and(|m| m.len() > MAX_METADATA_BYTES)
        {
            return Err(Error::invalid_options(
                "metadata",
                format!("longer than {MAX_METADATA_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    /// Turns validated options into deadlines measured from `start`.
    pub(crate) fn plan(&self, start: Instant) -> WaitPlan {
        let waiting = || {
            self.retry
                .unwrap_or_else(|| RetryStrategy::linear(DEFAULT_WAIT_POLL))
        };
        match self.wait {
            Wait::For(d) if d.is_zero() => WaitPlan {
                deadline: None,
                queue_deadline: Some(start),
                retry: RetryStrategy::none(),
            },
            Wait::For(d) => WaitPlan {
                deadline: Some(start + d),
                queue_deadline: Some(start + d),
                retry: waiting(),
            },
            Wait::Forever => WaitPlan {
                deadline: None,
                queue_deadline: None,
                retry: waiting(),
            },
            Wait::RetryBudget => {
                let retry = self.retry.unwrap_or_default();
                WaitPlan {
                    deadline: None,
                    queue_deadline: retry.max_total_delay().map(|d| start + d),
                    retry,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn check(opts: ObtainOptions) -> Result<()> {
        opts.validate(&ValidityPolicy::default())
    }

    fn rejected_option(opts: ObtainOptions) -> &'static str {
        match check(opts) {
            Err(Error::InvalidOptions { option, .. }) => option,
            other => panic!("expected InvalidOptions, got {other:?}"),
        }
    }

    #[test]
    fn seed_defaults() {
        let o = ObtainOptions::default();
        assert_eq!(o.ttl_value(), Duration::from_secs(30));
        assert_eq!(o.refresh_interval_or_default(), Duration::from_secs(10));
        let plan = o.plan(Instant::now());
        assert_eq!(plan.retry, RetryStrategy::default());
        assert!(plan.deadline.is_none());
        assert!(check(o).is_ok());
    }

    #[test]
    fn bad_values_name_the_option() {
        assert_eq!(
            rejected_option(ObtainOptions::new().ttl(Duration::ZERO)),
            "ttl"
        );
        assert_eq!(
            rejected_option(ObtainOptions::new().ttl(MAX_TTL + MS)),
            "ttl"
        );
        assert_eq!(rejected_option(ObtainOptions::new().ttl(2 * MS)), "ttl");
        // 4 ms leaves 1.96 ms of validity, less than the expiry lead; 5 ms, 2.95.
        assert_eq!(rejected_option(ObtainOptions::new().ttl(4 * MS)), "ttl");
        let policy = ValidityPolicy::default();
        ObtainOptions::new()
            .ttl(5 * MS)
            .refresh_interval(MS)
            .validate(&policy)
            .unwrap();
        let ttl = Duration::from_secs(1);
        let o = ObtainOptions::new().ttl(ttl).refresh_interval(ttl);
        assert_eq!(rejected_option(o), "refresh_interval");
        let o = ObtainOptions::new().refresh_interval(Duration::ZERO);
        assert_eq!(rejected_option(o), "refresh_interval");
        let o = ObtainOptions::new()
            .wait(Duration::ZERO)
            .retry(RetryStrategy::linear(MS));
        assert_eq!(rejected_option(o), "retry");
        let o = ObtainOptions::new()
            .wait_forever()
            .retry(RetryStrategy::linear(MS).max_retries(2));
        assert_eq!(rejected_option(o), "retry");
        let o = ObtainOptions::new().metadata("m".repeat(MAX_METADATA_BYTES + 1));
        assert_eq!(rejected_option(o), "metadata");
    }

    #[test]
    fn wait_modes_plan_deadlines() {
        let now = Instant::now();
        let once = ObtainOptions::new().try_once().plan(now);
        assert!(once.retry.is_once() && once.deadline.is_none());
        let wait = ObtainOptions::new().wait(50 * MS).plan(now);
        assert_eq!(wait.deadline, Some(now + 50 * MS));
        assert_eq!(wait.retry.retries_cap(), None);
        let forever = ObtainOptions::new().wait_forever().plan(now);
        assert!(forever.deadline.is_none() && forever.queue_deadline.is_none());
        let budget = ObtainOptions::new().plan(now);
        assert_eq!(budget.queue_deadline, Some(now + Duration::from_secs(1)));
    }
}
