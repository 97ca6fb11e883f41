//! Issue 13's cycles: a permit and a read lock, acquire + release, next to
//! the plain lock cycle on the same store in the same run.

use std::sync::Arc;

use super::{report, without_permits};
use crate::Env;
use crate::report::Report;
use crate::runner::{Plan, ROTATE, Subject, compare_pairs, keys};
use crate::stores::{Store, api_cycle, obtain_cycle};

/// The semaphores' limit, and how many tasks of a concurrent run share a
/// semaphore or a read-locked key: each such key is full, never over.
pub const LIMIT: u32 = 8;

/// A permit cycle (`semaphore(key, 8)?.acquire()` + release), a read-lock
/// cycle (`rw_lock(key)?.read()` + release) and the lock cycle (`obtain` +
/// release), through one Locker: one task on 64 rotating keys, or
/// (`concurrent`) `env.tasks` tasks, eight per permit or read key and
/// one per lock key. Reports permit / lock and read lock / lock.
pub async fn permits(env: &Env, store: Arc<dyn Store>, concurrent: bool) -> Report {
    let (scenario, plan) = if concurrent {
        ("permits-throughput", Plan::concurrent(env, &*store))
    } else {
        ("permits-uncontended", Plan::uncontended(env, &*store))
    };
    let shape = if concurrent {
        format!(
            "{} tasks through one Locker, {LIMIT} tasks per semaphore or read-locked key (every permit taken, no task waits), one per lock key",
            plan.tasks
        )
    } else {
        format!("one task, {ROTATE} rotating keys")
    };
    let about = format!(
        "a permit of {LIMIT} and a read lock, acquire + release, next to obtain + release; {shape}; {} cycles per subject in {} interleaved blocks",
        plan.cycles(),
        plan.blocks
    );
    if let Some(skipped) = without_permits(&*store, scenario, &about).await {
        return skipped;
    }
    let locker = store.locker(&format!("bench-{scenario}")).await;
    let per_key = LIMIT as usize;
    let subjects = [
        Subject::new(
            format!("permit acquire+release (limit {LIMIT})"),
            api_cycle(
                &locker,
                keys("permit", plan.tasks),
                per_key,
                |locker, key| async move { locker.semaphore(key, LIMIT)?.acquire().await },
            ),
        )
        .short("permit"),
        Subject::new(
            "lock obtain+release",
            obtain_cycle(&locker, keys("lock", plan.tasks)),
        ),
        Subject::new(
            "read lock read+release",
            api_cycle(
                &locker,
                keys("read", plan.tasks),
                per_key,
                |locker, key| async move { locker.rw_lock(key)?.read().await },
            ),
        )
        .short("read lock"),
    ];
    let mut report = report(&*store, scenario, about);
    if concurrent {
        report.notes.push(
            "per s = cycles per second of wall time (throughput); latencies are per cycle under load"
                .into(),
        );
    }
    let report = compare_pairs(report, &subjects, &[(0, 1), (2, 1)], &plan, &*store).await;
    locker.close().await.expect("close");
    report
}
