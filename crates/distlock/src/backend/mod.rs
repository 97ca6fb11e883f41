//! The backend SPI: the atomic primitives a store must provide.
//!
//! Everything else — retries, deadlines, waiting, refresh, the lost signal,
//! validity bookkeeping, tracing — lives once in the engine
//! ([`Locker`](crate::Locker) and [`Lock`](crate::Lock)), so a backend stays
//! one small file and every backend behaves the same.
//!
//! Contract, checked by the conformance suite in `distlock-testkit`:
//! * `try_acquire` is one atomic attempt. Asked again by the owner that
//!   already holds the key, it grants again with the same fencing token and
//!   resets the TTL, so an attempt whose reply was lost can be retried.
//! * Fencing tokens strictly increase per key over all grants.
//! * `extend` and `release` act only if the stored owner token matches, and
//!   answer [`Error::NotHeld`](crate::Error::NotHeld) otherwise.
//! * `inspect` never writes.
//! * A store with a native fair queue (etcd) may leave a queue entry behind
//!   a `Contended` answer when the request says the engine will wait
//!   ([`AcquireRequest::will_wait`]) and [`Capabilities::queues_waiters`] is
//!   true. The engine then retries with the same owner token, waits through
//!   [`Backend::wait`], and calls `release` for that owner whenever
//!   the obtain ends without a grant (deadline, retries exhausted, close, or
//!   the future dropped), so the entry never outlives the obtain.
//! * A backend bounds nothing by time itself: the engine wraps every call in
//!   its timeout and deadline, and may drop any future at any await point.
//!
//! # Permits: semaphores and reader-writer locks
//!
//! A lock is the special case of a lease that takes its whole key. Every
//! request and lease carries a [`Share`]: [`Share::Exclusive`] (a lock, a
//! writer) or [`Share::Permit`] with a limit (a semaphore's permit; a reader
//! is a permit of [`Share::READERS`]). A backend with
//! [`Capabilities::permits`] decides admission atomically in its store:
//!
//! * **Admission.** A permit of limit `n` is granted when the key has no
//!   exclusive holder, fewer than `n` live permits, and (on a store that
//!   queues waiters) no live queue entry ahead of it. An exclusive request
//!   is granted when the key has no live holder of either mode and no queue
//!   entry ahead of it. Permits asked for with a limit other than the one
//!   the live permits share are answered at once with
//!   [`Error::LimitMismatch`](crate::Error::LimitMismatch)
//!   ([`Error::limit_mismatch`](crate::Error::limit_mismatch)), not
//!   `Contended`.
//! * **One lease per holder.** Each permit has its own owner, TTL, fencing
//!   token and metadata: it expires, is extended and is released alone, and
//!   a re-asked grant (same owner) answers the same token as for locks.
//! * **One counter per key.** Fencing tokens strictly increase over all
//!   grants of a key, whatever their mode: a writer's token exceeds every
//!   earlier reader's, a reader's the last writer's.
//! * **No writer starvation.** A `Contended` exclusive request with
//!   [`will_wait`](AcquireRequest::will_wait) blocks permits asked for
//!   after it, until it is granted or released. On a store that queues all
//!   waiters in order this is its queue; any store with permits keeps such
//!   an entry and so sets [`Capabilities::queues_waiters`], and the entry
//!   lapses by itself (within about a second, or the request's TTL) if its
//!   waiter dies.
//! * [`holders`](Backend::holders) lists every live holder, oldest grant
//!   first, with the limit of permit holders; releasing the last holder
//!   leaves nothing of the key in the store.
//!
//! Leadership is a lock whose holder others observe: a store with change
//! notifications makes [`Backend::watch`] return on a grant as well as on
//! a release.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::error::Result;
use crate::holder::{HolderInfo, Holders};
use crate::key::LockKey;
use crate::lease::{LeaseRef, OwnerToken, Share};
use crate::validity::ValidityPolicy;

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(all(feature = "file", unix))]
pub mod file;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

/// Explaining the refusals of the network stores.
#[cfg(any(feature = "redis", feature = "etcd"))]
mod explain;

/// One acquisition attempt, as the engine asks a backend for it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AcquireRequest {
    /// The key to lock.
    pub key: LockKey,
    /// The owner token to store with the lock.
    pub owner: OwnerToken,
    /// The mode: a lock (exclusive), or one of a limited number of permits.
    /// Only a backend with [`Capabilities::permits`] is ever asked for a
    /// permit.
    pub share: Share,
    /// How long the store keeps the lock without an extend.
    pub ttl: Duration,
    /// Metadata to store with the lock for `inspect`.
    pub metadata: Option<Arc<str>>,
    /// How the engine turns the TTL into a validity deadline (counted from
    /// when it sent the request). A store whose own expiry mechanism needs
    /// a safety allowance of its own (etcd's lease, renewed by keepalives)
    /// applies this policy to it, rather than a formula of its own.
    pub validity: ValidityPolicy,
    /// The engine may try again with the same owner after a `Contended`
    /// answer (false for a single attempt such as
    /// [`Locker::try_obtain`](crate::Locker::try_obtain)). A backend that
    /// [queues waiters](Capabilities::queues_waiters) may leave a queue entry
    /// only when this is true.
    pub will_wait: bool,
}

impl AcquireRequest {
    /// A request for `key` by `owner` for `ttl`, without metadata.
    pub fn new(key: LockKey, owner: OwnerToken, ttl: Duration) -> Self {
        AcquireRequest {
            key,
            owner,
            share: Share::Exclusive,
            ttl,
            metadata: None,
            validity: ValidityPolicy::default(),
            will_wait: false,
        }
    }

    /// The same request for a lease of mode `share`.
    #[must_use]
    pub fn share(mut self, share: Share) -> Self {
        self.share = share;
        self
    }

    /// The lease reference a grant of this request creates.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef {
            key: self.key.clone(),
            owner: self.owner,
            share: self.share,
        }
    }
}

/// One lease to extend, as [`Backend::extend`] and [`Backend::extend_all`]
/// get it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Renewal {
    /// The held lease.
    pub lease: LeaseRef,
    /// The TTL to reset it to.
    pub ttl: Duration,
    /// The engine's validity policy, as in [`AcquireRequest::validity`].
    pub validity: ValidityPolicy,
}

impl Renewal {
    /// A renewal of `lease` for `ttl`, under the default validity policy.
    pub fn new(lease: LeaseRef, ttl: Duration) -> Self {
        Renewal {
            lease,
            ttl,
            validity: ValidityPolicy::default(),
        }
    }

    /// The same renewal under `validity`.
    #[must_use]
    pub fn validity(mut self, validity: ValidityPolicy) -> Self {
        self.validity = validity;
        self
    }
}

/// The outcome of one acquisition attempt that reached the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The lock is ours.
    Granted {
        /// The fencing token of this grant.
        fencing_token: u64,
    },
    /// Someone else holds it.
    Contended {
        /// The holder, when the store reported it in the same round trip.
        holder: Option<HolderInfo>,
    },
}

/// What a backend's store can do; the conformance suite adapts to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Locks expire after their TTL when not extended. False for stores
    /// where a lock lives exactly as long as its holder (file locks): the
    /// engine then gives locks no validity deadline (see
    /// [`Lock`](crate::Lock#validity)), and the conformance suite checks
    /// that they outlive their TTL instead of expiring.
    pub ttl_expiry: bool,
    /// A `Contended` answer to a request with
    /// [`will_wait`](AcquireRequest::will_wait) may leave a queue entry in
    /// the store. The engine then releases that owner whenever the obtain
    /// ends without a grant.
    pub queues_waiters: bool,
    /// The store serves [`Share::Permit`] requests (semaphores, readers of
    /// reader-writer locks) as the SPI contract says. Without it the engine
    /// refuses such a request at once, never narrowing it to a lock.
    pub permits: bool,
    /// [`Backend::watch`] returns on a grant and on a release of the key
    /// (the store notifies them), not only at its bound: an observer sees a
    /// new leader or a resignation without waiting for its poll. False for
    /// the default `watch`, which sleeps.
    pub notifies_observers: bool,
}

impl Capabilities {
    /// A store whose locks expire after their TTL and which keeps no queue
    /// of waiters: the default.
    pub const fn new() -> Self {
        Capabilities {
            ttl_expiry: true,
            queues_waiters: false,
            permits: false,
            notifies_observers: false,
        }
    }

    /// With [`ttl_expiry`](Self::ttl_expiry) set to `expires`.
    #[must_use]
    pub const fn with_ttl_expiry(mut self, expires: bool) -> Self {
        self.ttl_expiry = expires;
        self
    }

    /// With [`queues_waiters`](Self::queues_waiters) set to `queues`.
    #[must_use]
    pub const fn with_queues_waiters(mut self, queues: bool) -> Self {
        self.queues_waiters = queues;
        self
    }

    /// With [`permits`](Self::permits) set to `serves`.
    #[must_use]
    pub const fn with_permits(mut self, serves: bool) -> Self {
        self.permits = serves;
        self
    }

    /// With [`notifies_observers`](Self::notifies_observers) set to
    /// `notifies`.
    #[must_use]
    pub const fn with_notifies_observers(mut self, notifies: bool) -> Self {
        self.notifies_observers = notifies;
        self
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::new()
    }
}

/// The atomic primitives of one store. Dyn-compatible: a
/// [`Locker`](crate::Locker) holds an `Arc<dyn Backend>` chosen at run time.
pub trait Backend: Send + Sync + Debug + 'static {
    /// A short name for errors and traces (`memory`, `redis`, ...).
    fn name(&self) -> &'static str;

    /// What this store can do.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// One atomic attempt to take the lock.
    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>>;

    /// Resets the TTL to `renewal.ttl` if `renewal.lease.owner` still holds
    /// the key.
    fn extend<'a>(&'a self, renewal: &'a Renewal) -> BoxFuture<'a, Result<()>>;

    /// Extends several leases in one go, as the Locker's refresher does each
    /// round: one result per renewal, in order, each as
    /// [`extend`](Self::extend) would answer it. A store that can batch
    /// (one script call, one transaction) overrides it; the default sends
    /// the extends concurrently.
    fn extend_all<'a>(&'a self, renewals: &'a [Renewal]) -> BoxFuture<'a, Vec<Result<()>>> {
        Box::pin(futures::future::join_all(
            renewals.iter().map(|r| self.extend(r)),
        ))
    }

    /// Deletes the lock if `lease.owner` still holds the key.
    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>>;

    /// Reads the current holder, if any: for a key held by permits, one of
    /// them (the latest grant). Never writes.
    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>>;

    /// Reads every current holder of `key` and the permit limit they share.
    /// Never writes. The default reports what [`inspect`](Self::inspect)
    /// does, which is right for a store without
    /// [`permits`](Capabilities::permits); a store with them overrides it.
    fn holders<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Holders>> {
        Box::pin(async move {
            Ok(match self.inspect(key).await? {
                Some(holder) => Holders::exclusive(holder),
                None => Holders::none(),
            })
        })
    }

    /// Returns when the key of `req` may have become free for its owner,
    /// whose last attempt was `Contended`, or at `until` at the latest. A
    /// hint only: the engine always tries again afterwards, and bounds the
    /// wait by `until` itself. The default sleeps until `until`; stores
    /// with notifications return early, and a store that
    /// [queues waiters](Capabilities::queues_waiters) can watch just this
    /// waiter's predecessor.
    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        let _ = req;
        Box::pin(async move {
            tokio::time::sleep_until(until).await;
            Ok(())
        })
    }

    /// Returns when the holders of `key` may have changed — a grant, a
    /// release, an expiry — or at `until` at the latest: how an observer of
    /// a key ([`Locker::observe`](crate::Locker::observe)) learns of a new
    /// leader without polling. A hint only: the observer reads the key
    /// again afterwards and bounds the wait itself. The default sleeps
    /// until `until`, so observers poll.
    ///
    /// The observer polls the future once *before* it reads the key and
    /// awaits it after, so a store that notifies starts listening in that
    /// first poll (or listens from a point no later than it, as etcd's
    /// revisions allow): then no change after the read is missed. Where it
    /// cannot tell what happened before it listened (a subscription not
    /// yet confirmed), it returns once it can, and the observer reads
    /// again. An early return costs a read; a missed change costs a poll.
    /// A watch that fails sleeps until `until` rather than returning at
    /// once, so a failing store is not read in a tight loop. What each
    /// store notifies: memory every grant and release; etcd any change
    /// under the key's prefix (grants, queue entries, releases, expiry),
    /// over its watch stream; Redis every grant and release, over pub/sub
    /// (not expiry: the poll sees it).
    fn watch<'a>(&'a self, key: &'a LockKey, until: Instant) -> BoxFuture<'a, Result<()>> {
        let _ = key;
        Box::pin(async move {
            tokio::time::sleep_until(until).await;
            Ok(())
        })
    }

    /// Releases the store connection. Called once by
    /// [`Locker::close`](crate::Locker::close).
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
