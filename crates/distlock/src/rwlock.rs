//! A reader-writer lock: the front type that takes a key shared or alone.

use std::fmt;
use std::sync::Arc;

use crate::engine::Engine;
use crate::error::Result;
use crate::holder::Holders;
use crate::key::LockKey;
use crate::lease::Share;
use crate::lock::Lock;
use crate::options::ObtainOptions;

/// Any number of readers of a key, or one writer. Each read or write lock
/// is a [`Lock`] with its own lease, fencing token, validity deadline and
/// [`Lock::lost`]: a reader can be released (or lost) while others keep
/// reading.
///
/// * **Fencing.** Readers and writers draw from the key's one counter, so
///   a write lock's token is greater than every earlier grant's, and a read
///   lock's token is greater than that of the last writer before it: a
///   protected resource can refuse a reader older than the last write.
/// * **No writer starvation.** A writer that waits (any obtain that may try
///   again) blocks readers that arrive after it, on every store: once the
///   readers before it leave, it gets the key.
/// * **A writer is a lock.** [`write`](Self::write) is
///   [`Locker::obtain`](crate::Locker::obtain) on the key, so plain locks
///   and readers exclude each other too.
/// * **No upgrade.** A read lock cannot be turned into a write lock in
///   place: two readers that both tried would wait for each other forever
///   (each upgrade waits for the other reader to leave). Release the read
///   lock and take the write lock, and re-check what was read.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> distlock::Result<()> {
/// let locker = distlock::Locker::memory();
/// let config = locker.rw_lock("config")?;
/// let r1 = config.read().await?;
/// let r2 = config.read().await?;
/// assert!(config.try_write().await.unwrap_err().is_not_obtained());
/// let read_token = r2.fencing_token();
/// r1.release().await?;
/// r2.release().await?;
/// let w = config.try_write().await?;
/// assert!(w.fencing_token() > read_token);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RwLock {
    engine: Arc<Engine>,
    key: LockKey,
}

impl RwLock {
    pub(crate) fn new(engine: Arc<Engine>, key: LockKey) -> Self {
        RwLock { engine, key }
    }

    /// The key.
    pub fn key(&self) -> &str {
        self.key.key.as_str()
    }

    /// A read lock with the locker's default options.
    ///
    /// # Errors
    ///
    /// As [`read_with`](Self::read_with).
    ///
    /// # Cancel safety
    ///
    /// As [`read_with`](Self::read_with).
    pub async fn read(&self) -> Result<Lock> {
        self.read_with(self.engine.defaults.clone()).await
    }

    /// One attempt at a read lock: [`Error::NotObtained`] at once if a
    /// writer holds the key or waits for it.
    ///
    /// # Errors
    ///
    /// As [`read_with`](Self::read_with).
    ///
    /// # Cancel safety
    ///
    /// As [`read_with`](Self::read_with).
    ///
    /// [`Error::NotObtained`]: crate::Error::NotObtained
    pub async fn try_read(&self) -> Result<Lock> {
        self.read_with(self.engine.defaults.clone().try_once())
            .await
    }

    /// A read lock with `options`.
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire_with`](crate::Semaphore::acquire_with):
    /// [`Error::LimitMismatch`](crate::Error::LimitMismatch) when the key
    /// is held as a semaphore.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point leaves nothing held in the store
    /// and no task running.
    pub async fn read_with(&self, options: ObtainOptions) -> Result<Lock> {
        self.obtain(Share::READERS, options).await
    }

    /// The write lock with the locker's default options.
    ///
    /// # Errors
    ///
    /// As [`write_with`](Self::write_with).
    ///
    /// # Cancel safety
    ///
    /// As [`write_with`](Self::write_with).
    pub async fn write(&self) -> Result<Lock> {
        self.write_with(self.engine.defaults.clone()).await
    }

    /// One attempt at the write lock.
    ///
    /// # Errors
    ///
    /// As [`write_with`](Self::write_with).
    ///
    /// # Cancel safety
    ///
    /// As [`write_with`](Self::write_with).
    pub async fn try_write(&self) -> Result<Lock> {
        self.write_with(self.engine.defaults.clone().try_once())
            .await
    }

    /// The write lock with `options`: exactly
    /// [`Locker::obtain_with`](crate::Locker::obtain_with) on the key.
    ///
    /// # Errors
    ///
    /// As `obtain_with`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point leaves nothing held in the store
    /// (no queue entry either, so readers are not held up by it) and no
    /// task running.
    pub async fn write_with(&self, options: ObtainOptions) -> Result<Lock> {
        self.obtain(Share::Exclusive, options).await
    }

    /// The current readers (or writer), each with fencing token, time left
    /// and metadata. Read-only.
    ///
    /// # Errors
    ///
    /// The store's error, after the engine's retries of a read.
    pub async fn holders(&self) -> Result<Holders> {
        self.engine.holders(&self.key).await
    }

    async fn obtain(&self, share: Share, options: ObtainOptions) -> Result<Lock> {
        self.engine
            .obtain(self.key.clone(), share, options)
            .await
            .map(Lock::new)
    }
}

impl fmt::Debug for RwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
