//! Permits on real directories, several backends standing for processes.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::{Locker, ObtainOptions};

fn permit(k: &str, limit: u32) -> AcquireRequest {
    request(k).share(Share::Permit { limit })
}

fn waiting_writer(k: &str) -> AcquireRequest {
    AcquireRequest {
        will_wait: true,
        ..request(k)
    }
}

async fn contended(backend: &FileBackend, req: &AcquireRequest) -> Option<HolderInfo> {
    match backend.try_acquire(req).await.unwrap() {
        Attempt::Contended { holder } => holder,
        other => panic!("expected Contended, got {other:?}"),
    }
}

/// The names left in the namespace's directory, and which of them someone
/// has `flock`ed.
fn files(dir: &Path) -> (Vec<String>, Vec<String>) {
    let ns = dir.join(namespace_dir(&Namespace::default()));
    let mut names: Vec<String> = std::fs::read_dir(ns)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let held = names
        .iter()
        .filter(|n| {
            let file = File::open(dir.join(namespace_dir(&Namespace::default())).join(n)).unwrap();
            matches!(file.try_lock(), Err(TryLockError::WouldBlock))
        })
        .cloned()
        .collect();
    (names, held)
}

#[tokio::test]
async fn permits_are_counted_and_a_lock_excludes_them_both_ways() {
    let dir = temp_dir("permit-basics");
    let (a, b) = (
        FileBackend::open(&dir).unwrap(),
        FileBackend::open(&dir).unwrap(),
    );
    let (p1, p2) = (permit("k", 2), permit("k", 2));
    let t1 = grant(&a, &p1).await;
    let t2 = grant(&b, &p2).await;
    assert!(t2 > t1);
    assert_eq!(grant(&a, &p1).await, t1, "asked again: the same grant");
    assert_eq!(contended(&b, &permit("k", 2)).await, None, "2 of 2 taken");
    assert!(matches!(
        b.try_acquire(&request("k")).await.unwrap(),
        Attempt::Contended { .. }
    ));
    a.release(&p1.lease()).await.unwrap();
    assert!(a.release(&p1.lease()).await.unwrap_err().is_not_held());
    let p3 = permit("k", 2);
    let t3 = grant(&a, &p3).await;
    assert!(t3 > t2);
    b.release(&p2.lease()).await.unwrap();
    a.release(&p3.lease()).await.unwrap();

    let lock = request("k");
    let t4 = grant(&b, &lock).await;
    assert!(t4 > t3, "a lock's token exceeds every earlier permit's");
    let holder = contended(&a, &permit("k", 2))
        .await
        .expect("the lock's holder");
    assert_eq!(
        holder.fencing_token, t4,
        "a lock holder is no limit mismatch"
    );
    b.release(&lock.lease()).await.unwrap();
    assert!(grant(&a, &permit("k", 2)).await > t4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn another_limit_is_refused_only_while_permits_of_the_first_are_live() {
    let dir = temp_dir("permit-mismatch");
    let a = FileBackend::open(&dir).unwrap();
    let b = FileBackend::open(&dir).unwrap();
    let held = permit("k", 2);
    grant(&a, &held).await;
    for asked in [Share::Permit { limit: 3 }, Share::READERS] {
        let err = b.try_acquire(&request("k").share(asked)).await.unwrap_err();
        assert!(matches!(err, Error::LimitMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("semaphore of 2"), "{err}");
    }
    // A crashed holder's slot and recorded limit do not count.
    drop(a);
    let reader = request("k").share(Share::READERS);
    grant(&b, &reader).await;
    let err = FileBackend::open(&dir)
        .unwrap()
        .try_acquire(&permit("k", 2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("readers"), "{err}");
    b.release(&reader.lease()).await.unwrap();
    grant(&b, &permit("k", 5)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_dropped_backends_permits_come_back_at_once() {
    let dir = temp_dir("permit-crash");
    let a = FileBackend::open(&dir).unwrap();
    let (p1, p2) = (permit("k", 2), permit("k", 2));
    grant(&a, &p1).await;
    grant(&a, &p2).await;
    let b = FileBackend::open(&dir).unwrap();
    assert_eq!(b.holders(&p1.key).await.unwrap().holders.len(), 2);
    drop(a);
    assert_eq!(b.holders(&p1.key).await.unwrap(), Holders::none());
    let (q1, q2) = (permit("k", 2), permit("k", 2));
    grant(&b, &q1).await;
    grant(&b, &q2).await;
    assert_eq!(contended(&b, &permit("k", 2)).await, None);
    b.release(&q1.lease()).await.unwrap();
    b.release(&q2.lease()).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn holders_lists_every_live_permit_oldest_first_and_releases_leave_only_lock_files() {
    let dir = temp_dir("permit-holders");
    let (a, b) = (
        FileBackend::open(&dir).unwrap(),
        FileBackend::open(&dir).unwrap(),
    );
    let mut reqs = Vec::new();
    for (i, backend) in [&a, &b, &a].into_iter().enumerate() {
        let req = AcquireRequest {
            metadata: Some(Arc::from(format!("holder {i}"))),
            ..permit("k", 3)
        };
        grant(backend, &req).await;
        reqs.push((backend, req));
    }
    let observer = FileBackend::open(&dir).unwrap();
    let held = observer.holders(&reqs[0].1.key).await.unwrap();
    assert_eq!(held.limit, Some(3));
    let metadata: Vec<_> = held
        .holders
        .iter()
        .map(|h| h.metadata.clone().unwrap())
        .collect();
    assert_eq!(metadata, ["holder 0", "holder 1", "holder 2"]);
    assert!(
        held.holders
            .windows(2)
            .all(|w| w[0].fencing_token < w[1].fencing_token)
    );
    assert!(
        held.holders
            .iter()
            .all(|h| h.pid == Some(std::process::id())
                && h.host.as_deref() == Some(observer.host.as_str())
                && h.since.is_some()
                && h.expires_in.is_none())
    );
    let newest = observer.inspect(&reqs[0].1.key).await.unwrap().unwrap();
    assert_eq!(newest, held.holders[2]);

    let (backend, middle) = reqs.remove(1);
    backend.release(&middle.lease()).await.unwrap();
    let left = observer.holders(&middle.key).await.unwrap();
    assert_eq!(
        left.holders,
        [held.holders[0].clone(), held.holders[2].clone()]
    );
    for (backend, req) in reqs {
        backend.release(&req.lease()).await.unwrap();
    }
    assert_eq!(
        observer.holders(&middle.key).await.unwrap(),
        Holders::none()
    );
    assert_eq!(observer.inspect(&middle.key).await.unwrap(), None);
    let (names, held) = files(&dir);
    assert_eq!(names, ["k-k.guard.lock", "k-k.lock"]);
    assert!(held.is_empty(), "{held:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A writer that will wait blocks the permits asked for after it, until
/// it is granted or gives up, or its process exits.
#[tokio::test]
async fn a_waiting_writer_holds_back_later_permits() {
    let dir = temp_dir("permit-writer");
    let (a, b, c) = (
        FileBackend::open(&dir).unwrap(),
        FileBackend::open(&dir).unwrap(),
        FileBackend::open(&dir).unwrap(),
    );
    let reader = request("k").share(Share::READERS);
    let t1 = grant(&a, &reader).await;
    grant(&c, &request("k").share(Share::READERS)).await;
    // A single attempt takes no place: readers still come in.
    assert_eq!(contended(&b, &request("k")).await, None);
    let extra = request("k").share(Share::READERS);
    grant(&c, &extra).await;
    c.release(&extra.lease()).await.unwrap();

    let writer = waiting_writer("k");
    assert_eq!(contended(&b, &writer).await, None);
    assert_eq!(
        contended(&c, &request("k").share(Share::READERS)).await,
        None
    );
    let err = a.try_acquire(&permit("k", 4)).await.unwrap_err();
    assert!(matches!(err, Error::LimitMismatch { .. }), "{err:?}");
    assert_eq!(grant(&a, &reader).await, t1, "a held permit is re-granted");
    // Giving up (the engine's release of the waiter) lets readers in.
    assert!(b.release(&writer.lease()).await.unwrap_err().is_not_held());
    let r2 = request("k").share(Share::READERS);
    grant(&c, &r2).await;

    // Granted: the place is given up too; the lock then excludes readers.
    let writer = waiting_writer("k");
    contended(&b, &writer).await;
    a.release(&reader.lease()).await.unwrap();
    drop(c); // both of c's readers end with its "process"
    let t = grant(&b, &writer).await;
    b.release(&writer.lease()).await.unwrap();
    let after = request("k").share(Share::READERS);
    assert!(grant(&a, &after).await > t);
    a.release(&after.lease()).await.unwrap();

    // A writer waiting behind another lock holds back readers too.
    let first = request("k");
    grant(&a, &first).await;
    let writer = waiting_writer("k");
    assert!(contended(&b, &writer).await.is_some(), "the lock's holder");
    a.release(&first.lease()).await.unwrap();
    assert_eq!(
        contended(&a, &request("k").share(Share::READERS)).await,
        None
    );
    grant(&b, &writer).await;
    b.release(&writer.lease()).await.unwrap();

    // A waiting writer's process exits: its place goes with it.
    grant(&a, &request("k").share(Share::READERS)).await;
    let writer = waiting_writer("k");
    contended(&b, &writer).await;
    assert_eq!(
        contended(&a, &request("k").share(Share::READERS)).await,
        None
    );
    drop(b);
    grant(&a, &request("k").share(Share::READERS)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Tasks of four backends race for 3 permits: all that ask at once in a
/// single attempt get exactly the 3 (none is turned away while one is
/// free), and waiting ones never hold more than 3 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_tasks_of_several_backends_never_exceed_the_limit() {
    let dir = temp_dir("permit-race");
    let lockers: Vec<Locker> = (0..4)
        .map(|_| {
            Locker::builder(Arc::new(FileBackend::open(&dir).unwrap()))
                .build()
                .unwrap()
        })
        .collect();
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let tries: Vec<_> = (0..16)
        .map(|i| {
            let (pool, start) = (lockers[i % 4].semaphore("pool", 3).unwrap(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                pool.try_acquire().await
            })
        })
        .collect();
    let mut granted = Vec::new();
    for t in tries {
        match t.await.unwrap() {
            Ok(lock) => granted.push(lock),
            Err(e) => assert!(e.is_not_obtained(), "{e:?}"),
        }
    }
    assert_eq!(granted.len(), 3);
    for lock in granted {
        lock.release().await.unwrap();
    }

    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let pool = lockers[i % 4].semaphore("pool", 3).unwrap();
            let (inside, most) = (inside.clone(), most.clone());
            tokio::spawn(async move {
                let mut tokens = Vec::new();
                for _ in 0..3 {
                    let lock = pool
                        .acquire_with(ObtainOptions::new().wait_forever())
                        .await
                        .unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    tokens.push(lock.fencing_token());
                    lock.release().await.unwrap();
                }
                tokens
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.extend(t.await.unwrap());
    }
    assert!(most.load(Ordering::SeqCst) <= 3, "{most:?} at once");
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 48, "every grant has its own token");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_permit_whose_slot_is_deleted_is_lost_alone() {
    let dir = temp_dir("permit-lost");
    let backend = FileBackend::open(&dir).unwrap();
    let (p1, p2) = (permit("k", 2), permit("k", 2));
    grant(&backend, &p1).await;
    grant(&backend, &p2).await;
    let paths = backend.paths(&p1.key);
    std::fs::remove_file(paths.slot(0)).unwrap();
    let extend = |req: &AcquireRequest| Renewal::new(req.lease(), Duration::from_secs(1));
    assert!(
        backend
            .extend(&extend(&p1))
            .await
            .unwrap_err()
            .is_not_held()
    );
    backend.extend(&extend(&p2)).await.unwrap();
    assert!(
        backend
            .release(&p1.lease())
            .await
            .unwrap_err()
            .is_not_held()
    );
    let p3 = permit("k", 2);
    grant(&backend, &p3).await;
    assert!(
        paths.slot(0).exists(),
        "the lowest free slot is taken again"
    );
    backend.release(&p2.lease()).await.unwrap();
    backend.release(&p3.lease()).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A symbolic link where a permit's file belongs is refused, never
/// followed (it could point anywhere, say at another key's lock).
#[tokio::test]
async fn a_link_where_a_permit_file_belongs_is_refused() {
    let dir = temp_dir("permit-link");
    let backend = FileBackend::open(&dir).unwrap();
    let req = permit("k", 2);
    let paths = backend.paths(&req.key);
    let target = dir.join("elsewhere");
    std::fs::write(&target, "").unwrap();
    std::fs::create_dir_all(&paths.dir).unwrap();
    for planted in [paths.guard(), paths.slot(0)] {
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let err = backend.try_acquire(&req).await.unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err:?}");
        assert!(
            err.to_string().contains("symbolic link")
                && err.to_string().contains(&planted.display().to_string()),
            "{err}"
        );
        std::fs::remove_file(&planted).unwrap();
    }
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"",
        "the link's target is untouched"
    );
    grant(&backend, &req).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
