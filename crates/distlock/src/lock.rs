//! A held lock: the front type over one engine record ([`Held`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::engine::{Held, LostReason, Registration};
use crate::error::{Error, Result};
use crate::lease::Share;
#[cfg(doc)]
use crate::validity::EXPIRY_LEAD;

/// A span for one operation on a held lock; `outcome` is recorded at the end.
macro_rules! lock_span {
    ($name:literal, $held:expr) => {
        tracing::debug_span!(
            $name,
            key = %$held.lease.key.key,
            backend = $held.engine.backend.name(),
            fencing_token = $held.fencing_token,
            outcome = tracing::field::Empty,
        )
    };
}

/// A held lock. Ownership is this handle (its owner token), not a thread
/// or task.
///
/// # Dropping without release
///
/// Dropping a `Lock` stops its refreshers and, when a tokio runtime is
/// available, releases it in the background (best effort: if that fails,
/// or there is no runtime, the store expires it after its TTL). Call
/// [`release`](Self::release) to know the outcome.
///
/// # Validity
///
/// [`valid_until`](Self::valid_until) is the instant until which the lock
/// is safe to rely on, counted from when the acquire or last successful
/// extend was *sent*. At it (up to [`EXPIRY_LEAD`] early, so that it is
/// not late), or once the store proves the lock gone, [`lost`](Self::lost)
/// resolves. Pass [`fencing_token`](Self::fencing_token)
/// to every resource the lock protects: it is the only defence against a
/// holder that paused past its deadline.
///
/// A store without TTL expiry ([`Capabilities::ttl_expiry`] false: the file
/// backend, whose OS lock lives exactly as long as its holder) cannot take
/// the lock away by time, so such a lock has no deadline: `valid_until` lies
/// about a century ahead, `lost` fires only when the store proves the lock
/// gone (say its lock file was deleted) or on release, and refreshing just
/// checks the lock is still ours.
///
/// [`Capabilities::ttl_expiry`]: crate::backend::Capabilities::ttl_expiry
pub struct Lock {
    held: Arc<Held>,
    settled: bool,
}

impl Lock {
    pub(crate) fn new(held: Arc<Held>) -> Self {
        Lock {
            held,
            settled: false,
        }
    }

    /// The key, as given to obtain.
    pub fn key(&self) -> &str {
        self.held.lease.key.key.as_str()
    }

    /// The lease's mode: [`Share::Exclusive`] for a lock or write lock, a
    /// permit of the semaphore's limit, or [`Share::READERS`] for a read
    /// lock.
    pub fn share(&self) -> Share {
        self.held.lease.share
    }

    /// The fencing token of this grant: strictly greater than every token
    /// granted for this key before it.
    pub fn fencing_token(&self) -> u64 {
        self.held.fencing_token
    }

    /// The TTL the lock was obtained with.
    pub fn ttl(&self) -> Duration {
        self.held.ttl
    }

    /// The metadata attached at obtain.
    pub fn metadata(&self) -> Option<&str> {
        self.held.metadata.as_deref()
    }

    /// Until when the lock is safe to rely on (see the type's docs).
    pub fn valid_until(&self) -> Instant {
        self.held.valid_until()
    }

    /// True once the lock no longer protects anything: the store said it is
    /// gone, the validity deadline came (to within [`EXPIRY_LEAD`]) without
    /// a successful refresh, or it ended with [`LostReason::Closed`] (its
    /// locker, or the backend under it, was closed). Check it, or
    /// [`lost`](Self::lost), before every write the lock guards.
    pub fn is_lost(&self) -> bool {
        self.held.check_valid().is_err()
    }

    /// Resolves when the lock ends: lost (the store proved it gone, or the
    /// validity deadline came without a refresh: its timer is armed
    /// [`EXPIRY_LEAD`] early, so it is not late on an idle runtime),
    /// released, or closed. `'static`, so it can be moved into a
    /// task or a `select!`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> distlock::Result<()> {
    /// use std::time::Duration;
    /// use distlock::{Locker, ObtainOptions, LostReason};
    ///
    /// let locker = Locker::memory();
    /// let lock = locker.obtain_with("job", ObtainOptions::new().ttl(Duration::from_millis(50))).await?;
    /// tokio::select! {
    ///     reason = lock.lost() => assert_eq!(reason, LostReason::Expired),
    ///     _ = tokio::time::sleep(Duration::from_secs(5)) => unreachable!("never refreshed"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let held = self.held.clone();
        async move {
            loop {
                let changed = held.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(reason) = held.ended_with() {
                    return reason;
                }
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(held.expires_at()) => {
                        held.end(LostReason::Expired);
                    }
                }
            }
        }
    }

    /// Extends the lock by its TTL, retrying transient store errors within
    /// the validity deadline. [`Error::NotHeld`] (and [`lost`](Self::lost)
    /// fires) when the lock expired or belongs to someone else now.
    pub async fn refresh(&self) -> Result<()> {
        let span = lock_span!("distlock.refresh", self.held);
        let result = self
            .held
            .extend(true, |_| {})
            .instrument(span.clone())
            .await;
        record_outcome(&span, &result);
        result
    }

    /// Keeps the lock refreshed every refresh interval (default TTL/3)
    /// until stopped, released or lost. The locker's one refresher task
    /// does it, for all its locks at once, batching the extends of the
    /// locks due at about the same time.
    ///
    /// A transient failure is retried soon (every quarter interval) until
    /// the validity deadline; each failure is passed to `on_error`, and so
    /// is the final [`Error::NotHeld`] when the lock is lost (before
    /// [`lost`](Self::lost) fires, when the store reported it). Stopping
    /// never reports an error. `on_error` runs on the refresher's task:
    /// keep it short. Needs a tokio runtime.
    pub fn start_refresh<F>(&self, on_error: F) -> RefreshHandle
    where
        F: FnMut(&Error) + Send + 'static,
    {
        let span = lock_span!("distlock.refresher", self.held);
        let _entered = span.enter();
        RefreshHandle {
            registration: self
                .held
                .engine
                .refresh(self.held.clone(), Box::new(on_error)),
        }
    }

    /// Releases the lock. [`Error::NotHeld`] if it had already expired,
    /// been lost or taken over (the store is still told to delete it if it
    /// is still ours); transient errors leave it to expire after its TTL.
    pub async fn release(mut self) -> Result<()> {
        self.settled = true;
        let span = lock_span!("distlock.release", self.held);
        let result = self.release_inner().instrument(span.clone()).await;
        record_outcome(&span, &result);
        result
    }

    async fn release_inner(&self) -> Result<()> {
        let held = &self.held;
        held.let_go();
        let was_valid = held.check_valid();
        if let Err(Error::Closed) = was_valid {
            return Err(Error::Closed);
        }
        let (result, maybe_ran) = held.engine.release(&held.lease).await;
        held.end(LostReason::Released);
        match result {
            // An earlier attempt whose reply was lost most likely deleted it.
            Err(e) if e.is_not_held() && maybe_ran && was_valid.is_ok() => Ok(()),
            Ok(()) => was_valid,
            Err(e) => Err(e),
        }
    }
}

fn record_outcome(span: &tracing::Span, result: &Result<()>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(e) if e.is_not_held() => "not_held",
        Err(_) => "error",
    };
    span.record("outcome", outcome);
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let held = &self.held;
        held.let_go();
        if held.ended_with() != Some(LostReason::Closed) && !held.engine.is_closed() {
            held.engine.release_in_background(held.lease.clone());
        }
        held.end(LostReason::Released);
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &self.key())
            .field("fencing_token", &self.fencing_token())
            .field("valid_until", &self.valid_until())
            .field("ended", &self.held.ended_with())
            .finish_non_exhaustive()
    }
}

/// Stops a refresher started by [`Lock::start_refresh`]; dropping it stops
/// the refresher too.
pub struct RefreshHandle {
    registration: Arc<Registration>,
}

impl RefreshHandle {
    /// Stops refreshing. When it returns, `on_error` is not running and will
    /// not be called again. Idempotent; never reports an error caused by
    /// stopping.
    ///
    /// An extend already sent may still be answered after this returns,
    /// and then moves [`Lock::valid_until`] later: the store did extend the
    /// lease. So a lock's validity after `stop` is at most one TTL past
    /// the moment `stop` was called.
    ///
    /// # Cancel safety
    ///
    /// Refreshing has stopped once this is first polled; dropping the
    /// future early only skips waiting for an `on_error` call in progress.
    pub async fn stop(&self) {
        self.registration.stop();
    }

    /// True until the refresher has ended (stopped, released or lost).
    pub fn is_running(&self) -> bool {
        self.registration.is_running()
    }
}

impl fmt::Debug for RefreshHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshHandle")
            .field("running", &self.is_running())
            .finish()
    }
}

impl Drop for RefreshHandle {
    fn drop(&mut self) {
        self.registration.cancel();
    }
}
