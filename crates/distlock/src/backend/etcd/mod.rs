//! The etcd backend (cargo feature `etcd`): leases, a fair FIFO queue by
//! create revision, and the create revision as the fencing token.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> distlock::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use distlock::Locker;
//! use distlock::backend::etcd::{EtcdBackend, EtcdOptions};
//!
//! // From a URL: several endpoints, optional user:password, `etcds://` for TLS.
//! let locker = Locker::from_url("etcd://127.0.0.1:2379,127.0.0.1:22379?namespace=billing").await?;
//!
//! // Or with options, or over an `etcd_client::Client` the application already has.
//! let backend = EtcdBackend::connect(
//!     ["127.0.0.1:2379"],
//!     EtcdOptions::new().session_ttl(Duration::from_secs(10)),
//! )
//! .await?;
//! let locker = Locker::builder(Arc::new(backend)).namespace("billing").build()?;
//! # Ok(()) }
//! ```
//!
//! # How locks are stored
//!
//! Each acquisition writes its own key, `/<namespace>/<escaped key>/<owner
//! token as 32 hex digits>`, attached to the backend's session lease. The
//! escaping percent-encodes `/`, `%` and every byte outside printable ASCII,
//! so "a" and "a/b" live under disjoint prefixes (`/ns/a/`, `/ns/a%2Fb/`)
//! and an etcd role can be granted exactly the prefix `/<namespace>/`. Among the keys
//! under one lock's prefix, the one with the lowest create revision holds the
//! lock; the others are waiters, served in create-revision order. The
//! holder's create revision is its fencing token: strictly increasing per
//! key, and durable across etcd restarts.
//!
//! * **Acquire** is one transaction: put our key if it is absent, and read
//!   the lowest entry of the prefix. An uncontended obtain + release is two
//!   writes (the put and a delete); keepalives and reads are not writes.
//!   A single attempt ([`Locker::try_obtain`](crate::Locker::try_obtain))
//!   puts only when the prefix is empty, so it never leaves a queue entry.
//! * **Waiting**: a waiter's key stays queued; it watches only its
//!   predecessor's key (no herd), on one watch stream that all waiters of
//!   the backend share, and re-checks its turn with a read-only
//!   transaction (no raft proposal) at the engine's poll interval. A
//!   wait that ends without the lock — deadline, retries exhausted, close, a
//!   dropped future — deletes its key. A waiter whose key vanished (its lease
//!   expired or was revoked, or an operator deleted it) never takes that as a
//!   grant: its next attempt puts a new key at the back of the queue.
//! * **Release** and **extend** are guarded by the create revision: a
//!   release deletes only if the key still has the create revision it was
//!   granted with; an extend reads the key back and checks the lease.
//! * **inspect** / **is_locked** are one range read.
//!
//! # Leases and TTLs
//!
//! etcd leases have whole-second TTLs and a floor (about 2 s with etcd's
//! default timings), so a lock's TTL is not its lease's TTL:
//!
//! * The backend keeps **one lease per lease TTL in use**, shared by all its
//!   locks, each renewed by **one keepalive stream** (a quarter TTL apart,
//!   and on demand). A lock with TTL `t` uses the lease of TTL
//!   `max(session_ttl, ⌈1.5 t⌉ s)`; with the defaults that is the 5 s
//!   session for TTLs up to 3 s and a 45 s lease for the default 30 s TTL.
//!   Most programs use one TTL, hence one lease and one stream. A lease
//!   of a longer TTL that no lock or waiter has used for
//!   [`EtcdOptions::lease_idle_timeout`] (5 min) is revoked; the
//!   session-TTL lease lives until close.
//! * **While this process runs**, a lock that is not refreshed is deleted
//!   by the backend when its own TTL has passed since the grant or last
//!   extend (guarded by its create revision), so a lock expires after its
//!   TTL even though its lease is kept alive for other locks.
//! * **If this process dies or loses etcd**, its lease expires after the
//!   lease TTL and etcd deletes its keys.
//! * A grant or extend is reported only when the lease is guaranteed (by the
//!   send time of an answered keepalive) to outlive the lock's validity
//!   deadline; a keepalive is sent on demand when it is not. So if
//!   keepalives stop being answered, extends fail and `lost()` fires at the
//!   validity deadline, before etcd can expire the lease. When etcd reports
//!   the lease gone, a new one is created for later obtains; the keepalive
//!   stream is re-opened whenever it breaks or stops answering.
//! * `inspect` reports `expires_in` as the holder's TTL: how long etcd keeps
//!   the key unless the holder refreshes it (a holder that died is freed
//!   when its lease expires instead).
//!
//! # Bounds
//!
//! Every call is bounded: the engine bounds each operation by its timeout
//! and the caller's deadline; dialing by [`EtcdOptions::dial_timeout`],
//! lease creation by [`EtcdOptions::session_timeout`], and the backend's own
//! background calls (keepalives, cleanup, close) by
//! [`EtcdOptions::request_timeout`]. No timeout is set on the
//! `etcd_client::Client` itself, since it would also cut watches short.
//! [`Locker::close`](crate::Locker::close) revokes every lease, which
//! deletes every key of this backend, within the request timeout.
//!
//! # Errors that retrying cannot fix
//!
//! These are [`Error::Refused`] at once, saying what is wrong, never
//! retried until a deadline: credentials etcd turns down (at connect), no
//! user where etcd has auth enabled, a user without a role granting
//! `readwrite` on the namespace's prefix `/<namespace>/` (etcd RBAC), and
//! a server certificate the client does not trust.

mod encode;
mod session;
#[cfg(test)]
mod test_etcd;
mod watch;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

pub use etcd_client;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, LeaseTimeToLiveOptions,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{AcquireRequest, Attempt, Backend, explain};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::LockKey;
use crate::lease::{LeaseRef, OwnerToken};
use session::{LeaseTrouble, Session};
use watch::WatchHub;

/// The seed's `DialTimeout`: how long connecting may take.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The seed's `SessionTTL`: the shortest lease TTL this backend uses.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(5);
/// The seed's `SessionTimeout`: how long creating a lease may take.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one of the backend's own background calls may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a lease kept for longer lock TTLs may go unused before it is
/// revoked.
pub const DEFAULT_LEASE_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

const NAME: &str = "etcd";

/// Connection and session options, with the seed's `EtcdOptions` defaults.
///
/// ```
/// use std::time::Duration;
/// use distlock::backend::etcd::EtcdOptions;
///
/// let options = EtcdOptions::new()
///     .user("app", "secret")
///     .dial_timeout(Duration::from_secs(2))
///     .session_ttl(Duration::from_secs(10));
/// assert!(!format!("{options:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct EtcdOptions {
    user: Option<(String, String)>,
    tls: Option<etcd_client::TlsOptions>,
    dial_timeout: Duration,
    session_ttl: Duration,
    session_timeout: Duration,
    request_timeout: Duration,
    lease_idle_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            user: None,
            tls: None,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            session_ttl: DEFAULT_SESSION_TTL,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            lease_idle_timeout: DEFAULT_LEASE_IDLE_TIMEOUT,
        }
    }
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("tls", &self.tls.is_some())
            .field("dial_timeout", &self.dial_timeout)
            .field("session_ttl", &self.session_ttl)
            .field("session_timeout", &self.session_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("lease_idle_timeout", &self.lease_idle_timeout)
            .finish()
    }
}

impl EtcdOptions {
    /// The defaults: dial timeout 5 s, session TTL 5 s, session timeout
    /// 5 s, request timeout 5 s, no auth, no TLS.
    pub fn new() -> Self {
        Self::default()
    }

    /// Authenticates as `name` with `password`.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Connects with TLS (endpoints without a scheme become `https://`).
    /// The default config trusts the system's root certificates; add a
    /// private CA or a client identity through `etcd_client::TlsOptions`.
    pub fn tls(mut self, tls: etcd_client::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Bounds connecting (and authenticating) to etcd (default 5 s).
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// The shortest lease TTL (default 5 s, rounded up to whole seconds):
    /// how long locks outlive a process that died or lost etcd. Locks with
    /// longer TTLs use longer leases (see the module docs).
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// Bounds creating a lease (default 5 s).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Bounds each of the backend's own background calls: keepalives,
    /// cleanup of expired entries, revoking leases on close (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a lease for locks whose TTL needs more than the session
    /// TTL may go unused (no lock or waiter on it) before it is revoked
    /// (default 5 min). The session-TTL lease itself stays until close.
    pub fn lease_idle_timeout(mut self, timeout: Duration) -> Self {
        self.lease_idle_timeout = timeout;
        self
    }

    /// The user name to authenticate as, if any.
    fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|(name, _)| name.as_str())
    }

    fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("dial_timeout", self.dial_timeout),
            ("session_ttl", self.session_ttl),
            ("session_timeout", self.session_timeout),
            ("request_timeout", self.request_timeout),
            ("lease_idle_timeout", self.lease_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::invalid_options(option, "must be greater than zero"));
            }
        }
        if self.session_ttl > crate::MAX_TTL * 2 {
            return Err(Error::invalid_options(
                "session_ttl",
                "longer than 48 hours",
            ));
        }
        Ok(())
    }
}

/// Locks in etcd. See the [module docs](self) for the layout and the
/// guarantees.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    options: EtcdOptions,
    /// Live sessions by lease TTL in whole seconds. Sessions are cloned out
    /// of it only under its lock, so a count of one means nobody uses it.
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    /// When idle sessions were last looked for.
    idle_scan: Mutex<Instant>,
    /// Serializes lease creation.
    creating: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// Signalled when an entry's release or cleanup ends.
    released: Notify,
    /// Wakes the reaper when an entry with an earlier deadline appears.
    reaper_wake: Arc<Notify>,
    /// The one watch stream all waiters share.
    watches: WatchHub,
    closed: CancellationToken,
}

/// This backend's entries in etcd, by owner token.
#[derive(Default)]
struct State {
    entries: HashMap<OwnerToken, Entry>,
    /// Locks with an entry being deleted: later attempts on them wait for it.
    releasing: HashMap<LockKey, usize>,
    reap_queue: BinaryHeap<Reverse<Due>>,
    /// When the reaper wakes next (`None`: when told to).
    reaper_at: Option<Instant>,
}

struct Entry {
    key: LockKey,
    etcd_key: Vec<u8>,
    session: Arc<Session>,
    ttl: Duration,
    /// The create revision of our key, once an attempt's reply said so.
    revision: Option<i64>,
    granted: bool,
    /// When the reaper deletes the key unless an extend or attempt moves it.
    reap_at: Instant,
    releasing: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    owner: OwnerKey,
}

/// An orderable stand-in for an owner token in the reap queue.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
struct OwnerKey(u128);

impl OwnerKey {
    fn of(owner: OwnerToken) -> Self {
        OwnerKey(u128::from_str_radix(&owner.to_hex(), 16).unwrap_or_default())
    }
    fn owner(self) -> OwnerToken {
        OwnerToken::from_u128(self.0)
    }
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sessions: Vec<i64> = self.inner.sessions().values().map(|s| s.id).collect();
        f.debug_struct("EtcdBackend")
            .field("options", &self.inner.options)
            .field("leases", &sessions)
            .field("entries", &self.inner.state().entries.len())
            .finish_non_exhaustive()
    }
}

fn backend_error(op: &'static str, e: impl Into<crate::BoxError>) -> Error {
    Error::backend(NAME, op, e)
}

/// Maps an etcd client error during `op` on `key` (when there is one) by
/// `user`: what retrying cannot fix — credentials etcd turns down, a role
/// missing on the namespace, a server certificate the client does not
/// trust — to [`Error::Refused`] saying so, the rest to a transient
/// [`Error::Backend`].
fn etcd_error(
    op: &'static str,
    user: Option<&str>,
    key: Option<&LockKey>,
    e: etcd_client::Error,
) -> Error {
    // etcd's rpctypes messages, which are its API (the gRPC codes add
    // nothing to them).
    let status = match &e {
        etcd_client::Error::GRpcStatus(status) => Some(status.message()),
        _ => None,
    };
    let said = |what: &str| status.is_some_and(|m| m.contains(what));
    let m = status.unwrap_or_default();
    let message = match user {
        // ErrGRPCAuthFailed: the password or the user is wrong.
        Some(user) if said("authentication failed") => format!(
            "etcd refused the credentials of user {user:?} (a wrong password or an unknown \
             user): {m}"
        ),
        // ErrGRPCUserEmpty; ErrGRPCInvalidAuthToken, with no user to log in as.
        None if said("user name is empty") || said("invalid auth token") => format!(
            "etcd has authentication enabled and needs a user (etcd://user:password@host): {m}"
        ),
        _ if said("permission denied") => {
            let prefix = key.map_or_else(
                || "/<namespace>/".to_owned(),
                |k| format!("/{}/", k.namespace),
            );
            format!(
                "etcd denied user {:?} access to {prefix} ({m}); the user needs a role with \
                 readwrite permission on the prefix {prefix} (etcdctl role grant-permission \
                 ROLE readwrite {prefix} --prefix)",
                user.unwrap_or_default()
            )
        }
        _ if explain::is_untrusted_certificate(&e) => {
            let m = status.map_or_else(|| e.to_string(), str::to_owned);
            format!(
                "the etcd server's TLS certificate is not trusted ({m}); etcds:// URLs trust the \
                 system's root certificates, a private CA is given with EtcdOptions::tls"
            )
        }
        _ => return backend_error(op, e),
    };
    Error::refused(NAME, op, explain::Explained { message, source: e })
}

fn not_held(key: &LockKey) -> Error {
    Error::NotHeld {
        key: key.key.to_string(),
    }
}

fn lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found"))
}

/// Adds `http://` or `https://` to endpoints given without a scheme.
fn endpoint_urls<E: AsRef<str>>(endpoints: &[E], tls: bool) -> Vec<String> {
    endpoints
        .iter()
        .map(|e| {
            let e = e.as_ref().trim();
            if e.contains("://") {
                e.to_owned()
            } else if tls {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            }
        })
        .collect()
}

impl EtcdBackend {
    /// Connects to `endpoints` (`host:port`, or URLs with `http://` or
    /// `https://`), failing over between them, within the dial timeout.
    pub async fn connect<E: AsRef<str>>(
        endpoints: impl AsRef<[E]>,
        options: EtcdOptions,
    ) -> Result<Self> {
        options.validate()?;
        let endpoints = endpoints.as_ref();
        if endpoints.is_empty() {
            return Err(Error::invalid_options(
                "endpoints",
                "at least one is needed",
            ));
        }
        let urls = endpoint_urls(endpoints, options.tls.is_some());
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.dial_timeout)
            .with_require_leader(true)
            // etcd refuses pings more often than every 5 s by default.
            .with_keep_alive(Duration::from_secs(10), options.dial_timeout);
        if let Some((name, password)) = &options.user {
            // etcd's simple tokens expire (5 min by default): re-authenticate.
            connect = connect
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls.clone());
        }
        let dial = options.dial_timeout;
        let failed = |e| etcd_error("connect", options.user_name(), None, e);
        let mut client =
            match tokio::time::timeout(dial, Client::connect(&urls, Some(connect))).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => return Err(failed(e)),
                Err(_) => {
                    return Err(Error::Timeout {
                        op: "connect",
                        after: dial,
                    });
                }
            };
        // The client dials lazily: make sure a member answers, like the seed's blocking dial.
        match tokio::time::timeout(dial, client.status()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                return Err(Error::Timeout {
                    op: "connect",
                    after: dial,
                });
            }
        }
        Ok(Self::start(client, options))
    }

    /// Uses a client the application already has (the seed's
    /// `NewEtcdWithClient`). The client should have no request timeout of
    /// its own (`ConnectOptions::with_timeout`): it would also cut the
    /// backend's watches short. Needs a tokio runtime.
    pub fn with_client(client: Client, options: EtcdOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self::start(client, options))
    }

    fn start(client: Client, options: EtcdOptions) -> Self {
        let closed = CancellationToken::new();
        let inner = Arc::new(Inner {
            client: client.clone(),
            options,
            sessions: Mutex::new(HashMap::new()),
            idle_scan: Mutex::new(Instant::now()),
            creating: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            released: Notify::new(),
            reaper_wake: Arc::new(Notify::new()),
            watches: WatchHub::start(client.clone(), closed.clone()),
            closed,
        });
        tokio::spawn(reaper(
            Arc::downgrade(&inner),
            inner.reaper_wake.clone(),
            inner.closed.clone(),
        ));
        EtcdBackend { inner }
    }

    /// The etcd client this backend uses (a cheap clone).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The ids of the leases this backend currently holds its entries on.
    pub fn lease_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .inner
            .sessions()
            .values()
            .filter(|s| !s.is_dead())
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The lease TTL a lock with `ttl` is held under:
    /// `max(session_ttl, ⌈1.5 ttl⌉)` in whole seconds.
    pub fn lease_ttl_for(&self, ttl: Duration) -> Duration {
        Duration::from_secs(self.inner.lease_class(ttl))
    }

    /// The etcd key prefix under which `key`'s holder and waiters live.
    pub fn key_prefix(key: &LockKey) -> Vec<u8> {
        encode::lock_prefix(key)
    }
}

impl Inner {
    fn err(&self, op: &'static str, key: Option<&LockKey>, e: etcd_client::Error) -> Error {
        etcd_error(op, self.options.user_name(), key, e)
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease_class(&self, ttl: Duration) -> u64 {
        let floor = self.options.session_ttl.as_secs_f64().ceil() as u64;
        let wanted = (ttl.as_secs_f64() * 1.5).ceil() as u64;
        floor.max(wanted).max(1)
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The live session of `class` (touched), if there is one; retires
    /// idle sessions of other classes on the way.
    fn live_session(&self, class: u64) -> Option<Arc<Session>> {
        let mut sessions = self.sessions();
        let retired = self.retire_idle(&mut sessions, class);
        let found = sessions.get(&class).filter(|s| !s.is_dead()).cloned();
        drop(sessions);
        for session in retired {
            let mut client = self.client.clone();
            let timeout = self.options.request_timeout;
            tracing::debug!(lease = session.id, "distlock: revoking an idle etcd lease");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, client.lease_revoke(session.id)).await;
            });
        }
        if let Some(s) = &found {
            s.touch();
        }
        found
    }

    /// Removes sessions other than `keep` and the session-TTL one that
    /// nobody has used for the idle timeout (looked for at most every half
    /// idle timeout, and every 30 s).
    fn retire_idle(
        &self,
        sessions: &mut HashMap<u64, Arc<Session>>,
        keep: u64,
    ) -> Vec<Arc<Session>> {
        let idle = self.options.lease_idle_timeout;
        let now = Instant::now();
        {
            let mut last = self.idle_scan.lock().unwrap_or_else(|p| p.into_inner());
            if now < *last + (idle / 2).min(Duration::from_secs(30)) {
                return Vec::new();
            }
            *last = now;
        }
        let floor = self.lease_class(Duration::ZERO);
        let idle_classes: Vec<u64> = sessions
            .iter()
            .filter(|(class, s)| {
                **class != keep
                    && **class != floor
                    // Only the map holds it: no entry, no attempt in flight.
                    && Arc::strong_count(s) == 1
                    && s.idle_for(now) >= idle
            })
            .map(|(class, _)| *class)
            .collect();
        idle_classes
            .into_iter()
            .filter_map(|class| sessions.remove(&class))
            .inspect(|s| s.mark_dead())
            .collect()
    }

    /// The live session for lock TTL `ttl`, creating its lease if needed.
    async fn session(&self, ttl: Duration) -> Result<Arc<Session>> {
        let class = self.lease_class(ttl);
        if let Some(s) = self.live_session(class) {
            return Ok(s);
        }
        let _creating = self.creating.lock().await;
        if let Some(s) = self.live_session(class) {
            return Ok(s);
        }
        self.ensure_open()?;
        let timeout = self.options.session_timeout;
        let sent = Instant::now();
        let mut client = self.client.clone();
        let granted =
            match tokio::time::timeout(timeout, client.lease_grant(class as i64, None)).await {
                Ok(Ok(granted)) => granted,
                Ok(Err(e)) => return Err(self.err("lease grant", None, e)),
                Err(_) => {
                    return Err(Error::Timeout {
                        op: "lease grant",
                        after: timeout,
                    });
                }
            };
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let session = Session::start(
            self.client.clone(),
            granted.id(),
            ttl,
            sent,
            self.options.request_timeout,
        );
        tracing::debug!(lease = granted.id(), ?ttl, "distlock: etcd session started");
        if let Some(old) = self.sessions().insert(class, session.clone()) {
            old.stop.cancel();
        }
        // Raced with close: don't leave a lease behind.
        if self.closed.is_cancelled() {
            session.stop.cancel();
            let _ = tokio::time::timeout(timeout, client.lease_revoke(granted.id())).await;
            return Err(Error::Closed);
        }
        Ok(session)
    }

    /// Waits while an entry of this backend for `key` is being deleted, so a
    /// release (or a dropped obtain's cleanup) is ordered before later
    /// attempts of the same backend.
    async fn wait_releases(&self, key: &LockKey) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.state().releasing.contains_key(key) {
                return;
            }
            released.await;
        }
    }

    /// Queues `owner`'s entry for the reaper at `at`; true if the reaper
    /// sleeps past `at` and must be woken.
    #[must_use]
    fn schedule(state: &mut State, owner: OwnerToken, at: Instant) -> bool {
        state.reap_queue.push(Reverse(Due {
            at,
            owner: OwnerKey::of(owner),
        }));
        state
            .reaper_at
            .is_none_or(|sleeping_until| at < sleeping_until)
    }

    /// Marks `owner`'s entry as being deleted; false if it already is.
    fn begin_release(state: &mut State, owner: OwnerToken) -> bool {
        let Some(entry) = state.entries.get_mut(&owner) else {
            return false;
        };
        if entry.releasing {
            return false;
        }
        entry.releasing = true;
        *state.releasing.entry(entry.key.clone()).or_default() += 1;
        true
    }

    /// Ends a release begun by `begin_release`: the entry is forgotten when
    /// `gone`, else kept for the reaper to try again at `retry_at`.
    fn end_release(&self, owner: OwnerToken, gone: bool, retry_at: Instant) {
        let mut state = self.state();
        let state = &mut *state;
        let Some(entry) = state.entries.get_mut(&owner) else {
            return;
        };
        let key = entry.key.clone();
        let wake = if gone {
            state.entries.remove(&owner);
            false
        } else {
            entry.releasing = false;
            entry.reap_at = entry.reap_at.min(retry_at);
            let at = entry.reap_at;
            Self::schedule(state, owner, at)
        };
        if let Some(n) = state.releasing.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                state.releasing.remove(&key);
            }
        }
        self.released.notify_waiters();
        if wake {
            self.reaper_wake.notify_one();
        }
    }

    /// Deletes an entry's key, guarded by its create revision when known.
    /// `Ok(true)` if a key was deleted.
    async fn delete_entry(
        &self,
        key: &LockKey,
        etcd_key: &[u8],
        revision: Option<i64>,
    ) -> Result<bool> {
        let mut client = self.client.clone();
        let delete = TxnOp::delete(etcd_key.to_vec(), None);
        let txn = match revision {
            Some(rev) => Txn::new()
                .when([Compare::create_revision(
                    etcd_key.to_vec(),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then([delete]),
            // Outcome of the put unknown: the name is unique to this owner.
            None => Txn::new()
                .when([Compare::create_revision(
                    etcd_key.to_vec(),
                    CompareOp::Greater,
                    0,
                )])
                .and_then([delete]),
        };
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| self.err("release", Some(key), e))?;
        Ok(resp.succeeded())
    }

    /// Deletes keys on this backend's leases that no entry accounts for: a
    /// put whose reply never came can land after its cleanup ran.
    async fn sweep_orphans(&self) {
        let sessions: Vec<Arc<Session>> = self
            .sessions()
            .values()
            .filter(|s| !s.is_dead())
            .cloned()
            .collect();
        let timeout = self.options.request_timeout;
        for session in sessions {
            let mut client = self.client.clone();
            let listed = tokio::time::timeout(
                timeout,
                client.lease_time_to_live(
                    session.id,
                    Some(LeaseTimeToLiveOptions::new().with_keys()),
                ),
            )
            .await;
            let Ok(Ok(listed)) = listed else { continue };
            for key in listed.keys() {
                let known = encode::owner_of(key)
                    .is_some_and(|owner| self.state().entries.contains_key(&owner));
                if known {
                    continue;
                }
                tracing::debug!(
                    lease = session.id,
                    "distlock: deleting an orphaned etcd entry"
                );
                let txn = Txn::new()
                    .when([Compare::lease(key.clone(), CompareOp::Equal, session.id)])
                    .and_then([TxnOp::delete(key.clone(), None)]);
                let _ = tokio::time::timeout(timeout, client.txn(txn)).await;
            }
        }
    }

    /// Runs `sweep_orphans` a few times over the next request timeout.
    fn sweep_soon(self: &Arc<Self>) {
        let inner = Arc::downgrade(self);
        let closed = self.closed.clone();
        let last = self.options.request_timeout;
        tokio::spawn(async move {
            let start = Instant::now();
            for at in [Duration::from_millis(50), Duration::from_millis(250), last] {
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = tokio::time::sleep_until(start + at) => {}
                }
                let Some(inner) = inner.upgrade() else { return };
                inner.sweep_orphans().await;
            }
        });
    }

    async fn try_acquire(self: &Arc<Self>, req: &AcquireRequest) -> Result<Attempt> {
        self.ensure_open()?;
        // Our own entry for this owner may be the one being deleted (reaped
        // while queued): its next attempt starts afresh.
        self.wait_releases(&req.key).await;
        let mut renewed_lease = false;
        loop {
            match self.attempt(req).await {
                Err(AttemptError::LeaseGone(session)) if !renewed_lease => {
                    // etcd expired or revoked the lease before the keepalive
                    // said so; a new one serves this attempt.
                    session.mark_dead();
                    renewed_lease = true;
                }
                Err(AttemptError::LeaseGone(_)) => {
                    return Err(backend_error(
                        "acquire",
                        "the etcd lease vanished twice in a row",
                    ));
                }
                Err(AttemptError::Other(e)) => return Err(e),
                Ok(attempt) => return Ok(attempt),
            }
        }
    }

    async fn attempt(self: &Arc<Self>, req: &AcquireRequest) -> Result<Attempt, AttemptError> {
        let owner = req.owner;
        let etcd_key = encode::entry_key(&req.key, owner);
        let prefix = encode::lock_prefix(&req.key);
        // Reuse the entry's session (its key is on that lease) unless the lease died.
        let existing = self
            .state()
            .entries
            .get(&owner)
            .map(|e| e.session.clone())
            .filter(|s| !s.is_dead());
        let session = match existing {
            Some(s) => s,
            None => self.session(req.ttl).await?,
        };
        let now = Instant::now();
        // Until a grant, the entry lives at least a lease TTL past each
        // attempt, so a slow poller keeps its place.
        let queued_reap_at = now + req.ttl.max(session.ttl);
        let known;
        let wake;
        {
            let mut state = self.state();
            let state = &mut *state;
            let entry = state.entries.entry(owner).or_insert_with(|| Entry {
                key: req.key.clone(),
                etcd_key: etcd_key.clone(),
                session: session.clone(),
                ttl: req.ttl,
                revision: None,
                granted: false,
                reap_at: queued_reap_at,
                releasing: false,
            });
            if entry.session.id != session.id {
                // The old lease died, and our key with it.
                entry.session = session.clone();
                entry.revision = None;
                entry.granted = false;
            }
            entry.ttl = req.ttl;
            entry.reap_at = entry.reap_at.max(queued_reap_at);
            let at = entry.reap_at;
            known = entry.revision;
            wake = Self::schedule(state, owner, at);
        }
        if wake {
            self.reaper_wake.notify_one();
        }
        // The guarantee must cover the lock's validity, counted from now.
        let target = now + req.ttl;
        session.kick_if_short(target);

        let first_entry = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let reads = || {
            [
                TxnOp::get(etcd_key.clone(), None),
                TxnOp::get(prefix.clone(), Some(first_entry.clone())),
            ]
        };
        let mut found = None;
        if req.will_wait && known.is_some() {
            // Already queued: a read-only transaction (served without a
            // raft proposal) says whether we are first now.
            let (mine, first) = self
                .run_txn(&req.key, Txn::new().and_then(reads()), &session)
                .await?;
            if mine.is_some() {
                found = Some((mine, first));
            }
            // Else our entry vanished: queue again at the back, below.
        }
        let (mine, first) = match found {
            Some(found) => found,
            None => {
                let put = TxnOp::put(
                    etcd_key.clone(),
                    encode::entry_value(req.ttl, req.metadata.as_deref()),
                    Some(PutOptions::new().with_lease(session.id)),
                );
                let guard = if req.will_wait {
                    // Join the queue (once).
                    Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0)
                } else {
                    // One attempt: take it only if nobody holds or waits for it.
                    Compare::create_revision(prefix.clone(), CompareOp::Equal, 0).with_prefix()
                };
                // On success the put's revision (the transaction's) is our
                // entry's create revision: no need to read it back.
                let [_, read_first] = reads();
                let txn = Txn::new()
                    .when([guard])
                    .and_then([put, read_first])
                    .or_else(reads());
                self.run_txn(&req.key, txn, &session).await?
            }
        };
        let holder = first
            .as_ref()
            .map(|kv| encode::holder_info(kv.create_revision(), kv.value()));
        let Some(mine) = mine else {
            // A single attempt that found the lock taken: nothing was written.
            let mut state = self.state();
            if state.entries.get(&owner).is_some_and(|e| !e.releasing) {
                state.entries.remove(&owner);
            }
            return Ok(Attempt::Contended { holder });
        };
        let revision = mine;
        let is_first = first
            .as_ref()
            .is_some_and(|kv| kv.create_revision() == revision);
        {
            let mut state = self.state();
            let Some(entry) = state.entries.get_mut(&owner) else {
                return Err(
                    backend_error("acquire", "the attempt was cleaned up while in flight").into(),
                );
            };
            if let Some(old) = entry.revision.filter(|old| *old != revision) {
                tracing::info!(
                    key = %req.key.key,
                    old, new = revision,
                    "distlock: an etcd queue entry vanished (lease expired or revoked, or deleted); queued again at the back"
                );
                entry.granted = false;
            }
            entry.revision = Some(revision);
        }
        if !is_first {
            return Ok(Attempt::Contended { holder });
        }
        match session.ensure_until(target).await {
            Ok(()) => {}
            Err(LeaseTrouble::Dead) => return Err(AttemptError::LeaseGone(session)),
            Err(LeaseTrouble::TooShort) => {
                return Err(
                    backend_error("acquire", "the lease TTL is shorter than the lock TTL").into(),
                );
            }
        }
        let mut state = self.state();
        let Some(entry) = state.entries.get_mut(&owner) else {
            return Err(
                backend_error("acquire", "the attempt was cleaned up while in flight").into(),
            );
        };
        entry.granted = true;
        // The reaper deletes it one TTL from now unless extended: never
        // before the validity deadline the engine computes.
        entry.reap_at = Instant::now() + req.ttl;
        let at = entry.reap_at;
        let wake = Self::schedule(&mut state, owner, at);
        drop(state);
        if wake {
            self.reaper_wake.notify_one();
        }
        Ok(Attempt::Granted {
            fencing_token: u64::try_from(revision).unwrap_or_default(),
        })
    }

    /// Runs an acquire transaction; returns the create revision of our
    /// entry (from the put, else from reading it) and the lowest entry of
    /// the prefix.
    async fn run_txn(
        &self,
        key: &LockKey,
        txn: Txn,
        session: &Arc<Session>,
    ) -> Result<(Option<i64>, Option<KeyValue>), AttemptError> {
        let mut client = self.client.clone();
        let resp = match client.txn(txn).await {
            Ok(resp) => resp,
            Err(e) if lease_not_found(&e) => return Err(AttemptError::LeaseGone(session.clone())),
            Err(e) => return Err(self.err("acquire", Some(key), e).into()),
        };
        let ops = resp.op_responses();
        let put = ops.iter().any(|op| matches!(op, TxnOpResponse::Put(_)));
        let mut ranges = ops.into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().cloned()),
            _ => None,
        });
        let mine = if put {
            let revision = resp.header().map(|h| h.revision());
            if revision.is_none() {
                return Err(
                    backend_error("acquire", "a transaction reply without a header").into(),
                );
            }
            revision
        } else {
            ranges.next().flatten().map(|kv| kv.create_revision())
        };
        let first = ranges.next().flatten();
        Ok((mine, first))
    }

    async fn extend(&self, lease: &LeaseRef, ttl: Duration) -> Result<()> {
        self.ensure_open()?;
        let now = Instant::now();
        let (etcd_key, revision, session) = {
            let mut state = self.state();
            let Some(entry) = state.entries.get_mut(&lease.owner) else {
                return Err(not_held(&lease.key));
            };
            if !entry.granted || entry.releasing || entry.reap_at <= now {
                return Err(not_held(&lease.key));
            }
            // Moved before the read, so the reaper cannot delete it behind us.
            entry.reap_at = entry.reap_at.max(now + ttl);
            (
                entry.etcd_key.clone(),
                entry.revision.unwrap_or_default(),
                entry.session.clone(),
            )
        };
        let lease_alive = async {
            match session.ensure_until(now + ttl).await {
                Ok(()) => Ok(()),
                Err(LeaseTrouble::Dead) => Err(not_held(&lease.key)),
                Err(LeaseTrouble::TooShort) => Err(backend_error(
                    "extend",
                    "the lease TTL is shorter than the lock TTL",
                )),
            }
        };
        let mut client = self.client.clone();
        let still_ours = async {
            let resp = client
                .get(etcd_key, None)
                .await
                .map_err(|e| self.err("extend", Some(&lease.key), e))?;
            match resp.kvs().first() {
                Some(kv) if kv.create_revision() == revision => Ok(()),
                _ => Err(not_held(&lease.key)),
            }
        };
        let result = tokio::try_join!(still_ours, lease_alive).map(|_| ());
        if matches!(&result, Err(e) if e.is_not_held()) {
            let mut state = self.state();
            let mut wake = false;
            if let Some(entry) = state.entries.get_mut(&lease.owner) {
                // Gone: let the reaper forget it (its guarded delete is a no-op).
                entry.granted = false;
                entry.reap_at = now;
                wake = Self::schedule(&mut state, lease.owner, now);
            }
            drop(state);
            if wake {
                self.reaper_wake.notify_one();
            }
        }
        result
    }

    async fn release(self: &Arc<Self>, lease: &LeaseRef) -> Result<()> {
        // Wait out a release of this very entry already under way (the
        // reaper's, or an earlier call's), then see whether it is still there.
        let (etcd_key, revision, granted) = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut state = self.state();
                let Some(entry) = state.entries.get(&lease.owner) else {
                    return Err(not_held(&lease.key));
                };
                if !entry.releasing {
                    let found = (entry.etcd_key.clone(), entry.revision, entry.granted);
                    Self::begin_release(&mut state, lease.owner);
                    break found;
                }
            }
            released.await;
        };
        // If this future is dropped mid-delete (the engine's timeout), the
        // entry goes back to the reaper instead of staying "releasing".
        let mut guard = ReleaseGuard {
            inner: self,
            owner: lease.owner,
            armed: true,
        };
        let result = self.delete_entry(&lease.key, &etcd_key, revision).await;
        guard.armed = false;
        match result {
            Ok(deleted) => {
                self.end_release(lease.owner, true, Instant::now());
                if revision.is_none() && !deleted {
                    self.sweep_soon();
                }
                // A deleted queue entry never held the lock: NotHeld too.
                if deleted && granted {
                    Ok(())
                } else {
                    Err(not_held(&lease.key))
                }
            }
            Err(e) => {
                // Left to the reaper, which tries again at the entry's deadline.
                self.end_release(lease.owner, false, Instant::now() + Duration::from_secs(1));
                Err(e)
            }
        }
    }

    /// The lowest entry under `key`'s prefix, or the highest one created
    /// before `before` when given, and the revision of the read.
    async fn find(&self, key: &LockKey, before: Option<i64>) -> Result<(Option<KeyValue>, i64)> {
        let options = match before {
            Some(rev) => GetOptions::new()
                .with_prefix()
                .with_max_create_revision(rev - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1),
            None => GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1),
        };
        let mut client = self.client.clone();
        let resp = client
            .get(encode::lock_prefix(key), Some(options))
            .await
            .map_err(|e| self.err("inspect", Some(key), e))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok((resp.kvs().first().cloned(), revision))
    }

    /// Returns when the entry ahead of us (or the holder, if we are not
    /// queued) is deleted, or at `until`.
    async fn wait_for_turn(&self, key: &LockKey, owner: Option<OwnerToken>) -> Result<()> {
        let queued = owner.and_then(|owner| {
            self.state()
                .entries
                .get(&owner)
                .filter(|e| !e.granted)
                .and_then(|e| e.revision)
        });
        let (ahead, revision) = self.find(key, queued).await?;
        let Some(ahead) = ahead else {
            return Ok(()); // Nobody ahead: try now.
        };
        // From the revision of the read: a delete since then is replayed.
        if self.watches.deleted(ahead.key().to_vec(), revision).await {
            Ok(())
        } else {
            Err(backend_error("watch", "the watch ended without a delete"))
        }
    }

    /// `wait_for_turn` bounded by `until`. Returns early only when the entry
    /// ahead was deleted: when etcd cannot be read or watched, it waits
    /// until `until`, so a failing store is not polled in a tight loop.
    async fn wait_until(&self, key: &LockKey, owner: Option<OwnerToken>, until: Instant) {
        let wait = self.wait_for_turn(key, owner);
        if let Ok(Ok(())) = tokio::time::timeout_at(until, wait).await {
            return;
        }
        tokio::time::sleep_until(until).await;
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<HolderInfo>> {
        self.ensure_open()?;
        let (first, _) = self.find(key, None).await?;
        Ok(first.map(|kv| encode::holder_info(kv.create_revision(), kv.value())))
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        let _creating = self.creating.lock().await;
        let sessions: Vec<Arc<Session>> = self.sessions().drain().map(|(_, s)| s).collect();
        let timeout = self.options.request_timeout;
        let revokes = sessions.into_iter().map(|session| {
            let mut client = self.client.clone();
            async move {
                session.stop.cancel();
                if session.is_dead() {
                    return Ok(());
                }
                match tokio::time::timeout(timeout, client.lease_revoke(session.id)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if lease_not_found(&e) => Ok(()),
                    Ok(Err(e)) => Err(self.err("close", None, e)),
                    Err(_) => Err(Error::Timeout {
                        op: "close",
                        after: timeout,
                    }),
                }
            }
        });
        let results = futures::future::join_all(revokes).await;
        self.state().entries.clear();
        self.released.notify_waiters();
        results.into_iter().collect()
    }
}

/// Hands an entry whose release was cut short back to the reaper.
struct ReleaseGuard<'a> {
    inner: &'a Inner,
    owner: OwnerToken,
    armed: bool,
}

impl Drop for ReleaseGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.end_release(
                self.owner,
                false,
                Instant::now() + Duration::from_millis(100),
            );
        }
    }
}

enum AttemptError {
    /// etcd does not know the session's lease any more.
    LeaseGone(Arc<Session>),
    Other(Error),
}

impl From<Error> for AttemptError {
    fn from(e: Error) -> Self {
        AttemptError::Other(e)
    }
}

/// Deletes entries whose TTL passed without an extend (or that a failed
/// release left behind), guarded by their create revision.
async fn reaper(inner: Weak<Inner>, wake_up: Arc<Notify>, closed: CancellationToken) {
    loop {
        let wake = wake_up.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let Some(this) = inner.upgrade() else { return };
        let next = {
            let mut state = this.state();
            let next = state.reap_queue.peek().map(|Reverse(due)| due.at);
            state.reaper_at = next;
            next
        };
        drop(this);
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = wake => {}
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let Some(this) = inner.upgrade() else { return };
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut state = this.state();
            let state = &mut *state;
            while state
                .reap_queue
                .peek()
                .is_some_and(|Reverse(d)| d.at <= now)
            {
                let Some(Reverse(d)) = state.reap_queue.pop() else {
                    break;
                };
                let owner = d.owner.owner();
                let Some(entry) = state.entries.get(&owner) else {
                    continue;
                };
                if entry.releasing {
                    continue;
                }
                if entry.reap_at > now {
                    // Extended since this item was queued (extends move the
                    // deadline without queueing): look again at the new one,
                    // so a lock left unrefreshed still goes one TTL after
                    // its last extend. One item per entry stays queued.
                    let at = entry.reap_at;
                    state.reap_queue.push(Reverse(Due { at, owner: d.owner }));
                    continue;
                }
                due.push((
                    owner,
                    entry.etcd_key.clone(),
                    entry.revision,
                    entry.key.clone(),
                ));
                Inner::begin_release(state, owner);
            }
        }
        for (owner, etcd_key, revision, key) in due {
            let timeout = this.options.request_timeout;
            let result =
                tokio::time::timeout(timeout, this.delete_entry(&key, &etcd_key, revision)).await;
            match result {
                Ok(Ok(deleted)) => {
                    tracing::debug!(key = %key.key, deleted, "distlock: etcd entry expired");
                    this.end_release(owner, true, now);
                    if revision.is_none() {
                        this.sweep_soon();
                    }
                }
                _ => this.end_release(owner, false, Instant::now() + Duration::from_secs(1)),
            }
        }
    }
}

impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(self.inner.try_acquire(req))
    }

    fn extend<'a>(&'a self, lease: &'a LeaseRef, ttl: Duration) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.extend(lease, ttl))
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.release(lease))
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        Box::pin(self.inner.inspect(key))
    }

    fn wait_for_release<'a>(
        &'a self,
        key: &'a LockKey,
        until: Instant,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner.wait_until(key, None, until).await;
            Ok(())
        })
    }

    fn queues_waiters(&self) -> bool {
        true
    }

    fn wait_for_turn<'a>(
        &'a self,
        req: &'a AcquireRequest,
        until: Instant,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner
                .wait_until(&req.key, Some(req.owner), until)
                .await;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.inner.close())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn offline(options: EtcdOptions) -> EtcdBackend {
        // The client dials lazily: nothing listens there, and nothing needs to.
        let client = Client::connect(["127.0.0.1:9"], None).await.unwrap();
        EtcdBackend::with_client(client, options).unwrap()
    }

    #[tokio::test]
    async fn lock_ttls_map_to_whole_second_leases_of_at_least_one_and_a_half_ttls() {
        let backend = offline(EtcdOptions::new()).await;
        let lease = |ms| backend.lease_ttl_for(Duration::from_millis(ms)).as_secs();
        assert_eq!(lease(300), 5, "short locks share the session lease");
        assert_eq!(lease(3_333), 5);
        assert_eq!(lease(3_334), 6);
        assert_eq!(lease(30_000), 45, "the default TTL");
        let short = offline(EtcdOptions::new().session_ttl(Duration::from_millis(1500))).await;
        assert_eq!(short.lease_ttl_for(Duration::from_millis(300)).as_secs(), 2);
    }

    #[tokio::test]
    async fn options_are_validated() {
        let client = Client::connect(["127.0.0.1:9"], None).await.unwrap();
        for (options, name) in [
            (
                EtcdOptions::new().dial_timeout(Duration::ZERO),
                "dial_timeout",
            ),
            (
                EtcdOptions::new().session_ttl(Duration::ZERO),
                "session_ttl",
            ),
            (
                EtcdOptions::new().session_timeout(Duration::ZERO),
                "session_timeout",
            ),
            (
                EtcdOptions::new().request_timeout(Duration::ZERO),
                "request_timeout",
            ),
        ] {
            match EtcdBackend::with_client(client.clone(), options) {
                Err(Error::InvalidOptions { option, .. }) => assert_eq!(option, name),
                other => panic!("expected InvalidOptions for {name}, got {other:?}"),
            }
        }
        let none: [&str; 0] = [];
        assert!(
            EtcdBackend::connect(none, EtcdOptions::new())
                .await
                .is_err()
        );
    }

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(
            endpoint_urls(&["h:1", "https://x:2"], false),
            ["http://h:1", "https://x:2"]
        );
        assert_eq!(endpoint_urls(&["h:1"], true), ["https://h:1"]);
    }
}
