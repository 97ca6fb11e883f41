//! The five scenarios, written once and run on every store.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use distlock::{Key, LockKey, Locker, LostReason, ObtainOptions};
use distlock_testkit::Faulty;
use futures::StreamExt;
use tokio::time::Instant;

use crate::report::{Report, Target};
use crate::runner::{Plan, compare};
use crate::stats::{Summary, us};
use crate::stores::{Store, distlock_subjects};
use crate::{Env, alloc};

fn report(store: &dyn Store, scenario: &str, about: String) -> Report {
    Report::new(format!("{}-{scenario}", store.name()), about)
}

/// Scenario 1: Uncontended obtain + release, one task, 64 rotating keys, against
/// the backend's SPI alone, the store's raw floor and peer crates.
pub async fn uncontended(env: &Env, store: Arc<dyn Store>) -> Report {
    let locker = store.locker("bench-uncontended").await;
    let mut subjects = distlock_subjects(&locker);
    subjects.extend(store.baselines(1).await);
    let blocks = 10;
    let per_block = (env.iterations / store.slowness() / blocks).max(1);
    let plan = Plan {
        tasks: 1,
        blocks,
        per_block,
        warmup: (per_block / 2).max(5),
    };
    let report = report(
        &*store,
        "uncontended",
        format!(
            "obtain + release, one task, {} rotating keys, {} cycles per subject in {blocks} interleaved blocks",
            crate::runner::ROTATE,
            per_block * blocks
        ),
    );
    let report = compare(report, &subjects, &plan, &*store).await;
    locker.close().await.expect("close");
    report
}

/// Scenario 2: Throughput: 64 tasks, each on its own key, through one Locker (one
/// connection), against the raw client and peers doing the same.
pub async fn throughput(env: &Env, store: Arc<dyn Store>) -> Report {
    let tasks = env.tasks;
    let locker = store.locker("bench-throughput").await;
    let mut subjects = distlock_subjects(&locker);
    subjects.extend(store.baselines(tasks).await);
    let blocks = 6;
    let per_block = (env.per_task / store.slowness() / blocks).max(1);
    let plan = Plan {
        tasks,
        blocks,
        per_block,
        warmup: (per_block / 2).max(2),
    };
    let mut report = report(
        &*store,
        "throughput",
        format!(
            "{tasks} tasks on distinct keys through one Locker / client, {} cycles per subject in {blocks} interleaved blocks",
            per_block * blocks * tasks
        ),
    );
    report.notes.push(
        "per s = cycles per second of wall time (throughput); latencies are per cycle under load"
            .into(),
    );
    let report = compare(report, &subjects, &plan, &*store).await;
    locker.close().await.expect("close");
    report
}

/// Shared state of one contended run. Times are `std` instants: the
/// contenders may run on different runtimes.
#[derive(Default)]
struct Hot {
    /// Who released last, and when its release was called.
    last_release: Mutex<Option<(usize, std::time::Instant)>>,
    handoffs: Mutex<Vec<Duration>>,
    waits: Mutex<Vec<Duration>>,
    regrants: AtomicUsize,
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
        let lock = locker.obtain_with("hot", opts).await.expect("obtain");
        let got = Instant::now();
        assert!(!hot.inside.swap(true, SeqCst), "two holders at once");
        hot.granted.fetch_add(1, SeqCst);
        hot.waits.lock().unwrap().push(got - asked);
        hot.grants.lock().unwrap()[id] += 1;
        match *hot.last_release.lock().unwrap() {
            Some((prev, at)) if prev != id => hot.handoffs.lock().unwrap().push(got - at),
            Some(_) => {
                hot.regrants.fetch_add(1, SeqCst);
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        hot.inside.store(false, SeqCst);
        *hot.last_release.lock().unwrap() = Some((id, Instant::now()));
        lock.release().await.expect("release");
    }
}

/// Scenario 3: Contended handoff: `waiters` contenders loop on one hot key.
/// `processes`: each has its own thread, runtime and Locker (own
/// connections), as separate processes would; otherwise they are tasks
/// sharing one Locker.
pub async fn handoff(env: &Env, store: Arc<dyn Store>, processes: bool) -> Report {
    let waiters = 8;
    let total = env.handoffs.max(waiters * 2);
    let hot = Arc::new(Hot {
        grants: Mutex::new(vec![0; waiters]),
        ..Hot::default()
    });
    let namespace = if processes {
        "bench-hot-procs"
    } else {
        "bench-hot-local"
    };
    let wall = if processes {
        // All connected before the clock starts.
        let ready = Arc::new(Barrier::new(waiters + 1));
        let threads: Vec<_> = (0..waiters)
            .map(|id| {
                let (hot, ready, store) = (hot.clone(), ready.clone(), store.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        let locker = store.locker(namespace).await;
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
        let shared = store.locker(namespace).await;
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
    let mode = if processes { "processes" } else { "one-locker" };
    let mut report = report(
        &*store,
        &format!("handoff-{mode}"),
        format!(
            "{waiters} waiters loop on one key (obtain, 1 ms section, release), {}, {sections} sections",
            if processes {
                "each with its own thread, runtime, Locker and connections (like processes)"
            } else {
                "as tasks sharing one Locker"
            }
        ),
    );
    report.figure("sections per second", sections as f64 / wall.as_secs_f64());
    report.figure("handoffs to a different holder", handoffs.len() as f64);
    report.figure(
        "re-grants to the releasing holder",
        hot.regrants.load(SeqCst) as f64,
    );
    report.figure(
        "min grants per waiter / fair share",
        *grants.iter().min().unwrap() as f64 / fair_share,
    );
    report.figure(
        "max grants per waiter / fair share",
        *grants.iter().max().unwrap() as f64 / fair_share,
    );
    let handoff = (!handoffs.is_empty()).then(|| Summary::of(handoffs, None));
    let waits = Summary::of(waits, Some(wall));
    // The fair share of one wait: the other waiters' sections before ours.
    let fair_wait = (waiters - 1) as f64 * wall.as_secs_f64() / sections as f64;
    let max_wait_share = waits.max.as_secs_f64() / fair_wait;
    report.figure("fair share of one wait, µs", fair_wait * 1e6);
    report.figure("max wait / fair share", max_wait_share);
    if let Some(h) = &handoff {
        report.row("handoff to another holder", h.clone());
    }
    report.row("wait (obtain call to grant)", waits.clone());
    if store.handoff_targets() {
        let name = store.name();
        match &handoff {
            Some(h) => {
                report.targets.push(Target::new(
                    format!("{name} handoff ({mode}) p50"),
                    us(h.p50) / 1e3,
                    0.5,
                    " ms",
                ));
                report.targets.push(Target::new(
                    format!("{name} handoff ({mode}) p99"),
                    us(h.p99) / 1e3,
                    3.0,
                    " ms",
                ));
            }
            None => report
                .notes
                .push("no handoff to a different holder at all".into()),
        }
        report.targets.push(Target::new(
            format!("{name} handoff ({mode}) max wait / fair share"),
            max_wait_share,
            2.0,
            "x",
        ));
    }
    report
}

fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

fn delta(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(k, v)| {
            let was = before.iter().find(|(b, _)| b == k).map_or(0.0, |(_, v)| *v);
            (k.clone(), v - was)
        })
        // Leave out the bench's own reads of the counters.
        .filter(|(k, d)| *d != 0.0 && !k.starts_with("info ") && !k.starts_with("Status "))
        .collect()
}

/// Scenario 4: Held-lock scale: `env.held` locks held with auto-refresh in one
/// process at `env.held_ttl` (refresh interval TTL/3), measured over
/// `env.held_rounds` refresh intervals.
pub async fn held(env: &Env, store: Arc<dyn Store>) -> Report {
    const NS: &str = "bench-held";
    let n = env.held;
    let ttl = env.held_ttl;
    let interval = ttl / 3;
    let base = store.locker(NS).await;
    let faulty = Arc::new(Faulty::new(base.backend()));
    let locker = Locker::builder(faulty.clone())
        .namespace(NS)
        .build()
        .expect("locker");
    let opts = ObtainOptions::new().ttl(ttl);
    // Warm up: connections, scripts, sessions, the refresher path.
    for i in 0..8 {
        let lock = locker
            .obtain_with(format!("warm-{i}"), opts.clone())
            .await
            .expect("obtain");
        let handle = lock.start_refresh(|_| {});
        handle.stop().await;
        lock.release().await.expect("release");
    }
    let errors = Arc::new(AtomicUsize::new(0));
    let breakdown = memory_breakdown(&locker, &opts, (n / 10).max(10), env.tasks).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mem0 = alloc::snapshot();
    let rss0 = alloc::rss_bytes();
    let start = Instant::now();
    let mut locks = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    let mut obtained = futures::stream::iter(0..n)
        .map(|i| {
            let (locker, opts) = (locker.clone(), opts.clone());
            // The engine keeps its own copy of the key: that is counted.
            async move { locker.obtain_with(format!("held-{i}"), opts).await }
        })
        .buffer_unordered(env.tasks);
    while let Some(lock) = obtained.next().await {
        let lock = lock.expect("obtain a held lock");
        let errors = errors.clone();
        handles.push(lock.start_refresh(move |_| {
            errors.fetch_add(1, Relaxed);
        }));
        locks.push(lock);
    }
    drop(obtained);
    let obtain_wall = start.elapsed();
    let mem1 = alloc::snapshot();
    let rss1 = alloc::rss_bytes();

    // The window: every lock refreshes `rounds` times in it, provided all
    // were obtained within one interval (checked below by counting).
    let counters0 = store.counters().await;
    let extends0 = faulty.extends();
    let cpu0 = cpu_time();
    let window_start = Instant::now();
    let window = interval * env.held_rounds + interval / 20;
    tokio::time::sleep(window).await;
    let cpu = cpu_time() - cpu0;
    let window = window_start.elapsed();
    let extends = faulty.extends() - extends0;
    let counters1 = store.counters().await;
    let mem2 = alloc::snapshot();
    let rss2 = alloc::rss_bytes();

    let lost = locks.iter().filter(|l| l.is_lost()).count();
    let rounds = extends as f64 / n as f64;
    let mut report = report(
        &*store,
        "held",
        format!(
            "{n} locks held with start_refresh at ttl {ttl:?} (refresh every {interval:?}) in one process, {window:.1?} window"
        ),
    );
    let per_lock =
        |a: alloc::Snapshot, b: alloc::Snapshot| (b.live_bytes - a.live_bytes) as f64 / n as f64;
    report.figure(
        "obtain phase, s (not in the window)",
        obtain_wall.as_secs_f64(),
    );
    report.figure(
        format!(
            "heap bytes per lock, the Lock alone ({}-lock sample)",
            breakdown.0
        ),
        breakdown.1,
    );
    report.figure(
        format!(
            "heap bytes per lock, its refresher alone ({}-lock sample)",
            breakdown.0
        ),
        breakdown.2,
    );
    report.figure(
        "client heap bytes per held lock (after obtain)",
        per_lock(mem0, mem1),
    );
    report.figure(
        "client heap bytes per held lock (after the window)",
        per_lock(mem0, mem2),
    );
    if let (Some(r0), Some(r1), Some(r2)) = (rss0, rss1, rss2) {
        report.figure(
            "RSS delta bytes per held lock (after obtain; reuses memory earlier scenarios freed)",
            (r1 as f64 - r0 as f64) / n as f64,
        );
        report.figure(
            "RSS delta bytes per held lock (after the window; same caveat)",
            (r2 as f64 - r0 as f64) / n as f64,
        );
    }
    let cpu_share = cpu.as_secs_f64() / window.as_secs_f64();
    report.figure(
        "client CPU, % of one core over the window",
        cpu_share * 100.0,
    );
    report.figure("client CPU µs per extend", us(cpu) / extends.max(1) as f64);
    report.figure("extends in the window", extends as f64);
    report.figure("refresh rounds in the window (extends / locks)", rounds);
    report.figure("refresh errors reported", errors.load(Relaxed) as f64);
    report.figure("locks lost", lost as f64);
    for (name, d) in delta(&counters0, &counters1) {
        let name = name.trim_start_matches('#');
        report.figure(
            format!("store: {name} per refresh round"),
            d / rounds.max(1e-9),
        );
    }
    report.targets.push(Target::new(
        format!("{} held locks: client heap per lock", store.name()),
        per_lock(mem0, mem2) / 1024.0,
        2.0,
        " KiB",
    ));
    report.targets.push(Target::new(
        format!("{} held locks: refresh CPU", store.name()),
        cpu_share * 100.0,
        5.0,
        "% of a core",
    ));
    report.notes.push(format!(
        "CPU is getrusage(RUSAGE_SELF) of the whole bench process over {} refresh interval(s) with nothing else running in it; \
         at ttl {ttl:?} every lock refreshes once per {interval:?}, so this is the steady cost of holding {n} locks",
        env.held_rounds
    ));
    if obtain_wall > interval {
        report.notes.push(
            "obtaining took longer than one refresh interval: rounds in the window are not whole"
                .into(),
        );
    }

    // Let go of everything.
    let stop = Instant::now();
    futures::future::join_all(handles.iter().map(|h| h.stop())).await;
    futures::stream::iter(locks)
        .for_each_concurrent(env.tasks, |lock| async move {
            let _ = lock.release().await;
        })
        .await;
    report.figure("stop + release all, s", stop.elapsed().as_secs_f64());
    locker.close().await.expect("close");
    report
}

/// Heap bytes per lock of holding `n` locks, then of starting their
/// refreshers, on a sample that is let go of before the real run.
async fn memory_breakdown(
    locker: &Locker,
    opts: &ObtainOptions,
    n: usize,
    concurrency: usize,
) -> (usize, f64, f64) {
    let before = alloc::snapshot();
    let locks: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let (locker, opts) = (locker.clone(), opts.clone());
            async move { locker.obtain_with(format!("sample-{i}"), opts).await }
        })
        .buffer_unordered(concurrency)
        .map(|lock| lock.expect("obtain a sample lock"))
        .collect()
        .await;
    let held = alloc::snapshot();
    let handles: Vec<_> = locks.iter().map(|l| l.start_refresh(|_| {})).collect();
    let refreshing = alloc::snapshot();
    futures::future::join_all(handles.iter().map(|h| h.stop())).await;
    drop(handles);
    futures::stream::iter(locks)
        .for_each_concurrent(concurrency, |lock| async move {
            let _ = lock.release().await;
        })
        .await;
    let per =
        |a: alloc::Snapshot, b: alloc::Snapshot| (b.live_bytes - a.live_bytes) as f64 / n as f64;
    (n, per(before, held), per(held, refreshing))
}

/// Scenario 5: Lost-signal latency, with start_refresh running: (a) the key deleted
/// behind the holder's back, time to `lost()`; (b) the holder cut off from
/// the store (its extends stall), `lost()` fires at the validity deadline:
/// how long before the store frees the key.
pub async fn lost(env: &Env, store: Arc<dyn Store>) -> Report {
    const NS: &str = "bench-lost";
    let ttl = env.lost_ttl;
    let interval = ttl / 3;
    let trials = env.lost_trials;
    let base = store.locker(NS).await;
    let faulty = Arc::new(Faulty::new(base.backend()));
    let locker = Locker::builder(faulty.clone())
        .namespace(NS)
        .build()
        .expect("locker");
    let observer = store.locker(NS).await;
    let opts = ObtainOptions::new().ttl(ttl);

    // (a) Deleted behind the holder's back, at a random point of the
    // refresh interval.
    let deleted: Vec<Duration> = futures::stream::iter(0..trials)
        .map(|i| {
            let (locker, store, opts) = (locker.clone(), store.clone(), opts.clone());
            async move {
                let key = format!("deleted-{i}");
                let lock = locker
                    .obtain_with(key.as_str(), opts)
                    .await
                    .expect("obtain");
                let handle = lock.start_refresh(|_| {});
                tokio::time::sleep(interval.mul_f64(1.0 + fastrand::f64())).await;
                let lost = lock.lost();
                let t0 = Instant::now();
                store.delete_behind_back(NS, &key).await;
                let reason = lost.await;
                let latency = t0.elapsed();
                assert_eq!(reason, LostReason::NotHeld, "deleted lock ended {reason:?}");
                handle.stop().await;
                let _ = lock.release().await;
                latency
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    // (b) Cut off: its extends stall from a random point on.
    let cut_off: Vec<(Duration, Duration)> = futures::stream::iter(0..trials)
        .map(|i| {
            let (locker, faulty, observer, opts) = (
                locker.clone(),
                faulty.clone(),
                observer.clone(),
                opts.clone(),
            );
            async move {
                let key = format!("cut-{i}");
                let lock = locker
                    .obtain_with(key.as_str(), opts)
                    .await
                    .expect("obtain");
                let handle = lock.start_refresh(|_| {});
                tokio::time::sleep(interval.mul_f64(1.0 + fastrand::f64())).await;
                faulty.stall_extends(&LockKey {
                    namespace: locker.namespace().clone(),
                    key: Key::new(key.as_str()).unwrap(),
                });
                let reason = lock.lost().await;
                let fired = Instant::now();
                assert_eq!(reason, LostReason::Expired, "cut-off lock ended {reason:?}");
                let late = fired.saturating_duration_since(lock.valid_until());
                // Poll the store until it frees the key.
                while observer.is_locked(key.as_str()).await.expect("is_locked") {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let lead = fired.elapsed();
                handle.stop().await;
                drop(lock);
                (late, lead)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let mut report = report(
        &*store,
        "lost",
        format!(
            "{trials} locks per case at ttl {ttl:?} (refresh every {interval:?}), start_refresh running"
        ),
    );
    let deleted = Summary::of(deleted, None);
    report.figure(
        "deleted: max latency / refresh interval",
        deleted.max.as_secs_f64() / interval.as_secs_f64(),
    );
    report.row("deleted behind the back -> lost()", deleted);
    let (late, lead): (Vec<_>, Vec<_>) = cut_off.into_iter().unzip();
    report.row(
        "cut off: lost() after valid_until by",
        Summary::of(late, None),
    );
    let lead = Summary::of(lead, None);
    report.figure(
        "cut off: min lead of lost() before the store freed the key, ms",
        us(lead.min) / 1e3,
    );
    report.row("cut off: lost() before the store freed the key by", lead);
    report.notes.push(format!(
        "a deletion is noticed by the next refresh (every {interval:?}), so its latency is up to one interval; \
         a holder cut off from the store gets lost() at its validity deadline (ttl x 0.99 - 2 ms after the last extend was sent), \
         before the store expires the key"
    ));
    locker.close().await.expect("close");
    observer.close().await.expect("close");
    report
}
