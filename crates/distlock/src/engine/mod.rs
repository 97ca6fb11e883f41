//! The engine: every policy the front types share, once.
//!
//! Front types ([`Locker`](crate::Locker), [`Lock`](crate::Lock), and the
//! primitives still to come) hold an [`Engine`] and the [`Held`] records it
//! grants; backends only answer the primitives of the SPI. Here live the
//! bounds on every store call (the operation timeout and the caller's
//! deadline), retries of idempotent calls, the acquire loop with its local
//! queue and waits, validity deadlines, the held set that `close` drains,
//! background releases, and the one refresher per engine.
//!
//! Imports run one way: `locker` → `lock` → `engine` → `backend`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::holder::Holders;
use crate::key::{LockKey, Namespace};
use crate::lease::LeaseRef;
use crate::options::ObtainOptions;
use crate::validity::ValidityPolicy;

mod acquire;
mod held;
mod queue;
mod refresher;

pub(crate) use held::Held;
pub use held::LostReason;
pub(crate) use refresher::Registration;

use queue::WaitQueues;
use refresher::Refresher;

/// How far ahead the validity deadline of a lock in a store without TTL
/// expiry lies: "never", in a form `Instant` arithmetic cannot overflow.
const NO_EXPIRY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// What an engine is built from (checked by the builder of its front type).
pub(crate) struct Settings {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) owns_backend: bool,
    pub(crate) namespace: Namespace,
    pub(crate) op_timeout: Duration,
    pub(crate) validity: ValidityPolicy,
    pub(crate) defaults: ObtainOptions,
}

pub(crate) struct Engine {
    pub(crate) backend: Arc<dyn Backend>,
    /// Whether this engine's front made its backend (and closes it on close).
    owns_backend: bool,
    /// The backend's `capabilities().ttl_expiry`, read once at build.
    ttl_expiry: bool,
    /// The backend's `capabilities().queues_waiters`, read once at build.
    queues_waiters: bool,
    /// The backend's `capabilities().permits`, read once at build.
    permits: bool,
    pub(crate) namespace: Namespace,
    op_timeout: Duration,
    pub(crate) validity: ValidityPolicy,
    pub(crate) defaults: ObtainOptions,
    pub(crate) closed: CancellationToken,
    queues: WaitQueues,
    held: Mutex<HashMap<u64, Weak<Held>>>,
    next_id: AtomicU64,
    /// Background releases in flight, which `close` waits for.
    background: TaskTracker,
    refresher: Refresher,
}

impl Engine {
    pub(crate) fn new(settings: Settings) -> Arc<Engine> {
        let capabilities = settings.backend.capabilities();
        Arc::new(Engine {
            ttl_expiry: capabilities.ttl_expiry,
            queues_waiters: capabilities.queues_waiters,
            permits: capabilities.permits,
            backend: settings.backend,
            owns_backend: settings.owns_backend,
            namespace: settings.namespace,
            op_timeout: settings.op_timeout,
            validity: settings.validity,
            defaults: settings.defaults,
            closed: CancellationToken::new(),
            queues: WaitQueues::default(),
            held: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            background: TaskTracker::new(),
            refresher: Refresher::default(),
        })
    }

    fn held(&self) -> MutexGuard<'_, HashMap<u64, Weak<Held>>> {
        // Every update is a single insert or remove: a poisoned map is consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Refreshes `held` on this engine's refresher until the registration
    /// is stopped (see [`Refresher::register`]).
    pub(crate) fn refresh(
        &self,
        held: Arc<Held>,
        on_error: refresher::OnError,
    ) -> Arc<Registration> {
        self.refresher.register(held, on_error)
    }

    /// Every holder of `key`, read with the engine's retries.
    pub(crate) async fn holders(&self, key: &LockKey) -> Result<Holders> {
        self.ensure_open()?;
        self.call_idempotent("inspect", None, || self.backend.holders(key))
            .await
    }

    /// Forgets a held lock its holder let go of.
    pub(crate) fn forget(&self, id: u64) {
        self.held().remove(&id);
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
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
        loop {
            let (result, _) = self.call_by(op, Some(deadline), call()).await;
            let pause = backoff.next_delay();
            match result {
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(op, error = %e, "retrying a transient store error");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// Releases `lease` for its holder, retrying transient errors within one
    /// operation timeout, and wakes this engine's next local waiter. The
    /// flag says whether an earlier attempt may have released it without
    /// its reply coming back (it timed out): a NotHeld from a later one
    /// then most likely answers our own release. A failure that says the
    /// call did not run (a refused connection) does not count.
    pub(crate) async fn release(&self, lease: &LeaseRef) -> (Result<()>, bool) {
        // Whether the attempt in flight came back, and whether one that came
        // back (or never did) may have run unseen.
        let answered = AtomicBool::new(true);
        let maybe_ran = AtomicBool::new(false);
        let result = self
            .call_idempotent("release", None, || {
                if !answered.swap(false, Ordering::Relaxed) {
                    maybe_ran.store(true, Ordering::Relaxed); // cut off by the timeout
                }
                let call = self.backend.release(lease);
                let (answered, maybe_ran) = (&answered, &maybe_ran);
                async move {
                    let result = call.await;
                    answered.store(true, Ordering::Relaxed);
                    if matches!(result, Err(Error::Timeout { .. })) {
                        maybe_ran.store(true, Ordering::Relaxed);
                    }
                    result
                }
            })
            .await;
        self.queues.released(&lease.key);
        (result, maybe_ran.load(Ordering::Relaxed))
    }

    /// Best-effort background release, for handles dropped without release
    /// and obtains that gave up with an entry possibly left in the store.
    pub(crate) fn release_in_background(self: &Arc<Self>, lease: LeaseRef) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the store expires the lock after its TTL.
        };
        let engine = self.clone();
        self.background.spawn_on(
            async move {
                if let (Err(e), _) = engine.release(&lease).await
                    && !e.is_not_held()
                {
                    tracing::debug!(key = %lease.key.key, error = %e, "background release failed; the lock expires after its TTL");
                }
            },
            &runtime,
        );
    }

    /// Closes the engine: ends and releases every lock still held, waits for
    /// background releases, then closes the backend if this engine owns it.
    pub(crate) async fn close(&self) -> Result<()> {
        if self.is_closed() {
            return Ok(());
        }
        let held: Vec<_> = {
            // Cancelled under the lock that `register` checks it under.
            let mut held = self.held();
            self.closed.cancel();
            held.drain()
                .filter_map(|(_, state)| state.upgrade())
                .collect()
        };
        futures::future::join_all(held.iter().map(|state| state.close())).await;
        // Each background release is itself bounded by the operation
        // timeout; this bound only covers a runtime too busy to run them.
        self.background.close();
        if tokio::time::timeout(self.op_timeout, self.background.wait())
            .await
            .is_err()
        {
            tracing::debug!("close: background releases still running after the operation timeout");
        }
        if !self.owns_backend {
            return Ok(());
        }
        let (result, _) = self.call_by("close", None, self.backend.close()).await;
        result
    }
}
