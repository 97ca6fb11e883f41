//! The stores a run measures, behind one trait, so every scenario runs the
//! same code on memory, Redis and etcd.

use std::sync::Arc;

use distlock::backend::Backend;
use distlock::{DEFAULT_TTL, Key, LockKey, Locker, OwnerToken};
use distlock_testkit::{Fixture, MemoryFixture};
use futures::future::BoxFuture;

use crate::runner::{Cycle, Subject, keys};

/// One store under test.
pub trait Store: Send + Sync + 'static {
    /// `memory`, `redis`, `etcd`.
    fn name(&self) -> &'static str;

    /// A Locker with a backend of its own (its own connections, sessions),
    /// as a separate process would have; all on the same store.
    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker>;

    /// Deletes the lock on `key` behind its holder's back.
    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()>;

    /// The store's own baselines for the cycle scenarios: its raw floor and
    /// peer crates. `tasks` is the concurrency they will run at.
    fn baselines(&self, tasks: usize) -> BoxFuture<'_, Vec<Subject>>;

    /// Store-side operation counters now (commands, revisions, ...).
    fn counters(&self) -> BoxFuture<'_, Vec<(String, f64)>> {
        Box::pin(async { Vec::new() })
    }

    /// Whether the handoff targets apply to this store.
    fn handoff_targets(&self) -> bool {
        false
    }

    /// Divides iteration counts for a store whose every write is a
    /// consensus round with an fsync.
    fn slowness(&self) -> usize {
        1
    }
}

/// distlock's own subjects: obtain + release, and the backend's SPI alone
/// (the same store operations without the engine).
pub fn distlock_subjects(locker: &Locker) -> Vec<Subject> {
    let keys_ours = keys("cycle", 256);
    let keys_spi = keys("spi", 256);
    let ours: Cycle = {
        let locker = locker.clone();
        Arc::new(move |k| {
            let locker = locker.clone();
            Box::pin(async move {
                let lock = locker.obtain(keys_ours[k].as_str()).await.expect("obtain");
                lock.release().await.expect("release");
            })
        })
    };
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
        Subject::new("distlock obtain+release", ours),
        Subject::new("backend SPI only (no engine)", spi),
    ]
}

/// The in-process memory store: one `MemoryBackend` shared by every locker.
pub struct MemoryStore {
    fixture: MemoryFixture,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            fixture: MemoryFixture::default(),
        }
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker> {
        self.fixture.locker(namespace)
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        self.fixture.delete_behind_back(namespace, key)
    }

    /// The SPI-only subject is the memory store's floor; it has no peers.
    fn baselines(&self, _tasks: usize) -> BoxFuture<'_, Vec<Subject>> {
        Box::pin(async { Vec::new() })
    }
}
