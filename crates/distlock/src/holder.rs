//! What a read-only look at a lock reports.

use std::time::{Duration, SystemTime};

/// The current holder of a lock, as the store reports it.
///
/// The owner token that proves ownership is never part of it: whoever can
/// read a holder cannot release its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderInfo {
    /// The holder's fencing token.
    pub fencing_token: u64,
    /// The most the store keeps the lock unless its holder refreshes it,
    /// when it has a TTL (`None` for locks that live as long as their
    /// holder, such as file locks). Exact on Redis and memory; on etcd, the
    /// time left to the deadline of the grant, never more than the lease
    /// still has (see the etcd backend's docs).
    pub expires_in: Option<Duration>,
    /// Metadata the holder attached when it obtained the lock.
    pub metadata: Option<String>,
    /// The holding process's id, when the store records it (file locks).
    pub pid: Option<u32>,
    /// The holding process's host name, when the store records it (file locks).
    pub host: Option<String>,
    /// When the lock was granted (wall clock), when the store records it.
    pub since: Option<SystemTime>,
}

impl HolderInfo {
    /// A holder with the given fencing token, no TTL and no metadata.
    pub fn new(fencing_token: u64) -> Self {
        HolderInfo {
            fencing_token,
            expires_in: None,
            metadata: None,
            pid: None,
            host: None,
            since: None,
        }
    }

    /// Sets the time left before the store expires the lock.
    pub fn expires_in(mut self, left: Duration) -> Self {
        self.expires_in = Some(left);
        self
    }

    /// Sets the holder's metadata.
    pub fn metadata(mut self, metadata: Option<String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the holding process: its id and host name.
    pub fn process(mut self, pid: u32, host: impl Into<String>) -> Self {
        self.pid = Some(pid);
        self.host = Some(host.into());
        self
    }

    /// Sets when the lock was granted.
    pub fn since(mut self, since: SystemTime) -> Self {
        self.since = Some(since);
        self
    }
}

/// Everyone who holds a key, as [`Locker::holders`](crate::Locker::holders)
/// reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holders {
    /// The permit limit the holders share, when they hold permits (a
    /// semaphore's size; `u32::MAX` for the readers of a reader-writer
    /// lock); `None` for an exclusive holder or a free key.
    pub limit: Option<u32>,
    /// The holders, in the order they were granted (oldest first).
    pub holders: Vec<HolderInfo>,
}

impl Holders {
    /// A free key.
    pub fn none() -> Self {
        Holders::default()
    }

    /// A key held by one exclusive holder.
    pub fn exclusive(holder: HolderInfo) -> Self {
        Holders {
            limit: None,
            holders: vec![holder],
        }
    }

    /// A key held by permits of `limit`, the holders oldest first.
    pub fn permits(limit: u32, holders: Vec<HolderInfo>) -> Self {
        Holders {
            limit: Some(limit),
            holders,
        }
    }

    /// True when nobody holds the key.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}
