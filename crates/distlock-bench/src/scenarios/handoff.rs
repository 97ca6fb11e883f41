//! Scenario 3: contended handoff of one hot key (a lock, or one of its
//! permits).

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use distlock::{Locker, ObtainOptions};

use super::{report, without_permits};
use crate::Env;
use crate::report::{Report, Target};
use crate::stats::{Summary, us};
use crate::stores::Store;

/// Shared state of one contended run. Times are `std` instants: the
/// contenders may run on different runtimes.
#[derive(Default)]
struct Hot {
    /// The key's permits (`None`: it is a lock).
    permits: Option<u32>,
    /// The releases whose permit (or lock) nobody was granted yet, oldest
    /// first: who released, and when its release was called. Each grant
    /// takes the oldest, so a handoff is the time a freed permit stayed
    /// free.
    released: Mutex<VecDeque<(usize, std::time::Instant)>>,
    handoffs: Mutex<Vec<Duration>>,
    waits: Mutex<Vec<Duration>>,
    regrants: AtomicUsize,
    grants: Mutex<Vec<usize>>,
    inside: AtomicUsize,
    granted: AtomicUsize,
}

/// One contender: obtain (or acquire a permit), 1 ms critical section,
/// release, until `total` sections were granted to anyone.
async fn contend(id: usize, locker: &Locker, hot: &Hot, total: usize) {
    use std::time::Instant;
    let holders = hot.permits.unwrap_or(1) as usize;
    while hot.granted.load(SeqCst) < total {
        let asked = Instant::now();
        let opts = ObtainOptions::new().wait(Duration::from_secs(60));
        let lock = match hot.permits {
            None => locker.obtain_with("hot", opts).await,
            Some(n) => locker.semaphore("hot", n).unwrap().acquire_with(opts).await,
        }
        .expect("obtain");
        let got = Instant::now();
        let inside = hot.inside.fetch_add(1, SeqCst) + 1;
        assert!(
            inside <= holders,
            "{inside} holders at once, {holders} allowed"
        );
        hot.granted.fetch_add(1, SeqCst);
        hot.waits.lock().unwrap().push(got - asked);
        hot.grants.lock().unwrap()[id] += 1;
        // The first grants of the run find nothing released: not handoffs.
        match hot.released.lock().unwrap().pop_front() {
            Some((prev, at)) if prev != id => hot.handoffs.lock().unwrap().push(got - at),
            Some(_) => {
                hot.regrants.fetch_add(1, SeqCst);
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        hot.inside.fetch_sub(1, SeqCst);
        hot.released.lock().unwrap().push_back((id, Instant::now()));
        lock.release().await.expect("release");
    }
}

/// Scenario 3: Contended handoff: `waiters` contenders loop on one hot key,
/// a lock or (issue 13) a semaphore of `permits`. `processes`: each has
/// its own thread, runtime and Locker (own connections), as separate
/// processes would; otherwise they are tasks sharing one Locker.
pub async fn handoff(
    env: &Env,
    store: Arc<dyn Store>,
    processes: bool,
    permits: Option<u32>,
) -> Report {
    let waiters = 8;
    let holders = permits.unwrap_or(1) as usize;
    let total = env.handoffs.max(waiters * 2);
    let mode = if processes { "processes" } else { "one-locker" };
    let (scenario, what, verb) = match permits {
        None => (format!("handoff-{mode}"), "one key".to_owned(), "obtain"),
        Some(n) => (
            format!("permits-handoff-{mode}"),
            format!("one semaphore of {n} permits"),
            "acquire",
        ),
    };
    let about = format!(
        "{waiters} waiters loop on {what} ({verb}, 1 ms section, release), {}",
        if processes {
            "each with its own thread, runtime, Locker and connections (like processes)"
        } else {
            "as tasks sharing one Locker"
        }
    );
    if permits.is_some()
        && let Some(skipped) = without_permits(&*store, &scenario, &about).await
    {
        return skipped;
    }
    let hot = Arc::new(Hot {
        permits,
        grants: Mutex::new(vec![0; waiters]),
        ..Hot::default()
    });
    let namespace = match (processes, permits) {
        (true, None) => "bench-hot-procs",
        (false, None) => "bench-hot-local",
        (true, Some(_)) => "bench-permits-procs",
        (false, Some(_)) => "bench-permits-local",
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
    let mut report = report(&*store, &scenario, format!("{about}, {sections} sections"));
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
    // The fair share of one wait: the sections of the waiters ahead of
    // ours, `holders` at a time.
    let fair_wait = (waiters - holders) as f64 * wall.as_secs_f64() / sections as f64;
    let max_wait_share = waits.max.as_secs_f64() / fair_wait;
    report.figure("fair share of one wait, µs", fair_wait * 1e6);
    report.figure("max wait / fair share", max_wait_share);
    if let Some(h) = &handoff {
        report.row("handoff to another holder", h.clone());
    }
    report.row("wait (obtain call to grant)", waits.clone());
    // The targets are for locks.
    if permits.is_none() && store.handoff_targets() {
        let name = store.name();
        match &handoff {
            Some(h) => {
                report.targets.push(Target::new(
                    format!("{name} handoff ({mode}) p50"),
                    us(h.p50) / 1e3,
                    0.4,
                    " ms",
                ));
                report.targets.push(Target::new(
                    format!("{name} handoff ({mode}) p99"),
                    us(h.p99) / 1e3,
                    1.0,
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
            1.5,
            "x",
        ));
    }
    report
}
