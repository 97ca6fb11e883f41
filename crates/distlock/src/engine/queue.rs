//! This locker's own waiters, queued first-come first-served per key.
//!
//! Only the head of a key's queue talks to the store, so a task that
//! releases and re-obtains at once cannot barge ahead of a task that was
//! already waiting, and N local waiters cost the store one poller instead
//! of N. A release through this locker wakes the head directly, without a
//! round trip through the store's notification channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, MutexGuard as AsyncGuard, Notify};
use tokio::time::Instant;

use crate::key::LockKey;

#[derive(Debug, Default)]
pub(crate) struct WaitQueues {
    queues: Mutex<HashMap<LockKey, Arc<Queue>>>,
}

#[derive(Debug, Default)]
struct Queue {
    // tokio's Mutex grants the lock in FIFO order: that is the queue.
    turn: AsyncMutex<()>,
    released: Notify,
}

/// A place in one key's queue; dropping it leaves the queue.
pub(crate) struct Place<'a> {
    queues: &'a WaitQueues,
    key: LockKey,
    queue: Arc<Queue>,
}

/// The head of a key's queue: the one waiter allowed to poll the store.
pub(crate) struct Turn<'a> {
    _turn: AsyncGuard<'a, ()>,
    released: &'a Notify,
}

impl WaitQueues {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<LockKey, Arc<Queue>>> {
        // Every update is a single insert or remove: a poisoned map is consistent.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn join(&self, key: &LockKey) -> Place<'_> {
        let queue = self.map().entry(key.clone()).or_default().clone();
        Place {
            queues: self,
            key: key.clone(),
            queue,
        }
    }

    /// A lock on `key` held through this locker was released: wake the head.
    pub(crate) fn released(&self, key: &LockKey) {
        if let Some(q) = self.map().get(key) {
            // notify_one keeps a permit, so a head that is between its store
            // attempt and its wait still sees this release.
            q.released.notify_one();
        }
    }
}

impl Place<'_> {
    /// Waits for this place to reach the head of the queue, until `deadline`.
    pub(crate) async fn turn(&self, deadline: Option<Instant>) -> Option<Turn<'_>> {
        let guard = match deadline {
            Some(d) => tokio::time::timeout_at(d, self.queue.turn.lock())
                .await
                .ok()?,
            None => self.queue.turn.lock().await,
        };
        Some(Turn {
            _turn: guard,
            released: &self.queue.released,
        })
    }
}

impl Turn<'_> {
    /// Resolves when a lock on this key is released through this locker.
    pub(crate) async fn local_release(&self) {
        self.released.notified().await
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut map = self.queues.map();
        // The map's Arc and ours: nobody else waits on this key.
        if Arc::strong_count(&self.queue) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, Namespace};
    use std::time::Duration;

    fn key() -> LockKey {
        LockKey {
            namespace: Namespace::default(),
            key: Key::new("k").unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn turns_are_first_come_first_served_and_queues_are_dropped() {
        let queues = WaitQueues::default();
        let first = queues.join(&key());
        let second = queues.join(&key());
        let head = first.turn(None).await.unwrap();
        let later = Instant::now() + Duration::from_millis(10);
        assert!(second.turn(Some(later)).await.is_none(), "second must wait");
        drop(head);
        assert!(second.turn(Some(later)).await.is_some());
        drop((first, second));
        assert!(queues.map().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_before_the_wait_is_not_lost() {
        let queues = WaitQueues::default();
        let place = queues.join(&key());
        let turn = place.turn(None).await.unwrap();
        queues.released(&key());
        tokio::time::timeout(Duration::from_millis(1), turn.local_release())
            .await
            .expect("the permit wakes the head at once");
    }
}
