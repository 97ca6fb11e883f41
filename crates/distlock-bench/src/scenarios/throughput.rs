//! Scenario 2: throughput of many tasks through one Locker.

use std::sync::Arc;

use super::report;
use crate::Env;
use crate::report::Report;
use crate::runner::{Plan, compare};
use crate::stores::{Store, distlock_subjects};

/// Scenario 2: Throughput: 64 tasks, each on its own key, through one Locker (one
/// connection), against the raw client and peers doing the same.
pub async fn throughput(env: &Env, store: Arc<dyn Store>) -> Report {
    let locker = store.locker("bench-throughput").await;
    let plan = Plan::concurrent(env, &*store);
    let mut subjects = distlock_subjects(&locker);
    subjects.extend(store.baselines(plan.tasks).await);
    let mut report = report(
        &*store,
        "throughput",
        format!(
            "{} tasks on distinct keys through one Locker / client, {} cycles per subject in {} interleaved blocks",
            plan.tasks,
            plan.cycles(),
            plan.blocks
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
