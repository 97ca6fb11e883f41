//! Scenario 5: lost-signal latency.

use std::sync::Arc;
use std::time::Duration;

use distlock::{Key, Lock, LockKey, Locker, LostReason, ObtainOptions, RefreshHandle};
use futures::StreamExt;
use tokio::time::Instant;

use super::{over_faulty, report};
use crate::Env;
use crate::report::Report;
use crate::stats::{Summary, us};
use crate::stores::Store;

/// Scenario 5: Lost-signal latency, with start_refresh running: (a) the key deleted
/// behind the holder's back, time to `lost()`; (b) the holder cut off from
/// the store (its extends stall), `lost()` fires at the validity deadline:
/// how long before the store frees the key.
pub async fn lost(env: &Env, store: Arc<dyn Store>) -> Report {
    const NS: &str = "bench-lost";
    let ttl = env.lost_ttl;
    let interval = ttl / 3;
    let trials = env.lost_trials;
    let base = store.locker(NS).await;
    let (faulty, locker) = over_faulty(&base, NS);
    let observer = store.locker(NS).await;
    let opts = ObtainOptions::new().ttl(ttl);

    // (a) Deleted behind the holder's back, at a random point of the
    // refresh interval.
    let deleted: Vec<Duration> = futures::stream::iter(0..trials)
        .map(|i| {
            let (locker, store, opts) = (locker.clone(), store.clone(), opts.clone());
            async move {
                let key = format!("deleted-{i}");
                let (lock, handle) = refreshing(&locker, &key, opts, interval).await;
                let lost = lock.lost();
                let t0 = Instant::now();
                store.delete_behind_back(NS, &key).await;
                let reason = lost.await;
                let latency = t0.elapsed();
                assert_eq!(reason, LostReason::NotHeld, "deleted lock ended {reason:?}");
                handle.stop().await;
                let _ = lock.release().await;
                latency
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    // (b) Cut off: its extends stall from a random point on.
    let cut_off: Vec<(Duration, Duration)> = futures::stream::iter(0..trials)
        .map(|i| {
            let (locker, faulty, observer, opts) = (
                locker.clone(),
                faulty.clone(),
                observer.clone(),
                opts.clone(),
            );
            async move {
                let key = format!("cut-{i}");
                let (lock, handle) = refreshing(&locker, &key, opts, interval).await;
                faulty.stall_extends(&LockKey {
                    namespace: locker.namespace().clone(),
                    key: Key::new(key.as_str()).unwrap(),
                });
                let reason = lock.lost().await;
                let fired = Instant::now();
                assert_eq!(reason, LostReason::Expired, "cut-off lock ended {reason:?}");
                let late = fired.saturating_duration_since(lock.valid_until());
                // Poll the store until it frees the key.
                while observer.is_locked(key.as_str()).await.expect("is_locked") {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let lead = fired.elapsed();
                handle.stop().await;
                drop(lock);
                (late, lead)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let mut report = report(
        &*store,
        "lost",
        format!(
            "{trials} locks per case at ttl {ttl:?} (refresh every {interval:?}), start_refresh running"
        ),
    );
    let deleted = Summary::of(deleted, None);
    report.figure(
        "deleted: max latency / refresh interval",
        deleted.max.as_secs_f64() / interval.as_secs_f64(),
    );
    report.row("deleted behind the back -> lost()", deleted);
    let (late, lead): (Vec<_>, Vec<_>) = cut_off.into_iter().unzip();
    report.row(
        "cut off: lost() after valid_until by",
        Summary::of(late, None),
    );
    let lead = Summary::of(lead, None);
    report.figure(
        "cut off: min lead of lost() before the store freed the key, ms",
        us(lead.min) / 1e3,
    );
    report.row("cut off: lost() before the store freed the key by", lead);
    report.notes.push(format!(
        "a deletion is noticed by the next refresh (every {interval:?}), so its latency is up to one interval; \
         a holder cut off from the store gets lost() at its validity deadline (ttl x 0.99 - 2 ms after the last extend was sent), \
         before the store expires the key"
    ));
    locker.close().await.expect("close");
    observer.close().await.expect("close");
    report
}

/// `key` obtained and refreshing, at a random point of its second refresh
/// interval.
async fn refreshing(
    locker: &Locker,
    key: &str,
    opts: ObtainOptions,
    interval: Duration,
) -> (Lock, RefreshHandle) {
    let lock = locker.obtain_with(key, opts).await.expect("obtain");
    let handle = lock.start_refresh(|_| {});
    tokio::time::sleep(interval.mul_f64(1.0 + fastrand::f64())).await;
    (lock, handle)
}
