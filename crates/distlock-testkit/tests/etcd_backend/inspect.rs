//! What `inspect` reports as the time left: never more than etcd will
//! really keep the lock.

use super::*;

/// A lock nobody refreshes: some seconds after the grant, `expires_in` has
/// shrunk by those seconds, and the key is gone no earlier than it said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reports_the_time_left_not_the_ttl() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("time_left");
    let holder = locker(&Arc::new(backend(&endpoints).await), &ns);
    let inspector = locker(&Arc::new(backend(&endpoints).await), &ns);
    let ttl = Duration::from_secs(6);
    let sent = Instant::now();
    let lock = holder
        .obtain_with("k", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let left = |h: Option<distlock::HolderInfo>| h.expect("held").expires_in.expect("a TTL");
    let first = left(inspector.inspect("k").await.unwrap());
    assert!(first <= ttl && first > ttl - 500 * MS, "{first:?}");

    sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    let second = left(inspector.inspect("k").await.unwrap());
    let since = asked - sent;
    eprintln!("expires_in {first:?} at the grant, {second:?} {since:?} later");
    assert!(
        second <= ttl.saturating_sub(since) + 100 * MS && second + 500 * MS >= ttl - since,
        "{second:?} left {since:?} after the grant of a {ttl:?} lock"
    );
    // The holder's process deletes the unrefreshed lock one TTL after the grant.
    await_entries(&mut raw, &ns, "k", 0, ttl).await;
    let gone = Instant::now();
    assert!(
        asked + second <= gone + 100 * MS,
        "said {second:?}, gone {:?} later",
        gone - asked
    );
    drop(lock);
}

/// A holder cut off from etcd can neither refresh nor delete its lock:
/// past its TTL, etcd keeps the key until the holder's lease expires, and
/// `inspect` reports the lease's time left, less than the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_of_a_cut_off_holder_reports_its_lease_time_left() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    let mut raw = raw_client(&endpoints).await;
    let ns = unique_namespace("lease_left");
    let proxy = proxy_to(&endpoints[0]).await;
    let holder = locker(&behind(&proxy).await, &ns);
    let inspector = locker(&Arc::new(backend(&endpoints).await), &ns);
    let ttl = Duration::from_secs(2);
    let lock = holder
        .obtain_with("k", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let lease = holder_entry(&mut raw, &ns, "k").await.unwrap().lease();
    proxy.set_blackhole(true);
    sleep(ttl + 300 * MS).await;

    let asked = Instant::now();
    let held = inspector
        .inspect("k")
        .await
        .unwrap()
        .expect("kept by its lease");
    let left = held.expires_in.expect("a TTL");
    let lease_left = raw.lease_time_to_live(lease, None).await.unwrap().ttl();
    await_entries(&mut raw, &ns, "k", 0, Duration::from_secs(4)).await;
    let gone = Instant::now();
    eprintln!(
        "reported {left:?} ({lease_left} s on the lease); gone {:?} later",
        gone - asked
    );
    assert!(
        asked + left <= gone + 100 * MS,
        "said {left:?}, gone {:?} later",
        gone - asked
    );
    drop(lock);
}
