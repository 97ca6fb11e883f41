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
//!   with the lock's TTL (Redis expires it);
//! * `NS:{H}:fence:K` — the key's fencing counter: the last token granted,
//!   written by every grant, without a TTL, so it outlives the lock. It
//!   lives forever: one small string (about 60 bytes) per distinct lock
//!   key ever used; delete it when a key is retired for good (tokens stay
//!   increasing, see below). While waiters may be queued it holds the
//!   token *negated*: that is the queue flag, raised by the first waiter
//!   that queues and cleared by whichever script finds the queue empty;
//! * `NS:{H}:queue:K` and `NS:{H}:waiting:K` — while processes wait: the
//!   waiters' queue (a sorted set of owner tokens by arrival) and their
//!   leases (a hash), both expiring a waiter lease after the last waiter's
//!   last attempt; read only when the flag is raised;
//! * `NS:{H}:released:K` — the pub/sub channel every grant and release
//!   publishes on (see [Waiting](#waiting) and [Observing](#observing));
//! * while permits hold the key (see [Permits](#permits)): the lock holds
//!   the marker `*<limit>` instead of a holder, and `NS:{H}:expiries:K` (a
//!   sorted set: owner token → expiry, server time in ms) and
//!   `NS:{H}:permits:K` (a hash: owner token → `<fencing token>:<metadata>`)
//!   hold the permits; all three expire together with the last permit.
//!
//! # Server work per operation
//!
//! Everything is one Lua script call (one round trip) unless said:
//!
//! * an uncontended acquire sends the lock and the counter only (the lean
//!   call): `MGET`, `TIME`, `SET` (counter), `PUBLISH` (of `+`, for
//!   observers, see [Observing](#observing)), `SET PX` (lock). When the flag
//!   is raised, or a waiting attempt finds the lock held, the lean call
//!   answers that the queue is needed and the attempt is sent again with
//!   the queue's keys (one more round trip, only for the first attempt of a
//!   waiter: an owner known to be queued sends the full call at once);
//! * a release: `MGET`, `DEL` and a `PUBLISH`: to the queue's head (after
//!   a `ZRANGE`) when the flag is raised, else of `-`, for observers;
//! * an extend: `GET`, `PEXPIRE`; `extend_all` does the same for up to 256
//!   locks per script call, all chunks sent at once;
//! * inspect: `GET`, `PTTL`, read-only;
//! * a permit's acquire, release and extend: one full call each, which
//!   also reads the permits (about 10 commands, plus one per expired
//!   permit it forgets); `holders`: `GET`, `TIME`, `ZRANGE` and one `HGET`
//!   per live permit. A plain lock's calls never touch the permits' keys.
//!
//! The names are injective, all begin with `NS:` (so an ACL user can be
//! limited to `~NS:*` keys and `&NS:*` channels), and the first `{...}` in
//! each is `{H}` — namespaces contain no braces — so a lock and the keys
//! beside it always share one Redis Cluster hash slot, whatever braces `K`
//! contains.
//!
//! # Permits
//!
//! Semaphores and the readers of reader-writer locks
//! ([`Share::Permit`](crate::Share::Permit)) live beside the lock, and every
//! permit is its own lease: its own owner, TTL, fencing token and metadata.
//!
//! * **The marker.** While permits hold the key, the lock's value is
//!   `*<limit>` with a TTL set to the latest permit expiry. A plain
//!   acquire (whose lean call reads only the lock and the counter) so sees
//!   the key taken, and sends its full call, which reads the permits; a
//!   plain extend or release never matches the marker. The plain lock path
//!   is unchanged: ten commands an uncontended cycle, counting the two
//!   `PUBLISH`es for observers.
//! * **Admission**, in one script: a permit is granted when the lock holds
//!   no holder, the live permits are fewer than the limit, and no live queue
//!   entry is ahead; permits that expired are forgotten first. A limit
//!   other than the marker's, while permits live, is answered with
//!   [`Error::LimitMismatch`](crate::Error::LimitMismatch) at once.
//! * **One counter**: permits and locks draw their tokens from the key's
//!   fencing counter, `max(counter + 1, server clock in µs)`, so a writer's
//!   token exceeds every earlier reader's and a reader's the last writer's.
//! * **No writer starvation**: waiters of both modes share the one FIFO
//!   queue, and only its head may be admitted (a permit also when others
//!   hold permits). A waiting writer therefore blocks every permit asked for
//!   after it; its waiter lease ends its entry about a second after its
//!   process dies. A permit granted to the head with places left wakes the
//!   next waiter at once.
//! * **Releases and expiry**: releasing a permit resets the marker's TTL
//!   to the latest expiry left, or deletes the marker and the permits' keys
//!   with the last permit; permits never released expire with their keys.
//!   Either way nothing of the key is left but its counter.
//! * [`holders`](crate::Locker::holders) lists the live permits oldest
//!   first (by fencing token); [`inspect`](crate::Locker::inspect) names
//!   the latest grant.
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
//!   A lost counter also drops the queue flag: until the next waiter's
//!   attempt raises it again, one grant may skip the queue (fairness, not
//!   safety, for that moment).
//! * **Eviction breaks mutual exclusion**: with any `maxmemory-policy`
//!   other than `noeviction`, Redis may evict a live lock. The backend reads
//!   the policy on connect ([`RedisBackend::maxmemory_policy`]) and logs a
//!   warning when it can evict.
//! * No Redlock: one server, one Sentinel-managed master, or one Redis
//!   Cluster (see [URLs](#urls) and [Replication](#replication)).
//!
//! # URLs
//!
//! * `redis://[user:password@]host:port/db` and `rediss://...` (TLS): one
//!   server, as redis-rs reads the URL.
//! * `redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/MASTER_NAME`
//!   (sentinel port 26379 by default): the master the sentinels monitor as
//!   `MASTER_NAME`. The user and password are the master's (and its
//!   replicas'); the sentinels are asked without. A command that finds
//!   the master gone, timed out or demoted (`READONLY`) asks the sentinels
//!   again, and the next attempt goes to the new master; the subscription
//!   connection follows and every waiter re-checks its key.
//! * `redis+cluster://[user[:password]@]host[:port][,host[:port]...]` (port
//!   6379 by default): seed nodes of a Redis Cluster; redis-rs's async
//!   cluster client finds the rest and follows `MOVED`, `ASK` and
//!   failovers. Every key of one lock shares a hash tag, so each script
//!   runs on one slot; releases publish on the key's shard channel
//!   (`SPUBLISH`), which the waiters subscribe with `SSUBSCRIBE` on the
//!   slot's node.
//! * `rediss+sentinel://` and `rediss+cluster://`: the same over TLS
//!   (to the sentinels and to every node).
//!
//! Every `rediss` form trusts the system's root certificates, or instead
//! those in the PEM file the `SSL_CERT_FILE` environment variable names
//! (rustls-native-certs reads it), which is how a private CA is trusted
//! through a URL (the CLI's tests do so on both topologies); over one
//! server, [`RedisBackend::builder`] also takes a client built with
//! `redis::Client::build_with_tls`.
//!
//! Every form takes `?namespace=NAME` and `?replicas=N`
//! ([`RedisBackendBuilder::replicas`]). A bad URL (no master name, an empty
//! or bad host, a path on a cluster URL, an unknown parameter) and a master
//! name no sentinel knows are [`Error::InvalidUrl`](crate::Error::InvalidUrl) at once.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> distlock::Result<()> {
//! use distlock::Locker;
//!
//! let sentinel = Locker::from_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/main").await?;
//! let cluster = Locker::from_url("redis+cluster://10.0.1.1:7000,10.0.1.2:7000?replicas=1").await?;
//! # Ok(()) }
//! ```
//!
//! # Replication
//!
//! Redis replicates asynchronously: a master that fails right after a
//! grant can be replaced by a replica that never saw it, and that replica
//! grants the lock again. So after a grant or an extend the backend sends
//! `WAIT n timeout` on the same connection, and hands the grant out only
//! when `n` replicas acknowledged it; a grant not acknowledged within
//! [`RedisBackendBuilder::replica_timeout`] is released again and the
//! attempt fails with a transient error, which the engine retries within
//! its deadline. By default `n` is 1 when the master that takes the
//! write has a replica in the topology's own view, else 0: under Sentinel
//! a replica the sentinels list and do not deem down; on a cluster a
//! replica of the key's master not flagged `fail`; on one server a
//! connected replica. Not the master's connected replicas: a master cut
//! off from its replicas has none connected and would grant alone while
//! one of them is promoted over it. The count is taken on connect, every
//! second after, and again when a write falls short; a count that cannot
//! be read keeps the last one (until the first, one replica on Sentinel
//! and Cluster). So a replica that dies for good stops grants until the
//! topology deems it down (Sentinel's `down-after-milliseconds`, the
//! cluster's node timeout), and a shard whose last replica took over
//! grants unacknowledged until a replica joins it. Under Sentinel a master
//! that falls short is trusted only once the sentinels confirm it is still
//! the master: a master cut off and replaced takes writes when it comes
//! back, until they demote it.
//!
//! On a cluster, a write to a slot being migrated runs on the importing
//! node once its keys moved there (the client follows `ASK`); the backend
//! asks the key's node its `CLUSTER MYID` alongside the `WAIT` and, when
//! another node took the write, waits there too.
//!
//! What this can and cannot promise: an acknowledged grant is on two nodes,
//! so the loss of one node does not lose it; but a replica that
//! acknowledged can still lose it (it restarts without persistence) and
//! Sentinel or the cluster may promote a replica that did not acknowledge.
//! `WAIT` narrows the window; it does not make Redis a consensus store.
//! The protection that always holds is the fencing token, which never goes
//! back (see above): a store that checks tokens refuses the stale holder.
//!
//! `WAIT` blocks the connection it is sent on until the replicas answer
//! (well under a millisecond on a healthy link), so commands of other
//! lockers behind it on the shared connection wait too; with a replica
//! that stopped answering, up to the replica timeout.
//!
//! # ACL
//!
//! A Redis user needs the keys `~NS:*`, the channels `&NS:*` and the
//! commands listed by [`RedisBackend::required_acl`], on every node (ACL
//! users are not replicated: set them on replicas too, which may become
//! masters). The list serves every topology: the shard channel commands
//! (`SPUBLISH`, `SSUBSCRIBE`), `CLUSTER SLOTS`, `CLUSTER NODES` and
//! `CLUSTER MYID` on a cluster, `ROLE` for the Sentinel lookup, `INFO` and
//! `WAIT` for replica acknowledgement. Under Sentinel the sentinels are
//! asked `SENTINEL REPLICAS` too (a sentinel ACL user needs it). A
//! missing permission is reported as an [`Error::Refused`](crate::Error::Refused) whose message
//! names what is needed.
//!
//! # Errors that retrying cannot fix
//!
//! These are reported at once, never retried until a deadline: an ACL
//! `NOPERM` and credentials the server turns down (`WRONGPASS`, `NOAUTH`)
//! are [`Error::Refused`](crate::Error::Refused) naming the user, as is a server certificate the
//! client does not trust; a database index the server does not have
//! (`/99` with `databases 16`) is an [`Error::InvalidUrl`](crate::Error::InvalidUrl).
//!
//! # Waiting
//!
//! Waiters are served in order of arrival across processes. An attempt
//! that waits and does not get the lock joins the key's queue in Redis
//! (ordered by arrival in µs of server time, each strictly after the one
//! before); a free lock, or a free place among permits, goes only to the
//! head of the queue (or to anyone when the queue is empty: so
//! [`Locker::try_obtain`](crate::Locker::try_obtain) fails while others
//! wait). Each attempt renews the waiter's lease
//! ([`RedisBackendBuilder::waiter_lease`]); a waiter that stops asking —
//! its process died, or its retry delay is longer than the lease — is
//! dropped from the queue when its lease runs out, so it delays the others
//! by at most one lease and never blocks them. A wait that ends without
//! the lock leaves the queue at once.
//!
//! A waiter subscribes to its key's release channel. A release (or a
//! waiter leaving the queue of a free lock) publishes the owner token of
//! the queue's head, and only that waiter wakes; the others sleep on.
//! With nobody queued only the observers' `-` is published, which waiters
//! ignore: a waiter that lost its place
//! (retry delay longer than its lease) finds out by polling. Each
//! backend has at most one subscription connection, shared by all its
//! waiters and opened on first use; a supervisor task re-connects and
//! re-subscribes it after failures and wakes every waiter when it does (a
//! release may have been missed). Every wait is also bounded by the
//! engine's retry delay and the holder's remaining TTL, so a lost
//! notification costs at most one poll interval.
//!
//! # Observing
//!
//! [`Locker::observe`](crate::Locker::observe) listens on the same
//! channel, over the same subscription connection: every grant publishes
//! `+` and every release `-` (or the head's token, when waiters are
//! queued), from inside the script, so no round trip is added and waiters
//! ignore the two markers. An observer is woken by the publish and reads
//! the key again; expiry publishes nothing (Redis would need keyspace
//! notifications, a server setting), so a leader that expired is seen at
//! the observer's next poll or when its time left runs out. On a cluster
//! both go out with `SPUBLISH` on the key's shard channel, which the
//! subscription supervisor subscribes on the slot's node (`SSUBSCRIBE`),
//! as for waiters (see [URLs](#urls)). `PUBLISH` (`SPUBLISH`) and the
//! `&NS:*` channels were already needed for releases: observing needs no
//! other ACL rule.
//!
//! With replica acknowledgement on
//! (see [Replication](#replication)) a grant is in the store, and
//! published, before its `WAIT` answers: an observer can see a holder
//! whose grant is then withdrawn for want of acknowledgement. That term
//! never leads: the grant is handed to no caller, and every later grant
//! has a greater term, so what an observer sees still increases. (Seen by
//! the CLI's `leader --watch` test, on a Sentinel set whose master did not
//! stream to its replica yet: the first `WAIT` there took a second.)

mod builder;
mod conn;
mod connect;
mod errors;
mod keys;
mod pubsub;
mod replica_view;
mod replicas;
mod scripts;
mod sentinel;
mod shard;
#[cfg(test)]
mod tests;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::backend::{AcquireRequest, Attempt, Backend, Capabilities, Renewal};
use crate::error::Result;
use crate::holder::{HolderInfo, Holders};
use crate::key::LockKey;
use crate::lease::LeaseRef;

pub use builder::{
    DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RECONNECT_RETRIES, DEFAULT_REPLICA_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_WAITER_LEASE, RedisBackend, RedisBackendBuilder,
};
pub use errors::PermissionDenied;
pub use keys::RedisKeys;

/// The backend's name in errors and traces.
const NAME: &str = "redis";

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(self.shared.acquire(req))
    }

    fn extend<'a>(&'a self, renewal: &'a Renewal) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.shared.extend(renewal))
    }

    fn extend_all<'a>(&'a self, renewals: &'a [Renewal]) -> BoxFuture<'a, Vec<Result<()>>> {
        Box::pin(self.shared.extend_all(renewals))
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.shared.release(lease))
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        Box::pin(self.shared.inspect(key))
    }

    fn holders<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Holders>> {
        Box::pin(self.shared.holders(key))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_queues_waiters(true)
            .with_permits(true)
            .with_notifies_observers(true)
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(
            self.shared
                .wait_for_turn(&req.key, Some(req.owner), req.share, until),
        )
    }

    fn watch<'a>(&'a self, key: &'a LockKey, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.shared.watch_holders(key, until))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        // Stops the subscription supervisor; the command connection closes
        // when the last handle to the backend is dropped.
        self.shared.shutdown.cancel();
        Box::pin(async { Ok(()) })
    }
}
