//! The replicated Redis topologies: a Sentinel set and a Cluster from the
//! testkit, and the failovers the nemesis makes them go through.
//!
//! Clients reach them by the topology's URL and find the nodes
//! themselves, so there is no fault proxy: the faults are the topology's
//! own (a master killed, a manual failover, replicas paused), plus one
//! that loses writes, [`FaultKind::CutFailover`]:
//!
//! 1. the master's replicas (on a cluster: every master's, a partition
//!    between the masters and the replicas) are given a wrong `masterauth` (the master
//!    has no password, so their `AUTH` fails and they cannot sync again),
//!    and the master drops them (`CLIENT KILL TYPE replica`): a partition
//!    between the master and its replicas, while its clients still reach
//!    it — Redis's default configuration (`min-replicas-to-write 0`)
//!    keeps taking writes;
//! 2. for the fault's duration, whatever the master grants lives on it
//!    alone;
//! 3. a replica is promoted while the old master still runs (`SENTINEL
//!    FAILOVER`; `CLUSTER FAILOVER FORCE` on each master's replica, one
//!    after the other), the
//!    replicas' `masterauth` is restored once it is, and the old master
//!    is demoted (the sentinels reconfigure it seconds later; a cluster
//!    node as soon as it hears of the new epoch) and re-syncs, dropping
//!    what it granted alone.
//!
//! With replica acknowledgement on, no grant is handed out in step 2
//! (`WAIT` finds no replica); with it off, every one is, and is lost.
//! Killing a master does not do this at a TTL of 1 s: a failover takes
//! longer than that (a master is down after 1 s), so the grants it loses
//! have expired before the new master grants anything. On a cluster the
//! cut takes every master, not only a key's: cut one at a time, a
//! master serving one of six keys lost nothing that mattered in 3 of 10
//! no-ack runs.

use std::time::{Duration, Instant};

use distlock::backend::redis::RedisKeys;
use distlock_testkit::redis::RedisServer;
use distlock_testkit::redis_ha::{MASTER_NAME, RedisCluster, SentinelSet};
use distlock_testkit::server::ServerProcess;
use redis::{Cmd, FromRedisValue, cmd};
use tokio::time::sleep;

use super::{BackendKind, admin_within, lock_key};
use crate::nemesis::FaultKind;

/// What an admin command may take (a node fsyncs nothing here: nodes
/// persist nothing, and runs keep `TMPDIR` on a tmpfs for the sentinels'
/// and cluster nodes' configuration files).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a forced failover may take to promote a replica.
const PROMOTION_WITHIN: Duration = Duration::from_secs(20);

/// The `masterauth` that cuts a replica off: its master has no password.
const WRONG_MASTERAUTH: &str = "distlock-torture-partition";

/// A replicated Redis the orchestrator owns.
#[derive(Debug)]
pub(super) enum Replicated {
    Sentinel(SentinelSet),
    Cluster(RedisCluster),
}

impl Replicated {
    /// Starts the topology of `kind` (a replicated Redis).
    pub(super) async fn start(kind: BackendKind) -> Replicated {
        match kind {
            BackendKind::RedisSentinel => Replicated::Sentinel(SentinelSet::start().await),
            BackendKind::RedisCluster => Replicated::Cluster(RedisCluster::start().await),
            _ => unreachable!("{kind} is not a replicated Redis"),
        }
    }

    /// The topology's URL, without parameters.
    pub(super) fn url(&self) -> String {
        match self {
            Replicated::Sentinel(set) => set.url(),
            Replicated::Cluster(cluster) => cluster.url(),
        }
    }

    /// Every data node's process.
    pub(super) fn servers(&self) -> impl Iterator<Item = &ServerProcess> {
        self.nodes().iter().map(RedisServer::process)
    }

    fn nodes(&self) -> &[RedisServer] {
        match self {
            Replicated::Sentinel(set) => set.nodes(),
            Replicated::Cluster(cluster) => cluster.nodes(),
        }
    }

    /// The masters, once the topology has settled.
    pub(super) async fn masters(&self) -> Vec<&RedisServer> {
        let indices = match self {
            Replicated::Sentinel(set) => vec![set.master().await],
            Replicated::Cluster(cluster) => cluster.masters().await,
        };
        indices.into_iter().map(|i| &self.nodes()[i]).collect()
    }

    /// The master whose keys a fault aimed at `key` of `namespace` hits
    /// (Sentinel: the master; Cluster: the one serving the key's slot),
    /// its replicas, and the slot (Cluster).
    async fn target(&self, namespace: &str, key: &str) -> (usize, Vec<usize>, Option<u16>) {
        match self {
            Replicated::Sentinel(set) => (set.master().await, set.replicas().await, None),
            Replicated::Cluster(cluster) => {
                let name = RedisKeys::new(&lock_key(namespace, key)).lock;
                let slot = cluster.slot_of(&name).await;
                let master = cluster.master_of_slot(slot).await;
                let replicas = cluster.replica_of(master).await.into_iter().collect();
                (master, replicas, Some(slot))
            }
        }
    }

    /// Carries out a topology fault (`kind` in
    /// [`FaultKind::topology_fault`]) aimed at `key`, lasting `duration` where
    /// it lasts; describes it.
    pub(super) async fn fault(
        &mut self,
        kind: FaultKind,
        namespace: &str,
        key: &str,
        duration: Duration,
    ) -> String {
        let (master, replicas, slot) = self.target(namespace, key).await;
        let on = slot.map_or(String::new(), |s| format!(" (slot {s} of {key})"));
        let started = Instant::now();
        match (kind, self) {
            (FaultKind::MasterKill, Replicated::Sentinel(set)) => {
                let promoted = set.kill_master().await;
                let after = started.elapsed();
                set.revive(master).await;
                format!(
                    "SIGKILL master node {master}; node {promoted} promoted after {} ms; \
                     node {master} back as a replica after {} ms",
                    after.as_millis(),
                    started.elapsed().as_millis()
                )
            }
            (FaultKind::MasterKill, Replicated::Cluster(cluster)) => {
                let slot = slot.expect("a cluster fault has a slot");
                let promoted = cluster.kill_master_of(slot).await;
                let after = started.elapsed();
                cluster.restart(master).await;
                format!(
                    "SIGKILL master node {master}{on}; node {promoted} took over after {} ms; \
                     node {master} back as a replica after {} ms",
                    after.as_millis(),
                    started.elapsed().as_millis()
                )
            }
            (FaultKind::ManualFailover, Replicated::Cluster(cluster)) => {
                let promoted = cluster.failover(slot.expect("a slot")).await;
                format!(
                    "CLUSTER FAILOVER: node {promoted} took over from node {master}{on} \
                     in {} ms",
                    started.elapsed().as_millis()
                )
            }
            (FaultKind::ReplicaPause, topology) => {
                for &r in &replicas {
                    topology.nodes()[r].process().pause();
                }
                sleep(duration).await;
                for &r in &replicas {
                    topology.nodes()[r].process().resume();
                }
                format!(
                    "SIGSTOP replica node(s) {replicas:?} of master node {master}{on} for {} ms",
                    duration.as_millis()
                )
            }
            (FaultKind::CutFailover, topology) => topology.cut_failover(duration).await,
            (FaultKind::SentinelFailover, topology @ Replicated::Sentinel(_)) => {
                let promoted = topology.force_failover(master, &replicas, started).await;
                topology.wait_settled().await;
                format!(
                    "SENTINEL FAILOVER, nothing cut: {promoted}; settled after {} ms",
                    started.elapsed().as_millis()
                )
            }
            (kind, topology) => format!("{kind} does not apply to {}", topology.url()),
        }
    }

    /// [`FaultKind::CutFailover`]: every master (Sentinel: the one;
    /// Cluster: all three at once, a partition between the masters and
    /// the replicas) cut off from its replicas for `window`, then one
    /// replica of each promoted.
    async fn cut_failover(&self, window: Duration) -> String {
        let groups: Vec<(usize, Vec<usize>)> = match self {
            Replicated::Sentinel(set) => vec![(set.master().await, set.replicas().await)],
            Replicated::Cluster(cluster) => {
                let mut groups = Vec::new();
                for master in cluster.masters().await {
                    let replica = cluster.replica_of(master).await;
                    groups.push((master, replica.into_iter().collect()));
                }
                groups
            }
        };
        let nodes = self.nodes();
        let replicas: Vec<usize> = groups.iter().flat_map(|(_, r)| r.clone()).collect();
        for &r in &replicas {
            let set: Result<(), _> = admin(&nodes[r], masterauth(WRONG_MASTERAUTH)).await;
            if let Err(e) = set {
                return format!("not cut: masterauth on node {r}: {e}");
            }
        }
        let mut dropped = Vec::new();
        for (master, _) in &groups {
            let mut kill = cmd("CLIENT");
            kill.arg("KILL").arg("TYPE").arg("replica");
            let n: Result<u64, _> = admin(&nodes[*master], kill).await;
            dropped.push(n.map_or_else(|e| format!("none: {e}"), |n| n.to_string()));
        }
        let cut_at = Instant::now();
        sleep(window).await;
        let mut promoted = Vec::new();
        for (master, replicas) in &groups {
            promoted.push(self.force_failover(*master, replicas, cut_at).await);
        }
        let mut restored = Vec::new();
        for &r in &replicas {
            if let Err(e) = admin::<()>(&nodes[r], masterauth("")).await {
                restored.push(format!("; masterauth not restored on node {r}: {e}"));
            }
        }
        self.wait_settled().await;
        let masters: Vec<usize> = groups.iter().map(|(m, _)| *m).collect();
        format!(
            "cut master node(s) {masters:?} off replica node(s) {replicas:?} ({} links dropped) \
             for {} ms; {}; settled {} ms after the cut{}",
            dropped.join(" + "),
            window.as_millis(),
            promoted.join(", "),
            cut_at.elapsed().as_millis(),
            restored.concat()
        )
    }

    /// Promotes one of `replicas` of `master` while it runs (`SENTINEL
    /// FAILOVER`; `CLUSTER FAILOVER FORCE` on the first replica) and waits
    /// until one reports itself a master; describes it, timed from `since`.
    async fn force_failover(&self, master: usize, replicas: &[usize], since: Instant) -> String {
        let promote = match self {
            Replicated::Sentinel(set) => {
                let mut failover = cmd("SENTINEL");
                failover.arg("FAILOVER").arg(MASTER_NAME);
                let sentinel = format!("redis://127.0.0.1:{}/", set.sentinels()[0].ports()[0]);
                admin_at::<()>(&sentinel, failover).await
            }
            Replicated::Cluster(_) => {
                let mut failover = cmd("CLUSTER");
                failover.arg("FAILOVER").arg("FORCE");
                admin::<()>(&self.nodes()[replicas[0]], failover).await
            }
        };
        let outcome = match promote {
            Ok(()) => self.promoted(replicas).await,
            Err(e) => Err(format!("failover refused: {e}")),
        };
        match outcome {
            Ok(node) => format!(
                "node {node} promoted for node {master} after {} ms",
                since.elapsed().as_millis()
            ),
            Err(e) => format!("node {master}: {e}"),
        }
    }

    /// The first of `replicas` that reports itself a master, within
    /// [`PROMOTION_WITHIN`].
    async fn promoted(&self, replicas: &[usize]) -> Result<usize, String> {
        let start = Instant::now();
        loop {
            for &r in replicas {
                let mut info = cmd("INFO");
                info.arg("replication");
                let text: Result<String, _> = admin(&self.nodes()[r], info).await;
                if text.is_ok_and(|t| t.lines().any(|l| l.trim() == "role:master")) {
                    return Ok(r);
                }
            }
            if start.elapsed() > PROMOTION_WITHIN {
                return Err(format!("no replica promoted within {PROMOTION_WITHIN:?}"));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the topology has settled (the fixtures' own wait).
    pub(super) async fn wait_settled(&self) {
        match self {
            Replicated::Sentinel(set) => {
                set.wait_settled().await;
            }
            Replicated::Cluster(cluster) => cluster.wait_settled().await,
        }
    }
}

fn masterauth(password: &str) -> Cmd {
    let mut set = cmd("CONFIG");
    set.arg("SET").arg("masterauth").arg(password);
    set
}

/// `cmd` on `server`, on a fresh connection, within [`ADMIN_TIMEOUT`].
async fn admin<T: FromRedisValue>(server: &RedisServer, cmd: Cmd) -> Result<T, String> {
    admin_at(&server.url(), cmd).await
}

/// `cmd` on the Redis (or sentinel) at `url`, on a fresh connection,
/// within [`ADMIN_TIMEOUT`].
async fn admin_at<T: FromRedisValue>(url: &str, cmd: Cmd) -> Result<T, String> {
    let work = async {
        let mut conn = admin_within(url, ADMIN_TIMEOUT).await?;
        cmd.query_async(&mut conn).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(ADMIN_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ADMIN_TIMEOUT:?}")))
}
