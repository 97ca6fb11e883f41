//! The in-process memory backend: real TTL expiry, fencing tokens and
//! release notifications, with no server. The embedded default for unit
//! tests of code that takes locks, like `object_store`'s `InMemory`.
//!
//! Serves permits (semaphores, readers) too: a writer that waits for
//! permits queues, so readers asked for after it wait behind it.
//!
//! It runs on tokio's clock, so it works under `tokio::time::pause`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{AcquireRequest, Attempt, Backend, Capabilities, Renewal};
use crate::error::{Error, Result};
use crate::holder::{HolderInfo, Holders};
use crate::key::LockKey;
use crate::lease::{LeaseRef, OwnerToken, Share};

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

/// One key: its live holders (one exclusive, or permits of one limit) and
/// the writers queued for it, first come first served.
#[derive(Debug, Default)]
struct Slot {
    holders: Vec<Holder>,
    queue: VecDeque<Waiter>,
    /// Woken when a holder comes or leaves or the queue moves.
    released: Arc<Notify>,
}

#[derive(Debug)]
struct Holder {
    owner: OwnerToken,
    share: Share,
    fencing_token: u64,
    expires_at: Instant,
    metadata: Option<Arc<str>>,
}

/// A queued exclusive request, which permits asked for after it wait
/// behind: it keeps its place while it asks again within its TTL.
#[derive(Debug)]
struct Waiter {
    owner: OwnerToken,
    expires_at: Instant,
}

impl Slot {
    /// Drops expired holders and queue entries, waking the waiters if any
    /// went: their turn may have come.
    fn prune(&mut self, now: Instant) {
        let before = (self.holders.len(), self.queue.len());
        self.holders.retain(|h| h.expires_at > now);
        self.queue.retain(|w| w.expires_at > now);
        if before != (self.holders.len(), self.queue.len()) {
            self.released.notify_waiters();
        }
    }

    /// The holder of `owner`'s lease in mode `share` (a lease is named by
    /// both, as a store that keeps each mode in its own record names it).
    fn holder_mut(&mut self, owner: OwnerToken, share: Share) -> Option<&mut Holder> {
        self.holders
            .iter_mut()
            .find(|h| h.owner == owner && h.share == share)
    }

    fn leave_queue(&mut self, owner: OwnerToken) {
        if let Some(at) = self.queue.iter().position(|w| w.owner == owner) {
            self.queue.remove(at);
            self.released.notify_waiters();
        }
    }

    /// Whether `req` may be granted now, besides its place in the queue.
    fn admits(&self, req: &AcquireRequest) -> Result<bool> {
        match (req.share, self.holders.first()) {
            (_, None) => Ok(true),
            (Share::Exclusive, Some(_)) => Ok(false),
            (Share::Permit { limit }, Some(first)) => match first.share {
                Share::Exclusive => Ok(false),
                Share::Permit { limit: held } if held != limit => {
                    Err(Error::limit_mismatch(&req.key, limit, held))
                }
                Share::Permit { .. } => Ok(self.holders.len() < limit as usize),
            },
        }
    }

    /// Whether a queue entry of another owner comes before `owner`'s (all
    /// of them do when `owner` has none).
    fn queued_ahead(&self, owner: OwnerToken) -> bool {
        self.queue.front().is_some_and(|w| w.owner != owner)
    }

    fn live(&self, now: Instant) -> impl DoubleEndedIterator<Item = &Holder> {
        self.holders.iter().filter(move |h| h.expires_at > now)
    }

    fn holders_info(&self, now: Instant) -> Holders {
        let infos = self.live(now).map(|h| h.info(now)).collect();
        match self.live(now).next().map(|h| h.share) {
            Some(Share::Permit { limit }) => Holders::permits(limit, infos),
            _ => Holders {
                holders: infos,
                ..Holders::none()
            },
        }
    }

    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty() && Arc::strong_count(&self.released) == 1
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

    /// Deletes every holder of `key` behind their backs, as an operator, an
    /// eviction or a failover would; waiters are woken. Returns whether a
    /// live lock was deleted. For tests of loss handling.
    pub fn evict(&self, key: &LockKey) -> bool {
        self.with_slot(key, |slot| {
            let was_live = !slot.holders.is_empty();
            slot.holders.clear();
            slot.released.notify_waiters();
            was_live
        })
    }

    /// How many keys have a slot; idle slots are removed, so this stays
    /// bounded by live locks plus waited-on keys.
    pub fn slot_count(&self) -> usize {
        self.slots().len()
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<LockKey, Slot>> {
        // A panic elsewhere cannot leave a slot half-written (every update is
        // one assignment, push or removal), so a poisoned map is still
        // consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on `key`'s slot, pruned of what expired, and forgets the
    /// slot afterwards if nothing is left in it.
    fn with_slot<T>(&self, key: &LockKey, f: impl FnOnce(&mut Slot) -> T) -> T {
        let now = Instant::now();
        let mut slots = self.slots();
        let slot = slots.entry(key.clone()).or_default();
        slot.prune(now);
        let out = f(slot);
        if slot.is_idle() {
            slots.remove(key);
        }
        out
    }

    fn acquire_now(&self, req: &AcquireRequest) -> Result<Attempt> {
        let now = Instant::now();
        self.with_slot(&req.key, |slot| {
            if let Some(mine) = slot.holder_mut(req.owner, req.share) {
                mine.expires_at = now + req.ttl;
                return Ok(Attempt::Granted {
                    fencing_token: mine.fencing_token,
                });
            }
            if slot.admits(req)? && !slot.queued_ahead(req.owner) {
                slot.leave_queue(req.owner);
                let fencing_token = self.last_token.fetch_add(1, Ordering::Relaxed) + 1;
                slot.holders.push(Holder {
                    owner: req.owner,
                    share: req.share,
                    fencing_token,
                    expires_at: now + req.ttl,
                    metadata: req.metadata.clone(),
                });
                // For observers of the key (waiters just look again).
                slot.released.notify_waiters();
                return Ok(Attempt::Granted { fencing_token });
            }
            // Only a writer waiting for permits queues (no writer starvation);
            // lockers that share the store keep no order otherwise.
            let held_by_permits = slot
                .holders
                .first()
                .is_some_and(|h| h.share != Share::Exclusive);
            if req.will_wait && req.share == Share::Exclusive && held_by_permits {
                let expires_at = now + req.ttl;
                match slot.queue.iter_mut().find(|w| w.owner == req.owner) {
                    Some(mine) => mine.expires_at = expires_at,
                    None => slot.queue.push_back(Waiter {
                        owner: req.owner,
                        expires_at,
                    }),
                }
            }
            // The latest grant: for permits, the one most likely to stay.
            let holder = slot.holders.last().map(|h| h.info(now));
            Ok(Attempt::Contended { holder })
        })
    }

    fn extend_now(&self, lease: &LeaseRef, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        self.with_slot(&lease.key, |slot| {
            match slot.holder_mut(lease.owner, lease.share) {
                Some(mine) => {
                    mine.expires_at = now + ttl;
                    Ok(())
                }
                None => Err(not_held(&lease.key)),
            }
        })
    }

    /// Releases `lease`'s holder, or its queue entry (answered `NotHeld`,
    /// as it held nothing).
    fn release_now(&self, lease: &LeaseRef) -> Result<()> {
        self.with_slot(&lease.key, |slot| {
            slot.leave_queue(lease.owner);
            let at = slot
                .holders
                .iter()
                .position(|h| h.owner == lease.owner && h.share == lease.share)
                .ok_or_else(|| not_held(&lease.key))?;
            slot.holders.remove(at);
            slot.released.notify_waiters();
            Ok(())
        })
    }

    /// Returns when `req`'s turn may have come (a holder left, the queue
    /// moved, or one of them expires), or at `until`.
    async fn wait_for_turn(&self, req: &AcquireRequest, until: Instant) -> Result<()> {
        let Some((released, wake_at)) = self.with_slot(&req.key, |slot| {
            let blocked = !matches!(slot.admits(req), Ok(true)) || slot.queued_ahead(req.owner);
            let next_expiry = slot
                .holders
                .iter()
                .map(|h| h.expires_at)
                .chain(slot.queue.iter().map(|w| w.expires_at))
                .min();
            blocked.then(|| {
                (
                    slot.released.clone(),
                    next_expiry.map_or(until, |e| e.min(until)),
                )
            })
        }) else {
            return Ok(());
        };
        {
            let notified = released.notified();
            tokio::pin!(notified);
            // Register before re-checking, so a release in between still wakes us.
            notified.as_mut().enable();
            let still_blocked = self
                .slots()
                .get(&req.key)
                .is_some_and(|s| !matches!(s.admits(req), Ok(true)) || s.queued_ahead(req.owner));
            if still_blocked {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(wake_at) => {}
                }
            }
        }
        drop(released);
        // Forget the slot if we were the last to look at it.
        self.with_slot(&req.key, |_| ());
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

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_queues_waiters(true)
            .with_permits(true)
            .with_notifies_observers(true)
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(async move { self.acquire_now(req) })
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
                .and_then(|s| s.live(now).next_back().map(|h| h.info(now))))
        })
    }

    fn holders<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Holders>> {
        Box::pin(async move {
            let now = Instant::now();
            Ok(self
                .slots()
                .get(key)
                .map_or_else(Holders::none, |s| s.holders_info(now)))
        })
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.wait_for_turn(req, until))
    }

    fn watch<'a>(&'a self, key: &'a LockKey, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let changed = self.with_slot(key, |slot| slot.released.clone());
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            drop(changed);
            // Forget the slot if we were the last to look at it.
            self.with_slot(key, |_| ());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, Namespace};

    const TTL: Duration = Duration::from_secs(10);

    fn request(share: Share, will_wait: bool) -> AcquireRequest {
        let key = LockKey {
            namespace: Namespace::default(),
            key: Key::new("k").unwrap(),
        };
        AcquireRequest {
            will_wait,
            ..AcquireRequest::new(key, OwnerToken::random().unwrap(), TTL).share(share)
        }
    }

    fn granted(attempt: Result<Attempt>) -> bool {
        matches!(attempt, Ok(Attempt::Granted { .. }))
    }

    #[tokio::test(start_paused = true)]
    async fn permits_share_a_key_up_to_their_limit_and_agree_on_it() {
        let store = MemoryBackend::new();
        let two = Share::Permit { limit: 2 };
        assert!(granted(store.acquire_now(&request(two, false))));
        assert!(granted(store.acquire_now(&request(two, false))));
        assert!(!granted(store.acquire_now(&request(two, false))));
        let three = store.acquire_now(&request(Share::Permit { limit: 3 }, false));
        assert!(
            matches!(three, Err(Error::LimitMismatch { .. })),
            "{three:?}"
        );
        assert!(!granted(
            store.acquire_now(&request(Share::Exclusive, false))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_writer_blocks_later_readers_until_its_entry_lapses() {
        let store = MemoryBackend::new();
        let reader = request(Share::READERS, false);
        assert!(granted(store.acquire_now(&reader)));
        let writer = request(Share::Exclusive, true);
        assert!(!granted(store.acquire_now(&writer)));
        assert!(!granted(store.acquire_now(&request(Share::READERS, false))));
        store.release_now(&reader.lease()).unwrap();
        assert!(granted(store.acquire_now(&writer)));
        store.release_now(&writer.lease()).unwrap();
        assert_eq!(store.slot_count(), 0, "nothing of the key is left");

        // A writer that stops asking loses its place after its TTL.
        assert!(granted(store.acquire_now(&reader)));
        assert!(!granted(store.acquire_now(&writer)));
        tokio::time::advance(TTL / 2).await;
        store.extend_now(&reader.lease(), TTL).unwrap();
        tokio::time::advance(TTL / 2).await;
        assert!(granted(store.acquire_now(&request(Share::READERS, false))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_queue_entry_unblocks_at_once_and_holds_nothing() {
        let store = MemoryBackend::new();
        let holder = request(Share::Exclusive, false);
        assert!(granted(store.acquire_now(&holder)));
        let waiter = request(Share::Exclusive, true);
        assert!(!granted(store.acquire_now(&waiter)));
        assert!(
            store
                .release_now(&waiter.lease())
                .unwrap_err()
                .is_not_held()
        );
        store.release_now(&holder.lease()).unwrap();
        assert!(granted(
            store.acquire_now(&request(Share::Exclusive, false))
        ));
    }
}
