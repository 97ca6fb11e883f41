//! The scenarios, written once and run on every store: one file each
//! (issue 13's permit and read-lock cycles share one).

mod failover;
mod handoff;
mod held;
mod leadership;
mod lost;
mod permits;
mod throughput;
mod uncontended;

pub use failover::failover;
pub use handoff::handoff;
pub use held::held;
pub use leadership::leadership;
pub use lost::lost;
pub use permits::permits;
pub use throughput::throughput;
pub use uncontended::uncontended;

use std::sync::Arc;

use distlock::Locker;
use distlock_testkit::Faulty;

use crate::report::Report;
use crate::stores::Store;

/// The report of `scenario` on `store`, named `<store>-<scenario>`.
fn report(store: &dyn Store, scenario: &str, about: String) -> Report {
    Report::new(format!("{}-{scenario}", store.name()), about)
}

/// The report of a permit scenario, nothing measured, if `store` serves no
/// permits (yet); `None` if it does.
async fn without_permits(store: &dyn Store, scenario: &str, about: &str) -> Option<Report> {
    let probe = store.locker("bench-probe").await;
    let serves = probe.backend().capabilities().permits;
    probe.close().await.expect("close");
    (!serves).then(|| {
        let mut skipped = report(store, scenario, about.to_owned());
        skipped.notes.push(format!(
            "skipped: the {} backend serves no permits at this commit",
            store.name()
        ));
        skipped
    })
}

/// A Locker in `namespace` over `base`'s backend behind [`Faulty`], which
/// counts the engine's calls and can stall a key's extends.
fn over_faulty(base: &Locker, namespace: &str) -> (Arc<Faulty>, Locker) {
    let faulty = Arc::new(Faulty::new(base.backend()));
    let locker = Locker::builder(faulty.clone())
        .namespace(namespace)
        .build()
        .expect("locker");
    (faulty, locker)
}
