//! The engine's entry point: obtain, inspect and close.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use crate::backend::Backend;
use crate::backend::memory::MemoryBackend;
#[cfg(doc)]
use crate::engine::LostReason;
use crate::engine::{Engine, Settings};
use crate::error::{Error, Result};
use crate::holder::{HolderInfo, Holders};
use crate::key::{IntoKey, LockKey, Namespace};
use crate::leadership::{self, DEFAULT_OBSERVE_POLL, Leader, Leadership};
use crate::lease::Share;
use crate::lock::Lock;
use crate::options::ObtainOptions;
use crate::rwlock::RwLock;
use crate::semaphore::Semaphore;
use crate::url::backend_from_url;
use crate::validity::ValidityPolicy;

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
    engine: Arc<Engine>,
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
        Ok(Locker {
            engine: Engine::new(Settings {
                backend: self.backend,
                owns_backend: self.owns_backend,
                namespace,
                op_timeout: self.op_timeout,
                validity: self.validity,
                defaults: self.defaults,
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
        self.engine.backend.name()
    }

    /// The backend this locker drives, for its primitives (tests, tools).
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.engine.backend.clone()
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.engine.namespace
    }

    /// The options [`obtain`](Self::obtain) uses.
    pub fn defaults(&self) -> &ObtainOptions {
        &self.engine.defaults
    }

    /// Obtains `key` with the locker's default options (the seed's: TTL 30 s,
    /// up to 10 retries 100 ms apart).
    pub async fn obtain(&self, key: impl IntoKey) -> Result<Lock> {
        self.obtain_with(key, self.engine.defaults.clone()).await
    }

    /// One attempt: [`Error::NotObtained`] at once if `key` is held.
    pub async fn try_obtain(&self, key: impl IntoKey) -> Result<Lock> {
        self.obtain_with(key, self.engine.defaults.clone().try_once())
            .await
    }

    /// Obtains `key` with `options`.
    ///
    /// Cancel-safe: dropping the returned future at any point leaves nothing
    /// held in the store (an attempt in flight is released in the
    /// background) and no task running.
    pub async fn obtain_with(&self, key: impl IntoKey, options: ObtainOptions) -> Result<Lock> {
        let key = self.lock_key(key)?;
        self.engine
            .obtain(key, Share::Exclusive, options)
            .await
            .map(Lock::new)
    }

    /// Whether `key` is held by anyone. Read-only: never takes the lock.
    pub async fn is_locked(&self, key: impl IntoKey) -> Result<bool> {
        Ok(self.inspect(key).await?.is_some())
    }

    /// The holder of `key`, if any: fencing token, time left, metadata.
    /// Read-only: never takes the lock.
    pub async fn inspect(&self, key: impl IntoKey) -> Result<Option<HolderInfo>> {
        let key = self.lock_key(key)?;
        self.engine.ensure_open()?;
        let engine = &self.engine;
        engine
            .call_idempotent("inspect", None, || engine.backend.inspect(&key))
            .await
    }

    /// Everyone who holds `key` — a lock's holder, a semaphore's permit
    /// holders, a reader-writer lock's readers or writer — and the permit
    /// limit they share. Read-only: never takes the key.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> distlock::Result<()> {
    /// let locker = distlock::Locker::memory();
    /// let pool = locker.semaphore("pool", 3)?;
    /// let _a = pool.acquire().await?;
    /// let _b = pool.acquire().await?;
    /// let held = locker.holders("pool").await?;
    /// assert_eq!((held.limit, held.holders.len()), (Some(3), 2));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The store's error, after the engine's retries of a read.
    pub async fn holders(&self, key: impl IntoKey) -> Result<Holders> {
        let key = self.lock_key(key)?;
        self.engine.holders(&key).await
    }

    /// A semaphore of `limit` permits on `key`: up to `limit` holders at
    /// once, each with its own lease. Cheap; nothing is stored until a
    /// permit is acquired. See [`Semaphore`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], or [`Error::InvalidOptions`] for a limit of 0.
    pub fn semaphore(&self, key: impl IntoKey, limit: u32) -> Result<Semaphore> {
        Semaphore::new(self.engine.clone(), self.lock_key(key)?, limit)
    }

    /// A reader-writer lock on `key`: any number of readers, or one writer.
    /// A writer is the same as [`obtain`](Self::obtain) on the key, so
    /// plain locks exclude readers too. See [`RwLock`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn rw_lock(&self, key: impl IntoKey) -> Result<RwLock> {
        Ok(RwLock::new(self.engine.clone(), self.lock_key(key)?))
    }

    /// Campaigns for the leadership of `key` as `identity` (any one-line
    /// text; [`default_identity`](crate::default_identity) is `host:pid`),
    /// waiting as long as it takes, with the locker's default TTL. See
    /// [`campaign_with`](Self::campaign_with).
    ///
    /// # Errors
    ///
    /// As [`campaign_with`](Self::campaign_with).
    ///
    /// # Cancel safety
    ///
    /// As [`campaign_with`](Self::campaign_with).
    pub async fn campaign(
        &self,
        key: impl IntoKey,
        identity: impl Into<String>,
    ) -> Result<Leadership> {
        let options = self.engine.defaults.clone().wait_forever();
        self.campaign_with(key, identity, options).await
    }

    /// Campaigns for the leadership of `key` as `identity` with `options`
    /// (TTL, how long to wait; their metadata is replaced by the identity),
    /// returning once this candidate leads. The leadership is refreshed
    /// until it is resigned, dropped or lost.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> distlock::Result<()> {
    /// let locker = distlock::Locker::memory();
    /// let leading = locker.campaign("scheduler", "node-a").await?;
    /// let seen = locker.leader("scheduler").await?.expect("a leader");
    /// assert_eq!((seen.identity.as_str(), seen.term), ("node-a", leading.term()));
    /// leading.resign().await?;
    /// assert!(locker.leader("scheduler").await?.is_none());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotObtained`] when `options` bound the wait and another
    /// candidate led throughout; [`Error::InvalidOptions`] for an empty or
    /// multi-line identity; the store and [`Error::Closed`] errors of
    /// [`obtain_with`](Self::obtain_with).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point leaves nothing in the store (no
    /// grant, no queue entry) and no task running.
    pub async fn campaign_with(
        &self,
        key: impl IntoKey,
        identity: impl Into<String>,
        options: ObtainOptions,
    ) -> Result<Leadership> {
        leadership::campaign(&self.engine, self.lock_key(key)?, identity.into(), options).await
    }

    /// The current leader of `key` (identity, term, since, time left), or
    /// `None`. Read-only: never campaigns.
    ///
    /// # Errors
    ///
    /// The store's error, after the engine's retries of a read.
    pub async fn leader(&self, key: impl IntoKey) -> Result<Option<Leader>> {
        leadership::leader(&self.engine, &self.lock_key(key)?).await
    }

    /// Every change of `key`'s leader — a new term, or no leader — the
    /// current state first, until the locker is closed. Driven by the
    /// store's notifications where it has them, and read again every
    /// [`DEFAULT_OBSERVE_POLL`](crate::DEFAULT_OBSERVE_POLL) and when the
    /// leader's time runs out in any case, so it never reports a leader the
    /// store no longer has for longer than one poll.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> distlock::Result<()> {
    /// use futures::StreamExt;
    ///
    /// let locker = distlock::Locker::memory();
    /// let mut changes = Box::pin(locker.observe("scheduler")?);
    /// assert_eq!(changes.next().await.unwrap()?, None);
    /// let leading = locker.campaign("scheduler", "node-a").await?;
    /// let first = changes.next().await.unwrap()?.expect("a leader");
    /// assert_eq!(first.term, leading.term());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`]; the stream yields the store's errors (and
    /// goes on afterwards).
    pub fn observe(
        &self,
        key: impl IntoKey,
    ) -> Result<impl Stream<Item = Result<Option<Leader>>> + Send + 'static> {
        self.observe_every(key, DEFAULT_OBSERVE_POLL)
    }

    /// [`observe`](Self::observe), reading the key at least every `poll`.
    ///
    /// # Errors
    ///
    /// As [`observe`](Self::observe), and [`Error::InvalidOptions`] for a
    /// zero `poll`.
    pub fn observe_every(
        &self,
        key: impl IntoKey,
        poll: Duration,
    ) -> Result<impl Stream<Item = Result<Option<Leader>>> + Send + 'static> {
        if poll.is_zero() {
            return Err(Error::invalid_options("poll", "must be greater than zero"));
        }
        Ok(leadership::observe(
            self.engine.clone(),
            self.lock_key(key)?,
            poll,
        ))
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
        self.engine.close().await
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.engine.is_closed()
    }

    fn lock_key(&self, key: impl IntoKey) -> Result<LockKey> {
        Ok(LockKey {
            namespace: self.engine.namespace.clone(),
            key: key.into_key()?,
        })
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", &self.engine.backend)
            .field("namespace", &self.engine.namespace)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}
