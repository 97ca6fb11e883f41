//! The backend's entries in etcd as it knows them, and the bookkeeping of
//! their deletion (by a release or the reaper).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::admission::Seen;
use super::session::Session;
use crate::key::LockKey;
use crate::lease::{OwnerToken, Share};

/// How many keys' queues the backend remembers having seen (see [`Seen`]);
/// past it, it forgets them all, which costs a read per permit attempt.
const SEEN_KEYS: usize = 1024;

/// This backend's entries in etcd, by owner token.
#[derive(Default)]
pub(super) struct State {
    pub(super) entries: HashMap<OwnerToken, Entry>,
    /// Locks with an entry being deleted: later attempts on them wait for it.
    pub(super) releasing: HashMap<LockKey, usize>,
    /// Owners with an attempt in flight: the reaper leaves their entries
    /// alone, and a release waits for the attempt to end.
    pub(super) attempting: HashSet<OwnerToken>,
    pub(super) reap_queue: BinaryHeap<Reverse<Due>>,
    /// When the reaper wakes next (`None`: when told to).
    pub(super) reaper_at: Option<Instant>,
    /// What permit attempts last saw of their keys' queues.
    pub(super) seen: HashMap<LockKey, Seen>,
}

impl State {
    /// Remembers what an attempt saw of `key`'s queue (`None`: nothing a
    /// permit could use).
    pub(super) fn saw(&mut self, key: &LockKey, seen: Option<Seen>) {
        match seen {
            Some(seen) => {
                if self.seen.len() >= SEEN_KEYS && !self.seen.contains_key(key) {
                    self.seen.clear();
                }
                self.seen.insert(key.clone(), seen);
            }
            None => {
                self.seen.remove(key);
            }
        }
    }
}

pub(super) struct Entry {
    pub(super) key: LockKey,
    pub(super) etcd_key: Vec<u8>,
    /// The mode asked for: an extend or release in another one is not ours.
    pub(super) share: Share,
    /// The lease of the lock's TTL, which a grant puts the key on.
    pub(super) session: Arc<Session>,
    /// The waiters' lease, while the key is queued on it.
    pub(super) waiting_on: Option<Arc<Session>>,
    pub(super) ttl: Duration,
    /// The create revision of our key, once an attempt's reply said so.
    pub(super) revision: Option<i64>,
    /// The create revision of our queued key when a wait saw that the
    /// queue grants it (entries ahead of it only leave).
    pub(super) granted_in_queue: Option<i64>,
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

/// What a guarded delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deleted {
    /// It deleted our key.
    Yes,
    /// Our key was not there.
    Gone,
    /// Our key is there under another create revision (a put the entry did
    /// not know of landed): nothing was deleted, the entry must stay.
    Other(i64),
}

impl Inner {
    /// Makes `owner` the one attempting on its entry, once no entry of
    /// this backend for `key` is being deleted (so a release, or a dropped
    /// obtain's cleanup, is ordered before later attempts, and an entry
    /// being reaped is never granted) and no other attempt of `owner` runs.
    /// Until the claim is dropped, the reaper and releases leave the entry
    /// alone.
    pub(super) async fn claim(&self, key: &LockKey, owner: OwnerToken) -> AttemptClaim<'_> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut state = self.state();
                if !state.releasing.contains_key(key) && state.attempting.insert(owner) {
                    return AttemptClaim { inner: self, owner };
                }
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

    /// Marks `owner`'s entry as being deleted; false if it already is, or
    /// an attempt on it is in flight.
    pub(super) fn begin_release(state: &mut State, owner: OwnerToken) -> bool {
        let Some(entry) = state.entries.get_mut(&owner) else {
            return false;
        };
        if entry.releasing || state.attempting.contains(&owner) {
            return false;
        }
        entry.releasing = true;
        *state.releasing.entry(entry.key.clone()).or_default() += 1;
        true
    }

    /// Ends a release begun by `begin_release`: the entry is forgotten when
    /// the delete found no key of ours (`Some(Yes | Gone)`). Else (`None`:
    /// the delete failed) it is kept for the reaper to try again at
    /// `retry_at`, or at once if our key is there under another revision.
    pub(super) fn end_release(
        &self,
        owner: OwnerToken,
        deleted: Option<Deleted>,
        retry_at: Instant,
    ) {
        let mut state = self.state();
        let state = &mut *state;
        let Some(entry) = state.entries.get_mut(&owner) else {
            return;
        };
        let key = entry.key.clone();
        // A deletion of ours is one entry fewer in what was seen; a key
        // found gone may never have been there when it was seen.
        match (deleted, entry.revision) {
            (Some(Deleted::Yes), Some(created)) => {
                if let Some(seen) = state.seen.get_mut(&key) {
                    seen.left(created);
                }
            }
            (Some(_), _) => {
                state.seen.remove(&key);
            }
            (None, _) => {}
        }
        let retry_at = match deleted {
            Some(Deleted::Other(revision)) => {
                entry.revision = Some(revision);
                entry.granted = false;
                Instant::now()
            }
            _ => retry_at,
        };
        let wake = if matches!(deleted, Some(Deleted::Yes | Deleted::Gone)) {
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
                None,
                Instant::now() + Duration::from_millis(100),
            );
        }
    }
}

/// An attempt in flight on an entry (see [`Inner::claim`]). Dropped, it
/// hands the entry back to the reaper if its deadline passed meanwhile.
pub(super) struct AttemptClaim<'a> {
    inner: &'a Inner,
    owner: OwnerToken,
}

impl Drop for AttemptClaim<'_> {
    fn drop(&mut self) {
        let mut guard = self.inner.state();
        let state = &mut *guard;
        state.attempting.remove(&self.owner);
        let now = Instant::now();
        let due = state
            .entries
            .get(&self.owner)
            .filter(|e| e.reap_at <= now)
            .map(|e| e.reap_at);
        let wake = due.is_some_and(|at| Inner::schedule(state, self.owner, at));
        drop(guard);
        self.inner.released.notify_waiters();
        if wake {
            self.inner.reaper_wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::etcd::tests::offline;
    use crate::backend::etcd::{EtcdBackend, EtcdOptions};
    use crate::key::{Key, Namespace};

    fn entry(backend: &EtcdBackend, owner: OwnerToken) -> Entry {
        let key = LockKey {
            namespace: Namespace::default(),
            key: Key::new("k").unwrap(),
        };
        let session = Session::start(
            backend.client(),
            1,
            Duration::from_secs(5),
            Instant::now(),
            Duration::from_secs(1),
        );
        Entry {
            etcd_key: super::super::encode::entry_key(&key, owner),
            key,
            share: Share::Exclusive,
            session,
            waiting_on: None,
            ttl: Duration::from_secs(1),
            revision: Some(5),
            granted_in_queue: None,
            granted: false,
            reap_at: Instant::now(),
            releasing: false,
        }
    }

    #[tokio::test]
    async fn an_entry_with_an_attempt_in_flight_is_not_deleted_and_deleting_one_holds_attempts() {
        let backend = offline(EtcdOptions::new()).await;
        let inner = &backend.inner;
        let owner = OwnerToken::random().unwrap();
        let e = entry(&backend, owner);
        let key = e.key.clone();
        inner.state().entries.insert(owner, e);
        let claim = inner.claim(&key, owner).await;
        assert!(!Inner::begin_release(&mut inner.state(), owner));
        drop(claim);
        assert!(Inner::begin_release(&mut inner.state(), owner));
        let claiming = inner.claim(&key, owner);
        tokio::pin!(claiming);
        let pending = tokio::time::timeout(Duration::from_millis(20), &mut claiming).await;
        assert!(pending.is_err(), "claimed an entry being deleted");
        inner.end_release(owner, Some(Deleted::Gone), Instant::now());
        let _claim = claiming.await;
        assert!(
            inner.state().entries.is_empty(),
            "a gone entry is forgotten"
        );
    }

    #[tokio::test]
    async fn a_delete_that_finds_our_key_under_another_revision_keeps_the_entry() {
        let backend = offline(EtcdOptions::new()).await;
        let inner = &backend.inner;
        let owner = OwnerToken::random().unwrap();
        inner.state().entries.insert(owner, entry(&backend, owner));
        assert!(Inner::begin_release(&mut inner.state(), owner));
        let later = Instant::now() + Duration::from_secs(60);
        inner.end_release(owner, Some(Deleted::Other(9)), later);
        let state = inner.state();
        let kept = state.entries.get(&owner).expect("kept");
        assert_eq!(kept.revision, Some(9));
        assert!(
            !kept.releasing && kept.reap_at <= Instant::now(),
            "deleted again at once"
        );
    }
}
