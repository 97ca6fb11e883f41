//! A semaphore: the front type that acquires one of a key's permits.

use std::fmt;
use std::sync::Arc;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::holder::Holders;
use crate::key::LockKey;
use crate::lease::Share;
use crate::lock::Lock;
use crate::options::ObtainOptions;

/// Up to `limit` holders of one key at once, each with its own lease: a
/// permit is a [`Lock`] with everything a lock has — a fencing token
/// (strictly increasing over all grants of the key, permits and locks
/// alike), a validity deadline, [`Lock::lost`], refresh and release. A
/// holder that crashes gives its permit back when its TTL runs out; the
/// other holders are unaffected.
///
/// Every holder of the key must agree on the limit: a permit asked for
/// with a different limit than the current holders share fails at once
/// with [`Error::LimitMismatch`]. A plain lock on the same key
/// ([`Locker::obtain`](crate::Locker::obtain)) takes the whole key: it
/// waits for every permit to be returned, and permits wait for it.
///
/// Waiters are served in order of arrival: within one [`Locker`], always;
/// across processes, on the stores that queue waiters (Redis, etcd). A
/// waiting plain lock holds up the permits asked for after it, on every
/// store, so it is not starved.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> distlock::Result<()> {
/// let locker = distlock::Locker::memory();
/// let uploads = locker.semaphore("uploads", 2)?;
/// let a = uploads.acquire().await?;
/// let b = uploads.acquire().await?;
/// assert!(uploads.try_acquire().await.unwrap_err().is_not_obtained());
/// assert!(b.fencing_token() > a.fencing_token());
/// a.release().await?;
/// let c = uploads.try_acquire().await?;
/// # drop((b, c));
/// # Ok(()) }
/// ```
///
/// [`Locker`]: crate::Locker
#[derive(Clone)]
pub struct Semaphore {
    engine: Arc<Engine>,
    key: LockKey,
    limit: u32,
}

impl Semaphore {
    pub(crate) fn new(engine: Arc<Engine>, key: LockKey, limit: u32) -> Result<Self> {
        if limit == 0 {
            return Err(Error::invalid_options("limit", "must be at least 1"));
        }
        Ok(Semaphore { engine, key, limit })
    }

    /// The key.
    pub fn key(&self) -> &str {
        self.key.key.as_str()
    }

    /// How many permits the key has.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Acquires a permit with the locker's default options.
    ///
    /// # Errors
    ///
    /// As [`acquire_with`](Self::acquire_with).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire_with`](Self::acquire_with).
    pub async fn acquire(&self) -> Result<Lock> {
        self.acquire_with(self.engine.defaults.clone()).await
    }

    /// One attempt: [`Error::NotObtained`] at once if every permit is taken.
    ///
    /// # Errors
    ///
    /// As [`acquire_with`](Self::acquire_with).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire_with`](Self::acquire_with).
    pub async fn try_acquire(&self) -> Result<Lock> {
        self.acquire_with(self.engine.defaults.clone().try_once())
            .await
    }

    /// Acquires a permit with `options` (TTL, waiting, retries, metadata),
    /// as [`Locker::obtain_with`](crate::Locker::obtain_with) obtains a
    /// lock.
    ///
    /// # Errors
    ///
    /// [`Error::NotObtained`] when no permit came free in time;
    /// [`Error::LimitMismatch`] when the key's holders share another limit
    /// (or the backend serves no permits); the option, store and
    /// [`Error::Closed`] errors of `obtain_with`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point leaves nothing held in the store
    /// and no task running, as for `obtain_with`.
    pub async fn acquire_with(&self, options: ObtainOptions) -> Result<Lock> {
        let share = Share::Permit { limit: self.limit };
        self.engine
            .obtain(self.key.clone(), share, options)
            .await
            .map(Lock::new)
    }

    /// The current holders (fencing token, time left, metadata of each)
    /// and the limit they share. Read-only.
    ///
    /// # Errors
    ///
    /// The store's error, after the engine's retries of a read.
    pub async fn holders(&self) -> Result<Holders> {
        self.engine.holders(&self.key).await
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("key", &self.key)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}
