//! Scenario 4: held-lock scale, the steady cost of refreshing many locks.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use distlock::{Locker, ObtainOptions};
use futures::StreamExt;
use tokio::time::Instant;

use super::{over_faulty, report};
use crate::report::{Report, Target};
use crate::stats::us;
use crate::stores::Store;
use crate::{Env, alloc};

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
    let (faulty, locker) = over_faulty(&base, NS);
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
        1.0,
        " KiB",
    ));
    report.targets.push(Target::new(
        format!("{} held locks: refresh CPU", store.name()),
        cpu_share * 100.0,
        1.0,
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
