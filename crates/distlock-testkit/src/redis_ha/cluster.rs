//! [`RedisCluster`]: three masters and three replicas.

mod migration;
#[cfg(test)]
mod tests;
mod view;

pub use migration::SlotMigration;
use view::{NodeLine, View, key_served_by};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use redis::cmd;

use super::{
    NODE_OPTIONS, SETTLE_TIMEOUT, ask, info_field, on_own_runtime, settle, streams_to, tell,
};
use crate::certs::Certificates;
use crate::redis::RedisServer;
use crate::server::{free_port, require_binary};

const NODES: usize = 6;
/// A node that does not answer for this long is failing: a replica takes
/// over about two seconds after its master is killed.
const NODE_TIMEOUT_MS: &str = "1000";
/// How long `redis-cli` may wait for the nodes to join before nodes that
/// lost their handshake are introduced again (it takes 1–2 s when none is).
const JOIN_PATIENCE: Duration = Duration::from_secs(3);
/// Keys moved per `MIGRATE` during a slot migration.
const MIGRATE_BATCH: usize = 100;
/// `MIGRATE`'s own deadline for the source's exchange with the destination.
const MIGRATE_IO_TIMEOUT_MS: u64 = 10_000;

/// Three masters and three replicas (one each) on loopback, made a
/// cluster by `redis-cli --cluster create --cluster-replicas 1`, with a
/// node timeout of 1 s.
///
/// Nodes keep their index for life ([`node`](Self::node)); which of them
/// serves a slot changes with failovers and migrations, so ask
/// [`master_of_slot`](Self::master_of_slot). Methods that change the
/// topology wait until the cluster has settled: every reachable node says
/// `cluster_state:ok`, sees every reachable node healthy, agrees with the
/// others on who serves every slot, and, if a replica, has its
/// replication link up.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    ids: Vec<String>,
    /// Each node's cluster bus port.
    buses: Vec<u16>,
    /// The certificates' directory when every node speaks only TLS.
    tls: Option<PathBuf>,
}

/// A child process killed when dropped: `redis-cli` must not outlive a
/// test that gave up on it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits until it has
    /// settled (typically 2–3 s, most of it `redis-cli`'s own waiting).
    /// Panics, naming the package, if `redis-server` or `redis-cli` is
    /// missing, or with the reason if the cluster does not settle.
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// [`start`](Self::start), every node speaking only TLS with `certs`
    /// (replication and the cluster bus too): [`url`](Self::url) is
    /// `rediss+cluster://`.
    pub async fn start_tls(certs: &Certificates) -> Self {
        Self::start_on(Some(certs.dir())).await
    }

    async fn start_on(tls: Option<&Path>) -> Self {
        let redis_cli = require_binary("redis-cli", "redis-tools");
        let cluster = Self::start_nodes(tls).await;
        cluster.create(&redis_cli).await;
        cluster.wait_settled().await;
        cluster
    }

    /// The six nodes, not yet a cluster.
    async fn start_nodes(tls: Option<&Path>) -> Self {
        let mut nodes = Vec::new();
        let mut buses = Vec::new();
        for _ in 0..NODES {
            // The bus port is given, not the default port + 10000, which
            // could be taken or in the ephemeral range.
            let bus = free_port();
            let bus_arg = bus.to_string();
            let mut options = NODE_OPTIONS.to_vec();
            options.extend([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus_arg,
                "--cluster-node-timeout",
                NODE_TIMEOUT_MS,
            ]);
            nodes.push(match tls {
                Some(certs) => {
                    options.extend(["--tls-replication", "yes", "--tls-cluster", "yes"]);
                    RedisServer::start_tls_with(certs, &options)
                }
                None => RedisServer::start_with(&options),
            });
            buses.push(bus);
        }
        let mut ids = Vec::new();
        for node in &nodes {
            let id: String = tell(node.process(), cmd("CLUSTER").arg("MYID"), "CLUSTER MYID").await;
            ids.push(id);
        }
        RedisCluster {
            nodes,
            ids,
            buses,
            tls: tls.map(Path::to_path_buf),
        }
    }

    /// `redis-cli --cluster create --cluster-replicas 1`, re-introducing
    /// nodes whose handshake was lost while it waits for them to join.
    ///
    /// A node that took a `MEET` but did not answer its peer within the
    /// node timeout (1 s: a stall on a loaded machine) is forgotten by that
    /// peer but not the other way round; Redis 7.0 never meets it again,
    /// and `redis-cli` waits for the join for ever (seen here: 11 minutes).
    async fn create(&self, redis_cli: &Path) {
        let mut create = Command::new(redis_cli);
        if let Some(certs) = &self.tls {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(certs.join("ca.crt"));
        }
        let child = create
            .args(["--cluster", "create"])
            .args(self.addrs())
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        let mut child = KillOnDrop(child);
        let start = tokio::time::Instant::now();
        let mut repaired = start;
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("redis-cli's status") {
                break Some(status);
            }
            if start.elapsed() > SETTLE_TIMEOUT {
                break None;
            }
            if start.elapsed() > JOIN_PATIENCE && repaired.elapsed() > JOIN_PATIENCE {
                self.reintroduce().await;
                repaired = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = child.0.kill();
        let _ = child.0.wait();
        let mut output = String::new();
        if let Some(mut stdout) = child.0.stdout.take() {
            let _ = stdout.read_to_string(&mut output);
        }
        if let Some(mut stderr) = child.0.stderr.take() {
            let _ = stderr.read_to_string(&mut output);
        }
        match status {
            Some(status) if status.success() => {}
            Some(status) => panic!("redis-cli --cluster create failed: {status}\n{output}"),
            None => panic!(
                "redis-cli --cluster create did not finish within {SETTLE_TIMEOUT:?}:\n{output}"
            ),
        }
    }

    /// `CLUSTER MEET` for every node a reachable node does not know.
    async fn reintroduce(&self) {
        for a in self.reachable() {
            let Ok(text) = ask::<String>(self.nodes[a].port(), cmd("CLUSTER").arg("NODES")).await
            else {
                continue;
            };
            for b in (0..self.nodes.len()).filter(|&b| b != a) {
                if !text.contains(&self.ids[b]) {
                    let mut meet = cmd("CLUSTER");
                    meet.arg("MEET")
                        .arg("127.0.0.1")
                        .arg(self.nodes[b].port())
                        .arg(self.buses[b]);
                    let _ = ask::<()>(self.nodes[a].port(), &meet).await;
                }
            }
        }
    }

    /// A cluster shared by every test of this process, started on first
    /// use (on its own runtime, so any test's runtime may use it). For
    /// tests that inject no faults, such as the conformance suite;
    /// namespaces keep their keys apart.
    pub fn shared() -> &'static RedisCluster {
        static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
        CLUSTER.get_or_init(|| on_own_runtime(RedisCluster::start()))
    }

    /// Like [`shared`](Self::shared), a cluster started with
    /// [`start_tls`](Self::start_tls) and [`Certificates::shared`].
    pub fn shared_tls() -> &'static RedisCluster {
        static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
        CLUSTER.get_or_init(|| on_own_runtime(RedisCluster::start_tls(Certificates::shared())))
    }

    /// The CA the nodes' certificates come from, when they speak TLS.
    pub fn ca(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|certs| certs.join("ca.crt"))
    }

    /// Every node's `127.0.0.1:PORT`, by node index.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    /// Every node as a `redis://` (with TLS, `rediss://`) URL, as
    /// redis-rs's `ClusterClient` takes them.
    pub fn node_urls(&self) -> Vec<String> {
        self.addrs()
            .iter()
            .map(|addr| format!("{}://{addr}/", self.scheme()))
            .collect()
    }

    /// `redis` or, with TLS, `rediss`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// `redis+cluster://127.0.0.1:P1,...,127.0.0.1:P6`: every node as a
    /// seed, so the URL works while some are down.
    pub fn url(&self) -> String {
        format!("{}+cluster://{}", self.scheme(), self.addrs().join(","))
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Node `i`'s cluster id.
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn slot_of(&self, key: &str) -> u16 {
        let node = self.nodes[self.reachable().next().expect("a reachable node")].process();
        tell(
            node,
            cmd("CLUSTER").arg("KEYSLOT").arg(key),
            "CLUSTER KEYSLOT",
        )
        .await
    }

    /// The index of the master serving `slot`, once the cluster has settled.
    pub async fn master_of_slot(&self, slot: u16) -> usize {
        let view = self.wait_settled_view().await;
        self.owner(&view, slot)
    }

    /// The masters, by index ascending, once the cluster has settled.
    pub async fn masters(&self) -> Vec<usize> {
        let view = self.wait_settled_view().await;
        let mut masters: Vec<usize> = view
            .nodes
            .iter()
            .filter(|n| !n.slots.is_empty())
            .map(|n| self.index_of_port(n.port))
            .collect();
        masters.sort();
        masters
    }

    /// A live replica of master `master`, once the cluster has settled.
    pub async fn replica_of(&self, master: usize) -> Option<usize> {
        let view = self.wait_settled_view().await;
        self.live_replica(&view, master)
    }

    /// Kills (SIGKILL) the master serving `slot` and waits until its
    /// replica has taken over and the cluster has settled; returns the new
    /// master's index. The killed node stays down until
    /// [`restart`](Self::restart).
    pub async fn kill_master_of(&self, slot: u16) -> usize {
        let (master, replica) = self.master_and_replica(slot).await;
        self.nodes[master].process().kill();
        self.wait_owner(slot, replica, "a replica taking over from a killed master")
            .await;
        replica
    }

    /// `CLUSTER FAILOVER` on the replica of the master serving `slot`:
    /// they swap roles without losing writes. Waits until the replica
    /// serves the slot and the cluster has settled; returns its index.
    pub async fn failover(&self, slot: u16) -> usize {
        let (_, replica) = self.master_and_replica(slot).await;
        let failover = cmd("CLUSTER").arg("FAILOVER").clone();
        let _: () = tell(self.nodes[replica].process(), &failover, "CLUSTER FAILOVER").await;
        self.wait_owner(slot, replica, "a manual failover").await;
        replica
    }

    /// The master serving `slot` and a live replica of it, once settled.
    async fn master_and_replica(&self, slot: u16) -> (usize, usize) {
        let view = self.wait_settled_view().await;
        let master = self.owner(&view, slot);
        let replica = self
            .live_replica(&view, master)
            .unwrap_or_else(|| panic!("master {master} of slot {slot} has no live replica"));
        (master, replica)
    }

    /// Moves `slot`, with its keys, to master `to`: the whole
    /// [`begin_migration`](Self::begin_migration),
    /// [`move_keys`](SlotMigration::move_keys),
    /// [`finish`](SlotMigration::finish). Returns the keys moved.
    pub async fn migrate_slot(&self, slot: u16, to: usize) -> usize {
        let migration = self.begin_migration(slot, to).await;
        let moved = migration.move_keys().await;
        migration.finish().await;
        moved
    }

    /// Opens the migration of `slot` from its master to master `to`:
    /// `CLUSTER SETSLOT IMPORTING` on `to`, then `MIGRATING` on the
    /// source. From here on the source answers `ASK` for the slot's keys
    /// it no longer has, until [`finish`](SlotMigration::finish).
    pub async fn begin_migration(&self, slot: u16, to: usize) -> SlotMigration<'_> {
        let view = self.wait_settled_view().await;
        let from = self.owner(&view, slot);
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let target = &view.nodes[self.line_of(&view, to)];
        assert!(
            target.master_id.is_none(),
            "node {to} is a replica, not a master"
        );
        let setslot = |state: &str, node: usize| {
            let mut c = cmd("CLUSTER");
            c.arg("SETSLOT").arg(slot).arg(state).arg(&self.ids[node]);
            c
        };
        let importing = setslot("IMPORTING", from);
        let _: () = tell(self.nodes[to].process(), &importing, "SETSLOT IMPORTING").await;
        let migrating = setslot("MIGRATING", to);
        let _: () = tell(self.nodes[from].process(), &migrating, "SETSLOT MIGRATING").await;
        SlotMigration {
            cluster: self,
            slot,
            from,
            to,
        }
    }

    /// Pauses (SIGSTOP) node `i`: it keeps its connections but answers
    /// nothing; the others declare it failing after the node timeout (a
    /// paused master's replica takes over about 2 s later).
    pub fn pause(&self, i: usize) {
        self.nodes[i].process().pause();
    }

    /// Resumes (SIGCONT) node `i`. Call
    /// [`wait_settled`](Self::wait_settled) to wait for it to rejoin.
    pub fn resume(&self, i: usize) {
        self.nodes[i].process().resume();
    }

    /// Restarts killed node `i` with its cluster configuration and waits
    /// until it has rejoined (a former master rejoins as a replica of the
    /// node that took over its slots).
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_settled().await;
    }

    /// Waits until the cluster has settled (see [`RedisCluster`]); panics
    /// with the reason if it does not.
    pub async fn wait_settled(&self) {
        self.wait_settled_view().await;
    }

    async fn wait_settled_view(&self) -> View {
        settle("the cluster settling", SETTLE_TIMEOUT, || async {
            let view = self.settled().await?;
            if view.open_slots {
                return Err("a slot is being migrated".into());
            }
            Ok(view)
        })
        .await
    }

    /// Waits until the cluster has settled with `slot` on node `owner`.
    async fn wait_owner(&self, slot: u16, owner: usize, what: &str) {
        let port = self.nodes[owner].port();
        settle(what, SETTLE_TIMEOUT, || async {
            let view = self.settled().await?;
            match view.owner_port(slot) {
                Some(p) if p == port && !view.open_slots => Ok(()),
                other => Err(format!("slot {slot} on {other:?}, not {port}")),
            }
        })
        .await;
    }

    fn reachable(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|i| {
            let p = self.nodes[*i].process();
            p.is_alive() && !p.is_paused()
        })
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    fn line_of(&self, view: &View, node: usize) -> usize {
        view.nodes
            .iter()
            .position(|n| n.id == self.ids[node])
            .unwrap_or_else(|| panic!("node {node} is not in the cluster's view"))
    }

    fn owner(&self, view: &View, slot: u16) -> usize {
        let port = view
            .owner_port(slot)
            .unwrap_or_else(|| panic!("no node serves slot {slot}"));
        self.index_of_port(port)
    }

    fn live_replica(&self, view: &View, master: usize) -> Option<usize> {
        view.nodes
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(&*self.ids[master]))
            .map(|n| self.index_of_port(n.port))
            .find(|i| self.nodes[*i].process().is_alive())
    }

    /// The view every reachable node agrees on, or why there is none yet
    /// (open slots are reported in the view, not refused).
    async fn settled(&self) -> Result<View, String> {
        let reachable: Vec<usize> = self.reachable().collect();
        let mut agreed: Option<(String, View)> = None;
        let mut open_slots = false;
        for &i in &reachable {
            let port = self.nodes[i].port();
            let info: String = ask(port, cmd("CLUSTER").arg("INFO")).await?;
            if info_field(&info, "cluster_state") != Some("ok") {
                return Err(format!("node {port}: {info}"));
            }
            let text: String = ask(port, cmd("CLUSTER").arg("NODES")).await?;
            let lines: Vec<NodeLine> = text.lines().filter_map(NodeLine::parse).collect();
            for &other in &reachable {
                let seen = lines.iter().find(|n| n.id == self.ids[other]);
                if seen.is_none_or(|n| n.unhealthy) {
                    return Err(format!("node {port} sees node {other} as {seen:?}"));
                }
            }
            let me = lines
                .iter()
                .find(|n| n.myself)
                .ok_or_else(|| format!("node {port} lists no `myself`: {text}"))?;
            if me.master_id.is_some() {
                let replication: String = ask(port, cmd("INFO").arg("replication")).await?;
                if info_field(&replication, "master_link_status") != Some("up") {
                    return Err(format!("replica {port}: {replication}"));
                }
            } else if !lines.iter().any(|n| n.open_slots) {
                // A key of an open slot may be redirected (`ASK`).
                let replicas = lines
                    .iter()
                    .filter(|n| n.master_id.as_deref() == Some(&*me.id))
                    .filter(|n| reachable.iter().any(|&r| self.ids[r] == n.id))
                    .count();
                if let Some(key) = (replicas > 0).then(|| key_served_by(me)).flatten() {
                    streams_to(port, &key, replicas).await?;
                }
            }
            open_slots |= lines.iter().any(|n| n.open_slots);
            // Who serves which slots, and who replicates whom among the
            // reachable nodes (views of dead nodes may lag for ever).
            let mut layout: Vec<(u16, u16, &str)> = lines
                .iter()
                .flat_map(|n| n.slots.iter().map(|(s, e)| (*s, *e, n.id.as_str())))
                .collect();
            layout.sort();
            let mut roles: Vec<(&str, Option<&str>)> = lines
                .iter()
                .filter(|n| reachable.iter().any(|&r| self.ids[r] == n.id))
                .map(|n| (n.id.as_str(), n.master_id.as_deref()))
                .collect();
            roles.sort();
            let signature = format!("{layout:?} {roles:?}");
            match &agreed {
                Some((first, _)) if *first != signature => {
                    return Err(format!("node {port} disagrees: {signature}, not {first}"));
                }
                Some(_) => {}
                None => {
                    let view = View {
                        nodes: lines,
                        open_slots: false,
                    };
                    agreed = Some((signature, view));
                }
            }
        }
        let (_, mut view) = agreed.ok_or("no reachable node")?;
        view.open_slots = open_slots;
        Ok(view)
    }
}
