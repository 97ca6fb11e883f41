//! Scenario 1: uncontended obtain + release.

use std::sync::Arc;

use super::report;
use crate::Env;
use crate::report::Report;
use crate::runner::{Plan, compare};
use crate::stores::{Store, distlock_subjects};

/// Scenario 1: Uncontended obtain + release, one task, 64 rotating keys, against
/// the backend's SPI alone, the store's raw floor and peer crates.
pub async fn uncontended(env: &Env, store: Arc<dyn Store>) -> Report {
    let locker = store.locker("bench-uncontended").await;
    let mut subjects = distlock_subjects(&locker);
    subjects.extend(store.baselines(1).await);
    let plan = Plan::uncontended(env, &*store);
    let report = report(
        &*store,
        "uncontended",
        format!(
            "obtain + release, one task, {} rotating keys, {} cycles per subject in {} interleaved blocks",
            crate::runner::ROTATE,
            plan.cycles(),
            plan.blocks
        ),
    );
    let report = compare(report, &subjects, &plan, &*store).await;
    locker.close().await.expect("close");
    report
}
