//! Scenario 2: throughput of many tasks through one Locker.

use std::sync::Arc;

use super::report;
use crate::Env;
use crate::report::Report;
use crate::runner::{Plan, compare_pairs};
use crate::stores::Store;

/// Scenario 2: Throughput: 64 tasks, each on its own key, through one Locker (one
/// connection), against the raw client and peers doing the same.
pub async fn throughput(env: &Env, store: Arc<dyn Store>) -> Report {
    let plan = Plan::concurrent(env, &*store);
    let cycles = store.cycles("bench-throughput", plan.tasks).await;
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
    report.notes.extend(cycles.notes.iter().cloned());
    let report = compare_pairs(report, &cycles.subjects, &cycles.pairs, &plan, &*store).await;
    cycles.close().await;
    report
}
