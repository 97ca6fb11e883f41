//! Checks that semaphores and reader-writer locks share: one lease of a
//! key held beside others in the same mode (a permit, or a read lock),
//! taken through [`take`]. The cases in `semaphore.rs` and `rwlock.rs` call
//! them with their mode.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::{Lock, Locker, LostReason, ObtainOptions, Share};
use tokio::time::{Instant, sleep, timeout};

use super::{
    MS, SLACK, assert_not_lost, assert_not_obtained, expires, granted, holder_tokens,
    next_holder_wait, permit_locker, raw_request, short, spied_locker, take,
};
use crate::fixture::Fixture;

/// A permit of a semaphore of two, or a read lock: `share` with room for
/// exactly one more holder beside one, or for any number.
fn is_limited(share: Share) -> bool {
    share != Share::READERS
}

/// One attempt at `key` in mode `share`.
async fn try_take(locker: &Locker, share: Share) -> distlock::Result<Lock> {
    take(locker, "k", share, ObtainOptions::new().try_once()).await
}

/// Counts `lock`'s refresh errors from now on.
fn refreshed(lock: &Lock, errors: &Arc<AtomicUsize>) -> distlock::RefreshHandle {
    let counter = errors.clone();
    lock.start_refresh(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    })
}

/// A holder in mode `share` (permits of a semaphore of 2, or readers)
/// crashes beside a live one: it stops refreshing and never releases. Its
/// lease comes back when its TTL runs out, never before, and the live
/// holder keeps its own. Without TTL expiry: the crashed lease is held past
/// its TTL while its process lives, and comes back when the process is gone
/// (its backend dropped).
pub(super) async fn crashed_lease_returns_after_its_ttl(
    fx: &dyn Fixture,
    case: &str,
    share: Share,
) {
    let (a, ns) = permit_locker(fx, case).await;
    let b = fx.locker(&ns).await;
    let ttl = fx.short_ttl();
    let live = take(&a, "k", share, short(fx)).await.unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let _refresh = refreshed(&live, &errors);
    // A separate process's connection that takes a lease and never
    // refreshes or releases it. It stays open on a store with TTL expiry, so
    // that the TTL, not the end of a connection, is what frees the lease.
    let mut crashed = Some(fx.backend().await);
    let req = raw_request(&a, "k", share, ttl);
    let sent = Instant::now();
    let crashed_token = granted(crashed.as_ref().unwrap().try_acquire(&req).await);
    assert_not_obtained(b.try_obtain("k").await);
    if is_limited(share) {
        assert_not_obtained(try_take(&b, share).await);
    }
    let (taken, at) = if expires(&a) {
        let (taken, at) =
            crashed_lease_back(&b, share, crashed_token, ttl + next_holder_wait(fx)).await;
        // Store clocks count in milliseconds.
        assert!(
            at + 5 * MS >= sent + ttl,
            "the lease came back {:?} before its TTL ran out",
            sent + ttl - at
        );
        (taken, at)
    } else {
        sleep(ttl + 100 * MS).await;
        assert!(holder_tokens(&b, "k").await.contains(&crashed_token));
        if is_limited(share) {
            assert_not_obtained(try_take(&b, share).await);
        }
        drop(crashed.take());
        let dropped = Instant::now();
        let (taken, at) = crashed_lease_back(&b, share, crashed_token, SLACK).await;
        assert!(at - dropped < SLACK);
        (taken, at)
    };
    assert!(at > sent);
    assert_not_lost(&live, "the live holder").await;
    let mut expected = vec![live.fencing_token()];
    expected.extend(taken.iter().map(|lock| lock.fencing_token()));
    assert_eq!(holder_tokens(&a, "k").await, expected);
    live.release().await.unwrap();
    if let Some(lock) = taken {
        assert!(lock.fencing_token() > crashed_token);
        lock.release().await.unwrap();
    }
    let next = b.obtain_with("k", short(fx).wait(SLACK)).await.unwrap();
    assert!(next.fencing_token() > crashed_token);
    next.release().await.unwrap();
    drop(crashed);
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "the live holder's refresh failed"
    );
}

/// Waits until the crashed lease with `token` is gone: for a limited
/// `share`, until a lease can be taken in its place (returned); for
/// readers, until the holders no longer list it. Returns when.
async fn crashed_lease_back(
    b: &Locker,
    share: Share,
    token: u64,
    bound: Duration,
) -> (Option<Lock>, Instant) {
    let start = Instant::now();
    loop {
        if is_limited(share) {
            match try_take(b, share).await {
                Ok(lock) => return (Some(lock), Instant::now()),
                Err(e) => assert!(e.is_not_obtained(), "{e}"),
            }
        } else if !holder_tokens(b, "k").await.contains(&token) {
            return (None, Instant::now());
        }
        assert!(
            start.elapsed() < bound,
            "the crashed lease is held past {bound:?}"
        );
        sleep(10 * MS).await;
    }
}

/// Of three leases in mode `share`, the one deleted behind its holder's
/// back (released at the store by someone else) fires its `lost()` within
/// about one refresh interval; the other two stay held and valid.
pub(super) async fn deleted_lease_is_lost_alone(fx: &dyn Fixture, case: &str, share: Share) {
    let ns = super::unique_namespace(case);
    let (locker, spy) = spied_locker(fx, &ns).await;
    let other = fx.locker(&ns).await;
    let ttl = fx.short_ttl() * 4;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut held = Vec::new();
    for _ in 0..3 {
        let lock = take(&locker, "k", share, ObtainOptions::new().ttl(ttl))
            .await
            .unwrap();
        let seen = errors.clone();
        let handle = lock.start_refresh(move |e| seen.lock().unwrap().push(e.is_not_held()));
        held.push((lock, handle));
    }
    let (victim, _handle) = held.remove(1);
    let lease = spy.granted_lease(victim.fencing_token()).expect("recorded");
    spy.inner().release(&lease).await.unwrap();
    let start = Instant::now();
    let reason = timeout(ttl, victim.lost()).await.expect("lost() fired");
    assert_eq!(reason, LostReason::NotHeld);
    assert!(
        start.elapsed() < ttl / 3 + SLACK / 2,
        "lost() took {:?}",
        start.elapsed()
    );
    assert_eq!(*errors.lock().unwrap(), vec![true], "on_error saw one loss");
    for (lock, _) in &held {
        assert_not_lost(lock, "another holder").await;
    }
    let tokens: Vec<u64> = held.iter().map(|(l, _)| l.fencing_token()).collect();
    assert_eq!(holder_tokens(&other, "k").await, tokens);
    // Its place is free again.
    try_take(&other, share)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    for (lock, _) in held {
        lock.release().await.unwrap();
    }
}

/// A lease in mode `share` dropped without release is released in the
/// background, soon; the one kept beside it stays.
pub(super) async fn dropped_lease_is_released_in_the_background(
    fx: &dyn Fixture,
    case: &str,
    share: Share,
) {
    let (a, ns) = permit_locker(fx, case).await;
    let b = fx.locker(&ns).await;
    let opts = ObtainOptions::new().ttl(Duration::from_secs(30));
    let kept = take(&a, "k", share, opts.clone()).await.unwrap();
    drop(take(&a, "k", share, opts).await.unwrap());
    let start = Instant::now();
    while holder_tokens(&b, "k").await != vec![kept.fencing_token()] {
        assert!(start.elapsed() < SLACK, "the dropped lease is still held");
        sleep(5 * MS).await;
    }
    assert_not_lost(&kept, "the kept holder").await;
    let kept_token = kept.fencing_token();
    kept.release().await.unwrap();
    let lock = b
        .obtain_with("k", ObtainOptions::new().wait(SLACK))
        .await
        .unwrap();
    assert!(lock.fencing_token() > kept_token);
    lock.release().await.unwrap();
}

/// `holders` lists three leases in mode `share` (from two lockers), oldest
/// grant first, with token, time left and metadata, and their limit;
/// `inspect` reports one of them.
pub(super) async fn holders_list_every_lease(fx: &dyn Fixture, case: &str, share: Share) {
    let (a, ns) = permit_locker(fx, case).await;
    let b = fx.locker(&ns).await;
    let ttl = Duration::from_secs(20);
    let with = |meta: &str| ObtainOptions::new().ttl(ttl).metadata(meta);
    let first = take(&a, "k", share, with("worker-1")).await.unwrap();
    let second = take(&b, "k", share, with("worker-2 {host: b}"))
        .await
        .unwrap();
    let third = take(&a, "k", share, ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let holders = a.holders("k").await.unwrap();
    assert_eq!(holders.limit, share.limit());
    let listed: Vec<_> = holders
        .holders
        .iter()
        .map(|h| (h.fencing_token, h.metadata.as_deref()))
        .collect();
    let expected = vec![
        (first.fencing_token(), Some("worker-1")),
        (second.fencing_token(), Some("worker-2 {host: b}")),
        (third.fencing_token(), None),
    ];
    assert_eq!(listed, expected);
    for holder in &holders.holders {
        match holder.expires_in {
            None => assert!(!expires(&a), "no TTL left reported: {holder:?}"),
            Some(left) => assert!(
                left <= ttl && left > ttl - Duration::from_secs(5),
                "{left:?}"
            ),
        }
    }
    let one = b.inspect("k").await.unwrap().expect("held");
    assert!(
        expected
            .iter()
            .any(|(token, _)| *token == one.fencing_token)
    );
    second.release().await.unwrap();
    assert_eq!(
        holder_tokens(&b, "k").await,
        vec![first.fencing_token(), third.fencing_token()]
    );
    first.release().await.unwrap();
    third.release().await.unwrap();
}

/// A lease in mode `share` with a short TTL: a refresh moves its deadline,
/// and auto-refresh keeps it for several TTLs without errors, excluding a
/// plain lock all along.
pub(super) async fn refresh_keeps_a_lease(fx: &dyn Fixture, case: &str, share: Share) {
    let (a, ns) = permit_locker(fx, case).await;
    let b = fx.locker(&ns).await;
    let lock = take(&a, "k", share, short(fx)).await.unwrap();
    let before = lock.valid_until();
    sleep(fx.short_ttl() / 2).await;
    lock.refresh().await.unwrap();
    assert!(lock.valid_until() > before);
    let errors = Arc::new(AtomicUsize::new(0));
    let handle = refreshed(&lock, &errors);
    sleep(fx.short_ttl() * 4).await;
    assert_not_lost(&lock, "the refreshed holder").await;
    assert_not_obtained(b.try_obtain("k").await);
    assert_eq!(holder_tokens(&b, "k").await, vec![lock.fencing_token()]);
    assert!(handle.is_running());
    lock.release().await.unwrap();
    assert_eq!(errors.load(Ordering::SeqCst), 0);
}
