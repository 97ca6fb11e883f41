//! The etcd backend (cargo feature `etcd`): leases, a fair FIFO queue by
//! create revision for locks and permits alike, and the revision of each
//! grant as the fencing token.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> distlock::Result<()> {
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
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
//! token as 32 hex digits>`, attached to one of the backend's leases. The
//! escaping percent-encodes `/`, `%` and every byte outside printable ASCII,
//! so "a" and "a/b" live under disjoint prefixes (`/ns/a/`, `/ns/a%2Fb/`)
//! and an etcd role can be granted exactly the prefix `/<namespace>/`. The
//! keys under one lock's prefix form its queue, in create-revision order;
//! each key's value records its mode: a lock (exclusive: a plain lock or a
//! writer), or a permit of a limit (a semaphore's; a reader's is
//! [`Share::READERS`](crate::Share::READERS)). The holders are the longest
//! head of the queue that can hold together: the first key alone if it is
//! exclusive, else the leading permits of the first one's limit, up to
//! that limit. The others wait, and arrival order decides across modes: a
//! waiting writer holds up every reader behind it, so writers never starve.
//! Keys ahead of a waiter only leave, so one once among the holders stays
//! there until it goes.
//!
//! The fencing token of a grant is the revision of the put that made it
//! (the grant's own key, or the move below): strictly increasing per key
//! over every grant, whatever its mode, in the order grants are made, even
//! when several permits come free at once; durable across etcd restarts.
//! A grant asked for again by its owner (a reply lost) is rewritten with
//! its new deadline and the token it keeps, recorded in the value.
//!
//! * **Acquire** is one transaction: if the prefix is empty, put our key on
//!   the lease of the lock's TTL (a grant); else a lock joins the queue,
//!   putting its key on the backend's **waiters' lease** if it is absent;
//!   and it reads the head of the queue. A permit that finds the key not
//!   free reads the head first: if it fits beside the holders (all permits
//!   of its limit, fewer than the limit, nobody waiting), it puts its key
//!   in a second transaction guarded on no key having been created under
//!   the prefix since that read, a grant; else it joins the queue as a lock
//!   does; beside what this backend last saw of the queue (its own
//!   grants' reads, less its own deletions since), it sends that guarded
//!   put at once. An uncontended obtain + release is two writes (the put
//!   and a delete), a permit beside others too; keepalives and reads are
//!   not writes. A single attempt ([`Locker::try_obtain`](crate::Locker::try_obtain))
//!   puts only when it is granted, so it never leaves a queue entry.
//! * **Limits**: a permit asked for with another limit than the one the
//!   permits holding the key share is refused with [`Error::LimitMismatch`]
//!   at once, found by the read before it writes; a queued permit that sees
//!   the key held by permits of another limit deletes its key and is
//!   refused too.
//! * **Waiting**: a waiter's key stays queued, and it watches the one
//!   change without which it cannot be granted, on one watch stream that
//!   all waiters of the backend share: a lock, its predecessor's deletion;
//!   a permit behind a lock, that lock's deletion (the permits behind one
//!   writer are granted together, so woken together); the first permit
//!   behind a full set of holders, any deletion under the prefix (any
//!   holder's release lets it in); a permit behind another waiting permit,
//!   that one's change (its grant moves its key, a put), so one release
//!   wakes one waiter, not every one. It re-checks its turn with a
//!   read-only transaction (no raft proposal) at the engine's poll
//!   interval, or not at all when its wait had read every entry ahead of
//!   it and the deletion it saw lets it in (entries ahead only leave).
//!   Once granted, it moves its key onto the lease of the lock's TTL with a
//!   put guarded by its create revision, which a put keeps. A
//!   wait that ends with the lock costs three writes (queue, move, delete),
//!   one that ends without it — deadline, retries exhausted, close, a
//!   dropped future — two (its key deleted). A waiter whose key vanished
//!   (its lease expired or was revoked, or an operator deleted it) never
//!   takes that as a grant: its next attempt puts a new key at the back of
//!   the queue.
//! * **A dead waiter** — its process died, or it lost etcd — holds up the
//!   waiters behind it until its key goes with the waiters' lease: the
//!   lease's TTL ([`EtcdOptions::waiter_lease`]; etcd grants 2 s at the
//!   least with its default timings) after its last answered keepalive,
//!   plus up to 0.5 s until etcd's expiry check, whatever its lock TTL:
//!   **about 2.5 s**, measured 2.3–2.5 s from the holder's release to the
//!   next waiter's grant. A waiter of a live process whose obtain stopped
//!   polling keeps its place for its lock's TTL (at least the waiters'
//!   lease) after its last attempt, then the backend deletes its key.
//! * **Release** and **extend** act on the owner's own key, guarded by its
//!   create revision: a release deletes only if the key still has the
//!   create revision it was granted with; an extend reads the key back and
//!   checks the lease. Each permit is its own key, so it expires, extends
//!   and releases alone.
//! * **inspect** / **is_locked** / **holders** are a range read of the
//!   queue and a lease read per holder lease (its time left), never a
//!   write; `inspect` reports the latest grant of a key held by permits.
//! * **Observing** ([`Locker::observe`](crate::Locker::observe)): its
//!   `watch` is a watch on the key's prefix, on the waiters' shared
//!   stream, woken by any put or delete there (a grant, a queue entry, a
//!   release, an expiry, the reaper's cleanup), from the highest revision
//!   this backend has seen when the observer armed it before its read, so
//!   nothing after that read is missed. A broken stream or a compacted
//!   revision leaves the observer to its poll.
//!
//! # Leases and TTLs
//!
//! etcd leases have whole-second TTLs and a floor (about 2 s with etcd's
//! default timings), so a lock's TTL is not its lease's TTL:
//!
//! * The backend keeps **one lease per lease TTL in use**, shared by all its
//!   locks, plus the waiters' lease once one of its obtains had to queue,
//!   each renewed by **one keepalive stream** (a quarter TTL apart,
//!   and on demand). A lock with TTL `t` uses the lease of TTL
//!   `max(session_ttl, ⌈1.5 t⌉ s)`; with the defaults that is the 5 s
//!   session for TTLs up to 3 s and a 45 s lease for the default 30 s TTL.
//!   Most programs use one TTL, hence one lease and one stream (two when
//!   they wait). A lease of a longer TTL, or the waiters' lease, that no
//!   lock or waiter has used for [`EtcdOptions::lease_idle_timeout`]
//!   (5 min) is revoked; the session-TTL lease lives until close.
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
//! * `inspect` reports as `expires_in` how long etcd keeps the lock unless
//!   its holder refreshes it. Extends are reads, not writes, so etcd knows
//!   only the deadline written with the grant (grant + TTL, on the
//!   holder's wall clock: off by the hosts' clock offset): until it, the
//!   time left to it (exact for a lock nobody extended, short of the truth
//!   for one extended since); after it (the holder extended the lock), the
//!   TTL, the most a holder that stops extending keeps it. Never more than
//!   the time left on the holder's lease (whole seconds, rounded down),
//!   which is what counts once the holder's process is gone. One lease
//!   read more than a plain range read.
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

mod acquire;
mod admission;
mod encode;
mod entries;
mod errors;
mod extend;
mod leases;
mod options;
mod reads;
mod reaper;
mod session;
#[cfg(test)]
mod test_etcd;
#[cfg(test)]
mod test_permits;
#[cfg(test)]
mod test_queue;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use etcd_client;
use etcd_client::{Client, ConnectOptions};
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{AcquireRequest, Attempt, Backend, Capabilities, Renewal, explain};
use crate::error::{Error, Result};
use crate::holder::{HolderInfo, Holders};
use crate::key::LockKey;
use crate::lease::LeaseRef;
use session::Session;
use watch::WatchHub;

use entries::{Deleted, ReleaseGuard, State};
use errors::{etcd_error, lease_not_found, not_held};
pub use options::{
    DEFAULT_DIAL_TIMEOUT, DEFAULT_LEASE_IDLE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT, DEFAULT_SESSION_TTL, DEFAULT_WAITER_LEASE, EtcdOptions,
};
use reaper::reaper;

const NAME: &str = "etcd";

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
    /// The one watch stream all waiters and observers share.
    watches: WatchHub,
    /// The highest store revision a response (a read, a watch event) has
    /// told this backend; never above etcd's current one, so a watch armed
    /// before a read and started just after `seen` misses nothing that
    /// read did not see.
    seen: Arc<AtomicI64>,
    closed: CancellationToken,
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
        let seen = Arc::new(AtomicI64::new(0));
        let inner = Arc::new(Inner {
            client: client.clone(),
            options,
            sessions: Mutex::new(HashMap::new()),
            idle_scan: Mutex::new(Instant::now()),
            creating: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            released: Notify::new(),
            reaper_wake: Arc::new(Notify::new()),
            watches: WatchHub::start(client.clone(), closed.clone(), seen.clone()),
            seen,
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

    fn ensure_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    async fn release(self: &Arc<Self>, lease: &LeaseRef) -> Result<()> {
        // Wait out a release of this very entry already under way (the
        // reaper's, or an earlier call's) and an attempt in flight on it (of
        // an obtain dropped mid-attempt), then see whether it is still there.
        let (etcd_key, revision, granted) = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut state = self.state();
                // In another mode, it is not this lease.
                let Some(entry) = state
                    .entries
                    .get(&lease.owner)
                    .filter(|e| e.share == lease.share)
                else {
                    return Err(not_held(&lease.key));
                };
                let found = (entry.etcd_key.clone(), entry.revision, entry.granted);
                if Self::begin_release(&mut state, lease.owner) {
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
                self.end_release(lease.owner, Some(deleted), Instant::now());
                if revision.is_none() && deleted == Deleted::Gone {
                    self.sweep_soon();
                }
                // A deleted queue entry never held the lock: NotHeld too.
                if deleted == Deleted::Yes && granted {
                    Ok(())
                } else {
                    Err(not_held(&lease.key))
                }
            }
            Err(e) => {
                // Left to the reaper, which tries again at the entry's deadline.
                self.end_release(lease.owner, None, Instant::now() + Duration::from_secs(1));
                Err(e)
            }
        }
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

impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(self.inner.try_acquire(req))
    }

    fn extend<'a>(&'a self, renewal: &'a Renewal) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.extend(renewal))
    }

    fn extend_all<'a>(&'a self, renewals: &'a [Renewal]) -> BoxFuture<'a, Vec<Result<()>>> {
        Box::pin(self.inner.extend_all(renewals))
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.release(lease))
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        Box::pin(self.inner.inspect(key))
    }

    fn holders<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Holders>> {
        Box::pin(self.inner.holders(key))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_queues_waiters(true)
            .with_permits(true)
            .with_notifies_observers(true)
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.wait_until(req, until))
    }

    fn watch<'a>(&'a self, key: &'a LockKey, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.watch_holders(key, until))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.inner.close())
    }
}

#[cfg(test)]
mod tests;
