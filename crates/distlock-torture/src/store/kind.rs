//! [`BackendKind`]: the stores the harness knows, and what each needs of
//! a run (its faults, how long its locks outlive a client).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use distlock::backend::redis::DEFAULT_WAITER_LEASE;
use serde::{Deserialize, Serialize};

use crate::nemesis::FaultKind;

/// A store the harness can run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The in-process memory store: clients are tasks of the orchestrator.
    Memory,
    /// `flock`ed files in a directory: clients are processes of this host.
    File,
    /// A redis-server (AOF, `appendfsync always`) behind a fault proxy;
    /// the nemesis also makes it lose its data.
    Redis,
    /// A three-member etcd cluster, each member behind a fault proxy for
    /// its clients and a tagging one for its peers.
    Etcd,
    /// A Sentinel set (one master, two replicas, three sentinels; nothing
    /// persisted), clients following the master the sentinels name; the
    /// nemesis fails the master over.
    RedisSentinel,
    /// A Redis Cluster (three masters, one replica each; nothing
    /// persisted), clients following its slots; the nemesis fails masters
    /// over.
    RedisCluster,
}

impl BackendKind {
    /// Every backend the harness knows.
    pub const ALL: [BackendKind; 6] = [
        BackendKind::Memory,
        BackendKind::File,
        BackendKind::Redis,
        BackendKind::Etcd,
        BackendKind::RedisSentinel,
        BackendKind::RedisCluster,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::File => "file",
            BackendKind::Redis => "redis",
            BackendKind::Etcd => "etcd",
            BackendKind::RedisSentinel => "redis-sentinel",
            BackendKind::RedisCluster => "redis-cluster",
        }
    }

    /// Whether this is a replicated Redis (Sentinel or Cluster): clients
    /// find the nodes themselves, so there is no fault proxy, and the
    /// nemesis fails masters over instead.
    pub fn replicated_redis(self) -> bool {
        matches!(self, BackendKind::RedisSentinel | BackendKind::RedisCluster)
    }

    /// Whether locks expire by TTL (file locks live as long as their holder).
    pub fn ttl_expiry(self) -> bool {
        !matches!(self, BackendKind::File)
    }

    /// Whether clients are separate processes (memory's are tasks).
    pub fn client_processes(self) -> bool {
        !matches!(self, BackendKind::Memory)
    }

    /// How long after the clients stopped every lock of a killed client is
    /// gone: its TTL for most stores (Redis: and a killed waiter's place in
    /// the queue, its waiter lease); for etcd, when clients were killed,
    /// the lease of a dead process (`max(session TTL 5 s, 1.5 × TTL)`).
    pub fn settle_time(self, ttl: Duration, killed: bool) -> Duration {
        let margin = Duration::from_millis(500);
        match self {
            BackendKind::Etcd if killed => {
                let lease = (ttl.as_secs_f64() * 1.5).ceil().max(5.0);
                Duration::from_secs_f64(lease) + margin * 2
            }
            _ if self.speaks_redis() => ttl.max(DEFAULT_WAITER_LEASE) + margin,
            _ => ttl + margin,
        }
    }

    /// How long a waiter's place in the store outlives the waiter: Redis's
    /// waiter lease; etcd's waiters' lease, which etcd grants for 2 s at
    /// the least, plus its 0.5 s expiry check ("about 2.5 s", the etcd
    /// backend's docs); the TTL for the file store, where a waiter holds no
    /// place at all. A waiter stop lasts longer than this.
    pub fn waiter_lease(self, ttl: Duration) -> Duration {
        match self {
            _ if self.speaks_redis() => ttl.max(DEFAULT_WAITER_LEASE),
            BackendKind::Etcd => ttl.max(Duration::from_millis(2500)),
            _ => ttl,
        }
    }

    /// Whether the store is Redis in any topology (the same backend, its
    /// waiter lease).
    pub fn speaks_redis(self) -> bool {
        self == BackendKind::Redis || self.replicated_redis()
    }

    /// The faults the nemesis injects on this backend.
    pub fn faults(self) -> &'static [FaultKind] {
        match self {
            BackendKind::Memory => &[FaultKind::TaskPause, FaultKind::TaskAbort],
            BackendKind::File => &[
                FaultKind::ClientStop,
                FaultKind::ClientKill,
                FaultKind::WaiterStop,
            ],
            BackendKind::Redis => &[
                FaultKind::ClientStop,
                FaultKind::ClientKill,
                FaultKind::WaiterStop,
                FaultKind::ServerKill,
                FaultKind::ServerStop,
                FaultKind::ProxyReset,
                FaultKind::ProxyBlackhole,
                FaultKind::Flushall,
                FaultKind::WipeRestart,
            ],
            BackendKind::Etcd => &[
                FaultKind::ClientStop,
                FaultKind::ClientKill,
                FaultKind::WaiterStop,
                FaultKind::LeaderKill,
                FaultKind::LeaderIsolate,
                FaultKind::ServerStop,
                FaultKind::ProxyReset,
                FaultKind::ProxyBlackhole,
            ],
            BackendKind::RedisSentinel => &[
                FaultKind::ClientStop,
                FaultKind::ClientKill,
                FaultKind::WaiterStop,
                FaultKind::MasterKill,
                FaultKind::ReplicaPause,
                FaultKind::CutFailover,
            ],
            BackendKind::RedisCluster => &[
                FaultKind::ClientStop,
                FaultKind::ClientKill,
                FaultKind::WaiterStop,
                FaultKind::MasterKill,
                FaultKind::ManualFailover,
                FaultKind::ReplicaPause,
                FaultKind::CutFailover,
            ],
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        BackendKind::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = BackendKind::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "unknown backend {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}
