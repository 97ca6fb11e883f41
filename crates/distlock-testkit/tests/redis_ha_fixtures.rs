//! The Sentinel and Cluster fixtures, checked with redis-rs's own Sentinel
//! and Cluster clients: they serve, and their faults do what they say.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use distlock_testkit::redis_ha::{MASTER_NAME, RedisCluster, SentinelSet};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncCommands, AsyncConnectionConfig};

/// Replies may take seconds: `WAIT` blocks by design, and a node that
/// saves its configuration fsyncs first (redis-rs waits 500 ms by default).
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a settled topology's replicas may take to acknowledge a write:
/// a round trip, with room for a loaded machine.
const ACK_MS: u64 = 250;

fn patient() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REPLY_TIMEOUT))
        .set_response_timeout(Some(REPLY_TIMEOUT))
}

/// A connection to the master, found through the sentinels.
async fn sentinel_master(set: &SentinelSet) -> MultiplexedConnection {
    let mut client = SentinelClient::build(
        set.sentinel_urls(),
        MASTER_NAME,
        None,
        SentinelServerType::Master,
    )
    .expect("sentinel URLs");
    client
        .get_async_connection_with_config(&patient())
        .await
        .expect("the master, through the sentinels")
}

async fn direct(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid URL")
        .get_multiplexed_async_connection_with_config(&patient())
        .await
        .expect("connect to a node")
}

async fn cluster_client(cluster: &RedisCluster) -> ClusterConnection {
    ClusterClient::builder(cluster.node_urls())
        .connection_timeout(REPLY_TIMEOUT)
        .response_timeout(REPLY_TIMEOUT)
        .build()
        .expect("node URLs")
        .get_async_connection()
        .await
        .expect("connect to the cluster")
}

/// SET `key` to `value` and read it back, on any connection.
async fn set_and_get(conn: &mut impl AsyncCommands, key: &str, value: &str) {
    let _: () = conn.set(key, value).await.expect("SET");
    let got: String = conn.get(key).await.expect("GET");
    assert_eq!(got, value);
}

/// `WAIT n timeout_ms` on `conn`: how many replicas acknowledged its writes.
async fn wait_replicas(conn: &mut MultiplexedConnection, n: usize, timeout_ms: u64) -> usize {
    redis::cmd("WAIT")
        .arg(n)
        .arg(timeout_ms)
        .query_async(conn)
        .await
        .expect("WAIT")
}

async fn role(conn: &mut MultiplexedConnection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .expect("INFO");
    let line = info.lines().find(|l| l.starts_with("role:")).expect("role");
    line["role:".len()..].trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_serves_reads_and_writes() {
    let started = Instant::now();
    let set = SentinelSet::start().await;
    eprintln!("sentinel set settled in {:?}", started.elapsed());
    let ports: Vec<String> = set.sentinel_addrs();
    assert_eq!(
        set.url(),
        format!("redis+sentinel://{}/distlock", ports.join(","))
    );
    assert_eq!(ports.len(), 3);
    assert_eq!(set.master_name(), "distlock");
    assert_eq!(set.master().await, 0, "node 0 starts as the master");
    assert_eq!(
        set.master_addr().await,
        format!("127.0.0.1:{}", set.node(0).port())
    );
    assert_eq!(set.replicas().await, vec![1, 2]);
    assert_eq!(set.connected_replicas().await, 2);

    let mut master = sentinel_master(&set).await;
    assert_eq!(role(&mut master).await, "master");
    set_and_get(&mut master, "greeting", "hello").await;
    // Settled means streaming to both replicas: the first WAIT answers at
    // once (a replica the master does not stream to yet takes up to 1 s).
    assert_eq!(wait_replicas(&mut master, 2, ACK_MS).await, 2);
    // Both replicas have it: they replicate this master.
    for i in set.replicas().await {
        let got: Option<String> = direct(&set.node(i).url())
            .await
            .get("greeting")
            .await
            .expect("GET on a replica");
        assert_eq!(got.as_deref(), Some("hello"), "replica {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sentinel_master_promotes_a_replica() {
    let mut set = SentinelSet::start().await;
    let mut before = sentinel_master(&set).await;
    let _: () = before.set("survivor", "1").await.expect("SET");
    assert_eq!(wait_replicas(&mut before, 2, 5000).await, 2);

    let old = set.master().await;
    let killed = Instant::now();
    let new = set.kill_master().await;
    eprintln!("sentinel failover settled in {:?}", killed.elapsed());
    assert_ne!(new, old);
    assert!(!set.node(old).process().is_alive());
    assert_eq!(
        set.master_addr().await,
        format!("127.0.0.1:{}", set.node(new).port())
    );
    assert_eq!(
        set.replica_count().await,
        1,
        "the other replica follows the new master"
    );

    // The sentinels lead a new client to the promoted replica, which has
    // the acknowledged write and takes new ones.
    let mut after = sentinel_master(&set).await;
    assert_eq!(role(&mut after).await, "master");
    let got: Option<String> = after.get("survivor").await.expect("GET");
    assert_eq!(got.as_deref(), Some("1"));
    let _: () = after
        .set("after", "2")
        .await
        .expect("SET after the failover");
    assert_eq!(wait_replicas(&mut after, 1, 5000).await, 1);

    let revived = Instant::now();
    set.revive(old).await;
    eprintln!(
        "killed master rejoined as a replica in {:?}",
        revived.elapsed()
    );
    assert_eq!(set.master().await, new, "reviving does not fail back");
    assert_eq!(set.replica_count().await, 2);
    let mut old_node = direct(&set.node(old).url()).await;
    assert_eq!(role(&mut old_node).await, "slave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_only_replicas_that_are_not_paused() {
    let set = SentinelSet::start().await;
    let mut master = sentinel_master(&set).await;
    let _: () = master.set("k", "0").await.expect("SET");
    // WAIT counts every replica that has acknowledged, however few it asks for.
    assert!(wait_replicas(&mut master, 1, 5000).await >= 1);
    assert_eq!(wait_replicas(&mut master, 2, 5000).await, 2);

    let first = set.pause_replica(0).await;
    assert!(set.node(first).process().is_paused());
    let _: () = master.set("k", "1").await.expect("SET");
    assert_eq!(
        wait_replicas(&mut master, 2, 300).await,
        1,
        "one replica paused"
    );

    set.pause_replica(1).await;
    let _: () = master.set("k", "2").await.expect("SET");
    assert_eq!(
        wait_replicas(&mut master, 1, 300).await,
        0,
        "both replicas paused"
    );
    assert_eq!(
        set.connected_replicas().await,
        2,
        "paused replicas stay connected"
    );

    set.resume_replica(0).await;
    set.resume_replica(1).await;
    assert_eq!(
        wait_replicas(&mut master, 2, 5000).await,
        2,
        "resumed replicas catch up"
    );
    set.wait_settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_reads_and_writes_on_every_master() {
    let started = Instant::now();
    let cluster = RedisCluster::start().await;
    eprintln!("cluster settled in {:?}", started.elapsed());
    let addrs = cluster.addrs();
    assert_eq!(addrs.len(), 6);
    assert_eq!(
        cluster.url(),
        format!("redis+cluster://{}", addrs.join(","))
    );
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        let replica = cluster
            .replica_of(m)
            .await
            .expect("every master has a replica");
        assert!(!masters.contains(&replica));
    }

    let mut conn = cluster_client(&cluster).await;
    let mut served_by = std::collections::BTreeSet::new();
    for i in 0..30 {
        let key = format!("key-{i}");
        let _: () = conn.set(&key, i).await.expect("SET through the cluster");
        let got: i64 = conn.get(&key).await.expect("GET through the cluster");
        assert_eq!(got, i);
        // The fixture's idea of the slot's master is where the key is.
        let master = cluster.master_of_slot(cluster.slot_of(&key).await).await;
        served_by.insert(master);
        let mut at = direct(&cluster.node(master).url()).await;
        let there: Option<i64> = at.get(&key).await.expect("GET on the slot's master");
        assert_eq!(there, Some(i), "{key} on node {master}");
        // Settled means every master streams to its replica (see the
        // Sentinel case): a write there is acknowledged at once.
        let _: () = at.set(&key, i).await.expect("SET on the slot's master");
        assert_eq!(wait_replicas(&mut at, 1, ACK_MS).await, 1, "node {master}");
    }
    assert_eq!(served_by.into_iter().collect::<Vec<_>>(), masters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_cluster_master_lets_its_replica_take_over() {
    let mut cluster = RedisCluster::start().await;
    let key = "takeover";
    let slot = cluster.slot_of(key).await;
    let old = cluster.master_of_slot(slot).await;
    let replica = cluster.replica_of(old).await.expect("a replica");
    let mut on_master = direct(&cluster.node(old).url()).await;
    let _: () = on_master.set(key, "before").await.expect("SET");
    assert_eq!(wait_replicas(&mut on_master, 1, 5000).await, 1);
    let mut conn = cluster_client(&cluster).await;

    let killed = Instant::now();
    let new = cluster.kill_master_of(slot).await;
    eprintln!("cluster takeover settled in {:?}", killed.elapsed());
    assert_eq!(new, replica);
    assert_eq!(cluster.master_of_slot(slot).await, new);
    assert_eq!(cluster.masters().await.len(), 3);
    assert_eq!(
        cluster.replica_of(new).await,
        None,
        "its replica is the dead node"
    );

    // The client opened before the kill follows the new master.
    let got: String = conn.get(key).await.expect("GET after the takeover");
    assert_eq!(got, "before");
    let _: () = conn
        .set(key, "after")
        .await
        .expect("SET after the takeover");

    let restarted = Instant::now();
    cluster.restart(old).await;
    eprintln!("killed master rejoined in {:?}", restarted.elapsed());
    assert_eq!(
        cluster.master_of_slot(slot).await,
        new,
        "restarting does not fail back"
    );
    assert_eq!(cluster.replica_of(new).await, Some(old));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_cluster_failover_swaps_master_and_replica() {
    let cluster = RedisCluster::start().await;
    let key = "swap";
    let slot = cluster.slot_of(key).await;
    let mut conn = cluster_client(&cluster).await;
    let _: () = conn.set(key, "kept").await.expect("SET");
    let old = cluster.master_of_slot(slot).await;

    let asked = Instant::now();
    let new = cluster.failover(slot).await;
    eprintln!("manual failover settled in {:?}", asked.elapsed());
    assert_ne!(new, old);
    assert_eq!(cluster.master_of_slot(slot).await, new);
    assert_eq!(
        cluster.replica_of(new).await,
        Some(old),
        "the old master follows"
    );
    let got: String = conn.get(key).await.expect("GET after the failover");
    assert_eq!(got, "kept", "a manual failover loses no write");
    let _: () = conn.set(key, "new").await.expect("SET after the failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migration_moves_the_keys_and_the_client_follows() {
    let cluster = RedisCluster::start().await;
    // One hash tag: every key in one slot, as a lock's keys are.
    let keys: Vec<String> = (0..5).map(|i| format!("{{lock}}:part-{i}")).collect();
    let slot = cluster.slot_of(&keys[0]).await;
    let mut conn = cluster_client(&cluster).await;
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cluster.slot_of(key).await, slot);
        let _: () = conn.set(key, i).await.expect("SET");
    }
    let from = cluster.master_of_slot(slot).await;
    let to = *cluster
        .masters()
        .await
        .iter()
        .find(|&&m| m != from)
        .expect("another master");

    // Mid-migration the keys are on the destination; the source sends
    // the client there with ASK.
    let migration = cluster.begin_migration(slot, to).await;
    assert_eq!((migration.from(), migration.to()), (from, to));
    assert_eq!(migration.move_keys().await, keys.len());
    let got: i64 = conn.get(&keys[0]).await.expect("GET while migrating (ASK)");
    assert_eq!(got, 0);
    let finishing = Instant::now();
    migration.finish().await;
    eprintln!("migration settled in {:?}", finishing.elapsed());

    assert_eq!(cluster.master_of_slot(slot).await, to);
    let mut on_target = direct(&cluster.node(to).url()).await;
    let mut on_source = direct(&cluster.node(from).url()).await;
    for (i, key) in keys.iter().enumerate() {
        let got: i64 = conn
            .get(key)
            .await
            .expect("GET after the migration (MOVED)");
        assert_eq!(got, i as i64);
        let there: Option<i64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut on_target)
            .await
            .expect("GET on the destination");
        assert_eq!(there, Some(i as i64));
        let moved: redis::RedisResult<Option<i64>> =
            redis::cmd("GET").arg(key).query_async(&mut on_source).await;
        let refused = moved.expect_err("the source no longer serves the slot");
        assert_eq!(refused.code(), Some("MOVED"), "{refused}");
    }
    let _: () = conn
        .set(&keys[0], "new")
        .await
        .expect("SET after the migration");
    // The whole dance in one call moves it back.
    assert_eq!(cluster.migrate_slot(slot, from).await, keys.len());
    assert_eq!(cluster.master_of_slot(slot).await, from);
    let got: String = conn.get(&keys[0]).await.expect("GET after migrating back");
    assert_eq!(got, "new");
}

/// The shared topologies start once per process, from a test on any
/// runtime (here a current-thread one, which cannot block on another).
#[tokio::test]
async fn shared_topologies_start_once_from_any_runtime() {
    let set = SentinelSet::shared();
    assert!(std::ptr::eq(set, SentinelSet::shared()));
    set_and_get(&mut sentinel_master(set).await, "shared", "yes").await;

    let cluster = RedisCluster::shared();
    assert!(std::ptr::eq(cluster, RedisCluster::shared()));
    set_and_get(&mut cluster_client(cluster).await, "shared", "yes").await;
}
