//! Scenario 1: uncontended obtain + release.

use std::sync::Arc;

use super::report;
use crate::Env;
use crate::report::Report;
use crate::runner::{Plan, compare_pairs};
use crate::stores::Store;

/// Scenario 1: Uncontended obtain + release, one task, 64 rotating keys, against
/// the backend's SPI alone, the store's raw floor and peer crates.
pub async fn uncontended(env: &Env, store: Arc<dyn Store>) -> Report {
    let cycles = store.cycles("bench-uncontended", 1).await;
    let plan = Plan::uncontended(env, &*store);
    let mut report = report(
        &*store,
        "uncontended",
        format!(
            "obtain + release, one task, {} rotating keys, {} cycles per subject in {} interleaved blocks",
            crate::runner::ROTATE,
            plan.cycles(),
            plan.blocks
        ),
    );
    report.notes.extend(cycles.notes.iter().cloned());
    let report = compare_pairs(report, &cycles.subjects, &cycles.pairs, &plan, &*store).await;
    cycles.close().await;
    report
}
