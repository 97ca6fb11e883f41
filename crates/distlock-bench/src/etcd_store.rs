//! etcd: distlock next to raw etcd-client floors (two sequential writes),
//! etcd's own Lock service, and the seed's lease-per-lock pattern, on a
//! single-node etcd this run started.

use std::sync::Arc;
use std::time::Duration;

use distlock::Locker;
use distlock::backend::etcd::etcd_client::{
    Client, Compare, CompareOp, GetOptions, LockOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp,
};
use distlock::backend::etcd::{EtcdBackend, EtcdOptions};
use distlock_testkit::etcd::{EtcdCluster, delete_holder};
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::runner::{Cycle, Subject, keys};
use crate::stores::Store;

pub struct EtcdStore {
    cluster: EtcdCluster,
    client: OnceCell<Client>,
    /// A lease kept alive for the Lock-service peer (the peer's session).
    peer_lease: OnceCell<i64>,
}

impl EtcdStore {
    pub fn start() -> Self {
        EtcdStore {
            cluster: EtcdCluster::start_durable(1),
            client: OnceCell::new(),
            peer_lease: OnceCell::new(),
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    async fn client(&self) -> Client {
        self.client
            .get_or_init(|| async {
                Client::connect(self.endpoints(), None)
                    .await
                    .expect("connect to the bench etcd")
            })
            .await
            .clone()
    }

    /// A lease for the Lock-service peer, kept alive for the whole run,
    /// as the peer's session would be (not part of its cycle).
    async fn peer_lease(&self) -> i64 {
        *self
            .peer_lease
            .get_or_init(|| async {
                let mut client = self.client().await;
                let lease = client.lease_grant(60, None).await.expect("grant").id();
                let (mut keeper, mut responses) =
                    client.lease_keep_alive(lease).await.expect("keepalive");
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(15)).await;
                        if keeper.keep_alive().await.is_err() || responses.message().await.is_err()
                        {
                            return;
                        }
                    }
                });
                lease
            })
            .await
    }

    /// `GET /metrics` on the member's client port: gRPC messages received
    /// per method (unary requests and stream messages alike).
    async fn grpc_counts(&self) -> Vec<(String, f64)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let endpoint = self.endpoints()[0].clone();
        let Ok(mut stream) = tokio::net::TcpStream::connect(&endpoint).await else {
            return Vec::new();
        };
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return Vec::new();
        }
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body).await;
        let mut out: Vec<(String, f64)> = Vec::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Some(method) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("grpc_method=\""))
                .map(|m| m.trim_end_matches('"'))
            else {
                continue;
            };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            let name = format!("{method} calls");
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => *v += value,
                None => out.push((name, value)),
            }
        }
        out
    }
}

fn first_of_prefix() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
}

impl Store for EtcdStore {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn locker<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Locker> {
        Box::pin(async move {
            let backend = EtcdBackend::connect(self.endpoints(), EtcdOptions::new())
                .await
                .expect("connect distlock to the bench etcd");
            Locker::builder(Arc::new(backend))
                .namespace(namespace)
                .owns_backend()
                .build()
                .expect("valid namespace")
        })
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.client().await;
            delete_holder(&mut client, namespace, key).await;
        })
    }

    fn baselines(&self, tasks: usize) -> BoxFuture<'_, Vec<Subject>> {
        Box::pin(async move {
            let client = self.client().await;
            let lease = self.peer_lease().await;

            let floor_keys = keys("/bench-raw/k", tasks);
            let floor: Cycle = {
                let client = client.clone();
                Arc::new(move |k| {
                    let mut client = client.clone();
                    Box::pin(async move {
                        let key = floor_keys[k].as_str();
                        let txn = Txn::new()
                            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(key, "v", None)]);
                        assert!(client.txn(txn).await.expect("txn").succeeded());
                        client.delete(key, None).await.expect("delete");
                    })
                })
            };

            let lock_keys = keys("/bench-lockrpc/k", tasks);
            let lock_rpc: Cycle = {
                let client = client.clone();
                Arc::new(move |k| {
                    let mut client = client.clone();
                    Box::pin(async move {
                        let opts = LockOptions::new().with_lease(lease);
                        let locked = client
                            .lock(lock_keys[k].as_str(), Some(opts))
                            .await
                            .expect("Lock");
                        client.unlock(locked.key().to_vec()).await.expect("Unlock");
                    })
                })
            };

            let seed_keys = keys("/bench-seed/k", tasks);
            let seed: Cycle = {
                let client = client.clone();
                Arc::new(move |k| {
                    let mut client = client.clone();
                    Box::pin(async move {
                        let key = seed_keys[k].as_str();
                        let lease = client.lease_grant(5, None).await.expect("grant").id();
                        let opts = PutOptions::new().with_lease(lease);
                        client.put(key, "v", Some(opts)).await.expect("put");
                        client.delete(key, None).await.expect("delete");
                        client.lease_revoke(lease).await.expect("revoke");
                    })
                })
            };

            // distlock's two transactions by hand: put-if-absent with the
            // lease + read the prefix's first entry; the guarded delete.
            let same_keys = keys("/bench-txns/k", tasks);
            let same: Cycle = {
                let client = client.clone();
                Arc::new(move |k| {
                    let mut client = client.clone();
                    Box::pin(async move {
                        let prefix = format!("{}/", same_keys[k]);
                        let entry = format!(
                            "{prefix}{}",
                            distlock::OwnerToken::random().unwrap().to_hex()
                        );
                        let acquire = Txn::new()
                            .when([Compare::create_revision(
                                entry.as_str(),
                                CompareOp::Equal,
                                0,
                            )])
                            .and_then([
                                TxnOp::put(
                                    entry.as_str(),
                                    "30000:0",
                                    Some(PutOptions::new().with_lease(lease)),
                                ),
                                TxnOp::get(prefix.as_str(), Some(first_of_prefix())),
                            ]);
                        let resp = client.txn(acquire).await.expect("acquire txn");
                        let revision = resp.header().expect("header").revision();
                        let release = Txn::new()
                            .when([Compare::create_revision(
                                entry.as_str(),
                                CompareOp::Equal,
                                revision,
                            )])
                            .and_then([TxnOp::delete(entry.as_str(), None)]);
                        assert!(client.txn(release).await.expect("release txn").succeeded());
                    })
                })
            };

            let floor = Subject::new("raw etcd-client: txn put-if-absent + delete", floor);
            let seed = Subject::new("seed pattern: lease grant + put + delete + revoke", seed);
            // Issue 12's targets (the seed's pattern: issue 7's).
            let lock_rpc = Subject::new("etcd Lock + Unlock RPCs (warm lease)", lock_rpc);
            let (floor, seed, lock_rpc) = if tasks == 1 {
                (
                    floor.target("etcd uncontended: distlock / 2 sequential writes", 1.05),
                    seed.target("etcd uncontended: distlock / seed's pattern", 0.6),
                    lock_rpc,
                )
            } else {
                let what =
                    format!("etcd {tasks} tasks: distlock / Lock + Unlock RPCs, wall per cycle");
                (floor, seed, lock_rpc.target(what, 1.0))
            };
            vec![
                floor,
                lock_rpc,
                seed,
                Subject::new("raw etcd-client running distlock's 2 txns", same),
            ]
        })
    }

    /// The store revision (key changes), the raft index (proposals:
    /// writes, lease grants and revokes) and gRPC messages per method.
    fn counters(&self) -> BoxFuture<'_, Vec<(String, f64)>> {
        Box::pin(async move {
            let mut client = self.client().await;
            // One Status call: its header carries the store revision.
            let status = client.status().await.expect("status");
            let revision = status.header().expect("header").revision();
            let raft = status.raft_index();
            let mut out = vec![
                ("#revisions".to_owned(), revision as f64),
                ("#raft proposals".to_owned(), raft as f64),
            ];
            out.extend(self.grpc_counts().await);
            out
        })
    }

    fn slowness(&self) -> usize {
        5
    }
}
