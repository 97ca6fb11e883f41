//! Cases of lockers that share one backend: one connection and one set of
//! leases serving several applications or components of a process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::{Locker, LostReason, ObtainOptions};

use super::assert_lost_soon;
use crate::fixture::{Fixture, unique_namespace};

/// Lockers sharing a backend are independent: closing one releases only
/// its own locks — another's lock stays held, refreshable and exclusive,
/// its refresher sees no error — and leaves the backend serving the rest.
pub async fn closing_one_locker_leaves_the_others_on_its_backend_alone(fx: &dyn Fixture) {
    let ns = unique_namespace("shared_close");
    let backend = fx.backend().await;
    let build = || {
        Locker::builder(backend.clone())
            .namespace(ns.as_str())
            .build()
            .unwrap()
    };
    let (closing, staying) = (build(), build());
    let elsewhere = fx.locker(&ns).await;
    let closed_lock = closing.obtain("a").await.unwrap();
    let lost = tokio::spawn(closed_lock.lost());
    let kept = staying
        .obtain_with("b", ObtainOptions::new().ttl(Duration::from_secs(30)))
        .await
        .unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let refresher = kept.start_refresh(move |e| seen.lock().unwrap().push(e.to_string()));

    closing.close().await.unwrap();
    assert_lost_soon(lost, LostReason::Closed).await;
    assert!(
        !elsewhere.is_locked("a").await.unwrap(),
        "close released its own lock"
    );
    kept.refresh()
        .await
        .expect("the other locker's lock is still ours");
    assert!(!kept.is_lost());
    assert!(
        elsewhere
            .try_obtain("b")
            .await
            .unwrap_err()
            .is_not_obtained(),
        "the other locker's lock is still exclusive"
    );
    let more = staying
        .try_obtain("c")
        .await
        .expect("the backend still serves");
    more.release().await.unwrap();
    refresher.stop().await;
    assert_eq!(*errors.lock().unwrap(), Vec::<String>::new());
    kept.release().await.unwrap();
    staying.close().await.unwrap();
}
