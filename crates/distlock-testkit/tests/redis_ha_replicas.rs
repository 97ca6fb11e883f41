//! The default replica count on replicated Redis: counted from the
//! topology's view (the sentinels' replica list, the cluster's node
//! table), not from the replicas connected to the master. Each test starts
//! its own topology, since it cuts it.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use distlock::backend::redis::{RedisBackend, RedisKeys};
use distlock::{Error, Key, LockKey, Locker, Namespace, ObtainOptions};
use distlock_testkit::redis::RedisServer;
use distlock_testkit::redis_ha::{RedisCluster, SentinelSet};
use redis::cmd;

/// A `masterauth` the masters do not have: a replica given it cannot
/// resync, while the sentinels and the cluster still deem it alive.
const WRONG_MASTERAUTH: &str = "not-the-password";

async fn set_masterauth(node: &RedisServer, password: &str) {
    let mut set = cmd("CONFIG");
    set.arg("SET").arg("masterauth").arg(password);
    let () = set.query_async(&mut node.admin().await).await.unwrap();
}

/// Cuts `master` off `replicas`, as a partition would: the replicas
/// cannot resync and the master drops its links to them.
async fn cut(master: &RedisServer, replicas: &[&RedisServer]) {
    for replica in replicas {
        set_masterauth(replica, WRONG_MASTERAUTH).await;
    }
    let mut kill = cmd("CLIENT");
    kill.arg("KILL").arg("TYPE").arg("replica");
    let _: u64 = kill.query_async(&mut master.admin().await).await.unwrap();
    let mut info = cmd("INFO");
    info.arg("replication");
    let text: String = info.query_async(&mut master.admin().await).await.unwrap();
    assert!(
        text.contains("connected_slaves:0"),
        "the master still has a replica connected: {text}"
    );
}

async fn heal(replicas: &[&RedisServer]) {
    for replica in replicas {
        set_masterauth(replica, "").await;
    }
}

/// With the default count, a grant on a master whose replicas are cut
/// off is not handed out: nobody could acknowledge it, and a replica may
/// be promoted over it. Before, the count was the master's connected
/// replicas, none here, and such a master granted alone (torture,
/// `--replicas default`: 25 overlapping grants in 60 s on Sentinel, 11 on
/// Cluster).
async fn a_cut_off_master_grants_nothing(locker: &Locker, what: &str) {
    let options = ObtainOptions::new().wait(Duration::from_secs(2));
    let attempt = locker.obtain_with("k", options).await;
    assert!(
        matches!(attempt, Err(Error::Timeout { .. } | Error::Backend { .. })),
        "{what}: a grant on a master cut off from its replicas was handed out: {attempt:?}"
    );
}

fn locker(backend: RedisBackend) -> Locker {
    Locker::builder(Arc::new(backend))
        .namespace("cutcount")
        .owns_backend()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_master_cut_off_its_replicas_grants_nothing_by_default() {
    let set = SentinelSet::start().await;
    let backend = RedisBackend::connect(&set.url()).await.unwrap();
    assert_eq!(backend.replicas(), 1);
    let locker = locker(backend);
    let master = set.node(set.master().await);
    let replicas: Vec<&RedisServer> = set
        .replicas()
        .await
        .into_iter()
        .map(|i| set.node(i))
        .collect();
    locker.obtain("k").await.unwrap().release().await.unwrap();
    cut(master, &replicas).await;
    a_cut_off_master_grants_nothing(&locker, "Sentinel").await;
    heal(&replicas).await;
    let _ = set.wait_settled().await;
    locker.obtain("k").await.unwrap().release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_cut_off_its_replica_grants_nothing_by_default() {
    let cluster = RedisCluster::start().await;
    let backend = RedisBackend::connect(&cluster.url()).await.unwrap();
    assert_eq!(backend.replicas(), 1);
    let locker = locker(backend);
    let name = RedisKeys::new(&LockKey {
        namespace: Namespace::new("cutcount").unwrap(),
        key: Key::new("k").unwrap(),
    })
    .lock;
    let slot = cluster.slot_of(&name).await;
    let master = cluster.master_of_slot(slot).await;
    let replica = cluster.replica_of(master).await.expect("a replica");
    locker.obtain("k").await.unwrap().release().await.unwrap();
    cut(cluster.node(master), &[cluster.node(replica)]).await;
    a_cut_off_master_grants_nothing(&locker, "Cluster").await;
    heal(&[cluster.node(replica)]).await;
    cluster.wait_settled().await;
    locker.obtain("k").await.unwrap().release().await.unwrap();
}
