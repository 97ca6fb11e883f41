//! TTL expiry: what an unrefreshed lock, a release past its TTL and a grant
//! arriving past its deadline do.

use std::sync::Arc;

use distlock::{Error, Locker};
use tokio::time::{Instant, sleep};

use super::{MS, SLACK, assert_not_held, expires, locker, next_holder_wait, short};
use crate::Faulty;
use crate::fixture::Fixture;

/// Releasing an expired lock is NotHeld. Without TTL expiry: past its TTL
/// the lock is still held, not lost, and releases cleanly.
pub async fn release_after_expiry_is_not_held(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "release_expired").await;
    let lock = locker.obtain_with("k", short(fx)).await.unwrap();
    sleep(fx.short_ttl() + 100 * MS).await;
    if expires(&locker) {
        assert!(lock.is_lost());
        assert_not_held(lock.release().await);
    } else {
        assert!(!lock.is_lost());
        assert!(locker.is_locked("k").await.unwrap());
        lock.release().await.unwrap();
        assert!(!locker.is_locked("k").await.unwrap());
    }
}

/// An unrefreshed lock frees its key after the TTL, and the stale handle's
/// release cannot touch the next holder.
///
/// Without TTL expiry: the key stays held past the TTL while its holder
/// lives, and goes to the next holder once released.
pub async fn expiry_frees_the_key_after_the_ttl(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "expiry").await;
    let b = fx.locker(&ns).await;
    let stale = a.obtain_with("k", short(fx)).await.unwrap();
    assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
    sleep(fx.short_ttl() + 100 * MS).await;
    if !expires(&a) {
        assert!(
            b.try_obtain("k").await.unwrap_err().is_not_obtained(),
            "a lock that cannot expire was free after its TTL"
        );
        assert!(!stale.is_lost());
        let token = stale.fencing_token();
        stale.release().await.unwrap();
        let fresh = b
            .obtain_with("k", short(fx).wait(next_holder_wait(fx)))
            .await
            .unwrap();
        assert!(fresh.fencing_token() > token);
        fresh.release().await.unwrap();
        return;
    }
    let fresh = b
        .obtain_with("k", short(fx).wait(next_holder_wait(fx)))
        .await
        .unwrap();
    assert_not_held(stale.release().await);
    let holder = b
        .inspect("k")
        .await
        .unwrap()
        .expect("the new holder keeps it");
    assert_eq!(holder.fencing_token, fresh.fencing_token());
    fresh.release().await.unwrap();
}

/// A grant whose reply arrives after the lock's validity deadline is never
/// handed out: the store may have expired it and granted the key to someone
/// else meanwhile. (Found by the torture harness: etcd obtains stalled by a
/// server restart returned locks already 400 ms past their deadline.) One
/// attempt fails with `Timeout`; a waiting obtain tries again and returns a
/// lock with its deadline ahead. A store without TTL expiry cannot lose the
/// lock by time, so there the late grant is handed out.
pub async fn a_grant_arriving_after_its_deadline_is_not_handed_out(fx: &dyn Fixture) {
    let (plain, ns) = locker(fx, "late_grant").await;
    let ttl = fx.short_ttl();
    // A store whose first acquisition reply reaches the engine late, as
    // over a stalled network: the store itself answers at once.
    let late = || {
        let backend = Faulty::new(plain.backend());
        backend.late_acquire_reply(ttl * 2);
        Locker::builder(Arc::new(backend))
            .namespace(ns.as_str())
            .build()
            .unwrap()
    };
    let result = late().obtain_with("k", short(fx).try_once()).await;
    if !expires(&plain) {
        let lock = result.expect("a lock without TTL expiry is still ours");
        assert!(!lock.is_lost());
        lock.release().await.unwrap();
        return;
    }
    match result {
        Err(Error::Timeout { op: "acquire", .. }) => {}
        Ok(lock) => panic!(
            "handed out a lock {:?} past its validity deadline",
            Instant::now() - lock.valid_until()
        ),
        Err(other) => panic!("expected Timeout, got {other:?}"),
    }
    // The refused grant does not linger.
    let start = Instant::now();
    while plain.is_locked("k").await.unwrap() {
        assert!(
            start.elapsed() < ttl + SLACK,
            "the refused grant is still held"
        );
        sleep(10 * MS).await;
    }
    let lock = late()
        .obtain_with("k", short(fx).wait(ttl * 4 + SLACK))
        .await
        .unwrap();
    assert!(
        lock.valid_until() > Instant::now() && !lock.is_lost(),
        "handed out a lock past its validity deadline"
    );
    lock.release().await.unwrap();
}
