//! Uncontended obtain + release on etcd, next to raw etcd-client baselines
//! measured in the same run against the same etcd, with the etcd writes
//! each cycle costs: store revisions (key changes) and raft proposals (every
//! write, lease grant and revoke, from the member's raft index).
//!
//! ```text
//! cargo run --release -p distlock-testkit --features etcd --example etcd_cycle -- [CYCLES] [ROUNDS] [ONLY]
//! ```
//!
//! Starts its own single-node etcd (Debian `etcd-server`) on a free loopback
//! port in a temporary directory. Scenarios run in interleaved rounds, so
//! background load hits them alike; keys rotate over 16 names. Ratios are
//! against the 2-write floor (a put-if-absent transaction and a delete).
//!
//! A run on 2026-11-29 (2-core VM shared with other builds, load ~3,
//! etcd 3.4.23 with its data on disk, `-- 500 6`):
//!
//! ```text
//! scenario                                        mean      p50  revisions proposals  p50/floor
//! raw: one put                                 667.9µs  585.9µs       1.00      1.00      0.46x
//! raw: txn put-if-absent + delete (2 writes)    1.460ms  1.274ms      2.00      2.00      1.00x
//! raw: etcd Lock + Unlock RPCs (warm lease)     1.610ms  1.414ms      2.00      2.00      1.11x
//! raw: seed grant + put + delete + revoke       3.119ms  2.733ms      2.00      4.00      2.15x
//! raw: distlock's two transactions, by hand     1.585ms  1.391ms      2.00      2.00      1.09x
//! distlock backend SPI: try_acquire + release   1.684ms  1.454ms      2.00      2.00      1.14x
//! distlock: obtain + release (warm Locker)      1.738ms  1.515ms      2.00      2.00      1.19x
//! ```
//!
//! Ratios move by about ±0.1 between runs on this machine.

use std::sync::Arc;
use std::time::Duration;

use distlock::backend::etcd::etcd_client::{
    Client, Compare, CompareOp, GetOptions, LockOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp,
};
use distlock::backend::{AcquireRequest, Attempt};
use distlock::{Key, LockKey, Locker, ObtainOptions, OwnerToken};
use distlock_testkit::etcd::{EtcdCluster, backend};
use tokio::time::Instant;

const KEYS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Put,
    TxnDelete,
    SeedPattern,
    LockRpc,
    SameTxns,
    Backend,
    Distlock,
}

impl Scenario {
    const ALL: [Scenario; 7] = [
        Scenario::Put,
        Scenario::TxnDelete,
        Scenario::LockRpc,
        Scenario::SeedPattern,
        Scenario::SameTxns,
        Scenario::Backend,
        Scenario::Distlock,
    ];

    fn label(self) -> &'static str {
        match self {
            Scenario::Put => "raw: one put",
            Scenario::TxnDelete => "raw: txn put-if-absent + delete (2 writes)",
            Scenario::LockRpc => "raw: etcd Lock + Unlock RPCs (warm lease)",
            Scenario::SeedPattern => "raw: seed grant + put + delete + revoke",
            Scenario::SameTxns => "raw: distlock's two transactions, by hand",
            Scenario::Backend => "distlock backend SPI: try_acquire + release",
            Scenario::Distlock => "distlock: obtain + release (warm Locker)",
        }
    }
}

struct Stats {
    samples: Vec<Duration>,
    writes: i64,
    proposals: u64,
    cycles: i64,
}

/// The member's raft log index: one entry per proposal (writes, lease
/// grants and revokes; not reads or keepalives).
async fn raft_index(client: &mut Client) -> u64 {
    client.status().await.expect("status").raft_index()
}

async fn revision(client: &mut Client) -> i64 {
    client
        .get("/", None)
        .await
        .expect("read")
        .header()
        .expect("header")
        .revision()
}

async fn cycle(
    scenario: Scenario,
    i: usize,
    client: &mut Client,
    locker: &Locker,
    lock_lease: i64,
) {
    let key = format!("/bench/{:?}/k{}", scenario, i % KEYS);
    match scenario {
        Scenario::Put => {
            client.put(key, "v", None).await.expect("put");
        }
        Scenario::TxnDelete => {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), "v", None)]);
            assert!(client.txn(txn).await.expect("txn").succeeded());
            client.delete(key, None).await.expect("delete");
        }
        Scenario::LockRpc => {
            let opts = LockOptions::new().with_lease(lock_lease);
            let locked = client.lock(key, Some(opts)).await.expect("lock");
            client.unlock(locked.key().to_vec()).await.expect("unlock");
        }
        Scenario::SeedPattern => {
            let lease = client.lease_grant(5, None).await.expect("grant").id();
            let opts = PutOptions::new().with_lease(lease);
            client.put(key.clone(), "v", Some(opts)).await.expect("put");
            client.delete(key, None).await.expect("delete");
            client.lease_revoke(lease).await.expect("revoke");
        }
        Scenario::SameTxns => {
            // The acquire transaction (put-if-absent with the lease, read
            // the prefix's first entry) and the guarded delete.
            let entry = format!("{key}/{:032x}", i);
            let first = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1);
            let acquire = Txn::new()
                .when([Compare::create_revision(entry.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(
                        entry.clone(),
                        "30000:0",
                        Some(PutOptions::new().with_lease(lock_lease)),
                    ),
                    TxnOp::get(format!("{key}/"), Some(first)),
                ]);
            let resp = client.txn(acquire).await.expect("acquire txn");
            let revision = resp.header().expect("header").revision();
            let release = Txn::new()
                .when([Compare::create_revision(
                    entry.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::delete(entry, None)]);
            assert!(client.txn(release).await.expect("release txn").succeeded());
        }
        Scenario::Backend => {
            let key = LockKey {
                namespace: locker.namespace().clone(),
                key: Key::new(format!("k{}", i % KEYS)).expect("key"),
            };
            let owner = OwnerToken::random().expect("owner");
            let mut req = AcquireRequest::new(key, owner, distlock::DEFAULT_TTL);
            req.will_wait = true;
            let backend = locker.backend();
            let granted = backend.try_acquire(&req).await.expect("acquire");
            assert!(matches!(granted, Attempt::Granted { .. }));
            backend.release(&req.lease()).await.expect("release");
        }
        Scenario::Distlock => {
            let lock = locker
                .obtain_with(format!("k{}", i % KEYS), ObtainOptions::new())
                .await
                .expect("obtain");
            lock.release().await.expect("release");
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let cycles: usize = args.next().map_or(500, |a| a.parse().expect("CYCLES"));
    let rounds: usize = args.next().map_or(4, |a| a.parse().expect("ROUNDS"));
    let only = args.next();
    // Optional: only scenarios whose label contains this text, and the floor.
    let selected = |s: Scenario| {
        s == Scenario::TxnDelete || only.as_ref().is_none_or(|o| s.label().contains(o.as_str()))
    };
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start_durable(1))
        .await
        .expect("start etcd");
    let endpoints = cluster.endpoints();
    let mut client = Client::connect(&endpoints, None).await.expect("connect");
    let backend = Arc::new(backend(&endpoints).await);
    let locker = Locker::builder(backend)
        .namespace("bench")
        .build()
        .expect("locker");
    let lock_lease = client.lease_grant(60, None).await.expect("grant").id();
    let (mut keeper, mut responses) = client.lease_keep_alive(lock_lease).await.expect("keep");
    let keep_alive = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            if keeper.keep_alive().await.is_err() || responses.message().await.is_err() {
                return;
            }
        }
    });

    // Warm every path (connections, the Locker's lease, etcd's caches).
    for scenario in Scenario::ALL {
        for i in 0..50 {
            cycle(scenario, i, &mut client, &locker, lock_lease).await;
        }
    }
    let mut stats: Vec<Stats> = Scenario::ALL
        .iter()
        .map(|_| Stats {
            samples: Vec::with_capacity(cycles * rounds),
            writes: 0,
            proposals: 0,
            cycles: 0,
        })
        .collect();
    for _ in 0..rounds {
        for (n, scenario) in Scenario::ALL.into_iter().enumerate() {
            if !selected(scenario) {
                continue;
            }
            let before = revision(&mut client).await;
            let proposals = raft_index(&mut client).await;
            for i in 0..cycles {
                let start = Instant::now();
                cycle(scenario, i, &mut client, &locker, lock_lease).await;
                stats[n].samples.push(start.elapsed());
            }
            stats[n].writes += revision(&mut client).await - before;
            stats[n].proposals += raft_index(&mut client).await - proposals;
            stats[n].cycles += cycles as i64;
        }
    }
    keep_alive.abort();

    for s in &mut stats {
        s.samples.sort_unstable();
    }
    // The 2-write floor.
    let floor_mean = {
        let s = &stats[1].samples;
        s.iter().sum::<Duration>() / s.len() as u32
    };
    let floor_p50 = percentile(&stats[1].samples, 0.5);
    println!(
        "etcd {} on 127.0.0.1, {cycles} cycles x {rounds} rounds per scenario, one task, {KEYS} rotating keys",
        std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.lines().next().map(|l| l.replace("etcd Version: ", "")))
            .unwrap_or_default()
    );
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "scenario", "mean", "p50", "p99", "max", "revisions", "proposals", "mean/fl", "p50/fl"
    );
    for (scenario, s) in Scenario::ALL.into_iter().zip(&stats) {
        if s.samples.is_empty() {
            continue;
        }
        let mean = s.samples.iter().sum::<Duration>() / s.samples.len() as u32;
        println!(
            "{:<46} {:>9.3?} {:>9.3?} {:>9.3?} {:>9.3?} {:>9.2} {:>9.2} {:>6.2}x {:>6.2}x",
            scenario.label(),
            mean,
            percentile(&s.samples, 0.5),
            percentile(&s.samples, 0.99),
            s.samples.last().copied().unwrap_or_default(),
            s.writes as f64 / s.cycles as f64,
            s.proposals as f64 / s.cycles as f64,
            mean.as_secs_f64() / floor_mean.as_secs_f64(),
            percentile(&s.samples, 0.5).as_secs_f64() / floor_p50.as_secs_f64(),
        );
    }
    drop(cluster);
}
