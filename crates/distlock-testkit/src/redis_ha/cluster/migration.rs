//! [`SlotMigration`]: moving a slot between masters, step by step.

use redis::cmd;

use super::{MIGRATE_BATCH, MIGRATE_IO_TIMEOUT_MS, RedisCluster};
use crate::redis_ha::{SETTLE_TIMEOUT, settle, tell};

/// A slot migration in progress, from [`RedisCluster::begin_migration`].
#[derive(Debug)]
pub struct SlotMigration<'a> {
    pub(super) cluster: &'a RedisCluster,
    pub(super) slot: u16,
    pub(super) from: usize,
    pub(super) to: usize,
}

impl SlotMigration<'_> {
    /// The slot.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The source node's index.
    pub fn from(&self) -> usize {
        self.from
    }

    /// The destination node's index.
    pub fn to(&self) -> usize {
        self.to
    }

    /// `MIGRATE`s every key now in the slot on the source to the
    /// destination, in batches, until none is left; returns how many moved.
    pub async fn move_keys(&self) -> usize {
        let source = self.cluster.nodes[self.from].process();
        let target = self.cluster.nodes[self.to].port();
        let mut moved = 0;
        loop {
            let mut list = cmd("CLUSTER");
            list.arg("GETKEYSINSLOT").arg(self.slot).arg(MIGRATE_BATCH);
            let keys: Vec<Vec<u8>> = tell(source, &list, "GETKEYSINSLOT").await;
            if keys.is_empty() {
                return moved;
            }
            let mut migrate = cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(target)
                .arg("")
                .arg(0)
                .arg(MIGRATE_IO_TIMEOUT_MS)
                .arg("KEYS")
                .arg(&keys);
            let _: String = tell(source, &migrate, "MIGRATE").await;
            moved += keys.len();
        }
    }

    /// `MIGRATE`s only `key` to the destination; returns whether the
    /// source had it (`NOKEY` otherwise). Leaves the slot's other keys
    /// behind: a migration caught half-way through the keys of one lock.
    pub async fn move_key(&self, key: &str) -> bool {
        let source = self.cluster.nodes[self.from].process();
        let target = self.cluster.nodes[self.to].port();
        let mut migrate = cmd("MIGRATE");
        migrate
            .arg("127.0.0.1")
            .arg(target)
            .arg(key)
            .arg(0)
            .arg(MIGRATE_IO_TIMEOUT_MS);
        let reply: String = tell(source, &migrate, "MIGRATE").await;
        reply == "OK"
    }

    /// `CLUSTER SETSLOT NODE` on the destination, the source, then every
    /// other master, and waits until the cluster has settled with the slot
    /// on the destination.
    pub async fn finish(self) {
        let cluster = self.cluster;
        let view = settle("the cluster before SETSLOT NODE", SETTLE_TIMEOUT, || {
            cluster.settled()
        })
        .await;
        let others = view
            .nodes
            .iter()
            .filter(|n| !n.slots.is_empty())
            .map(|n| cluster.index_of_port(n.port))
            .filter(|i| ![self.from, self.to].contains(i));
        let reachable: Vec<usize> = cluster.reachable().collect();
        for node in [self.to, self.from].into_iter().chain(others) {
            if !reachable.contains(&node) {
                continue; // It learns the new owner from the others.
            }
            let mut assign = cmd("CLUSTER");
            assign
                .arg("SETSLOT")
                .arg(self.slot)
                .arg("NODE")
                .arg(&cluster.ids[self.to]);
            let what = format!("SETSLOT NODE on node {node}");
            let _: () = tell(cluster.nodes[node].process(), &assign, &what).await;
        }
        cluster
            .wait_owner(self.slot, self.to, "a migrated slot settling")
            .await;
    }
}
