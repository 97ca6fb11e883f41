//! The backend's entries in etcd as it knows them, and the bookkeeping of
//! their deletion (by a release or the reaper).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::session::Session;
use crate::key::LockKey;
use crate::lease::OwnerToken;

/// This backend's entries in etcd, by owner token.
#[derive(Default)]
pub(super) struct State {
    pub(super) entries: HashMap<OwnerToken, Entry>,
    /// Locks with an entry being deleted: later attempts on them wait for it.
    pub(super) releasing: HashMap<LockKey, usize>,
    pub(super) reap_queue: BinaryHeap<Reverse<Due>>,
    /// When the reaper wakes next (`None`: when told to).
    pub(super) reaper_at: Option<Instant>,
}

pub(super) struct Entry {
    pub(super) key: LockKey,
    pub(super) etcd_key: Vec<u8>,
    pub(super) session: Arc<Session>,
    pub(super) ttl: Duration,
    /// The create revision of our key, once an attempt's reply said so.
    pub(super) revision: Option<i64>,
    pub(super) granted: bool,
    /// When the reaper deletes the key unless an extend or attempt moves it.
    pub(super) reap_at: Instant,
    pub(super) releasing: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Due {
    pub(super) at: Instant,
    pub(super) owner: OwnerKey,
}

/// An orderable stand-in for an owner token in the reap queue.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
pub(super) struct OwnerKey(u128);

impl OwnerKey {
    pub(super) fn of(owner: OwnerToken) -> Self {
        OwnerKey(u128::from_str_radix(&owner.to_hex(), 16).unwrap_or_default())
    }
    pub(super) fn owner(self) -> OwnerToken {
        OwnerToken::from_u128(self.0)
    }
}

impl Inner {
    /// Waits while an entry of this backend for `key` is being deleted, so a
    /// release (or a dropped obtain's cleanup) is ordered before later
    /// attempts of the same backend.
    pub(super) async fn wait_releases(&self, key: &LockKey) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.state().releasing.contains_key(key) {
                return;
            }
            released.await;
        }
    }

    /// Queues `owner`'s entry for the reaper at `at`; true if the reaper
    /// sleeps past `at` and must be woken.
    #[must_use]
    pub(super) fn schedule(state: &mut State, owner: OwnerToken, at: Instant) -> bool {
        state.reap_queue.push(Reverse(Due {
            at,
            owner: OwnerKey::of(owner),
        }));
        state
            .reaper_at
            .is_none_or(|sleeping_until| at < sleeping_until)
    }

    /// Marks `owner`'s entry as being deleted; false if it already is.
    pub(super) fn begin_release(state: &mut State, owner: OwnerToken) -> bool {
        let Some(entry) = state.entries.get_mut(&owner) else {
            return false;
        };
        if entry.releasing {
            return false;
        }
        entry.releasing = true;
        *state.releasing.entry(entry.key.clone()).or_default() += 1;
        true
    }

    /// Ends a release begun by `begin_release`: the entry is forgotten when
    /// `gone`, else kept for the reaper to try again at `retry_at`.
    pub(super) fn end_release(&self, owner: OwnerToken, gone: bool, retry_at: Instant) {
        let mut state = self.state();
        let state = &mut *state;
        let Some(entry) = state.entries.get_mut(&owner) else {
            return;
        };
        let key = entry.key.clone();
        let wake = if gone {
            state.entries.remove(&owner);
            false
        } else {
            entry.releasing = false;
            entry.reap_at = entry.reap_at.min(retry_at);
            let at = entry.reap_at;
            Self::schedule(state, owner, at)
        };
        if let Some(n) = state.releasing.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                state.releasing.remove(&key);
            }
        }
        self.released.notify_waiters();
        if wake {
            self.reaper_wake.notify_one();
        }
    }
}

/// Hands an entry whose release was cut short back to the reaper.
pub(super) struct ReleaseGuard<'a> {
    pub(super) inner: &'a Inner,
    pub(super) owner: OwnerToken,
    pub(super) armed: bool,
}

impl Drop for ReleaseGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.end_release(
                self.owner,
                false,
                Instant::now() + Duration::from_millis(100),
            );
        }
    }
}
