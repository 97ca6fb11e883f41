//! Waiting for permits: racing, the fair queue and writer preference,
//! wake-ups, the lean lock path after permits, and the ACL.

use super::*;

/// Tasks of four lockers race for a semaphore of 3: never more than 3
/// hold it, as the sections and the store's holders both show, and the
/// limit is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_lockers_never_exceed_the_limit() {
    let server = shared();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let locker = server.locker("race").await;
        for _ in 0..4 {
            let (locker, inside, most) = (locker.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let pool = locker.semaphore("pool", 3).unwrap();
                let mut tokens = Vec::new();
                for _ in 0..3 {
                    let permit = pool
                        .acquire_with(waiting(Duration::from_secs(30)))
                        .await
                        .unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let held = pool.holders().await.unwrap();
                    assert!(held.holders.len() <= 3, "{held:?}");
                    assert_eq!(held.limit, Some(3));
                    sleep(Duration::from_millis(20)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    tokens.push(permit.fencing_token());
                    permit.release().await.unwrap();
                }
                tokens
            }));
        }
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.extend(
            timeout(Duration::from_secs(60), task)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(most.load(Ordering::SeqCst), 3, "the limit, and no more");
    let count = tokens.len();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), count, "every grant its own token");
    assert!(server.leftovers("race").await.is_empty());
}

/// A writer waiting for readers blocks the readers that come after it
/// (in other processes too); it gets the key when the readers leave, with
/// a token above theirs, and the later reader gets it after the writer,
/// with a token above the writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_blocks_later_readers() {
    let server = shared();
    let (a, b, c) = (
        server.locker("writer").await,
        server.locker("writer").await,
        server.locker("writer").await,
    );
    let reader = a.rw_lock("k").unwrap().read().await.unwrap();
    let rw = b.rw_lock("k").unwrap();
    let writer = tokio::spawn(async move { rw.write_with(waiting(Duration::from_secs(30))).await });
    server
        .until("the writer queued", async |s| {
            queued(s, "writer", "k").await == 1
        })
        .await;
    let late = c.rw_lock("k").unwrap();
    assert!(late.try_read().await.unwrap_err().is_not_obtained());
    let late_reader =
        tokio::spawn(async move { late.read_with(waiting(Duration::from_secs(30))).await });
    server
        .until("the late reader queued", async |s| {
            queued(s, "writer", "k").await == 2
        })
        .await;
    let read_token = reader.fencing_token();
    reader.release().await.unwrap();
    let write = timeout(Duration::from_secs(10), writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(write.fencing_token() > read_token);
    assert_eq!(
        a.holders("k").await.unwrap().limit,
        None,
        "held by the writer"
    );
    assert!(
        !late_reader.is_finished(),
        "a reader got in beside the writer"
    );
    let write_token = write.fencing_token();
    write.release().await.unwrap();
    let read = timeout(Duration::from_secs(10), late_reader)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(read.fencing_token() > write_token);
    read.release().await.unwrap();
    assert!(server.leftovers("writer").await.is_empty());
}

/// A writer that queued and died delays later readers by one waiter
/// lease, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_lapses_after_its_waiter_lease() {
    let server = shared();
    let lease = Duration::from_millis(400);
    let backend = Arc::new(server.backend().waiter_lease(lease).build().await.unwrap());
    let readers = server.locker("dead").await;
    let reader = readers.rw_lock("k").unwrap().read().await.unwrap();
    let mut dead = request("dead", "k", Share::Exclusive, Duration::from_secs(30));
    dead.will_wait = true;
    assert!(matches!(
        backend.try_acquire(&dead).await.unwrap(),
        Attempt::Contended { holder: Some(_) }
    ));
    let queued_at = Instant::now();
    let rw = readers.rw_lock("k").unwrap();
    assert!(rw.try_read().await.unwrap_err().is_not_obtained());
    let second = rw
        .read_with(waiting(Duration::from_secs(10)))
        .await
        .unwrap();
    let waited = queued_at.elapsed();
    assert!(
        waited >= lease.mul_f32(0.9) && waited < lease + SLACK,
        "a reader got in {waited:?} after a dead writer with a {lease:?} lease queued"
    );
    assert_eq!(rw.holders().await.unwrap().holders.len(), 2);
    second.release().await.unwrap();
    reader.release().await.unwrap();
    assert!(server.leftovers("dead").await.is_empty());
}

/// A waiter for a full semaphore is woken by another process's release
/// of a permit well before its (long) retry delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_release_wakes_the_waiter() {
    let server = Server::start();
    let (a, b) = (server.locker("wake").await, server.locker("wake").await);
    let held = a.semaphore("k", 1).unwrap().acquire().await.unwrap();
    let turns = server.calls("zcount").await;
    let waiter = tokio::spawn(async move {
        let opts =
            waiting(Duration::from_secs(30)).retry(RetryStrategy::linear(Duration::from_secs(10)));
        let permit = b
            .semaphore("k", 1)
            .unwrap()
            .acquire_with(opts)
            .await
            .unwrap();
        let at = Instant::now();
        permit.release().await.unwrap();
        at
    });
    // Only a permit waiter's turn check counts permits (ZCOUNT): once it
    // ran, the waiter is subscribed and asleep.
    server
        .until("the waiter checked its turn", async |s| {
            s.calls("zcount").await > turns
        })
        .await;
    let released = Instant::now();
    held.release().await.unwrap();
    let obtained = timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(
        obtained - released < SLACK,
        "woken after {:?}",
        obtained - released
    );
}

/// Once permits, a queued writer and a waiter that gave up have all left,
/// nothing of the key is left, and the plain lock cycle is back to its
/// ten commands (eight, and the grant's and the release's publish for
/// observers): the permits cost it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_permits_the_key_is_clean_and_the_lock_path_lean() {
    let server = Server::start();
    let (a, b) = (server.locker("lean").await, server.locker("lean").await);
    let pool = a.semaphore("k", 2).unwrap();
    let (one, two) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    let gave_up = b
        .semaphore("k", 2)
        .unwrap()
        .acquire_with(waiting(Duration::from_millis(200)))
        .await;
    assert!(gave_up.unwrap_err().is_not_obtained());
    server
        .until("the waiter that gave up left", async |s| {
            queued(s, "lean", "k").await == 0
        })
        .await;
    let writer =
        tokio::spawn(async move { b.obtain_with("k", waiting(Duration::from_secs(30))).await });
    one.release().await.unwrap();
    let write = hand_over(&server, ("lean", "k"), two, writer).await;
    write.release().await.unwrap();
    assert!(server.leftovers("lean").await.is_empty());

    let _: () = server.query(::redis::cmd("CONFIG").arg("RESETSTAT")).await;
    let cycles = 10;
    for _ in 0..cycles {
        a.obtain("k").await.unwrap().release().await.unwrap();
    }
    for (command, per_cycle) in [
        ("evalsha", 2),
        ("mget", 2),
        ("time", 1),
        ("set", 2),
        ("del", 1),
        ("publish", 2),
    ] {
        assert_eq!(server.calls(command).await, per_cycle * cycles, "{command}");
    }
    for command in ["zrange", "zcard", "zscore", "hget", "get", "pexpireat"] {
        assert_eq!(server.calls(command).await, 0, "{command}");
    }
}

/// A user limited to what `required_acl` lists can use permits: acquire,
/// wait, refresh, list, inspect, release, for semaphores and readers and
/// a writer queued behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_covers_permits() {
    let server = shared();
    let mut cmd = ::redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("permits")
        .arg("reset")
        .arg("on")
        .arg(">secret");
    for rule in RedisBackend::required_acl(&Namespace::new("acl").unwrap()).split_whitespace() {
        cmd.arg(rule);
    }
    let _: () = server.query(&mut cmd).await;
    let url = server.url.replace("redis://", "redis://permits:secret@") + "?namespace=acl";
    let (a, b) = (
        Locker::from_url(&url).await.unwrap(),
        Locker::from_url(&url).await.unwrap(),
    );
    let pool = a.semaphore("pool", 1).unwrap();
    let held = pool.acquire().await.unwrap();
    held.refresh().await.unwrap();
    assert_eq!(b.holders("pool").await.unwrap().holders.len(), 1);
    assert!(b.inspect("pool").await.unwrap().is_some());
    let other = b.semaphore("pool", 1).unwrap();
    let waiter =
        tokio::spawn(async move { other.acquire_with(waiting(Duration::from_secs(10))).await });
    let permit = hand_over(server, ("acl", "pool"), held, waiter).await;
    permit.release().await.unwrap();

    let reader = a.rw_lock("rw").unwrap().read().await.unwrap();
    let rw = b.rw_lock("rw").unwrap();
    let writer = tokio::spawn(async move { rw.write_with(waiting(Duration::from_secs(10))).await });
    let write = hand_over(server, ("acl", "rw"), reader, writer).await;
    write.release().await.unwrap();
    assert!(server.leftovers("acl").await.is_empty());
}
