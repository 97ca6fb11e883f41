//! The Lua scripts (the `.lua` files beside this one), how they are
//! invoked and how their replies are read.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Script, Value};

use super::NAME;
use super::builder::Shared;
use super::keys::RedisKeys;
use crate::backend::{AcquireRequest, Attempt};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::LockKey;
use crate::lease::LeaseRef;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("acquire.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("extend.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("inspect.lua")));
pub(super) static TURN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("turn.lua")));

/// Every script, for loading them up front.
pub(super) static ALL: [&LazyLock<Script>; 5] = [&ACQUIRE, &EXTEND, &RELEASE, &INSPECT, &TURN];

impl Shared {
    pub(super) async fn acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let names = RedisKeys::new(&req.key);
        let metadata = match &req.metadata {
            Some(m) => format!("={m}"),
            None => "-".to_owned(),
        };
        let reply: Vec<Value> = ACQUIRE
            .key(&names.lock)
            .key(&names.fence)
            .key(&names.queue)
            .key(&names.waiting)
            .arg(req.owner.to_hex())
            .arg(millis(req.ttl))
            .arg(metadata)
            .arg(u8::from(req.will_wait))
            .arg(millis(self.waiter_lease))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("acquire", &req.key, e))?;
        match reply.as_slice() {
            [flag, token] if int(flag) == Some(1) => Ok(Attempt::Granted {
                fencing_token: token_of(token)?,
            }),
            [flag, token, pttl, metadata] if int(flag) == Some(0) => Ok(Attempt::Contended {
                holder: Some(holder(token, pttl, metadata)?),
            }),
            // Free, but another waiter is first.
            [flag] if int(flag) == Some(0) => Ok(Attempt::Contended { holder: None }),
            other => Err(unexpected("acquire", other)),
        }
    }

    pub(super) async fn extend(&self, lease: &LeaseRef, ttl: Duration) -> Result<()> {
        let names = RedisKeys::new(&lease.key);
        let done: i64 = EXTEND
            .key(&names.lock)
            .arg(lease.owner.to_hex())
            .arg(millis(ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("extend", &lease.key, e))?;
        held_if(done == 1, &lease.key)
    }

    pub(super) async fn release(&self, lease: &LeaseRef) -> Result<()> {
        let names = RedisKeys::new(&lease.key);
        let reply: i64 = RELEASE
            .key(&names.lock)
            .key(&names.queue)
            .key(&names.waiting)
            .arg(lease.owner.to_hex())
            .arg(&names.channel)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.err("release", &lease.key, e))?;
        held_if(reply >= 1, &lease.key)
    }

    pub(super) async fn inspect(&self, key: &LockKey) -> Result<Option<HolderInfo>> {
        let names = RedisKeys::new(key);
        let reply: Vec<Value> = INSPECT
            .key(&names.lock)
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
