//! [`Faulty`]: one fault-injecting decorator over any backend, shared by the
//! conformance suite, the engine tests and the bench.
//!
//! With no fault set it only forwards (and counts), so a store behind it
//! behaves, and costs, as without it. Every fault is switched on and off
//! through `&self`, so a test can change it while a [`Locker`] uses the
//! store.
//!
//! [`Locker`]: distlock::Locker

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::backend::{AcquireRequest, Attempt, Backend, Capabilities, Renewal};
use distlock::{Error, HolderInfo, Holders, LeaseRef, LockKey, Result};
use futures::future::BoxFuture;
use tokio::time::{Instant, sleep};

/// A backend that forwards every SPI call to `inner`, counting the engine's
/// calls, with injectable faults: hanging calls, replies that arrive late,
/// failing or stalled extends, slow releases, and waits without the store's
/// notifications. On request it also records the leases it saw granted,
/// so a test can act on one of them behind its holder's back.
pub struct Faulty {
    inner: Arc<dyn Backend>,
    /// Every call but `wait` and `close` hangs forever while set.
    hang: AtomicBool,
    /// Extends that fail with a transient error before succeeding again.
    failing_extends: AtomicU32,
    /// Releases that fail with a transient error without reaching the
    /// store (a connection refused), before they reach it again.
    failing_releases: AtomicU32,
    /// Extends fail with `Closed`, as a backend closed by its owner does.
    closed_extends: AtomicBool,
    /// The next acquire takes effect in the store, but its reply comes this
    /// late (nanoseconds; 0: on time).
    late_acquire_reply: AtomicU64,
    /// The same for the next extend.
    late_extend_reply: AtomicU64,
    /// Every release takes this long before it reaches the store (ns).
    slow_release: AtomicU64,
    /// Whether `wait` and `watch` may use the store's notifications.
    notifications: AtomicBool,
    /// Whether `capabilities` reports the store's permits.
    permits: AtomicBool,
    /// Keys whose extends never reach the store and never answer.
    stalled: Mutex<HashSet<LockKey>>,
    /// Whether granted leases are recorded in `grants` (off by default, so
    /// a long benchmark does not grow a record).
    recording: AtomicBool,
    /// Granted leases by fencing token, while recording.
    grants: Mutex<Vec<(u64, LeaseRef)>>,
    acquires: AtomicU64,
    extends: AtomicU64,
    /// `extend_all` calls: one per refresh round of a Locker.
    batches: AtomicU64,
    releases: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A wait without the store's notifications: until `until`.
fn sleep_until<'a>(until: Instant) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tokio::time::sleep_until(until).await;
        Ok(())
    })
}

/// Sleeps `ns` nanoseconds, not at all (not even a yield) for 0.
async fn delay(ns: u64) {
    if ns > 0 {
        sleep(Duration::from_nanos(ns)).await;
    }
}

impl Faulty {
    /// `inner` with no fault set: every call forwarded, `wait` with the
    /// store's notifications.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Faulty {
            inner,
            hang: AtomicBool::new(false),
            failing_extends: AtomicU32::new(0),
            failing_releases: AtomicU32::new(0),
            closed_extends: AtomicBool::new(false),
            late_acquire_reply: AtomicU64::new(0),
            late_extend_reply: AtomicU64::new(0),
            slow_release: AtomicU64::new(0),
            notifications: AtomicBool::new(true),
            permits: AtomicBool::new(true),
            stalled: Mutex::new(HashSet::new()),
            recording: AtomicBool::new(false),
            grants: Mutex::new(Vec::new()),
            acquires: AtomicU64::new(0),
            extends: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            releases: AtomicU64::new(0),
        }
    }

    /// The store it forwards to.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    /// While `off` is true, `capabilities` says the store serves no permits,
    /// as a third-party backend without them does. Read by a Locker when it
    /// is built.
    pub fn hide_permits(&self, off: bool) {
        self.permits.store(!off, Ordering::SeqCst);
    }

    /// While `on`, every `try_acquire`, `extend`, `release` and `inspect`
    /// hangs forever, as an unanswering store does.
    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    /// The next `n` extends fail with a transient error (`u32::MAX`: all
    /// of them, practically), without reaching the store.
    pub fn fail_extends(&self, n: u32) {
        self.failing_extends.store(n, Ordering::SeqCst);
    }

    /// The next `n` releases fail with a transient error and never reach
    /// the store.
    pub fn fail_releases(&self, n: u32) {
        self.failing_releases.store(n, Ordering::SeqCst);
    }

    /// While `on`, extends fail with [`Error::Closed`], as those of a
    /// backend closed by whoever else shares it.
    pub fn close_extends(&self, on: bool) {
        self.closed_extends.store(on, Ordering::SeqCst);
    }

    /// The next acquire takes effect in the store at once, but its reply
    /// reaches the caller `by` late, as over a stalled network.
    pub fn late_acquire_reply(&self, by: Duration) {
        self.late_acquire_reply.store(nanos(by), Ordering::SeqCst);
    }

    /// The next extend takes effect in the store at once, but its reply
    /// reaches the caller `by` late.
    pub fn late_extend_reply(&self, by: Duration) {
        self.late_extend_reply.store(nanos(by), Ordering::SeqCst);
    }

    /// Every release takes `by` before it reaches the store (zero: none).
    pub fn slow_release(&self, by: Duration) {
        self.slow_release.store(nanos(by), Ordering::SeqCst);
    }

    /// Whether `wait` and `watch` forward to the store (`on`, the default) or only
    /// sleeps until its bound, as a store without notifications does.
    pub fn notifications(&self, on: bool) {
        self.notifications.store(on, Ordering::SeqCst);
    }

    /// From now on, extends of `key` never reach the store and never
    /// answer: a network partition between the holder and the store, for
    /// that key only.
    pub fn stall_extends(&self, key: &LockKey) {
        self.stalled.lock().unwrap().insert(key.clone());
    }

    /// From now on, every lease a `try_acquire` grants is recorded, for
    /// [`granted_lease`](Self::granted_lease).
    pub fn record_grants(&self) {
        self.recording.store(true, Ordering::SeqCst);
    }

    /// The lease granted with `fencing_token` while recording: owner token
    /// included, so a test can extend or release it through
    /// [`inner`](Self::inner) behind the holder's back.
    pub fn granted_lease(&self, fencing_token: u64) -> Option<LeaseRef> {
        let grants = self.grants.lock().unwrap();
        grants
            .iter()
            .find(|(token, _)| *token == fencing_token)
            .map(|(_, lease)| lease.clone())
    }

    /// `try_acquire` calls so far.
    pub fn acquires(&self) -> u64 {
        self.acquires.load(Ordering::SeqCst)
    }

    /// Leases extended so far (by `extend` or in an `extend_all` batch),
    /// stalled or failed ones included.
    pub fn extends(&self) -> u64 {
        self.extends.load(Ordering::SeqCst)
    }

    /// How many `extend_all` calls (batches of extends) reached this store.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::SeqCst)
    }

    /// `release` calls so far.
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::SeqCst)
    }

    async fn gate(&self) {
        if self.hang.load(Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
    }

    /// A transient failure of `op`, while `remaining` says more are due
    /// (taking one of them).
    fn injected(&self, remaining: &AtomicU32, op: &'static str, what: &str) -> Option<Error> {
        remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| Error::backend(self.inner.name(), op, what.to_owned()))
    }

    fn is_stalled(&self, key: &LockKey) -> bool {
        self.stalled.lock().unwrap().contains(key)
    }

    /// Whether some fault could change how one of `renewals` is answered.
    fn extends_touched(&self, renewals: &[Renewal]) -> bool {
        self.hang.load(Ordering::SeqCst)
            || self.closed_extends.load(Ordering::SeqCst)
            || self.failing_extends.load(Ordering::SeqCst) > 0
            || self.late_extend_reply.load(Ordering::SeqCst) > 0
            || {
                let stalled = self.stalled.lock().unwrap();
                !stalled.is_empty() && renewals.iter().any(|r| stalled.contains(&r.lease.key))
            }
    }
}

impl fmt::Debug for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[deny(clippy::missing_trait_methods)]
impl Backend for Faulty {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        let inner = self.inner.capabilities();
        let notifies = inner.notifies_observers && self.notifications.load(Ordering::SeqCst);
        inner
            .with_permits(inner.permits && self.permits.load(Ordering::SeqCst))
            .with_notifies_observers(notifies)
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.gate().await;
            let reply = self.inner.try_acquire(req).await;
            if let Ok(Attempt::Granted { fencing_token }) = &reply
                && self.recording.load(Ordering::SeqCst)
            {
                let mut grants = self.grants.lock().unwrap();
                grants.push((*fencing_token, req.lease()));
            }
            delay(self.late_acquire_reply.swap(0, Ordering::SeqCst)).await;
            reply
        })
    }

    fn extend<'a>(&'a self, renewal: &'a Renewal) -> BoxFuture<'a, Result<()>> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        if self.is_stalled(&renewal.lease.key) {
            return Box::pin(futures::future::pending());
        }
        Box::pin(async move {
            self.gate().await;
            if self.closed_extends.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            if let Some(e) = self.injected(&self.failing_extends, "extend", "connection reset") {
                return Err(e);
            }
            let reply = self.inner.extend(renewal).await;
            delay(self.late_extend_reply.swap(0, Ordering::SeqCst)).await;
            reply
        })
    }

    /// One batch to the store while no fault touches its leases, so that a
    /// store that batches keeps batching; otherwise this decorator's own
    /// `extend` per renewal, concurrently, so every fault applies as to a
    /// lone extend.
    fn extend_all<'a>(&'a self, renewals: &'a [Renewal]) -> BoxFuture<'a, Vec<Result<()>>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        if self.extends_touched(renewals) {
            return Box::pin(futures::future::join_all(
                renewals.iter().map(|r| self.extend(r)),
            ));
        }
        self.extends
            .fetch_add(renewals.len() as u64, Ordering::SeqCst);
        self.inner.extend_all(renewals)
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.gate().await;
            if let Some(e) = self.injected(&self.failing_releases, "release", "connection refused")
            {
                return Err(e);
            }
            delay(self.slow_release.load(Ordering::SeqCst)).await;
            self.inner.release(lease).await
        })
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        Box::pin(async move {
            self.gate().await;
            self.inner.inspect(key).await
        })
    }

    fn holders<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Holders>> {
        Box::pin(async move {
            self.gate().await;
            self.inner.holders(key).await
        })
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        if self.notifications.load(Ordering::SeqCst) {
            self.inner.wait(req, until)
        } else {
            sleep_until(until)
        }
    }

    fn watch<'a>(&'a self, key: &'a LockKey, until: Instant) -> BoxFuture<'a, Result<()>> {
        if self.notifications.load(Ordering::SeqCst) {
            self.inner.watch(key, until)
        } else {
            sleep_until(until)
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.close()
    }
}
