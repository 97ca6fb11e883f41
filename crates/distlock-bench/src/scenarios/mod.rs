//! The five scenarios, written once and run on every store: one file each.

mod handoff;
mod held;
mod leadership;
mod lost;
mod throughput;
mod uncontended;

pub use handoff::handoff;
pub use held::held;
pub use leadership::leadership;
pub use lost::lost;
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
