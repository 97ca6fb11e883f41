//! The command connection over each topology: one server (a
//! [`ConnectionManager`]), the master a set of sentinels names (following
//! failovers, see [`sentinel`](super::sentinel)), or a Redis Cluster (an
//! async [`ClusterConnection`], which follows `MOVED`/`ASK` and failovers
//! itself).
//!
//! [`Conn`] implements redis-rs's `ConnectionLike`, so the scripts run over
//! it unchanged (`Script::invoke_async` and its `NOSCRIPT` reload): every
//! key of one lock shares a hash tag, so every script call of a lock lands
//! on one slot. On one server a call is one `match` away from the
//! connection manager: no extra round trip, no lock.

use std::sync::Arc;

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::sentinel::SentinelMaster;

/// Which Redis deployment a backend talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Topology {
    Single,
    Sentinel,
    Cluster,
}

/// A command connection; cheap to clone (every clone shares the
/// connections).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Sentinel(Arc<SentinelMaster>),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(super) fn topology(&self) -> Topology {
        match self {
            Conn::Single(_) => Topology::Single,
            Conn::Sentinel(_) => Topology::Sentinel,
            Conn::Cluster(_) => Topology::Cluster,
        }
    }

    /// Runs `cmd`, which names no key, on the node that serves `key`'s
    /// slot (on one server or a sentinel's master: that server). `WAIT` and
    /// `INFO` are routed to every master by the cluster client otherwise;
    /// `WAIT` must go to the node that took the write it waits for.
    pub(super) async fn query_at(&mut self, key: &str, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Conn::Cluster(conn) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                conn.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
            other => cmd.query_async(other).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Sentinel(master) => Box::pin(master.run(cmd)),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(master) => Box::pin(master.run_pipeline(pipeline, offset, count)),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Sentinel(master) => master.db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}
