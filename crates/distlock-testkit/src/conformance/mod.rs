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
//!
//! The cases of the primitives built on permits are in modules of their
//! own, [`semaphore`] and [`rwlock`], and listed as `semaphore::…` and
//! `rwlock::…`; so are leader election's, [`leadership`].

use std::sync::Arc;
use std::time::Duration;

use distlock::backend::{AcquireRequest, Attempt};
use distlock::{
    Error, Key, LeaseRef, Lock, LockKey, Locker, LostReason, ObtainOptions, OwnerToken, Share,
};
use futures::future::BoxFuture;
use tokio::time::{Instant, sleep};

use crate::Faulty;
use crate::fixture::{Fixture, unique_namespace};

mod cancel;
mod exclusion;
mod expiry;
mod fencing;
mod input;
mod inspect;
pub mod leadership;
mod leases;
mod lost;
mod obtain;
mod occupancy;
mod ownership;
mod refresh;
pub mod rwlock;
pub mod semaphore;
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

/// A locker as [`locker`] makes it, after checking that the store serves
/// permits: the semaphore and reader-writer cases fail with this message
/// rather than with the engine's refusal of every permit.
async fn permit_locker(fx: &dyn Fixture, case: &str) -> (Locker, String) {
    let (locker, ns) = locker(fx, case).await;
    assert!(
        locker.backend().capabilities().permits,
        "the {} backend reports permits = false: it serves no semaphores or read locks",
        locker.backend_name()
    );
    (locker, ns)
}

/// A locker in `ns` whose store is wrapped in a [`Faulty`] without faults
/// that records the leases it grants (so a case can release one behind its
/// holder's back) and counts attempts (so a case can tell that a waiter's
/// first attempt was answered).
async fn spied_locker(fx: &dyn Fixture, ns: &str) -> (Locker, Arc<Faulty>) {
    let spy = Arc::new(Faulty::new(fx.backend().await));
    spy.record_grants();
    let locker = Locker::builder(spy.clone())
        .namespace(ns)
        .build()
        .expect("valid test namespace");
    (locker, spy)
}

/// Waits until `spy` has seen a second attempt, so the first one of the
/// waiter behind it was answered `Contended` (and, on a store that queues
/// waiters, left its entry). The waiter must retry within a second or so.
async fn first_attempt_answered(spy: &Faulty) {
    let start = Instant::now();
    while spy.acquires() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the waiter never made a second attempt"
        );
        sleep(5 * MS).await;
    }
}

/// A waiting obtain that retries every 20 ms, so
/// [`first_attempt_answered`] knows soon.
fn waiting(fx: &dyn Fixture) -> ObtainOptions {
    ObtainOptions::new()
        .ttl(fx.short_ttl() * 10)
        .wait(Duration::from_secs(30))
        .retry(distlock::RetryStrategy::linear(20 * MS))
}

/// Takes `key` in mode `share` through the front type that asks for it:
/// a plain lock, a read lock (`Share::READERS`) or a semaphore's permit.
async fn take(
    locker: &Locker,
    key: &str,
    share: Share,
    options: ObtainOptions,
) -> distlock::Result<Lock> {
    match share {
        Share::Exclusive => locker.obtain_with(key, options).await,
        Share::READERS => locker.rw_lock(key)?.read_with(options).await,
        Share::Permit { limit } => locker.semaphore(key, limit)?.acquire_with(options).await,
    }
}

/// A request for `key` in mode `share` by a fresh owner, for the SPI
/// directly: a holder whose owner token the case knows.
fn raw_request(locker: &Locker, key: &str, share: Share, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(lock_key(locker, key), OwnerToken::random().unwrap(), ttl).share(share)
}

/// The token of a grant; panics on `Contended`.
fn granted(attempt: distlock::Result<Attempt>) -> u64 {
    match attempt {
        Ok(Attempt::Granted { fencing_token }) => fencing_token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// One waiter of `locker` per mode of `modes` arrives at the held key `k`
/// in that order: each is polled once here, which queues it among the
/// locker's waiters, before the next one is (no sleeping between them),
/// and is then spawned. `free` then lets the key go. Each waiter holds its
/// lease for 20 ms; asserts that the grants' tokens follow the order of
/// arrival.
async fn assert_served_in_arrival_order(
    locker: &Locker,
    modes: &[Share],
    free: impl Future<Output = ()>,
) {
    let mut waiters = Vec::new();
    for (id, &share) in modes.iter().enumerate() {
        let locker = locker.clone();
        let mut waiter: BoxFuture<'static, (u64, usize)> = Box::pin(async move {
            let opts = ObtainOptions::new().wait(Duration::from_secs(30));
            let lock = take(&locker, "k", share, opts).await.unwrap();
            let token = lock.fencing_token();
            sleep(20 * MS).await;
            lock.release().await.unwrap();
            (token, id)
        });
        if futures::poll!(&mut waiter).is_ready() {
            panic!("waiter {id} was served before the key was free");
        }
        waiters.push(tokio::spawn(waiter));
    }
    free.await;
    let mut served = Vec::new();
    for waiter in waiters {
        served.push(waiter.await.unwrap());
    }
    served.sort_unstable();
    let order: Vec<usize> = served.iter().map(|(_, id)| *id).collect();
    let arrival: Vec<usize> = (0..modes.len()).collect();
    assert_eq!(order, arrival, "served out of turn");
}

/// Tries `attempt` every 10 ms until it yields a lock, failing after
/// `bound`; every failure must be `NotObtained`. Returns the lock and when
/// it was obtained.
async fn poll_until_obtained<F, Fut>(bound: Duration, what: &str, attempt: F) -> (Lock, Instant)
where
    F: Fn() -> Fut,
    Fut: Future<Output = distlock::Result<Lock>>,
{
    let start = Instant::now();
    loop {
        match attempt().await {
            Ok(lock) => return (lock, Instant::now()),
            Err(e) => assert!(e.is_not_obtained(), "{what}: {e}"),
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        sleep(10 * MS).await;
    }
}

fn assert_not_obtained<T: std::fmt::Debug>(result: distlock::Result<T>) {
    match result {
        Err(Error::NotObtained { .. }) => {}
        other => panic!("expected NotObtained, got {other:?}"),
    }
}

fn assert_limit_mismatch<T: std::fmt::Debug>(result: distlock::Result<T>) {
    match result {
        Err(Error::LimitMismatch { .. }) => {}
        other => panic!("expected LimitMismatch, got {other:?}"),
    }
}

/// Asserts that `lock`'s `lost()` has not fired and does not fire now.
async fn assert_not_lost(lock: &Lock, what: &str) {
    assert!(!lock.is_lost(), "{what} is lost");
    let fired = tokio::time::timeout(MS, lock.lost()).await;
    assert!(fired.is_err(), "{what}: lost() fired with {fired:?}");
}

/// The fencing tokens of `key`'s holders, oldest grant first.
async fn holder_tokens(locker: &Locker, key: &str) -> Vec<u64> {
    let holders = locker.holders(key).await.unwrap();
    holders.holders.iter().map(|h| h.fencing_token).collect()
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

    /// The files whose cases are listed as `file::case`: the modules of
    /// the primitives built on locks and permits, each with the fewest
    /// cases its issue asks for.
    const PRIMITIVES: &[(&str, usize)] = &[
        ("semaphore.rs", 15),
        ("rwlock.rs", 15),
        ("leadership.rs", 12),
    ];

    /// Every `pub async fn` in `src/conformance/*.rs`, by file, named as
    /// [`CASES`] names it.
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
                    if NOT_CASES.contains(&name.as_str()) {
                        continue;
                    }
                    if PRIMITIVES.iter().any(|(f, _)| *f == file) {
                        let module = file.trim_end_matches(".rs");
                        found.push((file.clone(), format!("{module}::{name}")));
                    } else {
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
        for (primitive, fewest) in PRIMITIVES {
            let cases = found.iter().filter(|(file, _)| file == primitive).count();
            assert!(cases >= *fewest, "{primitive} has only {cases} cases");
        }
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
