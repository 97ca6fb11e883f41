//! Issue 13's cycles: a permit and a read lock, acquire + release, next to
//! the plain lock cycle on the same store in the same run.

use std::sync::Arc;
use std::time::Duration;

use distlock::{Locker, ObtainOptions};

use super::{report, without_permits};
use crate::Env;
use crate::report::Report;
use crate::runner::{Cycle, Plan, ROTATE, Subject, compare_pairs, keys};
use crate::stores::{Store, api_cycle};

/// The semaphores' limit, and how many tasks of a concurrent run share a
/// semaphore or a read-locked key: such a key is full, never over.
pub const LIMIT: u32 = 8;

/// How long an acquire may wait: long enough that a loaded store never
/// turns a slow turn into `NotObtained`. Any wait makes the same waiting
/// attempts (`will_wait`) as the default options, so the store sees the
/// same requests.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
enum Kind {
    /// `semaphore(key, LIMIT)?.acquire_with(..)`.
    Permit,
    /// `rw_lock(key)?.read_with(..)`.
    Read,
    /// `obtain_with(key, ..)`.
    Lock,
}

/// Acquire + release of `kind` on keys named `prefix-<n>`, `per_key`
/// tasks to a key.
fn cycle(locker: &Locker, kind: Kind, prefix: &str, tasks: usize, per_key: usize) -> Cycle {
    let opts = ObtainOptions::new().wait(WAIT);
    api_cycle(locker, keys(prefix, tasks), per_key, move |locker, key| {
        let opts = opts.clone();
        async move {
            match kind {
                Kind::Permit => locker.semaphore(key, LIMIT)?.acquire_with(opts).await,
                Kind::Read => locker.rw_lock(key)?.read_with(opts).await,
                Kind::Lock => locker.obtain_with(key, opts).await,
            }
        }
    })
}

/// A permit cycle (`semaphore(key, 8)?.acquire_with(..)` + release), a
/// read-lock cycle (`rw_lock(key)?.read_with(..)` + release) and the lock
/// cycle (`obtain_with` + release), through one Locker: one task on 64
/// rotating keys; or (`concurrent`) `env.tasks` tasks, with permits and
/// locks on a key per task, and permits and read locks on keys that eight
/// tasks share. Reports each against the lock.
pub async fn permits(env: &Env, store: Arc<dyn Store>, concurrent: bool) -> Report {
    let (scenario, plan) = if concurrent {
        ("permits-throughput", Plan::concurrent(env, &*store))
    } else {
        ("permits-uncontended", Plan::uncontended(env, &*store))
    };
    let shape = if concurrent {
        format!(
            "{} tasks through one Locker, on a key per task or {LIMIT} tasks per key (the permits never run out)",
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
    let tasks = plan.tasks;
    let shared = LIMIT as usize;
    let permit = format!("permit (limit {LIMIT}) acquire+release");
    let (subjects, pairs) = if concurrent {
        let subjects = vec![
            Subject::new(
                format!("{permit}, own key"),
                cycle(&locker, Kind::Permit, "permit", tasks, 1),
            )
            .short("permit"),
            Subject::new(
                "lock obtain+release, own key",
                cycle(&locker, Kind::Lock, "lock", tasks, 1),
            ),
            Subject::new(
                format!("{permit}, {shared} per key"),
                cycle(&locker, Kind::Permit, "permit-shared", tasks, shared),
            )
            .short(format!("permit, {shared} per key")),
            Subject::new(
                format!("read lock read+release, {shared} per key"),
                cycle(&locker, Kind::Read, "read", tasks, shared),
            )
            .short(format!("read lock, {shared} per key")),
        ];
        (subjects, vec![(0, 1), (2, 1), (3, 1), (2, 0)])
    } else {
        let subjects = vec![
            Subject::new(permit, cycle(&locker, Kind::Permit, "permit", tasks, 1)).short("permit"),
            Subject::new(
                "lock obtain+release",
                cycle(&locker, Kind::Lock, "lock", tasks, 1),
            ),
            Subject::new(
                "read lock read+release",
                cycle(&locker, Kind::Read, "read", tasks, 1),
            )
            .short("read lock"),
        ];
        (subjects, vec![(0, 1), (2, 1)])
    };
    let mut report = report(&*store, scenario, about);
    if concurrent {
        report.notes.push(
            "per s = cycles per second of wall time (throughput); latencies are per cycle under load"
                .into(),
        );
        report.notes.push(format!(
            "a Locker lets one acquire of a key at a time reach the store (its per-key FIFO queue of waiters), \
             so {shared} tasks sharing a key take turns for the round trip although permits are free: \
             permit, {shared} per key / permit is that cost"
        ));
    }
    let report = compare_pairs(report, &subjects, &pairs, &plan, &*store).await;
    locker.close().await.expect("close");
    report
}
