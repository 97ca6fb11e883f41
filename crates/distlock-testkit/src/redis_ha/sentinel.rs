//! [`SentinelSet`]: one master, two replicas and three sentinels.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use redis::cmd;

use super::{
    NODE_OPTIONS, SETTLE_TIMEOUT, ask, info_field, on_own_runtime, settle, streams_to, tell,
};
use crate::certs::Certificates;
use crate::redis::{RedisServer, serves_tls, tls_options};
use crate::server::{ServerProcess, free_port, require_binary};

/// The name the sentinels of a [`SentinelSet`] monitor their master by.
pub const MASTER_NAME: &str = "distlock";

const REPLICAS: usize = 2;
const SENTINELS: usize = 3;
/// Sentinels that must agree the master is down before a failover.
const QUORUM: usize = 2;
/// A master that does not answer for this long is down: failovers start
/// about a second after a kill.
const DOWN_AFTER_MS: u32 = 1000;
/// Bounds each failover step (election, promotion, reconfiguration), and a
/// failed attempt is retried after twice this. Small for fast retries,
/// with room for a loaded machine: a promotion confirmed later than this
/// is abandoned.
const FAILOVER_TIMEOUT_MS: u32 = 3000;

/// Sentinel's internal periods (`SENTINEL DEBUG`, Redis 7.0 and later), shortened:
/// `INFO` every second from every instance (10 s by default) so replicas
/// are known healthy and eligible soon after any change; hello messages
/// (how sentinels find each other and spread a new configuration) every
/// 500 ms. TILT (sentinel stops acting when its timer is late, as on a
/// loaded machine) only after 5 s late and for 5 s, not 2 s and 30 s.
const SENTINEL_DEBUG: &[(&str, u32)] = &[
    ("info-period", 1000),
    ("publish-period", 500),
    ("tilt-trigger", 5000),
    ("tilt-period", 5000),
];

/// One master, two replicas (`replicaof`) and three sentinels monitoring
/// the master as [`MASTER_NAME`] with a quorum of two, on loopback, tuned
/// to fail over within a few seconds.
///
/// Nodes keep their index for life ([`node`](Self::node)); which of them
/// is the master changes with failovers, so ask
/// [`master`](Self::master). Methods that change the topology wait until
/// every sentinel agrees on the master, no failover is in progress, and
/// every live replica replicates the master.
#[derive(Debug)]
pub struct SentinelSet {
    nodes: Vec<RedisServer>,
    sentinels: Vec<ServerProcess>,
    tls: bool,
}

impl SentinelSet {
    /// Starts the set and waits until it has settled (typically about a
    /// second). Panics, naming the package, if `redis-server` is
    /// missing, or with the reason if the set does not settle.
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// [`start`](Self::start), every node and sentinel speaking only TLS
    /// with `certs` (replication and the sentinels' links too):
    /// [`url`](Self::url) is `rediss+sentinel://`.
    pub async fn start_tls(certs: &Certificates) -> Self {
        Self::start_on(Some(certs.dir())).await
    }

    async fn start_on(tls: Option<&Path>) -> Self {
        let node = |options: &[&str]| match tls {
            Some(certs) => {
                let mut options = options.to_vec();
                options.extend(["--tls-replication", "yes"]);
                RedisServer::start_tls_with(certs, &options)
            }
            None => RedisServer::start_with(options),
        };
        let master = node(NODE_OPTIONS);
        let master_port = master.port().to_string();
        let mut nodes = vec![master];
        for _ in 0..REPLICAS {
            let mut options = NODE_OPTIONS.to_vec();
            options.extend(["--replicaof", "127.0.0.1", &master_port]);
            nodes.push(node(&options));
        }
        let binary = require_binary("redis-server", "redis-server");
        // Each sentinel's configuration names its own id, the replicas and
        // the other sentinels: a sentinel saves (and fsyncs) its file on
        // every id it generates and peer it discovers, and on a busy disk
        // one fsync took over 20 s. Known in advance, nothing is saved
        // until a failover.
        let ports: Vec<u16> = (0..SENTINELS).map(|_| free_port()).collect();
        let id = |port: u16| {
            format!(
                "{:0>40x}",
                (u128::from(std::process::id()) << 16) | u128::from(port)
            )
        };
        let mut sentinels = Vec::new();
        for &port in &ports {
            let mut conf = match tls {
                Some(certs) => {
                    let options: String = tls_options(certs, "")
                        .chunks(2)
                        .map(|o| o.join(" ") + "\n")
                        .collect();
                    format!("port 0\ntls-port {port}\ntls-replication yes\n{options}")
                }
                None => format!("port {port}\n"),
            };
            conf += &format!(
                "bind 127.0.0.1\n\
                 sentinel myid {}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {QUORUM}\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n",
                id(port)
            );
            for replica in &nodes[1..] {
                let replica = replica.port();
                conf += &format!("sentinel known-replica {MASTER_NAME} 127.0.0.1 {replica}\n");
            }
            for &peer in ports.iter().filter(|&&p| p != port) {
                let peer_id = id(peer);
                conf +=
                    &format!("sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {peer} {peer_id}\n");
            }
            // Sentinel rewrites its configuration file, so it must be one.
            if let Some(certs) = tls {
                serves_tls(port, certs);
            }
            let args = vec!["sentinel.conf".into(), "--sentinel".into()];
            let files = [("sentinel.conf", conf.as_str())];
            let sentinel = ServerProcess::start_with_files(
                "redis-sentinel",
                binary.clone(),
                args,
                vec![port],
                &files,
            );
            let mut debug = cmd("SENTINEL");
            debug.arg("DEBUG");
            for (param, value) in SENTINEL_DEBUG {
                debug.arg(*param).arg(*value);
            }
            let _: () = tell(&sentinel, &debug, "SENTINEL DEBUG").await;
            sentinels.push(sentinel);
        }
        let set = SentinelSet {
            nodes,
            sentinels,
            tls: tls.is_some(),
        };
        set.wait_settled().await;
        set
    }

    /// A set shared by every test of this process, started on first use
    /// (on its own runtime, so any test's runtime may use it). For tests
    /// that inject no faults, such as the conformance suite; namespaces
    /// keep their keys apart.
    pub fn shared() -> &'static SentinelSet {
        static SET: OnceLock<SentinelSet> = OnceLock::new();
        SET.get_or_init(|| on_own_runtime(SentinelSet::start()))
    }

    /// Like [`shared`](Self::shared), a set started with
    /// [`start_tls`](Self::start_tls) and [`Certificates::shared`].
    pub fn shared_tls() -> &'static SentinelSet {
        static SET: OnceLock<SentinelSet> = OnceLock::new();
        SET.get_or_init(|| on_own_runtime(SentinelSet::start_tls(Certificates::shared())))
    }

    /// [`MASTER_NAME`].
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/distlock`
    /// (`rediss+sentinel://` with TLS): every sentinel, and the master's
    /// name.
    pub fn url(&self) -> String {
        format!(
            "{}+sentinel://{}/{MASTER_NAME}",
            self.scheme(),
            self.sentinel_addrs().join(",")
        )
    }

    /// `redis` or, with TLS, `rediss`.
    fn scheme(&self) -> &'static str {
        if self.tls { "rediss" } else { "redis" }
    }

    /// Each sentinel's `127.0.0.1:PORT`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.ports()[0]))
            .collect()
    }

    /// Each sentinel as a `redis://` URL, as redis-rs's `SentinelClient` takes them.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinel_addrs()
            .iter()
            .map(|addr| format!("{}://{addr}/", self.scheme()))
            .collect()
    }

    /// The sentinel processes, for faults.
    pub fn sentinels(&self) -> &[ServerProcess] {
        &self.sentinels
    }

    /// The data nodes, by index: 0 is the first master, 1 and 2 its replicas.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Data node `i`.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// The master's `127.0.0.1:PORT` as the first sentinel that answers
    /// reports it (during a failover, sentinels may disagree).
    pub async fn master_addr(&self) -> String {
        let port = settle("ask a sentinel for the master", SETTLE_TIMEOUT, || async {
            let mut last = String::from("no live sentinel");
            for sentinel in self.reachable_sentinels() {
                match self.reported_master(sentinel).await {
                    Ok(port) => return Ok(port),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .await;
        format!("127.0.0.1:{port}")
    }

    /// The index of the master node, once the set has settled.
    pub async fn master(&self) -> usize {
        self.wait_settled().await
    }

    /// The live nodes other than the master, by node index, ascending;
    /// a paused replica is still one.
    pub async fn replicas(&self) -> Vec<usize> {
        let master = self.master().await;
        (0..self.nodes.len())
            .filter(|&i| i != master && self.nodes[i].process().is_alive())
            .collect()
    }

    /// How many live replicas there are ([`replicas`](Self::replicas)).
    pub async fn replica_count(&self) -> usize {
        self.replicas().await.len()
    }

    /// `connected_slaves` from the master's `INFO replication`: replicas
    /// with a replication link, paused ones included.
    pub async fn connected_replicas(&self) -> usize {
        let master = self.master().await;
        let node = self.nodes[master].process();
        let info: String = tell(node, cmd("INFO").arg("replication"), "INFO on the master").await;
        info_field(&info, "connected_slaves")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no connected_slaves in {info}"))
    }

    /// Kills the master (SIGKILL) and waits until the sentinels have
    /// promoted a replica and the set has settled on it; returns the new
    /// master's index. The killed node stays down until
    /// [`revive`](Self::revive).
    pub async fn kill_master(&self) -> usize {
        let old = self.master().await;
        self.nodes[old].process().kill();
        self.failed_over_from(old, "a failover after killing the master")
            .await
    }

    /// Pauses (SIGSTOP) the master and waits until the sentinels have
    /// promoted a replica and the set has settled on it; returns `(old,
    /// new)` master indices. The paused node keeps its sockets and its
    /// data: resumed ([`resume`](Self::resume)), it still believes itself
    /// the master and takes writes until the sentinels demote it, as a
    /// master cut off by a partition would.
    pub async fn pause_master(&self) -> (usize, usize) {
        let old = self.master().await;
        self.nodes[old].process().pause();
        let new = self
            .failed_over_from(old, "a failover after pausing the master")
            .await;
        (old, new)
    }

    /// Resumes (SIGCONT) paused node `i`, whatever its role. Call
    /// [`wait_settled`](Self::wait_settled) to wait until it has rejoined
    /// (a former master as a replica of the current one).
    pub fn resume(&self, i: usize) {
        self.nodes[i].process().resume();
    }

    /// Waits until the set has settled on a master other than `old`.
    async fn failed_over_from(&self, old: usize, what: &str) -> usize {
        settle(what, SETTLE_TIMEOUT, || async {
            match self.settled().await? {
                new if new == old => Err("the sentinels still name the old master".into()),
                new => Ok(new),
            }
        })
        .await
    }

    /// Restarts killed node `i` and waits until it has rejoined as a
    /// replica of the current master. A former master comes back as a
    /// master of its own, taking writes, until the sentinels convert it
    /// (3–4 s measured): the split brain of a real failover.
    pub async fn revive(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_settled().await;
    }

    /// Pauses (SIGSTOP) replica `i` of [`replicas`](Self::replicas) and
    /// returns its node index: it keeps its connections but acknowledges
    /// nothing, so `WAIT` cannot count it.
    pub async fn pause_replica(&self, i: usize) -> usize {
        let node = self.replicas().await[i];
        self.nodes[node].process().pause();
        node
    }

    /// Resumes (SIGCONT) replica `i` of [`replicas`](Self::replicas) and
    /// returns its node index. It catches up by itself; call
    /// [`wait_settled`](Self::wait_settled) to wait for that.
    pub async fn resume_replica(&self, i: usize) -> usize {
        let node = self.replicas().await[i];
        self.nodes[node].process().resume();
        node
    }

    /// Waits until the set has settled (see [`SentinelSet`]) and returns
    /// the master's index; panics with the reason if it does not.
    pub async fn wait_settled(&self) -> usize {
        settle("the sentinel set settling", SETTLE_TIMEOUT, || {
            self.settled()
        })
        .await
    }

    fn reachable_sentinels(&self) -> impl Iterator<Item = &ServerProcess> {
        self.sentinels
            .iter()
            .filter(|s| s.is_alive() && !s.is_paused())
    }

    async fn reported_master(&self, sentinel: &ServerProcess) -> Result<u16, String> {
        let addr: Vec<String> = ask(
            sentinel.ports()[0],
            cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME),
        )
        .await?;
        addr.get(1)
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| format!("no master address in {addr:?}"))
    }

    /// The master's index if the set has settled, else why not.
    async fn settled(&self) -> Result<usize, String> {
        let reachable = |i: &usize| {
            let p = self.nodes[*i].process();
            p.is_alive() && !p.is_paused()
        };
        let mut agreed = None;
        for sentinel in self.reachable_sentinels() {
            let port = sentinel.ports()[0];
            let master = self.reported_master(sentinel).await?;
            if agreed.is_some_and(|m| m != master) {
                return Err(format!(
                    "sentinels disagree on the master: {agreed:?}, {master}"
                ));
            }
            agreed = Some(master);
            let state: HashMap<String, String> =
                ask(port, cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME)).await?;
            if state.get("flags").map(String::as_str) != Some("master")
                || state.get("num-other-sentinels") != Some(&(SENTINELS - 1).to_string())
            {
                return Err(format!("sentinel {port} on the master: {state:?}"));
            }
            // A failover needs the sentinels to know the replicas healthy.
            let known: Vec<HashMap<String, String>> =
                ask(port, cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME)).await?;
            for i in (0..self.nodes.len()).filter(reachable) {
                let node_port = self.nodes[i].port();
                if node_port == master {
                    continue;
                }
                let healthy = known.iter().any(|r| {
                    r.get("port") == Some(&node_port.to_string())
                        && r.get("flags").map(String::as_str) == Some("slave")
                        && r.get("master-port") == Some(&master.to_string())
                        && r.get("master-link-status").map(String::as_str) == Some("ok")
                });
                if !healthy {
                    return Err(format!("sentinel {port} on replica {node_port}: {known:?}"));
                }
            }
        }
        let master = agreed.ok_or("no sentinel answers")?;
        let index = (0..self.nodes.len())
            .find(|i| self.nodes[*i].port() == master && reachable(i))
            .ok_or_else(|| format!("the sentinels name {master}, not a live node"))?;
        for i in (0..self.nodes.len()).filter(reachable) {
            let port = self.nodes[i].port();
            let info: String = ask(port, cmd("INFO").arg("replication")).await?;
            let role = info_field(&info, "role");
            let ok = if i == index {
                role == Some("master")
            } else {
                role == Some("slave")
                    && info_field(&info, "master_port") == Some(&master.to_string())
                    && info_field(&info, "master_link_status") == Some("up")
            };
            if !ok {
                return Err(format!("node {port} not yet in place: {info}"));
            }
        }
        let replicas = (0..self.nodes.len()).filter(reachable).count() - 1;
        streams_to(master, "distlock-fixture:settled", replicas).await?;
        Ok(index)
    }
}
