//! Reading a lock without taking it: `is_locked` and `inspect`.

use std::time::Duration;

use distlock::ObtainOptions;

use super::{expires, locker};
use crate::fixture::Fixture;

/// `is_locked` reads: it neither takes a free key nor disturbs a holder.
pub async fn is_locked_is_read_only(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "is_locked").await;
    assert!(!locker.is_locked("k").await.unwrap());
    assert!(locker.inspect("k").await.unwrap().is_none());
    let lock = locker.try_obtain("k").await.unwrap();
    for _ in 0..3 {
        assert!(locker.is_locked("k").await.unwrap());
    }
    let holder = locker.inspect("k").await.unwrap().unwrap();
    assert_eq!(holder.fencing_token, lock.fencing_token());
    lock.release().await.unwrap();
    assert!(!locker.is_locked("k").await.unwrap());
}

/// `inspect` reports the fencing token, time left and metadata.
pub async fn inspect_reports_holder_token_ttl_and_metadata(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "inspect").await;
    let ttl = Duration::from_secs(20);
    let opts = ObtainOptions::new().ttl(ttl).metadata("worker-7 {host: a}");
    let lock = locker.obtain_with("k", opts).await.unwrap();
    let holder = locker.inspect("k").await.unwrap().unwrap();
    assert_eq!(holder.fencing_token, lock.fencing_token());
    assert_eq!(holder.metadata.as_deref(), Some("worker-7 {host: a}"));
    if !expires(&locker) {
        assert_eq!(
            holder.expires_in, None,
            "a lock that cannot expire has no TTL left"
        );
    }
    if let Some(left) = holder.expires_in {
        assert!(
            left <= ttl && left > ttl - Duration::from_secs(5),
            "{left:?}"
        );
    }
    assert_eq!(lock.metadata(), Some("worker-7 {host: a}"));
    lock.release().await.unwrap();
    assert!(locker.inspect("k").await.unwrap().is_none());
}

/// Inspecting a free key leaves it free.
pub async fn inspect_never_creates_a_lock(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "inspect_free").await;
    let b = fx.locker(&ns).await;
    for _ in 0..3 {
        assert!(a.inspect("free").await.unwrap().is_none());
    }
    b.try_obtain("free").await.unwrap().release().await.unwrap();
}
