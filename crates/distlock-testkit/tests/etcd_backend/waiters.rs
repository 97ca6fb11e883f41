//! Queue entries that outlive their waiter: a waiter cut off from etcd,
//! and a waiter re-queued while the backend's reaper deletes its old entry.

use super::*;

/// A waiter cut off from etcd (its keepalives stop, as when its process
/// dies) holds up the waiter queued behind it for at most about the
/// waiter lease after the holder releases, whatever its lock TTL — not for
/// the lease of the lock it waited for (45 s at the default 30 s TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_waiter_holds_up_the_queue_for_at_most_the_waiter_lease() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("cut_waiter");
    let holder = locker(&Arc::new(backend(&endpoints).await), &ns);
    let proxy = proxy_to(&endpoints[0]).await;
    let cut = locker(&behind(&proxy).await, &ns);
    let next = locker(&Arc::new(backend(&endpoints).await), &ns);
    // The default TTL (30 s) everywhere.
    let held = holder.obtain("k").await.unwrap();
    let wait = ObtainOptions::new().wait(Duration::from_secs(120));
    let cut_wait = {
        let wait = wait.clone();
        tokio::spawn(async move { cut.obtain_with("k", wait).await })
    };
    await_entries(&mut raw, &ns, "k", 2, Duration::from_secs(3)).await;
    let next_wait = tokio::spawn(async move { next.obtain_with("k", wait).await });
    await_entries(&mut raw, &ns, "k", 3, Duration::from_secs(3)).await;

    proxy.set_blackhole(true);
    let released = Instant::now();
    held.release().await.unwrap();
    let lock = timeout(Duration::from_secs(60), next_wait)
        .await
        .expect("the next waiter got the lock within 60 s")
        .unwrap()
        .unwrap();
    let took = released.elapsed();
    eprintln!("the waiter behind a cut-off one got the lock {took:?} after the release");
    assert!(
        took < Duration::from_millis(3500),
        "a cut-off waiter held up the queue for {took:?}"
    );
    lock.release().await.unwrap();
    cut_wait.abort();
}

/// A queued waiter whose lease is gone re-queues under a new lease while
/// the backend's reaper deletes its old entry, both held up by the
/// network: the reaper must neither run beside the attempt nor forget the
/// entry the attempt re-put. Otherwise an obtain dropped then leaves that
/// key on a lease its process keeps alive, blocking the lock until the
/// process exits.
///
/// The race needs the attempt to go on (its lease granted) before the
/// reaper sees its delete answered, and etcd tends to answer a delete
/// before a lease grant sent with it. So the attempt's lease grant is made
/// to go later (it queues behind another lease being created), and the
/// reaper's delete too: two locks of the same backend, left unrefreshed,
/// are reaped first, one alone before the entry is due, one in the entry's
/// batch, ahead of it. One thread, so tasks run in the order replies wake
/// them.
#[tokio::test]
async fn a_waiter_re_queued_while_its_entry_is_reaped_leaves_no_entry_behind() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("reap_race");
    let holder = locker(&Arc::new(backend(&endpoints).await), &ns);
    let held = holder
        .obtain_with("k", ObtainOptions::new().ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    let proxy = proxy_to(&endpoints[0]).await;
    // Kept to the end: a process that lives on.
    let waiter_backend = behind(&proxy).await;
    let waiter = locker(&waiter_backend, &ns);
    // Reaped 1.4 s and 1.7 s from now (both on a 3 s lease).
    let mut unrefreshed = Vec::new();
    for (key, ms) in [("y", 1400), ("x", 1700)] {
        let ttl = Duration::from_millis(ms);
        unrefreshed.push(
            waiter
                .obtain_with(key, ObtainOptions::new().ttl(ttl))
                .await
                .unwrap(),
        );
    }
    // Attempts 1.5 s apart; the reaper deletes a queued entry 2 s (its
    // lease TTL) after its last attempt.
    let opts = ObtainOptions::new()
        .ttl(Duration::from_secs(1))
        .wait(Duration::from_secs(30))
        .retry(distlock::RetryStrategy::linear(Duration::from_millis(1500)));
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.obtain_with("k", opts).await })
    };
    await_entries(&mut raw, &ns, "k", 2, Duration::from_secs(3)).await;
    let queued = Instant::now();
    // Its lease revoked behind its back: the entry is gone, and the backend
    // learns it from its next keepalive, within half a second.
    let lease = second_entry(&mut raw, &ns, "k").await.lease();
    raw.lease_revoke(lease).await.unwrap();
    sleep_until(queued + 900 * MS).await;
    // In the black hole: a lease for a 30 s lock asked for (1.2 s), "y"
    // reaped (1.4 s), the next attempt waiting to ask for a new lease
    // (1.5 s), "x" and the old entry due (1.7 s, 2 s).
    proxy.set_blackhole(true);
    sleep_until(queued + 1200 * MS).await;
    let long = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.obtain_with("z", ObtainOptions::new()).await })
    };
    sleep_until(queued + 2600 * MS).await;
    proxy.set_blackhole(false);
    // The attempt re-puts its entry under the new lease, and the obtain is
    // dropped before its next attempt: its release must delete that entry.
    await_entries(&mut raw, &ns, "k", 2, Duration::from_secs(1)).await;
    waiting.abort();
    let _ = waiting.await;
    held.release().await.unwrap();

    let other = locker(&Arc::new(backend(&endpoints).await), &ns);
    let start = Instant::now();
    let got = other
        .obtain_with("k", ObtainOptions::new().wait(Duration::from_secs(5)))
        .await;
    let left = entries(&mut raw, &ns, "k").await;
    assert!(
        got.is_ok(),
        "not obtained after {:?} ({:?}): the dropped waiter left {} entries",
        start.elapsed(),
        got.err(),
        left
    );
    drop((unrefreshed, long.await, waiter_backend));
}
