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

use std::sync::{Arc, LazyLock, RwLock, Weak};
use std::time::Duration;

use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{Script, Value, cmd};

use super::NAME;
use super::builder::{ANY_KEY, Shared};
use super::conn::Conn;
use super::replica_view::{Counted, MAX_AGE, Shards, info_field};
use crate::error::{Error, Result};
use crate::key::LockKey;

/// Which node a keyed call runs on: the slot's owner, or the node
/// importing the slot when the key moved there (the cluster client follows
/// `ASK`). `CLUSTER MYID` is allowed in scripts.
static NODE_OF_KEY: LazyLock<Script> =
    LazyLock::new(|| Script::new("return redis.call('CLUSTER', 'MYID')"));

/// How many replicas must acknowledge, and for how long to wait.
pub(super) struct Replicas {
    /// `None`: as many as the topology says the master has, up to one.
    configured: Option<usize>,
    timeout: Duration,
    counted: RwLock<Arc<Counted>>,
    /// One count at a time.
    counting: tokio::sync::Mutex<()>,
}

impl Replicas {
    /// `replicated`: the topology is one that fails over (Sentinel,
    /// Cluster). Until counted, such a master is taken to have a replica:
    /// a count that failed must not let grants go unacknowledged.
    pub(super) fn new(configured: Option<usize>, timeout: Duration, replicated: bool) -> Self {
        Replicas {
            configured,
            timeout,
            counted: RwLock::new(Arc::new(Counted::Whole(usize::from(replicated)))),
            counting: tokio::sync::Mutex::new(()),
        }
    }

    fn counted(&self) -> Arc<Counted> {
        self.counted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replicas a write to `key` waits for.
    fn wanted_for(&self, key: &str) -> usize {
        self.configured
            .unwrap_or_else(|| self.counted().for_key(key).min(1))
    }

    /// The most replicas any write waits for.
    pub(super) fn wanted(&self) -> usize {
        self.configured
            .unwrap_or_else(|| self.counted().most().min(1))
    }
}

impl Shared {
    /// Counts the replicas from the topology's view (see
    /// [`replica_view`](super::replica_view)); a count that cannot be
    /// read keeps the last one.
    pub(super) async fn count_replicas(&self) {
        if !self.counts_replicas() {
            return;
        }
        let _one = self.replicas.counting.lock().await;
        let counted = match &self.conn {
            Conn::Sentinel(master) => master.live_replicas().await.map(Counted::Whole),
            Conn::Cluster(_) => self
                .node_text("CLUSTER", "NODES", ANY_KEY)
                .await
                .and_then(|text| Shards::parse(&text))
                .map(Counted::Shards),
            Conn::Single(_) => self
                .node_text("INFO", "replication", ANY_KEY)
                .await
                .and_then(|text| info_field(&text, "connected_slaves")?.parse().ok())
                .map(Counted::Whole),
        };
        match counted {
            Some(counted) => {
                *self
                    .replicas
                    .counted
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(counted);
            }
            None => {
                tracing::debug!("distlock: cannot count the Redis replicas; the last count holds")
            }
        }
    }

    /// Unless the count is configured; a cluster's node table also tells
    /// where a write went (see [`wait_on_cluster`](Self::wait_on_cluster)).
    fn counts_replicas(&self) -> bool {
        self.replicas.configured.is_none() || matches!(self.conn, Conn::Cluster(_))
    }

    /// A text reply of `command subcommand` at the node of `key`'s slot.
    async fn node_text(&self, command: &str, subcommand: &str, key: &str) -> Option<String> {
        let mut ask = cmd(command);
        ask.arg(subcommand);
        let reply =
            tokio::time::timeout(self.response_timeout, self.conn().query_at(key, ask)).await;
        match reply {
            Ok(Ok(value)) => ::redis::from_redis_value(value).ok(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, command, subcommand, "distlock: cannot read what Redis says of its replicas");
                None
            }
            Err(_) => None,
        }
    }

    /// Whether the node that fell short may still be trusted as the
    /// master. Under Sentinel, only if the sentinels still name it (the
    /// master of `generation`, followed when the write was sent): a master
    /// cut off from its replicas (paused, or partitioned) and replaced by
    /// one of them takes writes when it comes back, until the sentinels
    /// demote it. Found by `redis_ha_faults`: a grant there, over a lock
    /// held on the new master, was handed out unacknowledged.
    async fn still_master(&self, generation: u64) -> bool {
        match &self.conn {
            Conn::Sentinel(master) => master.confirm(generation).await,
            _ => true,
        }
    }

    /// Returns once the replicas asked for acknowledged the writes so far
    /// on the connection to the node that took the write to `name`.
    ///
    /// # Errors
    ///
    /// A transient [`Error::Backend`] when fewer acknowledged within the
    /// replica timeout, or a command failed.
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
        let wanted = self.replicas.wanted_for(name);
        let acked = match &self.conn {
            // Some node may have replicas: the write may have run there.
            Conn::Cluster(_) if self.replicas.wanted() > 0 => {
                self.wait_on_cluster(op, key, name, wanted).await?
            }
            _ if wanted == 0 => return Ok(()),
            _ => self.wait(op, key, name, wanted, None).await?,
        };
        let Some((acked, wanted)) = acked else {
            return Ok(());
        };
        // Short: perhaps a replica is gone for good. Count again now; with
        // fewer replicas to wait for, what acknowledged may be enough.
        if self.replicas.configured.is_none() {
            self.count_replicas().await;
            if acked >= self.replicas.wanted_for(name) && self.still_master(generation).await {
                return Ok(());
            }
        }
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

    /// On a cluster: `WAIT` at the slot's owner and, when the write ran
    /// on another node (a slot being imported there), at that node too.
    /// `None` when every node acknowledged, else what one acknowledged of
    /// what it was asked.
    async fn wait_on_cluster(
        &self,
        op: &'static str,
        key: &LockKey,
        name: &str,
        wanted: usize,
    ) -> Result<Option<(usize, usize)>> {
        let mut conn = self.conn();
        let ran_on = async {
            let id: String = NODE_OF_KEY
                .key(name)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.err(op, key, e))?;
            Ok::<_, Error>(id)
        };
        let at_owner = async {
            match wanted {
                0 => Ok(None),
                _ => self.wait(op, key, name, wanted, None).await,
            }
        };
        let (ran_on, at_owner) = futures::join!(ran_on, at_owner);
        let (ran_on, at_owner) = (ran_on?, at_owner?);
        let serves = |counted: &Counted| match counted {
            Counted::Shards(shards) => shards.owner_of(name).is_some_and(|o| o.id == ran_on),
            Counted::Whole(_) => true,
        };
        if serves(&self.replicas.counted()) {
            return Ok(at_owner);
        }
        // Not the node the last count names for the slot: one importing
        // it, or a replica promoted since. Count again; the owner's
        // shortfall, if any, is judged on the new count.
        self.count_replicas().await;
        let counted = self.replicas.counted();
        if at_owner.is_some() || serves(&counted) {
            return Ok(at_owner);
        }
        let Counted::Shards(shards) = &*counted else {
            return Ok(at_owner);
        };
        let Some(node) = shards.node(&ran_on) else {
            return Err(Error::backend(
                NAME,
                op,
                format!(
                    "the write ran on cluster node {ran_on}, which CLUSTER NODES does not list"
                ),
            ));
        };
        let wanted_there = self.replicas.configured.unwrap_or(node.replicas.min(1));
        if wanted_there == 0 {
            return Ok(None);
        }
        let at = SingleNodeRoutingInfo::ByAddress {
            host: node.host.clone(),
            port: node.port,
        };
        self.wait(op, key, name, wanted_there, Some(at)).await
    }

    /// `WAIT wanted` at the node of `name`'s slot, or at `at`; `None` when
    /// enough acknowledged, else how many did and how many were asked.
    async fn wait(
        &self,
        op: &'static str,
        key: &LockKey,
        name: &str,
        wanted: usize,
        at: Option<SingleNodeRoutingInfo>,
    ) -> Result<Option<(usize, usize)>> {
        let timeout_ms = u64::try_from(self.replicas.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut wait = cmd("WAIT");
        wait.arg(wanted).arg(timeout_ms);
        let reply = match (at, self.conn()) {
            (Some(at), Conn::Cluster(mut conn)) => {
                conn.route_command(wait, RoutingInfo::SingleNode(at)).await
            }
            (_, mut conn) => conn.query_at(name, wait).await,
        };
        match reply.map_err(|e| self.err(op, key, e))? {
            Value::Int(n) => {
                let acked = usize::try_from(n).unwrap_or(0);
                Ok((acked < wanted).then_some((acked, wanted)))
            }
            other => Err(Error::backend(
                NAME,
                op,
                format!("unexpected reply to WAIT: {other:?}"),
            )),
        }
    }
}

/// Counts the replicas again every [`MAX_AGE`] until the backend is gone,
/// so that grants never wait for a count (but one that fell short).
pub(super) fn keep_counting(shared: &Arc<Shared>) {
    if !shared.counts_replicas() {
        return;
    }
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(MAX_AGE) => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            shared.count_replicas().await;
        }
    });
}
