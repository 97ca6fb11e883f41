//! Deleting entries: guarded by their create revision, by the reaper when
//! their TTL passed without an extend, and sweeping orphans.

use std::cmp::Reverse;
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, LeaseTimeToLiveOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::entries::{Deleted, Due};
use super::session::Session;
use super::{Inner, encode};
use crate::error::Result;
use crate::key::LockKey;

impl Inner {
    /// Deletes an entry's key, guarded by its create revision when known,
    /// and says what it found.
    pub(super) async fn delete_entry(
        &self,
        key: &LockKey,
        etcd_key: &[u8],
        revision: Option<i64>,
    ) -> Result<Deleted> {
        let mut client = self.client.clone();
        let guard = match revision {
            Some(rev) => Compare::create_revision(etcd_key.to_vec(), CompareOp::Equal, rev),
            // Outcome of the put unknown: the name is unique to this owner.
            None => Compare::create_revision(etcd_key.to_vec(), CompareOp::Greater, 0),
        };
        // Read back when nothing was deleted: a key of ours under another
        // revision means the entry is not gone.
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::delete(etcd_key.to_vec(), None)])
            .or_else([TxnOp::get(etcd_key.to_vec(), None)]);
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| self.err("release", Some(key), e))?;
        if resp.succeeded() {
            return Ok(Deleted::Yes);
        }
        let found = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.create_revision()),
            _ => None,
        });
        Ok(found.map_or(Deleted::Gone, Deleted::Other))
    }

    /// Deletes keys on this backend's leases that no entry accounts for: a
    /// put whose reply never came can land after its cleanup ran.
    pub(super) async fn sweep_orphans(&self) {
        let sessions: Vec<Arc<Session>> = self
            .sessions()
            .values()
            .filter(|s| !s.is_dead())
            .cloned()
            .collect();
        let timeout = self.options.request_timeout;
        for session in sessions {
            let mut client = self.client.clone();
            let listed = tokio::time::timeout(
                timeout,
                client.lease_time_to_live(
                    session.id,
                    Some(LeaseTimeToLiveOptions::new().with_keys()),
                ),
            )
            .await;
            let Ok(Ok(listed)) = listed else { continue };
            for key in listed.keys() {
                let known = encode::owner_of(key)
                    .is_some_and(|owner| self.state().entries.contains_key(&owner));
                if known {
                    continue;
                }
                tracing::debug!(
                    lease = session.id,
                    "distlock: deleting an orphaned etcd entry"
                );
                let txn = Txn::new()
                    .when([Compare::lease(key.clone(), CompareOp::Equal, session.id)])
                    .and_then([TxnOp::delete(key.clone(), None)]);
                let _ = tokio::time::timeout(timeout, client.txn(txn)).await;
            }
        }
    }

    /// Runs `sweep_orphans` a few times over the next request timeout.
    pub(super) fn sweep_soon(self: &Arc<Self>) {
        let inner = Arc::downgrade(self);
        let closed = self.closed.clone();
        let last = self.options.request_timeout;
        tokio::spawn(async move {
            let start = Instant::now();
            for at in [Duration::from_millis(50), Duration::from_millis(250), last] {
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = tokio::time::sleep_until(start + at) => {}
                }
                let Some(inner) = inner.upgrade() else { return };
                inner.sweep_orphans().await;
            }
        });
    }
}

/// Deletes entries whose TTL passed without an extend (or that a failed
/// release left behind), guarded by their create revision.
pub(super) async fn reaper(inner: Weak<Inner>, wake_up: Arc<Notify>, closed: CancellationToken) {
    loop {
        let wake = wake_up.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let Some(this) = inner.upgrade() else { return };
        let next = {
            let mut state = this.state();
            let next = state.reap_queue.peek().map(|Reverse(due)| due.at);
            state.reaper_at = next;
            next
        };
        drop(this);
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = wake => {}
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let Some(this) = inner.upgrade() else { return };
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut state = this.state();
            let state = &mut *state;
            while state
                .reap_queue
                .peek()
                .is_some_and(|Reverse(d)| d.at <= now)
            {
                let Some(Reverse(d)) = state.reap_queue.pop() else {
                    break;
                };
                let owner = d.owner.owner();
                let Some(entry) = state.entries.get(&owner) else {
                    continue;
                };
                // Being deleted, or an attempt is in flight (which hands the
                // entry back when it ends).
                if entry.releasing || state.attempting.contains(&owner) {
                    continue;
                }
                if entry.reap_at > now {
                    // Extended since this item was queued (extends move the
                    // deadline without queueing): look again at the new one,
                    // so a lock left unrefreshed still goes one TTL after
                    // its last extend. One item per entry stays queued.
                    let at = entry.reap_at;
                    state.reap_queue.push(Reverse(Due { at, owner: d.owner }));
                    continue;
                }
                due.push((
                    owner,
                    entry.etcd_key.clone(),
                    entry.revision,
                    entry.key.clone(),
                ));
                Inner::begin_release(state, owner);
            }
        }
        for (owner, etcd_key, revision, key) in due {
            let timeout = this.options.request_timeout;
            let result =
                tokio::time::timeout(timeout, this.delete_entry(&key, &etcd_key, revision)).await;
            match result {
                Ok(Ok(deleted)) => {
                    tracing::debug!(key = %key.key, ?deleted, "distlock: etcd entry expired");
                    this.end_release(owner, Some(deleted), now);
                    if revision.is_none() {
                        this.sweep_soon();
                    }
                }
                _ => this.end_release(owner, None, Instant::now() + Duration::from_secs(1)),
            }
        }
    }
}
