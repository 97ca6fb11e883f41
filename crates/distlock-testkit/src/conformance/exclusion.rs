//! Mutual exclusion under contention: racing tasks, rounds, separate lockers.

use std::sync::Arc;
use std::time::Duration;

use distlock::{Locker, ObtainOptions, Share};
use tokio::time::sleep;

use super::occupancy::race;
use super::{MS, locker};
use crate::fixture::Fixture;
use crate::section::CriticalSection;

/// 100 tasks over 10 lockers race for one key: exactly one wins.
pub async fn racing_tasks_have_exactly_one_winner(fx: &dyn Fixture) {
    let (first, ns) = locker(fx, "race").await;
    let mut lockers = vec![first];
    for _ in 1..10 {
        lockers.push(fx.locker(&ns).await);
    }
    let mut winners = race(&lockers, 100, Share::Exclusive).await;
    assert_eq!(winners.len(), 1);
    winners.pop().unwrap().release().await.unwrap();
}

async fn contend(lockers: Vec<Locker>, per_locker: usize, rounds: usize) -> Arc<CriticalSection> {
    let section = Arc::new(CriticalSection::new());
    let mut tasks = Vec::new();
    for locker in lockers {
        for _ in 0..per_locker {
            let (locker, section) = (locker.clone(), section.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..rounds {
                    let opts = ObtainOptions::new().wait(Duration::from_secs(30));
                    let lock = locker.obtain_with("k", opts).await.unwrap();
                    section.enter(lock.fencing_token());
                    sleep(MS).await;
                    section.leave();
                    lock.release().await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    section
}

/// 8 tasks × 10 rounds through one locker: no overlap, tokens increase.
pub async fn rounds_never_overlap_and_tokens_increase(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "rounds").await;
    let section = contend(vec![locker], 8, 10).await;
    assert_eq!(section.assert_tokens_strictly_increase(), 80);
}

/// 4 lockers × 2 tasks × 5 rounds: no overlap across lockers either.
pub async fn separate_lockers_never_overlap(fx: &dyn Fixture) {
    let (first, ns) = locker(fx, "lockers").await;
    let mut lockers = vec![first];
    for _ in 1..4 {
        lockers.push(fx.locker(&ns).await);
    }
    let section = contend(lockers, 2, 5).await;
    assert_eq!(section.assert_tokens_strictly_increase(), 40);
}
