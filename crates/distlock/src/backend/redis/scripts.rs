//! The Lua scripts (the `.lua` files beside this one), how they are
//! invoked and how their replies are read.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use ::redis::{RedisError, Script, Value};

use super::NAME;
use super::builder::Shared;
use super::keys::Names;
use crate::backend::{AcquireRequest, Attempt, Renewal};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::LockKey;
use crate::lease::{LeaseRef, OwnerToken};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("acquire.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("extend.lua")));
static EXTEND_ALL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("extend_all.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("inspect.lua")));
pub(super) static TURN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("turn.lua")));

/// Every script, for loading them up front.
pub(super) static ALL: [&LazyLock<Script>; 6] =
    [&ACQUIRE, &EXTEND, &EXTEND_ALL, &RELEASE, &INSPECT, &TURN];

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
    /// Lean call, but the queue must be consulted: ask again in full.
    NeedsQueue,
}

impl Shared {
    pub(super) async fn acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let names = Names::of(&req.key);
        let (lock, fence) = (names.lock(), names.fence());
        let owner = req.owner.to_hex();
        let mut full = req.will_wait && self.queued.contains(req.owner);
        loop {
            let mut call = ACQUIRE.key(&lock);
            call.key(&fence);
            if full {
                call.key(names.queue()).key(names.waiting());
            }
            call.arg(&owner).arg(millis(req.ttl));
            match &req.metadata {
                Some(m) => call.arg(format!("={m}")),
                None => call.arg("-"),
            };
            call.arg(u8::from(req.will_wait));
            if full {
                call.arg(millis(self.waiter_lease));
            }
            let reply: Value = call
                .invoke_async(&mut self.conn())
                .await
                .map_err(|e| self.err("acquire", &req.key, e))?;
            match acquire_reply(&reply)? {
                Reply::NeedsQueue if !full => full = true,
                Reply::NeedsQueue => {
                    return Err(unexpected("acquire", std::slice::from_ref(&reply)));
                }
                Reply::Attempt(attempt) => {
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

    pub(super) async fn extend(&self, lease: &LeaseRef, ttl: Duration) -> Result<()> {
        let done: i64 = EXTEND
            .key(Names::of(&lease.key).lock())
            .arg(lease.owner.to_hex())
            .arg(millis(ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("extend", &lease.key, e))?;
        held_if(done == 1, &lease.key)
    }

    /// One `extend_all.lua` call per [`EXTEND_CHUNK`] renewals, all sent
    /// at once over the command connection. On a single server the keys
    /// of one call may lie in any slot; a Redis Cluster client would have
    /// to group them by node first.
    pub(super) async fn extend_all(&self, renewals: &[Renewal]) -> Vec<Result<()>> {
        let chunks = renewals.chunks(EXTEND_CHUNK).map(|chunk| async move {
            let mut call = EXTEND_ALL.prepare_invoke();
            for r in chunk {
                call.key(Names::of(&r.lease.key).lock());
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
                Ok(done) if done.len() == chunk.len() => chunk
                    .iter()
                    .zip(done)
                    .map(|(r, done)| held_if(done == 1, &r.lease.key))
                    .collect::<Vec<_>>(),
                Ok(done) => chunk
                    .iter()
                    .map(|_| {
                        Err(Error::backend(
                            NAME,
                            "extend",
                            format!(
                                "the extend_all script answered {} results for {} locks",
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
        });
        futures::future::join_all(chunks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    pub(super) async fn release(&self, lease: &LeaseRef) -> Result<()> {
        // A waiter giving up also takes its lease out of the leases hash
        // (a fourth key), so that it leaves nothing behind; a holder was
        // never queued, and needs three.
        let was_queued = self.queued.remove(lease.owner);
        let names = Names::of(&lease.key);
        let mut call = RELEASE.key(names.lock());
        call.key(names.fence()).key(names.queue());
        if was_queued {
            call.key(names.waiting());
        }
        let reply: i64 = call
            .arg(lease.owner.to_hex())
            .arg(names.channel())
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("release", &lease.key, e))?;
        held_if(reply >= 1, &lease.key)
    }

    pub(super) async fn inspect(&self, key: &LockKey) -> Result<Option<HolderInfo>> {
        let reply: Vec<Value> = INSPECT
            .key(Names::of(key).lock())
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("inspect", key, e))?;
        match reply.as_slice() {
            [] => Ok(None),
            [token, pttl, metadata] => Ok(Some(holder(token, pttl, metadata)?)),
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
    let metadata: Option<String> =
        ::redis::from_redis_value_ref(metadata).map_err(|e| Error::backend(NAME, "decode", e))?;
    Ok(info.metadata(metadata))
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
