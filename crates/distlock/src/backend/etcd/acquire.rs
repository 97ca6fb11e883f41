//! One acquisition attempt: join the queue (or take the lock), and read
//! whether we are first.

use std::sync::Arc;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tokio::time::Instant;

use super::entries::Entry;
use super::errors::{backend_error, lease_not_found};
use super::session::{LeaseTrouble, Session};
use super::{Inner, encode};
use crate::backend::{AcquireRequest, Attempt};
use crate::error::{Error, Result};
use crate::key::LockKey;

pub(super) enum AttemptError {
    /// etcd does not know the session's lease any more.
    LeaseGone(Arc<Session>),
    Other(Error),
}

impl From<Error> for AttemptError {
    fn from(e: Error) -> Self {
        AttemptError::Other(e)
    }
}

impl Inner {
    pub(super) async fn try_acquire(self: &Arc<Self>, req: &AcquireRequest) -> Result<Attempt> {
        self.ensure_open()?;
        // Our own entry may be the one being deleted (reaped while queued):
        // then this attempt starts afresh once it is gone. Until the claim
        // is dropped, the reaper leaves the entry to us.
        let _claim = self.claim(&req.key, req.owner).await;
        let mut renewed_lease = false;
        loop {
            match self.attempt(req).await {
                Err(AttemptError::LeaseGone(session)) if !renewed_lease => {
                    // etcd expired or revoked the lease before the keepalive
                    // said so; a new one serves this attempt.
                    session.mark_dead();
                    renewed_lease = true;
                }
                Err(AttemptError::LeaseGone(_)) => {
                    return Err(backend_error(
                        "acquire",
                        "the etcd lease vanished twice in a row",
                    ));
                }
                Err(AttemptError::Other(e)) => return Err(e),
                Ok(attempt) => return Ok(attempt),
            }
        }
    }

    pub(super) async fn attempt(
        self: &Arc<Self>,
        req: &AcquireRequest,
    ) -> Result<Attempt, AttemptError> {
        let owner = req.owner;
        let etcd_key = encode::entry_key(&req.key, owner);
        let prefix = encode::lock_prefix(&req.key);
        // Reuse the entry's session (its key is on that lease) unless the lease died.
        let existing = self
            .state()
            .entries
            .get(&owner)
            .map(|e| e.session.clone())
            .filter(|s| !s.is_dead());
        let session = match existing {
            Some(s) => s,
            None => self.session(req.ttl).await?,
        };
        let now = Instant::now();
        // Until a grant, the entry lives at least a lease TTL past each
        // attempt, so a slow poller keeps its place.
        let queued_reap_at = now + req.ttl.max(session.ttl);
        let known;
        let wake;
        {
            let mut state = self.state();
            let state = &mut *state;
            let entry = state.entries.entry(owner).or_insert_with(|| Entry {
                key: req.key.clone(),
                etcd_key: etcd_key.clone(),
                session: session.clone(),
                ttl: req.ttl,
                revision: None,
                granted: false,
                reap_at: queued_reap_at,
                releasing: false,
            });
            if entry.session.id != session.id {
                // The old lease died, and our key with it.
                entry.session = session.clone();
                entry.revision = None;
                entry.granted = false;
            }
            entry.ttl = req.ttl;
            entry.reap_at = entry.reap_at.max(queued_reap_at);
            let at = entry.reap_at;
            known = entry.revision;
            wake = Self::schedule(state, owner, at);
        }
        if wake {
            self.reaper_wake.notify_one();
        }
        // The guarantee must cover the lock's validity, counted from now.
        let target = now + req.ttl;
        session.kick_if_short(target);

        let first_entry = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let reads = || {
            [
                TxnOp::get(etcd_key.clone(), None),
                TxnOp::get(prefix.clone(), Some(first_entry.clone())),
            ]
        };
        let mut found = None;
        if req.will_wait && known.is_some() {
            // Already queued: a read-only transaction (served without a
            // raft proposal) says whether we are first now.
            let (mine, first) = self
                .run_txn(&req.key, Txn::new().and_then(reads()), &session)
                .await?;
            if mine.is_some() {
                found = Some((mine, first));
            }
            // Else our entry vanished: queue again at the back, below.
        }
        let (mine, first) = match found {
            Some(found) => found,
            None => {
                // Whatever this put's fate, a release or the reaper must
                // delete our key under any revision from now on.
                if let Some(entry) = self.state().entries.get_mut(&owner) {
                    entry.revision = None;
                }
                let put = TxnOp::put(
                    etcd_key.clone(),
                    encode::entry_value(req.ttl, req.metadata.as_deref()),
                    Some(PutOptions::new().with_lease(session.id)),
                );
                let guard = if req.will_wait {
                    // Join the queue (once).
                    Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0)
                } else {
                    // One attempt: take it only if nobody holds or waits for it.
                    Compare::create_revision(prefix.clone(), CompareOp::Equal, 0).with_prefix()
                };
                // On success the put's revision (the transaction's) is our
                // entry's create revision: no need to read it back.
                let [_, read_first] = reads();
                let txn = Txn::new()
                    .when([guard])
                    .and_then([put, read_first])
                    .or_else(reads());
                self.run_txn(&req.key, txn, &session).await?
            }
        };
        let holder = first
            .as_ref()
            .map(|kv| encode::holder_info(kv.create_revision(), kv.value()));
        let Some(mine) = mine else {
            // A single attempt that found the lock taken: nothing was written.
            let mut state = self.state();
            if state.entries.get(&owner).is_some_and(|e| !e.releasing) {
                state.entries.remove(&owner);
            }
            return Ok(Attempt::Contended { holder });
        };
        let revision = mine;
        let is_first = first
            .as_ref()
            .is_some_and(|kv| kv.create_revision() == revision);
        {
            let mut state = self.state();
            let Some(entry) = state.entries.get_mut(&owner) else {
                return Err(
                    backend_error("acquire", "the attempt was cleaned up while in flight").into(),
                );
            };
            if let Some(old) = known.filter(|old| *old != revision) {
                tracing::info!(
                    key = %req.key.key,
                    old, new = revision,
                    "distlock: an etcd queue entry vanished (lease expired or revoked, or deleted); queued again at the back"
                );
                entry.granted = false;
            }
            entry.revision = Some(revision);
        }
        if !is_first {
            return Ok(Attempt::Contended { holder });
        }
        match session.ensure_until(target).await {
            Ok(()) => {}
            Err(LeaseTrouble::Dead) => return Err(AttemptError::LeaseGone(session)),
            Err(LeaseTrouble::TooShort) => {
                return Err(
                    backend_error("acquire", "the lease TTL is shorter than the lock TTL").into(),
                );
            }
        }
        let mut state = self.state();
        let Some(entry) = state.entries.get_mut(&owner) else {
            return Err(
                backend_error("acquire", "the attempt was cleaned up while in flight").into(),
            );
        };
        entry.granted = true;
        // The reaper deletes it one TTL from now unless extended: never
        // before the validity deadline the engine computes.
        entry.reap_at = Instant::now() + req.ttl;
        let at = entry.reap_at;
        let wake = Self::schedule(&mut state, owner, at);
        drop(state);
        if wake {
            self.reaper_wake.notify_one();
        }
        Ok(Attempt::Granted {
            fencing_token: u64::try_from(revision).unwrap_or_default(),
        })
    }

    /// Runs an acquire transaction; returns the create revision of our
    /// entry (from the put, else from reading it) and the lowest entry of
    /// the prefix.
    pub(super) async fn run_txn(
        &self,
        key: &LockKey,
        txn: Txn,
        session: &Arc<Session>,
    ) -> Result<(Option<i64>, Option<KeyValue>), AttemptError> {
        let mut client = self.client.clone();
        let resp = match client.txn(txn).await {
            Ok(resp) => resp,
            Err(e) if lease_not_found(&e) => return Err(AttemptError::LeaseGone(session.clone())),
            Err(e) => return Err(self.err("acquire", Some(key), e).into()),
        };
        let ops = resp.op_responses();
        let put = ops.iter().any(|op| matches!(op, TxnOpResponse::Put(_)));
        let mut ranges = ops.into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().cloned()),
            _ => None,
        });
        let mine = if put {
            let revision = resp.header().map(|h| h.revision());
            if revision.is_none() {
                return Err(
                    backend_error("acquire", "a transaction reply without a header").into(),
                );
            }
            revision
        } else {
            ranges.next().flatten().map(|kv| kv.create_revision())
        };
        let first = ranges.next().flatten();
        Ok((mine, first))
    }
}
