//! A held lock: its fencing token, validity deadline, refresh and loss.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::lease::LeaseRef;
use crate::locker::LockerInner;
use crate::options::ObtainOptions;

/// A span for one operation on a held lock; `outcome` is recorded at the end.
macro_rules! lock_span {
    ($name:literal, $state:expr) => {
        tracing::debug_span!(
            $name,
            key = %$state.lease.key.key,
            backend = $state.locker.backend.name(),
            fencing_token = $state.fencing_token,
            outcome = tracing::field::Empty,
        )
    };
}

/// Why a lock ended; what [`Lock::lost`] resolves with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The validity deadline passed without a successful refresh.
    Expired,
    /// The store said the lock no longer belongs to this owner.
    NotHeld,
    /// The lock was released (or its handle dropped); nothing was lost.
    Released,
    /// The locker was closed, which released the lock; or the backend was
    /// closed under it (by whoever else uses it), so it can no longer be
    /// refreshed.
    Closed,
}

impl LostReason {
    /// True when the lock ended without its holder letting go of it.
    pub fn is_loss(self) -> bool {
        matches!(self, LostReason::Expired | LostReason::NotHeld)
    }
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
    state: Arc<LockState>,
    settled: bool,
}

pub(crate) struct LockState {
    locker: Arc<LockerInner>,
    id: u64,
    lease: LeaseRef,
    fencing_token: u64,
    ttl: Duration,
    refresh_interval: Duration,
    metadata: Option<String>,
    status: Mutex<Status>,
    /// Signalled when the validity deadline moves or the lock ends.
    changed: Notify,
    /// Cancelled once the lock has ended, for whatever reason.
    ended: CancellationToken,
    /// Cancelled when the holder lets go: refreshers then stop quietly.
    done: CancellationToken,
}

struct Status {
    valid_until: Instant,
    ended: Option<LostReason>,
}

/// How long before its validity deadline a lock counts as expired, so that
/// [`Lock::lost`] fires at the deadline rather than after it: tokio rounds
/// a timer's deadline up to its next millisecond tick, and the wait for
/// that tick up to a whole millisecond again, so a timer armed at the
/// deadline fires up to about 2 ms late (measured: 1.1–2.0 ms). Armed
/// this much earlier, `lost()` fires between 2 ms before the deadline and
/// the deadline, give or take the time a busy runtime takes to wake.
pub const EXPIRY_LEAD: Duration = Duration::from_millis(2);

/// When a lock valid until `valid_until` counts as expired (see
/// [`LockState::expires_at`]).
fn expiry(valid_until: Instant) -> Instant {
    valid_until.checked_sub(EXPIRY_LEAD).unwrap_or(valid_until)
}

impl LockState {
    pub(crate) fn new(
        locker: Arc<LockerInner>,
        id: u64,
        lease: LeaseRef,
        fencing_token: u64,
        options: &ObtainOptions,
        valid_until: Instant,
    ) -> Arc<Self> {
        Arc::new(LockState {
            locker,
            id,
            lease,
            fencing_token,
            ttl: options.ttl_value(),
            refresh_interval: options.refresh_interval_or_default(),
            metadata: options.metadata_value().map(str::to_owned),
            status: Mutex::new(Status {
                valid_until,
                ended: None,
            }),
            changed: Notify::new(),
            ended: CancellationToken::new(),
            done: CancellationToken::new(),
        })
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        // Status updates are single assignments: a poisoned lock is consistent.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn valid_until(&self) -> Instant {
        self.status().valid_until
    }

    /// When the lock counts as expired: [`EXPIRY_LEAD`] before its validity
    /// deadline.
    fn expires_at(&self) -> Instant {
        expiry(self.valid_until())
    }

    fn ended(&self) -> Option<LostReason> {
        self.status().ended
    }

    /// Ends the lock once; `Expired` only if the deadline really passed.
    /// Returns whether this call ended it.
    fn end(&self, reason: LostReason) -> bool {
        {
            let mut status = self.status();
            if status.ended.is_some()
                || (reason == LostReason::Expired && Instant::now() < expiry(status.valid_until))
            {
                return false;
            }
            status.ended = Some(reason);
        }
        self.ended.cancel();
        self.changed.notify_waiters();
        if reason.is_loss() {
            tracing::warn!(
                key = %self.lease.key.key,
                backend = self.locker.backend.name(),
                fencing_token = self.fencing_token,
                ?reason,
                "distlock: lock lost"
            );
        }
        true
    }

    /// Ok while the lock is ours and within its validity deadline.
    fn check_valid(&self) -> Result<()> {
        if Instant::now() >= self.expires_at() {
            self.end(LostReason::Expired);
        }
        match self.ended() {
            None => Ok(()),
            Some(LostReason::Closed) => Err(Error::Closed),
            Some(_) => Err(self.not_held()),
        }
    }

    fn not_held(&self) -> Error {
        Error::NotHeld {
            key: self.lease.key.key.to_string(),
        }
    }

    /// One extend (retried on transient errors when `retry`), bounded by the
    /// validity deadline; moves the deadline on success, ends the lock when
    /// the store says it is gone or the deadline passes. `before_loss` sees
    /// the store's NotHeld before the lock ends (so before `lost()` fires).
    async fn extend(&self, retry: bool, mut before_loss: impl FnMut(&Error)) -> Result<()> {
        self.check_valid()?;
        let locker = &self.locker;
        let deadline = locker.extend_retry_deadline(self.valid_until());
        let sent = Instant::now();
        let call = || locker.backend.extend(&self.lease, self.ttl);
        let result = if retry {
            locker.call_idempotent("extend", Some(deadline), call).await
        } else {
            locker.call_by("extend", Some(deadline), call()).await.0
        };
        match result {
            Ok(()) => {
                let mut status = self.status();
                if status.ended.is_some() {
                    drop(status);
                    return self.check_valid();
                }
                status.valid_until = status
                    .valid_until
                    .max(locker.validity_deadline(sent, self.ttl));
                drop(status);
                self.changed.notify_waiters();
                Ok(())
            }
            Err(e) if e.is_not_held() => {
                before_loss(&e);
                self.end(LostReason::NotHeld);
                Err(e)
            }
            // The backend was closed under the lock (by its owner, or by
            // whoever shares it): it can never be refreshed again, so it ends
            // now rather than at its validity deadline.
            Err(Error::Closed) => {
                self.end(LostReason::Closed);
                Err(Error::Closed)
            }
            Err(e) => {
                self.check_valid()?;
                Err(e)
            }
        }
    }

    /// Called by [`Locker::close`](crate::Locker::close).
    pub(crate) async fn close(&self) {
        self.done.cancel();
        // Ended before the release is sent: once the store may give the key
        // to someone else, the holder must already see its lock as gone.
        if self.end(LostReason::Closed) {
            let (result, _) = self
                .locker
                .call_by("release", None, self.locker.backend.release(&self.lease))
                .await;
            if let Err(e) = result {
                tracing::debug!(key = %self.lease.key.key, error = %e, "release on close failed; the lock expires after its TTL");
            }
        }
    }

    async fn refresh_loop(
        self: Arc<Self>,
        stop: CancellationToken,
        mut on_error: impl FnMut(&Error) + Send,
    ) {
        // After a failed extend, try again soon rather than a whole interval later.
        let retry_gap = (self.refresh_interval / 4).max(Duration::from_millis(1));
        let mut next = Instant::now() + self.refresh_interval;
        loop {
            let wake = next.min(self.expires_at());
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = self.done.cancelled() => return,
                _ = self.ended.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            // A loss the store reports reaches `on_error` before `lost()`
            // fires, so whoever wakes on `lost()` sees it reported.
            let mut reported = false;
            let report_loss = |e: &Error| {
                if !stop.is_cancelled() && !self.done.is_cancelled() {
                    on_error(e);
                    reported = true;
                }
            };
            // Boxed: the extend's state (timeouts, the store call) lives on
            // the heap only while an extend runs, so the task of an idle
            // refresher stays small (808 instead of 1064 bytes per lock,
            // measured by distlock-bench's held scenario); one allocation
            // per refresh interval.
            let result = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = self.done.cancelled() => return,
                result = Box::pin(self.extend(false, report_loss)) => result,
            };
            match result {
                Ok(()) => next = Instant::now() + self.refresh_interval,
                // A release or stop that raced with the extend is not an error.
                Err(_) if stop.is_cancelled() || self.done.is_cancelled() => return,
                Err(e) => {
                    if !reported {
                        on_error(&e);
                    }
                    if self.ended().is_some() {
                        return;
                    }
                    next = Instant::now() + retry_gap;
                }
            }
        }
    }
}

impl Lock {
    pub(crate) fn new(state: Arc<LockState>) -> Self {
        Lock {
            state,
            settled: false,
        }
    }

    /// The key, as given to obtain.
    pub fn key(&self) -> &str {
        self.state.lease.key.key.as_str()
    }

    /// The fencing token of this grant: strictly greater than every token
    /// granted for this key before it.
    pub fn fencing_token(&self) -> u64 {
        self.state.fencing_token
    }

    /// The TTL the lock was obtained with.
    pub fn ttl(&self) -> Duration {
        self.state.ttl
    }

    /// The metadata attached at obtain.
    pub fn metadata(&self) -> Option<&str> {
        self.state.metadata.as_deref()
    }

    /// Until when the lock is safe to rely on (see the type's docs).
    pub fn valid_until(&self) -> Instant {
        self.state.valid_until()
    }

    /// True once the lock no longer protects anything: the store said it is
    /// gone, the validity deadline came (to within [`EXPIRY_LEAD`]) without
    /// a successful refresh, or it ended with [`LostReason::Closed`] (its
    /// locker, or the backend under it, was closed). Check it, or
    /// [`lost`](Self::lost), before every write the lock guards.
    pub fn is_lost(&self) -> bool {
        self.state.check_valid().is_err()
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
        let state = self.state.clone();
        async move {
            loop {
                let changed = state.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(reason) = state.ended() {
                    return reason;
                }
                tokio::select! {
                    _ = state.ended.cancelled() => {}
                    _ = changed => {}
                    _ = tokio::time::sleep_until(state.expires_at()) => {
                        state.end(LostReason::Expired);
                    }
                }
            }
        }
    }

    /// Extends the lock by its TTL, retrying transient store errors within
    /// the validity deadline. [`Error::NotHeld`] (and [`lost`](Self::lost)
    /// fires) when the lock expired or belongs to someone else now.
    pub async fn refresh(&self) -> Result<()> {
        let span = lock_span!("distlock.refresh", self.state);
        let result = self
            .state
            .extend(true, |_| {})
            .instrument(span.clone())
            .await;
        record_outcome(&span, &result);
        result
    }

    /// Keeps the lock refreshed every refresh interval (default TTL/3) in a
    /// background task until stopped, released or lost.
    ///
    /// A transient failure is retried soon (every quarter interval) until
    /// the validity deadline; each failure is passed to `on_error`, and so
    /// is the final [`Error::NotHeld`] when the lock is lost. Stopping
    /// never reports an error. Needs a tokio runtime.
    pub fn start_refresh<F>(&self, on_error: F) -> RefreshHandle
    where
        F: FnMut(&Error) + Send + 'static,
    {
        let stop = CancellationToken::new();
        let span = lock_span!("distlock.refresher", self.state);
        let task = tokio::spawn(
            self.state
                .clone()
                .refresh_loop(stop.clone(), on_error)
                .instrument(span),
        );
        RefreshHandle {
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Releases the lock. [`Error::NotHeld`] if it had already expired,
    /// been lost or taken over (the store is still told to delete it if it
    /// is still ours); transient errors leave it to expire after its TTL.
    pub async fn release(mut self) -> Result<()> {
        self.settled = true;
        let span = lock_span!("distlock.release", self.state);
        let result = self.release_inner().instrument(span.clone()).await;
        record_outcome(&span, &result);
        result
    }

    async fn release_inner(&self) -> Result<()> {
        let state = &self.state;
        let locker = &state.locker;
        state.done.cancel();
        locker.held().remove(&state.id);
        let was_valid = state.check_valid();
        if let Err(Error::Closed) = was_valid {
            return Err(Error::Closed);
        }
        let mut attempts = 0u32;
        let result = locker
            .call_idempotent("release", None, || {
                attempts += 1;
                locker.backend.release(&state.lease)
            })
            .await;
        locker.queues.released(&state.lease.key);
        state.end(LostReason::Released);
        match result {
            // An earlier attempt whose reply was lost most likely deleted it.
            Err(e) if e.is_not_held() && attempts > 1 && was_valid.is_ok() => Ok(()),
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
        let state = &self.state;
        state.done.cancel();
        state.locker.held().remove(&state.id);
        if state.ended() != Some(LostReason::Closed) && !state.locker.is_closed() {
            state.locker.release_in_background(state.lease.clone());
        }
        state.end(LostReason::Released);
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &self.key())
            .field("fencing_token", &self.fencing_token())
            .field("valid_until", &self.valid_until())
            .field("ended", &self.state.ended())
            .finish_non_exhaustive()
    }
}

/// Stops a refresher started by [`Lock::start_refresh`]; dropping it stops
/// the refresher too.
#[derive(Debug)]
pub struct RefreshHandle {
    stop: CancellationToken,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl RefreshHandle {
    /// Stops refreshing and waits for the task to end. Idempotent; never
    /// reports an error caused by stopping.
    pub async fn stop(&self) {
        self.stop.cancel();
        let mut task = self.task.lock().await;
        if let Some(task) = task.take() {
            // The task only ends by returning; a panic in `on_error` is the
            // caller's and stays in the task.
            let _ = task.await;
        }
    }

    /// True until the refresher has ended (stopped, released or lost).
    pub fn is_running(&self) -> bool {
        self.task
            .try_lock()
            .map(|t| t.as_ref().is_some_and(|t| !t.is_finished()))
            .unwrap_or(true)
    }
}

impl Drop for RefreshHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
