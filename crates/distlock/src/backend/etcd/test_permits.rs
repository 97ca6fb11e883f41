//! Permits (semaphores, reader-writer locks) against a private etcd: the
//! limit under racing tasks of two backends, limit mismatches, writer
//! preference, arrival order across modes, what is left in etcd, what a
//! cycle writes, a permit expiring alone, holders, batched extends, and
//! which release wakes which waiter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use tokio::time::{Instant, sleep, timeout};

use super::test_etcd::TestEtcd;
use crate::backend::{AcquireRequest, Attempt, Backend, Renewal};
use crate::{Error, Key, LockKey, Locker, LostReason, Namespace, ObtainOptions, OwnerToken};
use crate::{RetryStrategy, Share};

const MS: Duration = Duration::from_millis(1);

/// A server, and a raw client on it for looking behind the backends' backs.
async fn server() -> (TestEtcd, Client) {
    let etcd = tokio::task::spawn_blocking(TestEtcd::start).await.unwrap();
    let client = etcd.client().await;
    (etcd, client)
}

/// A locker of its own backend (its own leases and watch stream, as
/// another process would have), in namespace `ns`.
async fn locker(etcd: &TestEtcd, ns: &str) -> Locker {
    Locker::builder(etcd.backend().await)
        .namespace(ns)
        .build()
        .unwrap()
}

/// Every etcd key under the namespace.
async fn leftovers(client: &mut Client, ns: &str) -> Vec<String> {
    let keys = GetOptions::new().with_prefix().with_keys_only();
    let found = client.get(format!("/{ns}/"), Some(keys)).await.unwrap();
    found
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Polls until the namespace has `n` keys, for up to `within`.
async fn await_keys(client: &mut Client, ns: &str, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let have = leftovers(client, ns).await;
        if have.len() == n {
            return;
        }
        assert!(start.elapsed() < within, "{have:?}: expected {n} keys");
        sleep(10 * MS).await;
    }
}

/// How many transactions etcd answered: one per round trip of an attempt.
fn txns(etcd: &TestEtcd) -> f64 {
    use std::io::{Read, Write};
    let name = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    let mut conn = std::net::TcpStream::connect(etcd.endpoint()).unwrap();
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

async fn revision(client: &mut Client) -> i64 {
    let read = client.get("/", None).await.unwrap();
    read.header().unwrap().revision()
}

fn waiting(max: Duration) -> ObtainOptions {
    ObtainOptions::new().wait(max)
}

/// Waits that only the backend's watch can end early: the engine polls
/// once a minute.
fn woken_only() -> ObtainOptions {
    ObtainOptions::new()
        .wait(Duration::from_secs(120))
        .retry(RetryStrategy::linear(Duration::from_secs(60)))
}

fn is_mismatch(e: &Error) -> bool {
    matches!(e, Error::LimitMismatch { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_admits_at_most_its_limit_across_racing_tasks_of_two_backends() {
    const LIMIT: u32 = 3;
    let (etcd, mut raw) = server().await;
    let ns = "racing";
    let lockers = [locker(&etcd, ns).await, locker(&etcd, ns).await];
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let semaphore = lockers[i % 2].semaphore("k", LIMIT).unwrap();
        let (inside, most, tokens) = (inside.clone(), most.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let permit = semaphore
                    .acquire_with(waiting(Duration::from_secs(30)))
                    .await
                    .unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokens.lock().unwrap().push(permit.fencing_token());
                sleep(20 * MS).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= LIMIT as usize, "{most} holders at once");
    assert!(most >= 2, "the permits were never held together");
    let mut tokens = tokens.lock().unwrap().clone();
    let grants = tokens.len();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), grants, "a fencing token was handed out twice");
    assert_eq!(leftovers(&mut raw, ns).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_of_another_limit_is_refused_at_once_and_writes_nothing() {
    let (etcd, mut raw) = server().await;
    let ns = "mismatch";
    let (a, b) = (locker(&etcd, ns).await, locker(&etcd, ns).await);
    let held = a.semaphore("k", 2).unwrap().acquire().await.unwrap();
    let before = revision(&mut raw).await;
    let three = b.semaphore("k", 3).unwrap();
    assert!(is_mismatch(&three.try_acquire().await.unwrap_err()));
    let start = Instant::now();
    let err = three.acquire_with(waiting(Duration::from_secs(10))).await;
    assert!(is_mismatch(&err.unwrap_err()));
    assert!(start.elapsed() < Duration::from_secs(2), "not at once");
    let readers = b.rw_lock("k").unwrap();
    assert!(is_mismatch(&readers.try_read().await.unwrap_err()));
    assert_eq!(revision(&mut raw).await, before, "a refused permit wrote");

    // An exclusive holder is no mismatch: the permit is contended.
    held.release().await.unwrap();
    let lock = a.obtain("k").await.unwrap();
    assert!(three.try_acquire().await.unwrap_err().is_not_obtained());

    // Queued behind it: when permits of 3 get the key, the one of 5
    // behind them is refused, and its queue entry goes.
    let c = locker(&etcd, ns).await;
    let waits = waiting(Duration::from_secs(20));
    let first = tokio::spawn({
        let waits = waits.clone();
        async move { three.acquire_with(waits).await }
    });
    await_keys(&mut raw, ns, 2, Duration::from_secs(2)).await;
    let five = c.semaphore("k", 5).unwrap();
    let second = tokio::spawn(async move { five.acquire_with(waits).await });
    await_keys(&mut raw, ns, 3, Duration::from_secs(2)).await;
    lock.release().await.unwrap();
    let permit = timeout(Duration::from_secs(3), first).await.unwrap();
    let refused = timeout(Duration::from_secs(3), second).await.unwrap();
    assert!(is_mismatch(&refused.unwrap().unwrap_err()));
    await_keys(&mut raw, ns, 1, Duration::from_secs(2)).await;
    permit.unwrap().unwrap().release().await.unwrap();
    assert_eq!(leftovers(&mut raw, ns).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_blocks_the_readers_that_come_after_it() {
    let (etcd, mut raw) = server().await;
    let ns = "writer";
    let [a, b, c] = [
        locker(&etcd, ns).await,
        locker(&etcd, ns).await,
        locker(&etcd, ns).await,
    ];
    let reader = a.rw_lock("k").unwrap().read().await.unwrap();
    let writer = b.rw_lock("k").unwrap();
    let writing = tokio::spawn(async move { writer.write_with(woken_only()).await });
    await_keys(&mut raw, ns, 2, Duration::from_secs(2)).await;
    let late = c.rw_lock("k").unwrap();
    assert!(late.try_read().await.unwrap_err().is_not_obtained());
    let reading = tokio::spawn({
        let late = late.clone();
        async move { late.read_with(woken_only()).await }
    });
    await_keys(&mut raw, ns, 3, Duration::from_secs(2)).await;
    sleep(200 * MS).await;
    assert!(!writing.is_finished() && !reading.is_finished());

    let read_token = reader.fencing_token();
    reader.release().await.unwrap();
    let written = timeout(Duration::from_secs(2), writing).await;
    let written = written.expect("the writer was not woken").unwrap().unwrap();
    assert!(written.fencing_token() > read_token);
    sleep(200 * MS).await;
    assert!(!reading.is_finished(), "a reader got in beside the writer");
    let write_token = written.fencing_token();
    written.release().await.unwrap();
    let read = timeout(Duration::from_secs(2), reading).await;
    let read = read.expect("the reader was not woken").unwrap().unwrap();
    assert!(read.fencing_token() > write_token);
    read.release().await.unwrap();
    assert_eq!(leftovers(&mut raw, ns).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_both_modes_are_served_in_arrival_order() {
    let (etcd, mut raw) = server().await;
    let ns = "fifo";
    let holder = locker(&etcd, ns).await;
    let lock = holder.obtain("k").await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Each in its own backend, each queued before the next arrives.
    for (i, name) in ["read1", "write2", "read3", "read4"]
        .into_iter()
        .enumerate()
    {
        let rw = locker(&etcd, ns).await.rw_lock("k").unwrap();
        let served = served.clone();
        tasks.push(tokio::spawn(async move {
            let lock = if name.starts_with("read") {
                rw.read_with(woken_only()).await
            } else {
                rw.write_with(woken_only()).await
            }
            .unwrap();
            served.lock().unwrap().push((name, lock.fencing_token()));
            sleep(150 * MS).await;
            lock.release().await.unwrap();
        }));
        await_keys(&mut raw, ns, i + 2, Duration::from_secs(2)).await;
    }
    let token = lock.fencing_token();
    lock.release().await.unwrap();
    for task in tasks {
        timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
    let served = served.lock().unwrap().clone();
    let names: Vec<&str> = served.iter().map(|(name, _)| *name).collect();
    assert_eq!(&names[..2], ["read1", "write2"], "{served:?}");
    assert!(names[2..].contains(&"read3") && names[2..].contains(&"read4"));
    let tokens: Vec<u64> = served.iter().map(|(_, t)| *t).collect();
    assert!(
        tokens[0] > token && tokens[1] > tokens[0] && tokens[2..].iter().all(|t| *t > tokens[1])
    );
    assert_eq!(leftovers(&mut raw, ns).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_cycle_writes_twice_and_a_refused_try_never_writes() {
    let (etcd, mut raw) = server().await;
    let ns = "writes";
    let (a, b) = (locker(&etcd, ns).await, locker(&etcd, ns).await);
    let semaphore = a.semaphore("k", 2).unwrap();
    semaphore.acquire().await.unwrap().release().await.unwrap();
    async fn cycle(raw: &mut Client, semaphore: &crate::Semaphore) -> i64 {
        let before = revision(raw).await;
        semaphore.acquire().await.unwrap().release().await.unwrap();
        revision(raw).await - before
    }
    assert_eq!(cycle(&mut raw, &semaphore).await, 2, "alone");
    let other = b.semaphore("k", 2).unwrap().acquire().await.unwrap();
    assert_eq!(
        cycle(&mut raw, &semaphore).await,
        2,
        "beside another permit"
    );
    // On a key it has not seen, an attempt reads before its put; once it
    // has, the backend knows the queue: the guarded put alone.
    let fresh = a.semaphore("fresh", 3).unwrap();
    let theirs = b.semaphore("fresh", 3).unwrap().acquire().await.unwrap();
    let before = txns(&etcd);
    let own = fresh.acquire().await.unwrap();
    assert_eq!(txns(&etcd) - before, 2.0, "a read and the put");
    let before = txns(&etcd);
    let second = fresh.acquire().await.unwrap();
    assert_eq!(txns(&etcd) - before, 1.0, "the guarded put");
    // What it knows is stale once another backend takes a permit: the
    // guard fails, its reads show the key full, and nothing is written.
    second.release().await.unwrap();
    let last = b.semaphore("fresh", 3).unwrap().acquire().await.unwrap();
    let (before, written) = (txns(&etcd), revision(&mut raw).await);
    assert!(fresh.try_acquire().await.unwrap_err().is_not_obtained());
    assert_eq!(txns(&etcd) - before, 1.0, "the failed guard's reads serve");
    assert_eq!(revision(&mut raw).await, written);
    assert_eq!(a.holders("fresh").await.unwrap().holders.len(), 3);
    for permit in [theirs, own, last] {
        permit.release().await.unwrap();
    }
    let full = a.semaphore("k", 2).unwrap().acquire().await.unwrap();
    let before = revision(&mut raw).await;
    let err = b
        .semaphore("k", 2)
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(err.is_not_obtained());
    assert!(
        b.rw_lock("k")
            .unwrap()
            .try_write()
            .await
            .unwrap_err()
            .is_not_obtained()
    );
    assert_eq!(revision(&mut raw).await, before, "a refused try wrote");
    other.release().await.unwrap();
    full.release().await.unwrap();
    assert_eq!(leftovers(&mut raw, ns).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_expires_alone() {
    let (etcd, mut raw) = server().await;
    let ns = "expiry";
    let (a, b) = (locker(&etcd, ns).await, locker(&etcd, ns).await);
    let ttl = Duration::from_secs(2);
    let short = ObtainOptions::new().ttl(ttl);
    let kept = a
        .semaphore("k", 3)
        .unwrap()
        .acquire_with(short.clone())
        .await
        .unwrap();
    let _refresh = kept.start_refresh(|e| panic!("refresh failed: {e}"));
    // Never refreshed: deleted by its backend one TTL after its grant.
    let stale = b
        .semaphore("k", 3)
        .unwrap()
        .acquire_with(short.clone())
        .await
        .unwrap();
    // Its backend's leases revoked, as if its process had died.
    let gone_backend = etcd.backend().await;
    let c = Locker::builder(gone_backend.clone())
        .namespace(ns)
        .build()
        .unwrap();
    let gone = c
        .semaphore("k", 3)
        .unwrap()
        .acquire_with(short)
        .await
        .unwrap();
    assert_eq!(a.holders("k").await.unwrap().holders.len(), 3);
    for id in gone_backend.lease_ids() {
        raw.lease_revoke(id).await.unwrap();
    }
    let holders = a.holders("k").await.unwrap();
    let tokens: Vec<u64> = holders.holders.iter().map(|h| h.fencing_token).collect();
    assert_eq!(tokens, [kept.fencing_token(), stale.fencing_token()]);
    assert_eq!(timeout(ttl * 2, gone.lost()).await, Ok(LostReason::Expired));
    assert_eq!(
        timeout(ttl * 2, stale.lost()).await,
        Ok(LostReason::Expired)
    );
    await_keys(&mut raw, ns, 1, Duration::from_secs(2)).await;
    assert!(!kept.is_lost());
    let holders = a.holders("k").await.unwrap();
    assert_eq!(holders.holders.len(), 1);
    assert_eq!(holders.holders[0].fencing_token, kept.fencing_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_lists_every_holder_oldest_first_and_inspect_the_latest() {
    let (etcd, mut raw) = server().await;
    let ns = "holders";
    let (a, b) = (locker(&etcd, ns).await, locker(&etcd, ns).await);
    assert!(a.holders("k").await.unwrap().is_empty());
    let semaphore = a.semaphore("k", 2).unwrap();
    let ttl = Duration::from_secs(10);
    let first = semaphore
        .acquire_with(ObtainOptions::new().ttl(ttl).metadata("one"))
        .await
        .unwrap();
    let second = b.semaphore("k", 2).unwrap().acquire().await.unwrap();
    // A waiter is no holder.
    let waiter = tokio::spawn({
        let semaphore = semaphore.clone();
        async move {
            semaphore
                .acquire_with(waiting(Duration::from_secs(10)))
                .await
        }
    });
    await_keys(&mut raw, ns, 3, Duration::from_secs(2)).await;
    let holders = b.holders("k").await.unwrap();
    assert_eq!(holders.limit, Some(2));
    let tokens: Vec<u64> = holders.holders.iter().map(|h| h.fencing_token).collect();
    assert_eq!(tokens, [first.fencing_token(), second.fencing_token()]);
    assert_eq!(holders.holders[0].metadata.as_deref(), Some("one"));
    let left = holders.holders[0].expires_in.unwrap();
    assert!(
        left <= ttl && left > ttl - Duration::from_secs(3),
        "{left:?}"
    );
    let latest = b.inspect("k").await.unwrap().unwrap();
    assert_eq!(latest.fencing_token, second.fencing_token());

    first.release().await.unwrap();
    let third = timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let holders = a.holders("k").await.unwrap();
    let tokens: Vec<u64> = holders.holders.iter().map(|h| h.fencing_token).collect();
    assert_eq!(tokens, [second.fencing_token(), third.fencing_token()]);
    assert_eq!(
        a.inspect("k").await.unwrap().unwrap().fencing_token,
        third.fencing_token()
    );
    second.release().await.unwrap();
    third.release().await.unwrap();

    let reader = a.rw_lock("k").unwrap().read().await.unwrap();
    assert_eq!(b.holders("k").await.unwrap().limit, Some(u32::MAX));
    reader.release().await.unwrap();
    let lock = a.obtain("k").await.unwrap();
    let holders = b.holders("k").await.unwrap();
    assert_eq!(holders.limit, None);
    assert_eq!(holders.holders[0].fencing_token, lock.fencing_token());
    lock.release().await.unwrap();
    assert!(a.holders("k").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_idempotent_and_extend_all_renews_leases_of_every_mode_and_only_held_ones() {
    let (etcd, mut raw) = server().await;
    let backend = etcd.backend().await;
    let key = |k: &str| LockKey {
        namespace: Namespace::new("extend").unwrap(),
        key: Key::new(k).unwrap(),
    };
    let ttl = Duration::from_secs(3);
    let mut renewals = Vec::new();
    for (k, share) in [
        ("lock", Share::Exclusive),
        ("sem", Share::Permit { limit: 2 }),
        ("sem", Share::Permit { limit: 2 }),
        ("rw", Share::READERS),
    ] {
        let req = AcquireRequest::new(key(k), OwnerToken::random().unwrap(), ttl).share(share);
        let granted = backend.try_acquire(&req).await.unwrap();
        assert!(
            matches!(granted, Attempt::Granted { .. }),
            "{k}: {granted:?}"
        );
        // Asked again (a lost reply retried), the same grant.
        assert_eq!(backend.try_acquire(&req).await.unwrap(), granted, "{k}");
        renewals.push(Renewal::new(req.lease(), ttl));
    }
    // Not the holder's owner: only that one is not held.
    let mut forged = renewals[1].clone();
    forged.lease.owner = OwnerToken::from_u128(1);
    renewals.push(forged);
    let results = backend.extend_all(&renewals).await;
    let held: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(held, [true, true, true, true, false]);
    assert!(results[4].as_ref().unwrap_err().is_not_held());
    // Releasing one permit leaves the other.
    backend.release(&renewals[1].lease).await.unwrap();
    assert!(
        backend
            .release(&renewals[1].lease)
            .await
            .unwrap_err()
            .is_not_held()
    );
    let sem = backend.holders(&key("sem")).await.unwrap();
    assert_eq!(sem.holders.len(), 1);
    for renewal in [&renewals[0], &renewals[2], &renewals[3]] {
        backend.release(&renewal.lease).await.unwrap();
    }
    assert_eq!(leftovers(&mut raw, "extend").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_waiter_is_woken_by_the_release_of_any_holder_ahead() {
    let (etcd, mut raw) = server().await;
    let ns = "wake";
    let sem = |l: &Locker| l.semaphore("k", 2).unwrap();
    let holders = [locker(&etcd, ns).await, locker(&etcd, ns).await];
    let oldest = sem(&holders[0]).acquire().await.unwrap();
    let newest = sem(&holders[1]).acquire().await.unwrap();
    let spawn_waiter =
        |s: crate::Semaphore| tokio::spawn(async move { s.acquire_with(woken_only()).await });
    let first = spawn_waiter(sem(&locker(&etcd, ns).await));
    await_keys(&mut raw, ns, 3, Duration::from_secs(2)).await;
    // Not its predecessor: the oldest holder.
    oldest.release().await.unwrap();
    let first = timeout(Duration::from_secs(2), first).await;
    let first = first.expect("not woken by the release").unwrap().unwrap();

    // Two waiters behind the two holders: the one further back watches the
    // one ahead of it, and is woken by its grant.
    let second = spawn_waiter(sem(&locker(&etcd, ns).await));
    await_keys(&mut raw, ns, 3, Duration::from_secs(2)).await;
    let third = spawn_waiter(sem(&locker(&etcd, ns).await));
    await_keys(&mut raw, ns, 4, Duration::from_secs(2)).await;
    let (a, b) = tokio::join!(newest.release(), first.release());
    a.unwrap();
    b.unwrap();
    let (second, third) = tokio::join!(
        timeout(Duration::from_secs(2), second),
        timeout(Duration::from_secs(2), third)
    );
    let second = second.expect("second not woken").unwrap().unwrap();
    let third = third.expect("third not woken").unwrap().unwrap();
    assert!(third.fencing_token() > second.fencing_token());
    second.release().await.unwrap();
    third.release().await.unwrap();
    assert_eq!(leftovers(&mut raw, ns).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_saw_the_release_that_lets_it_in_takes_the_key_without_a_read() {
    let (etcd, mut raw) = server().await;
    let ns = "handoff";
    let (holder, waiter) = (locker(&etcd, ns).await, locker(&etcd, ns).await);
    for limit in [None, Some(2)] {
        let take = |l: &Locker| {
            let l = l.clone();
            async move {
                match limit {
                    None => l.obtain_with("k", woken_only()).await,
                    Some(n) => {
                        l.semaphore("k", n)
                            .unwrap()
                            .acquire_with(woken_only())
                            .await
                    }
                }
            }
        };
        let mut held = vec![take(&holder).await.unwrap()];
        if limit.is_some() {
            held.push(take(&holder).await.unwrap());
        }
        let waiting = tokio::spawn(take(&waiter));
        await_keys(&mut raw, ns, held.len() + 1, Duration::from_secs(2)).await;
        // Its wait has read the queue and watches.
        sleep(300 * MS).await;
        let before = txns(&etcd);
        held.remove(0).release().await.unwrap();
        let granted = timeout(Duration::from_secs(2), waiting).await;
        let granted = granted.expect("not woken").unwrap().unwrap();
        assert_eq!(
            txns(&etcd) - before,
            2.0,
            "{limit:?}: the delete and the move"
        );
        granted.release().await.unwrap();
        for lock in held {
            lock.release().await.unwrap();
        }
    }
    assert_eq!(leftovers(&mut raw, ns).await, Vec::<String>::new());
}
