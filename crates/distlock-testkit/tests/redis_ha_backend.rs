//! The Redis backend on replicated topologies, with faults: replica
//! acknowledgement (`WAIT`) and failovers. Each fault test starts its own
//! topology; the shared ones serve the read-only checks.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use distlock::backend::redis::{RedisBackend, RedisKeys};
use distlock::{Key, LockKey, Locker, Namespace, ObtainOptions};
use distlock_testkit::redis::RedisServer;
use distlock_testkit::redis_ha::{RedisCluster, SentinelSet};
use distlock_testkit::refusal::assert_refused_at_once;

/// Long enough for a failover (seconds) on a loaded machine.
const FAILOVER_WAIT: Duration = Duration::from_secs(60);

fn locker(backend: RedisBackend, ns: &str) -> Locker {
    Locker::builder(Arc::new(backend))
        .namespace(ns)
        .owns_backend()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acknowledgement_defaults_to_one_replica_and_is_configurable() {
    for url in [SentinelSet::shared().url(), RedisCluster::shared().url()] {
        let backend = RedisBackend::connect(&url).await.unwrap();
        assert_eq!(backend.replicas(), 1, "{url}");
        let off = RedisBackend::connect(&format!("{url}?replicas=0"))
            .await
            .unwrap();
        assert_eq!(off.replicas(), 0, "{url}");
        let two = RedisBackend::connect(&format!("{url}?replicas=2"))
            .await
            .unwrap();
        assert_eq!(two.replicas(), 2, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_sentinel_master_name_is_a_clear_error_at_once() {
    let set = SentinelSet::shared();
    let url = format!("redis+sentinel://{}/nosuch", set.sentinel_addrs().join(","));
    let start = std::time::Instant::now();
    let err = RedisBackend::connect(&url).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2), "{err}");
    assert!(
        matches!(err, distlock::Error::InvalidUrl { .. }) && err.to_string().contains("nosuch"),
        "{err}"
    );
}

/// Between a master's kill and its replica's promotion every sentinel
/// flags the master down, and redis-rs says "master name not found": a
/// connect then is a transient error, not an invalid URL (the torture
/// harness's `distlock run` exited 64, bad usage, during failovers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_while_the_master_is_down_is_transient() {
    let set = SentinelSet::start().await;
    let master = set.master().await;
    set.node(master).process().kill();
    // Until every sentinel flags it, one may still name it (and the
    // connect is refused, transient anyway).
    let start = std::time::Instant::now();
    for url in set.sentinel_urls() {
        let sentinel = redis::Client::open(url.as_str()).unwrap();
        let mut conn = sentinel.get_multiplexed_async_connection().await.unwrap();
        loop {
            let state: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(set.master_name())
                .query_async(&mut conn)
                .await
                .unwrap();
            let flags = state.get("flags").cloned().unwrap_or_default();
            if flags.contains("s_down") {
                break;
            }
            assert!(
                start.elapsed() < FAILOVER_WAIT,
                "never flagged down: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    match RedisBackend::connect(&set.url()).await {
        // The promotion won the race: nothing to check.
        Ok(_) => eprintln!("promoted before the connect"),
        Err(e) => assert!(
            e.is_transient() && !matches!(e, distlock::Error::InvalidUrl { .. }),
            "{e:?}"
        ),
    }
}

/// Credentials the nodes turn down (an unknown user; the fixtures' default
/// user takes any password) are a refusal naming the user, reported at
/// once rather than retried until the wait runs out: under Sentinel by the
/// lookup's own connection to the master, on a cluster by one plain
/// attempt at the seeds (the cluster client reads a refusal at every seed
/// as an I/O error, which is transient).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_the_nodes_refuse_are_refused_at_once() {
    for url in [SentinelSet::shared().url(), RedisCluster::shared().url()] {
        let url = url.replacen("://", "://nobody:hunter2@", 1);
        let msg = assert_refused_at_once(&url, &["user \"nobody\""]).await;
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}

/// A user limited to what `required_acl` lists, set on every node, can
/// use locks on both topologies: the grant's publish (`SPUBLISH` on a
/// cluster) and its `WAIT`, the replicas counted (`INFO`), the cluster's
/// slots read, the Sentinel lookup's `ROLE`, an extend, and a waiter's
/// turn. With the single server's list it failed on connecting: the
/// sentinels' master refused `ROLE` (`NOPERM`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_the_required_acl_works_on_both_topologies() {
    let rules = RedisBackend::required_acl(&Namespace::new("app").unwrap());
    let sentinel = SentinelSet::shared();
    let cluster = RedisCluster::shared();
    for (url, nodes) in [
        (sentinel.url(), sentinel.nodes()),
        (cluster.url(), cluster.nodes()),
    ] {
        set_user_everywhere(nodes, "locker", "secret", &rules).await;
        let url = url.replacen("://", "://locker:secret@", 1);
        let backend = RedisBackend::connect(&url).await.unwrap();
        assert_eq!(backend.replicas(), 1, "{url}: replicas not counted");
        let (a, b) = (
            locker(backend, "app"),
            locker(RedisBackend::connect(&url).await.unwrap(), "app"),
        );
        let held = a.try_obtain("k").await.unwrap();
        held.refresh().await.unwrap();
        let waiter = tokio::spawn(async move {
            let wait = ObtainOptions::new().wait(Duration::from_secs(10));
            b.obtain_with("k", wait)
                .await
                .map(|lock| lock.fencing_token())
        });
        let token = held.fencing_token();
        held.release().await.unwrap();
        let next = waiter.await.unwrap().unwrap();
        assert!(next > token, "{url}: {next} <= {token}");
    }
}

/// `ACL SETUSER name reset on >password RULES` on each of `nodes`.
async fn set_user_everywhere(nodes: &[RedisServer], name: &str, password: &str, rules: &str) {
    for node in nodes {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(name)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"));
        for rule in rules.split_whitespace() {
            cmd.arg(rule);
        }
        let () = cmd.query_async(&mut node.admin().await).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_no_replica_acknowledges_is_released_and_not_handed_out() {
    let set = SentinelSet::start().await;
    let locker = locker(RedisBackend::connect(&set.url()).await.unwrap(), "ack");
    // Both paused: WAIT 1 cannot be satisfied.
    set.pause_replica(0).await;
    set.pause_replica(1).await;
    // The default TTL (30 s): a grant left behind would still be there.
    let err = locker
        .try_obtain("k")
        .await
        .expect_err("a grant no replica acknowledged was handed out");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("acknowledged"), "{err}");
    // Released again, not left to expire after its 30 s TTL.
    assert!(!locker.is_locked("k").await.unwrap());
    set.resume_replica(0).await;
    set.resume_replica(1).await;
    set.wait_settled().await;
    let resumed = ObtainOptions::new().wait(Duration::from_secs(10));
    let lock = locker.obtain_with("k", resumed).await.unwrap();
    lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_keep_working_across_a_sentinel_failover_and_tokens_never_regress() {
    let set = SentinelSet::start().await;
    let locker = locker(RedisBackend::connect(&set.url()).await.unwrap(), "failover");
    let before = locker.try_obtain("k").await.unwrap();
    let token = before.fencing_token();
    let old = set.master().await;
    let new = set.kill_master().await;
    assert_ne!(old, new);
    // The acknowledged grant survived on the promoted replica: still held.
    assert!(locker.is_locked("k").await.unwrap_or(true));
    drop(before);
    let options = ObtainOptions::new().wait(FAILOVER_WAIT);
    let after = locker.obtain_with("k", options).await.unwrap();
    assert!(
        after.fencing_token() > token,
        "{} <= {token}",
        after.fencing_token()
    );
    after.release().await.unwrap();
    let other = locker.try_obtain("other").await.unwrap();
    other.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_keep_working_across_a_cluster_takeover_and_tokens_never_regress() {
    let cluster = RedisCluster::start().await;
    let locker = locker(
        RedisBackend::connect(&cluster.url()).await.unwrap(),
        "takeover",
    );
    let names = RedisKeys::new(&LockKey {
        namespace: Namespace::new("takeover").unwrap(),
        key: Key::new("k").unwrap(),
    });
    let slot = cluster.slot_of(&names.lock).await;
    let first = locker.try_obtain("k").await.unwrap();
    let token = first.fencing_token();
    first.release().await.unwrap();
    cluster.kill_master_of(slot).await;
    let options = ObtainOptions::new().wait(FAILOVER_WAIT);
    let after = locker.obtain_with("k", options).await.unwrap();
    assert!(
        after.fencing_token() > token,
        "{} <= {token}",
        after.fencing_token()
    );
    after.release().await.unwrap();
}
