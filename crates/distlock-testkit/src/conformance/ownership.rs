//! The store's side of ownership: its operations are token-checked and an
//! acquire by the same owner is idempotent.

use std::time::Duration;

use distlock::backend::{AcquireRequest, Attempt, Renewal};
use distlock::{Locker, OwnerToken};

use super::{assert_not_held, forged, lock_key, locker, short};
use crate::fixture::Fixture;

/// The store's release is token-checked: a second release is NotHeld.
pub async fn release_twice_at_the_store_is_not_held(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "release_twice").await;
    let backend = locker.backend();
    let req = request(fx, &locker);
    assert!(matches!(
        backend.try_acquire(&req).await.unwrap(),
        Attempt::Granted { .. }
    ));
    backend.release(&req.lease()).await.unwrap();
    assert_not_held(backend.release(&req.lease()).await);
}

/// Someone else's token cannot release a lock.
pub async fn non_owner_cannot_release(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "non_owner_release").await;
    let lock = locker.obtain("k").await.unwrap();
    assert_not_held(locker.backend().release(&forged(&locker, "k")).await);
    let holder = locker.inspect("k").await.unwrap().expect("still held");
    assert_eq!(holder.fencing_token, lock.fencing_token());
    lock.release().await.unwrap();
}

/// Someone else's token cannot extend a lock.
pub async fn non_owner_cannot_extend(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "non_owner_extend").await;
    let lock = locker.obtain_with("k", short(fx)).await.unwrap();
    let backend = locker.backend();
    assert_not_held(
        backend
            .extend(&Renewal::new(forged(&locker, "k"), Duration::from_secs(60)))
            .await,
    );
    let holder = locker.inspect("k").await.unwrap().expect("still held");
    assert!(
        holder.expires_in.is_none_or(|left| left <= fx.short_ttl()),
        "extended by a non-owner: {holder:?}"
    );
    lock.release().await.unwrap();
}

/// Asking again with the owner's own token grants again with the same token.
pub async fn acquire_is_idempotent_for_the_same_owner(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "idempotent").await;
    let backend = locker.backend();
    let req = request(fx, &locker);
    let first = backend.try_acquire(&req).await.unwrap();
    let again = backend.try_acquire(&req).await.unwrap();
    assert!(matches!(first, Attempt::Granted { .. }));
    assert_eq!(first, again);
    let other = AcquireRequest::new(
        req.key.clone(),
        OwnerToken::random().unwrap(),
        fx.short_ttl(),
    );
    assert!(matches!(
        backend.try_acquire(&other).await.unwrap(),
        Attempt::Contended { .. }
    ));
    backend.release(&req.lease()).await.unwrap();
}

/// A request for `k` by a fresh owner, for ten short TTLs.
fn request(fx: &dyn Fixture, locker: &Locker) -> AcquireRequest {
    AcquireRequest::new(
        lock_key(locker, "k"),
        OwnerToken::random().unwrap(),
        fx.short_ttl() * 10,
    )
}
