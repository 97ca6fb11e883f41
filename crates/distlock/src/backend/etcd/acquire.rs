//! One acquisition attempt: take the lock if nobody holds or waits for it,
//! else join the queue on the waiters' lease, or read whether our queued
//! entry is first; a grant moves the entry onto the lease of its TTL.

use std::sync::Arc;
use std::time::SystemTime;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tokio::time::Instant;

use super::entries::Entry;
use super::errors::{backend_error, lease_not_found};
use super::leases::WAITERS;
use super::session::{LeaseTrouble, Session};
use super::{Inner, encode};
use crate::backend::{AcquireRequest, Attempt};
use crate::error::{Error, Result};
use crate::key::LockKey;

pub(super) enum AttemptError {
    /// etcd does not know one of these leases any more (its error does not
    /// say which).
    LeaseGone(Vec<Arc<Session>>),
    Other(Error),
}

impl From<Error> for AttemptError {
    fn from(e: Error) -> Self {
        AttemptError::Other(e)
    }
}

/// Our entry's key, as an attempt found or made it.
#[derive(Clone, Copy)]
struct Mine {
    revision: i64,
    lease: i64,
}

impl Mine {
    fn of(kv: &KeyValue) -> Self {
        Mine {
            revision: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

/// An acquire transaction's reply, its nested transactions flattened.
#[derive(Default)]
struct TxnReply {
    /// How deep in the nesting a put ran, if one did.
    put_depth: Option<usize>,
    /// The results of its reads, in order.
    ranges: Vec<Option<KeyValue>>,
    /// The transaction's revision: a put's create revision.
    revision: i64,
}

impl TxnReply {
    fn add(&mut self, ops: Vec<TxnOpResponse>, depth: usize) {
        for op in ops {
            match op {
                TxnOpResponse::Put(_) => self.put_depth = Some(depth),
                TxnOpResponse::Get(get) => self.ranges.push(get.kvs().first().cloned()),
                TxnOpResponse::Txn(txn) => self.add(txn.op_responses(), depth + 1),
                TxnOpResponse::Delete(_) => {}
            }
        }
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
                Err(AttemptError::LeaseGone(leases)) if !renewed_lease => {
                    // etcd expired or revoked a lease before the keepalive
                    // said so; a new one serves this attempt.
                    self.mark_expired(&leases).await;
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

    /// Marks dead those of `leases` that etcd says are gone: marking a
    /// live one would stop its keepalives, and lose every lock on it.
    async fn mark_expired(&self, leases: &[Arc<Session>]) {
        for session in leases {
            let mut client = self.client.clone();
            let timeout = self.options.request_timeout;
            let left = tokio::time::timeout(timeout, client.lease_time_to_live(session.id, None));
            if let Ok(Ok(left)) = left.await
                && left.ttl() <= 0
            {
                session.mark_dead();
            }
        }
    }

    async fn attempt(self: &Arc<Self>, req: &AcquireRequest) -> Result<Attempt, AttemptError> {
        let owner = req.owner;
        let etcd_key = encode::entry_key(&req.key, owner);
        let prefix = encode::lock_prefix(&req.key);
        // The lease a grant puts our key on: the entry's, unless it died.
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
        // Queued, the key lives on the waiters' short lease: a waiter whose
        // process dies holds up the queue only that long. Created the first
        // time an attempt must queue, so a process that never waits has none.
        let mut waiters = req.will_wait.then(|| self.live_session(WAITERS)).flatten();
        let now = Instant::now();
        // Until a grant, the entry lives at least a lease TTL (its lock's
        // TTL when longer) past each attempt, so a slow poller keeps its place.
        let queued_on = waiters.as_ref().unwrap_or(&session);
        let queued_reap_at = now + req.ttl.max(queued_on.ttl);
        let known;
        let wake;
        {
            let mut state = self.state();
            let state = &mut *state;
            let entry = state.entries.entry(owner).or_insert_with(|| Entry {
                key: req.key.clone(),
                etcd_key: etcd_key.clone(),
                session: session.clone(),
                waiting_on: None,
                ttl: req.ttl,
                revision: None,
                granted: false,
                reap_at: queued_reap_at,
                releasing: false,
            });
            if entry.session.id != session.id {
                // The old lease died, and our key with it if it was there.
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
        session.kick_if_short(target, &req.validity);

        // The deadline inspect counts to (extends do not rewrite it).
        let deadline = SystemTime::now() + req.ttl;
        let value = encode::entry_value(req.ttl, deadline, req.metadata.as_deref());
        let put_on = |lease: i64| {
            TxnOp::put(
                etcd_key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        let first_entry = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let read_first = || TxnOp::get(prefix.clone(), Some(first_entry.clone()));
        let reads = || [TxnOp::get(etcd_key.clone(), None), read_first()];
        let mut found = None;
        if req.will_wait && known.is_some() {
            // Already queued: a read-only transaction (served without a
            // raft proposal) says whether we are first now.
            let reply = self
                .run_txn(&req.key, Txn::new().and_then(reads()), &[])
                .await?;
            if let [Some(mine), first] = &reply.ranges[..] {
                found = Some((Mine::of(mine), first.clone()));
            }
            // Else our entry vanished: queue again at the back, below.
        }
        let (mine, first) = match found {
            Some(found) => (Some(found.0), found.1),
            None => loop {
                // Whatever this put's fate, a release or the reaper must
                // delete our key under any revision from now on.
                if let Some(entry) = self.state().entries.get_mut(&owner) {
                    entry.revision = None;
                }
                let otherwise = match &waiters {
                    // Join the queue (once), on the waiters' lease.
                    Some(waiters) => vec![TxnOp::txn(
                        Txn::new()
                            .when([Compare::create_revision(
                                etcd_key.clone(),
                                CompareOp::Equal,
                                0,
                            )])
                            .and_then([put_on(waiters.id), read_first()])
                            .or_else(reads()),
                    )],
                    // One attempt (or no waiters' lease yet): nothing is written.
                    None => reads().into(),
                };
                // Nobody holds or waits for it: take it, on its TTL's lease.
                let free =
                    Compare::create_revision(prefix.clone(), CompareOp::Equal, 0).with_prefix();
                let txn = Txn::new()
                    .when([free])
                    .and_then([put_on(session.id), read_first()])
                    .or_else(otherwise);
                let leases: Vec<Arc<Session>> = std::iter::once(session.clone())
                    .chain(waiters.clone())
                    .collect();
                let reply = self.run_txn(&req.key, txn, &leases).await?;
                // A put's revision (the transaction's) is our entry's create
                // revision: no need to read it back. Else the reads are
                // [ours, first], after a put [first].
                let put = reply.put_depth.and_then(|depth| leases.get(depth));
                let mine = match put {
                    Some(lease) => Some(Mine {
                        revision: reply.revision,
                        lease: lease.id,
                    }),
                    None => reply
                        .ranges
                        .first()
                        .cloned()
                        .flatten()
                        .as_ref()
                        .map(Mine::of),
                };
                if mine.is_none() && req.will_wait && waiters.is_none() {
                    waiters = Some(self.waiter_session().await?);
                    continue;
                }
                break (mine, reply.ranges.last().cloned().flatten());
            },
        };
        let holder = first.as_ref().map(|kv| {
            encode::holder_info(kv.create_revision(), kv.value(), SystemTime::now(), None)
        });
        let Some(mine) = mine else {
            // A single attempt that found the lock taken: nothing was written.
            let mut state = self.state();
            if state.entries.get(&owner).is_some_and(|e| !e.releasing) {
                state.entries.remove(&owner);
            }
            return Ok(Attempt::Contended { holder });
        };
        let is_first = first
            .as_ref()
            .is_some_and(|kv| kv.create_revision() == mine.revision);
        {
            let mut state = self.state();
            let Some(entry) = state.entries.get_mut(&owner) else {
                return Err(
                    backend_error("acquire", "the attempt was cleaned up while in flight").into(),
                );
            };
            if let Some(old) = known.filter(|old| *old != mine.revision) {
                tracing::info!(
                    key = %req.key.key,
                    old, new = mine.revision,
                    "distlock: an etcd queue entry vanished (lease expired or revoked, or deleted); queued again at the back"
                );
                entry.granted = false;
            }
            entry.revision = Some(mine.revision);
            // Held, so that the waiters' lease is not retired under it.
            entry.waiting_on = waiters.clone().filter(|w| w.id == mine.lease);
            if let Some(waiters) = &entry.waiting_on {
                // Queued: kept the lock's TTL (at least the waiters' lease)
                // past this attempt, whatever lease the guess above used.
                entry.reap_at = now + req.ttl.max(waiters.ttl);
                let at = entry.reap_at;
                if Self::schedule(&mut state, owner, at) {
                    self.reaper_wake.notify_one();
                }
            }
        }
        if !is_first {
            return Ok(Attempt::Contended { holder });
        }
        match session.ensure_until(target, &req.validity).await {
            Ok(()) => {}
            Err(LeaseTrouble::Dead) => return Err(AttemptError::LeaseGone(vec![session])),
            Err(LeaseTrouble::TooShort) => {
                return Err(
                    backend_error("acquire", "the lease TTL is shorter than the lock TTL").into(),
                );
            }
        }
        if mine.lease != session.id {
            // First in the queue: the grant moves our key onto the lease of
            // its TTL, guaranteed to outlive the validity deadline. A put
            // keeps the create revision, the fencing token.
            let same = Compare::create_revision(etcd_key.clone(), CompareOp::Equal, mine.revision);
            let moved = Txn::new().when([same]).and_then([put_on(session.id)]);
            let reply = self
                .run_txn(&req.key, moved, std::slice::from_ref(&session))
                .await?;
            if reply.put_depth.is_none() {
                // Gone since the read (its lease expired): the next attempt
                // queues again.
                return Ok(Attempt::Contended { holder: None });
            }
        }
        let mut state = self.state();
        let Some(entry) = state.entries.get_mut(&owner) else {
            return Err(
                backend_error("acquire", "the attempt was cleaned up while in flight").into(),
            );
        };
        entry.granted = true;
        entry.waiting_on = None;
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
            fencing_token: u64::try_from(mine.revision).unwrap_or_default(),
        })
    }

    /// Runs an acquire transaction; `leases` are those its puts use.
    async fn run_txn(
        &self,
        key: &LockKey,
        txn: Txn,
        leases: &[Arc<Session>],
    ) -> Result<TxnReply, AttemptError> {
        let mut client = self.client.clone();
        let resp = match client.txn(txn).await {
            Ok(resp) => resp,
            Err(e) if lease_not_found(&e) => return Err(AttemptError::LeaseGone(leases.to_vec())),
            Err(e) => return Err(self.err("acquire", Some(key), e).into()),
        };
        let Some(revision) = resp.header().map(|h| h.revision()) else {
            return Err(backend_error("acquire", "a transaction reply without a header").into());
        };
        let mut reply = TxnReply {
            revision,
            ..TxnReply::default()
        };
        reply.add(resp.op_responses(), 0);
        Ok(reply)
    }
}
