//! Semaphores: up to `limit` holders of one key, each with a lease of its
//! own (`locker.semaphore(key, limit)`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distlock::backend::{Attempt, Renewal};
use distlock::{Holders, LeaseRef, LostReason, ObtainOptions, RetryStrategy, Share};
use tokio::time::{Instant, sleep, timeout};

use super::leases;
use super::occupancy::{contend, race};
use super::{
    MS, SLACK, assert_limit_mismatch, assert_not_held, assert_not_lost, assert_not_obtained,
    assert_served_in_arrival_order, expires, granted, holder_tokens, next_holder_wait,
    permit_locker, poll_until_obtained, raw_request, short,
};
use crate::fixture::Fixture;

fn permits(limit: u32) -> Share {
    Share::Permit { limit }
}

/// 30 tasks of one locker race for 3 permits, 3 rounds each: never more
/// than 3 inside at once, and at some point 3.
pub async fn limit_is_respected_by_racing_tasks(fx: &dyn Fixture) {
    let (locker, _) = permit_locker(fx, "sem_racing").await;
    let occupancy = contend(&[locker], 30, 3, |_| permits(3)).await;
    assert_eq!(occupancy.most_permits(), 3, "never all 3 permits in use");
}

/// 4 lockers (separate processes' connections) × 3 tasks × 4 rounds for 2
/// permits: never more than 2 inside, and at some point 2.
pub async fn limit_is_respected_across_lockers(fx: &dyn Fixture) {
    let (first, ns) = permit_locker(fx, "sem_lockers").await;
    let mut lockers = vec![first];
    for _ in 1..4 {
        lockers.push(fx.locker(&ns).await);
    }
    let occupancy = contend(&lockers, 3, 4, |_| permits(2)).await;
    assert_eq!(occupancy.most_permits(), 2, "never both permits in use");
}

/// 60 single attempts over 10 lockers at once win exactly the 3 permits:
/// every locker's first attempt reaches the store, and nothing is released.
pub async fn racing_try_acquires_win_exactly_the_limit(fx: &dyn Fixture) {
    let (first, ns) = permit_locker(fx, "sem_race_try").await;
    let mut lockers = vec![first];
    for _ in 1..10 {
        lockers.push(fx.locker(&ns).await);
    }
    let winners = race(&lockers, 60, permits(3)).await;
    assert_eq!(winners.len(), 3);
    let mut tokens: Vec<u64> = winners.iter().map(|l| l.fencing_token()).collect();
    assert_eq!(holder_tokens(&lockers[0], "k").await.len(), 3);
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "two permits share a token: {tokens:?}");
    for lock in winners {
        lock.release().await.unwrap();
    }
}

/// With every permit taken, `try_acquire` fails at once after one attempt
/// and leaves nothing behind; a released permit is then there for it.
pub async fn try_acquire_fails_fast_when_full(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "sem_try_full").await;
    let b = fx.locker(&ns).await;
    let ours = a.semaphore("k", 2).unwrap();
    let (p1, p2) = (ours.acquire().await.unwrap(), ours.acquire().await.unwrap());
    let theirs = b.semaphore("k", 2).unwrap();
    let start = Instant::now();
    match theirs.try_acquire().await {
        Err(distlock::Error::NotObtained { attempts, .. }) => assert_eq!(attempts, 1),
        other => panic!("expected NotObtained, got {other:?}"),
    }
    assert!(start.elapsed() < SLACK, "took {:?}", start.elapsed());
    let tokens = vec![p1.fencing_token(), p2.fencing_token()];
    assert_eq!(holder_tokens(&b, "k").await, tokens);
    p1.release().await.unwrap();
    let p3 = theirs.try_acquire().await.unwrap();
    assert!(p3.fencing_token() > p2.fencing_token());
    p2.release().await.unwrap();
    p3.release().await.unwrap();
}

/// A waiter in another locker gets a released permit well before its poll
/// delay, while the other permit stays with its holder.
pub async fn a_release_wakes_a_waiter_promptly(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "sem_wakeup").await;
    let b = fx.locker(&ns).await;
    let ours = a.semaphore("k", 2).unwrap();
    let (p1, p2) = (ours.acquire().await.unwrap(), ours.acquire().await.unwrap());
    let poll = Duration::from_secs(3);
    let theirs = b.semaphore("k", 2).unwrap();
    let waiter = tokio::spawn(async move {
        let opts = ObtainOptions::new()
            .wait(Duration::from_secs(10))
            .retry(RetryStrategy::linear(poll));
        let lock = theirs.acquire_with(opts).await.unwrap();
        (Instant::now(), lock)
    });
    sleep(Duration::from_millis(200)).await; // the waiter is now asleep in its poll delay
    let released = Instant::now();
    p1.release().await.unwrap();
    let (obtained, p3) = waiter.await.unwrap();
    let handoff = obtained - released;
    assert!(
        handoff < Duration::from_millis(1500),
        "handoff took {handoff:?}, poll delay {poll:?}"
    );
    assert_eq!(
        holder_tokens(&a, "k").await,
        vec![p2.fencing_token(), p3.fencing_token()]
    );
    assert_not_lost(&p2, "the other permit").await;
    p2.release().await.unwrap();
    p3.release().await.unwrap();
}

/// A holder that crashes (a separate process's connection that took a
/// permit and never refreshes or releases it) gives the permit back when
/// its TTL runs out, never before; the live holder beside it keeps its own.
///
/// Without TTL expiry the crashed permit is held past its TTL for as long
/// as its process lives, and comes back when the process's connection is
/// gone (the backend dropped).
pub async fn a_crashed_holders_permit_returns_after_its_ttl(fx: &dyn Fixture) {
    leases::crashed_lease_returns_after_its_ttl(fx, "sem_crash", permits(2)).await;
}

/// A permit that is not refreshed is lost at its validity deadline, alone:
/// the refreshed permits beside it stay valid, and its place comes free.
/// Without TTL expiry it stays valid past its TTL.
pub async fn an_unrefreshed_permit_is_lost_alone(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "sem_unrefreshed").await;
    let b = fx.locker(&ns).await;
    let sem = a.semaphore("k", 3).unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let mut kept = Vec::new();
    for _ in 0..2 {
        let lock = sem.acquire_with(short(fx)).await.unwrap();
        let counter = errors.clone();
        let handle = lock.start_refresh(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        kept.push((lock, handle));
    }
    let alone = sem.acquire_with(short(fx)).await.unwrap();
    let theirs = b.semaphore("k", 3).unwrap();
    if !expires(&a) {
        sleep(fx.short_ttl() + 100 * MS).await;
        assert_not_lost(&alone, "a permit that cannot expire").await;
        assert_eq!(holder_tokens(&b, "k").await.len(), 3);
        assert_not_obtained(theirs.try_acquire().await);
        alone.release().await.unwrap();
    } else {
        let reason = timeout(fx.short_ttl() + SLACK, alone.lost()).await;
        assert_eq!(reason.expect("lost() fired"), LostReason::Expired);
        let (lock, _) = poll_until_obtained(next_holder_wait(fx), "the expired place", || {
            theirs.try_acquire()
        })
        .await;
        assert_not_held(alone.release().await);
        lock.release().await.unwrap();
    }
    for (lock, _) in &kept {
        assert_not_lost(lock, "a refreshed permit").await;
        lock.refresh().await.unwrap();
    }
    let tokens: Vec<u64> = kept.iter().map(|(l, _)| l.fencing_token()).collect();
    assert_eq!(holder_tokens(&b, "k").await, tokens);
    for (lock, _) in kept {
        lock.release().await.unwrap();
    }
    assert_eq!(errors.load(Ordering::SeqCst), 0);
}

/// A permit deleted behind its holder's back (its lease released at the
/// store by someone else) fires that permit's `lost()` within about one
/// refresh interval; the other permits stay held and valid, and its place
/// is free again.
pub async fn a_deleted_permit_is_lost_alone(fx: &dyn Fixture) {
    leases::deleted_lease_is_lost_alone(fx, "sem_deleted", permits(3)).await;
}

/// A permit asked for with another limit than the holders share is refused
/// at once with `LimitMismatch`, even by an obtain that would wait; once
/// the key is free, any limit goes.
pub async fn a_different_limit_is_refused_at_once(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "sem_mismatch").await;
    let b = fx.locker(&ns).await;
    let held = a.semaphore("k", 3).unwrap().acquire().await.unwrap();
    let start = Instant::now();
    let waiting = ObtainOptions::new().wait(Duration::from_secs(30));
    assert_limit_mismatch(b.semaphore("k", 2).unwrap().acquire_with(waiting).await);
    assert!(start.elapsed() < SLACK, "took {:?}", start.elapsed());
    assert_limit_mismatch(b.semaphore("k", 4).unwrap().try_acquire().await);
    assert_limit_mismatch(a.semaphore("k", 1).unwrap().try_acquire().await);
    assert_limit_mismatch(b.rw_lock("k").unwrap().try_read().await);
    let holders = b.holders("k").await.unwrap();
    assert_eq!(holders.limit, Some(3));
    assert_eq!(
        holders.holders.len(),
        1,
        "a refused permit is held: {holders:?}"
    );
    let second = b.semaphore("k", 3).unwrap().try_acquire().await.unwrap();
    held.release().await.unwrap();
    second.release().await.unwrap();
    b.semaphore("k", 2)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// A plain lock waits for every permit to be returned, and permits wait
/// for it; an exclusive holder is contention, not a limit mismatch.
pub async fn plain_locks_and_permits_exclude_each_other(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "sem_plain").await;
    let (b, c) = (fx.locker(&ns).await, fx.locker(&ns).await);
    let sem = a.semaphore("k", 2).unwrap();
    let (p1, p2) = (sem.acquire().await.unwrap(), sem.acquire().await.unwrap());
    assert_not_obtained(c.try_obtain("k").await);
    let waiting = ObtainOptions::new().wait(Duration::from_secs(30));
    let plain = tokio::spawn(async move { b.obtain_with("k", waiting).await.unwrap() });
    p1.release().await.unwrap();
    assert_not_obtained(c.try_obtain("k").await); // one permit is still out
    let last = p2.fencing_token();
    p2.release().await.unwrap();
    let lock = plain.await.unwrap();
    assert!(lock.fencing_token() > last);
    let holders = c.holders("k").await.unwrap();
    assert_eq!(holders.limit, None);
    assert_eq!(holder_tokens(&c, "k").await, vec![lock.fencing_token()]);
    assert_not_obtained(sem.try_acquire().await);
    assert_not_obtained(c.semaphore("k", 5).unwrap().try_acquire().await);
    let token = lock.fencing_token();
    lock.release().await.unwrap();
    let after = sem.try_acquire().await.unwrap();
    assert!(after.fencing_token() > token);
    after.release().await.unwrap();
}

/// Tokens strictly increase over every grant of the key, permits and
/// plain locks alike, across lockers.
pub async fn fencing_tokens_increase_over_permits_and_locks(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "sem_tokens").await;
    let b = fx.locker(&ns).await;
    let (ours, theirs) = (a.semaphore("k", 2).unwrap(), b.semaphore("k", 2).unwrap());
    let mut tokens = Vec::new();
    let mut note = |lock: distlock::Lock| {
        tokens.push(lock.fencing_token());
        lock
    };
    let p1 = note(ours.acquire().await.unwrap());
    let p2 = note(theirs.acquire().await.unwrap());
    p1.release().await.unwrap();
    let p3 = note(ours.acquire().await.unwrap());
    p2.release().await.unwrap();
    p3.release().await.unwrap();
    note(b.obtain("k").await.unwrap()).release().await.unwrap();
    let p4 = note(theirs.acquire().await.unwrap());
    let p5 = note(ours.acquire().await.unwrap());
    p4.release().await.unwrap();
    p5.release().await.unwrap();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not strictly increasing: {tokens:?}"
    );
}

/// A one-off refresh moves a permit's deadline, and auto-refresh keeps it
/// for several TTLs without errors.
pub async fn start_refresh_keeps_a_permit_past_several_ttls(fx: &dyn Fixture) {
    leases::refresh_keeps_a_lease(fx, "sem_refresh", permits(1)).await;
}

/// Extend and release are checked against the holder's owner token: a
/// forged one is NotHeld and leaves the permits as they were.
pub async fn non_owner_cannot_release_or_extend_a_permit(fx: &dyn Fixture) {
    let (locker, _) = permit_locker(fx, "sem_non_owner").await;
    let backend = locker.backend();
    let ttl = fx.short_ttl() * 10;
    let lock = locker
        .semaphore("k", 2)
        .unwrap()
        .acquire_with(ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let forged = raw_request(&locker, "k", permits(2), ttl).lease();
    assert_not_held(backend.release(&forged).await);
    let long = Renewal::new(forged, Duration::from_secs(600));
    assert_not_held(backend.extend(&long).await);
    let holders = locker.holders("k").await.unwrap();
    assert_eq!(
        holder_tokens(&locker, "k").await,
        vec![lock.fencing_token()]
    );
    assert!(
        holders.holders[0].expires_in.is_none_or(|left| left <= ttl),
        "extended by a non-owner: {holders:?}"
    );
    assert_not_lost(&lock, "the permit").await;
    lock.release().await.unwrap();
    assert!(locker.holders("k").await.unwrap().is_empty());
}

/// A lease names its holder by key, owner and mode: the owner of a permit
/// asking to extend or release an exclusive lease, or the owner of a lock a
/// permit, is NotHeld, and the holder stays as it was.
pub async fn extend_and_release_in_another_mode_are_not_held(fx: &dyn Fixture) {
    let (locker, _) = permit_locker(fx, "sem_other_mode").await;
    let backend = locker.backend();
    let ttl = fx.short_ttl() * 10;
    for (held, asked) in [
        (permits(2), Share::Exclusive),
        (Share::Exclusive, permits(2)),
    ] {
        let req = raw_request(&locker, "k", held, ttl);
        let token = granted(backend.try_acquire(&req).await);
        let other_mode = LeaseRef {
            share: asked,
            ..req.lease()
        };
        let long = Renewal::new(other_mode.clone(), Duration::from_secs(600));
        assert_not_held(backend.extend(&long).await);
        assert_not_held(backend.release(&other_mode).await);
        let holders = locker.holders("k").await.unwrap();
        assert_eq!(holder_tokens(&locker, "k").await, vec![token], "{held:?}");
        assert!(
            holders.holders[0].expires_in.is_none_or(|left| left <= ttl),
            "extended in another mode: {holders:?}"
        );
        backend.release(&req.lease()).await.unwrap();
    }
}

/// Asking again with a permit holder's own owner token grants again with
/// the same token and a fresh TTL, and takes no second permit.
pub async fn acquire_is_idempotent_for_the_same_owner(fx: &dyn Fixture) {
    let (locker, _) = permit_locker(fx, "sem_idempotent").await;
    let backend = locker.backend();
    let ttl = fx.short_ttl() * 10;
    let req = raw_request(&locker, "k", permits(2), ttl);
    let first = backend.try_acquire(&req).await.unwrap();
    sleep(200 * MS).await;
    let left = async || locker.holders("k").await.unwrap().holders[0].expires_in;
    let before = left().await;
    let again = backend.try_acquire(&req).await.unwrap();
    assert!(matches!(first, Attempt::Granted { .. }));
    assert_eq!(first, again);
    assert_eq!(locker.holders("k").await.unwrap().holders.len(), 1);
    if expires(&locker) {
        let after = left().await;
        assert!(
            after > before,
            "the TTL was not reset: {before:?} then {after:?}"
        );
    }
    let second = raw_request(&locker, "k", permits(2), ttl);
    let second_token = granted(backend.try_acquire(&second).await);
    let third = raw_request(&locker, "k", permits(2), ttl);
    assert!(matches!(
        backend.try_acquire(&third).await.unwrap(),
        Attempt::Contended { .. }
    ));
    assert_eq!(
        holder_tokens(&locker, "k").await,
        vec![granted(Ok(first)), second_token]
    );
    backend.release(&req.lease()).await.unwrap();
    backend.release(&second.lease()).await.unwrap();
}

/// Dropping an acquire future, waiting or mid-attempt, leaves no permit
/// held and no waiter behind: the key ends with no holders.
pub async fn dropped_acquire_future_leaks_no_permit(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "sem_dropped_acquire").await;
    let b = fx.locker(&ns).await;
    let held = a.semaphore("k", 1).unwrap().acquire().await.unwrap();
    let sem = b.semaphore("k", 1).unwrap();
    let waiting = sem.acquire_with(ObtainOptions::new().wait_forever());
    assert!(timeout(100 * MS, waiting).await.is_err());
    held.release().await.unwrap();
    let (lock, _) = poll_until_obtained(SLACK, "the free permit", || sem.try_acquire()).await;
    lock.release().await.unwrap();
    // Cut attempts short at many points, some mid-flight.
    for i in 0..20u64 {
        let key = format!("cut-{i}");
        let sem = b.semaphore(key.as_str(), 2).unwrap();
        let _ = timeout(Duration::from_micros(i * 50), sem.try_acquire()).await;
        let freed = async {
            while !b.holders(key.as_str()).await.unwrap().is_empty() {
                sleep(5 * MS).await;
            }
        };
        timeout(SLACK, freed)
            .await
            .unwrap_or_else(|_| panic!("{key} still held after its acquire was dropped"));
    }
    assert_eq!(a.holders("k").await.unwrap(), Holders::none());
}

/// A permit dropped without release is released in the background; the
/// permit kept beside it stays.
pub async fn a_dropped_permit_is_released_in_the_background(fx: &dyn Fixture) {
    leases::dropped_lease_is_released_in_the_background(fx, "sem_dropped", permits(2)).await;
}

/// `holders` lists every permit, oldest grant first, with its token, time
/// left and metadata, and the limit they share; `inspect` reports one.
pub async fn holders_lists_every_permit_with_token_ttl_metadata_and_limit(fx: &dyn Fixture) {
    leases::holders_list_every_lease(fx, "sem_holders", permits(3)).await;
}

/// `holders` reads: it takes no permit on a free key and extends none of
/// a held key.
pub async fn holders_is_read_only(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "sem_holders_ro").await;
    let b = fx.locker(&ns).await;
    let sem = a.semaphore("k", 1).unwrap();
    for _ in 0..3 {
        assert_eq!(sem.holders().await.unwrap(), Holders::none());
    }
    assert!(a.inspect("k").await.unwrap().is_none());
    let lock = b.semaphore("k", 1).unwrap().try_acquire().await.unwrap();
    let before = sem.holders().await.unwrap();
    sleep(200 * MS).await;
    let after = sem.holders().await.unwrap();
    assert_eq!(holder_tokens(&a, "k").await, vec![lock.fencing_token()]);
    if expires(&a) {
        let left = |h: &Holders| h.holders[0].expires_in.expect("a TTL left");
        assert!(
            left(&after) < left(&before),
            "reading extended the permit: {before:?} then {after:?}"
        );
    }
    lock.release().await.unwrap();
    assert_eq!(sem.holders().await.unwrap(), Holders::none());
}

/// Waiters of one locker get permits in their order of arrival.
pub async fn waiters_of_one_locker_get_permits_in_arrival_order(fx: &dyn Fixture) {
    let (locker, _) = permit_locker(fx, "sem_fifo").await;
    let sem = locker.semaphore("k", 2).unwrap();
    let (p1, p2) = (sem.acquire().await.unwrap(), sem.acquire().await.unwrap());
    let free = async {
        p1.release().await.unwrap();
        p2.release().await.unwrap();
    };
    assert_served_in_arrival_order(&locker, &[permits(2); 5], free).await;
}

/// Releasing the last permit leaves nothing of the key: no holder, no
/// limit, so a semaphore of another size can take it.
pub async fn releasing_the_last_permit_frees_the_key(fx: &dyn Fixture) {
    let (locker, _) = permit_locker(fx, "sem_last").await;
    let sem = locker.semaphore("k", 2).unwrap();
    let (p1, p2) = (sem.acquire().await.unwrap(), sem.acquire().await.unwrap());
    p1.release().await.unwrap();
    assert!(locker.is_locked("k").await.unwrap());
    assert_eq!(holder_tokens(&locker, "k").await, vec![p2.fencing_token()]);
    p2.release().await.unwrap();
    assert!(!locker.is_locked("k").await.unwrap());
    assert!(locker.inspect("k").await.unwrap().is_none());
    assert_eq!(locker.holders("k").await.unwrap(), Holders::none());
    let other = locker
        .semaphore("k", 5)
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    other.release().await.unwrap();
}

/// A semaphore of one permit is a lock: one winner of a race, and rounds
/// of several lockers never overlap.
pub async fn a_semaphore_of_one_is_a_lock(fx: &dyn Fixture) {
    let (first, ns) = permit_locker(fx, "sem_one").await;
    let lockers = vec![first, fx.locker(&ns).await, fx.locker(&ns).await];
    let mut winners = race(&lockers, 30, permits(1)).await;
    assert_eq!(winners.len(), 1);
    winners.pop().unwrap().release().await.unwrap();
    let occupancy = contend(&lockers, 2, 4, |_| permits(1)).await;
    assert_eq!(occupancy.most_permits(), 1);
}
