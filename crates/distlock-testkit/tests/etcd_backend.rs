//! The etcd backend's own promises, against real etcd processes: a 3-node
//! cluster losing its leader (and the isolation the torture harness uses), a paused server, leases revoked behind the
//! backend's back, abandoned waits, FIFO order across lockers, auth, TLS,
//! and the write cost of a cycle and of waiting; in `etcd_backend/`, queue
//! entries that outlive their waiter, and what inspect reports.
//!
//! Each test gets a private server, so revisions and faults are its own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::backend::Backend;
use distlock::backend::etcd::etcd_client::{
    Client, ConnectOptions, GetOptions, KeyValue, Permission, SortOrder, SortTarget,
};
use distlock::backend::etcd::{EtcdBackend, EtcdOptions};
use distlock::{Error, Key, LockKey, Locker, LostReason, Namespace, ObtainOptions};
use distlock_testkit::etcd::{EtcdCluster, FIXTURE_SESSION_TTL, backend, holder_entry, raw_client};
use distlock_testkit::fairness::assert_served_in_turn;
use distlock_testkit::proxy::FaultProxy;
use distlock_testkit::refusal::assert_refused_at_once;
use distlock_testkit::{CriticalSection, unique_namespace};
use tokio::time::{Instant, sleep, sleep_until, timeout};

#[path = "etcd_backend/inspect.rs"]
mod inspect;
#[path = "etcd_backend/waiters.rs"]
mod waiters;

const MS: Duration = Duration::from_millis(1);

async fn cluster(size: usize) -> EtcdCluster {
    tokio::task::spawn_blocking(move || EtcdCluster::start(size))
        .await
        .expect("start etcd")
}

fn locker(backend: &Arc<EtcdBackend>, ns: &str) -> Locker {
    Locker::builder(backend.clone())
        .namespace(ns)
        .build()
        .unwrap()
}

async fn entries(client: &mut Client, ns: &str, key: &str) -> usize {
    let prefix = EtcdBackend::key_prefix(&LockKey {
        namespace: Namespace::new(ns).unwrap(),
        key: Key::new(key).unwrap(),
    });
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count() as usize
}

/// Polls until `key` has `n` entries (holder + waiters), for up to `within`.
async fn await_entries(client: &mut Client, ns: &str, key: &str, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let have = entries(client, ns, key).await;
        if have == n {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{key} has {have} entries, expected {n}"
        );
        sleep(10 * MS).await;
    }
}

/// A backend whose every connection to etcd goes through `proxy`.
async fn behind(proxy: &FaultProxy) -> Arc<EtcdBackend> {
    Arc::new(backend(&[proxy.addr().to_string()]).await)
}

async fn proxy_to(endpoint: &str) -> FaultProxy {
    FaultProxy::start(endpoint.parse().expect("an address"))
        .await
        .expect("start a proxy")
}

/// The entry of `key` queued second (the first waiter behind the holder).
async fn second_entry(client: &mut Client, ns: &str, key: &str) -> KeyValue {
    let prefix = EtcdBackend::key_prefix(&LockKey {
        namespace: Namespace::new(ns).unwrap(),
        key: Key::new(key).unwrap(),
    });
    let order = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let found = client.get(prefix, Some(order)).await.unwrap();
    found.kvs().get(1).cloned().expect("a queued waiter")
}

/// The member's raft log index: one entry per proposal (every write,
/// lease grant and revoke; not reads, not keepalives).
async fn raft_index(client: &mut Client) -> u64 {
    client.status().await.unwrap().raft_index()
}

async fn revision(client: &mut Client) -> i64 {
    client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// Whom member `endpoint` follows and in which term, asked directly (not
/// through a proxy); `None` if it does not answer within a second.
async fn member_view(endpoint: &str) -> Option<(u64, u64)> {
    let connect = Client::connect([endpoint], None);
    let mut client = timeout(Duration::from_secs(1), connect).await.ok()?.ok()?;
    let status = timeout(Duration::from_secs(1), client.status())
        .await
        .ok()?
        .ok()?;
    Some((status.leader(), status.raft_term()))
}

/// The tagging peer proxies the torture harness uses cut one member off in
/// both directions: the others elect a new leader and keep it (the cut-off
/// member's votes do not reach them), the cut-off member never hears of
/// it, and after healing all three follow one leader again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagging_peer_proxies_isolate_the_leader_both_ways() {
    let mut proxies = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let port = distlock_testkit::server::free_port();
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let proxy = FaultProxy::start_tagging(upstream, "X-Server-From")
            .await
            .unwrap();
        peers.push((port, proxy.addr()));
        proxies.push(proxy);
    }
    let cluster = tokio::task::spawn_blocking(move || EtcdCluster::start_with_peers(&peers))
        .await
        .expect("start etcd");
    let old = cluster.leader_status(Duration::from_secs(10)).await;
    let tag = format!("{:x}", old.id);
    for (i, proxy) in proxies.iter().enumerate() {
        if i == old.index {
            proxy.set_blackhole(true);
        } else {
            proxy.set_blackhole_tag(&tag, true);
        }
    }
    let others: Vec<&str> = (0..3)
        .filter(|i| *i != old.index)
        .map(|i| cluster.members[i].endpoint.as_str())
        .collect();
    let isolated = cluster.members[old.index].endpoint.as_str();
    // The others agree on a new leader in a later term.
    let start = Instant::now();
    let (leader, term) = loop {
        let a = member_view(others[0]).await;
        if let Some((leader, term)) = a
            && leader != 0
            && leader != old.id
            && term > old.term
            && member_view(others[1]).await == a
        {
            break (leader, term);
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no new leader among the others"
        );
        sleep(50 * MS).await;
    };
    // Several election timeouts later they still follow it in the same
    // term (the cut-off member's campaigns never reached them), and the
    // cut-off member never learned of it.
    sleep(Duration::from_secs(3)).await;
    for endpoint in &others {
        assert_eq!(
            member_view(endpoint).await,
            Some((leader, term)),
            "{endpoint}"
        );
    }
    let (followed, _) = member_view(isolated).await.expect("it runs on");
    assert_ne!(
        followed, leader,
        "the cut-off member heard from the new leader"
    );

    for proxy in &proxies {
        proxy.heal();
    }
    let start = Instant::now();
    loop {
        let views = [
            member_view(isolated).await,
            member_view(others[0]).await,
            member_view(others[1]).await,
        ];
        if views[0].is_some_and(|(l, _)| l != 0) && views.iter().all(|v| *v == views[0]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the members did not agree on a leader after healing: {views:?}"
        );
        sleep(50 * MS).await;
    }
}

/// A 3-node cluster loses its leader while locks are held and waiters
/// queue: no two holders overlap, tokens keep increasing, waiters make
/// progress under the new leader, and no call outlives its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_keeps_mutual_exclusion_and_waiters_progress() {
    let cluster = cluster(3).await;
    let endpoints = cluster.endpoints();
    let ns = unique_namespace("leader_kill");
    let section = Arc::new(CriticalSection::new());
    let stop = Arc::new(AtomicBool::new(false));
    let entered: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let errors = Arc::new(AtomicUsize::new(0));
    const WAIT: Duration = Duration::from_secs(8);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let locker = locker(&Arc::new(backend(&endpoints).await), &ns);
        for _ in 0..2 {
            let (locker, section, stop, entered, errors) = (
                locker.clone(),
                section.clone(),
                stop.clone(),
                entered.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let opts = ObtainOptions::new().ttl(Duration::from_secs(3)).wait(WAIT);
                    let result = locker.obtain_with("k", opts).await;
                    let took = start.elapsed();
                    assert!(took < WAIT + Duration::from_secs(1), "obtain took {took:?}");
                    match result {
                        Ok(lock) => {
                            section.enter(lock.fencing_token());
                            entered.lock().unwrap().push(Instant::now());
                            sleep(10 * MS).await;
                            assert!(!lock.is_lost());
                            section.leave();
                            let start = Instant::now();
                            if lock.release().await.is_err() {
                                errors.fetch_add(1, Ordering::SeqCst);
                            }
                            let took = start.elapsed();
                            assert!(took < Duration::from_secs(6), "release took {took:?}");
                        }
                        Err(e) => {
                            assert!(e.is_not_obtained() || e.is_transient(), "{e}");
                            errors.fetch_add(1, Ordering::SeqCst);
                            sleep(20 * MS).await;
                        }
                    }
                }
            }));
        }
    }
    // A lock held (and refreshed) across the failover, with a waiter queued on it.
    let holder = locker(&Arc::new(backend(&endpoints).await), &ns);
    let held = holder
        .obtain_with("held", ObtainOptions::new().ttl(Duration::from_secs(6)))
        .await
        .unwrap();
    let refresher = held.start_refresh(|e| eprintln!("refresh across the failover: {e}"));
    let queued = {
        let waiter = locker(&Arc::new(backend(&endpoints).await), &ns);
        tokio::spawn(async move {
            let opts = ObtainOptions::new().wait(Duration::from_secs(30));
            waiter.obtain_with("held", opts).await
        })
    };
    sleep(Duration::from_secs(2)).await;
    let (leader, term) = cluster.leader(Duration::from_secs(5)).await;
    let before = entered.lock().unwrap().len();
    let killed_at = Instant::now();
    cluster.members[leader].process.kill();
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "kill took {:?}",
        killed_at.elapsed()
    );
    // Another member leads in a later term within 20 s. Polled: right after
    // the kill a member may still answer with the view from before it.
    let (new_leader, new_term) = loop {
        let (next, next_term) = cluster.leader(Duration::from_secs(20)).await;
        if next != leader && next_term > term {
            break (next, next_term);
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "no new election: m{leader} term {term} -> m{next} term {next_term}"
        );
        sleep(50 * MS).await;
    };
    let elected_at = Instant::now();
    sleep(Duration::from_secs(5)).await;
    // The held lock survived the failover (a new leader only extends
    // leases) and its waiter never got it meanwhile; released, it passes on.
    assert!(
        !held.is_lost(),
        "the held lock was lost across the failover"
    );
    assert!(!queued.is_finished(), "the waiter obtained a held lock");
    let held_token = held.fencing_token();
    refresher.stop().await;
    held.release().await.unwrap();
    let next = timeout(Duration::from_secs(5), queued)
        .await
        .expect("the waiter got the lock after the release")
        .unwrap()
        .unwrap();
    assert!(next.fencing_token() > held_token);
    next.release().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        timeout(WAIT + Duration::from_secs(10), task)
            .await
            .expect("a worker hung")
            .expect("a worker failed");
    }
    let entered = entered.lock().unwrap().clone();
    let after_election = entered.iter().filter(|t| **t > elected_at).count();
    let total = section.assert_tokens_strictly_increase();
    eprintln!(
        "sections: {before} before killing leader m{leader} (term {term}), {total} in all, \
         {after_election} after m{new_leader} won term {new_term} {:?} after the kill; {} errors",
        elected_at - killed_at,
        errors.load(Ordering::SeqCst)
    );
    assert!(before >= 5, "too little progress before the kill: {before}");
    assert!(
        after_election >= 5,
        "waiters made no progress under the new leader: {after_election}"
    );
}

/// A paused (SIGSTOPped) etcd: the held lock's `lost()` fires by its
/// validity deadline, and obtains, operations and connects return within
/// their bounds instead of hanging; after SIGCONT the lock is obtainable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_etcd_fires_lost_by_the_deadline_and_nothing_hangs() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let ns = unique_namespace("paused");
    let a = locker(&Arc::new(backend(&endpoints).await), &ns);
    let b = Locker::builder(Arc::new(backend(&endpoints).await))
        .namespace(&ns)
        .op_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let ttl = Duration::from_secs(2);
    let lock = a
        .obtain_with("k", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let token = lock.fencing_token();
    let refresher = lock.start_refresh(|_| {});
    sleep(Duration::from_millis(900)).await; // at least one refresh went through
    assert!(!lock.is_lost());

    cluster.members[0].process.pause();
    let paused_at = Instant::now();
    let deadline = lock.valid_until();
    assert!(deadline <= paused_at + ttl, "validity beyond one TTL");
    let reason = timeout(ttl * 2, lock.lost()).await.expect("lost() fired");
    let fired = Instant::now();
    assert_eq!(reason, LostReason::Expired);
    // No refresh can succeed while paused: the deadline is still the one
    // from before the pause, and lost() fired at it.
    assert_eq!(lock.valid_until(), deadline);
    assert!(
        // Armed EXPIRY_LEAD early, so that it is not late.
        fired + distlock::EXPIRY_LEAD >= deadline && fired < deadline + 100 * MS,
        "fired {:?} after the deadline",
        fired - deadline
    );

    let start = Instant::now();
    let waited = b
        .obtain_with("k", ObtainOptions::new().wait(Duration::from_millis(800)))
        .await;
    assert!(waited.is_err(), "obtained from a paused etcd");
    assert!(
        start.elapsed() < Duration::from_millis(1300),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    match b.try_obtain("k2").await {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let connect = EtcdBackend::connect(
        &endpoints,
        EtcdOptions::new().dial_timeout(Duration::from_secs(1)),
    )
    .await;
    assert!(connect.is_err(), "connected to a paused etcd");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );

    cluster.members[0].process.resume();
    refresher.stop().await;
    let next = b
        .obtain_with("k", ObtainOptions::new().wait(Duration::from_secs(15)))
        .await
        .expect("obtainable again after SIGCONT");
    assert!(next.fencing_token() > token);
    assert!(start.elapsed() < Duration::from_secs(20));
    next.release().await.unwrap();
    drop(lock);
}

/// Revoking the holder's lease behind its back fires `lost()` (NotHeld)
/// within a refresh interval; a new lease serves later obtains; close
/// revokes the leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_fires_lost_and_a_new_lease_serves_later_obtains() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("revoked");
    let backend = Arc::new(backend(&endpoints).await);
    let locker = locker(&backend, &ns);
    let ttl = Duration::from_secs(3);
    let lock = locker
        .obtain_with("k", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let errors = seen.clone();
    let _refresher = lock.start_refresh(move |e| errors.lock().unwrap().push(e.is_not_held()));
    let leases = backend.lease_ids();
    assert_eq!(leases.len(), 1, "one lease for one lock");
    raw.lease_revoke(leases[0]).await.unwrap();
    let revoked_at = Instant::now();
    let reason = timeout(ttl, lock.lost()).await.expect("lost() fired");
    assert_eq!(reason, LostReason::NotHeld);
    assert!(revoked_at.elapsed() < ttl / 3 + Duration::from_millis(500));
    assert!(Instant::now() < lock.valid_until());
    // The refresher reports the loss to on_error right after ending the lock.
    timeout(Duration::from_secs(1), async {
        while seen.lock().unwrap().is_empty() {
            sleep(5 * MS).await;
        }
    })
    .await
    .expect("on_error saw the loss");
    assert_eq!(*seen.lock().unwrap(), vec![true]);

    let again = locker
        .obtain_with(
            "k",
            ObtainOptions::new().ttl(ttl).wait(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert!(again.fencing_token() > lock.fencing_token());
    let renewed = backend.lease_ids();
    assert_eq!(renewed.len(), 1);
    assert_ne!(renewed, leases, "a new lease");
    let holder = holder_entry(&mut raw, &ns, "k").await.unwrap();
    assert_eq!(holder.lease(), renewed[0]);

    // The backend is the test's, not the locker's: closing the locker
    // leaves it open, closing the backend revokes its leases.
    locker.close().await.unwrap();
    backend.close().await.unwrap();
    let left = raw.lease_time_to_live(renewed[0], None).await.unwrap();
    assert!(left.ttl() <= 0, "close revokes the lease: {}", left.ttl());
    assert!(holder_entry(&mut raw, &ns, "k").await.is_none());
    drop((again, lock));
}

/// A queued waiter whose lease is revoked (its queue key deleted) never
/// takes that as a grant: it does not obtain while the holder holds, and
/// later obtains only through a new entry, in turn with another waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_waiter_whose_lease_is_revoked_never_falsely_succeeds() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("revoked_waiter");
    let holder_locker = locker(&Arc::new(backend(&endpoints).await), &ns);
    let waiter_backend = Arc::new(backend(&endpoints).await);
    let waiter_locker = locker(&waiter_backend, &ns);
    let other_locker = locker(&Arc::new(backend(&endpoints).await), &ns);
    let held = holder_locker
        .obtain_with("k", ObtainOptions::new().ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    let section = Arc::new(CriticalSection::new());
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let contend = |locker: Locker| {
        let (section, released_at) = (section.clone(), released_at.clone());
        tokio::spawn(async move {
            let opts = ObtainOptions::new().wait(Duration::from_secs(15));
            let lock = locker.obtain_with("k", opts).await.unwrap();
            let at = Instant::now();
            let released = released_at.lock().unwrap().expect("obtained while held");
            assert!(at >= released, "obtained before the holder released");
            section.enter(lock.fencing_token());
            sleep(100 * MS).await;
            section.leave();
            let token = lock.fencing_token();
            lock.release().await.unwrap();
            token
        })
    };
    let waiter = contend(waiter_locker);
    await_entries(&mut raw, &ns, "k", 2, Duration::from_secs(3)).await;
    let revoked = [second_entry(&mut raw, &ns, "k").await.lease()];
    raw.lease_revoke(revoked[0]).await.unwrap();
    let other = contend(other_locker);
    // The waiter keeps polling and watching; neither may get the lock now.
    sleep(Duration::from_millis(600)).await;
    assert!(!waiter.is_finished() && !other.is_finished());
    let queued = entries(&mut raw, &ns, "k").await;
    assert!(queued >= 2, "the other waiter queued: {queued}");
    *released_at.lock().unwrap() = Some(Instant::now());
    let first = held.fencing_token();
    held.release().await.unwrap();
    let waiter_token = timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    let other_token = timeout(Duration::from_secs(10), other)
        .await
        .unwrap()
        .unwrap();
    assert!(waiter_token > first && other_token > first);
    assert_eq!(section.assert_tokens_strictly_increase(), 2);
    let renewed = waiter_backend.lease_ids();
    assert!(
        !renewed.contains(&revoked[0]),
        "the revoked lease is not reused"
    );
}

/// A wait that times out, and one whose future is dropped, delete their
/// queue entries; a try never writes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_waits_remove_their_queue_entries() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("abandoned");
    let a = locker(&Arc::new(backend(&endpoints).await), &ns);
    let b = locker(&Arc::new(backend(&endpoints).await), &ns);
    let held = a.obtain("k").await.unwrap();

    let before = revision(&mut raw).await;
    assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
    assert_eq!(revision(&mut raw).await, before, "a failed try wrote");
    assert_eq!(entries(&mut raw, &ns, "k").await, 1);

    let waiting = {
        let b = b.clone();
        tokio::spawn(async move {
            b.obtain_with("k", ObtainOptions::new().wait(Duration::from_millis(700)))
                .await
        })
    };
    await_entries(&mut raw, &ns, "k", 2, Duration::from_millis(600)).await;
    assert!(waiting.await.unwrap().unwrap_err().is_not_obtained());
    await_entries(&mut raw, &ns, "k", 1, Duration::from_secs(1)).await;

    let dropped = b.obtain_with("k", ObtainOptions::new().wait_forever());
    let probe = async {
        await_entries(&mut raw, &ns, "k", 2, Duration::from_secs(1)).await;
        sleep(50 * MS).await;
    };
    tokio::select! {
        _ = dropped => panic!("obtained a held lock"),
        _ = probe => {}
    }
    await_entries(&mut raw, &ns, "k", 1, Duration::from_secs(1)).await;
    held.release().await.unwrap();
    await_entries(&mut raw, &ns, "k", 0, Duration::from_secs(1)).await;
}

/// An uncontended obtain + release on a warm locker costs exactly two etcd
/// writes (the revision moves by two); a contended try costs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_cycle_costs_two_writes() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("writes");
    let locker = locker(&Arc::new(backend(&endpoints).await), &ns);
    locker
        .obtain("warm-up")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    const CYCLES: i64 = 20;
    let before = revision(&mut raw).await;
    let proposals = raft_index(&mut raw).await;
    for i in 0..CYCLES {
        let lock = locker.obtain(format!("k{}", i % 3)).await.unwrap();
        lock.release().await.unwrap();
    }
    let after = revision(&mut raw).await;
    assert_eq!(after - before, 2 * CYCLES, "revisions per cycle");
    let proposed = raft_index(&mut raw).await - proposals;
    assert_eq!(proposed, 2 * CYCLES as u64, "raft proposals per cycle");
}

/// A lock that was extended and then no longer refreshed, while its process
/// keeps the shared lease alive for other locks, is deleted one TTL after
/// its last extend: the reaper follows extends, not just the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_lock_left_unrefreshed_expires_after_its_ttl() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("stale");
    let locker = locker(&Arc::new(backend(&endpoints).await), &ns);
    // Not shorter than the session TTL: the attempt's own backstop (one
    // session TTL after the attempt) must not be what deletes it.
    let ttl = FIXTURE_SESSION_TTL;
    let opts = ObtainOptions::new().ttl(ttl);
    // Another lock, refreshed throughout, keeps the session lease alive.
    let busy = locker.obtain_with("busy", opts.clone()).await.unwrap();
    let _refresher = busy.start_refresh(|e| panic!("refresh failed: {e}"));
    let stale = locker.obtain_with("stale", opts).await.unwrap();
    // Half a TTL later, so the extend moves the deadline well past the grant's.
    sleep(ttl / 2).await;
    let sent = Instant::now();
    stale.refresh().await.unwrap();
    // Held (the handle is kept), but never refreshed again: still there
    // shortly before one TTL after the extend, gone shortly after.
    sleep(ttl - Duration::from_millis(300)).await;
    assert_eq!(entries(&mut raw, &ns, "stale").await, 1, "deleted early");
    await_entries(&mut raw, &ns, "stale", 0, Duration::from_millis(1300)).await;
    assert!(
        sent.elapsed() >= ttl,
        "deleted before one TTL after the extend"
    );
    assert_eq!(stale.lost().await, LostReason::Expired);
    assert_eq!(entries(&mut raw, &ns, "busy").await, 1);
}

/// A waiter joins the queue with one write and then polls with reads only;
/// giving up costs one delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_polls_without_writing() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("wait_cost");
    let a = locker(&Arc::new(backend(&endpoints).await), &ns);
    // The waiter runs over a client the application already had.
    let existing = raw_client(&endpoints).await;
    let b = locker(
        &Arc::new(EtcdBackend::with_client(existing, EtcdOptions::new()).unwrap()),
        &ns,
    );
    // Warm both lockers' leases, and the waiter's lease for queued entries.
    a.obtain("warm-a").await.unwrap().release().await.unwrap();
    b.obtain("warm-b").await.unwrap().release().await.unwrap();
    let held = a.obtain("k").await.unwrap();
    let short = ObtainOptions::new().wait(Duration::from_millis(100));
    assert!(
        b.obtain_with("k", short)
            .await
            .unwrap_err()
            .is_not_obtained()
    );
    await_entries(&mut raw, &ns, "k", 1, Duration::from_secs(1)).await;
    let proposals = raft_index(&mut raw).await;
    let retry = distlock::RetryStrategy::linear(Duration::from_millis(50));
    let err = b
        .obtain_with(
            "k",
            ObtainOptions::new()
                .wait(Duration::from_secs(1))
                .retry(retry),
        )
        .await
        .unwrap_err();
    match err {
        Error::NotObtained { attempts, .. } => assert!(attempts >= 10, "{attempts} attempts"),
        other => panic!("expected NotObtained, got {other:?}"),
    }
    await_entries(&mut raw, &ns, "k", 1, Duration::from_secs(1)).await;
    let proposed = raft_index(&mut raw).await - proposals;
    assert_eq!(proposed, 2, "one put to queue, one delete to leave");
    held.release().await.unwrap();
}

/// `etcd://user:password@host` authenticates. Credentials etcd turns down
/// are a refusal naming the user, reported at once rather than retried
/// until the wait runs out: a wrong password, an unknown user, and no user
/// at all where auth is on. The error hides the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_authenticate_with_user_and_password() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    enable_auth(&mut raw, "s3cret/pw").await;
    let host = &endpoints[0];
    let url = format!("etcd://root:s3cret%2Fpw@{host}/?namespace=authed");
    let locker = Locker::from_url(&url).await.unwrap();
    assert_eq!(locker.backend_name(), "etcd");
    assert_eq!(locker.namespace().as_str(), "authed");
    let lock = locker.try_obtain("k").await.unwrap();
    assert!(locker.is_locked("k").await.unwrap());
    lock.release().await.unwrap();
    locker.close().await.unwrap();

    for (url, says) in [
        (format!("etcd://root:wrong-hunter2@{host}"), "user \"root\""),
        (format!("etcd://nobody:s3cret@{host}"), "user \"nobody\""),
        (format!("etcd://{host}"), "needs a user"),
    ] {
        let msg = assert_refused_at_once(&url, &[says]).await;
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}

/// Turns etcd's auth on, with a `root` user (etcd's requirement) whose
/// password is `password`.
async fn enable_auth(raw: &mut Client, password: &str) {
    raw.user_add("root", password, None).await.unwrap();
    raw.user_grant_role("root", "root").await.unwrap();
    raw.auth_enable().await.unwrap();
}

/// A user without a role on the namespace's prefix is refused at once, and
/// the error names the user and the prefix the role must grant; with that
/// role the same user locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_a_role_on_the_namespace_is_refused_at_once() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    raw.user_add("app", "pw", None).await.unwrap();
    raw.role_add("other").await.unwrap();
    raw.role_grant_permission("other", Permission::read_write("/other/").with_prefix())
        .await
        .unwrap();
    raw.user_grant_role("app", "other").await.unwrap();
    enable_auth(&mut raw, "rootpw").await;
    let host = &endpoints[0];
    let url = format!("etcd://app:pw@{host}/?namespace=app");
    assert_refused_at_once(&url, &["user \"app\"", "readwrite", "/app/"]).await;

    let mut root = Client::connect(
        &endpoints,
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .unwrap();
    root.role_add("app").await.unwrap();
    root.role_grant_permission("app", Permission::read_write("/app/").with_prefix())
        .await
        .unwrap();
    root.user_grant_role("app", "app").await.unwrap();
    let locker = Locker::from_url(&url).await.unwrap();
    let lock = locker
        .obtain_with("k", ObtainOptions::new().wait(Duration::from_secs(10)))
        .await
        .unwrap();
    lock.release().await.unwrap();
    locker.close().await.unwrap();
}

/// TLS: a backend trusting the server's CA locks through `https://`; an
/// `etcds://` URL, which trusts only the system's roots, refuses the
/// unknown CA at once, which shows it really speaks TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_verify_the_server() {
    let certs = std::env::temp_dir().join(format!("distlock-etcd-tls-{}", std::process::id()));
    let ca = std::fs::read(distlock_testkit::certs::Certificates::make(&certs).ca()).unwrap();
    let (client, peer) = (
        distlock_testkit::server::free_port(),
        distlock_testkit::server::free_port(),
    );
    let path = |f: &str| certs.join(f).display().to_string();
    let args = vec![
        "--name".into(),
        "tls".into(),
        "--data-dir".into(),
        "data".into(),
        "--listen-client-urls".into(),
        format!("https://127.0.0.1:{client}"),
        "--advertise-client-urls".into(),
        format!("https://127.0.0.1:{client}"),
        "--listen-peer-urls".into(),
        format!("http://127.0.0.1:{peer}"),
        "--initial-advertise-peer-urls".into(),
        format!("http://127.0.0.1:{peer}"),
        "--initial-cluster".into(),
        format!("tls=http://127.0.0.1:{peer}"),
        "--cert-file".into(),
        path("server.crt"),
        "--key-file".into(),
        path("server.key"),
    ];
    let binary = distlock_testkit::server::require_binary("etcd", "etcd-server");
    let server = tokio::task::spawn_blocking(move || {
        distlock_testkit::server::ServerProcess::start("etcd-tls", binary, args, vec![client])
    })
    .await
    .unwrap();

    use distlock::backend::etcd::etcd_client::{Certificate, TlsOptions};
    let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    let endpoint = format!("https://127.0.0.1:{client}");
    let backend = EtcdBackend::connect([endpoint.as_str()], EtcdOptions::new().tls(tls))
        .await
        .unwrap_or_else(|e| panic!("TLS connect failed: {e}; log:\n{}", server.log()));
    let locker = locker(&Arc::new(backend), "tls");
    let lock = locker.try_obtain("k").await.unwrap();
    assert!(locker.is_locked("k").await.unwrap());
    lock.release().await.unwrap();

    // Refused at once: retrying cannot make the certificate trusted.
    assert_refused_at_once(
        &format!("etcds://127.0.0.1:{client}"),
        &["certificate", "UnknownIssuer"],
    )
    .await;
    let plain = EtcdBackend::connect(
        [format!("127.0.0.1:{client}")],
        EtcdOptions::new().dial_timeout(Duration::from_secs(2)),
    )
    .await;
    assert!(plain.is_err(), "plain HTTP/2 reached a TLS port");
    drop(server);
    let _ = std::fs::remove_dir_all(&certs);
}

/// Waiters in different lockers (different clients and leases) are served
/// in the order they queued in etcd: while every task keeps contending, no
/// task gets the lock twice before all the others had it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_different_lockers_are_served_in_queue_order() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let ns = unique_namespace("fifo");
    let mut lockers = Vec::new();
    for _ in 0..4 {
        lockers.push(locker(&Arc::new(backend(&endpoints).await), &ns));
    }
    // Long enough for every other task to queue.
    assert_served_in_turn(lockers, "k", 30 * MS).await;
}

/// A lease kept for a longer lock TTL is revoked once nobody has used it
/// for the idle timeout, never while a lock is on it; the session-TTL lease
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_leases_for_longer_ttls_are_revoked_but_never_under_a_lock() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("idle_leases");
    let options = EtcdOptions::new()
        .session_ttl(Duration::from_secs(2))
        .lease_idle_timeout(Duration::from_secs(1));
    let backend = Arc::new(EtcdBackend::connect(&endpoints, options).await.unwrap());
    assert_eq!(backend.lease_ttl_for(Duration::from_secs(4)).as_secs(), 6);
    let locker = locker(&backend, &ns);
    // One short lock taken and released: what touches the session lease.
    let short_cycle = || async {
        let opts = ObtainOptions::new().ttl(Duration::from_secs(1));
        locker
            .obtain_with("short", opts)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    };
    let long = locker
        .obtain_with("long", ObtainOptions::new().ttl(Duration::from_secs(4)))
        .await
        .unwrap();
    let long_lease = holder_entry(&mut raw, &ns, "long").await.unwrap().lease();
    short_cycle().await;
    assert_eq!(backend.lease_ids().len(), 2);

    // Idle past the timeout, but a lock is on it: it stays.
    sleep(Duration::from_millis(1300)).await;
    short_cycle().await;
    assert!(backend.lease_ids().contains(&long_lease));
    long.refresh().await.unwrap();
    long.release().await.unwrap();

    // Unused for the idle timeout: revoked at the next obtain.
    sleep(Duration::from_millis(1300)).await;
    short_cycle().await;
    assert!(!backend.lease_ids().contains(&long_lease));
    assert_eq!(backend.lease_ids().len(), 1, "the session-TTL lease stays");
    timeout(Duration::from_secs(2), async {
        while raw
            .lease_time_to_live(long_lease, None)
            .await
            .unwrap()
            .ttl()
            > 0
        {
            sleep(20 * MS).await;
        }
    })
    .await
    .expect("the idle lease was revoked");
    // A later long lock gets a new lease.
    let again = locker
        .obtain_with("long", ObtainOptions::new().ttl(Duration::from_secs(4)))
        .await
        .unwrap();
    assert_ne!(
        holder_entry(&mut raw, &ns, "long").await.unwrap().lease(),
        long_lease
    );
    again.release().await.unwrap();
}

/// One gauge from etcd's Prometheus metrics (served on the client port).
fn metric(endpoint: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(endpoint).unwrap();
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// All waiters of a backend share one watch stream: 20 waiters on 20 held
/// keys open one stream with one watch each, not 20 streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_one_watch_stream() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let ns = unique_namespace("one_stream");
    let holder = locker(&Arc::new(backend(&endpoints).await), &ns);
    let waiter = locker(&Arc::new(backend(&endpoints).await), &ns);
    let streams = || metric(&endpoints[0], "etcd_debugging_mvcc_watch_stream_total");
    let watchers = || metric(&endpoints[0], "etcd_debugging_mvcc_watcher_total");
    let (streams_before, watchers_before) = (streams(), watchers());
    const KEYS: usize = 20;
    let mut held = Vec::new();
    for i in 0..KEYS {
        held.push(holder.obtain(format!("k{i}")).await.unwrap());
    }
    let waits: Vec<_> = (0..KEYS)
        .map(|i| {
            let waiter = waiter.clone();
            tokio::spawn(async move {
                // A long poll: waiting is all watches.
                let retry = distlock::RetryStrategy::linear(Duration::from_secs(5));
                let opts = ObtainOptions::new()
                    .wait(Duration::from_secs(20))
                    .retry(retry);
                waiter.obtain_with(format!("k{i}"), opts).await
            })
        })
        .collect();
    timeout(Duration::from_secs(5), async {
        while watchers() < watchers_before + KEYS as f64 {
            sleep(20 * MS).await;
        }
    })
    .await
    .expect("every waiter watches");
    assert_eq!(streams() - streams_before, 1.0, "one shared watch stream");
    for lock in held {
        lock.release().await.unwrap();
    }
    for wait in waits {
        let lock = timeout(Duration::from_secs(3), wait)
            .await
            .expect("woken by the watch, not the 5 s poll")
            .unwrap()
            .unwrap();
        lock.release().await.unwrap();
    }
}
