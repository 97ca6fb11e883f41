//! Permits (semaphores, reader-writer locks) against a real redis-server:
//! one per test process, or a fresh one for tests that count commands.
//! Separate lockers get separate backends (own connections), as separate
//! processes would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use distlock_testkit::server::{ServerProcess, free_port, require_binary};
use tokio::time::{Instant, sleep, timeout};

use super::{RedisBackend, RedisBackendBuilder, RedisKeys};
use crate::backend::{AcquireRequest, Attempt, Backend, Renewal};
use crate::{
    Error, Key, LeaseRef, LockKey, Locker, Namespace, ObtainOptions, OwnerToken, RetryStrategy,
    Share,
};

/// Extra time allowed for scheduling on a loaded machine.
const SLACK: Duration = Duration::from_millis(700);

struct Server {
    _process: ServerProcess,
    url: String,
}

impl Server {
    fn start() -> Self {
        let port = free_port();
        let args = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
            .into_iter()
            .chain(["--save", "", "--appendonly", "no"])
            .map(str::to_owned)
            .collect();
        let binary = require_binary("redis-server", "redis-server");
        Server {
            _process: ServerProcess::start("redis-permits", binary, args, vec![port]),
            url: format!("redis://127.0.0.1:{port}/"),
        }
    }

    async fn admin(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &mut ::redis::Cmd) -> T {
        cmd.query_async(&mut self.admin().await).await.unwrap()
    }

    /// Every key of `namespace` but the fencing counters.
    async fn leftovers(&self, namespace: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .query(::redis::cmd("KEYS").arg(format!("{namespace}:*")))
            .await;
        keys.retain(|k| !k.contains("}:fence:"));
        keys
    }

    /// How many times the server ran `command` (INFO commandstats).
    async fn calls(&self, command: &str) -> u64 {
        let info: String = self.query(::redis::cmd("INFO").arg("commandstats")).await;
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Waits (bounded) until `check` holds.
    async fn until<F: AsyncFn(&Server) -> bool>(&self, what: &str, check: F) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check(self).await {
            assert!(Instant::now() < deadline, "never: {what}");
            sleep(Duration::from_millis(5)).await;
        }
    }

    fn backend(&self) -> RedisBackendBuilder {
        RedisBackend::builder(::redis::Client::open(self.url.as_str()).unwrap())
    }

    async fn locker(&self, namespace: &str) -> Locker {
        let backend = self.backend().build().await.unwrap();
        Locker::builder(Arc::new(backend))
            .namespace(namespace)
            .build()
            .unwrap()
    }
}

/// The redis-server of this test process.
fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

fn lock_key(namespace: &str, key: &str) -> LockKey {
    LockKey {
        namespace: Namespace::new(namespace).unwrap(),
        key: Key::new(key).unwrap(),
    }
}

fn names(namespace: &str, key: &str) -> RedisKeys {
    RedisKeys::new(&lock_key(namespace, key))
}

fn request(namespace: &str, key: &str, share: Share, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(lock_key(namespace, key), OwnerToken::random().unwrap(), ttl).share(share)
}

async fn granted(backend: &RedisBackend, req: &AcquireRequest) -> u64 {
    match backend.try_acquire(req).await.unwrap() {
        Attempt::Granted { fencing_token } => fencing_token,
        other => panic!("not granted: {other:?}"),
    }
}

async fn queued(server: &Server, namespace: &str, key: &str) -> i64 {
    server
        .query(::redis::cmd("ZCARD").arg(names(namespace, key).queue))
        .await
}

fn waiting(max: Duration) -> ObtainOptions {
    ObtainOptions::new().wait(max)
}

/// Tasks of four lockers race for a semaphore of 3: never more than 3
/// hold it, as the sections and the store's holders both show, and the
/// limit is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_lockers_never_exceed_the_limit() {
    let server = shared();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let locker = server.locker("race").await;
        for _ in 0..4 {
            let (locker, inside, most) = (locker.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let pool = locker.semaphore("pool", 3).unwrap();
                let mut tokens = Vec::new();
                for _ in 0..3 {
                    let permit = pool
                        .acquire_with(waiting(Duration::from_secs(30)))
                        .await
                        .unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let held = pool.holders().await.unwrap();
                    assert!(held.holders.len() <= 3, "{held:?}");
                    assert_eq!(held.limit, Some(3));
                    sleep(Duration::from_millis(20)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    tokens.push(permit.fencing_token());
                    permit.release().await.unwrap();
                }
                tokens
            }));
        }
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.extend(
            timeout(Duration::from_secs(60), task)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(most.load(Ordering::SeqCst), 3, "the limit, and no more");
    let count = tokens.len();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), count, "every grant its own token");
    assert!(server.leftovers("race").await.is_empty());
}

/// A permit asked for with another limit than the live permits' is an
/// error at once, even when waiting; an exclusive holder is not a
/// mismatch but contention; once the permits are gone, any limit goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disagreeing_limit_is_refused_at_once() {
    let server = shared();
    let (a, b) = (
        server.locker("mismatch").await,
        server.locker("mismatch").await,
    );
    let held = a.semaphore("k", 2).unwrap().acquire().await.unwrap();
    let start = Instant::now();
    let wide = b.semaphore("k", 3).unwrap();
    let err = wide
        .acquire_with(waiting(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LimitMismatch { .. }), "{err}");
    assert!(
        start.elapsed() < SLACK,
        "refused after {:?}",
        start.elapsed()
    );
    let err = b.rw_lock("k").unwrap().try_read().await.unwrap_err();
    assert!(matches!(err, Error::LimitMismatch { .. }), "{err}");
    assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
    held.release().await.unwrap();

    let lock = a.obtain("k").await.unwrap();
    assert!(wide.try_acquire().await.unwrap_err().is_not_obtained());
    lock.release().await.unwrap();
    wide.try_acquire().await.unwrap().release().await.unwrap();
}

/// A writer waiting for readers blocks the readers that come after it
/// (in other processes too); it gets the key when the readers leave, with
/// a token above theirs, and the later reader gets it after the writer,
/// with a token above the writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_blocks_later_readers() {
    let server = shared();
    let (a, b, c) = (
        server.locker("writer").await,
        server.locker("writer").await,
        server.locker("writer").await,
    );
    let reader = a.rw_lock("k").unwrap().read().await.unwrap();
    let rw = b.rw_lock("k").unwrap();
    let writer = tokio::spawn(async move { rw.write_with(waiting(Duration::from_secs(30))).await });
    server
        .until("the writer queued", async |s| {
            queued(s, "writer", "k").await == 1
        })
        .await;
    let late = c.rw_lock("k").unwrap();
    assert!(late.try_read().await.unwrap_err().is_not_obtained());
    let late_reader =
        tokio::spawn(async move { late.read_with(waiting(Duration::from_secs(30))).await });
    server
        .until("the late reader queued", async |s| {
            queued(s, "writer", "k").await == 2
        })
        .await;
    let read_token = reader.fencing_token();
    reader.release().await.unwrap();
    let write = timeout(Duration::from_secs(10), writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(write.fencing_token() > read_token);
    assert_eq!(
        a.holders("k").await.unwrap().limit,
        None,
        "held by the writer"
    );
    assert!(
        !late_reader.is_finished(),
        "a reader got in beside the writer"
    );
    let write_token = write.fencing_token();
    write.release().await.unwrap();
    let read = timeout(Duration::from_secs(10), late_reader)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(read.fencing_token() > write_token);
    read.release().await.unwrap();
    assert!(server.leftovers("writer").await.is_empty());
}

/// A writer that queued and died delays later readers by one waiter
/// lease, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_lapses_after_its_waiter_lease() {
    let server = shared();
    let lease = Duration::from_millis(400);
    let backend = Arc::new(server.backend().waiter_lease(lease).build().await.unwrap());
    let readers = server.locker("dead").await;
    let reader = readers.rw_lock("k").unwrap().read().await.unwrap();
    let mut dead = request("dead", "k", Share::Exclusive, Duration::from_secs(30));
    dead.will_wait = true;
    assert!(matches!(
        backend.try_acquire(&dead).await.unwrap(),
        Attempt::Contended { holder: Some(_) }
    ));
    let queued_at = Instant::now();
    let rw = readers.rw_lock("k").unwrap();
    assert!(rw.try_read().await.unwrap_err().is_not_obtained());
    let second = rw
        .read_with(waiting(Duration::from_secs(10)))
        .await
        .unwrap();
    let waited = queued_at.elapsed();
    assert!(
        waited >= lease.mul_f32(0.9) && waited < lease + SLACK,
        "a reader got in {waited:?} after a dead writer with a {lease:?} lease queued"
    );
    assert_eq!(rw.holders().await.unwrap().holders.len(), 2);
    second.release().await.unwrap();
    reader.release().await.unwrap();
    assert!(server.leftovers("dead").await.is_empty());
}

/// Permits left to expire go on their own, each at its own TTL: the key
/// stays taken for plain locks while one lives, and nothing of it is
/// left after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_expire_alone_and_leave_nothing() {
    let server = shared();
    let backend = server.backend().build().await.unwrap();
    let permit = Share::Permit { limit: 2 };
    let short = request("expiry", "k", permit, Duration::from_millis(300));
    let long = request("expiry", "k", permit, Duration::from_millis(900));
    let start = Instant::now();
    let short_token = granted(&backend, &short).await;
    let long_token = granted(&backend, &long).await;
    let plain = request("expiry", "k", Share::Exclusive, Duration::from_secs(5));
    assert!(matches!(
        backend.try_acquire(&plain).await.unwrap(),
        Attempt::Contended { holder: Some(_) }
    ));
    let key = lock_key("expiry", "k");
    server
        .until("the short permit expired", async |_| {
            backend.holders(&key).await.unwrap().holders.len() == 1
        })
        .await;
    let left = backend.holders(&key).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?} {left:?} {:?}",
        start.elapsed(),
        (short_token, long_token)
    );
    assert_eq!(
        (left.limit, left.holders[0].fencing_token),
        (Some(2), long_token)
    );
    assert!(
        backend
            .extend(&Renewal::new(short.lease(), Duration::from_secs(5)))
            .await
            .unwrap_err()
            .is_not_held()
    );
    assert!(matches!(
        backend.try_acquire(&plain).await.unwrap(),
        Attempt::Contended { .. }
    ));
    server
        .until("the long permit expired", async |s| {
            s.leftovers("expiry").await.is_empty()
        })
        .await;
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert!(granted(&backend, &plain).await > long_token);
    backend.release(&plain.lease()).await.unwrap();
}

/// Each permit is its own lease: extends and releases touch only their
/// owner's permit, answer NotHeld for anyone else (or the wrong share),
/// and a re-asked grant answers the same token with a fresh TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_permit_is_extended_and_released_alone() {
    let server = shared();
    let backend = server.backend().build().await.unwrap();
    let share = Share::Permit { limit: 3 };
    let short = Duration::from_secs(2);
    let (a, b) = (
        request("own", "k", share, short),
        request("own", "k", share, short),
    );
    let a_token = granted(&backend, &a).await;
    granted(&backend, &b).await;
    let stranger = request("own", "k", share, short).lease();
    let as_lock = LeaseRef::exclusive(a.key.clone(), a.owner);
    for lease in [&stranger, &as_lock] {
        assert!(backend.release(lease).await.unwrap_err().is_not_held());
        let renewal = Renewal::new(lease.clone(), Duration::from_secs(60));
        assert!(backend.extend(&renewal).await.unwrap_err().is_not_held());
    }
    backend
        .extend(&Renewal::new(a.lease(), Duration::from_secs(60)))
        .await
        .unwrap();
    let held = backend.holders(&a.key).await.unwrap();
    let left: Vec<_> = held.holders.iter().map(|h| h.expires_in.unwrap()).collect();
    assert!(
        left[0] > Duration::from_secs(50) && left[1] <= short,
        "{left:?}"
    );

    // Asked again: the same token, the TTL reset.
    let mut again = a.clone();
    again.ttl = Duration::from_secs(120);
    assert_eq!(granted(&backend, &again).await, a_token);
    let first = backend.holders(&a.key).await.unwrap().holders[0].clone();
    assert!(first.expires_in.unwrap() > Duration::from_secs(100));

    backend.release(&a.lease()).await.unwrap();
    assert!(backend.release(&a.lease()).await.unwrap_err().is_not_held());
    let held = backend.holders(&a.key).await.unwrap();
    assert_eq!(held.holders.len(), 1);
    backend.release(&b.lease()).await.unwrap();
    assert!(server.leftovers("own").await.is_empty());
}

/// A lease is its owner and its mode: the lock's owner asking for, or
/// releasing, a permit of the key touches neither the lock nor permits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_owner_gets_no_permit_and_releases_none() {
    let server = shared();
    let backend = server.backend().build().await.unwrap();
    let lock = request("mode", "k", Share::Exclusive, Duration::from_secs(30));
    let token = granted(&backend, &lock).await;
    let mut as_permit = lock.clone().share(Share::READERS);
    as_permit.will_wait = true;
    assert!(matches!(
        backend.try_acquire(&as_permit).await.unwrap(),
        Attempt::Contended { holder: Some(_) }
    ));
    // Its queue entry goes with the release, which is NotHeld.
    assert!(
        backend
            .release(&as_permit.lease())
            .await
            .unwrap_err()
            .is_not_held()
    );
    let renewal = Renewal::new(as_permit.lease(), Duration::from_secs(60));
    assert!(backend.extend(&renewal).await.unwrap_err().is_not_held());
    let held = backend.holders(&lock.key).await.unwrap();
    assert_eq!((held.limit, held.holders[0].fencing_token), (None, token));
    backend.release(&lock.lease()).await.unwrap();
    assert!(server.leftovers("mode").await.is_empty());
}

/// `extend_all` renews locks and permits of several keys in one go and
/// answers NotHeld, in order, for the entries not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_all_renews_locks_and_permits_together() {
    let server = shared();
    let backend = server.backend().build().await.unwrap();
    let ttl = Duration::from_secs(2);
    let lock = request("mixed", "lock", Share::Exclusive, ttl);
    let permit = request("mixed", "pool", Share::Permit { limit: 2 }, ttl);
    let reader = request("mixed", "rw", Share::READERS, ttl);
    let gone = request("mixed", "pool", Share::Permit { limit: 2 }, ttl);
    for req in [&lock, &permit, &reader, &gone] {
        granted(&backend, req).await;
    }
    backend.release(&gone.lease()).await.unwrap();
    let never = request("mixed", "never", Share::READERS, ttl);
    let long = Duration::from_secs(60);
    let renewals: Vec<_> = [&permit, &lock, &gone, &reader, &never]
        .into_iter()
        .map(|r| Renewal::new(r.lease(), long))
        .collect();
    let results = backend.extend_all(&renewals).await;
    let held: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(held, [true, true, false, true, false], "{results:?}");
    assert!(results[2].as_ref().unwrap_err().is_not_held());
    for req in [&lock, &permit, &reader] {
        let holders = backend.holders(&req.key).await.unwrap();
        assert!(holders.holders[0].expires_in.unwrap() > Duration::from_secs(50));
        backend.release(&req.lease()).await.unwrap();
    }
    assert!(server.leftovers("mixed").await.is_empty());
}

/// `holders` lists every live permit, oldest grant first, with metadata
/// and the limit; `inspect` names the latest grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_are_listed_oldest_first_with_the_limit() {
    let server = shared();
    let (a, b) = (server.locker("list").await, server.locker("list").await);
    let mut held = Vec::new();
    for (i, locker) in [&a, &b, &a].into_iter().enumerate() {
        let opts = ObtainOptions::new().metadata(format!("worker-{i}"));
        held.push(
            locker
                .semaphore("k", 5)
                .unwrap()
                .acquire_with(opts)
                .await
                .unwrap(),
        );
    }
    let listed = b.holders("k").await.unwrap();
    assert_eq!(listed.limit, Some(5));
    let tokens: Vec<u64> = listed.holders.iter().map(|h| h.fencing_token).collect();
    let expected: Vec<u64> = held.iter().map(|l| l.fencing_token()).collect();
    assert_eq!(tokens, expected);
    let metadata: Vec<_> = listed
        .holders
        .iter()
        .map(|h| h.metadata.clone().unwrap())
        .collect();
    assert_eq!(metadata, ["worker-0", "worker-1", "worker-2"]);
    let latest = b.inspect("k").await.unwrap().unwrap();
    assert_eq!(latest.fencing_token, expected[2]);
    assert!(latest.expires_in.unwrap() <= Duration::from_secs(30));
    for lock in held {
        lock.release().await.unwrap();
    }
    let readers = a.rw_lock("rw").unwrap().read().await.unwrap();
    assert_eq!(b.holders("rw").await.unwrap().limit, Some(u32::MAX));
    readers.release().await.unwrap();
    assert!(b.holders("k").await.unwrap().is_empty());
}

/// A waiter for a full semaphore is woken by another process's release
/// of a permit well before its (long) retry delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_release_wakes_the_waiter() {
    let server = Server::start();
    let (a, b) = (server.locker("wake").await, server.locker("wake").await);
    let held = a.semaphore("k", 1).unwrap().acquire().await.unwrap();
    let turns = server.calls("zcount").await;
    let waiter = tokio::spawn(async move {
        let opts =
            waiting(Duration::from_secs(30)).retry(RetryStrategy::linear(Duration::from_secs(10)));
        let permit = b
            .semaphore("k", 1)
            .unwrap()
            .acquire_with(opts)
            .await
            .unwrap();
        let at = Instant::now();
        permit.release().await.unwrap();
        at
    });
    // Only a permit waiter's turn check counts permits (ZCOUNT): once it
    // ran, the waiter is subscribed and asleep.
    server
        .until("the waiter checked its turn", async |s| {
            s.calls("zcount").await > turns
        })
        .await;
    let released = Instant::now();
    held.release().await.unwrap();
    let obtained = timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(
        obtained - released < SLACK,
        "woken after {:?}",
        obtained - released
    );
}

/// Once permits, a queued writer and a waiter that gave up have all left,
/// nothing of the key is left, and the plain lock cycle is back to its
/// eight commands: the permits cost it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_permits_the_key_is_clean_and_the_lock_path_lean() {
    let server = Server::start();
    let (a, b) = (server.locker("lean").await, server.locker("lean").await);
    let pool = a.semaphore("k", 2).unwrap();
    let (one, two) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    let gave_up = b
        .semaphore("k", 2)
        .unwrap()
        .acquire_with(waiting(Duration::from_millis(200)))
        .await;
    assert!(gave_up.unwrap_err().is_not_obtained());
    server
        .until("the waiter that gave up left", async |s| {
            queued(s, "lean", "k").await == 0
        })
        .await;
    let writer =
        tokio::spawn(async move { b.obtain_with("k", waiting(Duration::from_secs(30))).await });
    server
        .until("the writer queued", async |s| {
            queued(s, "lean", "k").await == 1
        })
        .await;
    one.release().await.unwrap();
    two.release().await.unwrap();
    let write = timeout(Duration::from_secs(10), writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    write.release().await.unwrap();
    assert!(server.leftovers("lean").await.is_empty());

    let _: () = server.query(::redis::cmd("CONFIG").arg("RESETSTAT")).await;
    let cycles = 10;
    for _ in 0..cycles {
        a.obtain("k").await.unwrap().release().await.unwrap();
    }
    for (command, per_cycle) in [
        ("evalsha", 2),
        ("mget", 2),
        ("time", 1),
        ("set", 2),
        ("del", 1),
    ] {
        assert_eq!(server.calls(command).await, per_cycle * cycles, "{command}");
    }
    for command in [
        "zrange",
        "zcard",
        "zscore",
        "hget",
        "publish",
        "get",
        "pexpireat",
    ] {
        assert_eq!(server.calls(command).await, 0, "{command}");
    }
}

/// A user limited to what `required_acl` lists can use permits: acquire,
/// wait, refresh, list, inspect, release, for semaphores and readers and
/// a writer queued behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_covers_permits() {
    let server = shared();
    let mut cmd = ::redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("permits")
        .arg("reset")
        .arg("on")
        .arg(">secret");
    for rule in RedisBackend::required_acl(&Namespace::new("acl").unwrap()).split_whitespace() {
        cmd.arg(rule);
    }
    let _: () = server.query(&mut cmd).await;
    let url = server.url.replace("redis://", "redis://permits:secret@") + "?namespace=acl";
    let (a, b) = (
        Locker::from_url(&url).await.unwrap(),
        Locker::from_url(&url).await.unwrap(),
    );
    let pool = a.semaphore("pool", 1).unwrap();
    let held = pool.acquire().await.unwrap();
    held.refresh().await.unwrap();
    assert_eq!(b.holders("pool").await.unwrap().holders.len(), 1);
    assert!(b.inspect("pool").await.unwrap().is_some());
    let other = b.semaphore("pool", 1).unwrap();
    let waiter =
        tokio::spawn(async move { other.acquire_with(waiting(Duration::from_secs(10))).await });
    server
        .until("the waiter queued", async |s| {
            queued(s, "acl", "pool").await == 1
        })
        .await;
    held.release().await.unwrap();
    let permit = timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    permit.release().await.unwrap();

    let reader = a.rw_lock("rw").unwrap().read().await.unwrap();
    let rw = b.rw_lock("rw").unwrap();
    let writer = tokio::spawn(async move { rw.write_with(waiting(Duration::from_secs(10))).await });
    server
        .until("the writer queued", async |s| {
            queued(s, "acl", "rw").await == 1
        })
        .await;
    reader.release().await.unwrap();
    let write = timeout(Duration::from_secs(10), writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    write.release().await.unwrap();
    assert!(server.leftovers("acl").await.is_empty());
}
