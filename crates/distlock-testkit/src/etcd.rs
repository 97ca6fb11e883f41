//! etcd servers and the etcd fixture (cargo feature `etcd`).
//!
//! [`EtcdFixture::new`] shares one single-node etcd per test process;
//! [`EtcdCluster::start`] starts a private cluster of any size for fault
//! tests. Every member runs under the [`ServerProcess`] watchdog, on free
//! loopback ports, in a temporary directory.
//!
//! Test members skip fsync (`--unsafe-no-fsync`): what they write reaches
//! the page cache, which outlives the faults the tests inject (a member
//! killed and restarted on its data), and a disk busy with builds no longer
//! stalls raft into repeated elections. Only a machine crash would lose
//! it. Benchmarks start members that fsync, as production runs them
//! ([`EtcdCluster::start_durable`]).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use distlock::backend::Backend;
use distlock::backend::etcd::etcd_client::{self, Client, GetOptions, SortOrder, SortTarget};
use distlock::backend::etcd::{EtcdBackend, EtcdOptions};
use distlock::{Key, LockKey, Namespace};
use futures::future::BoxFuture;

use crate::fixture::{Fixture, ReachableFixture};
use crate::server::{ServerProcess, free_port, require_binary};

/// The lease TTL the fixtures' lockers use: etcd's floor with its default
/// timings (1.5 s, rounded up to whole seconds).
pub const FIXTURE_SESSION_TTL: Duration = Duration::from_secs(2);

/// Who leads an [`EtcdCluster`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderStatus {
    /// The leader's index in [`EtcdCluster::members`].
    pub index: usize,
    /// Its raft term.
    pub term: u64,
    /// Its member id (etcd's peers name it in hex, in `X-Server-From`).
    pub id: u64,
}

/// One etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    /// The member's name in the cluster.
    pub name: String,
    /// Its client endpoint, `127.0.0.1:PORT`.
    pub endpoint: String,
    /// The process.
    pub process: ServerProcess,
}

/// A cluster of etcd members on loopback ports.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Starts `size` members forming one new cluster and waits until each
    /// accepts connections. Panics, naming the package, if `etcd` is missing.
    pub fn start(size: usize) -> Self {
        Self::start_with_peers(&Self::loopback_peers(size))
    }

    /// As [`start`](Self::start), with members that fsync every write, as
    /// production runs them: for measuring.
    pub fn start_durable(size: usize) -> Self {
        Self::start_members(&Self::loopback_peers(size), true)
    }

    fn loopback_peers(size: usize) -> Vec<(u16, SocketAddr)> {
        (0..size)
            .map(|_| {
                let port = free_port();
                (port, SocketAddr::from(([127, 0, 0, 1], port)))
            })
            .collect()
    }

    /// Starts one member per `(listen port, advertised address)` of
    /// `peers`: member `i` listens for peers on the port and tells the
    /// others to dial the address, where a fault proxy can stand in front
    /// of it. Panics, naming the package, if `etcd` is missing.
    pub fn start_with_peers(peers: &[(u16, SocketAddr)]) -> Self {
        Self::start_members(peers, false)
    }

    fn start_members(peers: &[(u16, SocketAddr)], fsync: bool) -> Self {
        let binary = require_binary("etcd", "etcd-server");
        let ports: Vec<(u16, u16)> = peers.iter().map(|(peer, _)| (free_port(), *peer)).collect();
        let token = format!("distlock-{}-{}", std::process::id(), ports[0].0);
        let initial_cluster = peers
            .iter()
            .enumerate()
            .map(|(i, (_, advertised))| format!("m{i}=http://{advertised}"))
            .collect::<Vec<_>>()
            .join(",");
        // Every member must be spawned before any can serve, so start them
        // all and only then wait for their ports.
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let name = format!("m{i}");
                let mut args: Vec<String> = vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    "data".into(),
                    "--listen-client-urls".into(),
                    format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls".into(),
                    format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls".into(),
                    format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls".into(),
                    format!("http://{}", peers[i].1),
                    "--initial-cluster".into(),
                    initial_cluster.clone(),
                    "--initial-cluster-token".into(),
                    token.clone(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                ];
                if !fsync {
                    args.push("--unsafe-no-fsync".into());
                }
                let process = ServerProcess::start_unready(
                    &format!("etcd-{name}"),
                    binary.clone(),
                    args,
                    vec![*client],
                );
                EtcdMember {
                    name,
                    endpoint: format!("127.0.0.1:{client}"),
                    process,
                }
            })
            .collect::<Vec<_>>();
        for member in &members {
            member.process.wait_ready(Duration::from_secs(30));
        }
        EtcdCluster { members }
    }

    /// Every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// The index of the current leader and its raft term, asking each live
    /// member in turn; waits up to `within` for one to be elected.
    pub async fn leader(&self, within: Duration) -> (usize, u64) {
        let leader = self.leader_status(within).await;
        (leader.index, leader.term)
    }

    /// The current leader, as [`EtcdCluster::leader`], with its member id.
    pub async fn leader_status(&self, within: Duration) -> LeaderStatus {
        let start = tokio::time::Instant::now();
        loop {
            for member in self.members.iter().filter(|m| m.process.is_alive()) {
                let Ok(Ok(mut client)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    Client::connect([member.endpoint.as_str()], None),
                )
                .await
                else {
                    continue;
                };
                let Ok(Ok(status)) =
                    tokio::time::timeout(Duration::from_secs(1), client.status()).await
                else {
                    continue;
                };
                let leader = status.leader();
                let Some(header) = status.header() else {
                    continue;
                };
                if leader != 0 && leader == header.member_id() {
                    let index = self
                        .members
                        .iter()
                        .position(|m| m.name == member.name)
                        .expect("a member of this cluster");
                    return LeaderStatus {
                        index,
                        term: status.raft_term(),
                        id: leader,
                    };
                }
            }
            assert!(
                start.elapsed() < within,
                "no etcd leader elected within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn shared_server() -> &'static EtcdCluster {
    static SERVER: OnceLock<EtcdCluster> = OnceLock::new();
    SERVER.get_or_init(|| EtcdCluster::start(1))
}

/// A connected backend on `endpoints` with the fixtures' session TTL.
pub async fn backend(endpoints: &[String]) -> EtcdBackend {
    EtcdBackend::connect(
        endpoints,
        EtcdOptions::new().session_ttl(FIXTURE_SESSION_TTL),
    )
    .await
    .expect("connect to the test etcd")
}

/// A plain etcd client on `endpoints`, for acting behind a locker's back.
pub async fn raw_client(endpoints: &[String]) -> Client {
    Client::connect(endpoints, None)
        .await
        .expect("connect to the test etcd")
}

/// Deletes the holder's entry of `namespace`/`key` behind its locker's
/// back; panics if nobody holds it.
pub async fn delete_holder(client: &mut Client, namespace: &str, key: &str) {
    let holder = holder_entry(client, namespace, key)
        .await
        .unwrap_or_else(|| panic!("no live lock on {namespace}/{key} to delete"));
    let deleted = client
        .delete(holder.key().to_vec(), None)
        .await
        .expect("delete the holder's key");
    assert_eq!(deleted.deleted(), 1);
}

/// The conformance suite's fixture: one single-node etcd shared by every
/// test of the process, a fresh backend (client, leases) per locker.
#[derive(Debug)]
pub struct EtcdFixture {
    endpoints: Vec<String>,
}

impl EtcdFixture {
    /// The fixture over this process's shared etcd, started on first use.
    pub async fn new() -> Self {
        let endpoints = tokio::task::spawn_blocking(|| shared_server().endpoints())
            .await
            .expect("start etcd");
        EtcdFixture { endpoints }
    }

    /// The shared server's client endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
}

/// The entry holding the lock on `key` in `namespace` (lowest create
/// revision under its prefix), if any.
pub async fn holder_entry(
    client: &mut Client,
    namespace: &str,
    key: &str,
) -> Option<etcd_client::KeyValue> {
    let prefix = EtcdBackend::key_prefix(&LockKey {
        namespace: Namespace::new(namespace).expect("valid namespace"),
        key: Key::new(key).expect("valid key"),
    });
    let first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    client
        .get(prefix, Some(first))
        .await
        .expect("read the lock prefix")
        .kvs()
        .first()
        .cloned()
}

impl Fixture for EtcdFixture {
    fn backend(&self) -> BoxFuture<'_, Arc<dyn Backend>> {
        Box::pin(async move { Arc::new(backend(&self.endpoints).await) as Arc<dyn Backend> })
    }

    /// 2 s rather than 300 ms: an extend is a linearizable etcd read, and on
    /// a loaded machine (parallel tests, fsyncs, a build beside them) one
    /// can take a good part of the margin a short lock leaves; at 1 s,
    /// `refresh_extends_the_lock` once found its lock expired on a machine
    /// running two test suites at once.
    fn short_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut client = raw_client(&self.endpoints).await;
            delete_holder(&mut client, namespace, key).await;
        })
    }
}

impl ReachableFixture for EtcdFixture {
    fn url(&self, namespace: &str) -> String {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        format!("etcd://{}?namespace={namespace}", hosts.join(","))
    }

    /// Every key under the namespace's prefix (holders and queued waiters:
    /// etcd keeps no counters, its revisions are the fencing tokens).
    fn leftovers<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut client = raw_client(&self.endpoints).await;
            let found = client
                .get(
                    format!("/{namespace}/"),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
                .expect("read the namespace");
            found
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect()
        })
    }
}
