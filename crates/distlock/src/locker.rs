//! The engine's entry point: obtain, inspect and close.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backend::memory::MemoryBackend;
use crate::backend::{AcquireRequest, Attempt, Backend};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::{IntoKey, LockKey, Namespace};
use crate::lease::{LeaseRef, OwnerToken};
#[cfg(doc)]
use crate::lock::LostReason;
use crate::lock::{Lock, LockState};
use crate::options::ObtainOptions;
use crate::queue::WaitQueues;
use crate::url::backend_from_url;
use crate::validity::ValidityPolicy;

/// How far ahead the validity deadline of a lock in a store without TTL
/// expiry lies: "never", in a form `Instant` arithmetic cannot overflow.
const NO_EXPIRY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The default bound on one store round trip.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Obtains and inspects locks in one store. Cheap to clone; clones share
/// the store connection, the namespace and the local wait queues.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> distlock::Result<()> {
/// use distlock::Locker;
///
/// let locker = Locker::from_url("memory://").await?;
/// let lock = locker.obtain("reports/daily").await?;
/// assert!(locker.try_obtain("reports/daily").await.unwrap_err().is_not_obtained());
/// println!("fencing token {}", lock.fencing_token());
/// lock.release().await?;
/// locker.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Locker {
    inner: Arc<LockerInner>,
}

pub(crate) struct LockerInner {
    pub(crate) backend: Arc<dyn Backend>,
    /// Whether this locker made its backend (and closes it on close).
    owns_backend: bool,
    /// The backend's `capabilities().ttl_expiry`, read once at build.
    ttl_expiry: bool,
    /// The backend's `capabilities().queues_waiters`, read once at build.
    queues_waiters: bool,
    namespace: Namespace,
    op_timeout: Duration,
    pub(crate) validity: ValidityPolicy,
    defaults: ObtainOptions,
    closed: CancellationToken,
    pub(crate) queues: WaitQueues,
    held: Mutex<HashMap<u64, Weak<LockState>>>,
    next_lock_id: AtomicU64,
    /// Background releases in flight, which `close` waits for.
    background: TaskTracker,
}

/// Builds a [`Locker`] over any backend.
#[derive(Debug)]
#[must_use]
pub struct LockerBuilder {
    backend: Arc<dyn Backend>,
    owns_backend: bool,
    namespace: Option<String>,
    op_timeout: Duration,
    validity: ValidityPolicy,
    defaults: ObtainOptions,
}

impl LockerBuilder {
    /// Separates this application's locks from others in the same store
    /// (default `distlock`). See [`Namespace`] for the alphabet.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Bounds every store round trip (default 5 s); a caller's deadline
    /// bounds it further.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The clock-drift allowance and safety margin of validity deadlines.
    pub fn validity(mut self, policy: ValidityPolicy) -> Self {
        self.validity = policy;
        self
    }

    /// Makes the locker the backend's owner: [`Locker::close`] then closes
    /// the backend too. Only for a backend no other locker uses; by default
    /// a backend given to [`Locker::builder`] stays open, as it may.
    pub fn owns_backend(mut self) -> Self {
        self.owns_backend = true;
        self
    }

    /// The options [`Locker::obtain`] and [`Locker::try_obtain`] use.
    pub fn defaults(mut self, defaults: ObtainOptions) -> Self {
        self.defaults = defaults;
        self
    }

    /// Validates everything and builds the locker.
    pub fn build(self) -> Result<Locker> {
        let namespace = match self.namespace {
            Some(ns) => Namespace::new(ns)?,
            None => Namespace::default(),
        };
        if self.op_timeout.is_zero() {
            return Err(Error::invalid_options(
                "op_timeout",
                "must be greater than zero",
            ));
        }
        self.defaults.validate(&self.validity)?;
        let capabilities = self.backend.capabilities();
        Ok(Locker {
            inner: Arc::new(LockerInner {
                ttl_expiry: capabilities.ttl_expiry,
                queues_waiters: capabilities.queues_waiters,
                backend: self.backend,
                owns_backend: self.owns_backend,
                namespace,
                op_timeout: self.op_timeout,
                validity: self.validity,
                defaults: self.defaults,
                closed: CancellationToken::new(),
                queues: WaitQueues::default(),
                held: Mutex::new(HashMap::new()),
                next_lock_id: AtomicU64::new(0),
                background: TaskTracker::new(),
            }),
        })
    }
}

impl Locker {
    /// A builder over `backend`, which stays the caller's: any number of
    /// lockers may share it (one connection, one set of leases), and
    /// [`close`](Self::close) releases only what its own locker holds and
    /// leaves the backend open. Close the backend itself
    /// ([`Backend::close`]) once the last locker over it is done, or make a
    /// locker its sole owner with [`LockerBuilder::owns_backend`].
    pub fn builder(backend: Arc<dyn Backend>) -> LockerBuilder {
        LockerBuilder {
            backend,
            owns_backend: false,
            namespace: None,
            op_timeout: DEFAULT_OP_TIMEOUT,
            validity: ValidityPolicy::default(),
            defaults: ObtainOptions::default(),
        }
    }

    /// A locker over a fresh in-process memory store, with default options.
    pub fn memory() -> Locker {
        Locker::builder(Arc::new(MemoryBackend::new()))
            .owns_backend()
            .build()
            .expect("the default options are valid")
    }

    /// A locker for the store a URL names:
    ///
    /// * `memory://` — a fresh in-process store.
    /// * `file:///dir` — `flock`s on files in a local directory, shared by
    ///   the processes of one host (cargo feature `file`, on by default;
    ///   see [`FileBackend`](crate::backend::file::FileBackend)).
    /// * `redis://[user:password@]host:port/db` and `rediss://...` (TLS) —
    ///   one Redis server (cargo feature `redis`; see
    ///   `distlock::backend::redis`).
    /// * `etcd://[user[:password]@]host[:port][,host[:port]...]` — etcd
    ///   (cargo feature `etcd`), failing over between the endpoints (port
    ///   2379 by default); `etcds://` connects with TLS, trusting the
    ///   system's root certificates. Percent-escape `@`, `:` and `/` in the
    ///   user info. For other options see `backend::etcd::EtcdBackend`.
    ///
    /// Every URL takes `?namespace=NAME`. `redis://`, `rediss://`,
    /// `etcd://` and `file://` belong to backends behind cargo features;
    /// a backend that is not compiled in is an [`Error::InvalidUrl`] naming
    /// the feature to enable.
    ///
    /// The locker owns the backend it connects: [`close`](Self::close)
    /// closes it too.
    pub async fn from_url(url: &str) -> Result<Locker> {
        let (backend, namespace) = backend_from_url(url).await?;
        let builder = Locker::builder(backend).owns_backend();
        match namespace {
            Some(ns) => builder.namespace(ns),
            None => builder,
        }
        .build()
    }

    /// The backend's name (`memory`, `redis`, ...).
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The backend this locker drives, for its primitives (tests, tools).
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.inner.backend.clone()
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// The options [`obtain`](Self::obtain) uses.
    pub fn defaults(&self) -> &ObtainOptions {
        &self.inner.defaults
    }

    /// Obtains `key` with the locker's default options (the seed's: TTL 30 s,
    /// up to 10 retries 100 ms apart).
    pub async fn obtain(&self, key: impl IntoKey) -> Result<Lock> {
        self.obtain_with(key, self.inner.defaults.clone()).await
    }

    /// One attempt: [`Error::NotObtained`] at once if `key` is held.
    pub async fn try_obtain(&self, key: impl IntoKey) -> Result<Lock> {
        self.obtain_with(key, self.inner.defaults.clone().try_once())
            .await
    }

    /// Obtains `key` with `options`.
    ///
    /// Cancel-safe: dropping the returned future at any point leaves nothing
    /// held in the store (an attempt in flight is released in the
    /// background) and no task running.
    pub async fn obtain_with(&self, key: impl IntoKey, options: ObtainOptions) -> Result<Lock> {
        let key = self.lock_key(key)?;
        options.validate(&self.inner.validity)?;
        self.ensure_open()?;
        let span = tracing::debug_span!(
            "distlock.obtain",
            key = %key.key,
            backend = self.inner.backend.name(),
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
            waited_ms = tracing::field::Empty,
        );
        let start = Instant::now();
        let result = self
            .obtain_inner(key, &options, start)
            .instrument(span.clone())
            .await;
        let (outcome, attempts) = match &result {
            Ok((_, attempts)) => ("obtained", *attempts),
            Err((e, attempts)) if e.is_not_obtained() => ("not_obtained", *attempts),
            Err((_, attempts)) => ("error", *attempts),
        };
        span.record("outcome", outcome);
        span.record("attempts", attempts);
        span.record("waited_ms", start.elapsed().as_secs_f64() * 1e3);
        result.map(|(lock, _)| lock).map_err(|(e, _)| e)
    }

    async fn obtain_inner(
        &self,
        key: LockKey,
        options: &ObtainOptions,
        start: Instant,
    ) -> Result<(Lock, u32), (Error, u32)> {
        let inner = &self.inner;
        let plan = options.plan(start);
        let owner = OwnerToken::random().map_err(|e| (e, 0))?;
        let req = AcquireRequest {
            metadata: options.metadata_value().map(Arc::from),
            will_wait: !plan.retry.is_once(),
            ..AcquireRequest::new(key, owner, options.ttl_value())
        };
        // A store that queues waiters keeps our entry after a contended
        // attempt: `pending` then stays armed, so giving up removes it.
        let queued_after_contention = req.will_wait && inner.queues_waiters;
        let place = inner.queues.join(&req.key);
        let turn = tokio::select! {
            biased;
            _ = inner.closed.cancelled() => return Err((Error::Closed, 0)),
            turn = place.turn(plan.queue_deadline) => turn,
        };
        let Some(turn) = turn else {
            return Err((self.not_obtained(&req.key, start, 0, None), 0));
        };
        let mut pending = PendingGrant::new(inner.clone(), req.lease());
        let mut attempts = 0;
        let mut holder = None;
        let mut outcome_unknown = false;
        // What the last attempt that came back said: `None` for "held by
        // someone else", else the store's error. An attempt cut short by the
        // deadline says nothing, so a store that failed before is reported
        // as failing, not hidden behind `NotObtained`; `unanswered` is kept
        // for a wait in which no attempt came back at all.
        let mut last_answer: Option<Option<Error>> = None;
        let mut unanswered = None;
        loop {
            attempts += 1;
            let sent = Instant::now();
            pending.armed = true;
            let (result, cut_by_deadline) = inner
                .call_by("acquire", plan.deadline, inner.backend.try_acquire(&req))
                .await;
            let answered = !(cut_by_deadline && matches!(&result, Err(e) if e.is_transient()));
            let answer = match result {
                // close() released what it knew of; this late grant is ours to undo.
                Ok(Attempt::Granted { .. }) if inner.closed.is_cancelled() => {
                    return Err((Error::Closed, attempts));
                }
                // The grant came back after its own validity deadline (the
                // store or the network stalled longer than the TTL allows):
                // the store may have expired it and granted the key to someone
                // else already, so it is never handed out. `pending` stays
                // armed (a token-checked release if we give up), and the same
                // owner token makes the next attempt re-grant with a fresh
                // deadline.
                Ok(Attempt::Granted { .. })
                    if inner.validity_deadline(sent, options.ttl_value()) <= Instant::now() =>
                {
                    outcome_unknown = true;
                    Some(Error::Timeout {
                        op: "acquire",
                        after: sent.elapsed(),
                    })
                }
                Ok(Attempt::Granted { fencing_token }) => {
                    // `pending` stays armed if close() came first: the grant
                    // is then released, never handed out.
                    let lock = self
                        .grant(&req, options, fencing_token, sent)
                        .map_err(|e| (e, attempts))?;
                    pending.armed = false;
                    return Ok((lock, attempts));
                }
                Ok(Attempt::Contended { holder: h }) => {
                    // An earlier attempt with an unknown outcome may still land
                    // late, and a store that queues waiters keeps our entry:
                    // keep the token-checked release armed for both.
                    pending.armed = outcome_unknown || queued_after_contention;
                    holder = h;
                    None
                }
                // Outcome unknown: the same owner token makes a later attempt
                // idempotent, and `pending` releases it if we give up.
                Err(e) if e.is_transient() => {
                    outcome_unknown = true;
                    Some(e)
                }
                Err(e) => return Err((e, attempts)),
            };
            if answered {
                last_answer = Some(answer);
            } else {
                unanswered = answer;
            }
            let now = Instant::now();
            let wake_at = match (plan.retry.delay(attempts), plan.deadline) {
                (None, _) => None,
                (Some(_), Some(deadline)) if now >= deadline => None,
                (Some(delay), deadline) => {
                    let expiry = holder.as_ref().and_then(|h: &HolderInfo| h.expires_in);
                    Some(
                        [Some(now + delay), deadline, expiry.map(|left| now + left)]
                            .into_iter()
                            .flatten()
                            .min()
                            .unwrap_or(now),
                    )
                }
            };
            let Some(wake_at) = wake_at else {
                let err = match last_answer {
                    Some(Some(e)) => e,
                    Some(None) => self.not_obtained(&req.key, start, attempts, holder),
                    None => unanswered
                        .unwrap_or_else(|| self.not_obtained(&req.key, start, attempts, holder)),
                };
                return Err((err, attempts));
            };
            tokio::select! {
                biased;
                _ = inner.closed.cancelled() => return Err((Error::Closed, attempts)),
                _ = turn.local_release() => {}
                _ = inner.backend.wait(&req, wake_at) => {}
                // The backend's wait is a hint; the engine's bound is authoritative.
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// The granted lock, registered with the locker: [`Error::Closed`]
    /// instead when `close` got there first. The check and the insertion
    /// happen under the lock `close` cancels and drains under, so every
    /// lock handed out is one that `close` sees.
    fn grant(
        &self,
        req: &AcquireRequest,
        options: &ObtainOptions,
        fencing_token: u64,
        sent: Instant,
    ) -> Result<Lock> {
        let inner = &self.inner;
        let id = inner.next_lock_id.fetch_add(1, Ordering::Relaxed);
        let state = LockState::new(
            inner.clone(),
            id,
            req.lease(),
            fencing_token,
            options,
            inner.validity_deadline(sent, options.ttl_value()),
        );
        let mut held = inner.held();
        if inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        held.insert(id, Arc::downgrade(&state));
        drop(held);
        Ok(Lock::new(state))
    }

    fn not_obtained(
        &self,
        key: &LockKey,
        start: Instant,
        attempts: u32,
        holder: Option<HolderInfo>,
    ) -> Error {
        Error::NotObtained {
            key: key.key.to_string(),
            waited: start.elapsed(),
            attempts,
            holder: holder.map(Box::new),
        }
    }

    /// Whether `key` is held by anyone. Read-only: never takes the lock.
    pub async fn is_locked(&self, key: impl IntoKey) -> Result<bool> {
        Ok(self.inspect(key).await?.is_some())
    }

    /// The holder of `key`, if any: fencing token, time left, metadata.
    /// Read-only: never takes the lock.
    pub async fn inspect(&self, key: impl IntoKey) -> Result<Option<HolderInfo>> {
        let key = self.lock_key(key)?;
        self.ensure_open()?;
        let inner = &self.inner;
        inner
            .call_idempotent("inspect", None, || inner.backend.inspect(&key))
            .await
    }

    /// Closes the locker: every lock still held through it is released
    /// (its [`Lock::lost`] resolves with [`LostReason::Closed`]), the
    /// background releases still in flight (of dropped [`Lock`]s, and of
    /// obtains that gave up or were dropped, which may have left an entry in
    /// a store's queue of waiters) are waited for, then the store connection
    /// is closed if this locker made it ([`from_url`](Self::from_url),
    /// [`memory`](Self::memory)); a backend given to
    /// [`builder`](Self::builder) may serve other lockers and stays open.
    /// Later calls fail with [`Error::Closed`]. Idempotent; each step is
    /// bounded by the operation timeout.
    ///
    /// A program that exits right after an `obtain` failed, timed out or
    /// was interrupted should call `close` before it returns from `main`:
    /// otherwise the background release may never run, and the store keeps
    /// the abandoned queue entry (or a grant whose reply came too late)
    /// until its lease runs out.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> distlock::Result<()> {
    /// use std::time::Duration;
    /// use distlock::{Locker, ObtainOptions};
    ///
    /// let locker = Locker::from_url("memory://").await?;
    /// let _held = locker.obtain("nightly").await?;
    /// let waited = locker
    ///     .obtain_with("nightly", ObtainOptions::new().wait(Duration::from_millis(10)))
    ///     .await;
    /// assert!(waited.unwrap_err().is_not_obtained());
    /// locker.close().await?; // the waiter's queue entry is gone when this returns
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The store's error from closing its connection, or
    /// [`Error::Timeout`] when that took longer than the operation timeout.
    pub async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.is_cancelled() {
            return Ok(());
        }
        let held: Vec<_> = {
            // Cancelled under the lock that grant() checks it under.
            let mut held = inner.held();
            inner.closed.cancel();
            held.drain()
                .filter_map(|(_, state)| state.upgrade())
                .collect()
        };
        futures::future::join_all(held.iter().map(|state| state.close())).await;
        // Each background release is itself bounded by the operation
        // timeout; this bound only covers a runtime too busy to run them.
        inner.background.close();
        if tokio::time::timeout(inner.op_timeout, inner.background.wait())
            .await
            .is_err()
        {
            tracing::debug!("close: background releases still running after the operation timeout");
        }
        if !inner.owns_backend {
            return Ok(());
        }
        let (result, _) = inner.call_by("close", None, inner.backend.close()).await;
        result
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    fn lock_key(&self, key: impl IntoKey) -> Result<LockKey> {
        Ok(LockKey {
            namespace: self.inner.namespace.clone(),
            key: key.into_key()?,
        })
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", &self.inner.backend)
            .field("namespace", &self.inner.namespace)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl LockerInner {
    pub(crate) fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<LockState>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// The validity deadline of a grant or extend of `ttl` sent at `sent`.
    ///
    /// A store without TTL expiry (a file lock lives exactly as long as its
    /// holder keeps it) never takes the lock away by time, so its locks have
    /// no deadline: they stay valid until the store proves them gone
    /// ([`LostReason::NotHeld`]), and `lost()` never fires by the clock.
    pub(crate) fn validity_deadline(&self, sent: Instant, ttl: Duration) -> Instant {
        if self.ttl_expiry {
            self.validity.deadline(sent, ttl)
        } else {
            sent + NO_EXPIRY
        }
    }

    /// How long an idempotent extend may keep retrying transient errors:
    /// until the validity deadline, or one operation timeout for locks that
    /// have none.
    pub(crate) fn extend_retry_deadline(&self, valid_until: Instant) -> Instant {
        if self.ttl_expiry {
            valid_until
        } else {
            valid_until.min(Instant::now() + self.op_timeout)
        }
    }

    /// Runs one store call bounded by the operation timeout and `deadline`.
    /// The flag says whether a timeout came from the deadline rather than
    /// from the store being slower than the operation timeout.
    pub(crate) async fn call_by<T>(
        &self,
        op: &'static str,
        deadline: Option<Instant>,
        call: impl Future<Output = Result<T>>,
    ) -> (Result<T>, bool) {
        let now = Instant::now();
        let by_deadline = deadline.is_some_and(|d| d < now + self.op_timeout);
        let bound = match deadline {
            Some(d) if by_deadline => d.saturating_duration_since(now),
            _ => self.op_timeout,
        };
        match tokio::time::timeout(bound, call).await {
            Ok(result) => (result, false),
            Err(_) => (Err(Error::Timeout { op, after: bound }), by_deadline),
        }
    }

    /// Runs an idempotent store call, retrying transient failures with a
    /// short back-off while `deadline` (default: one operation timeout) allows.
    pub(crate) async fn call_idempotent<T, F>(
        &self,
        op: &'static str,
        deadline: Option<Instant>,
        mut call: impl FnMut() -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.op_timeout);
        let mut pause = Duration::from_millis(5);
        loop {
            let (result, _) = self.call_by(op, Some(deadline), call()).await;
            match result {
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(op, error = %e, "retrying a transient store error");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// Best-effort background release, for handles dropped without release.
    pub(crate) fn release_in_background(self: &Arc<Self>, lease: LeaseRef) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the store expires the lock after its TTL.
        };
        let inner = self.clone();
        self.background.spawn_on(async move {
            let result = inner
                .call_idempotent("release", None, || inner.backend.release(&lease))
                .await;
            inner.queues.released(&lease.key);
            if let Err(e) = result
                && !e.is_not_held()
            {
                tracing::debug!(key = %lease.key.key, error = %e, "background release failed; the lock expires after its TTL");
            }
        }, &runtime);
    }
}

/// Releases an acquisition whose outcome is unknown (a timed-out attempt, or
/// an obtain future dropped mid-attempt), or a queue entry a contended
/// attempt left in a store that queues waiters, unless it turned into a
/// [`Lock`].
struct PendingGrant {
    inner: Arc<LockerInner>,
    lease: LeaseRef,
    armed: bool,
}

impl PendingGrant {
    fn new(inner: Arc<LockerInner>, lease: LeaseRef) -> Self {
        PendingGrant {
            inner,
            lease,
            armed: false,
        }
    }
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        if self.armed {
            self.inner.release_in_background(self.lease.clone());
        }
    }
}
