//! Racing holders of one key: single attempts at once, and rounds of
//! holders checked by who is inside the section the key guards.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::{Lock, Locker, ObtainOptions, Share};
use tokio::sync::Barrier;
use tokio::time::sleep;

use super::{MS, take};

/// Checked on every entry: at most `limit` permits inside and no lock
/// beside them, an exclusive holder alone; a lock's token greater than
/// that of everyone who entered before it, a permit's greater than that
/// of the last lock before it (a holder that entered earlier was granted
/// earlier, or overlapped with it, which a lock cannot).
#[derive(Debug, Default)]
pub(super) struct Occupancy {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    permits: u32,
    exclusive: bool,
    most_permits: u32,
    /// The greatest token that entered, and that of the last lock.
    top_token: u64,
    last_exclusive: u64,
    tokens: Vec<u64>,
}

impl Occupancy {
    pub(super) fn enter(&self, lock: &Lock) {
        let token = lock.fencing_token();
        let mut s = self.state.lock().unwrap();
        assert!(!s.exclusive, "{token} entered beside an exclusive holder");
        match lock.share() {
            Share::Exclusive => {
                assert_eq!(s.permits, 0, "lock {token} entered beside permits");
                assert!(
                    token > s.top_token,
                    "lock {token} entered after token {}",
                    s.top_token
                );
                s.exclusive = true;
                s.last_exclusive = token;
            }
            Share::Permit { limit } => {
                assert!(
                    s.permits < limit,
                    "permit {token} entered beside {} others of {limit}",
                    s.permits
                );
                assert!(
                    token > s.last_exclusive,
                    "permit {token} entered after lock {}",
                    s.last_exclusive
                );
                s.permits += 1;
                s.most_permits = s.most_permits.max(s.permits);
            }
        }
        s.top_token = s.top_token.max(token);
        s.tokens.push(token);
    }

    pub(super) fn leave(&self, lock: &Lock) {
        let mut s = self.state.lock().unwrap();
        match lock.share() {
            Share::Exclusive => s.exclusive = false,
            Share::Permit { .. } => s.permits -= 1,
        }
    }

    /// The most permits inside at once.
    pub(super) fn most_permits(&self) -> u32 {
        self.state.lock().unwrap().most_permits
    }

    /// Returns once `limit` permits have been inside at once, or after
    /// `bound`.
    async fn until_permits(&self, limit: u32, bound: Duration) {
        let start = tokio::time::Instant::now();
        while self.most_permits() < limit && start.elapsed() < bound {
            sleep(MS).await;
        }
    }

    /// How many entered; panics if two entries had the same token.
    pub(super) fn entries_with_distinct_tokens(&self) -> usize {
        let mut tokens = self.state.lock().unwrap().tokens.clone();
        let entries = tokens.len();
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), entries, "two grants shared a fencing token");
        entries
    }
}

/// `per_locker` tasks on each of `lockers` take `key` `rounds` times each,
/// task `i` of a locker in mode `mode(i)`, hold it for a millisecond or
/// two inside one [`Occupancy`], and release it. Until a semaphore's
/// permits have all been in use at once, holders stay inside for up to
/// 300 ms more, so that a store whose round trips outlast a hold still
/// fills them.
pub(super) async fn contend(
    lockers: &[Locker],
    per_locker: usize,
    rounds: usize,
    mode: impl Fn(usize) -> Share,
) -> Arc<Occupancy> {
    let occupancy = Arc::new(Occupancy::default());
    let mut tasks = Vec::new();
    for locker in lockers {
        for i in 0..per_locker {
            let (locker, occupancy, share) = (locker.clone(), occupancy.clone(), mode(i));
            tasks.push(tokio::spawn(async move {
                for _ in 0..rounds {
                    let opts = ObtainOptions::new().wait(Duration::from_secs(60));
                    let lock = take(&locker, "k", share, opts).await.unwrap();
                    occupancy.enter(&lock);
                    if let Share::Permit { limit } = share
                        && share != Share::READERS
                    {
                        occupancy.until_permits(limit, 300 * MS).await;
                    }
                    sleep(2 * MS).await;
                    occupancy.leave(&lock);
                    lock.release().await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let entries = occupancy.entries_with_distinct_tokens();
    assert_eq!(entries, lockers.len() * per_locker * rounds);
    occupancy
}

/// `tasks` single attempts at `key` in mode `share`, spread over
/// `lockers` and let go together: the leases they won (every other attempt
/// must be `NotObtained`).
pub(super) async fn race(lockers: &[Locker], tasks: usize, share: Share) -> Vec<Lock> {
    let start = Arc::new(Barrier::new(tasks));
    let attempts: Vec<_> = (0..tasks)
        .map(|i| {
            let (locker, start) = (lockers[i % lockers.len()].clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                take(&locker, "k", share, ObtainOptions::new().try_once()).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(lock) => winners.push(lock),
            Err(e) => assert!(e.is_not_obtained(), "{e}"),
        }
    }
    winners
}
