//! The conformance cases every backend must pass (DESIGN.md §7).
//!
//! Each case takes a fresh fixture and works in its own namespace. Timing
//! assertions bound what must be fast or slow with generous slack: they fail
//! on a wrong behaviour (a poll where a wake-up was due, a wait that ignores
//! its deadline), not on a busy machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distlock::backend::{AcquireRequest, Attempt};
use distlock::{
    Error, Key, LeaseRef, LockKey, Locker, LostReason, MAX_KEY_BYTES, Namespace, ObtainOptions,
    OwnerToken, RetryStrategy,
};
use tokio::time::{Instant, sleep, timeout};

use crate::Faulty;
use crate::fixture::{Fixture, unique_namespace};
use crate::section::CriticalSection;

mod sharing;

pub use sharing::*;

const MS: Duration = Duration::from_millis(1);
/// Extra time allowed for scheduling on a loaded machine.
const SLACK: Duration = Duration::from_millis(700);

/// How long a case waits for a key whose holder expired or released it.
/// Not a promptness check (the waiter cases measure that): a store that
/// commits through consensus may take a while on a loaded CI machine, and a
/// key that is never freed still fails the case.
fn next_holder_wait(fx: &dyn Fixture) -> Duration {
    fx.short_ttl() + SLACK
}

async fn locker(fx: &dyn Fixture, case: &str) -> (Locker, String) {
    let ns = unique_namespace(case);
    (fx.locker(&ns).await, ns)
}

fn short(fx: &dyn Fixture) -> ObtainOptions {
    ObtainOptions::new().ttl(fx.short_ttl())
}

fn lock_key(locker: &Locker, key: &str) -> LockKey {
    LockKey {
        namespace: locker.namespace().clone(),
        key: Key::new(key).unwrap(),
    }
}

fn forged(locker: &Locker, key: &str) -> LeaseRef {
    LeaseRef {
        key: lock_key(locker, key),
        owner: OwnerToken::random().unwrap(),
    }
}

/// Whether the store expires locks after their TTL (see
/// `Capabilities::ttl_expiry`). The cases that depend on it check the
/// opposite, meaningful behaviour where it is false: the lock outlives its
/// TTL for as long as its holder keeps it.
fn expires(locker: &Locker) -> bool {
    locker.backend().capabilities().ttl_expiry
}

/// Checks that the fixture's store has the TTL-expiry capability the suite
/// was instantiated for; the macro calls it before every TTL-dependent case,
/// so a backend can neither skip nor silently adapt those cases.
pub async fn expect_ttl_expiry(fx: &dyn Fixture, expected: bool) {
    let (locker, _) = locker(fx, "capabilities").await;
    let actual = expires(&locker);
    assert_eq!(
        actual,
        expected,
        "the {} backend reports ttl_expiry = {actual}; instantiate the suite with {}",
        locker.backend_name(),
        if actual {
            "`conformance_suite!(fixture)`"
        } else {
            "`conformance_suite!(fixture; without: ttl_expiry)`"
        }
    );
}

fn assert_not_held<T: std::fmt::Debug>(result: distlock::Result<T>) {
    match result {
        Err(Error::NotHeld { .. }) => {}
        other => panic!("expected NotHeld, got {other:?}"),
    }
}

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

/// Releasing an expired lock is NotHeld. Without TTL expiry: past its TTL
/// the lock is still held, not lost, and releases cleanly.
pub async fn release_after_expiry_is_not_held(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "release_expired").await;
    let lock = locker.obtain_with("k", short(fx)).await.unwrap();
    sleep(fx.short_ttl() + 100 * MS).await;
    if expires(&locker) {
        assert!(lock.is_lost());
        assert_not_held(lock.release().await);
    } else {
        assert!(!lock.is_lost());
        assert!(locker.is_locked("k").await.unwrap());
        lock.release().await.unwrap();
        assert!(!locker.is_locked("k").await.unwrap());
    }
}

/// The store's release is token-checked: a second release is NotHeld.
pub async fn release_twice_at_the_store_is_not_held(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "release_twice").await;
    let backend = locker.backend();
    let req = AcquireRequest::new(
        lock_key(&locker, "k"),
        OwnerToken::random().unwrap(),
        fx.short_ttl() * 10,
    );
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
            .extend(&forged(&locker, "k"), Duration::from_secs(60))
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
    let req = AcquireRequest::new(
        lock_key(&locker, "k"),
        OwnerToken::random().unwrap(),
        fx.short_ttl() * 10,
    );
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

/// An unrefreshed lock frees its key after the TTL, and the stale handle's
/// release cannot touch the next holder.
///
/// Without TTL expiry: the key stays held past the TTL while its holder
/// lives, and goes to the next holder once released.
pub async fn expiry_frees_the_key_after_the_ttl(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "expiry").await;
    let b = fx.locker(&ns).await;
    let stale = a.obtain_with("k", short(fx)).await.unwrap();
    assert!(b.try_obtain("k").await.unwrap_err().is_not_obtained());
    sleep(fx.short_ttl() + 100 * MS).await;
    if !expires(&a) {
        assert!(
            b.try_obtain("k").await.unwrap_err().is_not_obtained(),
            "a lock that cannot expire was free after its TTL"
        );
        assert!(!stale.is_lost());
        let token = stale.fencing_token();
        stale.release().await.unwrap();
        let fresh = b
            .obtain_with("k", short(fx).wait(next_holder_wait(fx)))
            .await
            .unwrap();
        assert!(fresh.fencing_token() > token);
        fresh.release().await.unwrap();
        return;
    }
    let fresh = b
        .obtain_with("k", short(fx).wait(next_holder_wait(fx)))
        .await
        .unwrap();
    assert_not_held(stale.release().await);
    let holder = b
        .inspect("k")
        .await
        .unwrap()
        .expect("the new holder keeps it");
    assert_eq!(holder.fencing_token, fresh.fencing_token());
    fresh.release().await.unwrap();
}

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

/// A grant whose reply arrives after the lock's validity deadline is never
/// handed out: the store may have expired it and granted the key to someone
/// else meanwhile. (Found by the torture harness: etcd obtains stalled by a
/// server restart returned locks already 400 ms past their deadline.) One
/// attempt fails with `Timeout`; a waiting obtain tries again and returns a
/// lock with its deadline ahead. A store without TTL expiry cannot lose the
/// lock by time, so there the late grant is handed out.
pub async fn a_grant_arriving_after_its_deadline_is_not_handed_out(fx: &dyn Fixture) {
    let (plain, ns) = locker(fx, "late_grant").await;
    let ttl = fx.short_ttl();
    // A store whose first acquisition reply reaches the engine late, as
    // over a stalled network: the store itself answers at once.
    let late = || {
        let backend = Faulty::new(plain.backend());
        backend.late_acquire_reply(ttl * 2);
        Locker::builder(Arc::new(backend))
            .namespace(ns.as_str())
            .build()
            .unwrap()
    };
    let result = late().obtain_with("k", short(fx).try_once()).await;
    if !expires(&plain) {
        let lock = result.expect("a lock without TTL expiry is still ours");
        assert!(!lock.is_lost());
        lock.release().await.unwrap();
        return;
    }
    match result {
        Err(Error::Timeout { op: "acquire", .. }) => {}
        Ok(lock) => panic!(
            "handed out a lock {:?} past its validity deadline",
            Instant::now() - lock.valid_until()
        ),
        Err(other) => panic!("expected Timeout, got {other:?}"),
    }
    // The refused grant does not linger.
    let start = Instant::now();
    while plain.is_locked("k").await.unwrap() {
        assert!(
            start.elapsed() < ttl + SLACK,
            "the refused grant is still held"
        );
        sleep(10 * MS).await;
    }
    let lock = late()
        .obtain_with("k", short(fx).wait(ttl * 4 + SLACK))
        .await
        .unwrap();
    assert!(
        lock.valid_until() > Instant::now() && !lock.is_lost(),
        "handed out a lock past its validity deadline"
    );
    lock.release().await.unwrap();
}

/// `lost()` also resolves, with `Released`, once the lock is released.
pub async fn lost_resolves_on_release(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "lost_release").await;
    let lock = locker.obtain("k").await.unwrap();
    let lost = tokio::spawn(lock.lost());
    lock.release().await.unwrap();
    assert_eq!(
        timeout(SLACK, lost).await.unwrap().unwrap(),
        LostReason::Released
    );
}

/// `is_locked` reads: it neither takes a free key nor disturbs a holder.
pub async fn is_locked_is_read_only(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "is_locked").await;
    assert!(!locker.is_locked("k").await.unwrap());
    assert!(locker.inspect("k").await.unwrap().is_none());
    let lock = locker.try_obtain("k").await.unwrap();
    for _ in 0..3 {
        assert!(locker.is_locked("k").await.unwrap());
    }
    let holder = locker.inspect("k").await.unwrap().unwrap();
    assert_eq!(holder.fencing_token, lock.fencing_token());
    lock.release().await.unwrap();
    assert!(!locker.is_locked("k").await.unwrap());
}

/// `inspect` reports the fencing token, time left and metadata.
pub async fn inspect_reports_holder_token_ttl_and_metadata(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "inspect").await;
    let ttl = Duration::from_secs(20);
    let opts = ObtainOptions::new().ttl(ttl).metadata("worker-7 {host: a}");
    let lock = locker.obtain_with("k", opts).await.unwrap();
    let holder = locker.inspect("k").await.unwrap().unwrap();
    assert_eq!(holder.fencing_token, lock.fencing_token());
    assert_eq!(holder.metadata.as_deref(), Some("worker-7 {host: a}"));
    if !expires(&locker) {
        assert_eq!(
            holder.expires_in, None,
            "a lock that cannot expire has no TTL left"
        );
    }
    if let Some(left) = holder.expires_in {
        assert!(
            left <= ttl && left > ttl - Duration::from_secs(5),
            "{left:?}"
        );
    }
    assert_eq!(lock.metadata(), Some("worker-7 {host: a}"));
    lock.release().await.unwrap();
    assert!(locker.inspect("k").await.unwrap().is_none());
}

/// Inspecting a free key leaves it free.
pub async fn inspect_never_creates_a_lock(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "inspect_free").await;
    let b = fx.locker(&ns).await;
    for _ in 0..3 {
        assert!(a.inspect("free").await.unwrap().is_none());
    }
    b.try_obtain("free").await.unwrap().release().await.unwrap();
}

/// 100 tasks over 10 lockers race for one key: exactly one wins.
pub async fn racing_tasks_have_exactly_one_winner(fx: &dyn Fixture) {
    let (first, ns) = locker(fx, "race").await;
    let mut lockers = vec![first];
    for _ in 1..10 {
        lockers.push(fx.locker(&ns).await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let locker = lockers[i % 10].clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                locker.try_obtain("k").await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(lock) => winners.push(lock),
            Err(e) => assert!(e.is_not_obtained(), "{e}"),
        }
    }
    assert_eq!(winners.len(), 1);
    winners.pop().unwrap().release().await.unwrap();
}

async fn contend(lockers: Vec<Locker>, per_locker: usize, rounds: usize) -> Arc<CriticalSection> {
    let section = Arc::new(CriticalSection::new());
    let mut tasks = Vec::new();
    for locker in lockers {
        for _ in 0..per_locker {
            let (locker, section) = (locker.clone(), section.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..rounds {
                    let opts = ObtainOptions::new().wait(Duration::from_secs(30));
                    let lock = locker.obtain_with("k", opts).await.unwrap();
                    section.enter(lock.fencing_token());
                    sleep(MS).await;
                    section.leave();
                    lock.release().await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    section
}

/// 8 tasks × 10 rounds through one locker: no overlap, tokens increase.
pub async fn rounds_never_overlap_and_tokens_increase(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "rounds").await;
    let section = contend(vec![locker], 8, 10).await;
    assert_eq!(section.assert_tokens_strictly_increase(), 80);
}

/// 4 lockers × 2 tasks × 5 rounds: no overlap across lockers either.
pub async fn separate_lockers_never_overlap(fx: &dyn Fixture) {
    let (first, ns) = locker(fx, "lockers").await;
    let mut lockers = vec![first];
    for _ in 1..4 {
        lockers.push(fx.locker(&ns).await);
    }
    let section = contend(lockers, 2, 5).await;
    assert_eq!(section.assert_tokens_strictly_increase(), 40);
}

/// Waiters of one locker are served first come, first served: while every
/// task keeps contending, no task gets the lock twice before all the others
/// had it once.
pub async fn waiters_are_served_fairly(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "fairness").await;
    crate::fairness::assert_served_in_turn(vec![locker; 4], "k", 20 * MS).await;
}

/// Keys with slashes, braces, spaces, emoji and the maximum length work and
/// are all distinct.
pub async fn unusual_keys_work(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "unusual").await;
    let b = fx.locker(&ns).await;
    let keys = [
        "a/b/c".to_owned(),
        "{braces}".to_owned(),
        "}{".to_owned(),
        "{a}{b}".to_owned(),
        "with space".to_owned(),
        "emoji 🚀".to_owned(),
        "../../etc/passwd".to_owned(),
        "%2F*?[".to_owned(),
        "tab\tnew\nline".to_owned(),
        "x".repeat(MAX_KEY_BYTES),
        "🚀".repeat(MAX_KEY_BYTES / 4),
    ];
    let mut held = Vec::new();
    for key in &keys {
        let lock = a.try_obtain(key.as_str()).await.unwrap();
        let holder = b.inspect(key.as_str()).await.unwrap().expect("visible");
        assert_eq!(holder.fencing_token, lock.fencing_token());
        assert!(
            b.try_obtain(key.as_str())
                .await
                .unwrap_err()
                .is_not_obtained()
        );
        held.push(lock);
    }
    for lock in held {
        lock.release().await.unwrap();
    }
    for key in &keys {
        assert!(!b.is_locked(key.as_str()).await.unwrap());
    }
}

/// "a" and keys that extend it never share a lock.
pub async fn prefix_keys_are_independent(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "prefix").await;
    let keys = ["a", "a/b", "a/", "ab", "a:b", "a/b/c", "/a"];
    let mut held = Vec::new();
    for key in keys {
        held.push(locker.try_obtain(key).await.unwrap());
    }
    let a = held.remove(0);
    a.release().await.unwrap();
    assert!(!locker.is_locked("a").await.unwrap());
    for (lock, key) in held.into_iter().zip(&keys[1..]) {
        assert!(
            locker.is_locked(*key).await.unwrap(),
            "{key} freed by releasing a"
        );
        lock.release().await.unwrap();
    }
}

/// Bad keys are a clear InvalidKey, never a panic.
pub async fn invalid_keys_are_rejected(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "bad_keys").await;
    let too_long = "x".repeat(MAX_KEY_BYTES + 1);
    for (key, says) in [("", "empty"), (too_long.as_str(), "1025 bytes")] {
        for err in [
            locker.obtain(key).await.unwrap_err(),
            locker.try_obtain(key).await.unwrap_err(),
            locker.is_locked(key).await.unwrap_err(),
            locker.inspect(key).await.unwrap_err(),
        ] {
            assert!(
                matches!(&err, Error::InvalidKey { reason } if reason.contains(says)),
                "{err}"
            );
        }
    }
    let err = locker.obtain(vec![0x66, 0x6f, 0xff]).await.unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

/// Bad options are a clear InvalidOptions naming the option.
pub async fn invalid_options_are_rejected(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "bad_options").await;
    let cases = [
        (ObtainOptions::new().ttl(Duration::ZERO), "ttl"),
        (
            ObtainOptions::new().ttl(Duration::from_secs(2 * 24 * 3600)),
            "ttl",
        ),
        (
            ObtainOptions::new()
                .ttl(Duration::from_secs(1))
                .refresh_interval(Duration::from_secs(1)),
            "refresh_interval",
        ),
        (
            ObtainOptions::new()
                .wait(Duration::ZERO)
                .retry(RetryStrategy::linear(MS)),
            "retry",
        ),
        (
            ObtainOptions::new().retry(RetryStrategy::linear(Duration::ZERO)),
            "retry",
        ),
    ];
    for (opts, option) in cases {
        match locker.obtain_with("k", opts).await {
            Err(Error::InvalidOptions { option: o, .. }) => assert_eq!(o, option),
            other => panic!("expected InvalidOptions for {option}, got {other:?}"),
        }
    }
    assert!(Namespace::new("bad namespace").is_err());
    assert!(!locker.is_locked("k").await.unwrap(), "nothing was taken");
}

/// Dropping an obtain future, waiting or mid-attempt, leaves nothing held.
pub async fn dropped_obtain_future_leaks_nothing(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "dropped_obtain").await;
    let b = fx.locker(&ns).await;
    let held = a.obtain("k").await.unwrap();
    let waiting = b.obtain_with("k", ObtainOptions::new().wait_forever());
    assert!(timeout(100 * MS, waiting).await.is_err());
    held.release().await.unwrap();
    b.try_obtain("k").await.unwrap().release().await.unwrap();
    // Cut attempts short at many points, some mid-flight.
    for i in 0..20u64 {
        let key = format!("cut-{i}");
        let attempt = b.try_obtain(key.as_str());
        let _ = timeout(Duration::from_micros(i * 50), attempt).await;
        let freed = async {
            while b.is_locked(key.as_str()).await.unwrap() {
                sleep(5 * MS).await;
            }
        };
        timeout(SLACK, freed)
            .await
            .unwrap_or_else(|_| panic!("{key} still held after its obtain was dropped"));
    }
}

/// A lock dropped without release is released in the background.
pub async fn dropped_lock_is_released_in_the_background(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "dropped_lock").await;
    let b = fx.locker(&ns).await;
    let ttl = Duration::from_secs(30);
    drop(
        a.obtain_with("k", ObtainOptions::new().ttl(ttl))
            .await
            .unwrap(),
    );
    let start = Instant::now();
    b.obtain_with("k", ObtainOptions::new().wait(SLACK))
        .await
        .unwrap();
    assert!(start.elapsed() < SLACK);
}

/// `close` releases held locks, fires their `lost()` with `Closed`, and
/// refuses every later operation.
pub async fn close_releases_locks_and_refuses_operations(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "close").await;
    let b = fx.locker(&ns).await;
    let lock = a.obtain("k").await.unwrap();
    let lost = tokio::spawn(lock.lost());
    a.close().await.unwrap();
    assert_eq!(
        timeout(SLACK, lost).await.unwrap().unwrap(),
        LostReason::Closed
    );
    assert!(lock.is_lost(), "a closed lock protects nothing");
    assert!(!b.is_locked("k").await.unwrap(), "close released the lock");
    assert!(matches!(a.obtain("k2").await, Err(Error::Closed)));
    assert!(matches!(a.inspect("k").await, Err(Error::Closed)));
    assert!(matches!(lock.refresh().await, Err(Error::Closed)));
    assert!(matches!(lock.release().await, Err(Error::Closed)));
    a.close().await.unwrap();
    assert!(a.is_closed());
}

/// The same key in two namespaces is two locks.
pub async fn namespaces_isolate(fx: &dyn Fixture) {
    let (a, _) = locker(fx, "ns_a").await;
    let (b, _) = locker(fx, "ns_b").await;
    let la = a.try_obtain("shared").await.unwrap();
    let lb = b.try_obtain("shared").await.unwrap();
    assert!(!a.is_locked("other").await.unwrap());
    la.release().await.unwrap();
    assert!(b.is_locked("shared").await.unwrap());
    lb.release().await.unwrap();
}
