//! Cancellation and shutdown: dropped obtains, dropped locks, `close`.

use std::time::Duration;

use distlock::{Error, LostReason, ObtainOptions};
use tokio::time::{Instant, sleep, timeout};

use super::{MS, SLACK, assert_lost_soon, locker};
use crate::fixture::Fixture;

/// Dropping an obtain future, waiting or mid-attempt, leaves nothing held.
pub async fn dropped_obtain_future_leaks_nothing(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "dropped_obtain").await;
    let b = fx.locker(&ns).await;
    let held = a.obtain("k").await.unwrap();
    let waiting = b.obtain_with("k", ObtainOptions::new().wait_forever());
    assert!(timeout(100 * MS, waiting).await.is_err());
    held.release().await.unwrap();
    b.try_obtain("k").await.unwrap().release().await.unwrap();
    // Cut attempts short at many points, some mid-flight.
    for i in 0..20u64 {
        let key = format!("cut-{i}");
        let attempt = b.try_obtain(key.as_str());
        let _ = timeout(Duration::from_micros(i * 50), attempt).await;
        let freed = async {
            while b.is_locked(key.as_str()).await.unwrap() {
                sleep(5 * MS).await;
            }
        };
        timeout(SLACK, freed)
            .await
            .unwrap_or_else(|_| panic!("{key} still held after its obtain was dropped"));
    }
}

/// A lock dropped without release is released in the background.
pub async fn dropped_lock_is_released_in_the_background(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "dropped_lock").await;
    let b = fx.locker(&ns).await;
    let ttl = Duration::from_secs(30);
    drop(
        a.obtain_with("k", ObtainOptions::new().ttl(ttl))
            .await
            .unwrap(),
    );
    let start = Instant::now();
    b.obtain_with("k", ObtainOptions::new().wait(SLACK))
        .await
        .unwrap();
    assert!(start.elapsed() < SLACK);
}

/// `close` releases held locks, fires their `lost()` with `Closed`, and
/// refuses every later operation.
pub async fn close_releases_locks_and_refuses_operations(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "close").await;
    let b = fx.locker(&ns).await;
    let lock = a.obtain("k").await.unwrap();
    let lost = tokio::spawn(lock.lost());
    a.close().await.unwrap();
    assert_lost_soon(lost, LostReason::Closed).await;
    assert!(lock.is_lost(), "a closed lock protects nothing");
    assert!(!b.is_locked("k").await.unwrap(), "close released the lock");
    assert!(matches!(a.obtain("k2").await, Err(Error::Closed)));
    assert!(matches!(a.inspect("k").await, Err(Error::Closed)));
    assert!(matches!(lock.refresh().await, Err(Error::Closed)));
    assert!(matches!(lock.release().await, Err(Error::Closed)));
    a.close().await.unwrap();
    assert!(a.is_closed());
}
