//! Replica acknowledgement: `WAIT` after a grant or an extend.
//!
//! Redis replicates asynchronously: a master that fails right after a
//! grant may be replaced by a replica that never saw it, which then grants
//! the same lock again. `WAIT n timeout` returns once `n` replicas have
//! acknowledged every write this connection made so far (or the timeout
//! passed), so a grant is handed out only once it lives on `n + 1` nodes.
//! It narrows the window; it does not close it (a replica that acknowledged
//! may still lose the write, and Sentinel may promote another one): the
//! fencing token is the protection that always holds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::{Value, cmd};

use super::NAME;
use super::builder::{ANY_KEY, Shared};
use super::conn::Conn;
use crate::error::{Error, Result};
use crate::key::LockKey;

/// How many replicas must acknowledge, and for how long to wait.
pub(super) struct Replicas {
    /// `None`: as many as the master has, up to one.
    configured: Option<usize>,
    timeout: Duration,
    wanted: AtomicUsize,
    /// The Sentinel generation (see `SentinelMaster`) `wanted` was
    /// counted for, when it is counted.
    counted_for: AtomicU64,
}

impl Replicas {
    pub(super) fn new(configured: Option<usize>, timeout: Duration) -> Self {
        Replicas {
            configured,
            timeout,
            wanted: AtomicUsize::new(configured.unwrap_or(0)),
            counted_for: AtomicU64::new(0),
        }
    }

    pub(super) fn wanted(&self) -> usize {
        self.wanted.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Counts the master's replicas when the count is not configured: one
    /// `INFO replication` (on a cluster, of the node of one slot: a
    /// cluster's masters usually have as many replicas each).
    pub(super) async fn count_replicas(&self) {
        if self.replicas.configured.is_some() {
            return;
        }
        let generation = match &self.conn {
            Conn::Sentinel(master) => master.current().generation,
            _ => 0,
        };
        let mut info = cmd("INFO");
        info.arg("replication");
        let mut conn = self.conn();
        let reply = tokio::time::timeout(self.response_timeout, conn.query_at(ANY_KEY, info)).await;
        let connected = match reply {
            Ok(Ok(value)) => ::redis::from_redis_value::<String>(value)
                .ok()
                .and_then(|text| info_field(&text, "connected_slaves")?.parse::<usize>().ok()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "distlock: cannot read Redis INFO replication");
                None
            }
            Err(_) => None,
        };
        if let Some(connected) = connected {
            self.replicas
                .wanted
                .store(connected.min(1), Ordering::Relaxed);
            self.replicas
                .counted_for
                .store(generation, Ordering::Relaxed);
        }
    }

    /// The replicas connected to the node of `name`'s slot, if it says.
    async fn connected_replicas(&self, name: &str) -> Option<usize> {
        let mut info = cmd("INFO");
        info.arg("replication");
        let reply = tokio::time::timeout(self.response_timeout, self.conn().query_at(name, info))
            .await
            .ok()?
            .ok()?;
        let text = ::redis::from_redis_value::<String>(reply).ok()?;
        info_field(&text, "connected_slaves")?.parse().ok()
    }

    /// Whether the node that lost its replicas may still be trusted as
    /// the master. Under Sentinel, only if the sentinels still name it
    /// (the master of `generation`, followed when the write was sent): a
    /// master cut off from its replicas (paused, or partitioned) and
    /// replaced by one of them takes writes when it comes back, until the
    /// sentinels demote it, and its replicas left it for the new master.
    /// Found by `redis_ha_faults`: a grant there, over a lock held on the
    /// new master, was handed out unacknowledged.
    async fn still_master(&self, generation: u64) -> bool {
        match &self.conn {
            Conn::Sentinel(master) => master.confirm(generation).await,
            _ => true,
        }
    }

    /// Returns once the configured number of replicas acknowledged the
    /// writes so far on the connection to `key`'s node.
    ///
    /// # Errors
    ///
    /// A transient [`Error::Backend`] when fewer acknowledged within the
    /// replica timeout, or the command failed.
    pub(super) async fn acknowledge(
        &self,
        op: &'static str,
        key: &LockKey,
        name: &str,
    ) -> Result<()> {
        // The master followed when the write was sent (no later).
        let generation = match &self.conn {
            Conn::Sentinel(master) => master.current().generation,
            _ => 0,
        };
        if self.replicas.configured.is_none()
            && let Conn::Sentinel(master) = &self.conn
            && master.current().generation != self.replicas.counted_for.load(Ordering::Relaxed)
        {
            // Another master now: it may have other replicas.
            self.count_replicas().await;
        }
        let wanted = self.replicas.wanted();
        if wanted == 0 {
            return Ok(());
        }
        let timeout_ms = u64::try_from(self.replicas.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut wait = cmd("WAIT");
        wait.arg(wanted).arg(timeout_ms);
        let reply = self
            .conn()
            .query_at(name, wait)
            .await
            .map_err(|e| self.err(op, key, e))?;
        let acked: i64 = match reply {
            Value::Int(n) => n,
            other => {
                return Err(Error::backend(
                    NAME,
                    op,
                    format!("unexpected reply to WAIT: {other:?}"),
                ));
            }
        };
        let acked = usize::try_from(acked).unwrap_or(0);
        if acked >= wanted {
            return Ok(());
        }
        if self.replicas.configured.is_none()
            && self.connected_replicas(name).await == Some(0)
            && self.still_master(generation).await
        {
            // By default a master waits for a replica only while it has
            // one: this one lost its own (a cluster replica that took over
            // from its dead master has none). Counted again only on a
            // shortfall, so one WAIT timeout per grant on such a node.
            if !matches!(self.conn, Conn::Cluster(_)) {
                self.replicas.wanted.store(0, Ordering::Relaxed);
            }
            tracing::warn!(key = %key, "distlock: the Redis master has no replica connected; grants are not acknowledged by any");
            return Ok(());
        }
        {
            Err(Error::backend(
                NAME,
                op,
                format!(
                    "only {acked} of the {wanted} replicas asked for acknowledged the write \
                     within {:?} (WAIT)",
                    self.replicas.timeout
                ),
            ))
        }
    }
}

/// One field of an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}
