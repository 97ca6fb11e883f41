//! Refresh: one-off refreshes and the auto-refresher.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use distlock::LostReason;
use tokio::time::{sleep, timeout};

use super::{MS, SLACK, assert_not_held, expires, locker, next_holder_wait, short};
use crate::fixture::Fixture;

/// A refresh moves the validity deadline and keeps the key past its TTL.
pub async fn refresh_extends_the_lock(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "refresh").await;
    let b = fx.locker(&ns).await;
    let ttl = fx.short_ttl();
    let lock = a.obtain_with("k", short(fx)).await.unwrap();
    let before = lock.valid_until();
    sleep(ttl / 2).await;
    lock.refresh().await.unwrap();
    assert!(lock.valid_until() > before);
    sleep(ttl * 3 / 4).await; // past the original TTL
    assert!(!lock.is_lost());
    assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
    lock.release().await.unwrap();
}

/// Refreshing an expired lock is NotHeld and marks it lost. Without TTL
/// expiry: a refresh past the TTL succeeds and the lock is not lost.
pub async fn refresh_after_expiry_is_not_held(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "refresh_expired").await;
    let lock = locker.obtain_with("k", short(fx)).await.unwrap();
    sleep(fx.short_ttl() + 100 * MS).await;
    if !expires(&locker) {
        lock.refresh().await.unwrap();
        assert!(!lock.is_lost());
        let holder = locker.inspect("k").await.unwrap().expect("still held");
        assert_eq!(holder.fencing_token, lock.fencing_token());
        lock.release().await.unwrap();
        return;
    }
    assert_not_held(lock.refresh().await);
    assert!(lock.is_lost());
    assert_eq!(
        timeout(SLACK, lock.lost()).await.unwrap(),
        LostReason::Expired
    );
}

/// Auto-refresh keeps a lock for several TTLs without errors.
pub async fn start_refresh_keeps_the_lock_past_several_ttls(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "auto_refresh").await;
    let b = fx.locker(&ns).await;
    let lock = a.obtain_with("k", short(fx)).await.unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let counter = errors.clone();
    let handle = lock.start_refresh(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    sleep(fx.short_ttl() * 4).await;
    assert!(!lock.is_lost());
    assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
    let holder = b.inspect("k").await.unwrap().unwrap();
    assert_eq!(holder.fencing_token, lock.fencing_token());
    assert!(handle.is_running());
    // Releasing under a running refresher reports nothing to it.
    lock.release().await.unwrap();
    sleep(fx.short_ttl() / 2).await;
    assert!(!handle.is_running());
    assert_eq!(errors.load(Ordering::SeqCst), 0);
}

/// `stop` is idempotent, waits for the task, and reports no error.
pub async fn refresh_stop_is_idempotent_and_reports_no_error(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "stop").await;
    let lock = locker.obtain_with("k", short(fx)).await.unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let counter = errors.clone();
    let handle = lock.start_refresh(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    sleep(fx.short_ttl() / 2).await;
    tokio::join!(handle.stop(), handle.stop());
    assert!(!handle.is_running());
    handle.stop().await;
    lock.release().await.unwrap();
    assert_eq!(errors.load(Ordering::SeqCst), 0);
}

/// Dropping the refresh handle stops refreshing: the lock then expires.
/// Without TTL expiry: it stays held until the handle is dropped.
pub async fn dropping_the_refresh_handle_stops_refreshing(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "drop_handle").await;
    let b = fx.locker(&ns).await;
    let lock = a.obtain_with("k", short(fx)).await.unwrap();
    drop(lock.start_refresh(|e| panic!("no error expected: {e}")));
    sleep(fx.short_ttl() + 100 * MS).await;
    if !expires(&a) {
        assert!(!lock.is_lost());
        assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
        drop(lock);
        b.obtain_with("k", short(fx).wait(next_holder_wait(fx)))
            .await
            .unwrap();
        return;
    }
    assert!(lock.is_lost());
    b.obtain_with("k", short(fx).wait(next_holder_wait(fx)))
        .await
        .unwrap();
}
