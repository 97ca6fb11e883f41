//! Waiting for a held key: deadlines, retries, wake-ups and fairness.

use std::time::Duration;

use distlock::{Error, ObtainOptions, RetryStrategy};
use tokio::time::{Instant, sleep};

use super::{MS, SLACK, locker};
use crate::fixture::Fixture;

/// A wait with a deadline gives up at the deadline, not before, not long after.
pub async fn wait_with_deadline_gives_up_at_the_deadline(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "wait_deadline").await;
    let b = fx.locker(&ns).await;
    let held = a.obtain("k").await.unwrap();
    let wait = Duration::from_millis(400);
    let start = Instant::now();
    let err = b
        .obtain_with("k", ObtainOptions::new().wait(wait))
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    match err {
        Error::NotObtained {
            waited, attempts, ..
        } => {
            assert!(waited >= wait, "reported wait {waited:?}");
            assert!(
                attempts >= 2,
                "a 400 ms wait polls more than once: {attempts}"
            );
        }
        other => panic!("expected NotObtained, got {other:?}"),
    }
    assert!(elapsed >= wait && elapsed < wait + SLACK, "{elapsed:?}");
    held.release().await.unwrap();
}

/// Waiting forever ends when the holder releases.
pub async fn wait_forever_gets_the_lock_when_released(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "wait_forever").await;
    let b = fx.locker(&ns).await;
    let held = a.obtain("k").await.unwrap();
    let first = held.fencing_token();
    let releaser = tokio::spawn(async move {
        sleep(Duration::from_millis(200)).await;
        held.release().await.unwrap();
    });
    let start = Instant::now();
    let lock = b
        .obtain_with("k", ObtainOptions::new().wait_forever())
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert!(lock.fencing_token() > first);
    releaser.await.unwrap();
    lock.release().await.unwrap();
}

/// A capped retry strategy gives up after its last retry.
pub async fn retries_exhausted_is_not_obtained(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "retries").await;
    let b = fx.locker(&ns).await;
    let held = a.obtain("k").await.unwrap();
    let start = Instant::now();
    let retry = RetryStrategy::linear(Duration::from_millis(40)).max_retries(3);
    let err = b
        .obtain_with("k", ObtainOptions::new().retry(retry))
        .await
        .unwrap_err();
    match err {
        Error::NotObtained { attempts, .. } => assert_eq!(attempts, 4),
        other => panic!("expected NotObtained, got {other:?}"),
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(120) && elapsed < 120 * MS + SLACK,
        "{elapsed:?}"
    );
    held.release().await.unwrap();
}

/// A waiter in another locker wakes on release well before its poll delay.
pub async fn waiter_wakes_promptly_on_release(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "wakeup").await;
    let b = fx.locker(&ns).await;
    let held = a.obtain("k").await.unwrap();
    let poll = Duration::from_secs(3);
    let waiter = tokio::spawn(async move {
        let opts = ObtainOptions::new()
            .wait(Duration::from_secs(10))
            .retry(RetryStrategy::linear(poll));
        let lock = b.obtain_with("k", opts).await.unwrap();
        let at = Instant::now();
        lock.release().await.unwrap();
        at
    });
    sleep(Duration::from_millis(200)).await; // the waiter is now asleep in its poll delay
    let released = Instant::now();
    held.release().await.unwrap();
    let obtained = waiter.await.unwrap();
    let handoff = obtained - released;
    assert!(
        handoff < Duration::from_millis(1500),
        "handoff took {handoff:?}, poll delay {poll:?}"
    );
}

/// Waiters of one locker are served first come, first served: while every
/// task keeps contending, no task gets the lock twice before all the others
/// had it once.
pub async fn waiters_are_served_fairly(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "fairness").await;
    crate::fairness::assert_served_in_turn(vec![locker; 4], "k", 20 * MS).await;
}
