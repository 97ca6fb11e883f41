//! The conformance cases every backend must pass (DESIGN.md §7), one file
//! per topic.
//!
//! Each case takes a fresh fixture and works in its own namespace. Timing
//! assertions bound what must be fast or slow with generous slack: they fail
//! on a wrong behaviour (a poll where a wake-up was due, a wait that ignores
//! its deadline), not on a busy machine.
//!
//! A case is a `pub async fn name(fx: &dyn Fixture)` in one of these files,
//! listed once in [`conformance_list!`](crate::conformance_list), from which
//! both the per-store tests ([`conformance_suite!`](crate::conformance_suite))
//! and [`CASES`] are made. A unit test below checks that every such function
//! is listed, so a case left out of the list fails the suite.

use std::time::Duration;

use distlock::{Error, Key, LeaseRef, LockKey, Locker, LostReason, ObtainOptions, OwnerToken};

use crate::fixture::{Fixture, unique_namespace};

mod cancel;
mod exclusion;
mod expiry;
mod fencing;
mod input;
mod inspect;
mod lost;
mod obtain;
mod ownership;
mod refresh;
mod sharing;
mod waiting;

pub use cancel::*;
pub use exclusion::*;
pub use expiry::*;
pub use fencing::*;
pub use input::*;
pub use inspect::*;
pub use lost::*;
pub use obtain::*;
pub use ownership::*;
pub use refresh::*;
pub use sharing::*;
pub use waiting::*;

/// Every case's name, each once: the ones that do not depend on the store's
/// capabilities, then the TTL-dependent ones ([`TTL_CASES`]).
pub const CASES: &[&str] = crate::conformance_list!(__conformance_names(all));

/// The names of the TTL-dependent cases, which a store without TTL expiry
/// runs adapted (see [`conformance_suite!`](crate::conformance_suite)).
pub const TTL_CASES: &[&str] = crate::conformance_list!(__conformance_names(ttl_expiry));

const MS: Duration = Duration::from_millis(1);
/// Extra time allowed for scheduling on a loaded machine.
const SLACK: Duration = Duration::from_millis(700);

/// How long a case waits for a key whose holder expired or released it.
/// Not a promptness check (the waiter cases measure that): a store that
/// commits through consensus may take a while on a loaded CI machine, and a
/// key that is never freed still fails the case.
fn next_holder_wait(fx: &dyn Fixture) -> Duration {
    fx.short_ttl() + SLACK
}

async fn locker(fx: &dyn Fixture, case: &str) -> (Locker, String) {
    let ns = unique_namespace(case);
    (fx.locker(&ns).await, ns)
}

fn short(fx: &dyn Fixture) -> ObtainOptions {
    ObtainOptions::new().ttl(fx.short_ttl())
}

fn lock_key(locker: &Locker, key: &str) -> LockKey {
    LockKey {
        namespace: locker.namespace().clone(),
        key: Key::new(key).unwrap(),
    }
}

fn forged(locker: &Locker, key: &str) -> LeaseRef {
    LeaseRef::exclusive(lock_key(locker, key), OwnerToken::random().unwrap())
}

/// Whether the store expires locks after their TTL (see
/// `Capabilities::ttl_expiry`). The cases that depend on it check the
/// opposite, meaningful behaviour where it is false: the lock outlives its
/// TTL for as long as its holder keeps it.
fn expires(locker: &Locker) -> bool {
    locker.backend().capabilities().ttl_expiry
}

/// Checks that the fixture's store has the TTL-expiry capability the suite
/// was instantiated for; the macro calls it before every TTL-dependent case,
/// so a backend can neither skip nor silently adapt those cases.
pub async fn expect_ttl_expiry(fx: &dyn Fixture, expected: bool) {
    let (locker, _) = locker(fx, "capabilities").await;
    let actual = expires(&locker);
    assert_eq!(
        actual,
        expected,
        "the {} backend reports ttl_expiry = {actual}; instantiate the suite with {}",
        locker.backend_name(),
        if actual {
            "`conformance_suite!(fixture)`"
        } else {
            "`conformance_suite!(fixture; without: ttl_expiry)`"
        }
    );
}

/// Asserts that `lost`, a spawned `lost()`, resolves with `reason` within
/// [`SLACK`].
async fn assert_lost_soon(lost: tokio::task::JoinHandle<LostReason>, reason: LostReason) {
    assert_eq!(
        tokio::time::timeout(SLACK, lost).await.unwrap().unwrap(),
        reason
    );
}

fn assert_not_held<T: std::fmt::Debug>(result: distlock::Result<T>) {
    match result {
        Err(Error::NotHeld { .. }) => {}
        other => panic!("expected NotHeld, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{CASES, TTL_CASES};

    /// The `pub async fn`s of the conformance files that are not cases.
    const NOT_CASES: &[&str] = &["expect_ttl_expiry"];

    /// Every `pub async fn` in `src/conformance/*.rs`, by file.
    fn case_functions() -> Vec<(String, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/conformance");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                if let Some(rest) = line.trim_start().strip_prefix("pub async fn ") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !NOT_CASES.contains(&name.as_str()) {
                        found.push((file.clone(), name));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_case_is_listed_exactly_once() {
        let mut listed = BTreeSet::new();
        for case in CASES {
            assert!(listed.insert(*case), "{case} is listed twice");
        }
        for case in TTL_CASES {
            assert!(
                listed.contains(case),
                "{case} is a TTL case but not in CASES"
            );
        }
        let found = case_functions();
        assert!(found.len() >= 30, "the scan found only {found:?}");
        let mut defined = BTreeSet::new();
        for (file, case) in &found {
            assert!(
                listed.contains(case.as_str()),
                "conformance/{file}: case {case} is not in conformance_list!, so no store runs it"
            );
            assert!(defined.insert(case.as_str()), "{case} is defined twice");
        }
        for case in &listed {
            assert!(
                defined.contains(case),
                "{case} is listed but no conformance file defines it"
            );
        }
    }
}
