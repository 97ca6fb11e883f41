//! The Lua scripts (the `.lua` files beside this one), how they are
//! invoked and how their replies are read.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use ::redis::cluster_routing::Slot;
use ::redis::{RedisError, Script, Value};

use super::NAME;
use super::builder::Shared;
use super::conn::Topology;
use super::keys::Names;
use crate::backend::{AcquireRequest, Attempt, Renewal};
use crate::error::{Error, Result};
use crate::holder::{HolderInfo, Holders};
use crate::key::LockKey;
use crate::lease::{LeaseRef, OwnerToken, Share};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("acquire.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("extend.lua")));
static EXTEND_ALL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("extend_all.lua")));
static EXTEND_PERMITS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("extend_permits.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
static HOLDERS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("holders.lua")));
pub(super) static TURN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("turn.lua")));
/// On a cluster, the scripts that publish do so on the key's shard
/// channel (`SPUBLISH`): a plain `PUBLISH` reaches every node of the
/// cluster, a shard channel only the nodes of its slot, where the waiters
/// subscribe (`SSUBSCRIBE`).
static ACQUIRE_SHARDED: LazyLock<Script> = LazyLock::new(|| sharded(include_str!("acquire.lua")));
static RELEASE_SHARDED: LazyLock<Script> = LazyLock::new(|| sharded(include_str!("release.lua")));

fn sharded(script: &str) -> Script {
    debug_assert!(script.contains("'PUBLISH'"));
    Script::new(&script.replace("'PUBLISH'", "'SPUBLISH'"))
}

/// Every script, for loading them up front.
pub(super) static ALL: [&LazyLock<Script>; 9] = [
    &ACQUIRE,
    &EXTEND,
    &EXTEND_ALL,
    &EXTEND_PERMITS,
    &RELEASE,
    &HOLDERS,
    &TURN,
    &ACQUIRE_SHARDED,
    &RELEASE_SHARDED,
];

/// Locks per `extend_all.lua` call: a call blocks the server for about
/// 1 µs per lock, so a chunk stays well under a millisecond.
const EXTEND_CHUNK: usize = 256;

/// Bound on [`Queued`]: past it the hint is forgotten (a forgotten owner
/// costs one extra round trip, never a wrong answer).
const QUEUED_HINT_MAX: usize = 65_536;

/// The owners whose last attempt left them in a key's queue: their next
/// attempt goes straight to the full acquire (four keys). Everyone else
/// tries the lean one (lock and counter only), which answers -1 when the
/// queue must be consulted. A hint only: either way the script decides.
#[derive(Default)]
pub(super) struct Queued(Mutex<HashSet<OwnerToken>>);

impl Queued {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<OwnerToken>> {
        // Every update is one insert or remove.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, owner: OwnerToken) -> bool {
        self.set().contains(&owner)
    }

    fn insert(&self, owner: OwnerToken) {
        let mut set = self.set();
        if set.len() >= QUEUED_HINT_MAX {
            set.clear();
        }
        set.insert(owner);
    }

    /// Forgets `owner`; whether it was there.
    fn remove(&self, owner: OwnerToken) -> bool {
        self.set().remove(&owner)
    }
}

/// What one `acquire.lua` call answered.
enum Reply {
    Attempt(Attempt),
    /// Lean call, but the queue or the permits must be consulted: ask
    /// again in full.
    NeedsQueue,
    /// A permit was asked for with another limit than the live permits'.
    Mismatch(u32),
}

impl Shared {
    fn sharded(&self) -> bool {
        self.conn.topology() == Topology::Cluster
    }

    fn acquire_script(&self) -> &'static Script {
        if self.sharded() {
            &ACQUIRE_SHARDED
        } else {
            &ACQUIRE
        }
    }

    fn release_script(&self) -> &'static Script {
        if self.sharded() {
            &RELEASE_SHARDED
        } else {
            &RELEASE
        }
    }

    /// One attempt; a grant is handed out only once the replicas asked for
    /// acknowledged it, else it is released again and the attempt fails
    /// (transiently: the engine's retry rules apply).
    pub(super) async fn acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let attempt = self.attempt(req).await?;
        if let Attempt::Granted { .. } = attempt
            && self.replicas.wanted() > 0
            && let Err(e) = self
                .acknowledge("acquire", &req.key, &Names::of(&req.key).lock())
                .await
        {
            if let Err(undo) = self.release(&req.lease()).await {
                tracing::debug!(error = %undo, key = %req.key, "distlock: releasing an unacknowledged grant failed; it expires with its TTL");
            }
            return Err(e);
        }
        Ok(attempt)
    }

    async fn attempt(&self, req: &AcquireRequest) -> Result<Attempt> {
        let names = Names::of(&req.key);
        let (lock, fence) = (names.lock(), names.fence());
        let owner = req.owner.to_hex();
        let limit = req.share.limit();
        // A permit always needs the full call: its fellow holders are kept
        // beside the lock.
        let mut full = limit.is_some() || (req.will_wait && self.queued.contains(req.owner));
        loop {
            let mut call = self.acquire_script().key(&lock);
            call.key(&fence);
            if full {
                call.key(names.queue())
                    .key(names.waiting())
                    .key(names.expiries())
                    .key(names.permits());
            }
            call.arg(&owner).arg(millis(req.ttl));
            match &req.metadata {
                Some(m) => call.arg(format!("={m}")),
                None => call.arg("-"),
            };
            call.arg(u8::from(req.will_wait));
            if full {
                call.arg(millis(self.waiter_lease));
                match limit {
                    Some(limit) => call.arg(limit),
                    None => call.arg("x"),
                };
            }
            // Every grant is published on it, for observers.
            call.arg(names.channel());
            let reply: Value = call
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| self.err("acquire", &req.key, e))?;
            match (acquire_reply(&reply)?, limit) {
                (Reply::NeedsQueue, _) if !full => full = true,
                (Reply::Mismatch(held), Some(asked)) => {
                    return Err(Error::limit_mismatch(&req.key, asked, held));
                }
                (Reply::NeedsQueue | Reply::Mismatch(_), _) => {
                    return Err(unexpected("acquire", std::slice::from_ref(&reply)));
                }
                (Reply::Attempt(attempt), _) => {
                    match attempt {
                        Attempt::Granted { .. } => {
                            self.queued.remove(req.owner);
                        }
                        // A full call that did not grant queued a waiter.
                        Attempt::Contended { .. } if full && req.will_wait => {
                            self.queued.insert(req.owner);
                        }
                        Attempt::Contended { .. } => {}
                    }
                    return Ok(attempt);
                }
            }
        }
    }

    pub(super) async fn extend(&self, renewal: &Renewal) -> Result<()> {
        let lease = &renewal.lease;
        if lease.share != Share::Exclusive {
            let mut done = self.extend_chunk(true, &[renewal]).await;
            return done.pop().unwrap_or_else(|| held_if(false, &lease.key));
        }
        let lock = Names::of(&lease.key).lock();
        let done: i64 = EXTEND
            .key(&lock)
            .arg(lease.owner.to_hex())
            .arg(millis(renewal.ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("extend", &lease.key, e))?;
        held_if(done == 1, &lease.key)?;
        self.acknowledge("extend", &lease.key, &lock).await
    }

    /// One `extend_all.lua` (locks) or `extend_permits.lua` (permits) call
    /// per [`EXTEND_CHUNK`] renewals, all sent at once over the command
    /// connection; the answers go back in the renewals' order. On one
    /// server the keys of one call may lie in any slot; on a cluster each
    /// call holds the keys of one slot.
    pub(super) async fn extend_all(&self, renewals: &[Renewal]) -> Vec<Result<()>> {
        let mut groups: HashMap<(bool, Option<Slot>), Vec<usize>> = HashMap::new();
        for (i, r) in renewals.iter().enumerate() {
            let slot = self
                .sharded()
                .then(|| Slot::for_key(Names::of(&r.lease.key).lock()));
            let permit = r.lease.share != Share::Exclusive;
            groups.entry((permit, slot)).or_default().push(i);
        }
        let chunks = groups
            .into_iter()
            .map(|((permits, _), places)| (permits, places))
            .flat_map(|(permits, places)| {
                let chunks: Vec<Vec<usize>> =
                    places.chunks(EXTEND_CHUNK).map(<[usize]>::to_vec).collect();
                chunks.into_iter().map(move |places| (permits, places))
            })
            .map(|(permits, places)| async move {
                let chunk: Vec<&Renewal> = places.iter().map(|&i| &renewals[i]).collect();
                (places, self.extend_chunk(permits, &chunk).await)
            });
        let mut results: Vec<Option<Result<()>>> = renewals.iter().map(|_| None).collect();
        for (places, done) in futures::future::join_all(chunks).await {
            for (i, result) in places.into_iter().zip(done) {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .zip(renewals)
            .map(|(result, r)| result.unwrap_or_else(|| held_if(false, &r.lease.key)))
            .collect()
    }

    /// Extends `chunk`, all locks or all permits, in one script call.
    async fn extend_chunk(&self, permits: bool, chunk: &[&Renewal]) -> Vec<Result<()>> {
        let mut call = if permits {
            EXTEND_PERMITS.prepare_invoke()
        } else {
            EXTEND_ALL.prepare_invoke()
        };
        for r in chunk {
            let names = Names::of(&r.lease.key);
            call.key(names.lock());
            if permits {
                call.key(names.expiries()).key(names.permits());
            }
        }
        for r in chunk {
            call.arg(r.lease.owner.to_hex());
        }
        for r in chunk {
            call.arg(millis(r.ttl));
        }
        let reply: std::result::Result<Vec<i64>, RedisError> =
            call.invoke_async(&mut self.conn()).await;
        match reply {
            Ok(done) if done.len() == chunk.len() => {
                // One WAIT covers the whole call: it is one write.
                let acked = match chunk.first() {
                    Some(r) if done.contains(&1) => {
                        let name = Names::of(&r.lease.key).lock();
                        self.acknowledge("extend", &r.lease.key, &name).await
                    }
                    _ => Ok(()),
                };
                chunk
                    .iter()
                    .zip(done)
                    .map(|(r, done)| {
                        held_if(done == 1, &r.lease.key)?;
                        acked.as_ref().map_err(Error::repeat).copied()
                    })
                    .collect()
            }
            Ok(done) => chunk
                .iter()
                .map(|_| {
                    Err(Error::backend(
                        NAME,
                        "extend",
                        format!(
                            "the extend script answered {} results for {} leases",
                            done.len(),
                            chunk.len()
                        ),
                    ))
                })
                .collect(),
            Err(e) => chunk
                .iter()
                .map(|r| Err(self.err("extend", &r.lease.key, e.clone())))
                .collect(),
        }
    }

    pub(super) async fn release(&self, lease: &LeaseRef) -> Result<()> {
        // A waiter giving up also takes its lease out of the leases hash
        // (the fourth key), so that it leaves nothing behind. Passed on
        // every release, not only when this backend knows the owner
        // queued: a waiter dropped after the store queued it but before
        // its reply was read is queued unbeknown to us (a holder's release
        // never reads the key). A permit also needs the permits' two keys.
        self.queued.remove(lease.owner);
        let permit = lease.share != Share::Exclusive;
        let names = Names::of(&lease.key);
        let mut call = self.release_script().key(names.lock());
        call.key(names.fence())
            .key(names.queue())
            .key(names.waiting());
        if permit {
            call.key(names.expiries()).key(names.permits());
        }
        let reply: i64 = call
            .arg(lease.owner.to_hex())
            .arg(names.channel())
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("release", &lease.key, e))?;
        held_if(reply >= 1, &lease.key)
    }

    /// The key's holder: a lock's, or the latest grant of its permits.
    pub(super) async fn inspect(&self, key: &LockKey) -> Result<Option<HolderInfo>> {
        Ok(self.read_holders(key, false).await?.holders.pop())
    }

    /// Every holder of the key, oldest grant first.
    pub(super) async fn holders(&self, key: &LockKey) -> Result<Holders> {
        let mut holders = self.read_holders(key, true).await?;
        // Tokens increase with every grant: their order is the grants'.
        holders.holders.sort_by_key(|h| h.fencing_token);
        Ok(holders)
    }

    async fn read_holders(&self, key: &LockKey, every: bool) -> Result<Holders> {
        let names = Names::of(key);
        let reply: Vec<Value> = HOLDERS
            .key(names.lock())
            .key(names.expiries())
            .key(names.permits())
            .arg(u8::from(every))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("inspect", key, e))?;
        match reply.as_slice() {
            [] => Ok(Holders::none()),
            [token, pttl, metadata] => Ok(Holders::exclusive(holder(token, pttl, metadata)?)),
            [limit, Value::Array(items)] => {
                let holders = items
                    .chunks(3)
                    .map(|item| match item {
                        [token, pttl, metadata] => holder(token, pttl, metadata),
                        other => Err(unexpected("inspect", other)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let limit: u32 = ::redis::from_redis_value_ref(limit)
                    .map_err(|e| Error::backend(NAME, "decode", e))?;
                // A marker outlives its last permit by under a millisecond.
                Ok(if holders.is_empty() {
                    Holders::none()
                } else {
                    Holders::permits(limit, holders)
                })
            }
            other => Err(unexpected("inspect", other)),
        }
    }
}

/// Reads `acquire.lua`'s answer (see the script's header).
fn acquire_reply(reply: &Value) -> Result<Reply> {
    match reply {
        Value::Int(-1) => Ok(Reply::NeedsQueue),
        Value::Int(token) if *token > 0 => Ok(Reply::Attempt(Attempt::Granted {
            fencing_token: token.unsigned_abs(),
        })),
        Value::Array(items) => match items.as_slice() {
            // Free, but another waiter is first.
            [] => Ok(Reply::Attempt(Attempt::Contended { holder: None })),
            [held] => ::redis::from_redis_value_ref(held)
                .map(Reply::Mismatch)
                .map_err(|e| Error::backend(NAME, "decode", e)),
            [token, pttl, metadata] => Ok(Reply::Attempt(Attempt::Contended {
                holder: Some(holder(token, pttl, metadata)?),
            })),
            other => Err(unexpected("acquire", other)),
        },
        other => Err(unexpected("acquire", std::slice::from_ref(other))),
    }
}

fn millis(d: Duration) -> u64 {
    // Round up: the store may keep a lock a little longer than asked,
    // never shorter (and a sub-millisecond TTL must not become 0).
    u64::try_from(d.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

fn int(v: &Value) -> Option<i64> {
    ::redis::from_redis_value_ref(v).ok()
}

fn token_of(v: &Value) -> Result<u64> {
    ::redis::from_redis_value_ref(v).map_err(|e| Error::backend(NAME, "decode", e))
}

fn holder(token: &Value, pttl: &Value, metadata: &Value) -> Result<HolderInfo> {
    let mut info = HolderInfo::new(token_of(token)?);
    if let Some(ms) = int(pttl).and_then(|ms| u64::try_from(ms).ok()) {
        info = info.expires_in(Duration::from_millis(ms));
    }
    // Stored as "-" (none) or "=" and the metadata, as acquire.lua says.
    let stored: String =
        ::redis::from_redis_value_ref(metadata).map_err(|e| Error::backend(NAME, "decode", e))?;
    Ok(info.metadata(stored.strip_prefix('=').map(str::to_owned)))
}

fn unexpected(op: &'static str, reply: &[Value]) -> Error {
    Error::backend(
        NAME,
        op,
        format!("unexpected reply from the {op} script: {reply:?}"),
    )
}

fn held_if(held: bool, key: &LockKey) -> Result<()> {
    if held {
        Ok(())
    } else {
        Err(Error::NotHeld {
            key: key.key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
    }
}
