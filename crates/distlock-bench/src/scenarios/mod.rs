//! The five scenarios, written once and run on every store: one file each.

mod handoff;
mod held;
mod lost;
mod throughput;
mod uncontended;

pub use handoff::handoff;
pub use held::held;
pub use lost::lost;
pub use throughput::throughput;
pub use uncontended::uncontended;

use crate::report::Report;
use crate::stores::Store;

/// The report of `scenario` on `store`, named `<store>-<scenario>`.
fn report(store: &dyn Store, scenario: &str, about: String) -> Report {
    Report::new(format!("{}-{scenario}", store.name()), about)
}
