//! Fixtures: a store for the conformance suite to run against.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distlock::backend::Backend;
use distlock::backend::file::FileBackend;
use distlock::backend::memory::MemoryBackend;
use distlock::{Key, LockKey, Locker, Namespace};
use futures::future::BoxFuture;

/// A store the conformance suite can run against.
pub trait Fixture: Send + Sync + 'static {
    /// A new backend on this fixture's store, with its own connections as
    /// a separate process would have (the memory fixture's all serve one
    /// in-process store).
    fn backend(&self) -> BoxFuture<'_, Arc<dyn Backend>>;

    /// A new locker in `namespace` on a new backend, which it owns.
    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker> {
        Box::pin(async move {
            Locker::builder(self.backend().await)
                .namespace(namespace)
                .owns_backend()
                .build()
                .expect("valid test namespace")
        })
    }

    /// Deletes the lock on `key` in `namespace` behind its holder's back, as
    /// an operator, an eviction or a failover would.
    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()>;

    /// A TTL short enough for quick tests that the store honours precisely.
    fn short_ttl(&self) -> Duration {
        Duration::from_millis(300)
    }
}

/// A store that other processes reach too, by URL: the CLI's tests run
/// `distlock` processes against it and then check what they left behind.
pub trait ReachableFixture: Fixture {
    /// The URL, `?namespace=` included, that `Locker::from_url` and
    /// `distlock --backend` take to reach this store in `namespace`.
    fn url(&self, namespace: &str) -> String;

    /// What the store still holds for `namespace` apart from the fencing
    /// state it keeps on purpose: locks, holder records, queue entries,
    /// waiter leases. Empty once every client has left cleanly.
    fn leftovers<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Vec<String>>;
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
    fn backend(&self) -> BoxFuture<'_, Arc<dyn Backend>> {
        Box::pin(async move { self.store.clone() as Arc<dyn Backend> })
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

/// A fresh directory for the file backend, removed when the fixture drops.
/// Every locker gets its own [`FileBackend`] on that directory, so lockers
/// contend through the OS like separate processes do.
#[derive(Debug)]
pub struct FileFixture {
    dir: PathBuf,
}

impl FileFixture {
    /// A fresh, empty lock directory under the system's temp dir.
    pub async fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "distlock-file-fixture-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the lock directory");
        FileFixture { dir }
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_backend(&self) -> FileBackend {
        FileBackend::open(&self.dir).expect("open the lock directory")
    }
}

impl Drop for FileFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture for FileFixture {
    fn backend(&self) -> BoxFuture<'_, Arc<dyn Backend>> {
        Box::pin(async move { Arc::new(self.file_backend()) as Arc<dyn Backend> })
    }

    /// Deletes the key's lock file (and holder record), as an operator
    /// cleaning the directory would; the holder's next refresh notices.
    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = LockKey {
                namespace: Namespace::new(namespace).expect("valid namespace"),
                key: Key::new(key).expect("valid key"),
            };
            let backend = self.file_backend();
            std::fs::remove_file(backend.lock_path(&key))
                .unwrap_or_else(|e| panic!("no lock file for {key} to delete: {e}"));
            let _ = std::fs::remove_file(backend.holder_path(&key));
        })
    }
}

impl ReachableFixture for FileFixture {
    fn url(&self, namespace: &str) -> String {
        format!("file://{}?namespace={namespace}", self.dir.display())
    }

    /// Holder records, and lock files someone still has `flock`ed (the
    /// `.lock` files themselves stay by design: they carry the counter).
    fn leftovers<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let dir = self.dir.join(format!("ns-{namespace}"));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Vec::new();
            };
            let mut left: Vec<String> = entries
                .filter_map(|entry| {
                    let path = entry.ok()?.path();
                    let name = path.file_name()?.to_string_lossy().into_owned();
                    let held = name.ends_with(".lock")
                        && std::fs::File::open(&path).is_ok_and(|f| {
                            matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
                        });
                    (held || !name.ends_with(".lock")).then_some(name)
                })
                .collect();
            left.sort();
            left
        })
    }
}
