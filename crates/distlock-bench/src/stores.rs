//! The stores a run measures, behind one trait, so every scenario runs the
//! same code on memory, file, Redis and etcd.

use std::sync::Arc;

use distlock::backend::Backend;
use distlock::{DEFAULT_TTL, Key, Lock, LockKey, Locker, OwnerToken};
use distlock_testkit::{FileFixture, Fixture, MemoryFixture};
use futures::future::BoxFuture;

use crate::runner::{Cycle, ROTATE, Subject, keys};

/// One store under test.
pub trait Store: Send + Sync + 'static {
    /// `memory`, `file`, `redis`, `etcd`.
    fn name(&self) -> &'static str;

    /// A Locker with a backend of its own (its own connections, sessions),
    /// as a separate process would have; all on the same store.
    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker>;

    /// Deletes the lock on `key` behind its holder's back.
    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()>;

    /// The store's own baselines for the cycle scenarios: its raw floor and
    /// peer crates (none by default). `tasks` is the concurrency they will
    /// run at.
    fn baselines(&self, _tasks: usize) -> BoxFuture<'_, Vec<Subject>> {
        Box::pin(async { Vec::new() })
    }

    /// What the cycle scenarios (uncontended, throughput) run at `tasks`
    /// concurrency, in `namespace`. By default distlock on a
    /// [`locker`](Self::locker), its SPI alone and the
    /// [`baselines`](Self::baselines), each compared with distlock.
    fn cycles<'a>(&'a self, namespace: &'a str, tasks: usize) -> BoxFuture<'a, Cycles> {
        Box::pin(async move {
            let locker = self.locker(namespace).await;
            let mut subjects = distlock_subjects(&locker);
            subjects.extend(self.baselines(tasks).await);
            Cycles {
                pairs: (1..subjects.len()).map(|s| (0, s)).collect(),
                subjects,
                lockers: vec![locker],
                notes: Vec::new(),
            }
        })
    }

    /// A fresh replicated topology of this store's kind whose master the
    /// failover scenario kills; `None` (the default) for a store without
    /// failover.
    fn replicated(&self) -> BoxFuture<'_, Option<Box<dyn Replicated>>> {
        Box::pin(async { None })
    }

    /// Store-side operation counters now (commands, revisions, ...).
    fn counters(&self) -> BoxFuture<'_, Vec<(String, f64)>> {
        Box::pin(async { Vec::new() })
    }

    /// Whether the handoff targets apply to this store.
    fn handoff_targets(&self) -> bool {
        false
    }

    /// Divides iteration counts for a store whose every write is a
    /// consensus round with an fsync, or whose permits wait on the disk.
    fn slowness(&self) -> usize {
        1
    }
}

/// The subjects of a cycle scenario and the ratios it reports.
pub struct Cycles {
    /// What is measured, distlock first.
    pub subjects: Vec<Subject>,
    /// `(a, b)`: subject `a`'s cost over subject `b`'s, block by block.
    pub pairs: Vec<(usize, usize)>,
    /// The Lockers the subjects run on, closed after the scenario.
    pub lockers: Vec<Locker>,
    /// What the report should say about the subjects.
    pub notes: Vec<String>,
}

impl Cycles {
    /// Closes the subjects' Lockers.
    pub async fn close(self) {
        for locker in self.lockers {
            locker.close().await.expect("close");
        }
    }
}

/// A replicated store whose master can be killed: see
/// [`Store::replicated`].
pub trait Replicated: Send + Sync {
    /// The topology's URL with the query `query` (`replicas=1&namespace=...`).
    fn url(&self, query: &str) -> String;

    /// Whether the master [`kill_master`](Self::kill_master) kills serves
    /// the Redis key `name`.
    fn serves(&self, name: &str) -> bool;

    /// Kills (SIGKILL) the master that serves the keys
    /// [`serves`](Self::serves) accepts, and returns once it is dead.
    fn kill_master(&self);

    /// Waits until the topology has settled on another master for those
    /// keys; panics if it does not.
    fn wait_failed_over(&self) -> BoxFuture<'_, ()>;

    /// The settings that time the failover, for the report.
    fn timing(&self) -> BoxFuture<'_, String>;
}

/// A cycle through the public API: `acquire` (a lock, a permit, a read
/// lock) on one of `keys`, then release. In a concurrent run `per_key`
/// tasks share a key (the uncontended cycle's rotating keys have one
/// holder at a time anyway). Generic, not boxed, so every kind of cycle
/// costs the same one allocation for its future.
pub fn api_cycle<F, Fut>(
    locker: &Locker,
    keys: &'static [String],
    per_key: usize,
    acquire: F,
) -> Cycle
where
    F: Fn(Locker, &'static str) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = distlock::Result<Lock>> + Send + 'static,
{
    let locker = locker.clone();
    Arc::new(move |k| {
        let k = if k < ROTATE {
            k
        } else {
            ROTATE + (k - ROTATE) / per_key
        };
        let acquired = acquire(locker.clone(), keys[k].as_str());
        Box::pin(async move {
            let lock = acquired.await.expect("acquire");
            lock.release().await.expect("release");
        })
    })
}

/// The plain lock cycle: obtain + release.
pub fn obtain_cycle(locker: &Locker, keys: &'static [String]) -> Cycle {
    api_cycle(locker, keys, 1, |locker, key| async move {
        locker.obtain(key).await
    })
}

/// distlock's own subjects: obtain + release, and the backend's SPI alone
/// (the same store operations without the engine).
pub fn distlock_subjects(locker: &Locker) -> Vec<Subject> {
    let ours = obtain_cycle(locker, keys("cycle", 256));
    let keys_spi = keys("spi", 256);
    let backend: Arc<dyn Backend> = locker.backend();
    let namespace = locker.namespace().clone();
    let lock_keys: Arc<Vec<LockKey>> = Arc::new(
        keys_spi
            .iter()
            .map(|k| LockKey {
                namespace: namespace.clone(),
                key: Key::new(k.as_str()).expect("valid key"),
            })
            .collect(),
    );
    let spi: Cycle = Arc::new(move |k| {
        let (backend, lock_keys) = (backend.clone(), lock_keys.clone());
        Box::pin(async move {
            let req = distlock::backend::AcquireRequest::new(
                lock_keys[k].clone(),
                OwnerToken::random().expect("token"),
                DEFAULT_TTL,
            );
            let granted = backend.try_acquire(&req).await.expect("acquire");
            assert!(matches!(
                granted,
                distlock::backend::Attempt::Granted { .. }
            ));
            backend.release(&req.lease()).await.expect("release");
        })
    });
    vec![
        Subject::new("distlock obtain+release", ours).short("distlock"),
        Subject::new("backend SPI only (no engine)", spi),
    ]
}

/// A store without a server: the in-process memory store (one
/// `MemoryBackend` shared by every locker), or the file store (a fresh lock
/// directory under the system's temp dir, each locker with its own
/// `FileBackend` on it, contending through the OS as processes do). Its
/// floor is the SPI-only subject; there is no peer crate.
pub struct FixtureStore<F> {
    name: &'static str,
    fixture: F,
    slowness: usize,
}

impl FixtureStore<MemoryFixture> {
    pub fn memory() -> Self {
        FixtureStore {
            name: "memory",
            fixture: MemoryFixture::default(),
            slowness: 1,
        }
    }
}

impl FixtureStore<FileFixture> {
    pub fn file() -> Self {
        FixtureStore {
            name: "file",
            fixture: futures::executor::block_on(FileFixture::new()),
            // A permit's release waits on the disk: ext4 writes back a file
            // truncated to zero and rewritten (the slot's record) when it is
            // closed, 1-100 ms on a busy disk, against 0.2 ms for a lock.
            slowness: 5,
        }
    }
}

impl<F: Fixture> Store for FixtureStore<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker> {
        self.fixture.locker(namespace)
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        self.fixture.delete_behind_back(namespace, key)
    }

    fn slowness(&self) -> usize {
        self.slowness
    }
}
