//! The backends the harness can torture, and everything backend-specific
//! it needs: starting the store (server and fault proxy), lockers for the
//! clients, raw access behind the library's back (a delete by name for
//! negative control 1, and the leftover check), and server faults.
//!
//! Adding a backend means one [`BackendKind`] variant plus one arm in each
//! `match` of this module (see the crate docs for what etcd took). The
//! replicated Redis topologies live in `redis_ha`.

mod client;
mod kind;
mod redis_ha;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distlock::backend::etcd::etcd_client::{self, GetOptions};
use distlock::backend::memory::MemoryBackend;
use distlock::{Key, LockKey, Locker, Namespace};
use distlock_testkit::etcd::{EtcdCluster, LeaderStatus};
use distlock_testkit::proxy::FaultProxy;
use distlock_testkit::redis::RedisServer;
use distlock_testkit::server::{ServerProcess, free_port};

pub use client::ClientStore;
pub use kind::BackendKind;

use crate::nemesis::FaultKind;
use redis_ha::Replicated;

/// `url` with `?namespace=NAME` (or `&namespace=NAME`, when it has
/// parameters already).
pub fn with_namespace(url: &str, namespace: &str) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}namespace={namespace}")
}

fn lock_key(namespace: &str, key: &str) -> LockKey {
    LockKey {
        namespace: Namespace::new(namespace).expect("valid namespace"),
        key: Key::new(key).expect("valid key"),
    }
}

/// The members of the etcd cluster the harness runs.
const ETCD_MEMBERS: usize = 3;

/// How long a leader kill waits for the others to elect a new leader.
const ELECTION_WITHIN: Duration = Duration::from_secs(20);

/// The orchestrator's side of a store: it owns the servers and the proxies.
#[derive(Debug)]
pub struct Store {
    kind: BackendKind,
    /// The URL clients use (through the proxies where there are some).
    client_url: String,
    memory: Option<Arc<MemoryBackend>>,
    redis: Option<RedisServer>,
    etcd: Option<EtcdCluster>,
    replicated: Option<Replicated>,
    /// Between the clients and each server (member).
    proxies: Vec<FaultProxy>,
    /// In front of each etcd member's peer port, tagging connections with
    /// the member that dialed.
    peer_proxies: Vec<FaultProxy>,
}

impl Store {
    /// Starts the store for `kind`, keeping its files under `run_dir`; on
    /// a replicated Redis, clients ask for `replicas` acknowledgements of
    /// each grant and extend (`?replicas=N`; `None`: the backend's default).
    pub async fn start(kind: BackendKind, run_dir: &Path, replicas: Option<usize>) -> Store {
        let none = Store {
            kind,
            client_url: String::new(),
            memory: None,
            redis: None,
            etcd: None,
            replicated: None,
            proxies: Vec::new(),
            peer_proxies: Vec::new(),
        };
        match kind {
            BackendKind::Memory => Store {
                client_url: "memory://".into(),
                memory: Some(Arc::new(MemoryBackend::new())),
                ..none
            },
            BackendKind::File => {
                let dir = run_dir.join("locks");
                std::fs::create_dir_all(&dir).expect("create the lock directory");
                let dir = dir.canonicalize().expect("an absolute lock directory");
                Store {
                    client_url: format!("file://{}", dir.display()),
                    ..none
                }
            }
            BackendKind::Redis => {
                // Durable fencing counters: tokens must survive SIGKILL + restart.
                let server = tokio::task::block_in_place(|| {
                    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
                });
                let upstream = format!("127.0.0.1:{}", server.port())
                    .parse()
                    .expect("a socket address");
                let proxy = FaultProxy::start(upstream).await.expect("start the proxy");
                Store {
                    client_url: format!("redis://{}/", proxy.addr()),
                    redis: Some(server),
                    proxies: vec![proxy],
                    ..none
                }
            }
            BackendKind::Etcd => {
                // Peers dial each other through the peer proxies, which read
                // etcd's `X-Server-From` header: that is how one member is
                // cut off from the others in both directions.
                let mut peer_proxies = Vec::new();
                let mut peers = Vec::new();
                for _ in 0..ETCD_MEMBERS {
                    let port = free_port();
                    let proxy = FaultProxy::start_tagging(
                        SocketAddr::from(([127, 0, 0, 1], port)),
                        "X-Server-From",
                    )
                    .await
                    .expect("start a peer proxy");
                    peers.push((port, proxy.addr()));
                    peer_proxies.push(proxy);
                }
                let cluster = tokio::task::block_in_place(|| EtcdCluster::start_with_peers(&peers));
                // The members listen before they have elected a leader; on a
                // loaded machine that took seconds, which the clients' first
                // connect spent (a 5 s control run once made no acquisition).
                cluster.leader(ELECTION_WITHIN).await;
                let mut proxies = Vec::new();
                for member in &cluster.members {
                    let upstream = member.endpoint.parse().expect("a socket address");
                    proxies.push(FaultProxy::start(upstream).await.expect("start a proxy"));
                }
                let endpoints = proxies
                    .iter()
                    .map(|p| p.addr().to_string())
                    .collect::<Vec<_>>();
                Store {
                    client_url: format!("etcd://{}", endpoints.join(",")),
                    etcd: Some(cluster),
                    proxies,
                    peer_proxies,
                    ..none
                }
            }
            BackendKind::RedisSentinel | BackendKind::RedisCluster => {
                let topology = Replicated::start(kind).await;
                Store {
                    client_url: match replicas {
                        Some(n) => format!("{}?replicas={n}", topology.url()),
                        None => topology.url(),
                    },
                    replicated: Some(topology),
                    ..none
                }
            }
        }
    }

    /// The backend.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The URL client processes use.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The client-side handle for in-process clients (and for the URL).
    pub fn client_store(&self) -> ClientStore {
        ClientStore::new(self.kind, &self.client_url, self.memory.clone())
    }

    /// Keys of `namespace` still held (every holder of the known `keys`,
    /// plus for Redis any lock key, waiters' queue or permit set at all),
    /// read directly from the store, not through the proxy. Read-only.
    pub async fn leftover(&self, namespace: &str, keys: &[String]) -> Vec<String> {
        let locker = match self.kind {
            BackendKind::Memory => Locker::builder(self.memory.clone().expect("memory store"))
                .namespace(namespace)
                .build()
                .expect("valid namespace"),
            BackendKind::File => Locker::from_url(&with_namespace(&self.client_url, namespace))
                .await
                .expect("open the lock directory"),
            BackendKind::Redis => {
                let url = self.redis.as_ref().expect("redis server").url();
                Locker::from_url(&with_namespace(&url, namespace))
                    .await
                    .expect("connect to redis")
            }
            BackendKind::RedisSentinel | BackendKind::RedisCluster => {
                // A failover may still be under way.
                let topology = self.replicated.as_ref().expect("a replicated Redis");
                topology.wait_settled().await;
                Locker::from_url(&with_namespace(&self.client_url, namespace))
                    .await
                    .expect("connect to the replicated Redis")
            }
            BackendKind::Etcd => {
                let cluster = self.etcd.as_ref().expect("etcd");
                // Faults are healed, but an election may still be under way.
                cluster.leader(ELECTION_WITHIN).await;
                let endpoints = cluster.endpoints().join(",");
                Locker::from_url(&format!("etcd://{endpoints}?namespace={namespace}"))
                    .await
                    .expect("connect to etcd")
            }
        };
        let mut found = Vec::new();
        for key in keys {
            // Every holder: a semaphore's or readers' permits too.
            match locker.holders(key.as_str()).await {
                Ok(held) => {
                    for holder in held.holders {
                        found.push(format!(
                            "{key} (token {}, expires in {:?}{})",
                            holder.fencing_token,
                            holder.expires_in,
                            held.limit
                                .map_or(String::new(), |n| format!(", permit of {n}"))
                        ));
                    }
                }
                Err(e) => found.push(format!("{key} (holders failed: {e})")),
            }
        }
        let masters = match &self.replicated {
            Some(topology) => topology.masters().await,
            None => self.redis.iter().collect(),
        };
        for server in masters {
            let mut conn = server.admin().await;
            // Permits live in `expiries` and `permits` beside the lock key;
            // the last one out must leave neither.
            for kind in ["lock", "queue", "waiting", "expiries", "permits"] {
                let pattern = format!("{namespace}:*:{kind}:*");
                let all: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut conn)
                    .await
                    .expect("KEYS");
                for name in all {
                    let known = keys.iter().any(|k| name.ends_with(&format!(":lock:{k}")));
                    if kind != "lock" || !known {
                        found.push(format!("{name} (unexpected {kind} key)"));
                    }
                }
            }
        }
        if let Some(cluster) = &self.etcd {
            // Any key at all under the namespace: a lock, or a waiter's
            // queue entry left behind.
            let mut client = etcd_client::Client::connect(cluster.endpoints(), None)
                .await
                .expect("connect to etcd");
            let all = client
                .get(
                    format!("/{namespace}/"),
                    Some(GetOptions::new().with_prefix()),
                )
                .await
                .expect("read the namespace");
            for kv in all.kvs() {
                found.push(format!(
                    "{} (etcd key, lease {})",
                    String::from_utf8_lossy(kv.key()),
                    kv.lease()
                ));
            }
        }
        let _ = locker.close().await;
        found
    }

    /// Every server process (etcd: one per member).
    fn servers(&self) -> Vec<&ServerProcess> {
        let redis = self.redis.iter().map(|r| r.process());
        let etcd = self.etcd.iter().flat_map(|c| c.members.iter());
        let replicated = self.replicated.iter().flat_map(|t| t.servers());
        redis
            .chain(etcd.map(|m| &m.process))
            .chain(replicated)
            .collect()
    }

    /// The etcd leader, and the words that name it in fault details.
    async fn etcd_leader(&self) -> Option<(LeaderStatus, String)> {
        let cluster = self.etcd.as_ref()?;
        let leader = cluster.leader_status(ELECTION_WITHIN).await;
        let name = format!(
            "leader {} (term {})",
            cluster.members[leader.index].name, leader.term
        );
        Some((leader, name))
    }

    /// SIGKILLs the server (etcd: the leader, and waits for a new one to
    /// be elected) and starts it again on the same ports and data.
    /// Describes what it did.
    pub async fn kill_server(&mut self) -> String {
        if let Some(server) = &mut self.redis {
            tokio::task::block_in_place(|| server.restart());
            return "SIGKILL, restarted on the same port and data".into();
        }
        let Some((leader, name)) = self.etcd_leader().await else {
            return "no server".into();
        };
        let index = leader.index;
        let cluster = self.etcd.as_mut().expect("etcd");
        let killed_at = Instant::now();
        cluster.members[index].process.kill();
        let next = cluster.leader_status(ELECTION_WITHIN).await;
        let elected_after = killed_at.elapsed();
        tokio::task::block_in_place(|| cluster.members[index].process.restart());
        format!(
            "SIGKILL {name}; {} elected for term {} after {} ms; restarted",
            cluster.members[next.index].name,
            next.term,
            elected_after.as_millis()
        )
    }

    /// A replicated Redis: carries out topology fault `kind` (see
    /// [`FaultKind::topology_fault`]) aimed at `key` of `namespace` (on a
    /// cluster: its slot's master), lasting `duration` where it lasts.
    /// Describes it.
    pub async fn topology_fault(
        &mut self,
        kind: FaultKind,
        namespace: &str,
        key: &str,
        duration: Duration,
    ) -> String {
        match &mut self.replicated {
            Some(topology) => topology.fault(kind, namespace, key, duration).await,
            None => format!("{kind}: not a replicated Redis"),
        }
    }

    /// Redis: `FLUSHALL`, sent to the server directly. Describes it; a
    /// server that does not take a connection within a few seconds (just
    /// restarted, or paused by an earlier fault) is reported, not a panic.
    pub async fn flushall(&self) -> String {
        let Some(server) = &self.redis else {
            return "no Redis server".into();
        };
        let mut conn = match admin_within(&server.url(), Duration::from_secs(5)).await {
            Ok(conn) => conn,
            Err(e) => return format!("FLUSHALL not sent: {e}"),
        };
        let keys: Result<u64, _> = redis::cmd("DBSIZE").query_async(&mut conn).await;
        let flushed: Result<(), _> = redis::cmd("FLUSHALL").query_async(&mut conn).await;
        match flushed {
            Ok(()) => format!("FLUSHALL: {} keys gone", keys.unwrap_or_default()),
            Err(e) => format!("FLUSHALL failed: {e}"),
        }
    }

    /// Redis: SIGKILL, delete its data (the AOF, any RDB), restart on the
    /// same port, empty. Describes it.
    pub async fn wipe_restart(&mut self) -> String {
        let Some(server) = &mut self.redis else {
            return "no Redis server".into();
        };
        let dir = server.process().dir().to_owned();
        tokio::task::block_in_place(|| {
            server.process().kill();
            let mut wiped = Vec::new();
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.file_name().is_some_and(|n| n == "server.log") {
                    continue;
                }
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                wiped.push(entry.file_name().to_string_lossy().into_owned());
            }
            server.restart();
            format!("SIGKILL, deleted {}, restarted empty", wiped.join(", "))
        })
    }

    /// SIGSTOPs the server (etcd: the leader) and returns its index in
    /// [`Store::resume_server`]'s terms, with a description.
    pub async fn pause_server(&self) -> (usize, String) {
        if let Some(redis) = &self.redis {
            redis.process().pause();
            return (0, "SIGSTOP".into());
        }
        let Some((leader, name)) = self.etcd_leader().await else {
            return (0, "no server".into());
        };
        self.servers()[leader.index].pause();
        (leader.index, format!("SIGSTOP {name}"))
    }

    /// SIGCONTs server `index` (from [`Store::pause_server`]).
    pub fn resume_server(&self, index: usize) {
        if let Some(server) = self.servers().get(index) {
            server.resume();
        }
    }

    /// Cuts the etcd leader off from its peers (both ways: its own peer
    /// port, and whatever it dials at the others) and from its clients.
    /// [`Store::heal`] ends it. Describes what it did.
    pub async fn isolate_leader(&self) -> String {
        let Some((leader, name)) = self.etcd_leader().await else {
            return "no etcd cluster".into();
        };
        // etcd names a member in hex in `X-Server-From`.
        let tag = format!("{:x}", leader.id);
        for (i, peer) in self.peer_proxies.iter().enumerate() {
            if i == leader.index {
                peer.set_blackhole(true);
            } else {
                peer.set_blackhole_tag(&tag, true);
            }
        }
        self.proxies[leader.index].set_blackhole(true);
        format!("isolated {name}")
    }

    /// Who leads the etcd cluster now, in words.
    pub async fn leader(&self) -> String {
        match self.etcd_leader().await {
            Some((_, name)) => name,
            None => "no etcd cluster".into(),
        }
    }

    /// The fault proxies between the clients and the servers.
    pub fn proxies(&self) -> &[FaultProxy] {
        &self.proxies
    }

    /// Undoes every server and network fault still in force.
    pub fn heal(&self) {
        for server in self.servers() {
            server.resume();
        }
        for proxy in self.proxies.iter().chain(&self.peer_proxies) {
            proxy.heal();
        }
    }
}

/// An admin connection to the Redis at `url`, retried until `within` has passed.
async fn admin_within(
    url: &str,
    within: Duration,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let deadline = tokio::time::Instant::now() + within;
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = tokio::time::timeout(left, client.get_multiplexed_async_connection()).await;
        match attempt {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(_)) if tokio::time::Instant::now() + Duration::from_millis(100) < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(format!("no connection within {within:?}: {e}")),
            Err(_) => return Err(format!("no connection within {within:?}")),
        }
    }
}
