//! Extends: a read of the key back (still ours, same create revision) and a
//! lease guaranteed to outlive the lock; a batch reads all its keys in a few
//! read-only transactions and checks each lease once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{KeyValue, Txn, TxnOp, TxnOpResponse};
use tokio::time::Instant;

use super::errors::{backend_error, not_held};
use super::session::{LeaseTrouble, Session};
use super::{Inner, NAME};
use crate::backend::Renewal;
use crate::error::{Error, Result};
use crate::lease::LeaseRef;

/// etcd's default `--max-txn-ops`: reads per transaction.
const READS_PER_TXN: usize = 128;

/// What an extend checks for one entry, taken from the backend's state.
struct Claim {
    etcd_key: Vec<u8>,
    revision: i64,
    session: Arc<Session>,
}

impl Inner {
    pub(super) async fn extend(&self, renewal: &Renewal) -> Result<()> {
        self.ensure_open()?;
        let lease = &renewal.lease;
        let now = Instant::now();
        let claim = self.claim_for_extend(lease, renewal.ttl, now)?;
        let mut client = self.client.clone();
        let still_ours = async {
            let resp = client
                .get(claim.etcd_key.clone(), None)
                .await
                .map_err(|e| self.err("extend", Some(&lease.key), e))?;
            ours(lease, &claim, resp.kvs().first())
        };
        let lease_alive = lease_alive(&claim.session, renewal, now + renewal.ttl);
        let result = tokio::try_join!(still_ours, lease_alive).map(|_| ());
        self.settle_extend(lease, now, &result);
        result
    }

    /// Extends a batch: each entry's lease checked once, the keys read back
    /// in read-only transactions of up to [`READS_PER_TXN`] reads.
    pub(super) async fn extend_all(&self, renewals: &[Renewal]) -> Vec<Result<()>> {
        if let Err(e) = self.ensure_open() {
            return renewals.iter().map(|_| Err(e.repeat())).collect();
        }
        let now = Instant::now();
        let claims: Vec<Result<Claim>> = renewals
            .iter()
            .map(|r| self.claim_for_extend(&r.lease, r.ttl, now))
            .collect();
        // Each session once, for the longest TTL that needs it.
        let mut sessions: HashMap<i64, (Arc<Session>, Instant, &Renewal)> = HashMap::new();
        for (claim, renewal) in claims.iter().zip(renewals) {
            if let Ok(claim) = claim {
                let target = now + renewal.ttl;
                let entry = sessions
                    .entry(claim.session.id)
                    .or_insert_with(|| (claim.session.clone(), target, renewal));
                if target > entry.1 {
                    (entry.1, entry.2) = (target, renewal);
                }
            }
        }
        let leases = futures::future::join_all(sessions.values().map(
            |(session, target, renewal)| async move {
                (session.id, lease_alive(session, renewal, *target).await)
            },
        ));
        let wanted: Vec<&Claim> = claims.iter().filter_map(|c| c.as_ref().ok()).collect();
        let reads = futures::future::join_all(
            wanted
                .chunks(READS_PER_TXN)
                .map(|chunk| self.read_back(chunk)),
        );
        let (leases, reads) = tokio::join!(leases, reads);
        let leases: HashMap<i64, Result<()>> = leases.into_iter().collect();
        let mut read = reads.into_iter().flat_map(|chunk| match chunk {
            Ok(kvs) => kvs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err((e, n)) => (0..n).map(|_| Err(e.repeat())).collect(),
        });
        let mut results = Vec::with_capacity(renewals.len());
        for (claim, renewal) in claims.into_iter().zip(renewals) {
            let lease = &renewal.lease;
            let result = match claim {
                Err(e) => Err(e),
                Ok(claim) => {
                    let kv = read.next().unwrap_or_else(|| {
                        Err(backend_error(
                            "extend",
                            "a batch read answered too few keys",
                        ))
                    });
                    match (kv, &leases[&claim.session.id]) {
                        (Err(e), _) => Err(e),
                        (Ok(kv), Ok(())) => ours(lease, &claim, kv.as_ref()),
                        (Ok(_), Err(e)) if e.is_not_held() => Err(not_held(&lease.key)),
                        (Ok(_), Err(e)) => Err(e.repeat()),
                    }
                }
            };
            self.settle_extend(lease, now, &result);
            results.push(result);
        }
        results
    }

    /// Reads `claims`' keys in one read-only transaction (not a raft
    /// proposal); on failure, the error and how many keys it was for.
    async fn read_back(&self, claims: &[&Claim]) -> Result<Vec<Option<KeyValue>>, (Error, usize)> {
        let txn = Txn::new().and_then(
            claims
                .iter()
                .map(|c| TxnOp::get(c.etcd_key.clone(), None))
                .collect::<Vec<_>>(),
        );
        let mut client = self.client.clone();
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| (self.err("extend", None, e), claims.len()))?;
        let kvs: Vec<Option<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            })
            .collect();
        if kvs.len() != claims.len() {
            return Err((
                Error::backend(NAME, "extend", "a batch read answered too few keys"),
                claims.len(),
            ));
        }
        Ok(kvs)
    }

    /// The entry to extend, with its TTL moved on before the read, so that
    /// the reaper cannot delete it behind us; NotHeld if it is not granted.
    fn claim_for_extend(&self, lease: &LeaseRef, ttl: Duration, now: Instant) -> Result<Claim> {
        let mut state = self.state();
        let Some(entry) = state.entries.get_mut(&lease.owner) else {
            return Err(not_held(&lease.key));
        };
        let other_mode = entry.share != lease.share;
        if other_mode || !entry.granted || entry.releasing || entry.reap_at <= now {
            return Err(not_held(&lease.key));
        }
        entry.reap_at = entry.reap_at.max(now + ttl);
        Ok(Claim {
            etcd_key: entry.etcd_key.clone(),
            revision: entry.revision.unwrap_or_default(),
            session: entry.session.clone(),
        })
    }

    /// After an extend that found the key gone: lets the reaper forget the
    /// entry (its guarded delete is a no-op).
    fn settle_extend(&self, lease: &LeaseRef, now: Instant, result: &Result<()>) {
        if !matches!(result, Err(e) if e.is_not_held()) {
            return;
        }
        let mut state = self.state();
        let mut wake = false;
        // An extend in another mode says nothing of the lease.
        let ours = state
            .entries
            .get_mut(&lease.owner)
            .filter(|e| e.share == lease.share);
        if let Some(entry) = ours {
            entry.granted = false;
            entry.reap_at = now;
            wake = Self::schedule(&mut state, lease.owner, now);
        }
        drop(state);
        if wake {
            self.reaper_wake.notify_one();
        }
    }
}

/// Whether the key read back is still the entry granted to us.
fn ours(lease: &LeaseRef, claim: &Claim, kv: Option<&KeyValue>) -> Result<()> {
    match kv {
        Some(kv) if kv.create_revision() == claim.revision => Ok(()),
        _ => Err(not_held(&lease.key)),
    }
}

/// Waits until `session`'s lease is guaranteed, under the renewal's
/// validity policy, to live until `target`.
async fn lease_alive(session: &Session, renewal: &Renewal, target: Instant) -> Result<()> {
    match session.ensure_until(target, &renewal.validity).await {
        Ok(()) => Ok(()),
        Err(LeaseTrouble::Dead) => Err(not_held(&renewal.lease.key)),
        Err(LeaseTrouble::TooShort) => Err(backend_error(
            "extend",
            "the lease TTL is shorter than the lock TTL",
        )),
    }
}
