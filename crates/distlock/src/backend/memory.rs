//! The in-process memory backend: real TTL expiry, fencing tokens and
//! release notifications, with no server. The embedded default for unit
//! tests of code that takes locks, like `object_store`'s `InMemory`.
//!
//! It runs on tokio's clock, so it works under `tokio::time::pause`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{AcquireRequest, Attempt, Backend, Renewal};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::LockKey;
use crate::lease::{LeaseRef, OwnerToken};

/// Locks kept in this process's memory. Clone the `Arc` (or the
/// [`Locker`](crate::Locker)) to share one store between lockers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> distlock::Result<()> {
/// use std::sync::Arc;
/// use distlock::{Locker, backend::memory::MemoryBackend};
///
/// let store = Arc::new(MemoryBackend::new());
/// let a = Locker::builder(store.clone()).build()?;
/// let b = Locker::builder(store).build()?;
/// let lock = a.obtain("job").await?;
/// assert!(b.is_locked("job").await?);
/// lock.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct MemoryBackend {
    slots: Mutex<HashMap<LockKey, Slot>>,
    // One counter for all keys: strictly increasing per key, and across keys.
    last_token: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    holder: Option<Holder>,
    released: Arc<Notify>,
}

#[derive(Debug)]
struct Holder {
    owner: OwnerToken,
    fencing_token: u64,
    expires_at: Instant,
    metadata: Option<Arc<str>>,
}

impl Slot {
    fn live_holder(&self, now: Instant) -> Option<&Holder> {
        self.holder.as_ref().filter(|h| h.expires_at > now)
    }

    fn owned_by(&mut self, owner: OwnerToken, now: Instant) -> Option<&mut Holder> {
        self.holder
            .as_mut()
            .filter(|h| h.expires_at > now && h.owner == owner)
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.live_holder(now).is_none() && Arc::strong_count(&self.released) == 1
    }
}

impl Holder {
    fn info(&self, now: Instant) -> HolderInfo {
        HolderInfo::new(self.fencing_token)
            .expires_in(self.expires_at - now)
            .metadata(self.metadata.as_deref().map(str::to_owned))
    }
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deletes `key` behind its holder's back, as an operator, an eviction
    /// or a failover would; waiters are woken. Returns whether a live lock
    /// was deleted. For tests of loss handling.
    pub fn evict(&self, key: &LockKey) -> bool {
        let mut slots = self.slots();
        let now = Instant::now();
        let Some(slot) = slots.get_mut(key) else {
            return false;
        };
        let was_live = slot.live_holder(now).is_some();
        slot.holder = None;
        slot.released.notify_waiters();
        Self::forget_if_idle(&mut slots, key, now);
        was_live
    }

    /// How many keys have a slot; idle slots are removed, so this stays
    /// bounded by live locks plus waited-on keys.
    pub fn slot_count(&self) -> usize {
        self.slots().len()
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<LockKey, Slot>> {
        // A panic elsewhere cannot leave a slot half-written (every update is
        // one assignment), so a poisoned map is still consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_if_idle(slots: &mut HashMap<LockKey, Slot>, key: &LockKey, now: Instant) {
        if slots.get(key).is_some_and(|s| s.is_idle(now)) {
            slots.remove(key);
        }
    }

    fn acquire_now(&self, req: &AcquireRequest) -> Attempt {
        let now = Instant::now();
        let mut slots = self.slots();
        let slot = slots.entry(req.key.clone()).or_default();
        if let Some(mine) = slot.owned_by(req.owner, now) {
            mine.expires_at = now + req.ttl;
            return Attempt::Granted {
                fencing_token: mine.fencing_token,
            };
        }
        if let Some(other) = slot.live_holder(now) {
            return Attempt::Contended {
                holder: Some(other.info(now)),
            };
        }
        let fencing_token = self.last_token.fetch_add(1, Ordering::Relaxed) + 1;
        slot.holder = Some(Holder {
            owner: req.owner,
            fencing_token,
            expires_at: now + req.ttl,
            metadata: req.metadata.clone(),
        });
        Attempt::Granted { fencing_token }
    }

    fn extend_now(&self, lease: &LeaseRef, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut slots = self.slots();
        match slots
            .get_mut(&lease.key)
            .and_then(|s| s.owned_by(lease.owner, now))
        {
            Some(mine) => {
                mine.expires_at = now + ttl;
                Ok(())
            }
            None => Err(not_held(&lease.key)),
        }
    }

    fn release_now(&self, lease: &LeaseRef) -> Result<()> {
        let now = Instant::now();
        let mut slots = self.slots();
        let slot = slots
            .get_mut(&lease.key)
            .filter(|s| {
                s.holder
                    .as_ref()
                    .is_some_and(|h| h.expires_at > now && h.owner == lease.owner)
            })
            .ok_or_else(|| not_held(&lease.key))?;
        slot.holder = None;
        slot.released.notify_waiters();
        Self::forget_if_idle(&mut slots, &lease.key, now);
        Ok(())
    }

    /// Returns when `key` may have become free, or at `until`.
    async fn wait_for_release(&self, key: &LockKey, until: Instant) -> Result<()> {
        let now = Instant::now();
        let (released, wake_at) = {
            let mut slots = self.slots();
            let slot = slots.entry(key.clone()).or_default();
            let Some(holder) = slot.live_holder(now) else {
                Self::forget_if_idle(&mut slots, key, now);
                return Ok(());
            };
            (slot.released.clone(), until.min(holder.expires_at))
        };
        {
            let notified = released.notified();
            tokio::pin!(notified);
            // Register before re-checking, so a release in between still wakes us.
            notified.as_mut().enable();
            let still_held = self
                .slots()
                .get(key)
                .is_some_and(|s| s.live_holder(Instant::now()).is_some());
            if still_held {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(wake_at) => {}
                }
            }
        }
        drop(released);
        Self::forget_if_idle(&mut self.slots(), key, Instant::now());
        Ok(())
    }
}

fn not_held(key: &LockKey) -> Error {
    Error::NotHeld {
        key: key.key.to_string(),
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(async move { Ok(self.acquire_now(req)) })
    }

    fn extend<'a>(&'a self, renewal: &'a Renewal) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.extend_now(&renewal.lease, renewal.ttl) })
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.release_now(lease) })
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        Box::pin(async move {
            let now = Instant::now();
            Ok(self
                .slots()
                .get(key)
                .and_then(|s| s.live_holder(now))
                .map(|h| h.info(now)))
        })
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.wait_for_release(&req.key, until))
    }
}
