//! One permit, one lease: limits, expiry, extend and release, listing.

use super::*;

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

/// A waiter that gives up leaves nothing behind even when the backend
/// releasing it never read the reply that queued it: the CLI's
/// `distlock run`, killed while waiting, once left the waiters' leases
/// hash (bare-machine CI, 2026-12-02) when the signal came between the
/// store queuing it and the backend reading that reply. Here a second
/// backend, which never saw the reply, releases the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_released_by_a_backend_that_missed_its_queuing_leaves_nothing() {
    let server = shared();
    let (queuing, releasing) = (
        server.backend().build().await.unwrap(),
        server.backend().build().await.unwrap(),
    );
    let holder = request("forgot", "k", Share::Exclusive, Duration::from_secs(30));
    granted(&queuing, &holder).await;
    let mut waiter = request("forgot", "k", Share::Exclusive, Duration::from_secs(30));
    waiter.will_wait = true;
    assert!(matches!(
        queuing.try_acquire(&waiter).await.unwrap(),
        Attempt::Contended { .. }
    ));
    assert_eq!(queued(server, "forgot", "k").await, 1);
    assert!(
        releasing
            .release(&waiter.lease())
            .await
            .unwrap_err()
            .is_not_held()
    );
    queuing.release(&holder.lease()).await.unwrap();
    assert_eq!(server.leftovers("forgot").await, Vec::<String>::new());
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
