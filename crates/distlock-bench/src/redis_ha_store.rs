//! Redis Sentinel and Redis Cluster (issue 15): distlock with and without
//! replica acknowledgement (`?replicas=1`, `?replicas=0`) next to
//! single-server distlock and rslock on the same servers, and fresh
//! topologies for the failover scenario to kill masters of.

use std::collections::HashMap;
use std::time::Duration;

use distlock::backend::redis::RedisKeys;
use distlock::{Key, LockKey, Locker, Namespace};
use distlock_testkit::redis::RedisServer;
use distlock_testkit::redis_ha::{RedisCluster, SentinelSet, key_slot};
use futures::future::BoxFuture;
use redis::{Value, cmd};

use crate::redis_store::{info_counters, rslock_cycle};
use crate::runner::{Subject, keys, keys_where};
use crate::stores::{Cycles, Replicated, Store, obtain_cycle};

/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;

/// How long an admin command of the bench may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Which replicated topology.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// The testkit's [`SentinelSet`]: one master, two replicas, three sentinels.
    Sentinel,
    /// The testkit's [`RedisCluster`]: three masters with one replica each.
    Cluster,
}

enum Servers {
    Sentinel(SentinelSet),
    Cluster(RedisCluster),
}

/// A started topology and the master the bench's keys live on.
pub struct Topology {
    servers: Servers,
    /// That master's node index: the Sentinel set's master, or the cluster
    /// master serving slot 0.
    master: usize,
    /// The slots it serves (inclusive ranges): all of them under Sentinel.
    slots: Vec<(u16, u16)>,
    /// Every master's `redis://` URL, for the store's counters.
    masters: Vec<String>,
}

impl Topology {
    /// Starts a topology and waits until it has settled.
    pub async fn start(kind: Kind) -> Self {
        match kind {
            Kind::Sentinel => {
                let set = SentinelSet::start().await;
                let master = set.master().await;
                Topology {
                    masters: vec![set.node(master).url()],
                    servers: Servers::Sentinel(set),
                    master,
                    slots: vec![(0, SLOTS - 1)],
                }
            }
            Kind::Cluster => {
                let cluster = RedisCluster::start().await;
                let master = cluster.master_of_slot(0).await;
                let masters = cluster.masters().await;
                Topology {
                    masters: masters.iter().map(|&i| cluster.node(i).url()).collect(),
                    slots: served_slots(cluster.node(master).port()).await,
                    servers: Servers::Cluster(cluster),
                    master,
                }
            }
        }
    }

    fn node(&self, i: usize) -> &RedisServer {
        match &self.servers {
            Servers::Sentinel(set) => set.node(i),
            Servers::Cluster(cluster) => cluster.node(i),
        }
    }

    /// The `redis://` URL of the master the bench's keys live on.
    fn master_url(&self) -> String {
        self.node(self.master).url()
    }

    /// Its slots as `0-5460`, for the report.
    fn slot_ranges(&self) -> String {
        let ranges: Vec<String> = self.slots.iter().map(|(s, e)| format!("{s}-{e}")).collect();
        ranges.join(",")
    }

    /// A rslock manager on the same servers: the master's address under
    /// Sentinel (rslock has no Sentinel client), its cluster client on a
    /// cluster (one `ClusterClient`, which counts as one server).
    fn rslock(&self) -> rslock::LockManager {
        match &self.servers {
            Servers::Sentinel(_) => rslock::LockManager::new(vec![self.master_url()]),
            Servers::Cluster(cluster) => rslock::LockManager::new_cluster(cluster.node_urls())
                .expect("rslock's cluster client"),
        }
    }

    /// Runs `cmd` on the node of index `node` and returns its reply.
    async fn ask<T: redis::FromRedisValue>(&self, node: usize, cmd: &redis::Cmd) -> T {
        on_port(self.node(node).port(), cmd).await
    }
}

/// `cmd`'s reply from the Redis (or sentinel) at `127.0.0.1:port`.
async fn on_port<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> T {
    let work = async {
        let client = distlock_testkit::redis::admin_client(port)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    };
    match tokio::time::timeout(ADMIN_TIMEOUT, work).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => panic!("127.0.0.1:{port}: {e}"),
        Err(_) => panic!("127.0.0.1:{port} did not answer within {ADMIN_TIMEOUT:?}"),
    }
}

/// The slot ranges the master at `port` serves, from its `CLUSTER SLOTS`
/// (rows of start, end, the master's address and its replicas').
async fn served_slots(port: u16) -> Vec<(u16, u16)> {
    let rows: Vec<Vec<Value>> = on_port(port, cmd("CLUSTER").arg("SLOTS")).await;
    let int = |v: &Value| redis::from_redis_value::<u16>(v.clone()).expect("a slot or a port");
    let mut slots: Vec<(u16, u16)> = rows
        .iter()
        .filter(|row| {
            let master: Vec<Value> =
                redis::from_redis_value(row[2].clone()).expect("the master's address");
            int(&master[1]) == port
        })
        .map(|row| (int(&row[0]), int(&row[1])))
        .collect();
    slots.sort();
    assert!(!slots.is_empty(), "the master on {port} serves no slot");
    slots
}

/// The Redis name of the lock on `key` in `namespace`.
pub fn lock_name(namespace: &str, key: &str) -> String {
    RedisKeys::new(&LockKey {
        namespace: Namespace::new(namespace).expect("valid namespace"),
        key: Key::new(key).expect("valid key"),
    })
    .lock
}

impl Replicated for Topology {
    fn url(&self, query: &str) -> String {
        let base = match &self.servers {
            Servers::Sentinel(set) => set.url(),
            Servers::Cluster(cluster) => cluster.url(),
        };
        format!("{base}?{query}")
    }

    fn serves(&self, name: &str) -> bool {
        let slot = key_slot(name);
        self.slots.iter().any(|&(s, e)| (s..=e).contains(&slot))
    }

    fn kill_master(&self) {
        self.node(self.master).process().kill();
    }

    fn wait_failed_over(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let now = match &self.servers {
                Servers::Sentinel(set) => set.wait_settled().await,
                Servers::Cluster(cluster) => cluster.master_of_slot(self.slots[0].0).await,
            };
            assert_ne!(now, self.master, "no failover: node {now} still the master");
        })
    }

    /// Read from the servers: the sentinels' `SENTINEL MASTER` fields, or
    /// a node's `cluster-node-timeout`.
    fn timing(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            match &self.servers {
                Servers::Sentinel(set) => {
                    let port = set.sentinels()[0].ports()[0];
                    let state: HashMap<String, String> =
                        on_port(port, cmd("SENTINEL").arg("MASTER").arg(set.master_name())).await;
                    let field = |f: &str| state.get(f).map_or("?", String::as_str).to_owned();
                    format!(
                        "Sentinel: down-after-milliseconds {}, failover-timeout {} ms, quorum {} of {} sentinels, {} replicas",
                        field("down-after-milliseconds"),
                        field("failover-timeout"),
                        field("quorum"),
                        set.sentinels().len(),
                        field("num-slaves"),
                    )
                }
                Servers::Cluster(_) => {
                    let timeout: Vec<String> = self
                        .ask(
                            self.master,
                            cmd("CONFIG").arg("GET").arg("cluster-node-timeout"),
                        )
                        .await;
                    format!(
                        "Cluster: cluster-node-timeout {} ms, 3 masters with 1 replica each",
                        timeout.get(1).map_or("?", String::as_str)
                    )
                }
            }
        })
    }
}

/// `redis-sentinel` or `redis-cluster`: one topology for the whole run.
pub struct HaStore {
    kind: Kind,
    topology: Topology,
}

impl HaStore {
    /// Starts the topology (from synchronous code, on a runtime of its own).
    pub fn start(kind: Kind) -> Self {
        let topology = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the fixture")
            .block_on(Topology::start(kind));
        HaStore { kind, topology }
    }
}

/// A Locker on `url`, which it owns.
async fn connect(url: String) -> Locker {
    Locker::from_url(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

impl Store for HaStore {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Sentinel => "redis-sentinel",
            Kind::Cluster => "redis-cluster",
        }
    }

    /// With replica acknowledgement at its default.
    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker> {
        Box::pin(connect(
            self.topology.url(&format!("namespace={namespace}")),
        ))
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let name = lock_name(namespace, key);
            let mut del = cmd("DEL");
            del.arg(&name);
            let deleted: i64 = match &self.topology.servers {
                Servers::Sentinel(_) => self.topology.ask(self.topology.master, &del).await,
                Servers::Cluster(cluster) => {
                    let client = redis::cluster::ClusterClient::new(cluster.node_urls())
                        .expect("a cluster client");
                    let mut conn = client.get_async_connection().await.expect("connect");
                    del.query_async(&mut conn).await.expect("DEL")
                }
            };
            assert_eq!(deleted, 1, "no live lock on {name} to delete");
        })
    }

    /// distlock through the topology's client with `?replicas=1` and
    /// `?replicas=0`, single-server distlock (`?replicas=0`) on the master
    /// the keys live on, and rslock; on a cluster also distlock
    /// `?replicas=1` with keys on every master. The others' keys are all
    /// on one master, so every subject loads the same server.
    fn cycles<'a>(&'a self, namespace: &'a str, tasks: usize) -> BoxFuture<'a, Cycles> {
        Box::pin(async move {
            let t = &self.topology;
            let on_master = |prefix: &str| {
                keys_where(prefix, tasks, |key| t.serves(&lock_name(namespace, key)))
            };
            let query = |replicas: usize| format!("replicas={replicas}&namespace={namespace}");
            let acked = connect(t.url(&query(1))).await;
            let unacked = connect(t.url(&query(0))).await;
            let single = connect(format!("{}?{}", t.master_url(), query(0))).await;
            let rslock_keys = keys_where("bench-rslock:k", tasks, |key| t.serves(key));
            let (rslock, mut notes) = match &t.servers {
                Servers::Sentinel(_) => (
                    "rslock 0.10 on the master's address",
                    vec![format!(
                        "distlock replicas=N goes through the sentinels (redis+sentinel://); single-server distlock and rslock (which has no Sentinel client) connect to the master, {}",
                        t.master_url()
                    )],
                ),
                Servers::Cluster(_) => (
                    "rslock 0.10 cluster client",
                    vec![format!(
                        "every subject's keys but the last's are on the master {} (slots {}); distlock replicas=N and rslock (its `cluster` feature: one ClusterClient, quorum 1) route through redis-rs's cluster client, single-server distlock connects to that master",
                        t.master_url(),
                        t.slot_ranges()
                    )],
                ),
            };
            notes.push(
                "replicas=1: each grant waits for one replica's WAIT acknowledgement; replicas=0 and rslock do not"
                    .into(),
            );
            let mut subjects = vec![
                Subject::new(
                    "distlock replicas=1",
                    obtain_cycle(&acked, on_master("acked")),
                )
                .short("distlock replicas=1"),
                Subject::new(
                    "distlock replicas=0",
                    obtain_cycle(&unacked, on_master("unacked")),
                )
                .short("distlock replicas=0"),
                Subject::new(
                    "distlock single-server on the master, replicas=0",
                    obtain_cycle(&single, on_master("single")),
                ),
                Subject::new(rslock, rslock_cycle(t.rslock(), rslock_keys)),
            ];
            let mut pairs = vec![(0, 1), (1, 2), (1, 3), (0, 3)];
            let mut lockers = vec![acked, unacked, single];
            if let Servers::Cluster(_) = t.servers {
                let spread = connect(t.url(&query(1))).await;
                subjects.push(
                    Subject::new(
                        "distlock replicas=1, keys on every master",
                        obtain_cycle(&spread, keys("spread", tasks)),
                    )
                    .short("distlock replicas=1 on every master"),
                );
                pairs.push((4, 0));
                lockers.push(spread);
            }
            Cycles {
                subjects,
                pairs,
                lockers,
                notes,
            }
        })
    }

    /// Every master's `INFO`, added up.
    fn counters(&self) -> BoxFuture<'_, Vec<(String, f64)>> {
        Box::pin(info_counters(&self.topology.masters))
    }

    fn replicated(&self) -> BoxFuture<'_, Option<Box<dyn Replicated>>> {
        Box::pin(
            async move { Some(Box::new(Topology::start(self.kind).await) as Box<dyn Replicated>) },
        )
    }
}
