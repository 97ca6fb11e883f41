//! A backend decorator for the scale and loss scenarios: counts the SPI
//! calls the engine makes, and can stall a key's extends (a network
//! partition between the holder and the store, for that key only).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::backend::{AcquireRequest, Attempt, Backend, Capabilities};
use distlock::{HolderInfo, LeaseRef, LockKey, Result};
use futures::future::BoxFuture;
use tokio::time::Instant;

pub struct Wrapped {
    inner: Arc<dyn Backend>,
    pub acquires: AtomicU64,
    pub extends: AtomicU64,
    pub releases: AtomicU64,
    stalled: Mutex<HashSet<LockKey>>,
}

impl Wrapped {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Wrapped {
            inner,
            acquires: AtomicU64::new(0),
            extends: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            stalled: Mutex::new(HashSet::new()),
        }
    }

    /// From now on, extends of `key` never reach the store and never answer.
    pub fn stall(&self, key: &LockKey) {
        self.stalled.lock().unwrap().insert(key.clone());
    }

    fn is_stalled(&self, key: &LockKey) -> bool {
        self.stalled.lock().unwrap().contains(key)
    }
}

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wrapped")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Backend for Wrapped {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        self.acquires.fetch_add(1, Relaxed);
        self.inner.try_acquire(req)
    }

    fn extend<'a>(&'a self, lease: &'a LeaseRef, ttl: Duration) -> BoxFuture<'a, Result<()>> {
        self.extends.fetch_add(1, Relaxed);
        if self.is_stalled(&lease.key) {
            return Box::pin(futures::future::pending());
        }
        self.inner.extend(lease, ttl)
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        self.releases.fetch_add(1, Relaxed);
        self.inner.release(lease)
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        self.inner.inspect(key)
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        self.inner.wait(req, until)
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.close()
    }
}
