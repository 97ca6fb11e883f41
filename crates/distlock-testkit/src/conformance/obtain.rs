//! Obtaining and releasing a lock.

use std::time::Duration;

use distlock::Error;
use tokio::time::Instant;

use super::locker;
use crate::fixture::Fixture;

/// Obtain, observe it held, release, observe it free, obtain again.
pub async fn obtain_and_release(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "obtain_and_release").await;
    let lock = locker.obtain("k").await.unwrap();
    assert_eq!(lock.key(), "k");
    assert!(locker.is_locked("k").await.unwrap());
    assert!(lock.valid_until() > Instant::now());
    lock.release().await.unwrap();
    assert!(!locker.is_locked("k").await.unwrap());
    locker
        .try_obtain("k")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// A held key fails a try at once, reporting the holder when known.
pub async fn try_obtain_on_held_key_fails_fast(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "try_fast").await;
    let b = fx.locker(&ns).await;
    let held = a.obtain("k").await.unwrap();
    let start = Instant::now();
    match b.try_obtain("k").await {
        Err(Error::NotObtained {
            attempts, holder, ..
        }) => {
            assert_eq!(attempts, 1);
            if let Some(h) = holder {
                assert_eq!(h.fencing_token, held.fencing_token());
            }
        }
        other => panic!("expected NotObtained, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    held.release().await.unwrap();
}
