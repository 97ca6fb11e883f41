//! Redis scenarios: distlock next to a raw redis-rs floor, same server,
//! same run.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use distlock::backend::redis::RedisBackend;
use distlock::backend::{AcquireRequest, Attempt};
use distlock::{DEFAULT_TTL, Key, LockKey, Locker, ObtainOptions, OwnerToken};
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use crate::Env;
use crate::report::{Report, Row};
use crate::stats::Summary;

/// The raw floor's token-checked delete.
const RAW_UNLOCK: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// How many keys the uncontended cycle rotates over.
const KEYS: usize = 64;

async fn locker(url: &str, namespace: &str) -> Locker {
    let backend = RedisBackend::connect(url)
        .await
        .expect("connect distlock to the bench redis-server");
    Locker::builder(Arc::new(backend))
        .namespace(namespace)
        .build()
        .expect("valid options")
}

/// Uncontended obtain + release, one task, rotating keys: distlock against
/// `SET NX PX` + a token-checked delete script on one ConnectionManager.
/// A third subject drives the backend's SPI directly (the same scripts,
/// without the engine), to split the overhead between engine and scripts.
/// They run in alternating blocks so drift in the machine's load hits all
/// alike.
pub async fn uncontended(env: &Env) -> Report {
    let locker = locker(&env.redis_url, "bench-uncontended").await;
    let mut raw: ConnectionManager = redis::Client::open(env.redis_url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .expect("connect the raw client");
    let unlock = Script::new(RAW_UNLOCK);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let raw_keys: Vec<String> = (0..KEYS).map(|i| format!("bench-raw:key-{i}")).collect();

    let backend = locker.backend();
    let lock_keys: Vec<LockKey> = keys
        .iter()
        .map(|k| LockKey {
            namespace: locker.namespace().clone(),
            key: Key::new(k.as_str()).unwrap(),
        })
        .collect();

    let blocks = 10;
    let per_block = (env.iterations / blocks).max(1);
    let warmup = (env.iterations / 10).max(10);
    let (mut ours, mut spi, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_wall, mut spi_wall, mut floor_wall) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for block in 0..=blocks {
        // Block 0 is the warm-up: connections, scripts, allocator.
        let n = if block == 0 { warmup } else { per_block };
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            let lock = locker.obtain(keys[i % KEYS].as_str()).await.unwrap();
            lock.release().await.unwrap();
            if block > 0 {
                ours.push(t.elapsed());
            }
        }
        if block > 0 {
            ours_wall += start.elapsed();
        }
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            let req = AcquireRequest::new(
                lock_keys[i % KEYS].clone(),
                OwnerToken::random().unwrap(),
                DEFAULT_TTL,
            );
            let granted = backend.try_acquire(&req).await.unwrap();
            assert!(matches!(granted, Attempt::Granted { .. }));
            backend.release(&req.lease()).await.unwrap();
            if block > 0 {
                spi.push(t.elapsed());
            }
        }
        if block > 0 {
            spi_wall += start.elapsed();
        }
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            let key = &raw_keys[i % KEYS];
            let token = OwnerToken::random().unwrap().to_hex();
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut raw)
                .await
                .unwrap();
            assert!(set.is_some(), "raw SET NX found {key} held");
            let deleted: i64 = unlock
                .key(key)
                .arg(&token)
                .invoke_async(&mut raw)
                .await
                .unwrap();
            assert_eq!(deleted, 1);
            if block > 0 {
                floor.push(t.elapsed());
            }
        }
        if block > 0 {
            floor_wall += start.elapsed();
        }
    }
    locker.close().await.unwrap();
    let ours = Summary::of(ours, Some(ours_wall));
    let spi = Summary::of(spi, Some(spi_wall));
    let floor = Summary::of(floor, Some(floor_wall));
    let figures = vec![
        (
            "ratio p50 distlock/raw".to_owned(),
            ours.p50.as_secs_f64() / floor.p50.as_secs_f64(),
        ),
        (
            "ratio mean distlock/raw".to_owned(),
            ours.mean.as_secs_f64() / floor.mean.as_secs_f64(),
        ),
        (
            "ratio p99 distlock/raw".to_owned(),
            ours.p99.as_secs_f64() / floor.p99.as_secs_f64(),
        ),
        (
            "ratio p50 backend scripts only/raw".to_owned(),
            spi.p50.as_secs_f64() / floor.p50.as_secs_f64(),
        ),
    ];
    Report {
        scenario: "redis-uncontended",
        about: format!(
            "obtain + release on {KEYS} rotating keys, one task, {} cycles each, alternating blocks",
            per_block * blocks
        ),
        rows: vec![
            Row {
                subject: "distlock (obtain+release)".into(),
                stats: ours,
            },
            Row {
                subject: "backend SPI only (no engine)".into(),
                stats: spi,
            },
            Row {
                subject: "raw redis-rs (SET NX PX + Lua DEL)".into(),
                stats: floor,
            },
        ],
        figures,
    }
}

/// Shared state of one contended run. Times are `std` instants: the
/// contenders may run on different runtimes.
#[derive(Default)]
struct Hot {
    /// Who released last, and when the release was called.
    last_release: Mutex<Option<(usize, std::time::Instant)>>,
    handoffs: Mutex<Vec<Duration>>,
    waits: Mutex<Vec<Duration>>,
    regrants: Mutex<usize>,
    grants: Mutex<Vec<usize>>,
    inside: AtomicBool,
    granted: AtomicUsize,
}

/// One contender: obtain, 1 ms critical section, release, until `total`
/// sections were granted to anyone.
async fn contend(id: usize, locker: &Locker, hot: &Hot, total: usize) {
    use std::time::Instant;
    while hot.granted.load(SeqCst) < total {
        let asked = Instant::now();
        let opts = ObtainOptions::new().wait(Duration::from_secs(60));
        let lock = locker.obtain_with("hot", opts).await.unwrap();
        let got = Instant::now();
        assert!(!hot.inside.swap(true, SeqCst), "two holders at once");
        hot.granted.fetch_add(1, SeqCst);
        hot.waits.lock().unwrap().push(got - asked);
        hot.grants.lock().unwrap()[id] += 1;
        match *hot.last_release.lock().unwrap() {
            Some((prev, at)) if prev != id => hot.handoffs.lock().unwrap().push(got - at),
            Some(_) => *hot.regrants.lock().unwrap() += 1,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        hot.inside.store(false, SeqCst);
        *hot.last_release.lock().unwrap() = Some((id, Instant::now()));
        lock.release().await.unwrap();
    }
}

/// `waiters` contenders loop on one hot key until `env.handoffs` sections.
/// `processes`: each contender has its own thread, tokio runtime, Locker
/// and connections, as separate processes would (handoff through Redis
/// pub/sub); otherwise they are tasks sharing one Locker (handoff through
/// its local queue).
async fn contended(env: &Env, waiters: usize, processes: bool) -> Report {
    let total = env.handoffs;
    let hot = Arc::new(Hot {
        grants: Mutex::new(vec![0; waiters]),
        ..Hot::default()
    });
    let wall = if processes {
        // All connected before the clock starts.
        let ready = Arc::new(Barrier::new(waiters + 1));
        let threads: Vec<_> = (0..waiters)
            .map(|id| {
                let (hot, ready, url) = (hot.clone(), ready.clone(), env.redis_url.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        let locker = locker(&url, "bench-hot-procs").await;
                        ready.wait();
                        contend(id, &locker, &hot, total).await;
                        locker.close().await.unwrap();
                    });
                })
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            ready.wait();
            let start = std::time::Instant::now();
            for thread in threads {
                thread.join().unwrap();
            }
            start.elapsed()
        })
        .await
        .unwrap()
    } else {
        let shared = locker(&env.redis_url, "bench-hot-local").await;
        let start = std::time::Instant::now();
        let tasks: Vec<_> = (0..waiters)
            .map(|id| {
                let (locker, hot) = (shared.clone(), hot.clone());
                tokio::spawn(async move { contend(id, &locker, &hot, total).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let wall = start.elapsed();
        shared.close().await.unwrap();
        wall
    };
    let handoffs = std::mem::take(&mut *hot.handoffs.lock().unwrap());
    let waits = std::mem::take(&mut *hot.waits.lock().unwrap());
    let grants = hot.grants.lock().unwrap().clone();
    let sections = grants.iter().sum::<usize>();
    let fair_share = sections as f64 / waiters as f64;
    let mut figures = vec![
        (
            "sections per second".to_owned(),
            sections as f64 / wall.as_secs_f64(),
        ),
        (
            "handoffs to a different holder".to_owned(),
            handoffs.len() as f64,
        ),
        (
            "re-grants to the releasing holder".to_owned(),
            *hot.regrants.lock().unwrap() as f64,
        ),
        (
            "min grants per task / fair share".to_owned(),
            *grants.iter().min().unwrap() as f64 / fair_share,
        ),
        (
            "max grants per task / fair share".to_owned(),
            *grants.iter().max().unwrap() as f64 / fair_share,
        ),
    ];
    let mut rows = Vec::new();
    if !handoffs.is_empty() {
        rows.push(Row {
            subject: "handoff to another holder".into(),
            stats: Summary::of(handoffs, None),
        });
    }
    let waits = Summary::of(waits, Some(wall));
    // Fair share of one wait: the other waiters' sections before ours.
    figures.push((
        "max wait / (waiters-1) sections of the mean length".to_owned(),
        waits.max.as_secs_f64() / ((waiters - 1) as f64 * wall.as_secs_f64() / sections as f64),
    ));
    rows.push(Row {
        subject: "wait (obtain call to grant)".into(),
        stats: waits,
    });
    Report {
        scenario: if processes {
            "redis-handoff-processes"
        } else {
            "redis-handoff-one-locker"
        },
        about: format!(
            "{waiters} tasks loop on one key (obtain, 1 ms section, release), {}, {total} sections",
            if processes {
                "each with its own thread, runtime, Locker and connections (like processes)"
            } else {
                "sharing one Locker"
            }
        ),
        rows,
        figures,
    }
}

/// 8 waiters, each its own runtime and Locker: handoff through Redis pub/sub.
pub async fn handoff_processes(env: &Env) -> Report {
    contended(env, 8, true).await
}

/// 8 waiters sharing one Locker: handoff through its local FIFO queue.
pub async fn handoff_one_locker(env: &Env) -> Report {
    contended(env, 8, false).await
}
