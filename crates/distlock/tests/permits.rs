//! The engine's side of permits (semaphores, read locks), under tokio's
//! paused clock: what it refuses before asking the store, and how a
//! permit's lease behaves as a lock's does. The admission rules themselves
//! are the conformance suite's.

use std::sync::Arc;
use std::time::Duration;

use distlock::backend::memory::MemoryBackend;
use distlock::{Error, Locker, LostReason, ObtainOptions, Share};
use distlock_testkit::Faulty;

const MS: Duration = Duration::from_millis(1);

fn store() -> Arc<Faulty> {
    Arc::new(Faulty::new(Arc::new(MemoryBackend::new())))
}

fn locker(store: &Arc<Faulty>) -> Locker {
    Locker::builder(store.clone()).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_store_without_permits_refuses_them_at_once_without_asking_it() {
    let store = store();
    store.hide_permits(true);
    let locker = locker(&store);
    for result in [
        locker.semaphore("pool", 3).unwrap().acquire().await,
        locker.rw_lock("doc").unwrap().read().await,
    ] {
        match result {
            Err(Error::InvalidOptions {
                option: "limit",
                reason,
            }) => {
                assert!(
                    reason.contains("memory backend does not serve permits"),
                    "{reason}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(store.acquires(), 0, "the store was never asked");
    // Locks, and write locks, are still served.
    locker.rw_lock("doc").unwrap().write().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_semaphore_of_no_permits_is_invalid() {
    let err = Locker::memory().semaphore("pool", 0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidOptions {
                option: "limit",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn permits_carry_their_share_and_expire_alone() {
    let store = store();
    let locker = locker(&store);
    let pool = locker.semaphore("pool", 2).unwrap();
    let short = pool
        .acquire_with(ObtainOptions::new().ttl(300 * MS))
        .await
        .unwrap();
    let kept = pool
        .acquire_with(ObtainOptions::new().ttl(300 * MS))
        .await
        .unwrap();
    assert_eq!(short.share(), Share::Permit { limit: 2 });
    let refresher = kept.start_refresh(|e| panic!("refresh failed: {e}"));
    // Auto-advancing time: the refresher runs at its own times in between.
    tokio::time::sleep(400 * MS).await;
    assert_eq!(short.lost().await, LostReason::Expired);
    assert!(!kept.is_lost(), "the refreshed permit is unaffected");
    kept.refresh().await.unwrap();
    let holders = pool.holders().await.unwrap();
    assert_eq!(holders.holders.len(), 1);
    assert_eq!(holders.holders[0].fencing_token, kept.fencing_token());
    refresher.stop().await;
    assert_eq!(
        locker.rw_lock("doc").unwrap().read().await.unwrap().share(),
        Share::READERS
    );
}
