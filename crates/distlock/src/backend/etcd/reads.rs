//! What the backend reads of a key's queue without writing: its holders
//! (`inspect`, `holders`), and for a waiter, what to watch until its turn.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use etcd_client::{GetOptions, KeyValue, SortOrder, SortTarget};
use tokio::time::Instant;

use super::admission::{self, Awaited, Standing};
use super::errors::backend_error;
use super::watch::{Change, Event};
use super::{Inner, encode};
use crate::backend::AcquireRequest;
use crate::error::Result;
use crate::holder::{HolderInfo, Holders};
use crate::key::LockKey;
use crate::lease::Share;

impl Inner {
    /// Entries under `key`'s prefix in create-revision order (the oldest
    /// `limit`, or all for `None`; with `before`, the newest of those
    /// created before it, still oldest first), and the revision of the read.
    async fn queue(
        &self,
        key: &LockKey,
        limit: Option<i64>,
        before: Option<i64>,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let order = if before.is_some() {
            SortOrder::Descend
        } else {
            SortOrder::Ascend
        };
        let mut options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, order)
            .with_limit(limit.unwrap_or(0));
        if let Some(revision) = before {
            options = options.with_max_create_revision(revision - 1);
        }
        let mut client = self.client.clone();
        let resp = client
            .get(encode::lock_prefix(key), Some(options))
            .await
            .map_err(|e| self.err("inspect", Some(key), e))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.seen.fetch_max(revision, Ordering::SeqCst);
        let mut kvs = resp.kvs().to_vec();
        if before.is_some() {
            kvs.reverse();
        }
        Ok((kvs, revision))
    }

    /// The entries holding `key`, oldest first.
    async fn holding(&self, key: &LockKey) -> Result<Vec<KeyValue>> {
        self.ensure_open()?;
        let (mut kvs, _) = self.queue(key, None, None).await?;
        kvs.truncate(admission::holders(admission::shares_of(&kvs)));
        // Admitted but not yet granted: no holder until its grant's put.
        kvs.retain(|kv| !encode::entry_queued(kv.value()));
        Ok(kvs)
    }

    /// How long etcd keeps lease `id`, which is what counts once the
    /// holder's process is gone (whole seconds, rounded down by etcd);
    /// `None` if it cannot say.
    async fn lease_left(&self, id: i64) -> Option<Duration> {
        if id == 0 {
            return None;
        }
        let mut client = self.client.clone();
        match client.lease_time_to_live(id, None).await {
            // Negative: expired or revoked since the read, the key with it.
            Ok(lease) => Some(Duration::from_secs(lease.ttl().max(0) as u64)),
            // The deadline written with the grant still bounds it.
            Err(e) => {
                tracing::debug!(error = %e, "distlock: no etcd lease time left for inspect");
                None
            }
        }
    }

    /// What `inspect` reports of `kv`, whose lease has `lease_left`.
    fn info(kv: &KeyValue, lease_left: Option<Duration>) -> HolderInfo {
        // The revision of its grant's put: its fencing token.
        let token = encode::entry_token(kv.value(), kv.mod_revision());
        encode::holder_info(token, kv.value(), SystemTime::now(), lease_left)
    }

    /// The holder of `key`: for permits, the latest grant.
    pub(super) async fn inspect(&self, key: &LockKey) -> Result<Option<HolderInfo>> {
        let holding = self.holding(key).await?;
        let latest = |kv: &&KeyValue| encode::entry_token(kv.value(), kv.mod_revision());
        let Some(kv) = holding.iter().max_by_key(latest) else {
            return Ok(None);
        };
        let left = self.lease_left(kv.lease()).await;
        Ok(Some(Self::info(kv, left)))
    }

    /// Every holder of `key`, oldest first, with their limit when permits.
    pub(super) async fn holders(&self, key: &LockKey) -> Result<Holders> {
        let holding = self.holding(key).await?;
        let Some(share) = holding.first().map(admission::share_of) else {
            return Ok(Holders::none());
        };
        let mut leases: Vec<i64> = holding.iter().map(|kv| kv.lease()).collect();
        leases.sort_unstable();
        leases.dedup();
        let lefts = futures::future::join_all(leases.iter().map(|id| self.lease_left(*id))).await;
        let left: HashMap<i64, Option<Duration>> = leases.into_iter().zip(lefts).collect();
        let mut infos: Vec<HolderInfo> = holding
            .iter()
            .map(|kv| Self::info(kv, left.get(&kv.lease()).copied().flatten()))
            .collect();
        Ok(match share {
            Share::Permit { limit } => Holders::permits(limit, infos),
            // An exclusive entry holds alone.
            Share::Exclusive => Holders::exclusive(infos.swap_remove(0)),
        })
    }

    /// Returns when what stands between `req`'s queued entry and the key
    /// changed (see [`admission::awaited`]); if it is not queued, when an
    /// entry of the key is deleted (the holder's, for a lock).
    ///
    /// When it read every entry ahead of ours, what it sees deleted tells
    /// whether ours is granted now (entries ahead only ever leave): if so,
    /// it marks the entry so, and the next attempt takes the grant without
    /// reading the queue again.
    async fn wait_for_turn(&self, req: &AcquireRequest) -> Result<()> {
        let queued = self
            .state()
            .entries
            .get(&req.owner)
            .filter(|e| !e.granted)
            .and_then(|e| e.revision);
        let prefix = encode::lock_prefix(&req.key);
        let Some(ours) = queued else {
            let (first, revision) = self.queue(&req.key, Some(1), None).await?;
            let Some(first) = first.first() else {
                return Ok(()); // Nobody there: try now.
            };
            let (watched, event) = match req.share {
                Share::Exclusive => (first.key().to_vec(), Event::Deleted),
                Share::Permit { .. } => (prefix, Event::DeletedUnder),
            };
            return self.watch(watched, event, revision).await.map(|_| ());
        };
        // One more than judging our standing needs: fewer back means all.
        let nearest = admission::head_len(req.share) + 1;
        let (ahead, revision) = self.queue(&req.key, Some(nearest), Some(ours)).await?;
        let all_ahead = (ahead.len() as i64) < nearest;
        let (watched, event) = match admission::awaited(&admission::shares_of(&ahead), req.share) {
            Awaited::Nothing => {
                if all_ahead {
                    self.granted_in_queue(req, ours);
                }
                return Ok(());
            }
            Awaited::Deleted(at) => (ahead[at].key().to_vec(), Event::Deleted),
            Awaited::Changed(at) => (ahead[at].key().to_vec(), Event::Changed),
            Awaited::AnyDeletion => (prefix, Event::DeletedUnder),
        };
        let change = self.watch(watched, event, revision).await?;
        if let (true, Change::Deleted(gone)) = (all_ahead, change) {
            let left: Vec<Share> = ahead
                .iter()
                .filter(|kv| kv.key() != gone.as_slice())
                .map(admission::share_of)
                .collect();
            let granted = admission::standing(&left, None, req.share) == Standing::Granted;
            if left.len() < ahead.len() && granted {
                self.granted_in_queue(req, ours);
            }
        }
        Ok(())
    }

    /// Watches for `event` on `key` from `revision` on: a change since the
    /// read at `revision` is replayed.
    async fn watch(&self, key: Vec<u8>, event: Event, revision: i64) -> Result<Change> {
        self.watches
            .happened(key, event, revision)
            .await
            .ok_or_else(|| backend_error("watch", "the watch ended without a change"))
    }

    /// Marks `req`'s queued entry, created at `ours`, as granted by the
    /// queue (its next attempt moves it onto its lease without a read).
    fn granted_in_queue(&self, req: &AcquireRequest, ours: i64) {
        let mut state = self.state();
        if let Some(entry) = state.entries.get_mut(&req.owner)
            && entry.revision == Some(ours)
            && !entry.granted
        {
            entry.granted_in_queue = Some(ours);
        }
    }

    /// `wait_for_turn` bounded by `until`. Returns early only when what it
    /// watched changed: when etcd cannot be read or watched, it waits until
    /// `until`, so a failing store is not polled in a tight loop.
    pub(super) async fn wait_until(&self, req: &AcquireRequest, until: Instant) -> Result<()> {
        let wait = self.wait_for_turn(req);
        if let Ok(Ok(())) = tokio::time::timeout_at(until, wait).await {
            return Ok(());
        }
        tokio::time::sleep_until(until).await;
        Ok(())
    }

    /// Returns when anything under `key`'s prefix changes — a queue entry
    /// or grant put, an entry deleted by a release, an expiry or the
    /// reaper — or at `until`. The watch starts just after the highest
    /// revision this backend has seen when it is first polled, so an
    /// observer that polls it once before reading the key is woken by
    /// every change its read did not see; changes its read did see may wake
    /// it once more. Before any revision was seen it returns at once (it
    /// cannot tell). When etcd cannot be watched (the stream broke, the
    /// revision was compacted) it sleeps until `until`: the observer's
    /// polling takes over, and a failing store is not read in a tight loop.
    pub(super) async fn watch_holders(&self, key: &LockKey, until: Instant) -> Result<()> {
        let seen = self.seen.load(Ordering::SeqCst);
        if seen == 0 {
            return Ok(());
        }
        let prefix = encode::lock_prefix(key);
        let change = self.watches.happened(prefix, Event::ChangedUnder, seen);
        if let Ok(Some(_)) = tokio::time::timeout_at(until, change).await {
            return Ok(());
        }
        tokio::time::sleep_until(until).await;
        Ok(())
    }
}
