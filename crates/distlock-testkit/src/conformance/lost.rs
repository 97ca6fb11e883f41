//! The lost signal: `lost()` on deletion, at the validity deadline and on
//! release.

use std::sync::Arc;
use std::time::Duration;

use distlock::{LostReason, ObtainOptions};
use tokio::time::{Instant, timeout};

use super::{SLACK, assert_lost_soon, expires, locker, short};
use crate::fixture::Fixture;

/// A key deleted behind the holder's back fires `lost()` within about one
/// refresh interval, before the validity deadline.
pub async fn lost_fires_when_the_key_is_deleted(fx: &dyn Fixture) {
    let (locker, ns) = locker(fx, "lost_deleted").await;
    let ttl = fx.short_ttl() * 4;
    let lock = locker
        .obtain_with("k", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = errors.clone();
    let _handle = lock.start_refresh(move |e| seen.lock().unwrap().push(e.is_not_held()));
    fx.delete_behind_back(&ns, "k").await;
    let start = Instant::now();
    let reason = timeout(ttl, lock.lost()).await.expect("lost() fired");
    assert_eq!(reason, LostReason::NotHeld);
    let fired = Instant::now();
    assert!(
        fired < lock.valid_until(),
        "lost() after the validity deadline"
    );
    assert!(
        fired - start < ttl / 3 + SLACK / 2,
        "lost() took {:?}",
        fired - start
    );
    assert_eq!(
        *errors.lock().unwrap(),
        vec![true],
        "on_error saw the loss once"
    );
}

/// Without refresh, `lost()` fires at the validity deadline, which comes
/// before the store's TTL runs out.
///
/// Without TTL expiry there is no deadline: `valid_until` lies far ahead and
/// `lost()` does not fire past the TTL while the lock is held.
pub async fn lost_fires_at_the_validity_deadline_before_the_store_expires_it(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "lost_deadline").await;
    let before_send = Instant::now();
    let lock = locker.obtain_with("k", short(fx)).await.unwrap();
    if !expires(&locker) {
        assert!(
            lock.valid_until() > before_send + Duration::from_secs(365 * 24 * 3600),
            "a lock that cannot expire got a deadline"
        );
        let fired = timeout(fx.short_ttl() + SLACK, lock.lost()).await;
        assert!(fired.is_err(), "lost() fired: {fired:?}");
        assert!(!lock.is_lost());
        assert!(locker.is_locked("k").await.unwrap());
        lock.release().await.unwrap();
        return;
    }
    let deadline = lock.valid_until();
    assert!(
        deadline < before_send + fx.short_ttl(),
        "deadline not shortened for drift"
    );
    let reason = timeout(fx.short_ttl() + SLACK, lock.lost()).await.unwrap();
    assert_eq!(reason, LostReason::Expired);
    let fired = Instant::now();
    // Up to EXPIRY_LEAD early, so that it is not late.
    assert!(
        fired + distlock::EXPIRY_LEAD >= deadline && fired < deadline + SLACK / 2,
        "fired {:?} after, {:?} before the deadline",
        fired.saturating_duration_since(deadline),
        deadline.saturating_duration_since(fired)
    );
}

/// `lost()` also resolves, with `Released`, once the lock is released.
pub async fn lost_resolves_on_release(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "lost_release").await;
    let lock = locker.obtain("k").await.unwrap();
    let lost = tokio::spawn(lock.lost());
    lock.release().await.unwrap();
    assert_lost_soon(lost, LostReason::Released).await;
}
