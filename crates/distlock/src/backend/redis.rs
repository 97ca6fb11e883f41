//! The Redis backend (cargo feature `redis`): one Redis server, atomic Lua
//! scripts, per-key fencing counters and release notifications over
//! pub/sub.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> distlock::Result<()> {
//! use distlock::Locker;
//!
//! // From a URL (`redis://[user:password@]host:port/db`, or `rediss://` for TLS) ...
//! let locker = Locker::from_url("redis://127.0.0.1:6379/?namespace=billing").await?;
//!
//! // ... or from a client the application already has (the seed's `NewRedisLocker`).
//! use std::sync::Arc;
//! use distlock::backend::redis::RedisBackend;
//! let client = redis::Client::open("redis://127.0.0.1:6379/").expect("valid URL");
//! let backend = RedisBackend::builder(client).build().await?;
//! let locker = Locker::builder(Arc::new(backend)).namespace("billing").build()?;
//! # Ok(()) }
//! ```
//!
//! # What is stored
//!
//! For a key `K` in namespace `NS`, with `H` the 16 hex digits of a stable
//! 64-bit hash (FNV-1a) of `K` (see [`RedisKeys`]):
//!
//! * `NS:{H}:lock:K` — the lock, a string `<owner token>:<fencing token>:<metadata>`
//!   with the lock's TTL;
//! * `NS:{H}:fence:K` — the key's fencing counter, without a TTL, so it
//!   outlives the lock (one small key per distinct lock key ever used);
//! * `NS:{H}:queue:K` and `NS:{H}:waiting:K` — while processes wait: the
//!   waiters' queue (a sorted set of owner tokens by arrival) and their
//!   leases (a hash), both expiring a waiter lease after the last waiter's
//!   last attempt;
//! * `NS:{H}:released:K` — the pub/sub channel a release publishes on.
//!
//! The names are injective, all begin with `NS:` (so an ACL user can be
//! limited to `~NS:*` keys and `&NS:*` channels), and the first `{...}` in
//! each is `{H}` — namespaces contain no braces — so a lock and the keys
//! beside it always share one Redis Cluster hash slot, whatever braces `K`
//! contains.
//!
//! # Durability and safety
//!
//! * **Fencing tokens never go back**, even when Redis loses the counter
//!   (FLUSHALL, eviction, a restart without `appendfsync always`, a
//!   failover to a replica that missed the last writes): a grant's token is
//!   `max(counter + 1, the server's clock in µs since the epoch)`, like the
//!   file backend's. Only a server clock stepped back past the last token,
//!   together with a lost counter, could repeat one; with AOF `appendfsync
//!   always` the counter itself survives and the clock does not matter.
//! * **Eviction breaks mutual exclusion**: with any `maxmemory-policy`
//!   other than `noeviction`, Redis may evict a live lock. The backend reads
//!   the policy on connect ([`RedisBackend::maxmemory_policy`]) and logs a
//!   warning when it can evict.
//! * Single instance only: no Redlock, no cluster or sentinel client yet
//!   (the key layout is cluster-ready).
//!
//! # ACL
//!
//! A Redis user needs the keys `~NS:*`, the channels `&NS:*` and the
//! commands listed by [`RedisBackend::required_acl`]. A missing permission
//! is reported as an [`Error::Refused`] whose message names what is needed.
//!
//! # Errors that retrying cannot fix
//!
//! These are reported at once, never retried until a deadline: an ACL
//! `NOPERM` and credentials the server turns down (`WRONGPASS`, `NOAUTH`)
//! are [`Error::Refused`] naming the user, as is a server certificate the
//! client does not trust; a database index the server does not have
//! (`/99` with `databases 16`) is an [`Error::InvalidUrl`].
//!
//! # Waiting
//!
//! Waiters are served in order of arrival across processes. An attempt
//! that waits and does not get the lock joins the key's queue in Redis; a
//! free lock goes only to the head of the queue (or to anyone when the
//! queue is empty: so [`Locker::try_obtain`](crate::Locker::try_obtain)
//! fails while others wait). Each attempt renews the waiter's lease
//! ([`RedisBackendBuilder::waiter_lease`]); a waiter that stops asking —
//! its process died, or its retry delay is longer than the lease — is
//! dropped from the queue when its lease runs out, so it delays the others
//! by at most one lease and never blocks them. A wait that ends without
//! the lock leaves the queue at once.
//!
//! A waiter subscribes to its key's release channel. A release (or a
//! waiter leaving the queue of a free lock) publishes the owner token of
//! the queue's head, and only that waiter wakes; the others sleep on. Each
//! backend has at most one subscription connection, shared by all its
//! waiters and opened on first use; a supervisor task re-connects and
//! re-subscribes it after failures and wakes every waiter when it does (a
//! release may have been missed). Every wait is also bounded by the
//! engine's retry delay and the holder's remaining TTL, so a lost
//! notification costs at most one poll interval.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ConnectionAddr, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::backend::{AcquireRequest, Attempt, Backend, Capabilities, explain};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::{LockKey, Namespace};
use crate::lease::{LeaseRef, OwnerToken};

/// The backend's name in errors and traces.
const NAME: &str = "redis";

/// The default bound on one connection attempt.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// The default bound on one command's reply.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The default number of reconnection attempts after a connection fails,
/// before the next command starts over.
pub const DEFAULT_RECONNECT_RETRIES: usize = 3;

/// How often the subscription connection is checked with a `PING`, and
/// idle channels are unsubscribed.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a channel stays subscribed without waiters, so a hot key's
/// waiters do not subscribe and unsubscribe on every wait.
const LINGER: Duration = Duration::from_secs(10);
/// The default [`RedisBackendBuilder::waiter_lease`].
pub const DEFAULT_WAITER_LEASE: Duration = Duration::from_secs(1);
/// Back-off bounds between subscription reconnection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/acquire.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/extend.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/release.lua")));
static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/inspect.lua")));
static TURN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/turn.lua")));

/// The Redis names distlock uses for one lock (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisKeys {
    /// The lock itself: `NS:{H}:lock:K`.
    pub lock: String,
    /// The key's fencing counter: `NS:{H}:fence:K`.
    pub fence: String,
    /// The waiters' queue: `NS:{H}:queue:K`.
    pub queue: String,
    /// The waiters' leases: `NS:{H}:waiting:K`.
    pub waiting: String,
    /// The channel a release publishes on: `NS:{H}:released:K`.
    pub channel: String,
}

impl RedisKeys {
    /// The names for `key`.
    ///
    /// ```
    /// use distlock::{Key, LockKey, Namespace};
    /// use distlock::backend::redis::RedisKeys;
    ///
    /// let key = LockKey { namespace: Namespace::new("app").unwrap(), key: Key::new("{a}/b").unwrap() };
    /// let names = RedisKeys::new(&key);
    /// assert!(names.lock.starts_with("app:{") && names.lock.ends_with("}:lock:{a}/b"));
    /// assert_eq!(names.lock.replace(":lock:", ":fence:"), names.fence);
    /// ```
    pub fn new(key: &LockKey) -> Self {
        let prefix = format!("{}:{{{}}}", key.namespace, slot_tag(key.key.as_str()));
        let name = |kind: &str| format!("{prefix}:{kind}:{}", key.key);
        RedisKeys {
            lock: name("lock"),
            fence: name("fence"),
            queue: name("queue"),
            waiting: name("waiting"),
            channel: name("released"),
        }
    }
}

/// 16 hex digits of the 64-bit FNV-1a hash of `key`: stable across builds
/// and platforms, and free of braces, so it can be the hash tag.
fn slot_tag(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Locks in one Redis server. Build it with [`RedisBackend::connect`] or
/// [`RedisBackend::builder`], then hand it to
/// [`Locker::builder`](crate::Locker::builder) (or use
/// [`Locker::from_url`](crate::Locker::from_url)).
///
/// Cheap to share through an `Arc`; all lockers over one backend share its
/// command connection and its one subscription connection.
pub struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    who: Who,
    conn: ConnectionManager,
    response_timeout: Duration,
    connection_timeout: Duration,
    maxmemory_policy: Option<String>,
    channels: Arc<Channels>,
    waiter_lease: Duration,
    /// The subscription supervisor's inbox, once started.
    supervisor: OnceLock<UnboundedSender<String>>,
    shutdown: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds a [`RedisBackend`] from a [`redis::Client`].
#[must_use]
pub struct RedisBackendBuilder {
    client: Client,
    manager: Option<ConnectionManager>,
    connection_timeout: Duration,
    response_timeout: Duration,
    reconnect_retries: usize,
    waiter_lease: Duration,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field(
                "addr",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("own_manager", &self.manager.is_none())
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("waiter_lease", &self.waiter_lease)
            .finish()
    }
}

impl RedisBackendBuilder {
    /// Sends commands through the application's existing connection
    /// manager instead of opening one. Its own timeouts and retries then
    /// apply (the locker still bounds every call by its operation timeout);
    /// the client is still used for the subscription connection.
    pub fn connection_manager(mut self, manager: ConnectionManager) -> Self {
        self.manager = Some(manager);
        self
    }

    /// Bounds one connection attempt (default
    /// [`DEFAULT_CONNECTION_TIMEOUT`]).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Bounds one command's reply (default [`DEFAULT_RESPONSE_TIMEOUT`]).
    /// A command that times out may still have run on the server.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many times a failed connection is retried in the background
    /// before the next command starts over (default
    /// [`DEFAULT_RECONNECT_RETRIES`]). Commands wait for the reconnection,
    /// always within the locker's operation timeout.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// How long a waiter keeps its place in a key's queue after its last
    /// attempt (default [`DEFAULT_WAITER_LEASE`]). Waiters try again at
    /// least every retry delay (100 ms by default), renewing it; a waiter
    /// that stops (its process died) holds up the waiters behind it for at
    /// most this long. A waiter whose retry delay is longer loses its
    /// place between attempts and queues again at the back.
    pub fn waiter_lease(mut self, lease: Duration) -> Self {
        self.waiter_lease = lease;
        self
    }

    /// Connects (bounded by the connection timeout per attempt), loads the
    /// scripts and checks `maxmemory-policy`.
    pub async fn build(self) -> Result<RedisBackend> {
        if self.connection_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(Error::invalid_options(
                "timeout",
                "the Redis connection and response timeouts must be greater than zero",
            ));
        }
        if self.waiter_lease < Duration::from_millis(1) {
            return Err(Error::invalid_options(
                "waiter_lease",
                "the Redis waiter lease must be at least one millisecond",
            ));
        }
        install_crypto_provider();
        let conn = match self.manager {
            Some(manager) => manager,
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connection_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(self.reconnect_retries)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500))
                    .set_exponent_base(2.0);
                // The manager retries even a refused password; bound it all.
                let attempts = u32::try_from(self.reconnect_retries + 1).unwrap_or(u32::MAX);
                let bound = self.connection_timeout.saturating_mul(attempts)
                    + Duration::from_millis(500 * u64::from(attempts.min(100)));
                match timeout(
                    bound,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) if is_unknown_database(&e) => {
                        let info = self.client.get_connection_info();
                        return Err(Error::InvalidUrl {
                            url: url_of(info),
                            reason: format!(
                                "database {} does not exist on the server: {}",
                                info.redis_settings().db(),
                                e.detail().unwrap_or_default()
                            ),
                        });
                    }
                    Ok(Err(e)) => {
                        let who = Who::of(&self.client);
                        return Err(map_err("connect", None, &who, self.response_timeout, e));
                    }
                    Err(_) => {
                        return Err(Error::Timeout {
                            op: "connect",
                            after: bound,
                        });
                    }
                }
            }
        };
        let mut backend = Shared {
            who: Who::of(&self.client),
            client: self.client,
            conn,
            response_timeout: self.response_timeout,
            connection_timeout: self.connection_timeout,
            maxmemory_policy: None,
            channels: Arc::new(Channels::default()),
            waiter_lease: self.waiter_lease,
            supervisor: OnceLock::new(),
            shutdown: CancellationToken::new(),
        };
        backend.maxmemory_policy = backend.check_maxmemory_policy().await?;
        backend.load_scripts().await;
        Ok(RedisBackend {
            shared: Arc::new(backend),
        })
    }
}

/// redis-rs enables rustls without choosing a crypto provider; without one
/// a `rediss://` connection panics. Install ring unless the application
/// already installed a provider.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl RedisBackend {
    /// Connects to the server a `redis://` or `rediss://` URL names, with
    /// the default timeouts.
    pub async fn connect(url: &str) -> Result<RedisBackend> {
        let client = Client::open(url).map_err(|e| Error::InvalidUrl {
            url: crate::url::without_password(url),
            reason: e.to_string(),
        })?;
        Self::builder(client).build().await
    }

    /// A builder over an existing client.
    pub fn builder(client: Client) -> RedisBackendBuilder {
        RedisBackendBuilder {
            client,
            manager: None,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            reconnect_retries: DEFAULT_RECONNECT_RETRIES,
            waiter_lease: DEFAULT_WAITER_LEASE,
        }
    }

    /// The server's `maxmemory-policy` as read on connect, or `None` when it
    /// could not be read (`CONFIG` denied or disabled). Anything but
    /// `noeviction` can evict a live lock.
    pub fn maxmemory_policy(&self) -> Option<&str> {
        self.shared.maxmemory_policy.as_deref()
    }

    /// The ACL rules a Redis user needs to use locks in `namespace`, in
    /// `ACL SETUSER` syntax.
    ///
    /// ```
    /// use distlock::Namespace;
    /// use distlock::backend::redis::RedisBackend;
    ///
    /// let rules = RedisBackend::required_acl(&Namespace::new("billing").unwrap());
    /// assert!(rules.starts_with("~billing:* &billing:* "));
    /// assert!(rules.contains("+evalsha"));
    /// ```
    pub fn required_acl(namespace: &Namespace) -> String {
        acl_rules(namespace.as_str())
    }

    /// The command connection, for the application's own use.
    pub fn connection_manager(&self) -> ConnectionManager {
        self.shared.conn.clone()
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field(
                "addr",
                &self.shared.client.get_connection_info().addr().to_string(),
            )
            .field("maxmemory_policy", &self.shared.maxmemory_policy)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The policy, when it can be read. Also the first command a new
    /// connection sends: a server that requires a password and got none
    /// says so here (`NOAUTH`), and that is an error.
    async fn check_maxmemory_policy(&self) -> Result<Option<String>> {
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let query = cmd.query_async::<HashMap<String, String>>(&mut conn);
        let policy = match timeout(self.response_timeout, query).await {
            Ok(Ok(mut map)) => map.remove("maxmemory-policy"),
            Ok(Err(e)) if is_auth_error(&e) => {
                return Err(map_err(
                    "connect",
                    None,
                    &self.who,
                    self.response_timeout,
                    e,
                ));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "distlock: cannot read Redis maxmemory-policy");
                None
            }
            Err(_) => {
                tracing::debug!("distlock: reading Redis maxmemory-policy timed out");
                None
            }
        };
        if let Some(policy) = policy.as_deref().filter(|p| *p != "noeviction") {
            tracing::warn!(
                maxmemory_policy = policy,
                "distlock: Redis may evict keys (maxmemory-policy is {policy:?}): an evicted lock \
                 breaks mutual exclusion; set maxmemory-policy to noeviction"
            );
        }
        Ok(policy)
    }

    /// Loads the scripts up front so the first operations need no NOSCRIPT
    /// round trip; a failure only costs that round trip later.
    async fn load_scripts(&self) {
        for script in [&*ACQUIRE, &*EXTEND, &*RELEASE, &*INSPECT, &*TURN] {
            let mut conn = self.conn();
            match timeout(self.response_timeout, script.load_async(&mut conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "distlock: SCRIPT LOAD failed; scripts load on first use");
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn err(&self, op: &'static str, key: &LockKey, e: RedisError) -> Error {
        map_err(
            op,
            Some(&key.namespace),
            &self.who,
            self.response_timeout,
            e,
        )
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let names = RedisKeys::new(&req.key);
        let metadata = match &req.metadata {
            Some(m) => format!("={m}"),
            None => "-".to_owned(),
        };
        let reply: Vec<Value> = ACQUIRE
            .key(&names.lock)
            .key(&names.fence)
            .key(&names.queue)
            .key(&names.waiting)
            .arg(req.owner.to_hex())
            .arg(millis(req.ttl))
            .arg(metadata)
            .arg(u8::from(req.will_wait))
            .arg(millis(self.waiter_lease))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("acquire", &req.key, e))?;
        match reply.as_slice() {
            [flag, token] if int(flag) == Some(1) => Ok(Attempt::Granted {
                fencing_token: token_of(token)?,
            }),
            [flag, token, pttl, metadata] if int(flag) == Some(0) => Ok(Attempt::Contended {
                holder: Some(holder(token, pttl, metadata)?),
            }),
            // Free, but another waiter is first.
            [flag] if int(flag) == Some(0) => Ok(Attempt::Contended { holder: None }),
            other => Err(unexpected("acquire", other)),
        }
    }

    async fn extend(&self, lease: &LeaseRef, ttl: Duration) -> Result<()> {
        let names = RedisKeys::new(&lease.key);
        let done: i64 = EXTEND
            .key(&names.lock)
            .arg(lease.owner.to_hex())
            .arg(millis(ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("extend", &lease.key, e))?;
        held_if(done == 1, &lease.key)
    }

    async fn release(&self, lease: &LeaseRef) -> Result<()> {
        let names = RedisKeys::new(&lease.key);
        let reply: i64 = RELEASE
            .key(&names.lock)
            .key(&names.queue)
            .key(&names.waiting)
            .arg(lease.owner.to_hex())
            .arg(&names.channel)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("release", &lease.key, e))?;
        held_if(reply >= 1, &lease.key)
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<HolderInfo>> {
        let names = RedisKeys::new(key);
        let reply: Vec<Value> = INSPECT
            .key(&names.lock)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("inspect", key, e))?;
        match reply.as_slice() {
            [] => Ok(None),
            [token, pttl, metadata] => Ok(Some(holder(token, pttl, metadata)?)),
            other => Err(unexpected("inspect", other)),
        }
    }

    /// The subscription supervisor's inbox; starts it on first use.
    fn supervisor(&self) -> &UnboundedSender<String> {
        self.supervisor.get_or_init(|| {
            let (tx, rx) = unbounded_channel();
            let supervisor = Supervisor {
                client: self.client.clone(),
                channels: self.channels.clone(),
                shutdown: self.shutdown.clone(),
                connection_timeout: self.connection_timeout,
                response_timeout: self.response_timeout,
            };
            tokio::spawn(supervisor.run(rx));
            tx
        })
    }

    /// Returns when `key` may be free for `owner` (any caller when `None`):
    /// on a release notification, or at once if it is free and `owner` is
    /// first in its queue; at `until` at the latest.
    async fn wait_for_turn(
        &self,
        key: &LockKey,
        owner: Option<OwnerToken>,
        until: Instant,
    ) -> Result<()> {
        if self.shutdown.is_cancelled() {
            sleep_until(until).await;
            return Ok(());
        }
        let names = RedisKeys::new(key);
        let waiter = self.channels.join(&names.channel, self.supervisor());
        let channel = &waiter.channel;
        let released = channel.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if !channel.is_subscribed() {
            let ready = channel.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if !channel.is_subscribed() {
                tokio::select! {
                    _ = ready => {}
                    // Woken by a release, a lost connection or a new one.
                    _ = &mut released => return Ok(()),
                    _ = sleep_until(until) => return Ok(()),
                }
            }
        }
        // Subscribed: a release from now on wakes us. One that happened
        // since the caller's last attempt is seen here.
        let mut conn = self.conn();
        let owner = owner.map_or_else(String::new, |owner| owner.to_hex());
        let mut turn = TURN.prepare_invoke();
        turn.key(&names.lock).key(&names.queue).arg(&owner);
        let turn = turn.invoke_async::<bool>(&mut conn);
        tokio::select! {
            ours = turn => if let Ok(true) = ours { return Ok(()) },
            _ = sleep_until(until) => return Ok(()),
        }
        // A release names the waiter whose turn it is: the others sleep on
        // (no herd), and a missed turn costs at most the poll interval.
        loop {
            tokio::select! {
                _ = &mut released => {}
                _ = sleep_until(until) => return Ok(()),
            }
            released.set(channel.released.notified());
            released.as_mut().enable();
            if channel.wakes(&owner) {
                return Ok(());
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    // Round up: the store may keep a lock a little longer than asked,
    // never shorter (and a sub-millisecond TTL must not become 0).
    u64::try_from(d.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

fn int(v: &Value) -> Option<i64> {
    ::redis::from_redis_value_ref(v).ok()
}

fn token_of(v: &Value) -> Result<u64> {
    ::redis::from_redis_value_ref(v).map_err(|e| Error::backend(NAME, "decode", e))
}

fn holder(token: &Value, pttl: &Value, metadata: &Value) -> Result<HolderInfo> {
    let mut info = HolderInfo::new(token_of(token)?);
    if let Some(ms) = int(pttl).and_then(|ms| u64::try_from(ms).ok()) {
        info = info.expires_in(Duration::from_millis(ms));
    }
    let metadata: Option<String> =
        ::redis::from_redis_value_ref(metadata).map_err(|e| Error::backend(NAME, "decode", e))?;
    Ok(info.metadata(metadata))
}

fn unexpected(op: &'static str, reply: &[Value]) -> Error {
    Error::backend(
        NAME,
        op,
        format!("unexpected reply from the {op} script: {reply:?}"),
    )
}

fn held_if(held: bool, key: &LockKey) -> Result<()> {
    if held {
        Ok(())
    } else {
        Err(Error::NotHeld {
            key: key.key.to_string(),
        })
    }
}

/// Maps a redis-rs error to distlock's: timeouts to [`Error::Timeout`]; an
/// ACL refusal to [`Error::Refused`] with a [`PermissionDenied`] explaining
/// what the user needs, and credentials or a certificate the client cannot
/// use to [`Error::Refused`] saying which (not retried: waiting will not
/// change them); everything else to [`Error::Backend`] with the source kept.
fn map_err(
    op: &'static str,
    namespace: Option<&Namespace>,
    who: &Who,
    response_timeout: Duration,
    e: RedisError,
) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            op,
            after: response_timeout,
        };
    }
    if is_permission_error(&e) {
        return Error::refused(
            NAME,
            op,
            PermissionDenied {
                namespace: namespace.map(Namespace::to_string),
                source: e,
            },
        );
    }
    let message = if is_auth_error(&e) {
        who.refused(&e)
    } else if explain::is_untrusted_certificate(&e) {
        format!(
            "the Redis server's TLS certificate is not trusted ({e}); rediss:// URLs trust the \
             system's root certificates, a private CA is given with redis::Client::build_with_tls"
        )
    } else {
        return Error::backend(NAME, op, e);
    };
    Error::refused(NAME, op, explain::Explained { message, source: e })
}

/// Who a client authenticates as, for errors about its credentials.
#[derive(Clone, Debug)]
struct Who {
    user: String,
    password_given: bool,
}

impl Who {
    fn of(client: &Client) -> Self {
        let settings = client.get_connection_info().redis_settings();
        Who {
            user: settings.username().unwrap_or("default").to_owned(),
            password_given: settings.password().is_some(),
        }
    }

    /// What to say when the server turned these credentials down with `e`.
    fn refused(&self, e: &RedisError) -> String {
        let user = &self.user;
        if self.password_given {
            format!(
                "the Redis server refused the credentials of user {user:?} (a wrong password, or \
                 an unknown or disabled user): {e}"
            )
        } else {
            format!(
                "the Redis server requires a password and none was given for user {user:?} \
                 (redis://user:password@host/): {e}"
            )
        }
    }
}

fn is_auth_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        // Redis 7 answers an unauthenticated client's longer commands (an
        // EVALSHA) with this protocol error, and hangs up, instead of NOAUTH.
        || e.detail().is_some_and(|d| d.contains("unauthenticated"))
}

/// `SELECT` of a database the server does not have.
fn is_unknown_database(e: &RedisError) -> bool {
    e.detail()
        .is_some_and(|d| d.contains("DB index is out of range"))
}

/// A client's server as a URL (without user or password), for errors.
fn url_of(info: &::redis::ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
        addr @ ConnectionAddr::TcpTls { .. } => format!("rediss://{addr}/{db}"),
        addr => format!("redis://{addr}/{db}"),
    }
}

fn acl_rules(namespace: &str) -> String {
    format!(
        "~{namespace}:* &{namespace}:* +evalsha +script|load +get +set +incr +pexpire +pttl \
         +del +publish +time +zrange +zadd +zrem +hget +hset +hdel +exists +subscribe \
         +unsubscribe +ping"
    )
}

fn is_permission_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || e.code() == Some("NOPERM")
        || e.to_string().contains("NOPERM")
}

/// The Redis user lacks a permission distlock needs (an ACL `NOPERM`).
#[derive(Debug)]
pub struct PermissionDenied {
    namespace: Option<String>,
    source: RedisError,
}

impl fmt::Display for PermissionDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let namespace = self.namespace.as_deref().unwrap_or("<namespace>");
        write!(
            f,
            "the Redis ACL denied a command distlock needs ({}); the user needs: {}",
            self.source,
            acl_rules(namespace)
        )
    }
}

impl std::error::Error for PermissionDenied {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(self.shared.acquire(req))
    }

    fn extend<'a>(&'a self, lease: &'a LeaseRef, ttl: Duration) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.shared.extend(lease, ttl))
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.shared.release(lease))
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        Box::pin(self.shared.inspect(key))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_queues_waiters(true)
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.shared.wait_for_turn(&req.key, Some(req.owner), until))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        // Stops the subscription supervisor; the command connection closes
        // when the last handle to the backend is dropped.
        self.shared.shutdown.cancel();
        Box::pin(async { Ok(()) })
    }
}

/// The release channels this backend's waiters listen on.
#[derive(Default)]
struct Channels {
    map: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    channel: Arc<Channel>,
    waiters: usize,
    idle_since: Instant,
}

#[derive(Default)]
struct Channel {
    /// A release was published, or the subscription connection was lost or
    /// re-established (a release may have been missed).
    released: Notify,
    /// Whom the last notification was for: the owner token of the waiter
    /// whose turn it is, or empty for every waiter.
    next: Mutex<String>,
    /// The subscription was confirmed.
    ready: Notify,
    subscribed: AtomicBool,
}

impl Channel {
    fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::SeqCst);
    }

    /// Wakes the waiter `next` names (every waiter when it is empty).
    fn notify(&self, next: &str) {
        next.clone_into(&mut self.next.lock().unwrap_or_else(|p| p.into_inner()));
        self.released.notify_waiters();
    }

    /// Whether the last notification was for `owner` (hex; empty: anyone).
    fn wakes(&self, owner: &str) -> bool {
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        owner.is_empty() || next.is_empty() || *next == owner
    }
}

/// One waiter's interest in a channel; dropping it leaves.
struct Waiter<'a> {
    channels: &'a Channels,
    name: String,
    channel: Arc<Channel>,
}

impl Channels {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every update is a single insert, remove or counter change.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn join<'a>(&'a self, name: &str, supervisor: &UnboundedSender<String>) -> Waiter<'a> {
        let mut map = self.map();
        let entry = map.entry(name.to_owned()).or_insert_with(|| {
            // The supervisor subscribes it (or re-subscribes everything
            // after its next connect); if it is gone, waits just poll.
            let _ = supervisor.send(name.to_owned());
            Entry {
                channel: Arc::default(),
                waiters: 0,
                idle_since: Instant::now(),
            }
        });
        entry.waiters += 1;
        Waiter {
            channels: self,
            name: name.to_owned(),
            channel: entry.channel.clone(),
        }
    }

    fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    fn with_channels(&self, names: &[String], f: impl Fn(&Channel)) {
        let map = self.map();
        for name in names {
            if let Some(entry) = map.get(name) {
                f(&entry.channel);
            }
        }
    }

    fn subscribed(&self, names: &[String]) {
        self.with_channels(names, |c| {
            c.set_subscribed(true);
            c.ready.notify_waiters();
        });
    }

    fn released(&self, name: &str, next: &str) {
        if let Some(entry) = self.map().get(name) {
            entry.channel.notify(next);
        }
    }

    /// Marks every channel unsubscribed and wakes every waiter.
    fn disconnected(&self) {
        for entry in self.map().values() {
            entry.channel.set_subscribed(false);
            entry.channel.notify("");
        }
    }

    /// Forgets the channels nobody waited on for `linger`; returns them.
    fn sweep(&self, linger: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut idle = Vec::new();
        self.map().retain(|name, entry| {
            let keep = entry.waiters > 0 || now - entry.idle_since < linger;
            if !keep {
                idle.push(name.clone());
            }
            keep
        });
        idle
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut map = self.channels.map();
        if let Some(entry) = map.get_mut(&self.name)
            && Arc::ptr_eq(&entry.channel, &self.channel)
        {
            entry.waiters -= 1;
            entry.idle_since = Instant::now();
        }
    }
}

/// Owns the one subscription connection of a backend.
struct Supervisor {
    client: Client,
    channels: Arc<Channels>,
    shutdown: CancellationToken,
    connection_timeout: Duration,
    response_timeout: Duration,
}

impl Supervisor {
    async fn run(self, mut inbox: UnboundedReceiver<String>) {
        let mut backoff = MIN_BACKOFF;
        let mut warned = false;
        loop {
            let why = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                why = self.session(&mut inbox, &mut backoff) => why,
            };
            self.channels.disconnected();
            match why {
                Ended::Closed => return,
                Ended::Failed(e) => {
                    if is_permission_error(&e) && !warned {
                        warned = true;
                        tracing::warn!(error = %e, "distlock: the Redis ACL denies the release channels; waiters poll instead of being woken");
                    } else {
                        tracing::debug!(error = %e, "distlock: Redis subscription connection failed");
                    }
                }
                Ended::TimedOut(what) => {
                    tracing::debug!(what, "distlock: Redis subscription connection timed out");
                }
            }
            let jittered = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = sleep(jittered) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: connect, subscribe every channel, then serve
    /// messages, new channels and heartbeats until something fails.
    async fn session(
        &self,
        inbox: &mut UnboundedReceiver<String>,
        backoff: &mut Duration,
    ) -> Ended {
        let pubsub = match bounded(
            self.connection_timeout,
            "connect",
            self.client.get_async_pubsub(),
        )
        .await
        {
            Ok(p) => p,
            Err(e) => return e,
        };
        let (mut sink, mut stream) = pubsub.split();
        // Everything queued so far is in the map and subscribed below.
        while inbox.try_recv().is_ok() {}
        let names = self.channels.names();
        if !names.is_empty()
            && let Err(e) =
                bounded(self.response_timeout, "subscribe", sink.subscribe(&names)).await
        {
            return e;
        }
        // Waiters woken when the last connection was lost wait for this:
        // each re-checks its key, catching a release published meanwhile.
        self.channels.subscribed(&names);
        *backoff = MIN_BACKOFF;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            tokio::select! {
                name = inbox.recv() => {
                    let Some(name) = name else { return Ended::Closed };
                    let mut names = vec![name];
                    while let Ok(more) = inbox.try_recv() {
                        names.push(more);
                    }
                    names.sort_unstable();
                    names.dedup();
                    if let Err(e) = bounded(self.response_timeout, "subscribe", sink.subscribe(&names)).await {
                        return e;
                    }
                    self.channels.subscribed(&names);
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        return Ended::Failed(RedisError::from((ErrorKind::Io, "the subscription connection closed")));
                    };
                    let next: String = message.get_payload().unwrap_or_default();
                    self.channels.released(message.get_channel_name(), &next);
                }
                _ = heartbeat.tick() => {
                    if let Err(e) = bounded(self.response_timeout, "ping", sink.ping::<Value>()).await {
                        return e;
                    }
                    let idle = self.channels.sweep(LINGER);
                    if !idle.is_empty()
                        && let Err(e) = bounded(self.response_timeout, "unsubscribe", sink.unsubscribe(&idle)).await
                    {
                        return e;
                    }
                }
            }
        }
    }
}

enum Ended {
    Closed,
    Failed(RedisError),
    TimedOut(&'static str),
}

async fn bounded<T>(
    within: Duration,
    what: &'static str,
    call: impl Future<Output = ::redis::RedisResult<T>>,
) -> std::result::Result<T, Ended> {
    match timeout(within, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Ended::Failed(e)),
        Err(_) => Err(Ended::TimedOut(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    fn names(ns: &str, key: &str) -> RedisKeys {
        RedisKeys::new(&LockKey {
            namespace: Namespace::new(ns).unwrap(),
            key: Key::new(key).unwrap(),
        })
    }

    /// Redis Cluster's hash-tag rule: the first `{`, then the first `}`
    /// after it, if what is between is non-empty.
    fn hash_tag(name: &str) -> &str {
        if let Some(open) = name.find('{')
            && let Some(len) = name[open + 1..].find('}')
            && len > 0
        {
            return &name[open + 1..open + 1 + len];
        }
        name
    }

    #[test]
    fn lock_counter_and_channel_share_a_slot_whatever_braces_the_key_has() {
        for key in ["k", "{a}", "}{", "{}", "{a}{b}", "x{y}z", "{", "}", "🚀{"] {
            let n = names("app", key);
            assert_eq!(hash_tag(&n.lock), hash_tag(&n.fence), "{key}");
            assert_eq!(hash_tag(&n.lock), slot_tag(key), "{key}");
            assert_eq!(hash_tag(&n.channel), slot_tag(key), "{key}");
            assert!(n.lock.starts_with("app:{") && n.fence.starts_with("app:{"));
        }
    }

    #[test]
    fn names_are_injective_and_stable() {
        let all: Vec<_> = [
            ("a", "b"),
            ("a", "b:c"),
            ("a", "b/c"),
            ("a:b", "c"),
            ("ab", "c"),
        ]
        .into_iter()
        .filter(|(ns, _)| Namespace::new(*ns).is_ok())
        .map(|(ns, k)| names(ns, k).lock)
        .collect();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        // Stable across builds: keys written by one version are found by the next.
        assert_eq!(slot_tag("a"), "af63dc4c8601ec8c");
        assert_eq!(names("ns", "a").lock, "ns:{af63dc4c8601ec8c}:lock:a");
    }

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
    }
}
