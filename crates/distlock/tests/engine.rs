//! Engine behaviour under tokio's paused clock: retry timing, refresher
//! resilience, the lost signal, drops and cancellation.
//!
//! The store is the real memory backend behind a fault-injecting decorator
//! (failing or hanging calls, late replies), so every engine path that a
//! flaky network takes runs here deterministically.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distlock::backend::memory::MemoryBackend;
use distlock::{EXPIRY_LEAD, Error, Locker, LostReason, ObtainOptions, RetryStrategy};
use distlock_testkit::Faulty;
use tokio::time::{Instant, advance, sleep, timeout};

const MS: Duration = Duration::from_millis(1);

/// The memory store behind the testkit's fault-injecting decorator, with
/// the store's notifications.
fn faulty() -> Arc<Faulty> {
    Arc::new(Faulty::new(Arc::new(MemoryBackend::new())))
}

/// The same, with waits that cannot use the store's notifications: only a
/// local release or the TTL bound can wake a waiter.
fn without_notifications() -> Arc<Faulty> {
    let store = faulty();
    store.notifications(false);
    store
}

fn locker(store: &Arc<Faulty>) -> Locker {
    Locker::builder(store.clone())
        .op_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn ttl(ms: u32) -> ObtainOptions {
    ObtainOptions::new().ttl(ms * MS)
}

#[tokio::test(start_paused = true)]
async fn seed_default_retries_ten_times_a_hundred_ms_apart() {
    let store = faulty();
    let locker = locker(&store);
    let _held = locker.obtain("k").await.unwrap();
    let start = Instant::now();
    let err = locker.obtain("k").await.unwrap_err();
    assert!(
        matches!(err, Error::NotObtained { attempts: 11, .. }),
        "{err}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_wait_deadline_cuts_the_last_delay_short() {
    let store = faulty();
    let locker = locker(&store);
    let _held = locker.obtain("k").await.unwrap();
    let start = Instant::now();
    let opts = ObtainOptions::new()
        .wait(250 * MS)
        .retry(RetryStrategy::linear(100 * MS));
    let err = locker.obtain_with("k", opts).await.unwrap_err();
    assert!(
        matches!(err, Error::NotObtained { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(start.elapsed(), 250 * MS);
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_never_waits_past_its_ceilings() {
    let store = faulty();
    let locker = locker(&store);
    let _held = locker.obtain("k").await.unwrap();
    let start = Instant::now();
    let retry = RetryStrategy::exponential(10 * MS, 40 * MS).max_retries(4);
    let err = locker
        .obtain_with("k", ObtainOptions::new().retry(retry))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotObtained { attempts: 5, .. }),
        "{err}"
    );
    assert!(start.elapsed() <= (10 + 20 + 40 + 40) * MS);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_wakes_when_the_holders_ttl_runs_out() {
    let store = without_notifications(); // only the TTL bound can wake it
    let locker = locker(&store);
    let held = locker.obtain_with("k", ttl(150)).await.unwrap();
    let start = Instant::now();
    let opts = ObtainOptions::new()
        .wait(Duration::from_secs(60))
        .retry(RetryStrategy::linear(Duration::from_secs(10)));
    let lock = Locker::builder(store.clone())
        .build()
        .unwrap()
        .obtain_with("k", opts)
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 150 * MS);
    assert!(lock.fencing_token() > held.fencing_token());
}

#[tokio::test(start_paused = true)]
async fn a_local_release_wakes_the_local_waiter_without_the_store() {
    let store = without_notifications(); // the store never notifies
    let locker = locker(&store);
    let held = locker.obtain("k").await.unwrap();
    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move {
            let opts = ObtainOptions::new()
                .wait_forever()
                .retry(RetryStrategy::linear(Duration::from_secs(10)));
            let lock = locker.obtain_with("k", opts).await.unwrap();
            (Instant::now(), lock)
        })
    };
    sleep(50 * MS).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let (obtained, _lock) = waiter.await.unwrap();
    assert_eq!(obtained, released);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_rides_out_transient_errors() {
    let store = faulty();
    let locker = locker(&store);
    let lock = locker.obtain_with("k", ttl(300)).await.unwrap();
    store.fail_extends(2);
    let errors = Arc::new(AtomicUsize::new(0));
    let seen = errors.clone();
    let handle = lock.start_refresh(move |e| {
        assert!(e.is_transient(), "{e}");
        seen.fetch_add(1, Ordering::SeqCst);
    });
    sleep(Duration::from_secs(2)).await;
    assert!(!lock.is_lost());
    assert_eq!(errors.load(Ordering::SeqCst), 2);
    assert_eq!(
        locker.inspect("k").await.unwrap().unwrap().fencing_token,
        lock.fencing_token()
    );
    handle.stop().await;
    lock.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn lost_fires_at_the_validity_deadline_when_the_store_fails() {
    let store = faulty();
    let locker = locker(&store);
    let lock = locker.obtain_with("k", ttl(300)).await.unwrap();
    store.fail_extends(u32::MAX);
    let errors = Arc::new(AtomicUsize::new(0));
    let seen = errors.clone();
    let _handle = lock.start_refresh(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let deadline = lock.valid_until();
    assert_eq!(lock.lost().await, LostReason::Expired);
    // Armed EXPIRY_LEAD early, so never late.
    assert_eq!(Instant::now(), deadline - EXPIRY_LEAD);
    // It kept retrying until then: one try per quarter interval after the first.
    assert!(
        errors.load(Ordering::SeqCst) >= 4,
        "{}",
        errors.load(Ordering::SeqCst)
    );
    // The store's own TTL has not run out yet: loss is signalled first.
    assert!(locker.is_locked("k").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn lost_fires_at_the_deadline_when_the_store_hangs() {
    let store = faulty();
    let locker = locker(&store);
    let lock = locker.obtain_with("k", ttl(300)).await.unwrap();
    store.hang(true);
    let _handle = lock.start_refresh(|_| {});
    let deadline = lock.valid_until();
    assert_eq!(lock.lost().await, LostReason::Expired);
    // Armed EXPIRY_LEAD early, so never late.
    assert_eq!(Instant::now(), deadline - EXPIRY_LEAD);
    assert!(lock.is_lost());
}

#[tokio::test(start_paused = true)]
async fn stop_during_a_hanging_extend_returns_and_reports_nothing() {
    let store = faulty();
    let locker = locker(&store);
    let lock = locker.obtain_with("k", ttl(3000)).await.unwrap();
    let handle = lock.start_refresh(|e| panic!("stop must not report {e}"));
    store.hang(true);
    advance(1100 * MS).await; // the first extend is now hanging
    timeout(MS, handle.stop())
        .await
        .expect("stop returns at once");
    handle.stop().await;
    assert!(!handle.is_running());
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_try_times_out_after_the_op_timeout() {
    let store = faulty();
    let locker = locker(&store);
    store.hang(true);
    let start = Instant::now();
    let err = locker.try_obtain("k").await.unwrap_err();
    assert!(matches!(err, Error::Timeout { op: "acquire", .. }), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // A wait shorter than the op timeout bounds the attempt instead; with
    // no answer at all, nobody is known to hold the key: still a timeout.
    let start = Instant::now();
    let err = locker
        .obtain_with("k", ObtainOptions::new().wait(200 * MS))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { op: "acquire", .. }), "{err}");
    assert_eq!(start.elapsed(), 200 * MS);
}

/// A store that stops answering during a wait is reported as such when the
/// wait ends, even though the last attempt was cut short by the deadline:
/// not hidden behind `NotObtained` ("held by someone else").
#[tokio::test(start_paused = true)]
async fn a_wait_ended_by_its_deadline_reports_the_stores_last_failure() {
    let store = faulty();
    let locker = Locker::builder(store.clone())
        .op_timeout(100 * MS)
        .build()
        .unwrap();
    let _held = locker.obtain("k").await.unwrap();
    let waiting = tokio::spawn({
        let locker = locker.clone();
        async move {
            locker
                .obtain_with("k", ObtainOptions::new().wait(450 * MS))
                .await
        }
    });
    sleep(50 * MS).await; // one contended attempt answered
    store.hang(true);
    // Attempts at ~100 ms and ~300 ms time out after the 100 ms op timeout;
    // the last, at ~400 ms, is cut short by the deadline at 450 ms.
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Timeout { op: "acquire", .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_late_grant_is_retried_idempotently_with_the_same_token() {
    let store = faulty();
    let locker = locker(&store);
    store.late_acquire_reply(1500 * MS); // past the 1 s op timeout
    let lock = locker
        .obtain_with("k", ObtainOptions::new().wait(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(store.acquires(), 2);
    let holder = locker.inspect("k").await.unwrap().unwrap();
    assert_eq!(holder.fencing_token, lock.fencing_token());
}

#[tokio::test(start_paused = true)]
async fn an_obtain_dropped_while_its_grant_is_in_flight_releases_it() {
    let store = faulty();
    let locker = locker(&store);
    store.late_acquire_reply(50 * MS);
    assert!(timeout(25 * MS, locker.try_obtain("k")).await.is_err());
    assert!(locker.is_locked("k").await.unwrap(), "granted in the store");
    tokio::task::yield_now().await; // let the background release run
    assert!(!locker.is_locked("k").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_lock_is_released_in_the_background() {
    let store = faulty();
    let locker = locker(&store);
    let lock = locker.obtain("k").await.unwrap();
    let lost = lock.lost();
    drop(lock);
    assert_eq!(lost.await, LostReason::Released);
    tokio::task::yield_now().await;
    assert!(!locker.is_locked("k").await.unwrap());
}

#[test]
fn a_lock_dropped_without_a_runtime_expires_after_its_ttl() {
    let store = faulty();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    };
    let locker = locker(&store);
    let lock = runtime()
        .block_on(locker.obtain_with("k", ttl(200)))
        .unwrap();
    drop(lock); // no runtime here: nothing to release with, and no panic
    let rt = runtime();
    rt.block_on(async {
        assert!(
            locker.is_locked("k").await.unwrap(),
            "still held until its TTL"
        );
    });
    std::thread::sleep(Duration::from_millis(250));
    rt.block_on(async {
        assert!(!locker.is_locked("k").await.unwrap());
    });
}

#[tokio::test(start_paused = true)]
async fn close_interrupts_a_waiting_obtain() {
    let store = faulty();
    let locker = locker(&store);
    let _held = Locker::builder(store.clone())
        .build()
        .unwrap()
        .obtain("k")
        .await
        .unwrap();
    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move {
            locker
                .obtain_with("k", ObtainOptions::new().wait_forever())
                .await
        })
    };
    sleep(100 * MS).await;
    locker.close().await.unwrap();
    assert!(matches!(waiter.await.unwrap(), Err(Error::Closed)));
}

#[tokio::test(start_paused = true)]
async fn the_validity_deadline_counts_from_the_send_time() {
    let store = faulty();
    let locker = locker(&store);
    store.late_acquire_reply(400 * MS);
    let sent = Instant::now();
    let lock = locker.obtain_with("k", ttl(1000)).await.unwrap();
    assert_eq!(Instant::now(), sent + 400 * MS, "the reply came late");
    // 1000 ms * (1 - 1% drift) - 2 ms margin, from the send.
    assert_eq!(lock.valid_until(), sent + 988 * MS);

    advance(100 * MS).await;
    store.late_extend_reply(300 * MS);
    let sent = Instant::now();
    lock.refresh().await.unwrap();
    assert_eq!(Instant::now(), sent + 300 * MS);
    assert_eq!(lock.valid_until(), sent + 988 * MS);
}

/// Collects formatted tracing output.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_lock_is_a_warn_event_with_its_key_and_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = faulty();
    let locker = locker(&store);
    let lock = locker.obtain_with("audit/key", ttl(100)).await.unwrap();
    assert_eq!(lock.lost().await, LostReason::Expired);
    let _ = lock.release().await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warn = log
        .lines()
        .find(|l| l.contains("WARN"))
        .unwrap_or_else(|| panic!("no WARN in {log}"));
    assert!(
        warn.contains("lock lost") && warn.contains("audit/key"),
        "{warn}"
    );
    assert!(
        warn.contains(&format!("fencing_token={}", lock_token(&log))),
        "{warn}"
    );
    assert!(
        log.contains("distlock.obtain"),
        "obtain span missing: {log}"
    );
    assert!(
        log.contains("outcome=\"obtained\"") || log.contains("outcome=obtained"),
        "{log}"
    );
}

fn lock_token(log: &str) -> &str {
    let at = log.find("fencing_token=").expect("a token field") + "fencing_token=".len();
    let rest = &log[at..];
    &rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())]
}

/// A program that exits right after dropping a lock (or giving up an
/// obtain) closes its locker: `close` returns only once the background
/// release has reached the store, so nothing is left behind.
#[tokio::test(start_paused = true)]
async fn close_waits_for_background_releases() {
    let store = without_notifications();
    let closing = locker(&store);
    let lock = closing.obtain("k").await.unwrap();
    store.slow_release(50 * MS);
    drop(lock);
    closing.close().await.unwrap();
    store.slow_release(Duration::ZERO);
    assert!(!locker(&store).is_locked("k").await.unwrap());
}

/// A backend closed under a held lock (by whoever else shares it) ends the
/// lock at the next refresh, with `Closed`: it can never be refreshed
/// again, so waiting for its validity deadline would only hide that.
#[tokio::test(start_paused = true)]
async fn a_backend_closed_under_a_lock_ends_it_at_the_next_refresh() {
    let store = without_notifications();
    let locker = locker(&store);
    let lock = locker.obtain_with("k", ttl(30_000)).await.unwrap();
    let _refresher = lock.start_refresh(|_| {});
    store.close_extends(true);
    let start = Instant::now();
    let reason = lock.lost().await;
    assert_eq!(reason, LostReason::Closed);
    // At the first refresh (TTL/3), not at the validity deadline.
    assert!(
        start.elapsed() <= Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

/// An obtain racing `close` on a multi-threaded runtime: whatever lock it
/// returns, `close` saw it (ended it with `Closed` and released it). A lock
/// close never saw would still be held in the store after close returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lock_escapes_a_close_racing_its_obtain() {
    let mut escaped = 0;
    for round in 0..5000 {
        let store = without_notifications();
        let locker = locker(&store);
        let obtaining = tokio::spawn({
            let locker = locker.clone();
            async move { locker.try_obtain("k").await }
        });
        // Close at every point of the obtain, a few hundred ns apart.
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_nanos((round % 100) * 200) {
            std::hint::spin_loop();
        }
        locker.close().await.unwrap();
        if let Ok(Ok(lock)) = obtaining.await
            && lock.refresh().await.is_ok()
        {
            escaped += 1;
        }
    }
    assert_eq!(escaped, 0, "locks handed out that close never saw");
}

/// `close` ends a lock before it sends the release: from the moment the
/// store may give the key to someone else, the holder sees its lock gone.
#[tokio::test(start_paused = true)]
async fn close_ends_a_lock_before_releasing_it() {
    let store = without_notifications();
    let locker = locker(&store);
    let lock = locker.obtain("k").await.unwrap();
    store.slow_release(50 * MS);
    let closing = tokio::spawn({
        let locker = locker.clone();
        async move { locker.close().await }
    });
    sleep(10 * MS).await; // the release is in flight
    assert!(lock.is_lost(), "still looks held while close releases it");
    closing.await.unwrap().unwrap();
    assert!(lock.is_lost());
}

/// One refresher per Locker: locks obtained together are extended together,
/// in one `extend_all` per round, not by one task (and one call) per lock.
#[tokio::test(start_paused = true)]
async fn one_refresher_extends_a_locker_s_locks_in_one_batch_per_round() {
    let store = faulty();
    let locker = locker(&store);
    let mut locks = Vec::new();
    for i in 0..100 {
        locks.push(
            locker
                .obtain_with(format!("k{i}"), ttl(3000))
                .await
                .unwrap(),
        );
    }
    let refreshers: Vec<_> = locks
        .iter()
        .map(|l| l.start_refresh(|e| panic!("{e}")))
        .collect();
    // Three rounds, one refresh interval (1 s) apart.
    sleep(3100 * MS).await;
    assert_eq!(store.extends(), 300);
    assert_eq!(store.batches(), 3);
    assert!(locks.iter().all(|l| !l.is_lost()));
    // Stopping one leaves the others refreshed, in one batch still.
    refreshers[0].stop().await;
    assert!(!refreshers[0].is_running() && refreshers[1].is_running());
    sleep(1000 * MS).await;
    assert_eq!((store.extends(), store.batches()), (399, 4));
}

/// Locks due at different times are extended in different rounds, each on
/// its own schedule.
#[tokio::test(start_paused = true)]
async fn locks_due_apart_are_refreshed_on_their_own_schedules() {
    let store = faulty();
    let locker = locker(&store);
    let slow = locker.obtain_with("slow", ttl(3000)).await.unwrap();
    sleep(500 * MS).await;
    let fast = locker.obtain_with("fast", ttl(600)).await.unwrap();
    let _a = slow.start_refresh(|e| panic!("{e}"));
    let _b = fast.start_refresh(|e| panic!("{e}"));
    // slow: every 1 s (at 1.0, 2.0, 3.0 s after it started refreshing);
    // fast: every 200 ms (15 times in 3.05 s).
    sleep(3050 * MS).await;
    assert_eq!(store.extends(), 3 + 15);
    assert!(!slow.is_lost() && !fast.is_lost());
}

/// A release that failed before reaching the store says nothing about the
/// lock: when the retry finds it gone (the store lost it: FLUSHALL, a
/// restart without it), the release reports NotHeld, not Ok. Found by the
/// issue-11 long campaign on Redis (`release_by_non_owner` after a
/// wipe_restart, while the connection was re-established).
#[tokio::test(start_paused = true)]
async fn a_release_retried_after_a_refused_attempt_reports_a_lock_the_store_lost() {
    let memory = Arc::new(MemoryBackend::new());
    let store = Arc::new(Faulty::new(memory.clone()));
    let locker = locker(&store);
    let lock = locker.obtain_with("k", ttl(3000)).await.unwrap();
    let key = distlock::LockKey {
        namespace: locker.namespace().clone(),
        key: distlock::Key::new("k").unwrap(),
    };
    assert!(memory.evict(&key));
    store.fail_releases(1);
    let released = lock.release().await;
    assert!(
        released.as_ref().is_err_and(Error::is_not_held),
        "{released:?}"
    );
}
