//! Fencing tokens: strictly increasing per key over every grant.

use tokio::time::sleep;

use super::{MS, expires, locker, next_holder_wait, short};
use crate::fixture::Fixture;

/// Tokens strictly increase over successive grants of one key.
pub async fn fencing_tokens_increase_across_release(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "tokens_release").await;
    let mut last = 0;
    for _ in 0..5 {
        let lock = locker.obtain("k").await.unwrap();
        assert!(
            lock.fencing_token() > last,
            "{} after {last}",
            lock.fencing_token()
        );
        last = lock.fencing_token();
        lock.release().await.unwrap();
    }
}

/// Tokens strictly increase when a lock expires and another holder takes it.
/// Without TTL expiry: the lock outlives its TTL, and the next holder after
/// its release still gets a greater token.
pub async fn fencing_tokens_increase_across_expiry_and_holders(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "tokens_expiry").await;
    let b = fx.locker(&ns).await;
    let first = a.obtain_with("k", short(fx)).await.unwrap();
    let first_token = first.fencing_token();
    sleep(fx.short_ttl() + 100 * MS).await;
    let first = if expires(&a) {
        Some(first)
    } else {
        assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
        drop(first); // released in the background
        None
    };
    let second = b
        .obtain_with("k", short(fx).wait(next_holder_wait(fx)))
        .await
        .unwrap();
    assert!(second.fencing_token() > first_token);
    drop(first);
    let second_token = second.fencing_token();
    second.release().await.unwrap();
    let third = a.obtain("k").await.unwrap();
    assert!(third.fencing_token() > second_token);
    third.release().await.unwrap();
}
