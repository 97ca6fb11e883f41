//! One acquisition attempt: take the key if nobody holds or waits for it;
//! a permit that fits beside the holders takes it with a put guarded by
//! the queue it saw; else join the queue on the waiters' lease, or read
//! where our queued entry stands. A grant moves a queued entry onto the
//! lease of its TTL.

use std::sync::Arc;
use std::time::SystemTime;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tokio::time::Instant;

use super::Inner;
use super::admission::{self, Standing};
use super::encode::{self, Put};
use super::entries::Entry;
use super::errors::{backend_error, lease_not_found};
use super::leases::WAITERS;
use super::session::{LeaseTrouble, Session};
use crate::backend::{AcquireRequest, Attempt};
use crate::error::{Error, Result};
use crate::key::LockKey;
use crate::lease::Share;

/// How many times a permit that fits beside the holders tries its guarded
/// put while others keep joining the queue, before it queues (or, for a
/// single attempt, answers `Contended`).
const GUARDED_PUTS: usize = 8;

pub(super) enum AttemptError {
    /// etcd does not know one of these leases any more (its error does not
    /// say which).
    LeaseGone(Vec<Arc<Session>>),
    /// The key is held by permits of this other limit.
    Mismatch(u32),
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
    /// Its create revision: the entry's identity, which guards deletes.
    revision: i64,
    /// Once on its holder's lease, its fencing token: the revision of the
    /// put that granted it.
    token: i64,
    lease: i64,
    /// This attempt put it.
    put_now: bool,
}

impl Mine {
    fn of(kv: &KeyValue) -> Self {
        Mine {
            revision: kv.create_revision(),
            token: encode::entry_token(kv.value(), kv.mod_revision()),
            lease: kv.lease(),
            put_now: false,
        }
    }
}

/// An acquire transaction's reply, its nested transactions flattened.
#[derive(Default)]
struct TxnReply {
    /// How deep in the nesting a put ran, if one did.
    put_depth: Option<usize>,
    /// The results of its reads, in order.
    ranges: Vec<Vec<KeyValue>>,
    /// The transaction's revision: a put's create revision.
    revision: i64,
}

impl TxnReply {
    fn add(&mut self, ops: Vec<TxnOpResponse>, depth: usize) {
        for op in ops {
            match op {
                TxnOpResponse::Put(_) => self.put_depth = Some(depth),
                TxnOpResponse::Get(get) => self.ranges.push(get.kvs().to_vec()),
                TxnOpResponse::Txn(txn) => self.add(txn.op_responses(), depth + 1),
                TxnOpResponse::Delete(_) => {}
            }
        }
    }

    /// The last read: the head of the queue.
    fn head(&self) -> Vec<KeyValue> {
        self.ranges.last().cloned().unwrap_or_default()
    }
}

impl Inner {
    pub(super) async fn try_acquire(self: &Arc<Self>, req: &AcquireRequest) -> Result<Attempt> {
        self.ensure_open()?;
        let held = match self.claimed_attempt(req).await {
            Err(AttemptError::Mismatch(held)) => held,
            Err(AttemptError::Other(e)) => return Err(e),
            Err(AttemptError::LeaseGone(_)) => unreachable!("handled by claimed_attempt"),
            Ok(attempt) => return Ok(attempt),
        };
        // Refused: an entry this attempt queued goes at once.
        if self.state().entries.contains_key(&req.owner) {
            let _ = self.release(&req.lease()).await;
        }
        let asked = req.share.limit().unwrap_or_default();
        Err(Error::limit_mismatch(&req.key, asked, held))
    }

    /// One attempt, with its entry claimed (see [`Inner::claim`]).
    async fn claimed_attempt(
        self: &Arc<Self>,
        req: &AcquireRequest,
    ) -> Result<Attempt, AttemptError> {
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
                    return Err(
                        backend_error("acquire", "the etcd lease vanished twice in a row").into(),
                    );
                }
                other => return other,
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
        let granted_in_queue;
        let wake;
        {
            let mut state = self.state();
            let state = &mut *state;
            let entry = state.entries.entry(owner).or_insert_with(|| Entry {
                key: req.key.clone(),
                etcd_key: etcd_key.clone(),
                share: req.share,
                session: session.clone(),
                waiting_on: None,
                ttl: req.ttl,
                revision: None,
                granted_in_queue: None,
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
            // A wait saw the queue grant our key, still on the waiters' lease.
            granted_in_queue = entry
                .granted_in_queue
                .take()
                .filter(|created| known == Some(*created))
                .and(entry.waiting_on.as_ref().map(|w| w.id));
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
        let metadata = req.metadata.as_deref();
        let value = encode::entry_value(req.ttl, deadline, req.share, Put::Grant, metadata);
        let queued = encode::entry_value(req.ttl, deadline, req.share, Put::Queued, metadata);
        let put_on = |lease: i64, value: &Vec<u8>| {
            TxnOp::put(
                etcd_key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        // The head of the queue: as many entries as can hold the key beside
        // us, none created after our entry when we know it.
        let read_head = |upto: Option<i64>| {
            let mut head = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(admission::head_len(req.share));
            if let Some(revision) = upto {
                head = head.with_max_create_revision(revision);
            }
            TxnOp::get(prefix.clone(), Some(head))
        };
        let reads = |upto| [TxnOp::get(etcd_key.clone(), None), read_head(upto)];
        let mut found = None;
        let told_by_wait = known.filter(|_| req.will_wait).zip(granted_in_queue);
        if let Some((revision, lease)) = told_by_wait {
            // No need to read where we stand: the move below is guarded by
            // our create revision, in case our key vanished since.
            let mine = Mine {
                revision,
                token: revision,
                lease,
                put_now: false,
            };
            found = Some((mine, Vec::new()));
        } else if req.will_wait && known.is_some() {
            // Already queued: a read-only transaction (served without a
            // raft proposal) says where we stand now.
            let reply = self
                .run_txn(&req.key, Txn::new().and_then(reads(known)), &[])
                .await?;
            if let [mine, head] = &reply.ranges[..]
                && let Some(mine) = mine.first()
            {
                found = Some((Mine::of(mine), head.clone()));
            }
            // Else our entry vanished: queue again at the back, below.
        }
        // With the revision of a read of the queue's whole head (not one
        // cut at our entry), which a later permit can go by.
        let (mine, head, whole_head_at) = match found {
            Some(found) => (Some(found.0), found.1, None),
            None => {
                // A lock waits whenever the key is not free, so it joins the
                // queue in its first transaction; a permit first sees
                // whether it fits beside the holders.
                let mut queue = waiters.is_some() && req.share == Share::Exclusive;
                // Some(revision): put ours if no entry was created since;
                // at once if what this backend saw of the queue lets it in.
                let mut guard = match req.share {
                    Share::Exclusive => None,
                    Share::Permit { .. } => self
                        .state()
                        .seen
                        .get(&req.key)
                        .filter(|seen| seen.fits(req.share))
                        .map(|seen| seen.revision),
                };
                let mut guarded_puts = 0;
                loop {
                    // Whatever this put's fate, a release or the reaper must
                    // delete our key under any revision from now on.
                    if let Some(entry) = self.state().entries.get_mut(&owner) {
                        entry.revision = None;
                    }
                    let grant = [put_on(session.id, &value), read_head(None)];
                    let txn = match (guard, &waiters) {
                        // Fits beside the holders read at `seen`, unless
                        // someone queued or took a permit since.
                        (Some(seen), _) => {
                            let nothing_since =
                                Compare::create_revision(prefix.clone(), CompareOp::Less, seen + 1)
                                    .with_prefix();
                            // Ours may be there (an owner asking again): its
                            // grant is read, not put again.
                            let not_ours =
                                Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0);
                            Txn::new()
                                .when([nothing_since, not_ours])
                                .and_then(grant)
                                .or_else(reads(None))
                        }
                        (None, waiters) => {
                            let otherwise = match waiters.as_ref().filter(|_| queue) {
                                // Join the queue (once), on the waiters' lease.
                                Some(waiters) => vec![TxnOp::txn(
                                    Txn::new()
                                        .when([Compare::create_revision(
                                            etcd_key.clone(),
                                            CompareOp::Equal,
                                            0,
                                        )])
                                        .and_then([put_on(waiters.id, &queued), read_head(None)])
                                        .or_else(reads(None)),
                                )],
                                // A read: nothing is written.
                                None => reads(None).into(),
                            };
                            // Nobody holds or waits for it: take it, on its TTL's lease.
                            let free =
                                Compare::create_revision(prefix.clone(), CompareOp::Equal, 0)
                                    .with_prefix();
                            Txn::new().when([free]).and_then(grant).or_else(otherwise)
                        }
                    };
                    let leases: Vec<Arc<Session>> = std::iter::once(session.clone())
                        .chain(waiters.clone().filter(|_| queue))
                        .collect();
                    let reply = self.run_txn(&req.key, txn, &leases).await?;
                    // A put's revision (the transaction's) is our entry's create
                    // revision: no need to read it back. Else the reads are
                    // [ours, head], after a put [head].
                    let put = reply.put_depth.and_then(|depth| leases.get(depth));
                    let mine = match put {
                        Some(lease) => Some(Mine {
                            revision: reply.revision,
                            token: reply.revision,
                            lease: lease.id,
                            put_now: true,
                        }),
                        None => reply
                            .ranges
                            .first()
                            .and_then(|ours| ours.first())
                            .map(Mine::of),
                    };
                    let head = reply.head();
                    if mine.is_some() {
                        break (mine, head, Some(reply.revision));
                    }
                    guard = None;
                    if req.share != Share::Exclusive && !queue {
                        let shares = admission::shares_of(&head);
                        match admission::standing(&shares, None, req.share) {
                            Standing::Mismatch { held } => {
                                self.forget_unwritten(owner);
                                return Err(AttemptError::Mismatch(held));
                            }
                            Standing::Granted if guarded_puts < GUARDED_PUTS => {
                                guarded_puts += 1;
                                guard = Some(reply.revision);
                                continue;
                            }
                            _ => {}
                        }
                    }
                    if req.will_wait && !queue {
                        if waiters.is_none() {
                            waiters = Some(self.waiter_session().await?);
                        }
                        queue = true;
                        continue;
                    }
                    break (None, head, Some(reply.revision));
                }
            }
        };
        let shares = admission::shares_of(&head);
        if let (Share::Permit { .. }, Some(revision)) = (req.share, whole_head_at) {
            let whole = (shares.len() as i64) < admission::head_len(req.share);
            let seen = admission::Seen::of(&shares, whole, revision);
            self.state().saw(&req.key, seen);
        }
        let holder = head.first().map(|kv| {
            let token = encode::entry_token(kv.value(), kv.mod_revision());
            encode::holder_info(token, kv.value(), SystemTime::now(), None)
        });
        let Some(mine) = mine else {
            // A single attempt that found the key taken: nothing was written.
            self.forget_unwritten(owner);
            return Ok(Attempt::Contended { holder });
        };
        let position = head
            .iter()
            .position(|kv| kv.create_revision() == mine.revision);
        let standing = if told_by_wait.is_some() {
            Standing::Granted
        } else {
            admission::standing(&shares, position, req.share)
        };
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
        match standing {
            Standing::Granted => {}
            Standing::Waiting => return Ok(Attempt::Contended { holder }),
            // Our queued entry is deleted by the caller.
            Standing::Mismatch { held } => return Err(AttemptError::Mismatch(held)),
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
        let mut token = mine.token;
        let moved = mine.lease != session.id;
        if moved || !mine.put_now {
            // Granted in the queue: the grant moves our key onto the lease
            // of its TTL, guaranteed to outlive the validity deadline. A put
            // keeps the create revision (our identity), and its revision is
            // the fencing token: grants are numbered in the order they are
            // made, also when several permits came free at once. Granted
            // before (asked again): the put writes the new deadline, and the
            // token it keeps.
            let put = match moved {
                true => put_on(session.id, &value),
                false => {
                    let again = Put::Again(mine.token);
                    let value = encode::entry_value(req.ttl, deadline, req.share, again, metadata);
                    TxnOp::put(
                        etcd_key.clone(),
                        value,
                        Some(PutOptions::new().with_lease(session.id)),
                    )
                }
            };
            let same = Compare::create_revision(etcd_key.clone(), CompareOp::Equal, mine.revision);
            let txn = Txn::new().when([same]).and_then([put]);
            let reply = self
                .run_txn(&req.key, txn, std::slice::from_ref(&session))
                .await?;
            if reply.put_depth.is_none() {
                // Gone since the read (its lease expired): the next attempt
                // queues again.
                return Ok(Attempt::Contended { holder: None });
            }
            if moved {
                token = reply.revision;
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
            fencing_token: u64::try_from(token).unwrap_or_default(),
        })
    }

    /// Forgets the entry of an attempt that wrote nothing.
    fn forget_unwritten(&self, owner: crate::lease::OwnerToken) {
        let mut state = self.state();
        if state.entries.get(&owner).is_some_and(|e| !e.releasing) {
            state.entries.remove(&owner);
        }
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
