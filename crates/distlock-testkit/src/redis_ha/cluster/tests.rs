//! The cluster's creation survives a node that stalls while it joins.

use std::time::Duration;

use super::RedisCluster;
use crate::redis_ha::key_slot;
use crate::server::require_binary;

/// A node stopped for 2.5 s (more than the 1 s node timeout) just as
/// `redis-cli` introduces the nodes: without re-introduction its peers
/// forget it and `redis-cli` waits for ever (reproduced by hand: 3 of 6
/// tries hung). Asserts the creation finishes and the cluster settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_survives_a_node_stalled_while_joining() {
    let redis_cli = require_binary("redis-cli", "redis-tools");
    let cluster = RedisCluster::start_nodes(None).await;
    let stall = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cluster.pause(0);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        cluster.resume(0);
    };
    tokio::join!(cluster.create(&redis_cli), stall);
    cluster.wait_settled().await;
    assert_eq!(cluster.masters().await.len(), 3);
}

/// The slots `CLUSTER KEYSLOT` gives (Redis's own documentation: `somekey`
/// is in slot 11058).
#[test]
fn key_slots_are_redis_cluster_slots() {
    assert_eq!(key_slot("somekey"), 11058);
    assert_eq!(key_slot(""), 0);
}
