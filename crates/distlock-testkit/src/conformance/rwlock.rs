//! Reader-writer locks: any number of readers of a key, or one writer
//! (`locker.rw_lock(key)`); a writer is a plain lock on the key.

use std::time::Duration;

use distlock::backend::Attempt;
use distlock::{Error, ObtainOptions, RetryStrategy, Share};
use tokio::time::{Instant, sleep, timeout};

use super::occupancy::contend;
use super::{
    SLACK, assert_limit_mismatch, assert_not_lost, assert_not_obtained,
    assert_served_in_arrival_order, first_attempt_answered, holder_tokens, leases, permit_locker,
    poll_until_obtained, raw_request, spied_locker, waiting,
};
use crate::fixture::Fixture;

/// Readers in five lockers hold the key at once; each is a lease of
/// `Share::READERS`, listed in the order granted.
pub async fn readers_hold_the_key_together(fx: &dyn Fixture) {
    let (first, ns) = permit_locker(fx, "rw_together").await;
    let mut lockers = vec![first];
    for _ in 1..5 {
        lockers.push(fx.locker(&ns).await);
    }
    let mut readers = Vec::new();
    for locker in &lockers {
        let reader = locker.rw_lock("k").unwrap().try_read().await.unwrap();
        assert_eq!(reader.share(), Share::READERS);
        readers.push(reader);
    }
    let holders = lockers[0].holders("k").await.unwrap();
    assert_eq!(holders.limit, Some(u32::MAX));
    let tokens: Vec<u64> = readers.iter().map(|r| r.fencing_token()).collect();
    assert_eq!(holder_tokens(&lockers[1], "k").await, tokens);
    for reader in &readers {
        assert_not_lost(reader, "a reader").await;
    }
    for reader in readers {
        reader.release().await.unwrap();
    }
}

/// A writer waits for the reader before it and gets the key when it
/// leaves; readers then wait for the writer.
pub async fn a_writer_and_readers_exclude_each_other(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_exclude").await;
    let (b, c) = (fx.locker(&ns).await, fx.locker(&ns).await);
    let reader = a.rw_lock("k").unwrap().read().await.unwrap();
    let rw = b.rw_lock("k").unwrap();
    assert_not_obtained(rw.try_write().await);
    let writer = tokio::spawn(async move { rw.write_with(waiting_long()).await.unwrap() });
    let read_token = reader.fencing_token();
    reader.release().await.unwrap();
    let write = writer.await.unwrap();
    assert!(write.fencing_token() > read_token);
    let theirs = c.rw_lock("k").unwrap();
    assert_not_obtained(theirs.try_read().await);
    let late = tokio::spawn(async move { theirs.read_with(waiting_long()).await.unwrap() });
    let write_token = write.fencing_token();
    write.release().await.unwrap();
    let read = late.await.unwrap();
    assert!(read.fencing_token() > write_token);
    read.release().await.unwrap();
}

fn waiting_long() -> ObtainOptions {
    ObtainOptions::new().wait(Duration::from_secs(30))
}

/// No writer starvation: while a writer waits for the reader before it,
/// readers that come after it are refused, and the writer gets the key
/// when that reader leaves, before them.
pub async fn a_waiting_writer_blocks_new_readers(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_starve").await;
    let (b, spy) = spied_locker(fx, &ns).await;
    let (c, d) = (fx.locker(&ns).await, fx.locker(&ns).await);
    let first = a.rw_lock("k").unwrap().read().await.unwrap();
    let rw = b.rw_lock("k").unwrap();
    let opts = waiting(fx);
    let writer = tokio::spawn(async move { rw.write_with(opts).await.unwrap() });
    first_attempt_answered(&spy).await;
    let theirs = c.rw_lock("k").unwrap();
    assert_not_obtained(theirs.try_read().await);
    let late = tokio::spawn(async move { theirs.read_with(waiting_long()).await.unwrap() });
    assert_not_lost(&first, "the reader before the writer").await;
    let first_token = first.fencing_token();
    first.release().await.unwrap();
    let write = writer.await.unwrap();
    assert!(write.fencing_token() > first_token);
    assert_not_obtained(d.rw_lock("k").unwrap().try_read().await);
    assert!(!late.is_finished(), "a reader got in beside the writer");
    let write_token = write.fencing_token();
    write.release().await.unwrap();
    let read = late.await.unwrap();
    assert!(read.fencing_token() > write_token);
    read.release().await.unwrap();
}

/// Readers and writers waiting in one locker are served in their order of
/// arrival, whatever their mode: the grants' tokens follow it.
pub async fn waiters_of_one_locker_are_served_in_arrival_order_across_modes(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_fifo").await;
    let b = fx.locker(&ns).await;
    let held = a.rw_lock("k").unwrap().write().await.unwrap();
    let (r, w) = (Share::READERS, Share::Exclusive);
    let free = async { held.release().await.unwrap() };
    assert_served_in_arrival_order(&b, &[r, w, r, r, w, r], free).await;
}

/// One counter for the key: a writer's token is greater than every earlier
/// grant's, a reader's greater than the last writer's, and plain locks
/// count among the writers.
pub async fn fencing_orders_writes_after_every_earlier_grant(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_tokens").await;
    let (b, c) = (fx.locker(&ns).await, fx.locker(&ns).await);
    let (ours, theirs) = (a.rw_lock("k").unwrap(), b.rw_lock("k").unwrap());
    let r1 = ours.read().await.unwrap();
    let r2 = theirs.read().await.unwrap();
    let rw = c.rw_lock("k").unwrap();
    let writer = tokio::spawn(async move { rw.write_with(waiting_long()).await.unwrap() });
    let mut tokens = vec![r1.fencing_token(), r2.fencing_token()];
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    let w = writer.await.unwrap();
    tokens.push(w.fencing_token());
    w.release().await.unwrap();
    let r3 = ours.read().await.unwrap();
    let r4 = theirs.read().await.unwrap();
    tokens.extend([r3.fencing_token(), r4.fencing_token()]);
    r3.release().await.unwrap();
    let r5 = ours.read().await.unwrap();
    tokens.push(r5.fencing_token());
    r4.release().await.unwrap();
    r5.release().await.unwrap();
    let plain = c.obtain("k").await.unwrap();
    tokens.push(plain.fencing_token());
    plain.release().await.unwrap();
    let r6 = theirs.read().await.unwrap();
    tokens.push(r6.fencing_token());
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not strictly increasing: {tokens:?}"
    );
    r6.release().await.unwrap();
}

/// A read lock released while others read leaves them held and valid,
/// and the writer still waits for them.
pub async fn a_read_lock_is_released_alone(fx: &dyn Fixture) {
    let (first, ns) = permit_locker(fx, "rw_release_one").await;
    let lockers = [first, fx.locker(&ns).await, fx.locker(&ns).await];
    let writer = fx.locker(&ns).await.rw_lock("k").unwrap();
    let mut readers = Vec::new();
    for locker in &lockers {
        readers.push(locker.rw_lock("k").unwrap().read().await.unwrap());
    }
    assert_not_obtained(writer.try_write().await);
    readers.remove(1).release().await.unwrap();
    for reader in &readers {
        assert_not_lost(reader, "another reader").await;
        reader.refresh().await.unwrap();
    }
    let tokens: Vec<u64> = readers.iter().map(|r| r.fencing_token()).collect();
    assert_eq!(holder_tokens(&lockers[1], "k").await, tokens);
    assert_not_obtained(writer.try_write().await);
    for reader in readers {
        reader.release().await.unwrap();
    }
    writer.try_write().await.unwrap().release().await.unwrap();
}

/// A read lock deleted behind its holder's back fires its `lost()` within
/// about one refresh interval; the other readers stay held and valid.
pub async fn a_deleted_read_lock_is_lost_alone(fx: &dyn Fixture) {
    leases::deleted_lease_is_lost_alone(fx, "rw_deleted", Share::READERS).await;
}

/// A write lock is a plain lock on the key: each excludes the other, and
/// readers, and readers exclude both.
pub async fn a_write_lock_is_a_plain_lock(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_plain").await;
    let b = fx.locker(&ns).await;
    let (ours, theirs) = (a.rw_lock("k").unwrap(), b.rw_lock("k").unwrap());
    let write = ours.write().await.unwrap();
    assert_eq!(write.share(), Share::Exclusive);
    assert_not_obtained(b.try_obtain("k").await);
    assert_not_obtained(theirs.try_write().await);
    assert_not_obtained(theirs.try_read().await);
    let holder = b.inspect("k").await.unwrap().expect("held");
    assert_eq!(holder.fencing_token, write.fencing_token());
    let holders = theirs.holders().await.unwrap();
    assert_eq!(holders.limit, None);
    assert_eq!(holder_tokens(&b, "k").await, vec![write.fencing_token()]);
    write.release().await.unwrap();
    let plain = b.obtain("k").await.unwrap();
    assert_not_obtained(ours.try_write().await);
    assert_not_obtained(ours.try_read().await);
    plain.release().await.unwrap();
    let read = ours.read().await.unwrap();
    assert_not_obtained(b.try_obtain("k").await);
    read.release().await.unwrap();
    b.try_obtain("k").await.unwrap().release().await.unwrap();
}

/// Readers and a semaphore's permits on one key disagree on the limit:
/// each is refused at once with `LimitMismatch` while the other holds,
/// even when it would wait. A writer only waits for permits.
pub async fn readers_and_a_semaphore_refuse_each_other(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_mismatch").await;
    let b = fx.locker(&ns).await;
    let (rw, sem) = (a.rw_lock("k").unwrap(), b.semaphore("k", 3).unwrap());
    let read = rw.read().await.unwrap();
    assert_limit_mismatch(sem.try_acquire().await);
    let start = Instant::now();
    assert_limit_mismatch(sem.acquire_with(waiting_long()).await);
    assert!(start.elapsed() < SLACK, "took {:?}", start.elapsed());
    let holders = b.holders("k").await.unwrap();
    assert_eq!((holders.limit, holders.holders.len()), (Some(u32::MAX), 1));
    read.release().await.unwrap();
    let permit = sem.acquire().await.unwrap();
    assert_limit_mismatch(rw.try_read().await);
    let start = Instant::now();
    assert_limit_mismatch(rw.read_with(waiting_long()).await);
    assert!(start.elapsed() < SLACK, "took {:?}", start.elapsed());
    assert_not_obtained(rw.try_write().await);
    permit.release().await.unwrap();
    rw.try_read().await.unwrap().release().await.unwrap();
}

/// A waiting writer whose obtain is dropped leaves no entry behind:
/// readers get in at once, beside the reader that was there.
pub async fn dropping_a_waiting_writer_unblocks_readers_at_once(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_drop_writer").await;
    let (b, spy) = spied_locker(fx, &ns).await;
    let c = fx.locker(&ns).await;
    let first = a.rw_lock("k").unwrap().read().await.unwrap();
    let rw = b.rw_lock("k").unwrap();
    let opts = waiting(fx);
    let writer = tokio::spawn(async move { rw.write_with(opts).await });
    first_attempt_answered(&spy).await;
    let theirs = c.rw_lock("k").unwrap();
    assert_not_obtained(theirs.try_read().await);
    writer.abort();
    assert!(writer.await.unwrap_err().is_cancelled());
    let (second, _) = poll_until_obtained(SLACK, "a reader after the writer left", || {
        theirs.try_read()
    })
    .await;
    assert_not_lost(&first, "the first reader").await;
    let tokens = vec![first.fencing_token(), second.fencing_token()];
    assert_eq!(holder_tokens(&a, "k").await, tokens);
    first.release().await.unwrap();
    second.release().await.unwrap();
    assert!(a.holders("k").await.unwrap().is_empty());
}

/// A writer that dies while it waits (its process gone after one contended
/// attempt) blocks new readers only until its entry lapses by itself:
/// within about a second, or its request's TTL.
pub async fn a_dead_writers_queue_entry_lapses(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_dead_writer").await;
    let b = fx.locker(&ns).await;
    let first = a.rw_lock("k").unwrap().read().await.unwrap();
    let dead = fx.backend().await;
    let mut req = raw_request(&a, "k", Share::Exclusive, fx.short_ttl());
    req.will_wait = true;
    let contended = dead.try_acquire(&req).await.unwrap();
    assert!(
        matches!(contended, Attempt::Contended { .. }),
        "{contended:?}"
    );
    let theirs = b.rw_lock("k").unwrap();
    assert_not_obtained(theirs.try_read().await);
    drop(dead);
    // Not a promptness check: a store's own lease for waiters may be a
    // little longer (etcd's shortest is 2 s), but an entry that never lapses
    // fails it.
    let lapse = (Duration::from_secs(1) + fx.short_ttl()) * 2 + SLACK;
    let (second, _) = poll_until_obtained(lapse, "a reader after the dead writer", || {
        theirs.try_read()
    })
    .await;
    assert_not_lost(&first, "the first reader").await;
    first.release().await.unwrap();
    second.release().await.unwrap();
}

/// `holders` lists every reader, oldest first, with token, time left and
/// metadata, and the readers' limit; a writer is listed alone, without one.
pub async fn holders_lists_every_reader_with_token_ttl_and_metadata(fx: &dyn Fixture) {
    leases::holders_list_every_lease(fx, "rw_holders", Share::READERS).await;
    let (locker, _) = permit_locker(fx, "rw_holders_writer").await;
    let rw = locker.rw_lock("k").unwrap();
    let opts = ObtainOptions::new().metadata("writer-1");
    let write = rw.write_with(opts).await.unwrap();
    let holders = rw.holders().await.unwrap();
    assert_eq!(holders.limit, None);
    assert_eq!(
        holder_tokens(&locker, "k").await,
        vec![write.fencing_token()]
    );
    assert_eq!(holders.holders.len(), 1);
    assert_eq!(holders.holders[0].fencing_token, write.fencing_token());
    assert_eq!(holders.holders[0].metadata.as_deref(), Some("writer-1"));
    write.release().await.unwrap();
}

/// While a reader holds the key, `try_write` fails at once after one
/// attempt and blocks no reader; a writer that gave up waiting blocks none
/// either.
pub async fn try_write_fails_fast_and_blocks_no_reader(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_try_write").await;
    let (b, c) = (fx.locker(&ns).await, fx.locker(&ns).await);
    let first = a.rw_lock("k").unwrap().read().await.unwrap();
    let rw = b.rw_lock("k").unwrap();
    let start = Instant::now();
    match rw.try_write().await {
        Err(Error::NotObtained { attempts, .. }) => assert_eq!(attempts, 1),
        other => panic!("expected NotObtained, got {other:?}"),
    }
    assert!(start.elapsed() < SLACK, "took {:?}", start.elapsed());
    let theirs = c.rw_lock("k").unwrap();
    let second = theirs.try_read().await.unwrap();
    let wait = ObtainOptions::new().wait(Duration::from_millis(200));
    assert_not_obtained(rw.write_with(wait).await);
    let (third, _) = poll_until_obtained(SLACK, "a reader after the writer gave up", || {
        theirs.try_read()
    })
    .await;
    let tokens = [&first, &second, &third].map(|r| r.fencing_token());
    assert_eq!(holder_tokens(&a, "k").await, tokens.to_vec());
    for reader in [first, second, third] {
        reader.release().await.unwrap();
    }
}

/// A one-off refresh moves a read lock's deadline, and auto-refresh keeps
/// it for several TTLs without errors, excluding writers all along.
pub async fn refresh_keeps_a_read_lock(fx: &dyn Fixture) {
    leases::refresh_keeps_a_lease(fx, "rw_refresh", Share::READERS).await;
}

/// A waiting writer gets the key well before its poll delay once the last
/// reader leaves.
pub async fn a_writer_wakes_promptly_when_the_last_reader_leaves(fx: &dyn Fixture) {
    let (a, ns) = permit_locker(fx, "rw_wakeup").await;
    let (b, c) = (fx.locker(&ns).await, fx.locker(&ns).await);
    let r1 = a.rw_lock("k").unwrap().read().await.unwrap();
    let r2 = c.rw_lock("k").unwrap().read().await.unwrap();
    let poll = Duration::from_secs(3);
    let rw = b.rw_lock("k").unwrap();
    let writer = tokio::spawn(async move {
        let opts = ObtainOptions::new()
            .wait(Duration::from_secs(10))
            .retry(RetryStrategy::linear(poll));
        let lock = rw.write_with(opts).await.unwrap();
        (Instant::now(), lock)
    });
    sleep(Duration::from_millis(200)).await; // the writer is now asleep in its poll delay
    r1.release().await.unwrap();
    assert_not_obtained(a.try_obtain("k").await); // r2 still reads
    let released = Instant::now();
    r2.release().await.unwrap();
    let (obtained, write) = timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer got the key")
        .unwrap();
    let handoff = obtained - released;
    assert!(
        handoff < Duration::from_millis(1500),
        "handoff took {handoff:?}, poll delay {poll:?}"
    );
    write.release().await.unwrap();
}

/// 3 lockers × 4 tasks × 4 rounds, one writer and three readers per
/// locker: no read overlaps a write, no writes overlap, and the tokens
/// order every write after what came before it.
pub async fn reads_and_writes_of_racing_tasks_never_overlap(fx: &dyn Fixture) {
    let (first, ns) = permit_locker(fx, "rw_racing").await;
    let lockers = [first, fx.locker(&ns).await, fx.locker(&ns).await];
    let mode = |i| {
        if i == 0 {
            Share::Exclusive
        } else {
            Share::READERS
        }
    };
    contend(&lockers, 4, 4, mode).await;
}

/// A read lock dropped without release is released in the background;
/// the reader beside it stays.
pub async fn a_dropped_read_lock_is_released_in_the_background(fx: &dyn Fixture) {
    leases::dropped_lease_is_released_in_the_background(fx, "rw_dropped", Share::READERS).await;
}

/// A reader that crashes beside a live one leaves the holders when its TTL
/// runs out, never before, and the live reader keeps reading; the writer
/// waits for both. Without TTL expiry: the crashed reader is held past its
/// TTL while its process lives, and leaves when that is gone.
pub async fn a_crashed_readers_place_returns_after_its_ttl(fx: &dyn Fixture) {
    leases::crashed_lease_returns_after_its_ttl(fx, "rw_crash", Share::READERS).await;
}
