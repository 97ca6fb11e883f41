//! Fixtures: a store for the conformance suite to run against.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock::backend::memory::MemoryBackend;
use distlock::{Key, LockKey, Locker, Namespace};
use futures::future::BoxFuture;

/// A store the conformance suite can run against.
pub trait Fixture: Send + Sync + 'static {
    /// A new locker on this fixture's store, in `namespace`.
    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker>;

    /// Deletes the lock on `key` in `namespace` behind its holder's back, as
    /// an operator, an eviction or a failover would.
    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()>;

    /// A TTL short enough for quick tests that the store honours precisely.
    fn short_ttl(&self) -> Duration {
        Duration::from_millis(300)
    }
}

/// A namespace no other test in this process uses, so tests can share a
/// server.
pub fn unique_namespace(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let short: String = case
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(40)
        .collect();
    format!(
        "t{}-{}-{short}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The in-process memory store.
#[derive(Debug, Default)]
pub struct MemoryFixture {
    store: Arc<MemoryBackend>,
}

impl MemoryFixture {
    /// A fresh, empty store.
    pub async fn new() -> Self {
        Self::default()
    }
}

impl Fixture for MemoryFixture {
    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker> {
        Box::pin(async move {
            Locker::builder(self.store.clone())
                .namespace(namespace)
                .build()
                .expect("valid test namespace")
        })
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = LockKey {
                namespace: Namespace::new(namespace).expect("valid namespace"),
                key: Key::new(key).expect("valid key"),
            };
            assert!(self.store.evict(&key), "no live lock on {key} to delete");
        })
    }
}
